"""Prompts for GRPO: the built-in arithmetic task, or any dataset with a prompt column (text or messages) plus
the columns its reward functions read (TRL passes every column to them).

Accepted records: {"prompt": "question" | [messages], ...}, {"question": ..., "answer": ...} (the built-in task's
layout; `answer` is what exact_answer_reward compares with), or {"messages": [...]} (the last assistant turn, if
any, becomes `answer`).
"""

from __future__ import annotations

from dataclasses import dataclass

from tinyllm.config import DataArguments
from tinyllm.data.sft_data import BUILTIN_QA, held_out_split, load_qa_rows
from tinyllm.errors import DataError
from tinyllm.post_training_config import GRPOArguments

__all__ = ["FORMATS", "record_to_prompt", "build_prompt_datasets", "PromptData"]

FORMATS = "'prompt' (text or a list of messages), 'question' (+ 'answer'), or 'messages'"


def record_to_prompt(row: dict, where: str) -> dict:
    """{"prompt": [messages ending with a user turn], other columns...} for one record."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object with {FORMATS}")
    extra = {k: v for k, v in row.items() if k not in ("prompt", "question", "messages")}
    if "prompt" in row:
        prompt = row["prompt"]
        msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    elif "question" in row:
        msgs = [{"role": "user", "content": str(row["question"])}]
    elif "messages" in row and isinstance(row["messages"], list):
        msgs = list(row["messages"])
        if msgs and isinstance(msgs[-1], dict) and msgs[-1].get("role") == "assistant":
            extra.setdefault("answer", str(msgs[-1].get("content", "")))
            msgs = msgs[:-1]
    else:
        raise DataError(f"{where}: GRPO needs a prompt: {FORMATS}; found columns: {', '.join(sorted(row)) or 'none'}")
    if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) and "role" in m and "content" in m
                                                         for m in msgs):
        raise DataError(f"{where}: the prompt must be text or a list of {{role, content}} messages")
    if msgs[-1]["role"] != "user" or not str(msgs[-1]["content"]).strip():
        raise DataError(f"{where}: the prompt must end with a non-empty user message")
    return {"prompt": [{"role": str(m["role"]), "content": str(m["content"])} for m in msgs], **extra}


@dataclass
class PromptData:
    train: object  # datasets.Dataset with "prompt" (messages) and the reward columns
    eval_prompts: list[list[dict]]  # held-out prompts for pass@1
    eval_answers: list[str] | None  # their exact answers, when the data has an `answer` column
    stats: dict


def build_prompt_datasets(data: DataArguments, opts: GRPOArguments, seed: int = 0) -> PromptData:
    """Training prompts and held-out prompts (the built-in task's held-out problems, the split named, or a seeded
    share of the records), disjoint."""
    import datasets

    train_records, held_records = held_out_split(
        data, lambda split: load_qa_rows(data.dataset_name, split, data.dataset_config_name, data.cache_dir),
        data.dataset_name in BUILTIN_QA, seed)
    if not train_records:
        raise DataError(f"{data.dataset_name} has no records; GRPO needs {FORMATS}")
    train = [record_to_prompt(r, w) for w, r in train_records]
    held = [record_to_prompt(r, w) for w, r in held_records]
    if opts.max_prompts:
        train = train[: opts.max_prompts]
    columns = sorted(set(train[0]))
    for i, row in enumerate(train):
        if set(row) != set(columns):
            raise DataError(f"{data.dataset_name} record {i} has columns {sorted(row)}, the first has {columns}; "
                            f"every record needs the same columns (the rewards receive them)")
    ds = datasets.Dataset.from_list(train)
    answers = [str(r["answer"]) for r in held] if held and all("answer" in r for r in held) else None
    stats = {"train_prompts": len(train), "eval_prompts": len(held)}
    return PromptData(ds, [r["prompt"] for r in held], answers, stats)
