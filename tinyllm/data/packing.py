"""Pretraining data: the corpus's token shards (data/shards.py) as training blocks and a fixed held-out set.

Training reads `block_size`-token blocks from the shards on disk; evaluation takes whole held-out documents up to
`--eval_max_tokens` (the same documents every evaluation and every run with the same settings), so its cost does
not grow with the corpus. Token counts, the unknown-token rate and the bits-per-byte ratios come from prepare's
streamed counts, never from lists of every id.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tinyllm.config import DataArguments
from tinyllm.data.shards import Shards, TrainBlocks, ValidationBlocks, prepare_shards
from tinyllm.data.tokenizer import unknown_rate_warning
from tinyllm.errors import DataError

__all__ = ["LMData", "ValidationSet", "build_lm_datasets", "build_validation_set"]

logger = logging.getLogger(__name__)


@dataclass
class LMData:
    train: TrainBlocks
    eval: ValidationBlocks | None
    eval_texts_sample: list[str]
    train_tokens: int
    eval_tokens_per_byte: float | None
    eval_tokens_per_char: float | None
    eval_documents: int  # held-out documents scored (the entropy floor is computed on exactly these)
    shards: Shards


def _validation(shards: Shards, data: DataArguments) -> ValidationBlocks | None:
    if not shards.meta["validation"]["documents"]:
        return None
    val = ValidationBlocks(shards, data.block_size, data.eval_max_tokens)
    if len(val) == 0:
        raise DataError(f"the held-out documents hold fewer than block_size={data.block_size} tokens"
                        f"{' within --eval_max_tokens ' + str(data.eval_max_tokens) if data.eval_max_tokens else ''};"
                        f" raise --validation_split_percentage or --eval_max_tokens, or lower --block_size")
    return val


def build_lm_datasets(data: DataArguments, tokenizer, seed: int = 0, shards: Shards | None = None) -> LMData:
    """Training blocks and the held-out set of `data`'s corpus (its shards prepared first when needed)."""
    shards = shards or prepare_shards(data, tokenizer, seed)
    meta = shards.meta
    total = meta["train"]["tokens"] + meta["validation"]["tokens"]
    unknown_rate_warning(meta["unknown_tokens"], total, f"the training corpus {data.dataset_name}")
    train = TrainBlocks(shards, data.block_size)
    if len(train) == 0:
        raise DataError(f"block_size {data.block_size} is larger than the whole training corpus "
                        f"({meta['train']['tokens']} tokens); lower --block_size or use more data")
    val = _validation(shards, data)
    logger.info("training on %s blocks of %d tokens from %s; evaluating on %s held-out tokens (%d documents)",
                f"{len(train):,}", data.block_size, shards.folder, f"{val.tokens:,}" if val else 0,
                val.documents if val else 0)
    return LMData(train, val, meta.get("validation_samples", [])[:8], meta["train"]["tokens"],
                  val.tokens_per_byte if val else None, val.tokens_per_char if val else None,
                  val.documents if val else 0, shards)


@dataclass
class ValidationSet:
    blocks: ValidationBlocks
    tokens_per_byte: float
    documents: int
    tokens: int


def build_validation_set(data: DataArguments, tokenizer, seed: int = 0) -> ValidationSet:
    """The held-out documents of a corpus, packed as in training, by the same rule and budget (`tinyllm eval`)."""
    if data.block_size is None:
        data.block_size = 256
    shards = prepare_shards(data, tokenizer, seed)
    val = _validation(shards, data) if data.validation_split_percentage != 0 else None
    if val is None:
        raise DataError(f"corpus '{data.dataset_name}' has no validation split (validation_split_percentage is 0); "
                        f"pass --validation_split_percentage 5 or --validation_split_name")
    return ValidationSet(val, val.tokens_per_byte, val.documents, val.tokens)
