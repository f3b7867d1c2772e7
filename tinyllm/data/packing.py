"""Pretraining data: documents -> tokens (bos + text + eos) -> packed blocks of `block_size`.

Tokenization and packing run through `datasets.map` (batched) and are cached by fingerprint in the datasets
cache, so a second run with the same corpus, tokenizer and block size skips them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from tinyllm.config import DataArguments
from tinyllm.data.builtin import GENERATOR_VERSION
from tinyllm.data.corpora import (
    hf_text_column,
    iter_documents,
    load_hf_split,
    resolve_corpus,
    split_documents,
    validation_count,
)
from tinyllm.data.tokenizer import check_unknown_rate
from tinyllm.errors import DataError

__all__ = ["LMData", "ValidationSet", "build_lm_datasets", "build_validation_set", "documents_dataset"]

logger = logging.getLogger(__name__)
STREAMING_VALIDATION_DOCS = 200


@dataclass
class LMData:
    train: object  # datasets.Dataset or IterableDataset of {"input_ids", "labels"}
    eval: object | None
    eval_texts_sample: list[str]
    train_tokens: int | None  # None when streaming
    eval_tokens_per_byte: float | None
    eval_tokens_per_char: float | None


def _doc_generator(dataset_name: str, text_column: str | None, cache_dir: str | None, seed: int, n: int,
                   languages: str, version: int, stamps: list):  # noqa: ARG001 (version/stamps: cache fingerprint)
    for doc in iter_documents(dataset_name, text_column=text_column, cache_dir=cache_dir, builtin_num_documents=n,
                              builtin_languages=languages, seed=seed):
        yield {"text": doc}


def documents_dataset(data: DataArguments, seed: int, streaming: bool = False, split: str | None = None):
    """The corpus as a datasets.Dataset (or IterableDataset) with one column, "text"."""
    import datasets

    kind, files = resolve_corpus(data.dataset_name, data.cache_dir)
    if kind == "hf":
        ds = load_hf_split(data.dataset_name, data.dataset_config_name, split or data.dataset_split,
                           streaming=streaming, cache_dir=data.cache_dir)
        column = hf_text_column(ds.column_names or [], data.text_column, data.dataset_name)
        ds = ds.select_columns([column])
        return ds.rename_column(column, "text") if column != "text" else ds

    gen_kwargs = dict(dataset_name=data.dataset_name, text_column=data.text_column, cache_dir=data.cache_dir, seed=seed,
                      n=data.builtin_num_documents, languages=data.builtin_languages, version=GENERATOR_VERSION,
                      stamps=[(os.path.getsize(p), os.path.getmtime(p)) for p in files])
    if streaming:
        return datasets.IterableDataset.from_generator(_doc_generator, gen_kwargs=gen_kwargs)
    cache_dir = str(Path(data.cache_dir) / "datasets") if data.cache_dir else None
    ds = datasets.Dataset.from_generator(_doc_generator, gen_kwargs=gen_kwargs, cache_dir=cache_dir)
    if len(ds) == 0:
        raise DataError(f"corpus '{data.dataset_name}' is empty: no non-blank documents found; check the data")
    return ds


def _split(ds, data: DataArguments):
    import datasets

    if data.max_documents:
        ds = ds.select(range(min(data.max_documents, len(ds))))
    pct = data.validation_split_percentage
    if pct <= 0:
        return ds, None
    if len(ds) == 1:  # one long document (Tiny Shakespeare): hold out its last characters, like nanoGPT
        train, val = split_documents([ds[0]["text"]], pct)
        return datasets.Dataset.from_dict({"text": train}), datasets.Dataset.from_dict({"text": val})
    n_val = validation_count(len(ds), pct)
    return ds.select(range(len(ds) - n_val)), ds.select(range(len(ds) - n_val, len(ds)))


def _tokenize_fn(tokenizer):
    eos = tokenizer.eos_token_id

    def tokenize(batch):
        ids = tokenizer(batch["text"], add_special_tokens=True, verbose=False)["input_ids"]  # bos + text
        return {"input_ids": [x + [eos] for x in ids]}

    return tokenize


def _group_fn(block_size: int, bos_id: int):
    def group(batch):
        flat = [t for ids in batch["input_ids"] for t in ids]
        n = (len(flat) // block_size) * block_size
        blocks = [flat[i: i + block_size] for i in range(0, n, block_size)]
        # bos always follows eos, so predicting it is free; masking it keeps the loss honest.
        labels = [[-100 if t == bos_id else t for t in b] for b in blocks]
        return {"input_ids": blocks, "labels": labels}

    return group


def _pack(ds, tokenizer, block_size: int, num_proc: int | None, desc: str, streaming: bool):
    kwargs = {} if streaming else dict(num_proc=num_proc, desc=f"tokenizing {desc}")
    tokenized = ds.map(_tokenize_fn(tokenizer), batched=True, remove_columns=["text"], **kwargs)
    if not streaming:
        kwargs["desc"] = f"packing {desc} into blocks of {block_size}"
    # batch_size 1000 documents: packing leaves at most one partial block per batch behind
    # a tokenizer whose bos is its eos (GPT-2's) must keep eos supervised
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id != tokenizer.eos_token_id else None
    return tokenized, tokenized.map(_group_fn(block_size, bos), batched=True, batch_size=1000,
                                    **kwargs)


def build_lm_datasets(data: DataArguments, tokenizer, seed: int = 0) -> LMData:
    import datasets

    num_proc = data.preprocessing_num_workers
    if data.streaming:
        stream = documents_dataset(data, seed, streaming=True)
        val_docs = [row["text"] for row in stream.take(STREAMING_VALIDATION_DOCS)]
        train_stream = stream.skip(STREAMING_VALIDATION_DOCS)
        _, train = _pack(train_stream, tokenizer, data.block_size, None, "train", streaming=True)
        eval_ds = datasets.Dataset.from_dict({"text": val_docs})
        _, eval_packed = _pack(eval_ds, tokenizer, data.block_size, None, "validation", streaming=False)
        return LMData(train, eval_packed, val_docs[:8], None, *_ratios(val_docs, tokenizer))
    docs = documents_dataset(data, seed)
    if data.validation_split_name:
        train_docs = docs
        val_docs = documents_dataset(data, seed, split=data.validation_split_name)
    else:
        train_docs, val_docs = _split(docs, data)
    tok_train, train = _pack(train_docs, tokenizer, data.block_size, num_proc, "train", streaming=False)
    n_tokens = sum(len(x) for x in tok_train["input_ids"])

    check_unknown_rate(tokenizer, tok_train["input_ids"], f"the training corpus {data.dataset_name}")
    if len(train) == 0:
        raise DataError(f"block_size {data.block_size} is larger than the whole training corpus ({n_tokens} tokens); "
                        f"lower --block_size or use more data")
    eval_packed, sample, ratios = None, [], (None, None)
    if val_docs is not None and len(val_docs):
        _, eval_packed = _pack(val_docs, tokenizer, data.block_size, num_proc, "validation", streaming=False)
        if len(eval_packed) == 0:
            raise DataError(f"the validation split has fewer than block_size={data.block_size} tokens; raise "
                            f"--validation_split_percentage or lower --block_size")
        texts = val_docs["text"]
        sample, ratios = texts[:8], _ratios(texts, tokenizer)
        eval_packed = eval_packed.with_format("torch")
    # Arrow -> torch directly: 5x faster batches than Python lists (2 ms vs 10 ms for 32 x 1024 tokens).
    return LMData(train.with_format("torch"), eval_packed, sample, n_tokens, *ratios)


def _ratios(texts: list[str], tokenizer) -> tuple[float, float]:
    """Predicted tokens (text + eos; bos is masked) per UTF-8 byte and per character, to turn the loss per
    token into bits per byte / per character, which do not depend on the tokenizer."""
    ids = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
    n_tok = sum(len(x) + 1 for x in ids)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    n_chars = sum(len(t) for t in texts)
    return n_tok / max(n_bytes, 1), n_tok / max(n_chars, 1)


@dataclass
class ValidationSet:
    blocks: object  # datasets.Dataset of {"input_ids", "labels"}
    tokens_per_byte: float
    documents: int
    tokens: int


def build_validation_set(data: DataArguments, tokenizer, seed: int = 0) -> ValidationSet:
    """The held-out documents of a corpus, packed as in training (the same split rule and the same documents)."""
    docs = documents_dataset(data, seed, split=data.validation_split_name) if data.validation_split_name else None
    if docs is None:
        _, docs = _split(documents_dataset(data, seed), data)
    if docs is None or len(docs) == 0:
        raise DataError(f"corpus '{data.dataset_name}' has no validation split (validation_split_percentage is 0); "
                        f"pass --validation_split_percentage 5 or --validation_split_name")
    if data.block_size is None:
        data.block_size = 256
    _, blocks = _pack(docs, tokenizer, data.block_size, data.preprocessing_num_workers, "validation", streaming=False)
    if len(blocks) == 0:
        raise DataError(f"the validation split has fewer than block_size={data.block_size} tokens; lower --block_size")
    texts = docs["text"]
    per_byte, _ = _ratios(texts, tokenizer)
    return ValidationSet(blocks.with_format("torch"), per_byte, len(texts),
                         sum(len(x) for x in blocks["input_ids"]))
