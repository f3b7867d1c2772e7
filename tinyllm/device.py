"""Per-device precision policy, printed at start.

CUDA: bf16 where the GPU supports it (Ampere+), else fp16 with loss scaling. Apple MPS: fp32 (fp16 autocast on
MPS gives errors and NaNs for many users). CPU: fp32, bf16 only when asked (`--precision bf16`).
On CUDA and on the CPU the default AdamW becomes the fused kernel (same algorithm, one kernel for all parameters:
on a 2-core CPU 0.36 ms per step against 1.15 ms for the foreach one, for the 0.8M nano model:
benchmarks/micro_bench.py).
"""

from __future__ import annotations

import logging

from tinyllm.errors import ConfigError, suggest

__all__ = ["detect_device", "declare_cpu", "apply_precision_policy", "describe_device", "compile_loader_settings"]

logger = logging.getLogger(__name__)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def detect_device(use_cpu: bool = False) -> str:
    import torch

    if use_cpu:
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def declare_cpu(args) -> None:
    """On a machine without an accelerator, set `use_cpu` before TrainingArguments resolves its device.

    Without it, transformers 5 treats CPU multi-process runs (DDP over gloo) as non-distributed and mis-scales the
    loss (2x with 2 processes); declaring the CPU up front makes them match one process. Called from the
    TrainingArguments subclasses' __post_init__, so Python callers get the same rule as the command line."""
    if not args.use_cpu and detect_device() == "cpu":
        args.use_cpu = True


def apply_precision_policy(args) -> None:
    """Set args.bf16 / args.fp16 from args.precision and the device, the fused AdamW where it runs, and drop
    torch.compile where it cannot work. Called from the TrainingArguments subclasses' __post_init__ *before*
    TrainingArguments' own, which derives from these fields what Trainer reads (`mixed_precision`, the optimizer
    enum, the dynamo backend): set afterwards, the policy would print "bf16" and train in fp32."""
    import torch

    if args.precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got '{args.precision}'"
                          + suggest(args.precision, PRECISIONS))
    device = detect_device(args.use_cpu)
    choice = args.precision
    if args.bf16 or args.fp16:  # the transformers flags, if a user set them, win over auto
        choice = "bf16" if args.bf16 else "fp16"
    if choice == "auto":
        if device == "cuda":
            choice = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            choice = "fp32"
    if device == "mps" and choice == "fp16":
        raise ConfigError("fp16 mixed precision is not supported on Apple MPS (NaNs/errors); use --precision fp32")
    if device == "cpu" and choice == "fp16":
        raise ConfigError("fp16 mixed precision needs a CUDA GPU; on CPU use --precision fp32 (or bf16)")
    if device == "cuda" and choice == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError("this GPU does not support bf16; use --precision fp16")
    args.bf16, args.fp16 = choice == "bf16", choice == "fp16"
    if device in ("cuda", "cpu") and args.optim == "adamw_torch":
        args.optim = "adamw_torch_fused"
    if getattr(args, "torch_compile", False):
        _check_compile(args, device)


def describe_device(args) -> str:
    """The device/precision line logged at the start of a run (after apply_precision_policy)."""
    import torch

    device = detect_device(args.use_cpu)
    precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
    name = torch.cuda.get_device_name(0) if device == "cuda" else device
    desc = f"device: {name} | precision: {precision}{' (auto)' if args.precision == 'auto' else ''} | attention: sdpa"
    if str(getattr(args.optim, "value", args.optim)) == "adamw_torch_fused":
        desc += " | fused AdamW"
    if getattr(args, "torch_compile", False):
        desc += " | torch.compile"
    return desc


def _check_compile(args, device: str) -> None:
    """torch.compile where it works: not on Apple MPS (experimental there), and on the CPU only with a C++
    compiler (Inductor writes C++). Otherwise train eagerly, with a warning, rather than fail at the first step."""
    import shutil

    why = None
    if device == "mps":
        why = "torch.compile's Apple MPS backend is experimental"
    elif device == "cpu" and not any(shutil.which(c) for c in ("c++", "g++", "clang++", "cl")):
        why = "compiling for the CPU needs a C++ compiler (g++ or clang++), and none is on PATH"
    if why:
        logger.warning("torch_compile: %s; training without it", why)
        args.torch_compile, args.torch_compile_backend, args.torch_compile_mode = False, None, None


def compile_loader_settings(args, n_train: int | None) -> dict:
    """DataLoader settings for torch.compile runs: a smaller last batch changes the traced shapes and triggers a
    recompilation at every epoch end (46 s on an H200 for GPT-2 small, measured), so drop that partial batch
    (packed data: a few sequences per epoch, reshuffled each epoch) and keep the loader workers alive across
    epochs. Returns the TrainingArguments fields to set (empty without torch.compile)."""
    if not args.torch_compile:
        return {}
    out = {}
    if n_train is not None and n_train >= args.per_device_train_batch_size * max(1, args.world_size):
        out["dataloader_drop_last"] = True
    if args.dataloader_num_workers > 0:
        out["dataloader_persistent_workers"] = True
    return out
