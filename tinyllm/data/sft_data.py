"""Question-answer data for SFT: common layouts -> chat messages -> tokens with an assistant-only label mask.

Accepted layouts (one per row, auto-detected):
  Alpaca            {"instruction", "input" (optional), "output"}
  question/answer   {"question", "answer"}
  prompt/completion {"prompt", "completion"}
  messages          {"messages": [{"role": "user"|"assistant"|"system", "content": ...}, ...]} (multi-turn)
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

from tinyllm.config import DataArguments, SFTArguments
from tinyllm.data.builtin import generate_qa
from tinyllm.data.corpora import load_hf_split, read_records
from tinyllm.data.tokenizer import check_unknown_rate
from tinyllm.errors import DataError
from tinyllm.inference.chat import encode_for_training

__all__ = ["LAYOUTS", "row_to_messages", "load_qa_rows", "tokenize_conversation", "build_sft_datasets",
           "SFTCollator", "SFTData"]

logger = logging.getLogger(__name__)
LAYOUTS = "Alpaca (instruction/input/output), question/answer, prompt/completion, or messages (role/content list)"


def row_to_messages(row: dict, where: str, system_prompt: str | None = None) -> list[dict]:
    """Convert one row of any accepted layout to chat messages; errors name the row and the layouts."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}; accepted layouts: {LAYOUTS}")
    msgs: list[dict]
    if "messages" in row and isinstance(row["messages"], list):
        msgs = []
        for m in row["messages"]:
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise DataError(f"{where}: each message needs 'role' and 'content'")
            if m["role"] not in ("system", "user", "assistant"):
                raise DataError(f"{where}: unknown role '{m['role']}' (use system, user or assistant)")
            msgs.append({"role": m["role"], "content": str(m["content"])})
    elif "instruction" in row and "output" in row:
        prompt = str(row["instruction"])
        if str(row.get("input") or "").strip():
            prompt += "\n\n" + str(row["input"])
        msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": str(row["output"])}]
    elif "question" in row and "answer" in row:
        msgs = [{"role": "user", "content": str(row["question"])}, {"role": "assistant", "content": str(row["answer"])}]
    elif "prompt" in row and "completion" in row:
        msgs = [{"role": "user", "content": str(row["prompt"])},
                {"role": "assistant", "content": str(row["completion"])}]
    else:
        raise DataError(f"{where}: row has fields {sorted(row)} but no known layout; accepted layouts: {LAYOUTS}")
    answers = [m for m in msgs if m["role"] == "assistant"]
    if not answers:
        raise DataError(f"{where}: no assistant message to learn from; every row needs an answer")
    if any(not m["content"].strip() for m in answers):
        raise DataError(f"{where}: empty answer; remove the row or fill in the answer")
    if system_prompt and msgs[0]["role"] != "system":
        msgs = [{"role": "system", "content": system_prompt}] + msgs
    return msgs


def load_qa_rows(dataset_name: str, split: str, config_name: str | None = None, cache_dir: str | None = None):
    """[(where, row)] for builtin_qa, a local json/jsonl/parquet file (or folder), or an HF dataset split."""
    if dataset_name == "builtin_qa":
        key = "test" if split in ("test", "validation") else "train"
        return [(f"builtin_qa[{i}]", r) for i, r in enumerate(generate_qa()[key])]
    path = Path(dataset_name).expanduser()
    if path.exists():
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*")
                                                     if p.suffix.lower() in (".json", ".jsonl", ".parquet"))
        if not files:
            raise DataError(f"{path}: no .json/.jsonl/.parquet files found")
        rows = [r for f in files for r in read_records(f)]
        if not rows:
            raise DataError(f"{dataset_name} has no rows; accepted layouts: {LAYOUTS}")
        return rows
    if dataset_name.endswith((".json", ".jsonl", ".parquet")) or dataset_name.startswith((".", "/")):
        raise DataError(f"SFT data not found: {dataset_name}; check the path")
    ds = load_hf_split(dataset_name, config_name, split, cache_dir=cache_dir)
    return [(f"{dataset_name}[{split}][{i}]", r) for i, r in enumerate(ds)]


def tokenize_conversation(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """input_ids and labels: labels are the assistant answers and their end-of-turn token, -100 elsewhere;
    content is tokenized as plain text (tinyllm.inference.chat)."""
    return encode_for_training(tokenizer, messages)


@dataclass
class SFTData:
    train: object
    eval: object | None
    eval_conversations: list[list[dict]]
    stats: dict


def _encode(rows, tokenizer, max_len: int, truncation: str, system_prompt: str | None):
    examples, convs = [], []
    dropped = truncated = 0
    for where, row in rows:
        msgs = row_to_messages(row, where, system_prompt)
        ids, labels = tokenize_conversation(tokenizer, msgs)
        if len(ids) > max_len:
            if truncation == "drop":
                dropped += 1
                continue
            ids, labels = ids[:max_len], labels[:max_len]
            truncated += 1
            if all(x == -100 for x in labels):
                dropped += 1
                continue
        examples.append({"input_ids": ids, "labels": labels})
        convs.append(msgs)
    return examples, convs, dropped, truncated


def build_sft_datasets(data: DataArguments, sft: SFTArguments, tokenizer, seed: int = 0) -> SFTData:
    """Training and held-out examples (held out: the split named, else a seeded share of the rows)."""
    import datasets

    rows = load_qa_rows(data.dataset_name, data.dataset_split, data.dataset_config_name, data.cache_dir)
    if data.validation_split_name or data.dataset_name == "builtin_qa":
        val_rows = load_qa_rows(data.dataset_name, data.validation_split_name or "test", data.dataset_config_name,
                                data.cache_dir)
        train_rows = rows
    else:
        order = list(range(len(rows)))
        random.Random(seed).shuffle(order)
        n_val = max(1, round(len(rows) * data.validation_split_percentage / 100)) if len(rows) > 1 else 0
        val_rows = [rows[i] for i in order[:n_val]]
        train_rows = [rows[i] for i in order[n_val:]]
    if sft.max_examples:
        train_rows = train_rows[: sft.max_examples]
    train, _, dropped, truncated = _encode(train_rows, tokenizer, sft.max_seq_length, sft.truncation,
                                           sft.system_prompt)
    val, val_convs, vdropped, vtruncated = _encode(val_rows, tokenizer, sft.max_seq_length, sft.truncation,
                                                   sft.system_prompt)
    if dropped or truncated:
        logger.warning("%d training examples longer than max_seq_length=%d were %s", dropped + truncated,
                       sft.max_seq_length, "dropped" if sft.truncation == "drop" else "truncated")
    if not train:
        raise DataError(f"no usable training examples in {data.dataset_name} (all {len(train_rows)} rows were longer "
                        f"than max_seq_length={sft.max_seq_length}); raise --max_seq_length or use --truncation "
                        f"truncate")
    check_unknown_rate(tokenizer, [e["input_ids"] for e in train], f"the SFT data {data.dataset_name}")
    stats = {"train_examples": len(train), "eval_examples": len(val), "dropped_too_long": dropped + vdropped,
             "truncated": truncated + vtruncated,
             "supervised_tokens": sum(sum(1 for x in e["labels"] if x != -100) for e in train)}
    val_ds = datasets.Dataset.from_list(val) if val else None
    return SFTData(datasets.Dataset.from_list(train), val_ds, val_convs, stats)


class SFTCollator:
    """transformers' DataCollatorForSeq2Seq (right-pads input_ids with the pad token and labels with -100), plus a
    refusal of any batch that supervises nothing (silently training on nothing is a classic SFT failure)."""

    def __init__(self, tokenizer):
        import copy

        from transformers import DataCollatorForSeq2Seq

        tok = copy.copy(tokenizer)  # right padding for training, without changing the caller's tokenizer
        tok.padding_side = "right"
        self.inner = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100, return_tensors="pt")

    def __call__(self, features):
        batch = self.inner([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features])
        if not (batch["labels"] != -100).any():
            raise DataError("a batch supervises 0 tokens (no assistant answer survived formatting); check the "
                            "chat template and the data")
        return batch
