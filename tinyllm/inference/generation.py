"""Generation for every stage: `tinyllm generate`, `tinyllm chat`, training samples and the server.

One path: `generate_ids` encodes nothing and decodes nothing; it continues token ids with the model's sampling
settings, slides its window beyond the model's context, and reports each new token to a callback. Common sampling
settings at batch 1 take `tinyllm.inference.fast_decode` (same tokens as `generate()` for the same seed);
anything else goes through transformers' `generate()`. Text is streamed UTF-8 safe: never half a Chinese
character or emoji.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tinyllm.inference.chat import token_ids
from tinyllm.inference.fast_decode import enable_compiled_decoding, fast_decode, fast_processors
from tinyllm.model_io import context_length

__all__ = ["drop_partial_char", "Utf8Streamer", "Generation", "generate_ids", "generate_text", "next_window",
           "sampling_kwargs", "seed_everything", "generate_batch", "compile_decoding", "model_context"]

logger = logging.getLogger(__name__)


def drop_partial_char(text: str) -> str:
    """Generation can stop in the middle of a multi-byte character (max_new_tokens reached); its bytes decode to
    U+FFFD at the very end of the text. Drop that tail rather than show a broken character."""
    return text.rstrip("\ufffd")


class Utf8Streamer:
    """Turns new token ids into text pieces that are always whole characters.

    Byte-level BPE can split one Chinese character (3 UTF-8 bytes) or an emoji (4) across tokens; decoding such a
    prefix gives U+FFFD. Text is held back until it decodes cleanly, then only the new complete part is written to
    `out` (and returned by `push`). Fed by `generate_ids(on_token=streamer.push)`; the one transformers streamer
    is `_TokenSink`, which only reports token ids."""

    def __init__(self, tokenizer, out=None):
        self.tokenizer = tokenizer
        self.out = out
        self.line: list[int] = []  # ids since the last completed line: decoding stays O(line), not O(text)
        self.done = ""  # the text of the completed lines
        self.printed = 0  # characters of the current line already handed out
        self.text = ""

    def push(self, token: int) -> str:
        self.line.append(int(token))
        text = self.tokenizer.decode(self.line, skip_special_tokens=True)
        stable = drop_partial_char(text)
        piece = stable[self.printed:] if len(stable) > self.printed else ""
        self.printed = max(self.printed, len(stable))
        self.text = self.done + text
        if text.endswith("\n"):  # a whole line (as transformers' TextStreamer): start the next one afresh
            self.done, self.line, self.printed = self.text, [], 0
        if piece and self.out is not None:
            self.out.write(piece)
            self.out.flush()
        return piece

    def finish(self) -> str:
        text = drop_partial_char(self.tokenizer.decode(self.line, skip_special_tokens=True))
        piece = text[self.printed:]
        self.text = self.done + text
        self.done, self.line, self.printed = self.text, [], 0
        if self.out is not None:
            self.out.write(piece + "\n")
            self.out.flush()
        return piece


@dataclass
class Generation:
    ids: list[int]  # the new tokens
    finish_reason: str  # "stop" (an eos token) or "length" (max_new_tokens)


def next_window(ids, remaining: int, ctx: int, generated: bool):
    """The sliding window of one generation round: once the text would outgrow the context, keep the last half
    context of tokens; returns (window, tokens to generate this round)."""
    window = ids[:, -(ctx // 2):] if ids.shape[1] + remaining > ctx and generated else ids
    return window, min(remaining, ctx - window.shape[1])


def model_context(model) -> int:
    """The model's context window (unbounded when its config does not say)."""
    return context_length(model.config) or 10**9


def _decoding_setup(model, prompt_ids: list[int], eos):
    """What both generation loops start from: the context size, the prompt cropped to half of it when it does not
    fit, the ids that end a sequence (the argument, else the model's generation_config) and the pad id."""
    ctx = model_context(model)
    start = prompt_ids[-(ctx // 2):] if len(prompt_ids) >= ctx else prompt_ids
    eos_set = set(token_ids(eos if eos is not None else model.generation_config.eos_token_id))
    pad = model.generation_config.pad_token_id
    return ctx, start, eos_set, pad


def generate_ids(model, prompt_ids: list[int], max_new_tokens: int = 100, eos: list[int] | None = None,
                 on_token=None, should_stop=None, **sampling) -> Generation:
    """Continue `prompt_ids`. Beyond the model's context it slides: each round keeps the last half context of
    tokens and generates up to half a context more (as nanoGPT's sample.py crops its context). `on_token(id)` is
    called for each new token; `should_stop()` is checked after each token (a client that went away, a stop
    string) and ends the generation there: in transformers' generate() through a StoppingCriteria."""
    import torch
    from transformers import StoppingCriteriaList

    ctx, start, eos_set, pad = _decoding_setup(model, prompt_ids, eos)
    setup = fast_processors(model, sampling)
    device = next(model.parameters()).device
    ids = torch.tensor([start], device=device)
    new: list[int] = []
    remaining = max_new_tokens
    stopping = StoppingCriteriaList([_StopWhen(should_stop)] if should_stop is not None else [])

    # inference_mode (not just no_grad) skips autograd's version counters and views bookkeeping on every op: 12%
    # more tokens/s at batch 1 on the 0.8M char model on a 2-core CPU (520 -> 581), where per-op cost dominates.
    with torch.inference_mode():
        while remaining > 0:
            window, step = next_window(ids, remaining, ctx, generated=bool(new))
            chunk = fast_decode(model, window, step, setup, eos_set, on_token, should_stop)
            if chunk is None:
                out = model.generate(input_ids=window, attention_mask=torch.ones_like(window), max_new_tokens=step,
                                     eos_token_id=list(eos_set), pad_token_id=pad if pad is not None else
                                     next(iter(eos_set), None), streamer=_TokenSink(on_token),
                                     stopping_criteria=stopping, **sampling)
                chunk = out[0, window.shape[1]:].tolist()
                if pad is not None and pad not in eos_set:
                    chunk = [t for t in chunk if t != pad]
            new += chunk
            ids = torch.cat([ids, torch.tensor([chunk], dtype=ids.dtype, device=device)], dim=1)
            remaining -= len(chunk)
            if len(chunk) < step or (chunk and chunk[-1] in eos_set) or (should_stop is not None and should_stop()):
                break
    reason = "stop" if new and new[-1] in eos_set else "length"
    return Generation(new, reason)


class _StopWhen:
    """A transformers StoppingCriteria from a plain `should_stop()` callable (checked after each token)."""

    def __init__(self, should_stop):
        self.should_stop = should_stop

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.full((input_ids.shape[0],), bool(self.should_stop()), dtype=torch.bool, device=input_ids.device)


class _TokenSink:
    """The generate() streamer: reports new tokens one by one to `on_token` (the first put() is the prompt)."""

    def __init__(self, on_token):
        self.on_token, self.first = on_token, True

    def put(self, value):
        if self.first:
            self.first = False
            return
        if self.on_token is not None:
            for t in value.reshape(-1).tolist():
                self.on_token(int(t))

    def end(self):
        pass


def generate_text(model, tokenizer, prompt: str, streamer: Utf8Streamer | None = None, **kwargs) -> str:
    """Continue a text prompt; returns the new text (whole characters only)."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    max_new = kwargs.pop("max_new_tokens", 100)
    eos = kwargs.pop("eos_token_id", None)
    gen = generate_ids(model, prompt_ids, max_new, eos=eos, on_token=streamer.push if streamer else None, **kwargs)
    if streamer is not None:
        streamer.finish()
    return drop_partial_char(tokenizer.decode(gen.ids, skip_special_tokens=True))


def sampling_kwargs(args) -> dict:
    """generate() settings from the command line; unset ones come from the model's generation_config.json."""
    kw = {}
    for name in ("temperature", "top_k", "top_p", "repetition_penalty"):
        value = getattr(args, name)
        if value is not None:
            kw[name] = value
    if args.temperature == 0:
        kw.pop("temperature")
        kw["do_sample"] = False
    return kw


def compile_decoding(model, warm_up: bool = False) -> bool:
    """`--compile`: route batch-1 decoding through a compiled step (fast_decode.CompiledDecoder) with a static
    cache of the model's context (at most 1024 positions; longer windows decode eagerly). `warm_up` compiles now
    rather than at the first token. Returns False, with a warning, where the model cannot be."""
    if not enable_compiled_decoding(model, min(model_context(model), 1024)):
        logger.warning("--compile: %s cannot be compiled with a static cache; decoding eagerly",
                    type(model).__name__)
        return False
    logger.info("--compile: the decoding step is compiled once (seconds), at the %s", "start" if warm_up else
             "first token")
    if warm_up:
        generate_ids(model.eval(), [0], 2, eos=[], do_sample=False)
    return True


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's generators. (transformers.set_seed does the same but lives in trainer_utils, whose
    import pulls in peft and costs ~2.5 s of `tinyllm generate`'s ~4 s start-up on a 2-core CPU.)"""
    import random

    import torch

    random.seed(seed)
    torch.manual_seed(seed)


def generate_batch(model, prompt_ids: list[int], n: int, max_new_tokens: int, eos: list[int] | None = None,
                   **sampling) -> list[list[int]]:
    """`n` independent continuations of one prompt, decoded together (one batch through generate(), which is
    ~3-6x the tokens/s of n batch-1 runs on a small model), sliding past the context as generate_ids does. Each
    continuation ends at its first eos."""
    import torch

    ctx, start, eos_set, pad = _decoding_setup(model, prompt_ids, eos)
    pad = pad if pad is not None else next(iter(eos_set), 0)
    ids = torch.tensor([start] * n, device=next(model.parameters()).device)
    out, remaining = ids, max_new_tokens
    with torch.inference_mode():
        while remaining > 0:
            window, step = next_window(out, remaining, ctx, generated=out.shape[1] > ids.shape[1])
            res = model.generate(input_ids=window, attention_mask=torch.ones_like(window), max_new_tokens=step,
                                 eos_token_id=list(eos_set), pad_token_id=pad, **sampling)
            new = res[:, window.shape[1]:]
            out = torch.cat([out, new], dim=1)
            remaining -= new.shape[1]
            if new.shape[1] < step:  # every sequence has ended
                break
    results = []
    for row in out[:, ids.shape[1]:].tolist():
        end = next((k for k, t in enumerate(row) if t in eos_set), None)
        results.append(row[:end] if end is not None else row)
    return results
