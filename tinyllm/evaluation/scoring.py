"""Scoring a model, shared by training (the losses before and after) and `tinyllm eval`: token loss on held-out
blocks, log-likelihood of choices, and greedy answers to held-out questions with exact match."""

from __future__ import annotations

import math

from tinyllm.data.packing import build_validation_set
from tinyllm.data.tokenizer import language_of
from tinyllm.evaluation.metrics import metric_path
from tinyllm.inference.chat import chat_eos_ids, encode_chat
from tinyllm.modeling import eval_mode

__all__ = ["mean_token_loss", "heldout_bits_per_byte", "score_choices", "generate_answers", "evaluate_answers"]


def mean_token_loss(model, dataset, batch_size: int = 16, collate=None) -> float:
    """Mean cross-entropy (nats) over the supervised tokens (labels != -100) of `dataset`'s rows ({"input_ids",
    "labels"}). Packed blocks of one length are stacked as they are; rows of different lengths (SFT examples) go
    through `collate` (which pads and adds an attention mask)."""
    import torch

    total, count = 0.0, 0
    device = next(model.parameters()).device
    with eval_mode(model), torch.inference_mode():
        for i in range(0, len(dataset), batch_size):
            if collate is None:
                rows = dataset[i: i + batch_size]
                batch = {"input_ids": rows["input_ids"], "labels": rows["labels"]}
            else:
                batch = collate([dataset[k] for k in range(i, min(i + batch_size, len(dataset)))])
            ids = torch.as_tensor(batch["input_ids"], device=device)
            labels = torch.as_tensor(batch["labels"], device=device)
            mask = batch.get("attention_mask")
            mask = torch.as_tensor(mask, device=device) if mask is not None else None
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target = labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                     ignore_index=-100, reduction="sum")
            total += float(loss)
            count += int((target != -100).sum())
    return total / max(count, 1)


def heldout_bits_per_byte(model, tokenizer, data, seed: int, batch_size: int = 16) -> dict:
    """Loss, perplexity and bits per byte on the held-out documents (tinyllm.data decides which, as in training)."""
    val = build_validation_set(data, tokenizer, seed)
    loss = mean_token_loss(model, val.blocks, batch_size)
    return {"loss": round(loss, 4), "perplexity": round(math.exp(min(loss, 50)), 3),
            "bits_per_byte": round(loss / math.log(2) * val.tokens_per_byte, 4),
            "documents": val.documents, "tokens": val.tokens}


def score_choices(model, tokenizer, context: str, choices: list[str]) -> list[float]:
    """Sum of log-probabilities of each continuation after the context, split as lm-evaluation-harness splits
    them (encode context + continuation whole, the continuation is what follows the context's tokens), with bos
    first as in training."""
    import torch

    ctx = tokenizer(context)["input_ids"]
    rows = []
    for c in choices:
        whole = tokenizer(context + c)["input_ids"]
        rows.append(whole if whole[:len(ctx)] == ctx and len(whole) > len(ctx)
                    else ctx + tokenizer(c, add_special_tokens=False)["input_ids"])
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)
    with eval_mode(model), torch.inference_mode():
        logp = torch.log_softmax(model(input_ids=ids).logits.float(), dim=-1)
    scores = []
    for i, r in enumerate(rows):
        positions = range(len(ctx), len(r))
        scores.append(sum(float(logp[i, p - 1, r[p]]) for p in positions))
    return scores


def generate_answers(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int, eos: list[int],
                     **generate_kwargs) -> list[tuple[str, bool]]:
    """Answers to a batch of chat prompts, (text, stopped) per returned sequence: prompts left-padded so every
    answer starts at one column, each answer cut at its first stop token (`eos`), no repetition penalty (greedy
    means greedy: the folder's 1.1 would penalize answers such as "牛会说哞哞。")."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    ids = [encode_chat(tokenizer, c, add_generation_prompt=True) for c in prompts]
    width = max(len(p) for p in ids)
    batch = torch.tensor([[pad] * (width - len(p)) + p for p in ids], device=model.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ids], device=model.device)
    with torch.no_grad():
        out = model.generate(input_ids=batch, attention_mask=mask, max_new_tokens=max_new_tokens, eos_token_id=eos,
                             pad_token_id=pad, repetition_penalty=1.0, **generate_kwargs)
    answers = []
    for row in out[:, width:].tolist():
        stop = next((k for k, t in enumerate(row) if t in eos), None)
        answers.append((tokenizer.decode(row[:stop], skip_special_tokens=True).strip(), stop is not None))
    return answers


def evaluate_answers(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int = 32,
                     batch_size: int = 16) -> dict:
    """Greedy answers (no repetition penalty) to the held-out questions: exact match (local evaluate module),
    overall and per language, and the share of answers that end with the template's end-of-turn token before
    max_new_tokens. Exact match measures short factual answers; for open-ended answers compare the held-out
    answer-token loss instead."""
    import evaluate

    eos = chat_eos_ids(tokenizer, model)
    preds, refs, stopped = [], [], 0
    with eval_mode(model):
        for i in range(0, len(conversations), batch_size):
            chunk = conversations[i: i + batch_size]
            refs += [c[-1]["content"] for c in chunk]
            for text, stop in generate_answers(model, tokenizer, [c[:-1] for c in chunk], max_new_tokens, eos,
                                               do_sample=False):
                stopped += int(stop)
                preds.append(text)
    em = evaluate.load(metric_path("exact_match"))
    langs = [language_of(c[-2]["content"]) for c in conversations]
    per_language = {}
    if len(set(langs)) > 1:
        for lang in sorted(set(langs)):
            idx = [k for k, x in enumerate(langs) if x == lang]
            per_language[lang] = em.compute(predictions=[preds[k] for k in idx],
                                            references=[refs[k] for k in idx])["exact_match"]
    return {"exact_match": em.compute(predictions=preds, references=refs)["exact_match"] if preds else 0.0,
            "stopped_rate": stopped / max(len(preds), 1), "per_language": per_language, "n": len(preds),
            "examples": [{"question": c[-2]["content"], "reference": r, "prediction": p}
                         for c, r, p in zip(conversations, refs, preds)][:8]}
