"""Two measurements behind settings tinyllm chose, each against its alternative in the same run:

1. AdamW's step on the CPU: the fused kernel (now the CPU default, tinyllm/device.py) against the foreach one, on
   the nano model's parameters (nanoGPT's CPU shape, char vocab), median of 200 steps, interleaved;
2. compiled batch-1 decoding (`--compile`, tinyllm/fast_decode.py) with Inductor's Python wrapper against its C++
   wrapper (the setting used), 500 tokens, best of 3, after each variant's compilation.

    python benchmarks/micro_bench.py --model outputs/shakespeare_char
"""

import argparse
import statistics
import sys
import time


def adamw(model) -> dict[str, float]:
    import torch

    x = torch.randint(0, model.config.vocab_size, (12, 64))
    model(input_ids=x, labels=x).loss.backward()
    opts = {"foreach": torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True),
            "fused": torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)}
    from timing import interleaved_times

    times = interleaved_times(list(opts), lambda n: opts[n].step(), 200)
    return {n: statistics.median(t) * 1000 for n, t in times.items()}


def decode(model, tokenizer) -> dict[str, float]:
    import torch

    from tinyllm.inference.fast_decode import compiled_decoder, disable_compiled_decoding, enable_compiled_decoding
    from tinyllm.inference.generation import generate_ids

    prompt = tokenizer("\n")["input_ids"]
    never = [tokenizer.pad_token_id]
    sampling = {"do_sample": True, "temperature": 0.8, "top_k": 200, "top_p": 1.0, "repetition_penalty": 1.0}
    out = {}
    for name, options in (("python wrapper", {}), ("c++ wrapper", {"cpp_wrapper": True})):
        enable_compiled_decoding(model, 64)
        dec = compiled_decoder(model)
        dec.step = torch.compile(dec._forward, dynamic=False, options=options)
        generate_ids(model, prompt, 40, eos=never, **sampling)  # compiles
        best = 0.0
        for _ in range(3):
            t = time.perf_counter()
            gen = generate_ids(model, prompt, 500, eos=never, **sampling)
            best = max(best, len(gen.ids) / (time.perf_counter() - t))
        out[name] = best
        disable_compiled_decoding(model)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a trained shakespeare_char model folder")
    a = p.parse_args()
    from tinyllm.model_io import load_model_folder

    model, tokenizer = load_model_folder(a.model, device="cpu")
    steps = adamw(model.train())
    print("\n| AdamW step, nano model, CPU | ms (median of 200) |\n|---|---:|")
    for n, ms in steps.items():
        print(f"| {n} | {ms:.3f} |")
    rates = decode(model.eval(), tokenizer)
    print("\n| compiled decoding, batch 1, 500 tokens | tokens/s (best of 3) |\n|---|---:|")
    for n, r in rates.items():
        print(f"| {n} | {r:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
