"""GPU tokens/s and MFU of the ~125M recipe (recipes/configs/gpt2_125m.yaml) in bf16, against a plain PyTorch
loop on the same model, data, batch and optimizer, measured side by side in one run.

    python benchmarks/gpu_mfu.py --output_dir /tmp/mfu [--model_type gpt2|llama] [--steps 200] [--batch 32]

The recipe runs through the real path (tinyllm pretrain: Trainer, accelerate, the bf16 policy, fused AdamW,
torch.compile) on the built-in corpus (no download). The built-in corpus only needs a few thousand tokens, so the
embedding matrix is set to the recipe's 32,000 rows (`--model_vocab`; unused rows cost the same compute), which
gives the recipe's real shape: ~110M parameters for GPT-2 small. tokens/s is the median over logging intervals
after compilation and warm-up. MFU = achieved model FLOP/s / the GPU's dense bf16 peak; model FLOPs per token =
6N + 12 L d T (attention scores), the PaLM / nanoGPT convention; the 6N-only figure is printed too.
"""

import argparse
import gc
import json
import sys
import time
from pathlib import Path

# dense bf16 peaks (TFLOP/s, without sparsity); "H100 PCIe" must be looked up before "H100"
PEAK_BF16_TFLOPS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4), ("H20", 148.0),
                    ("B200", 2250.0), ("A100", 312.0), ("A10", 125.0), ("L40S", 362.1), ("L4", 121.0),
                    ("4090", 165.2)]


def peak_tflops(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16_TFLOPS if k in name), None)


def flops_per_token(config, n_params: int) -> tuple[float, float]:
    """(6N, 6N + 12 L d T). GPT2Config maps n_layer/n_embd/n_positions to these names, so both families work."""
    attention = 12 * config.num_hidden_layers * config.hidden_size * config.max_position_embeddings
    return 6 * n_params, 6 * n_params + attention


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", default="/tmp/tinyllm_mfu")
    p.add_argument("--model_type", default="gpt2", choices=["gpt2", "llama"])
    p.add_argument("--steps", type=int, default=200, help="tinyllm steps (logged every 10; the first 30 are dropped)")
    p.add_argument("--baseline_steps", type=int, default=60, help="plain-loop steps timed after 20 warm-up steps")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--documents", type=int, default=60000)
    p.add_argument("--model_vocab", type=int, default=32000)
    p.add_argument("--compile", default="true")
    p.add_argument("--report", default=None, help="also append the table to this markdown file")
    a, extra = p.parse_known_args()  # anything else goes to the recipe, e.g. --preset nano for a CPU smoke run

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from throughput import logged_tokens_per_second, plain_loop

    from tinyllm.cli import run
    from tinyllm.config import DataArguments
    from tinyllm.data.packing import build_lm_datasets
    from tinyllm.model_io import load_tokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    peak = peak_tflops(name)
    compile_ = a.compile.lower() == "true"
    start = time.time()
    code = run("pretrain", [
        "--config", "recipes/configs/gpt2_125m.yaml", "--model_type", a.model_type, "--dataset_name", "builtin",
        "--text_column", "text", "--builtin_num_documents", str(a.documents),
        "--tokenizer_max_documents", str(a.documents), "--config_overrides", f"vocab_size={a.model_vocab}",
        "--output_dir", a.output_dir, "--overwrite_output_dir", "true", "--max_steps", str(a.steps),
        "--per_device_train_batch_size", str(a.batch), "--gradient_accumulation_steps", "1",
        "--eval_strategy", "no", "--save_strategy", "no", "--validation_split_percentage", "0",
        "--logging_steps", "10", "--report_to", "none", "--warmup_steps", "20", "--torch_compile", a.compile,
"--sample_max_new_tokens", "32", "--plot_loss", "false", "--seed", "0",
        *extra,
    ])
    if code:
        return code
    recipe_wall = time.time() - start
    out = Path(a.output_dir)
    config = AutoConfig.from_pretrained(out)
    ctx = config.max_position_embeddings
    results = json.loads((out / "all_results.json").read_text())
    rates, ours = logged_tokens_per_second(out, skip=2)  # the first intervals include torch.compile and warm-up
    if len(rates) < 4:
        print("too few tokens/s logs: run more --steps (logged every 10, the first 30 dropped)")
        return 1

    # baseline: the same architecture (from the saved config), packed data, batch, fused AdamW, bf16 autocast
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    tok = load_tokenizer(str(out))
    data = DataArguments(dataset_name="builtin", builtin_num_documents=a.documents, block_size=ctx,
                         validation_split_percentage=0)
    lm = build_lm_datasets(data, tok, seed=0)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    n = model.num_parameters()
    if compile_:
        model = torch.compile(model)
    plain = plain_loop(model, lm.train, a.batch, a.baseline_steps, 20, 6e-4, device == "cuda", device,
                       fused=device == "cuda")

    f6n, fatt = flops_per_token(config, n)

    def mfu(tps: float, f: float) -> str:
        return f"{100 * tps * f / (peak * 1e12):.1f}%" if peak else "n/a (unknown GPU peak)"

    head = ("| GPU | model | params | batch x context | path | tokens/s | model TFLOP/s (6N+attn) | MFU (6N+attn) | "
            "MFU (6N) |\n|---|---|---:|---|---|---:|---:|---:|---:|")
    shape = f"{a.model_type} {config.num_hidden_layers}L/{config.hidden_size}, vocab {config.vocab_size:,}"
    rows = []
    for label, tps in (("plain PyTorch loop", plain), ("tinyllm recipe (Trainer)", ours)):
        rows.append(f"| {name} | {shape} | {n:,} | {a.batch} x {ctx} | {label} | {tps:,.0f} | "
                    f"{tps * fatt / 1e12:.1f} | {mfu(tps, fatt)} | {mfu(tps, f6n)} |")
    table = "\n".join([head, *rows])
    notes = (f"framework overhead: {100 * (plain - ours) / plain:+.1f}% tokens/s vs the plain loop; peak used: "
             f"{peak} TFLOP/s dense bf16; torch.compile: {compile_}; "
             f"final train loss {results.get('train_loss', 0):.3f}"
             f"; recipe wall time incl. tokenizer, data, compile: {recipe_wall:.0f} s; tinyllm logged tokens/s: "
             + ", ".join(f"{r:,.0f}" for r in rates))
    print(table)
    print(notes)
    (out / "gpu_mfu.md").write_text(table + "\n\n" + notes + "\n")
    if a.report:
        with open(a.report, "a") as f:
            f.write(table + "\n\n" + notes + "\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
