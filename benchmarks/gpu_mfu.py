"""GPU throughput and MFU of the ~125M recipe (recipes/configs/gpt2_125m.yaml) in bf16 with torch.compile.

    python benchmarks/gpu_mfu.py --output_dir /tmp/mfu [--steps 150] [--batch 32]

Trains on the built-in corpus (no download) through the real recipe (Trainer, accelerate, bf16 policy) and reads
tokens/s from the training logs after warm-up/compilation. MFU = achieved model FLOP/s / the GPU's dense bf16
peak, with model FLOPs per token = 6 N (+ 12 L d T for attention scores, the PaLM convention).
"""

import argparse
import json
import sys
import time
from pathlib import Path

PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L4": 121.0, "A10": 125.0, "4090": 165.2}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", default="/tmp/tinyllm_mfu")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--documents", type=int, default=60000)
    p.add_argument("--compile", default="true")
    a = p.parse_args()

    import torch

    from tinyllm.__main__ import run

    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    start = time.time()
    code = run("pretrain", [
        "--config", "recipes/configs/gpt2_125m.yaml", "--dataset_name", "builtin", "--text_column", "text",
        "--builtin_num_documents", str(a.documents), "--tokenizer_max_documents", str(a.documents),
        "--output_dir", a.output_dir, "--overwrite_output_dir", "true", "--max_steps", str(a.steps),
        "--per_device_train_batch_size", str(a.batch), "--gradient_accumulation_steps", "1",
        "--eval_strategy", "no", "--save_strategy", "no", "--validation_split_percentage", "0", "--logging_steps", "10", "--report_to", "none",
        "--warmup_steps", "20", "--torch_compile", a.compile, "--preprocessing_num_workers", "8",
        "--sample_max_new_tokens", "32", "--plot_loss", "false",
    ])
    if code:
        return code
    out = Path(a.output_dir)
    state = json.loads((out / "trainer_state.json").read_text())
    cfg = json.loads((out / "config.json").read_text())
    results = json.loads((out / "all_results.json").read_text())
    rates = [h["tokens_per_second"] for h in state["log_history"] if "tokens_per_second" in h]
    if not rates:
        print("no tokens/s logged: run more --steps (logging every 10)")
        return 1
    steady = rates[2:] or rates  # the first intervals include torch.compile and warm-up
    tps = sorted(steady)[len(steady) // 2]
    n = results["parameters"]
    layers, width, ctx = cfg["n_layer"], cfg["n_embd"], cfg["n_positions"]
    flops_6n = 6 * n * tps
    flops_attn = (6 * n + 12 * layers * width * ctx) * tps
    rows = [
        ("GPU", name), ("parameters", f"{n:,}"), ("context / micro-batch", f"{ctx} / {a.batch}"),
        ("precision", "bf16 autocast (tinyllm auto policy)"), ("torch.compile", a.compile),
        ("tokens/s (median of steady logging intervals)", f"{tps:,.0f}"),
        ("model TFLOP/s (6N)", f"{flops_6n / 1e12:.1f}"), ("model TFLOP/s (6N + attention)", f"{flops_attn / 1e12:.1f}"),
    ]
    if peak:
        rows += [("MFU (6N)", f"{100 * flops_6n / (peak * 1e12):.1f}%"),
                 ("MFU (6N + attention)", f"{100 * flops_attn / (peak * 1e12):.1f}%"),
                 ("peak used", f"{peak} TFLOP/s dense bf16")]
    rows += [("final train loss", f"{results.get('train_loss', float('nan')):.3f}"),
             ("wall time incl. data, tokenizer, compile", f"{time.time() - start:.0f} s"),
             ("all logged tokens/s", ", ".join(f"{r:,.0f}" for r in rates))]
    table = "| metric | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    print(table)
    (out / "gpu_mfu.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
