"""Pretraining throughput: tinyllm (transformers.Trainer + accelerate) against a plain PyTorch loop on the same
model, data, batch, optimizer and precision, measured side by side in one run.

    python benchmarks/throughput.py                                  # CPU: nano preset, block 128
    python benchmarks/throughput.py --preset gpt2-small --model_type gpt2 --block_size 1024 --batch 32 --compile

Prints a markdown table; the overhead is (plain - tinyllm) / plain tokens/s.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def plain_loop(model, train, batch: int, steps: int, warmup: int, lr: float, bf16: bool, device: str,
               fused: bool = False) -> float:
    """The baseline: AdamW + grad clipping, same batches in order, bf16 autocast on CUDA. Returns tokens/s."""
    import torch

    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.1, fused=fused or None)
    n_rows = min(len(train), batch * (steps + warmup))  # the blocks the loop uses, read from the shards once
    rows = [train[i] for i in range(n_rows)]
    ids = torch.stack([r["input_ids"] for r in rows])
    labels = torch.stack([r["labels"] for r in rows])
    n = ids.shape[0] // batch
    tokens = 0
    start = None
    for step in range(steps + warmup):
        if step == warmup:
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        i = step % n
        x = ids[i * batch:(i + 1) * batch].to(device, non_blocking=True)
        y = labels[i * batch:(i + 1) * batch].to(device, non_blocking=True)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=x, labels=y).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= warmup:
            tokens += x.numel()
    if device == "cuda":
        torch.cuda.synchronize()
    loss.item()
    return tokens / (time.perf_counter() - start)


def logged_tokens_per_second(out_dir, skip: int) -> tuple[list[float], float]:
    """tinyllm's logged tokens/s intervals from a run's trainer_state.json, and their median after the first
    `skip` intervals (warm-up, compilation; all of them if there are no more)."""
    hist = json.loads((Path(out_dir) / "trainer_state.json").read_text())["log_history"]
    rates = [h["tokens_per_second"] for h in hist if "tokens_per_second" in h]
    steady = rates[skip:] or rates
    return rates, sorted(steady)[len(steady) // 2]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="nano")
    p.add_argument("--model_type", default="llama")
    p.add_argument("--block_size", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--documents", type=int, default=20000)
    p.add_argument("--vocab_size", type=int, default=2048)
    p.add_argument("--compile", action="store_true")
    a = p.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from tinyllm.cli import run
    from tinyllm.config import DataArguments, ModelArguments
    from tinyllm.data.packing import build_lm_datasets
    from tinyllm.model_io import load_tokenizer
    from tinyllm.modeling import build_config

    device = "cuda" if torch.cuda.is_available() else "cpu"
    bf16 = device == "cuda"
    work = Path(tempfile.mkdtemp(prefix="tinyllm_tput_"))
    common = ["--dataset_name", "builtin", "--builtin_num_documents", str(a.documents), "--vocab_size",
              str(a.vocab_size), "--model_type", a.model_type, "--preset", a.preset, "--block_size", str(a.block_size),
              "--per_device_train_batch_size", str(a.batch), "--eval_strategy", "no", "--save_strategy", "no",
              "--validation_split_percentage", "0", "--report_to", "none", "--warmup_steps", "10",
              "--learning_rate", "1e-3", "--plot_loss", "false", "--sample_max_new_tokens", "8",
              "--torch_compile", "true" if a.compile else "false", "--seed", "0"]
    # tinyllm: the real recipe path; tokens/s from its logs (median over intervals after warm-up)
    log_every = max(10, a.warmup)
    start = time.time()
    code = run("pretrain", common + ["--max_steps", str(a.steps + a.warmup), "--logging_steps", str(log_every),
                                     "--output_dir", str(work / "tinyllm")])
    if code:
        return code
    rates, ours = logged_tokens_per_second(work / "tinyllm", skip=1)
    # plain PyTorch: same tokenizer, packed data, model config and seed
    tok = load_tokenizer(str(work / "tinyllm"))
    margs = ModelArguments(model_type=a.model_type, preset=a.preset)
    data = DataArguments(dataset_name="builtin", builtin_num_documents=a.documents, block_size=a.block_size,
                         validation_split_percentage=0)
    lm = build_lm_datasets(data, tok, seed=0)
    torch.manual_seed(0)
    cfg = build_config(margs, len(tok), a.block_size, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    if a.compile:
        model = torch.compile(model)
    # tinyllm uses fused AdamW on CUDA (device policy): the baseline gets the same optimizer
    plain = plain_loop(model, lm.train, a.batch, a.steps, a.warmup, 1e-3, bf16, device, fused=device == "cuda")
    name = torch.cuda.get_device_name(0) if device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    overhead = 100 * (plain - ours) / plain
    print(f"\n| device | model | params | batch x block | compile | plain PyTorch tok/s | tinyllm (Trainer) tok/s | "
          f"overhead |\n|---|---|---|---|---|---:|---:|---:|\n| {name} | {a.model_type} {a.preset} | "
          f"{model.num_parameters():,} | {a.batch} x {a.block_size} | {a.compile} | {plain:,.0f} | {ours:,.0f} | "
          f"{overhead:+.1f}% |")
    shown = ", ".join(f"{r:,.0f}" for r in rates)
    print(f"(tinyllm logged intervals: {shown}; total wall {time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
