"""The training loss without the full logits tensor: the output head and cross-entropy run over chunks of tokens.

A causal LM's loss materialises batch x context x vocabulary logits, then log-softmax and its gradient of the same
size: for LoRA SFT of a 143M model with a 37k vocabulary at micro-batch 16 x 256 that is 3 x 0.6 GB, more than
the model. Here the model runs its usual forward (through DDP or any wrapper) with the head swapped for a stand-in
that keeps its input, then the real head and the cross-entropy run over 4096 tokens at a time, each chunk
checkpointed (recomputed in backward: one more head matmul), so only one chunk's logits exist at a time. The loss
is the model's own: the sum over supervised tokens divided as transformers divides it (by num_items_in_batch when
Trainer passes it, else by the supervised tokens of the batch).
"""

from __future__ import annotations

import os

__all__ = ["chunked_causal_lm_loss", "worth_chunking", "CHUNK_TOKENS"]

CHUNK_TOKENS = 4096
# below 32M logit values (128 MB) the plain loss is as small and a little faster; TINYLLM_CHUNK_MIN_LOGITS moves it
MIN_LOGITS = int(os.environ.get("TINYLLM_CHUNK_MIN_LOGITS", 1 << 25))


def worth_chunking(model, input_ids) -> bool:
    vocab = getattr(model.config, "vocab_size", 0) or 0
    return input_ids.numel() * vocab >= MIN_LOGITS


def chunked_causal_lm_loss(model, head, inputs: dict, num_items_in_batch=None):
    """(loss, model outputs) of `model` on `inputs` (with "labels"); `head` is the model's output-embedding module
    (model.get_output_embeddings(), whatever wraps it)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    labels = inputs["labels"]
    captured = {}

    def keep_input(hidden):
        captured["hidden"] = hidden
        return hidden[..., :1]  # a stand-in for the logits: the model needs something of the right rank

    head.forward = keep_input  # an instance attribute shadows the class's forward; removed below
    try:
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
    finally:
        del head.forward
    hidden = captured["hidden"]
    h = hidden[:, :-1, :].reshape(-1, hidden.shape[-1])
    y = labels[:, 1:].reshape(-1).to(h.device)

    def chunk_loss(h_chunk, y_chunk):
        return F.cross_entropy(head(h_chunk).float(), y_chunk, ignore_index=-100, reduction="sum")

    total = h.new_zeros((), dtype=torch.float32)
    for start in range(0, h.shape[0], CHUNK_TOKENS):
        end = start + CHUNK_TOKENS
        if (y[start:end] != -100).any():
            total = total + checkpoint(chunk_loss, h[start:end], y[start:end], use_reentrant=False)
    if num_items_in_batch is not None:
        divisor = num_items_in_batch.to(total.device) if torch.is_tensor(num_items_in_batch) else num_items_in_batch
    else:
        divisor = (y != -100).sum()
    return total / divisor, outputs
