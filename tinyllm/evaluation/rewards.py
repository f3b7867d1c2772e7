"""Verifiable rewards and pass@k: the built-in arithmetic task's checks, shared by GRPO (rewards) and
`tinyllm eval --tasks builtin_arithmetic` (pass@1, pass@k), plus loading a user's `path.py:function` reward.

A reward function follows TRL's convention: `f(prompts, completions, **columns) -> list[float | None]`, one value
per completion; completions are lists of messages ([{"role": "assistant", "content": ...}]) for chat prompts.
TRL also passes `completion_ids`, so a function can see whether the answer stopped (ended with end of turn).
"""

from __future__ import annotations

import importlib.util
import inspect
import math
from pathlib import Path

from tinyllm.data.builtin import parse_integer
from tinyllm.errors import ConfigError, DataError, first_line
from tinyllm.evaluation.scoring import generate_answers
from tinyllm.inference.chat import chat_eos_ids
from tinyllm.modeling import eval_mode

__all__ = ["completion_text", "exact_answer_reward", "format_reward", "builtin_rewards", "load_reward_function",
           "checked_reward", "pass_at_k"]


def completion_text(completion) -> str:
    """The text of a completion: a string, or the content of its (last) assistant message."""
    if isinstance(completion, list):
        return str(completion[-1]["content"]) if completion else ""
    return str(completion)


def exact_answer_reward(prompts, completions, answer, **kwargs) -> list[float]:
    """1.0 when the completion is the exact answer (a whole number), else 0.0."""
    return [1.0 if parse_integer(completion_text(c)) == int(a) else 0.0 for c, a in zip(completions, answer)]


def format_reward(prompts, completions, **kwargs) -> list[float]:
    """0.1 when the completion is a number and nothing else (the format the task asks for)."""
    return [0.1 if parse_integer(completion_text(c)) is not None else 0.0 for c in completions]


def make_stop_reward(stop_ids: list[int]):
    """0.1 when the completion ended its turn by itself (its last token is an end-of-turn/eos token)."""
    stops = set(stop_ids)

    def stop_reward(prompts, completions, completion_ids=None, **kwargs) -> list[float]:
        if completion_ids is None:
            return [0.0] * len(completions)
        return [0.1 if ids and ids[-1] in stops else 0.0 for ids in completion_ids]

    return stop_reward


def builtin_rewards(tokenizer, model) -> list:
    """The built-in task's rewards: the exact answer (1.0), the format (0.1) and a stop (0.1)."""
    return [exact_answer_reward, format_reward, make_stop_reward(chat_eos_ids(tokenizer, model))]


def load_reward_function(spec: str):
    """`path.py:function` -> the function, checked: the file exists, the function exists and is callable, and it
    takes `completions` and **kwargs (TRL passes prompts, completions, completion_ids and every dataset column)."""
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name:
        raise ConfigError(f"reward function '{spec}' must look like path/to/rewards.py:function_name")
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"reward file not found: {file} (from --reward_funcs {spec})")
    module_spec = importlib.util.spec_from_file_location(f"tinyllm_user_rewards_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)  # the user's own file, named on the command line
    except Exception as exc:
        raise ConfigError(f"cannot import {file}: {type(exc).__name__}: {first_line(exc)}") from exc
    fn = getattr(module, name, None)
    if fn is None or not callable(fn):
        found = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                 and getattr(v, "__module__", None) == module.__name__]
        raise ConfigError(f"{file} has no function '{name}'; functions found: {', '.join(found) or 'none'}")
    params = inspect.signature(fn).parameters
    has_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if not has_kwargs or ("completions" not in params and not has_kwargs):
        raise ConfigError(f"reward function {spec} must be defined as def {name}(prompts, completions, **kwargs) "
                          f"and return one float per completion; it is ({', '.join(params)})")
    return fn


def checked_reward(fn, name: str | None = None):
    """`fn` wrapped so that an exception or a wrong return becomes one line naming the record (the first prompt
    it fails on), not a traceback from inside the trainer."""
    label = name or getattr(fn, "__name__", "reward")

    def run(prompts, completions, **kwargs):
        try:
            values = fn(prompts=prompts, completions=completions, **kwargs)
        except Exception as exc:
            where = _first_failing(fn, prompts, completions, kwargs)
            raise DataError(f"reward function {label} raised {type(exc).__name__}: {first_line(exc)} (on {where}); "
                            f"fix the function") from exc
        if not isinstance(values, (list, tuple)) or len(values) != len(completions):
            raise DataError(f"reward function {label} must return a list of {len(completions)} floats (one per "
                            f"completion), got {type(values).__name__}"
                            + (f" of length {len(values)}" if isinstance(values, (list, tuple)) else ""))
        for i, v in enumerate(values):
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v)):
                raise DataError(f"reward function {label} returned {v!r} for {_describe(prompts[i])}; rewards "
                                f"must be finite numbers (or None)")
        return list(values)

    run.__name__ = label
    return run


def _describe(prompt) -> str:
    text = completion_text(prompt) if isinstance(prompt, list) else str(prompt)
    return f"the record whose prompt is {text[:60]!r}"


def _first_failing(fn, prompts, completions, kwargs) -> str:
    for i in range(len(completions)):
        one = {k: [v[i]] if isinstance(v, list) and len(v) == len(completions) else v for k, v in kwargs.items()}
        try:
            fn(prompts=[prompts[i]], completions=[completions[i]], **one)
        except Exception:
            return _describe(prompts[i])
    return "a batch of records"


def pass_at_k(model, tokenizer, conversations: list[list[dict]], answers: list[str], k: int = 1,
              temperature: float = 1.0, max_new_tokens: int = 16, batch_size: int = 32, seed: int = 0) -> dict:
    """pass@1: the greedy answer is exact. pass@k (k > 1): at least one of k sampled answers (at `temperature`)
    is exact, the share of problems. Also per-language pass@1 and examples."""
    import torch

    eos = chat_eos_ids(tokenizer, model)
    greedy_ok, any_ok, preds = [], [], []
    torch.manual_seed(seed)
    with eval_mode(model):
        for i in range(0, len(conversations), batch_size):
            chunk, refs = conversations[i: i + batch_size], answers[i: i + batch_size]
            greedy = [t for t, _ in generate_answers(model, tokenizer, chunk, max_new_tokens, eos, do_sample=False)]
            preds += greedy
            greedy_ok += [parse_integer(t) == int(r) for t, r in zip(greedy, refs)]
            if k > 1:
                sampled = [t for t, _ in generate_answers(model, tokenizer, chunk, max_new_tokens, eos,
                                                          do_sample=True, temperature=temperature, top_k=0,
                                                          top_p=1.0, num_return_sequences=k)]
                any_ok += [any(parse_integer(t) == int(r) for t in sampled[j * k:(j + 1) * k])
                           for j, r in enumerate(refs)]
    out = {"pass@1": sum(greedy_ok) / max(len(greedy_ok), 1), "n": len(greedy_ok),
           "examples": [{"question": c[-1]["content"], "reference": r, "prediction": p}
                        for c, r, p in zip(conversations, answers, preds)][:8]}
    if k > 1:
        out[f"pass@{k}"] = sum(any_ok) / max(len(any_ok), 1)
    return out

