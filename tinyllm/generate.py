"""Generation: `tinyllm generate` (streaming, UTF-8 safe) and `tinyllm chat` (multi-turn, chat template)."""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import ConfigError

__all__ = ["drop_partial_char", "Utf8Streamer", "load_for_generation", "run_generate", "run_chat", "generate_text",
           "next_window"]


def drop_partial_char(text: str) -> str:
    """Generation can stop in the middle of a multi-byte character (max_new_tokens reached); its bytes decode to
    U+FFFD at the very end of the text. Drop that tail rather than show a broken character."""
    return text.rstrip("\ufffd")


class Utf8Streamer:
    """A transformers streamer that prints text as it is generated, never half a character.

    Byte-level BPE can split one Chinese character (3 UTF-8 bytes) or an emoji (4) across tokens; decoding such a
    prefix gives U+FFFD. We hold text back until it decodes cleanly, then print only the new complete part.
    """

    def __init__(self, tokenizer, out=None, skip_prompt: bool = True):
        self.tokenizer = tokenizer
        self.out = out or sys.stdout
        self.skip_prompt = skip_prompt
        self._prompt_done = not skip_prompt
        self.ids: list[int] = []
        self.printed = 0
        self.text = ""

    def put(self, value) -> None:
        if not self._prompt_done:  # the first call carries the prompt
            self._prompt_done = True
            return
        self.ids.extend(int(x) for x in value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        stable = text.rstrip("\ufffd") if text.endswith("\ufffd") else text
        if len(stable) > self.printed:
            self.out.write(stable[self.printed:])
            self.out.flush()
            self.printed = len(stable)
        self.text = text

    def end(self) -> None:
        text = drop_partial_char(self.tokenizer.decode(self.ids, skip_special_tokens=True))
        if len(text) > self.printed:
            self.out.write(text[self.printed:])
        self.out.write("\n")
        self.out.flush()
        self.text = text


def load_for_generation(folder: str, device: str | None = None):
    """Load a saved model folder with plain transformers (safetensors only, no remote code)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .device import detect_device

    path = Path(folder)
    if not path.is_dir():
        raise ConfigError(f"model folder not found: {folder}; train one first (recipes/pretrain.py) or fix --model")
    if not (path / "config.json").is_file():
        raise ConfigError(f"{folder} has no config.json: not a saved model folder")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, trust_remote_code=False,
                                                     dtype=torch.float32)
    except Exception as exc:  # truncated/corrupt files raise many types
        raise ConfigError(f"cannot load the model in {folder}: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}") from None
    device = device or detect_device()
    model.to(device).eval()
    return model, tokenizer


def _sampling_kwargs(args, model) -> dict:
    kw = {"max_new_tokens": args.max_new_tokens}
    for name in ("temperature", "top_k", "top_p", "repetition_penalty"):
        value = getattr(args, name)
        if value is not None:
            kw[name] = value
    if args.temperature == 0:
        kw.pop("temperature")
        kw["do_sample"] = False
    return kw


class _SkipPrompt:
    """Forward a generate() call's streamed tokens to `inner`, minus the prompt that generate() puts first."""

    def __init__(self, inner):
        self.inner, self.first = inner, True

    def put(self, value):
        if self.first:
            self.first = False
            return
        self.inner.put(value)

    def end(self):
        pass


# Settings the batch-1 fast path reproduces exactly; anything else (beams, min_p, n-gram bans, ...) goes through
# generate() itself.
_FAST_KEYS = {"do_sample", "temperature", "top_k", "top_p", "repetition_penalty", "max_new_tokens", "max_length",
              "eos_token_id", "pad_token_id", "bos_token_id", "transformers_version", "_from_model_config"}


def _fast_processors(model, kwargs: dict):
    """The logits processors generate() applies for these settings (same classes, same order), and do_sample;
    None when the settings need generate() itself."""
    import copy

    from transformers.generation.logits_process import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor,
                                                        TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

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
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft wrapper takes **kwargs
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _decode_window(model, window, steps: int, procs, do_sample: bool, eos: set, streamer) -> list[int]:
    """generate()'s sampling loop for one sequence without its per-token bookkeeping: KV cache, the same logits
    processors, softmax + multinomial (or argmax), so the same seed gives the same tokens. 1.17x the tokens/s of
    generate() at batch 1 on a 2-core CPU (533 -> 623, benchmarks/RESULTS.md), where generate()'s per-token Python
    work rivals the tiny model's arithmetic."""
    import torch
    from transformers import DynamicCache

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
        if streamer is not None:
            streamer.put(nxt[0].cpu())
        if token in eos:
            break
        step_input = nxt
    return new


def next_window(ids, remaining: int, ctx: int, generated: bool):
    """The sliding window of one generation round: once the text would outgrow the context, keep the last half
    context of tokens; returns (window, tokens to generate this round)."""
    window = ids[:, -(ctx // 2):] if ids.shape[1] + remaining > ctx and generated else ids
    return window, min(remaining, ctx - window.shape[1])


def generate_text(model, tokenizer, prompt: str, streamer=None, **kwargs) -> str:
    """Generate a continuation. Beyond the model's context window it slides: each round keeps the last half
    context of tokens and generates up to half a context more (as nanoGPT's sample.py crops its context).
    Common sampling settings take a lean decoding loop (same tokens as generate() for the same seed); others go
    through generate()."""
    import torch

    ctx = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", 10**9)
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(model.device)
    if ids.shape[1] >= ctx:
        ids = ids[:, -(ctx // 2):]
    if streamer is not None:
        streamer.put(ids[0].cpu())  # the prompt, which Utf8Streamer skips
    remaining = kwargs.pop("max_new_tokens", 100)
    eos = kwargs.pop("eos_token_id", None) or model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, (list, tuple)) else [eos])
    fast = _fast_processors(model, kwargs)
    new: list[int] = []
    # inference_mode (not just no_grad) skips autograd's version counters and views bookkeeping on every op: 12%
    # more tokens/s at batch 1 on the 0.8M char model on a 2-core CPU (520 -> 581), where per-op cost dominates.
    with torch.inference_mode():
        while remaining > 0:
            window, step = next_window(ids, remaining, ctx, generated=bool(new))
            if fast is not None:
                chunk = torch.tensor(_decode_window(model, window, step, *fast, eos, streamer), dtype=ids.dtype,
                                     device=ids.device)
            else:
                out = model.generate(input_ids=window, attention_mask=torch.ones_like(window), max_new_tokens=step,
                                     eos_token_id=list(eos), pad_token_id=tokenizer.pad_token_id,
                                     streamer=_SkipPrompt(streamer) if streamer is not None else None, **kwargs)
                chunk = out[0, window.shape[1]:]
            new += chunk.tolist()
            ids = torch.cat([ids, chunk[None]], dim=1)
            remaining -= len(chunk)
            if len(chunk) < step or (len(chunk) and int(chunk[-1]) in eos):
                break
    if streamer is not None:
        streamer.end()
    return drop_partial_char(tokenizer.decode(new, skip_special_tokens=True))


def run_generate(args) -> list[str]:
    from transformers import set_seed

    model, tokenizer = load_for_generation(args.model, args.device)
    set_seed(args.seed)
    texts = []
    for i in range(args.num_samples):
        if args.num_samples > 1:
            print(f"--- sample {i + 1}")
        sys.stdout.write(args.prompt)
        streamer = Utf8Streamer(tokenizer)
        generate_text(model, tokenizer, args.prompt, streamer=streamer, **_sampling_kwargs(args, model))
        texts.append(args.prompt + streamer.text)
    return texts


def run_chat(args, stdin=None) -> list[dict]:
    """Interactive multi-turn chat. Commands: /reset clears the history, /exit (or Ctrl+D) quits."""
    import torch
    from transformers import set_seed

    from .tokenizer import IM_END, check_chat_tokens

    model, tokenizer = load_for_generation(args.model, args.device)
    check_chat_tokens(tokenizer, args.model)
    set_seed(args.seed)
    stdin = stdin or sys.stdin
    eos = [tokenizer.convert_tokens_to_ids(IM_END), tokenizer.eos_token_id]
    messages: list[dict] = []
    interactive = stdin.isatty()
    if interactive:
        print(f"Chatting with {args.model}. /reset clears the history, /exit quits.")
    while True:
        if interactive:
            sys.stdout.write("you> ")
            sys.stdout.flush()
        line = stdin.readline()
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        if line in ("/exit", "/quit"):
            break
        if line == "/reset":
            messages = []
            print("(history cleared)")
            continue
        messages.append({"role": "user", "content": line})
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True).to(model.device)
        sys.stdout.write("bot> ")
        streamer = Utf8Streamer(tokenizer)
        with torch.inference_mode():
            model.generate(**ids, streamer=streamer, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
                           **_sampling_kwargs(args, model))
        messages.append({"role": "assistant", "content": streamer.text.strip()})
    return messages
