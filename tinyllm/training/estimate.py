"""The plan of a run: parameters, tokens per step, tokens per parameter, memory and time estimates,
without training.

Estimates, not measurements: memory = fp32 weights + grads + AdamW moments (16 bytes/param) + activations;
time = (6 * params + 12 * layers * width * context) FLOPs per token (weights + attention scores, the PaLM/nanoGPT
convention) at a sustained throughput measured or typical for each device kind. For tiny models on GPUs the real
time is longer: per-step overhead, not arithmetic, dominates there. The model is built on the meta device, so even
the ~125M preset is planned at once; the ~4.5 s the command takes on a 2-core CPU are imports.
"""

from __future__ import annotations

import os

from tinyllm.formatting import fmt_bytes, fmt_duration

__all__ = ["estimate", "device_memory", "DEVICE_TFLOPS"]

# Sustained training throughput (TFLOP/s, model FLOPs as above). Measured: the 2-core CPU runs the shipped CPU
# recipes at 78-83 GFLOP/s (tinystories 3.07M tokens in 357 s, shakespeare_char 1.54M in 104 s); an H200 (same
# bf16 peak as an H100) runs the 110M recipe at 349 TFLOP/s (benchmarks/RESULTS.md). The others are ~30-35% of
# their bf16/fp16 peak, unmeasured here.
DEVICE_TFLOPS = {
    "cpu (2 cores)": 0.08,
    "apple m-series gpu": 3.0,
    "nvidia t4 (fp16)": 20.0,
    "nvidia a100 (bf16)": 110.0,
    "nvidia h100 (bf16)": 350.0,
}


def device_memory() -> tuple[str, int | None]:
    """(what, bytes) of the memory a run here would train in: the GPU's, or the machine's RAM on CPU/MPS."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0), torch.cuda.mem_get_info()[1]
    try:
        return "RAM", os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return "RAM", None


def estimate(config, data, args, n_params: int, n_params_no_emb: int, train_tokens: int | None,
             world_size: int = 1, memory_limit: tuple[str, int | None] | None = None) -> dict:
    """The plan for a model `config` (its shape is read from the config object) trained with `args` on `data`;
    with `memory_limit` (what, bytes), a warning when the estimate does not fit, saying what to change."""
    n_layer, width, vocab = config.num_hidden_layers, config.hidden_size, config.vocab_size
    micro = args.per_device_train_batch_size
    tokens_per_step = micro * args.gradient_accumulation_steps * world_size * data.block_size
    budget = getattr(args, "time_budget", None)
    steps = args.max_steps if args.max_steps > 0 and not budget else None
    total_tokens = tokens_per_step * steps if steps else None
    if total_tokens is None and train_tokens and not budget:
        total_tokens = int(train_tokens * args.num_train_epochs)
        steps = total_tokens // tokens_per_step
    bytes_per_act = 2 if (args.bf16 or args.fp16) else 4
    # Per layer and token, a transformer block keeps ~34 * width activations for backward (Korthikanti et al.),
    # plus logits (and their gradient) of size vocab per token.
    per_layer = 34 * width
    if getattr(args, "gradient_checkpointing", False):  # keep each layer's input, recompute one layer at a time
        act = micro * data.block_size * (n_layer * width + per_layer + 2 * vocab) * bytes_per_act
    else:
        act = micro * data.block_size * (n_layer * per_layer + 2 * vocab) * bytes_per_act
    state = n_params * 16
    memory = state + act
    flops = (6 * n_params + 12 * n_layer * width * data.block_size) * (total_tokens or 0)
    lines = [
        f"parameters:           {n_params:,} ({n_params_no_emb:,} without embeddings)",
        f"tokens per step:      {tokens_per_step:,} = {micro} batch x {args.gradient_accumulation_steps} accumulation"
        f" x {world_size} process(es) x {data.block_size} block",
        f"steps:                {steps if steps else ('measured against --time_budget ' + budget) if budget else '?'}",
        f"tokens (total):       {total_tokens:,}" if total_tokens else "tokens (total):       unknown (streaming)",
    ]
    if train_tokens:
        lines.append(f"corpus tokens:        {train_tokens:,} ({(total_tokens or 0) / train_tokens:.1f} epochs)")
        ratio = train_tokens / max(n_params, 1)
        lines.append(f"corpus tokens/param:  {ratio:.2f} (Chinchilla-optimal is ~20)")
    if total_tokens:
        lines.append(f"tokens seen/param:    {total_tokens / max(n_params, 1):.2f}")
    lines.append(f"memory estimate:      {fmt_bytes(memory)} per device (weights+grads+AdamW {fmt_bytes(state)}, "
                 f"activations {fmt_bytes(act)})")
    if flops:
        lines.append("time estimate:        " + ", ".join(
            f"{k} {fmt_duration(flops / (v * 1e12 * world_size))}" for k, v in DEVICE_TFLOPS.items()))
    warnings = []
    if train_tokens and train_tokens / max(n_params, 1) < 1:
        warnings.append(f"the model has more parameters ({n_params:,}) than the corpus has tokens ({train_tokens:,}): "
                        f"it will memorise. Use a smaller --preset or more data")
    if memory_limit and memory_limit[1] and memory > 0.9 * memory_limit[1]:
        fixes = [f"--per_device_train_batch_size {max(1, micro // 4)} with --gradient_accumulation_steps "
                 f"{args.gradient_accumulation_steps * (micro // max(1, micro // 4))} (activations "
                 f"{fmt_bytes(act)})", f"a shorter --block_size than {data.block_size}"]
        if not getattr(args, "gradient_checkpointing", False):
            fixes.append("--activation_checkpointing true")
        fixes.append("LoRA instead of full training (tinyllm sft --use_lora true; weights+grads+AdamW "
                     f"{fmt_bytes(state)} here)")
        warnings.append(f"this will not fit: ~{fmt_bytes(memory)} needed, {memory_limit[0]} has "
                        f"{fmt_bytes(memory_limit[1])}. Try " + "; ".join(fixes))
        lines.append(f"{'fits in ' + memory_limit[0] + ':':<22}no")
    elif memory_limit and memory_limit[1]:
        lines.append(f"{'fits in ' + memory_limit[0] + ':':<22}yes ({fmt_bytes(memory_limit[1])})")
    return {"tokens_per_step": tokens_per_step, "steps": steps, "total_tokens": total_tokens, "memory_bytes": memory,
            "flops": flops, "warnings": warnings, "text": "\n".join(lines + [f"warning: {w}" for w in warnings])}
