"""A lean batch-1 decoding loop, used by `tinyllm.generation` when the sampling settings allow it.

The boundary: `fast_decode(...)` returns the new token ids, or None when the settings need transformers'
`generate()` itself (beams, min_p, n-gram bans, ...). For the settings it accepts it applies generate()'s own
logits processors (same classes, same order) and its softmax + multinomial (or argmax), so the same seed picks the
same tokens (tested for Llama and GPT-2). It skips generate()'s per-token bookkeeping, which at batch 1 on a small
model rivals the arithmetic: 1.17x generate()'s tokens/s on a 2-core CPU (benchmarks/generation_bench.py).
"""

from __future__ import annotations

import copy
import inspect

__all__ = ["fast_decode", "fast_processors"]

# Settings reproduced exactly; anything else goes through generate().
_FAST_KEYS = {"do_sample", "temperature", "top_k", "top_p", "repetition_penalty", "max_new_tokens", "max_length",
              "eos_token_id", "pad_token_id", "bos_token_id", "transformers_version", "_from_model_config"}


def fast_processors(model, kwargs: dict):
    """(logits processors, do_sample) that generate() would use for these settings, or None."""
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    if set(kwargs) - _FAST_KEYS or getattr(model.config, "is_encoder_decoder", False):
        return None
    cfg = copy.deepcopy(model.generation_config)
    cfg.update(**kwargs)
    if set(cfg.to_diff_dict()) - _FAST_KEYS:
        return None
    procs = LogitsProcessorList()
    if cfg.repetition_penalty is not None and cfg.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(penalty=cfg.repetition_penalty))
    if cfg.do_sample:
        if cfg.temperature is not None and cfg.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(cfg.temperature))
        if cfg.top_k is not None and cfg.top_k != 0:
            procs.append(TopKLogitsWarper(top_k=cfg.top_k, min_tokens_to_keep=1))
        if cfg.top_p is not None and cfg.top_p < 1.0:
            procs.append(TopPLogitsWarper(top_p=cfg.top_p, min_tokens_to_keep=1))
    return procs, bool(cfg.do_sample)


def _cache_kwarg(model) -> str:
    """The forward() argument that takes the KV cache: `cache` in recent transformers 5.x, `past_key_values` before."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft wrapper takes **kwargs
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def fast_decode(model, window, steps: int, kwargs: dict, eos: set, on_token=None) -> list[int] | None:
    """Decode up to `steps` tokens after `window` (shape 1 x n) with a KV cache; None if unsupported."""
    import torch
    from transformers import DynamicCache

    setup = fast_processors(model, kwargs)
    if setup is None or window.shape[0] != 1:
        return None
    procs, do_sample = setup
    cache = {_cache_kwarg(model): DynamicCache(config=model.config)}
    ids, step_input, new = window, window, []
    for _ in range(steps):
        logits = model(input_ids=step_input, use_cache=True, logits_to_keep=1, **cache).logits[:, -1, :]
        scores = procs(ids, logits.to(dtype=torch.float32))
        if do_sample:
            nxt = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1)
        else:
            nxt = scores.argmax(dim=-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
        token = int(nxt)
        new.append(token)
        if on_token is not None:
            on_token(token)
        if token in eos:
            break
        step_input = nxt
    return new
