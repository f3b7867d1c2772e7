"""The speedrun's probe: this machine's training speed, in tokens per second, for each candidate shape.

Each shape is built exactly as pretraining builds it (modeling.build_config), then trained for a fraction of a
second on random tokens (forward, backward, AdamW step; bf16 autocast on CUDA as the precision policy does) after
two warm-up steps; its speed is that of its median step, so that a slow step (the first shape pays the process's
cold start, another program takes the CPU for a moment) does not decide it: a 2-minute TinyStories speedrun measured
2x64 slower than 3x96 (21,964 against 23,802 tokens per second), chose 2x64 on that speed, and its trainer then
ran 3,050 steps of the ~1,141 planned. Shapes are tried from the smallest up; the ladder stops at the first shape
that could not see `min_tokens_per_param` tokens per parameter in the time there is (bigger ones would see even
fewer), runs out of memory, or passes the device table's reach (training.estimate.DEVICE_TFLOPS) so a slow device
never builds a model it could not train.
"""

from __future__ import annotations

import logging
import statistics
import time

from tinyllm.config import ModelArguments
from tinyllm.modeling import build_config
from tinyllm.training.estimate import DEVICE_TFLOPS
from tinyllm.training.sizing import Shape, block_size_for

__all__ = ["measure_speeds", "micro_batch_for", "device_tflops"]

logger = logging.getLogger(__name__)


def micro_batch_for(device: str, block_size: int) -> int:
    """Sequences per forward pass: 16 on a CPU, 64 on a GPU (fewer for long contexts)."""
    if device == "cpu":
        return 16
    return max(8, 64 * 256 // max(block_size, 256))


def device_tflops(device: str) -> float:
    """The planner's sustained TFLOP/s for this device kind (training.estimate.DEVICE_TFLOPS)."""
    if device == "cpu":
        return DEVICE_TFLOPS["cpu (2 cores)"]
    if device == "mps":
        return DEVICE_TFLOPS["apple m-series gpu"]
    import torch

    name = torch.cuda.get_device_name(0).lower()
    for key in ("h100", "a100", "t4"):
        if key in name:
            return next(v for k, v in DEVICE_TFLOPS.items() if key in k)
    if "h200" in name or "b200" in name:
        return DEVICE_TFLOPS["nvidia h100 (bf16)"]
    return DEVICE_TFLOPS["nvidia a100 (bf16)"]


def _step_fn(model, optimizer, batch, device: str):
    import torch

    def step():
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
    return step


def measure_one(shape: Shape, vocab_size: int, tokenizer_type: str, device: str, seconds: float) -> float:
    """Tokens per second of a training step of `shape` on `device`."""
    import torch
    from transformers import AutoModelForCausalLM

    block = block_size_for(shape, tokenizer_type)
    micro = micro_batch_for(device, block)
    args = ModelArguments(n_layer=shape.n_layer, n_head=shape.n_head, n_embd=shape.n_embd)
    config = build_config(args, vocab_size, block, 1, 2, 0)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa").to(device)
    model.train()
    fused = device in ("cpu", "cuda")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
    batch = torch.randint(3, vocab_size, (micro, block), device=device)
    step = _step_fn(model, optimizer, batch, device)
    step()  # warm-up: allocations, kernels
    step()
    times: list[float] = []
    start = time.perf_counter()
    while not times or (time.perf_counter() - start < seconds and len(times) < 20):
        began = time.perf_counter()
        step()
        times.append(time.perf_counter() - began)
    return micro * block / statistics.median(times)


def measure_speeds(shapes: list[Shape], vocab_size: int, tokenizer_type: str, device: str, train_seconds: float,
                   seconds_each: float = 0.5, min_tokens_per_param: float = 0.1) -> dict[Shape, float]:
    """{shape: tokens per second} for the shapes worth measuring here, smallest first."""
    import torch

    tflops = device_tflops(device)
    speeds: dict[Shape, float] = {}
    for shape in shapes:
        n = shape.non_embedding_params() + vocab_size * shape.n_embd
        # the device table's reach: the tokens this shape could see at the table's throughput
        if tflops * 1e12 * train_seconds / (6 * n) < min_tokens_per_param * n:
            logger.info("probe: %s not tried (the device table gives it under %g tokens per parameter)", shape.name,
                        min_tokens_per_param)
            break
        try:
            tps = measure_one(shape, vocab_size, tokenizer_type, device, seconds_each)
        except torch.OutOfMemoryError:
            logger.info("probe: %s runs out of memory here", shape.name)
            break
        finally:
            if device == "cuda":
                torch.cuda.empty_cache()
        speeds[shape] = tps
        logger.info("probe: %-7s %8.2fM parameters  %10s tokens/s", shape.name, n / 1e6, f"{tps:,.0f}")
        if tps * train_seconds < min_tokens_per_param * shape.non_embedding_params():
            break
    return speeds
