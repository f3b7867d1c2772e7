"""`tinyllm plan`: parameters, tokens per step, tokens per parameter, memory and time estimates for a config,
without training (the model is built on the meta device; tinyllm.training.estimate computes the plan)."""

from __future__ import annotations

import os

from tinyllm.model_io import check_model_folder, load_tokenizer, resolve_model_path
from tinyllm.modeling import build_config, resolve_block_size
from tinyllm.training.estimate import device_memory, estimate

__all__ = ["run_plan"]


def run_plan(model_args, data, tok_args, args) -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if model_args.model_name_or_path:
        model_args.model_name_or_path = resolve_model_path(model_args.model_name_or_path)
        check_model_folder(model_args.model_name_or_path)
    resolve_block_size(model_args, data)
    if model_args.model_name_or_path:
        config = AutoConfig.from_pretrained(model_args.model_name_or_path, trust_remote_code=False)
        what = f"continued from {model_args.model_name_or_path}, vocab {config.vocab_size}"
    else:
        if tok_args.tokenizer_name_or_path:
            vocab = len(load_tokenizer(tok_args.tokenizer_name_or_path))
            note = f"{vocab} (from {tok_args.tokenizer_name_or_path})"
        else:
            vocab = tok_args.vocab_size if tok_args.tokenizer_type == "bpe" else 128
            note = f"{vocab} ({'vocab_size' if tok_args.tokenizer_type == 'bpe' else 'char mode, approximate'})"
        config = build_config(model_args, vocab, data.block_size, 0, 1, 2)
        what = f"{model_args.model_type} preset '{model_args.preset}', vocab {note}"
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    n, n_no_emb = model.num_parameters(), model.num_parameters(exclude_embeddings=True)
    plan = estimate(config, data, args, n, n_no_emb, None, int(os.environ.get("WORLD_SIZE", "1")), device_memory())
    print(f"model:                {what}")
    print(plan["text"])
    return plan
