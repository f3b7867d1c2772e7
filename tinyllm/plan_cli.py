"""`tinyllm plan`: what a pretraining config will cost, without training. The model is built on the meta device,
so even the ~125M preset is planned at once; the ~4.5 s the command takes on a 2-core CPU are imports
(TrainingArguments alone pulls in peft through transformers.trainer_utils: 3.6 s)."""

from __future__ import annotations

import os

__all__ = ["run_plan"]


def run_plan(model_args, data, tok_args, args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from .modeling import build_config, count_parameters
    from .plan import estimate

    if tok_args.tokenizer_name_or_path:
        from .train import load_tokenizer

        vocab = len(load_tokenizer(tok_args.tokenizer_name_or_path))
        vocab_note = f"{vocab} (from {tok_args.tokenizer_name_or_path})"
    else:
        vocab = tok_args.vocab_size if tok_args.tokenizer_type == "bpe" else 128
        vocab_note = f"{vocab} ({'vocab_size' if tok_args.tokenizer_type == 'bpe' else 'char mode, approximate'})"
    config = build_config(model_args, vocab, data.block_size, 0, 1, 2)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    n, n_no_emb = count_parameters(model), count_parameters(model, exclude_embeddings=True)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    plan = estimate(model_args, data, args, n, n_no_emb, None, config.vocab_size, world)
    print(f"model:                {model_args.model_type} preset '{model_args.preset}', vocab {vocab_note}")
    print(plan["text"])
    return plan
