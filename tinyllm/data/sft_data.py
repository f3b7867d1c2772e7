"""Question-answer data for SFT: common layouts -> chat messages -> tokens with an assistant-only label mask.

Accepted layouts (one per row, auto-detected):
  Alpaca            {"instruction", "input" (optional), "output"}
  question/answer   {"question", "answer"}
  prompt/completion {"prompt", "completion"}
  messages          {"messages": [{"role": "user"|"assistant"|"system", "content": ...}, ...]} (multi-turn)
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from tinyllm.config import DataArguments, SFTArguments
from tinyllm.data.builtin import GENERATOR_VERSION, generate_qa
from tinyllm.data.corpora import load_hf_split, read_records
from tinyllm.data.tokenizer import unknown_rate_warning
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


def _row_records(dataset_name: str, split: str, config_name: str | None, cache_dir: str | None, stamps):
    """datasets.Dataset.from_generator's source: (where, row as JSON) one at a time (`stamps`, the files' sizes and
    modification times, are only part of the cache fingerprint)."""
    for where, row in load_qa_rows(dataset_name, split, config_name, cache_dir):
        yield {"where": where, "row": json.dumps(row, ensure_ascii=False, default=str)}


def _rows_dataset(data: DataArguments, split: str):
    """The QA rows of one split as an Arrow-backed datasets.Dataset (memory-mapped, cached by fingerprint): local
    files are read record by record, never all into Python objects."""
    import datasets

    path = Path(data.dataset_name).expanduser()
    if data.dataset_name != "builtin_qa" and not path.exists() and "/" in data.dataset_name \
            and not data.dataset_name.endswith((".json", ".jsonl", ".parquet")):
        ds = load_hf_split(data.dataset_name, data.dataset_config_name, split, cache_dir=data.cache_dir)
        return ds.map(lambda row, i: {"where": f"{data.dataset_name}[{split}][{i}]",
                                      "row": json.dumps(row, ensure_ascii=False, default=str)},
                      with_indices=True, remove_columns=ds.column_names, desc="reading QA rows")
    files = [path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else []
    stamps = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]
    if data.dataset_name == "builtin_qa":
        stamps = [("builtin_qa", GENERATOR_VERSION)]
    cache = str(Path(data.cache_dir) / "datasets") if data.cache_dir else None
    features = datasets.Features({"where": datasets.Value("string"), "row": datasets.Value("string")})
    try:
        return datasets.Dataset.from_generator(_row_records, features=features, cache_dir=cache, gen_kwargs=dict(
            dataset_name=data.dataset_name, split=split, config_name=data.dataset_config_name,
            cache_dir=data.cache_dir, stamps=stamps))
    except datasets.exceptions.DatasetGenerationError as exc:  # the generator's own error, one line for the user
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, DataError):
            raise cause from exc
        raise


def _encoder(tokenizer, sft: SFTArguments, keep_messages: bool):
    max_len, unk = sft.max_seq_length, tokenizer.unk_token_id

    def encode(batch):
        out = {"input_ids": [], "labels": [], "status": [], "length": [], "supervised": [], "unknown": [],
               "messages": []}
        for where, raw in zip(batch["where"], batch["row"]):
            msgs = row_to_messages(json.loads(raw), where, sft.system_prompt)
            ids, labels = tokenize_conversation(tokenizer, msgs)
            status = 0
            if len(ids) > max_len:
                status = 1 if sft.truncation == "drop" else 2
                ids, labels = ids[:max_len], labels[:max_len]
                if status == 2 and all(x == -100 for x in labels):
                    status = 1
            out["input_ids"].append(ids)
            out["labels"].append(labels)
            out["status"].append(status)
            out["length"].append(len(ids))
            out["supervised"].append(sum(1 for x in labels if x != -100))
            out["unknown"].append(sum(1 for t in ids if t == unk) if unk is not None else 0)
            out["messages"].append(json.dumps(msgs, ensure_ascii=False) if keep_messages else "")
        return out

    return encode


def _encode(rows, tokenizer, sft: SFTArguments, keep_messages: bool, digest: str):
    """rows -> input ids and label masks through datasets.map, cached under a fingerprint of the rows, the
    tokenizer and the options: a second run loads the cache instead of tokenizing again."""
    fingerprint = hashlib.sha256(json.dumps([rows._fingerprint, digest, sft.max_seq_length, sft.truncation,
                                             sft.system_prompt, keep_messages, 1]).encode()).hexdigest()[:16]
    return rows.map(_encoder(tokenizer, sft, keep_messages), batched=True, batch_size=256,
                    remove_columns=rows.column_names, new_fingerprint=fingerprint, desc="tokenizing QA pairs")


def _counts(ds) -> dict:
    import numpy as np

    status = np.asarray(ds["status"]) if len(ds) else np.zeros(0)
    return {"dropped": int((status == 1).sum()), "truncated": int((status == 2).sum())}


def build_sft_datasets(data: DataArguments, sft: SFTArguments, tokenizer, seed: int = 0) -> SFTData:
    """Training and held-out examples (held out: the split named, else a seeded share of the rows), tokenized with
    datasets.map: Arrow-backed and cached, so memory stays flat and a second run does not tokenize again."""
    digest = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode() + str(tokenizer.chat_template).encode()
                            ).hexdigest()[:16] if hasattr(tokenizer, "backend_tokenizer") else "slow"
    rows = _rows_dataset(data, data.dataset_split)
    if len(rows) == 0:
        raise DataError(f"{data.dataset_name} has no rows; accepted layouts: {LAYOUTS}")
    if data.validation_split_name or data.dataset_name == "builtin_qa":
        val_rows, train_rows = _rows_dataset(data, data.validation_split_name or "test"), rows
    elif len(rows) > 1:
        n_val = max(1, round(len(rows) * (data.validation_split_percentage or 0) / 100))
        split = rows.train_test_split(test_size=n_val, seed=seed, shuffle=True)
        train_rows, val_rows = split["train"], split["test"]
    else:
        train_rows, val_rows = rows, rows.select([])
    if sft.max_examples:
        train_rows = train_rows.select(range(min(sft.max_examples, len(train_rows))))
    train = _encode(train_rows, tokenizer, sft, False, digest)
    val = _encode(val_rows, tokenizer, sft, True, digest) if len(val_rows) else None
    tc, vc = _counts(train), _counts(val) if val is not None else {"dropped": 0, "truncated": 0}
    if tc["dropped"] or tc["truncated"]:
        logger.warning("%d training examples longer than max_seq_length=%d were %s", tc["dropped"] + tc["truncated"],
                       sft.max_seq_length, "dropped" if sft.truncation == "drop" else "truncated")
    train = train.filter(lambda s: [x != 1 for x in s], input_columns="status", batched=True)
    if len(train) == 0:
        raise DataError(f"no usable training examples in {data.dataset_name} (all {len(train_rows)} rows were longer "
                        f"than max_seq_length={sft.max_seq_length}); raise --max_seq_length or use --truncation "
                        f"truncate")
    unknown_rate_warning(sum(train["unknown"]), sum(train["length"]), f"the SFT data {data.dataset_name}")
    conversations: list[list[dict]] = []
    if val is not None:
        val = val.filter(lambda s: [x != 1 for x in s], input_columns="status", batched=True)
        conversations = [json.loads(m) for m in val.select(range(min(len(val), 1000)))["messages"]]
    stats = {"train_examples": len(train), "eval_examples": len(val) if val is not None else 0,
             "dropped_too_long": tc["dropped"] + vc["dropped"], "truncated": tc["truncated"] + vc["truncated"],
             "supervised_tokens": int(sum(train["supervised"]))}
    keep = ["input_ids", "labels"]
    train = train.select_columns(keep)
    val = val.select_columns(keep) if val is not None and len(val) else None
    return SFTData(train, val, conversations, stats)


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
