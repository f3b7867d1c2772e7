"""Where the time of one training step goes: nanoGPT's model (from the checkout) against transformers' Llama (as
tinyllm trains it, and with its RMSNorm forward swapped for torch.nn.functional.rms_norm) and GPT-2, same shape and
batch (nanoGPT's CPU
shakespeare_char: 4 layers, 4 heads, 128 wide, context 64, batch 12, vocab 65), a plain loop of forward +
backward + AdamW so only the model code differs. Prints the median step time and a torch.profiler breakdown by
kind of op.

    python benchmarks/profile_step.py --nanogpt_dir /path/to/nanoGPT
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from timing import interleaved_times

KINDS = [  # (kind, substrings of aten op names), first match wins
    ("matmul", ("addmm", "aten::mm", "bmm", "aten::matmul", "aten::linear")),
    ("attention", ("scaled_dot_product", "_flash", "_efficient_attention")),
    ("optimizer", ("_foreach", "adam", "lerp", "addcdiv", "addcmul", "sqrt_")),
    ("loss", ("cross_entropy", "log_softmax", "nll_loss", "_log_softmax")),
    ("norms", ("layer_norm", "rms_norm", "rsqrt", "pow", "aten::mean")),
    ("embedding", ("embedding",)),
    ("copies / casts", ("copy_", "aten::to", "_to_copy", "contiguous", "clone")),
    ("elementwise", ("aten::mul", "aten::add", "aten::neg", "aten::cat", "silu", "gelu", "tanh", "aten::div",
                     "aten::sub", "where", "aten::slice", "index", "aten::cos", "aten::sin")),
]


def kind_of(name: str) -> str:
    for kind, keys in KINDS:
        if any(k in name for k in keys):
            return kind
    return "other"


def build(which: str, nano: Path):
    import torch

    torch.manual_seed(0)
    if which == "nanoGPT":
        sys.path.insert(0, str(nano))
        from model import GPT, GPTConfig

        model = GPT(GPTConfig(block_size=64, vocab_size=65, n_layer=4, n_head=4, n_embd=128, dropout=0.0,
                              bias=False))

        def loss_fn(x, y):
            return model(x, y)[1]
        return model, loss_fn
    from transformers import AutoModelForCausalLM

    from tinyllm.config import ModelArguments
    from tinyllm.modeling import build_config

    arch = "gpt2" if which.startswith("gpt2") else "llama"
    cfg = build_config(ModelArguments(model_type=arch, preset="nano"), 65, 64, 0, 1, 2)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    if "rms_norm" in which:  # the experiment: RMSNorm as one torch op (not used by tinyllm: no gain measured)
        import types

        def rms(self, h):
            return self.weight * torch.nn.functional.rms_norm(h, (h.shape[-1],), None, self.variance_epsilon)

        for module in model.modules():
            if type(module).__name__.endswith("RMSNorm"):
                module.forward = types.MethodType(rms, module)

    def loss_fn(x, y):
        return model(input_ids=x, labels=y).loss
    return model, loss_fn


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nanogpt_dir", required=True)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--by_shape", action="store_true",
                   help="also list the costliest elementwise ops of the Llama step by input shape")
    a = p.parse_args()
    import torch
    from torch.profiler import ProfilerActivity, profile

    nano = Path(a.nanogpt_dir).resolve()
    x = torch.randint(0, 65, (12, 64))
    rows, breakdowns = [], {}
    names = ["nanoGPT", "llama (transformers)", "llama + F.rms_norm", "gpt2 (transformers)"]
    setups = {n: build(n, nano) for n in names}
    opts = {n: torch.optim.AdamW(m.parameters(), lr=1e-3, foreach=True) for n, (m, _) in setups.items()}

    def step(n):
        model, loss_fn = setups[n]
        loss = loss_fn(x, x)
        loss.backward()
        opts[n].step()
        opts[n].zero_grad(set_to_none=True)

    times = interleaved_times(names, step, a.steps)
    for n in names:
        with profile(activities=[ProfilerActivity.CPU], record_shapes=a.by_shape) as prof:
            for _ in range(5):
                step(n)
        if a.by_shape and n == "llama (transformers)":
            rows = [(ev.self_cpu_time_total / 5, ev.count // 5, ev.key, str(ev.input_shapes))
                    for ev in prof.key_averages(group_by_input_shape=True)
                    if ev.key in ("aten::mul", "aten::add", "aten::silu", "aten::silu_backward", "aten::cat")]
            print("\nLlama, costliest elementwise ops by input shape (per step)\n\n| op | input shapes | calls | us "
                  "per call |\n|---|---|---:|---:|")
            for total, count, key, shapes in sorted(rows, reverse=True)[:8]:
                print(f"| {key} | {shapes} | {count} | {total / max(count, 1):.0f} |")
        by_kind, calls = defaultdict(float), 0
        for ev in prof.key_averages():
            if ev.key.startswith("aten::") and not ev.key.startswith(("aten::empty", "aten::view", "aten::as_strided",
                                                                       "aten::detach", "aten::t", "aten::transpose",
                                                                       "aten::expand", "aten::reshape",
                                                                       "aten::unsqueeze", "aten::permute")):
                by_kind[kind_of(ev.key)] += ev.self_cpu_time_total / 5 / 1000
                calls += ev.count // 5
        breakdowns[n] = (by_kind, calls)
        rows.append((n, statistics.median(times[n]) * 1000))
    base = rows[0][1]
    print(f"\nforward + backward + AdamW, batch 12 x 64, median of {a.steps} interleaved steps, "
          f"{torch.get_num_threads()} threads\n")
    print("| model | ms / step | tokens/s | vs nanoGPT | aten op calls / step |\n|---|---:|---:|---:|---:|")
    for n, ms in rows:
        print(f"| {n} | {ms:.1f} | {12 * 64 / ms * 1000:,.0f} | {base / ms:.2f}x | {breakdowns[n][1]:,} |")
    kinds = [k for k, _ in KINDS] + ["other"]
    print("\nself CPU time per step by kind of op (ms, torch.profiler)\n")
    print("| kind | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names))
    for k in kinds:
        print(f"| {k} | " + " | ".join(f"{breakdowns[n][0].get(k, 0.0):.1f}" for n in names) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
