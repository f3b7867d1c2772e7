"""What the post-training stages (SFT, DPO, GRPO) share: loading a chat-capable base model, wrapping it with a
LoRA adapter (peft), the base model's behaviour with the adapter switched off (no second copy of the weights), and
merging the adapter into plain transformers weights, checked against the adapter model's own logits.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

from tinyllm.config import LoraArguments
from tinyllm.data.tokenizer import CHAT_TEMPLATE, IM_END, IM_START
from tinyllm.errors import ConfigError, TinyLLMError
from tinyllm.inference.chat import end_of_turn_token, has_chat_template, is_chat_model
from tinyllm.model_io import load_model_folder, resolve_model_path
from tinyllm.modeling import pad_vocab

__all__ = ["load_base", "load_chat_model", "adopt_chatml", "chat_token_ids", "lora_config", "build_lora_model",
           "merge_check", "without_adapter", "merge_adapter"]

logger = logging.getLogger(__name__)


def load_base(path: str):
    """The base model and tokenizer for SFT: any causal LM folder (or Hub id) that transformers loads without
    remote code. Its own chat template is used when it has one; otherwise it gets tinyllm's ChatML template."""
    path = resolve_model_path(path)
    p = Path(path)
    if p.is_dir() and (p / "config.json").is_file() and not (p / "tokenizer.json").is_file() \
            and not (p / "tokenizer_config.json").is_file():
        raise ConfigError(f"{path} has no tokenizer; save the tokenizer with the model (tinyllm does this)")
    model, tokenizer = load_model_folder(path)
    if not has_chat_template(tokenizer):
        adopt_chatml(model, tokenizer)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked out of attention and labels in SFT
    return model, tokenizer


def adopt_chatml(model, tokenizer) -> list[int]:
    """Give a model without a chat template tinyllm's ChatML template: add <|im_start|>/<|im_end|> as special
    tokens where missing, grow the embeddings (to a multiple of 64) when the new ids do not fit, and return the new
    ids (their rows are trained during SFT; the saved folder carries the template, so pipeline() chats)."""
    missing = [t for t in (IM_START, IM_END) if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    tokenizer.chat_template = CHAT_TEMPLATE
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        model.resize_token_embeddings(pad_vocab(len(tokenizer)), mean_resizing=True)
    logger.info("the base model has no chat template: using ChatML (%s); added tokens %s; embedding rows %d -> %d",
                " ".join((IM_START, IM_END)), missing or "none", rows, model.get_input_embeddings().weight.shape[0])
    return [tokenizer.convert_tokens_to_ids(t) for t in missing]


def chat_token_ids(tokenizer) -> list[int]:
    """Ids of ChatML's control tokens, reserved by tinyllm's tokenizers but never seen in pretraining: SFT trains
    their embedding rows."""
    vocab = tokenizer.get_vocab()
    return [vocab[t] for t in (IM_START, IM_END) if t in vocab]


def lora_config(base, lora: LoraArguments, trainable_token_ids: list[int] | None = None):
    """peft's LoraConfig for `base`: every linear layer but the output head (peft's "all-linear"), or
    `lora.lora_target_modules`; with `trainable_token_ids`, those embedding rows are trained too (peft's
    trainable_token_indices, not the whole embedding matrix)."""
    from peft import LoraConfig
    from transformers.pytorch_utils import Conv1D  # GPT-2's linear layers store weights as (in, out)

    targets = [x.strip() for x in lora.lora_target_modules.split(",") if x.strip()] \
        if lora.lora_target_modules else "all-linear"
    return LoraConfig(r=lora.lora_r, lora_alpha=lora.lora_alpha, lora_dropout=lora.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM",
                      fan_in_fan_out=any(isinstance(m, Conv1D) for m in base.modules()),
                      trainable_token_indices=(trainable_token_ids or None) if lora.train_chat_token_embeddings
                      else None)


def build_lora_model(base, lora: LoraArguments, trainable_token_ids: list[int]):
    """Wrap `base` with a LoRA adapter (lora_config); `base` itself when lora.use_lora is off."""
    if not lora.use_lora:
        return base
    import warnings

    from peft import get_peft_model

    with warnings.catch_warnings():
        # peft 0.21 calls transformers' deprecated `is_gradient_checkpointing`; not the user's concern
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model = get_peft_model(base, lora_config(base, lora, trainable_token_ids))
    logger.info("LoRA on: %s", ", ".join(sorted(model.peft_config["default"].target_modules)))
    return model


def merge_check(adapter_logits, merged, sample_ids) -> float:
    """Max |logit difference| between the adapter model's logits (computed before merging, since merging
    modifies the base in place) and the merged model's on the same sample batch."""
    import torch

    with torch.no_grad():
        return float((adapter_logits - merged(input_ids=sample_ids).logits).abs().max())


def without_adapter(model):
    """The base model's behaviour: the adapter (and its trained token rows) switched off, no second copy."""
    return model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()


def load_chat_model(path: str, stage: str):
    """A model that already chats (a chat template and an end-of-turn token), for DPO and GRPO: these tune how a
    chat model answers, they do not teach the format. Anything else is a one-line error that says what to do."""
    model, tokenizer = load_model_folder(resolve_model_path(path))
    if not has_chat_template(tokenizer):
        raise ConfigError(f"{path} has no chat template, so {stage} has no prompt format to tune; instruction-tune "
                          f"it first (tinyllm sft --model_name_or_path {path}), then run {stage} on the SFT output")
    eot = end_of_turn_token(tokenizer)
    if not eot:
        raise ConfigError(f"{path} has a chat template but no end-of-turn or eos token, so answers could never "
                          f"stop; set eos_token in its tokenizer_config.json, or run tinyllm sft on it first")
    if not is_chat_model(model, tokenizer) and tokenizer.chat_template == CHAT_TEMPLATE:
        # a tinyllm base model: its tokenizer carries the ChatML template, but pretraining never saw a turn
        raise ConfigError(f"{path} is not a chat model: its generation does not stop at the end of a turn ({eot} is "
                          f"not among its eos ids), as a base model's does not; run tinyllm sft --model_name_or_path "
                          f"{path} first, then {stage} on the SFT output")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked out of attention and the loss
    return model, tokenizer


def embeddings_resized(model) -> bool:
    """Whether the adapter model's vocabulary differs from its base's as saved (its config.json)."""
    cfg = getattr(getattr(model, "peft_config", {}).get("default"), "base_model_name_or_path", None)
    path = Path(cfg) / "config.json" if cfg else None
    if path is None or not path.is_file():
        return False
    saved = json.loads(path.read_text()).get("vocab_size")
    return saved is not None and saved != model.get_input_embeddings().weight.shape[0]


def merge_adapter(model, sample_ids, staging: Path | None = None, tokenizer=None):
    """The adapter merged into plain weights: saves the adapter (and tokenizer) to staging/adapter first when
    asked, merges, and checks the merged model's logits on `sample_ids` against the adapter model's. Returns
    (merged model, max |logit difference|); refuses (nothing saved) when they disagree."""
    import torch

    if staging is not None:
        # the embedding rows go into the adapter folder when SFT grew them (ChatML added to a model without a
        # template), so that the adapter loads on the base it was trained on; said here, not guessed by peft
        model.save_pretrained(staging / "adapter", save_embedding_layers=embeddings_resized(model))
        if tokenizer is not None:
            tokenizer.save_pretrained(staging / "adapter")
    model.eval()
    with torch.no_grad():
        ref_logits = model(input_ids=sample_ids).logits
    merged = model.merge_and_unload()
    diff = merge_check(ref_logits, merged, sample_ids)
    if not diff < 1e-3:
        raise TinyLLMError(f"merged and adapter logits disagree (max diff {diff:.2e}); nothing was saved. "
                           f"Retry with --use_lora false, or report this with --debug output")
    return merged, diff
