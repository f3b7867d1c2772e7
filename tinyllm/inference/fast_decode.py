"""A lean batch-1 decoding loop, used by `tinyllm.inference.generation` when the sampling settings allow it.

The boundary: `fast_decode(...)` returns the new token ids, or None when the settings need transformers'
`generate()` itself (beams, min_p, n-gram bans, ...). For the settings it accepts it applies generate()'s own
logits processors (same classes, same order) and its softmax + multinomial (or argmax), so the same seed picks the
same tokens (tested for Llama and GPT-2). It skips generate()'s per-token bookkeeping, which at batch 1 on a small
model rivals the arithmetic: 1.17x generate()'s tokens/s on a 2-core CPU (benchmarks/generation_bench.py).
"""

from __future__ import annotations

import copy
import functools
import inspect

__all__ = ["fast_decode", "fast_processors", "CompiledDecoder", "enable_compiled_decoding", "disable_compiled_decoding",
           "compiled_decoder"]

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
    return _cache_kwarg_of(type(base))


@functools.lru_cache(maxsize=None)
def _cache_kwarg_of(cls) -> str:
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


class CompiledDecoder:
    """The one-token decoding step of a model compiled with torch.compile over a static KV cache (fixed shapes, so
    one compilation serves every step). Opt-in (`--compile`): compiling takes seconds (~6-10 s for the 0.8M char
    model on a 2-core CPU) and then each token costs about half of the eager step, so it pays back on long
    generations and in a server, not on a short sample. Tokens follow the same sampling rules, but compiled
    arithmetic may differ from eager in the last bits, so the same seed can pick other tokens than generate()."""

    def __init__(self, model, max_len: int):
        import torch
        from transformers import StaticCache

        self.model, self.max_len = model, max_len
        self.cache = StaticCache(config=model.config, max_cache_len=max_len)
        self.key = _cache_kwarg(model)
        # cpp_wrapper: the compiled graph is called from C++ rather than a Python wrapper, which at batch 1 on a
        # small model is a fifth of the step (2,300 -> 2,900 tokens/s on the 0.8M char model, 2-core CPU:
        # benchmarks/micro_bench.py)
        self.step = torch.compile(self._forward, dynamic=False, options={"cpp_wrapper": True})

    def _forward(self, ids, pos):
        return self.model(input_ids=ids, position_ids=pos.unsqueeze(0), cache_position=pos, use_cache=True,
                          logits_to_keep=1, **{self.key: self.cache}).logits[:, -1, :]

    def prefill(self, window):
        """Reset the cache and run the window through the (eager) model; returns the last position's logits."""
        import torch

        self.cache.reset()
        return self._forward(window, torch.arange(window.shape[1], device=window.device))


_ATTR = "_tinyllm_compiled_decoder"  # on the model itself: freed with it


def enable_compiled_decoding(model, max_len: int) -> bool:
    """Route this model's batch-1 decoding through a CompiledDecoder (static cache of `max_len` positions).
    Returns False, and changes nothing, for a model whose transformers class cannot be compiled this way."""
    # transformers has no public "can this model compile with a static cache" query; generate() itself decides
    # with this class attribute (PreTrainedModel._can_compile_fullgraph), so it is read here, and only here.
    if not getattr(model, "_can_compile_fullgraph", False) or getattr(model.config, "is_encoder_decoder", False):
        return False
    object.__setattr__(model, _ATTR, CompiledDecoder(model, max_len))  # not a submodule, not in the state dict
    return True


def disable_compiled_decoding(model) -> None:
    model.__dict__.pop(_ATTR, None)


def compiled_decoder(model) -> CompiledDecoder | None:
    return model.__dict__.get(_ATTR)


def _compiled_for(model, needed: int) -> CompiledDecoder | None:
    dec = compiled_decoder(model)
    return dec if dec is not None and needed <= dec.max_len else None


def fast_decode(model, window, steps: int, setup, eos: set, on_token=None, should_stop=None) -> list[int] | None:
    """Decode up to `steps` tokens after `window` (shape 1 x n) with a KV cache, with the processors of
    `fast_processors` (computed once per generation, not per window); None if unsupported. Ends early at an eos
    token or when `should_stop()` turns true after a token."""
    import torch
    from transformers import DynamicCache

    if setup is None or window.shape[0] != 1:
        return None
    procs, do_sample = setup
    compiled = _compiled_for(model, window.shape[1] + steps)
    if compiled is None:
        cache = {_cache_kwarg(model): DynamicCache(config=model.config)}
    else:
        logits = compiled.prefill(window)
    ids, step_input, new = window, window, []
    for _ in range(steps):
        if compiled is None:
            logits = model(input_ids=step_input, use_cache=True, logits_to_keep=1, **cache).logits[:, -1, :]
        elif new:
            logits = compiled.step(step_input, torch.tensor([ids.shape[1] - 1], device=ids.device))
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
        if token in eos or (should_stop is not None and should_stop()):
            break
        step_input = nxt
    return new
