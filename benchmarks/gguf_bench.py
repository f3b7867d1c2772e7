"""Decoding speed at batch 1: llama.cpp (through llama-cpp-python, on the exported GGUF) next to `tinyllm generate`'s
path (transformers + tinyllm's decoding loop), on the same model, the same prompt and the same sampling settings,
interleaved, best of several runs, in one process.

    python benchmarks/gguf_bench.py --models outputs/quickstart outputs/shakespeare_bpe
    python benchmarks/gguf_bench.py --models outputs/quickstart --outtypes f32,q8_0 --tokens 100 --repeats 5

Needs `pip install -e ".[gguf]"` (llama-cpp-python builds llama.cpp from source). Both runtimes use all CPU threads.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["outputs/quickstart"])
    p.add_argument("--outtypes", default="f32,q8_0")
    p.add_argument("--tokens", type=int, default=100, help="new tokens per run (must fit the model's context)")
    p.add_argument("--prompt", default="Once upon a time")
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    import torch
    from llama_cpp import Llama

    from tinyllm.inference.export import export_gguf
    from tinyllm.inference.generation import generate_ids
    from tinyllm.model_io import context_length, load_model_folder

    threads = os.cpu_count()
    torch.set_num_threads(threads)
    tmp = Path(tempfile.mkdtemp())
    rows = []
    for folder in a.models:
        model, tok = load_model_folder(folder, device="cpu")
        model.eval()
        ctx = context_length(model.config)
        prompt_ids = tok(a.prompt)["input_ids"]
        n = min(a.tokens, ctx - len(prompt_ids) - 1)  # llama.cpp does not slide past its context
        never = tok.pad_token_id  # generation stops only at max tokens: pad is never sampled
        for outtype in a.outtypes.split(","):
            path = tmp / f"{Path(folder).name}-{outtype}.gguf"
            export_gguf(folder, path, outtype)
            llm = Llama(model_path=str(path), n_ctx=ctx, n_threads=threads, n_batch=ctx, verbose=False, seed=0)

            def cpp() -> float:
                llm.reset()
                start = time.perf_counter()
                made = 0
                for _ in llm.generate(prompt_ids, temp=0.8, top_k=40, top_p=1.0, repeat_penalty=1.0, reset=True):
                    made += 1  # every token counts (llama.cpp's generate() does not stop at eos)
                    if made >= n:
                        break
                return made / (time.perf_counter() - start)

            def ours() -> float:
                start = time.perf_counter()
                gen = generate_ids(model, prompt_ids, n, eos=[never], do_sample=True, temperature=0.8, top_k=40,
                                   top_p=1.0, repetition_penalty=1.0)
                return len(gen.ids) / (time.perf_counter() - start)

            cpp(), ours()  # warm-up
            best_cpp = best_ours = 0.0
            for _ in range(a.repeats):
                best_cpp = max(best_cpp, cpp())
                best_ours = max(best_ours, ours())
            params = sum(p.numel() for p in model.parameters())
            rows.append((Path(folder).name, f"{params / 1e6:.2f}M", outtype, n, best_cpp, best_ours))
    print(f"\nbatch 1, {a.repeats} interleaved runs each (best), {threads} CPU threads, prompt {a.prompt!r}, "
          f"sampling temperature 0.8 / top_k 40\n")
    print("| model | params | GGUF type | new tokens | llama.cpp tok/s | tinyllm generate tok/s (fp32) | "
          "llama.cpp / tinyllm |\n|---|---:|---|---:|---:|---:|---:|")
    for name, params, outtype, n, c, o in rows:
        print(f"| {name} | {params} | {outtype} | {n} | {c:,.0f} | {o:,.0f} | {c / o:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
