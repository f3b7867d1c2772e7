"""Conversations -> token ids, the same way for SFT data, `tinyllm chat` and the server.

Message content is text, never markup. `apply_chat_template` renders content into a string and then tokenizes it,
so a user who types `<|im_end|>\n<|im_start|>assistant` would forge real control tokens. Here the template is
rendered with a placeholder per message; the template's own text is tokenized with its special tokens, and each
message's content with `split_special_tokens=True`, so `<|im_end|>` inside content stays plain characters.

The same rendering gives the SFT labels for any template, with or without `{% generation %}` markers: the answer's
content tokens plus the template text that follows it up to and including the end-of-turn token (`<|im_end|>` in
ChatML, `</s>` in Zephyr/TinyLlama, `<|eot_id|>` in Llama 3).
"""

from __future__ import annotations

from tinyllm.errors import ConfigError, first_line

__all__ = ["encode_chat", "encode_for_training", "end_of_turn_token", "fit_conversation", "has_chat_template",
           "is_chat_model", "token_ids", "chat_eos_ids", "history_budget"]

_MARK = "\ue000{}\ue001"  # private-use characters: never part of real content, survive every template filter


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> tuple[str, list[str]]:
    marks = [_MARK.format(i) for i in range(len(messages))]
    placeholder = [{**m, "content": mark} for m, mark in zip(messages, marks)]
    try:
        text = tokenizer.apply_chat_template(placeholder, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as exc:  # jinja raises TemplateError and friends (e.g. "roles must alternate")
        raise ConfigError(f"the chat template cannot render this conversation: {first_line(exc)}") from exc
    return text, marks


def _pieces(tokenizer, messages, add_generation_prompt):
    """[(ids, message index or None)] in order: template text (None) and each message's content."""
    text, marks = _render(tokenizer, messages, add_generation_prompt)
    out, pos = [], 0
    for i, mark in enumerate(marks):
        k = text.find(mark, pos)
        if k < 0:  # the template dropped this message (some drop system messages): nothing to encode
            continue
        out.append((tokenizer.encode(text[pos:k], add_special_tokens=False), None))
        out.append((tokenizer.encode(messages[i]["content"], add_special_tokens=False, split_special_tokens=True), i))
        pos = k + len(mark)
    out.append((tokenizer.encode(text[pos:], add_special_tokens=False), None))
    return out


def encode_chat(tokenizer, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
    """Token ids of a conversation through the tokenizer's chat template; content never becomes control tokens."""
    return [t for ids, _ in _pieces(tokenizer, messages, add_generation_prompt) for t in ids]


def _special_ids(tokenizer) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, tok in tokenizer.added_tokens_decoder.items() if tok.special)
    return ids


def encode_for_training(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """input_ids and labels: labels are the assistant answers' tokens plus the template text after each answer up to
    and including its end-of-turn token; -100 elsewhere (prompts, system and user turns, template markup)."""
    special = _special_ids(tokenizer)
    ids: list[int] = []
    labels: list[int] = []
    open_answer = False  # inside the stretch after an assistant answer, before its end-of-turn token
    for piece, idx in _pieces(tokenizer, messages, add_generation_prompt=False):
        if idx is not None:
            supervised = messages[idx]["role"] == "assistant"
            ids += piece
            labels += piece if supervised else [-100] * len(piece)
            open_answer = supervised
            continue
        for t in piece:
            ids.append(t)
            labels.append(t if open_answer else -100)
            if open_answer and t in special:
                open_answer = False
        open_answer = False  # no special token after the answer: supervision ends with this piece
    return ids, labels


def end_of_turn_token(tokenizer) -> str | None:
    """The token the template puts right after an assistant answer (what generation must stop at)."""
    if not has_chat_template(tokenizer):
        return None
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    ids, labels = encode_for_training(tokenizer, msgs)
    special = _special_ids(tokenizer)
    answer = [t for t, lab in zip(ids, labels) if lab != -100]
    for t in answer:
        if t in special:
            return tokenizer.convert_ids_to_tokens(t)
    return tokenizer.eos_token


def history_budget(context: int, max_new_tokens: int) -> int:
    """Prompt tokens a conversation may keep: the context less the answer's tokens, but never under half the
    context (a huge max_new_tokens must not leave no room for the question). The rule of `tinyllm chat` and of
    the server."""
    return max(context - max_new_tokens, context // 2)


def fit_conversation(tokenizer, messages: list[dict], budget: int) -> tuple[list[dict], int, list[int]]:
    """Drop the oldest turns until the prompt fits in `budget` tokens, keeping the system message and the last
    user turn. Returns (messages kept, turns dropped, prompt ids). If even that does not fit, the prompt's ids are
    cut from the left (keeping the most recent text)."""
    system = [m for m in messages[:1] if m["role"] == "system"]
    rest = messages[len(system):]
    dropped = 0
    while True:
        ids = encode_chat(tokenizer, system + rest, add_generation_prompt=True)
        if len(ids) <= budget or len(rest) <= 1:
            break
        # drop the oldest turn; never leave an assistant message first
        rest = rest[1:]
        dropped += 1
        while len(rest) > 1 and rest[0]["role"] == "assistant":
            rest = rest[1:]
            dropped += 1
    if len(ids) > budget:
        ids = ids[-budget:]
    return system + rest, dropped, ids


def is_chat_model(model, tokenizer) -> bool:
    """An instruction-tuned model: a chat template, and generation stops at the template's end-of-turn token.
    (tinyllm's base models carry the template in their tokenizer too, but stop only at eos.)"""
    if not has_chat_template(tokenizer):
        return False
    eot = end_of_turn_token(tokenizer)
    return eot is not None and tokenizer.convert_tokens_to_ids(eot) in token_ids(model.generation_config.eos_token_id)


def token_ids(value) -> list[int]:
    """An eos setting (one id, a list of ids, or None) as a list of ids."""
    values = value if isinstance(value, (list, tuple)) else [value]
    return [v for v in values if v is not None]


def chat_eos_ids(tokenizer, model) -> list[int]:
    """Stop at the template's end-of-turn token and at eos."""
    eot = end_of_turn_token(tokenizer)
    ids = [tokenizer.convert_tokens_to_ids(eot)] if eot else []
    ids += token_ids(model.generation_config.eos_token_id)
    return [i for i in dict.fromkeys(ids) if i is not None]
