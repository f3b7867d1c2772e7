"""Size presets -> GPT2Config / LlamaConfig, vocab checks and parameter counts.

Only standard transformers classes are used (GPT2LMHeadModel, LlamaForCausalLM), so checkpoints load anywhere
with no custom code and convert to GGUF with the usual tools.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

from tinyllm.errors import ConfigError, first_line, suggest

__all__ = ["PRESETS", "Preset", "build_config", "apply_overrides", "pad_vocab", "check_vocab", "describe_presets",
           "resolve_block_size", "eval_mode"]


@dataclass(frozen=True)
class Preset:
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int  # the default context (block_size) of a run with this preset
    note: str


PRESETS: dict[str, Preset] = {
    # nanoGPT's CPU recipe shape (train_shakespeare_char.py --device=cpu ...): ~0.8M parameters
    "nano": Preset(4, 4, 128, 64, "nanoGPT CPU shape, ~0.8M params with a char vocab"),
    "micro": Preset(6, 6, 192, 256, "~3M params: a few minutes on a laptop CPU"),
    # nanoGPT's "baby GPT" (train_shakespeare_char.py defaults): ~10.7M parameters
    "baby": Preset(6, 6, 384, 256, "nanoGPT baby GPT, ~10M params: a GPU or an M-series Mac"),
    "small": Preset(8, 8, 512, 512, "~30M params with an 8k vocab: one GPU"),
    "medium": Preset(10, 10, 640, 1024, "~55M params: one GPU"),
    # GPT-2 small shape: 124M parameters with GPT-2's 50257 vocab
    "gpt2-small": Preset(12, 12, 768, 1024, "GPT-2 small shape, ~85M + embeddings (124M at a 50k vocab)"),
}


def describe_presets() -> str:
    rows = [f"{'preset':<11} {'layers':>6} {'heads':>5} {'width':>5} {'context':>7}  note"]
    rows += [f"{k:<11} {p.n_layer:>6} {p.n_head:>5} {p.n_embd:>5} {p.block_size:>7}  {p.note}"
             for k, p in PRESETS.items()]
    return "\n".join(rows)


def pad_vocab(n: int, multiple: int = 64) -> int:
    """Embedding rows rounded up to a multiple of 64: faster matmuls on GPUs, room for the tokenizer."""
    return int(math.ceil(n / multiple) * multiple)


def build_config(model_args, vocab_size: int, block_size: int, bos_id: int, eos_id: int, pad_id: int):
    """A GPT2Config or LlamaConfig for `model_args` (preset + overrides) and the tokenizer's special ids."""
    from transformers import GPT2Config, LlamaConfig

    p = PRESETS[model_args.preset]
    n_layer = model_args.n_layer or p.n_layer
    n_head = model_args.n_head or p.n_head
    n_embd = model_args.n_embd or p.n_embd
    if n_embd % n_head:
        raise ConfigError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head}); change --n_embd or --n_head")
    common = dict(vocab_size=pad_vocab(vocab_size), bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id,
                  tie_word_embeddings=model_args.tie_word_embeddings)
    if model_args.model_type == "gpt2":
        cfg = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=block_size,
                         n_inner=model_args.intermediate_size, resid_pdrop=model_args.dropout,
                         embd_pdrop=model_args.dropout, attn_pdrop=model_args.dropout, **common)
    else:
        n_kv = model_args.n_kv_head or n_head
        if n_head % n_kv:
            raise ConfigError(f"n_head ({n_head}) must be divisible by n_kv_head ({n_kv})")
        # SwiGLU has 3 matrices, so 8/3 x width keeps the MLP's parameters equal to a 4x GELU MLP; rounded to the
        # nearest multiple of 64 (rounding up made nano's MLP 12.5% larger than GELU's and its training step 11%
        # slower: 384 vs 320 for width 128, benchmarks/RESULTS.md).
        inter = model_args.intermediate_size or max(64, 64 * round(8 * n_embd / 3 / 64))
        cfg = LlamaConfig(num_hidden_layers=n_layer, num_attention_heads=n_head, num_key_value_heads=n_kv,
                          hidden_size=n_embd, intermediate_size=inter, max_position_embeddings=block_size,
                          attention_dropout=model_args.dropout, rms_norm_eps=1e-5, **common)
    if model_args.config_overrides:
        apply_overrides(cfg, model_args.config_overrides)
    return cfg


def apply_overrides(cfg, text: str) -> None:
    """'key=value,key=value' onto a config with transformers' own PretrainedConfig.update_from_string (values
    take the type of the field they replace); one-line errors that name the key."""
    names = list(cfg.to_dict())
    for item in (x.strip() for x in text.split(",")):
        if item and "=" not in item:
            raise ConfigError(f"config_overrides item '{item}' must look like key=value, e.g. 'rope_theta=500000'")
        key = item.split("=", 1)[0].strip()
        if item and not hasattr(cfg, key):
            raise ConfigError(f"config_overrides: '{key}' is not a {type(cfg).__name__} field{suggest(key, names)}")
    try:
        cfg.update_from_string(",".join(x.strip() for x in text.split(",") if x.strip()))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"config_overrides '{text}': {first_line(exc)}") from exc


def check_vocab(tokenizer, config, where: str = "the model") -> None:
    """Every token id must have an embedding row, else CUDA fails later with an opaque device-side assert."""
    n = len(tokenizer)
    if n > config.vocab_size:
        raise ConfigError(f"the tokenizer has {n} tokens but {where} has only {config.vocab_size} embedding rows; "
                          f"use the tokenizer saved with that model (or retrain the model with this tokenizer)")


def resolve_block_size(model_args, data) -> int:
    """block_size defaults to the preset's context, or to the loaded model's (at most 1024); it may not exceed the
    model's. Sets and returns data.block_size."""
    import json
    from pathlib import Path

    limit = None
    if model_args.model_name_or_path:
        cfg_path = Path(model_args.model_name_or_path) / "config.json"
        if cfg_path.is_file():
            cfg = json.loads(cfg_path.read_text())
            limit = cfg.get("max_position_embeddings") or cfg.get("n_positions")
    if data.block_size is None:
        data.block_size = min(limit, 1024) if limit else PRESETS[model_args.preset].block_size
    if limit and data.block_size > limit:
        raise ConfigError(f"block_size {data.block_size} exceeds the model's context of {limit}; lower --block_size")
    return data.block_size


@contextmanager
def eval_mode(model):
    """The model in eval mode (no dropout) for the block, then back to the mode it was in: the one switch for
    training-time samples, answer scoring and loss measurement."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        if was_training:
            model.train()
