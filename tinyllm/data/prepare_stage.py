"""`tinyllm prepare`: a corpus -> token shards on disk, once, before training (data/shards.py).

    tinyllm prepare --config recipes/configs/tinystories.yaml --dataset_name big.txt
    tinyllm pretrain --config recipes/configs/tinystories.yaml --dataset_name big.txt   # finds the shards

Takes the same options (and YAML) as `pretrain`, so both resolve the same tokenizer (named, the model's own, or
trained once on a sample of the corpus and cached) and the same shard folder.
"""

from __future__ import annotations

from pathlib import Path

from tinyllm.config import DataArguments, ModelArguments, TokenizerArguments
from tinyllm.data.shards import prepare_shards
from tinyllm.data.tokenizer import check_pretraining_tokenizer, tokenizer_for_run
from tinyllm.model_io import resolve_model_path

__all__ = ["run_prepare"]


def run_prepare(model_args: ModelArguments, data: DataArguments, tok_args: TokenizerArguments, args) -> Path:
    if model_args.model_name_or_path:
        model_args.model_name_or_path = resolve_model_path(model_args.model_name_or_path)
    tokenizer, _ = tokenizer_for_run(tok_args.tokenizer_name_or_path, model_args.model_name_or_path, data, tok_args,
                                     args.seed)
    check_pretraining_tokenizer(tokenizer, from_scratch=not model_args.model_name_or_path)
    shards = prepare_shards(data, tokenizer, args.seed)
    m = shards.meta
    size = sum(f.stat().st_size for f in shards.folder.glob("*.bin"))
    print(f"Token shards in {shards.folder}\n"
          f"  training:   {m['train']['tokens']:,} tokens, {m['train']['documents']:,} documents, "
          f"{len(m['train']['files'])} file(s)\n"
          f"  held out:   {m['validation']['tokens']:,} tokens, {m['validation']['documents']:,} documents\n"
          f"  on disk:    {size / 2**20:,.1f} MB ({m['dtype']}); prepared in {m['seconds']} s\n"
          f"tinyllm pretrain with the same corpus and tokenizer options reads them without tokenizing again.")
    return shards.folder
