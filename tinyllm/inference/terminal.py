"""`tinyllm generate` and `tinyllm chat`: a saved model in the terminal, streamed as it is generated."""

from __future__ import annotations

import sys

from tinyllm.device import detect_device
from tinyllm.errors import ConfigError
from tinyllm.inference.chat import chat_eos_ids, fit_conversation, has_chat_template, history_budget
from tinyllm.inference.generation import (
    Utf8Streamer,
    compile_decoding,
    drop_partial_char,
    generate_batch,
    generate_ids,
    generate_text,
    model_context,
    sampling_kwargs,
    seed_everything,
)
from tinyllm.model_io import load_model_folder

__all__ = ["run_generate", "run_chat"]


def _load(args):
    model, tokenizer = load_model_folder(args.model, device=args.device or detect_device())
    if getattr(args, "compile", False):
        compile_decoding(model)
    return model.eval(), tokenizer



def run_generate(args) -> list[str]:
    """One sample streams as it is generated; several are decoded together as one batch, then printed."""
    model, tokenizer = _load(args)
    seed_everything(args.seed)
    if args.num_samples > 1:
        kwargs = sampling_kwargs(args)
        rows = generate_batch(model, tokenizer(args.prompt)["input_ids"], args.num_samples, args.max_new_tokens,
                              **kwargs)
        texts = [args.prompt + drop_partial_char(tokenizer.decode(r, skip_special_tokens=True)) for r in rows]
        for i, text in enumerate(texts):
            print(f"--- sample {i + 1}\n{text}")
        return texts
    sys.stdout.write(args.prompt)
    streamer = Utf8Streamer(tokenizer, out=sys.stdout)
    generate_text(model, tokenizer, args.prompt, streamer=streamer, max_new_tokens=args.max_new_tokens,
                  **sampling_kwargs(args))
    return [args.prompt + streamer.text]


def run_chat(args, stdin=None) -> list[dict]:
    """Interactive multi-turn chat. Commands: /reset clears the history, /exit (or Ctrl+D) quits. The oldest turns
    are dropped when the conversation outgrows the model's context (the same rule as the server)."""
    model, tokenizer = _load(args)
    if not has_chat_template(tokenizer):
        raise ConfigError(f"{args.model} has no chat template: it is a base model; instruction-tune it first "
                          f"(recipes/sft.py) or use tinyllm generate")
    seed_everything(args.seed)
    stdin = stdin or sys.stdin
    eos = chat_eos_ids(tokenizer, model)
    budget = history_budget(model_context(model), args.max_new_tokens)
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
        messages, dropped, prompt = fit_conversation(tokenizer, messages, budget)
        if dropped:
            print(f"(dropped the {dropped} oldest message(s) to fit the model's context of "
                  f"{model_context(model)} tokens)")
        sys.stdout.write("bot> ")
        streamer = Utf8Streamer(tokenizer, out=sys.stdout)
        generate_ids(model, prompt, min(args.max_new_tokens, model_context(model) - len(prompt)), eos=eos,
                     on_token=streamer.push, **sampling_kwargs(args))
        streamer.finish()
        messages.append({"role": "assistant", "content": streamer.text.strip()})
    return messages
