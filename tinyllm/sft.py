"""Instruction tuning with LoRA (peft) on question-answer pairs, then a merged, Hub-ready chat model.

Output layout:
  D/adapter/       the peft adapter (AutoPeftModelForCausalLM.from_pretrained(D/adapter))
  D/               the merged model: plain transformers, `pipeline("text-generation", model=D)` takes chat messages
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from pathlib import Path

from .errors import ConfigError, TinyLLMError

__all__ = ["run_sft", "lora_targets", "evaluate_answers", "merge_check"]

logger = logging.getLogger("tinyllm.sft")

LORA_TARGETS = {
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


def lora_targets(model_type: str, override: str | None) -> list[str]:
    if override:
        return [x.strip() for x in override.split(",") if x.strip()]
    if model_type not in LORA_TARGETS:
        raise ConfigError(f"no default LoRA targets for model_type '{model_type}'; pass --lora_target_modules")
    return LORA_TARGETS[model_type]


def _load_base(path: str):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .tokenizer import check_chat_tokens

    p = Path(path)
    if not p.is_dir():
        raise ConfigError(f"base model folder not found: {path}; pretrain one first (recipes/pretrain.py)")
    if not (p / "config.json").is_file():
        raise ConfigError(f"{path} has no config.json: not a saved model folder")
    if not (p / "tokenizer.json").is_file() and not (p / "tokenizer_config.json").is_file():
        raise ConfigError(f"{path} has no tokenizer; save the tokenizer with the model (tinyllm does this)")
    config = AutoConfig.from_pretrained(p, trust_remote_code=False)
    if not any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in (config.architectures or [])):
        raise ConfigError(f"{path} is not a causal language model ({', '.join(config.architectures or ['?'])}); "
                          f"use a model pretrained with recipes/pretrain.py")
    tokenizer = AutoTokenizer.from_pretrained(p, trust_remote_code=False)
    check_chat_tokens(tokenizer, path)
    from .modeling import check_vocab

    check_vocab(tokenizer, config, path)
    try:
        model = AutoModelForCausalLM.from_pretrained(p, use_safetensors=True, trust_remote_code=False,
                                                     dtype=torch.float32)
    except Exception as exc:
        raise ConfigError(f"cannot load the model in {path}: {str(exc).splitlines()[0][:200]}") from None
    return model, tokenizer


def evaluate_answers(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int = 32,
                     batch_size: int = 16) -> dict:
    """Greedy answers to the held-out questions: exact match (local evaluate module) and the share of answers
    that end with <|im_end|> before max_new_tokens."""
    import evaluate
    import torch

    from .metrics import metric_path
    from .tokenizer import IM_END

    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    preds, refs, stopped = [], [], 0
    was_training = model.training
    model.eval()
    tokenizer.padding_side = "left"
    for i in range(0, len(conversations), batch_size):
        chunk = conversations[i: i + batch_size]
        prompts = [c[:-1] for c in chunk]
        refs += [c[-1]["content"] for c in chunk]
        enc = tokenizer.apply_chat_template(prompts, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True, padding=True).to(model.device)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=[im_end, tokenizer.eos_token_id], pad_token_id=tokenizer.pad_token_id)
        for row in out[:, enc["input_ids"].shape[1]:].tolist():
            stopped += int(im_end in row)
            if im_end in row:
                row = row[: row.index(im_end)]
            preds.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    tokenizer.padding_side = "right"
    if was_training:
        model.train()
    em = evaluate.load(metric_path("exact_match")).compute(predictions=preds, references=refs)["exact_match"]
    n = max(len(preds), 1)
    return {"exact_match": em, "stopped_rate": stopped / n, "examples": [
        {"question": c[-2]["content"], "reference": r, "prediction": p} for c, r, p in zip(conversations, refs, preds)
    ][:8]}


def merge_check(adapter_logits, merged, sample_ids) -> float:
    """Max |logit difference| between the adapter model's logits (computed before merging, since merging
    modifies the base in place) and the merged model's on the same sample batch."""
    import torch

    with torch.no_grad():
        return float((adapter_logits - merged(input_ids=sample_ids).logits).abs().max())


def run_sft(model_args, data, lora, args) -> Path:
    import torch

    from .sft_data import SFTCollator, build_sft_datasets
    from .tokenizer import IM_END, IM_START
    from .train import _setup_logging, prepare_run

    _setup_logging(args)
    out = Path(args.output_dir)
    resume, push, device_line = prepare_run(args)
    model, tokenizer = _load_base(model_args.model_name_or_path)
    sft = build_sft_datasets(data, tokenizer, args.seed)
    logger.info(device_line)
    logger.info("SFT data: %s", json.dumps(sft.stats))
    args.remove_unused_columns = False

    im_ids = [tokenizer.convert_tokens_to_ids(t) for t in (IM_START, IM_END)]

    def build_model(base):
        if not lora.use_lora:
            return base
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=lora.lora_r, lora_alpha=lora.lora_alpha, lora_dropout=lora.lora_dropout,
                         target_modules=lora_targets(base.config.model_type, lora.lora_target_modules),
                         task_type="CAUSAL_LM", fan_in_fan_out=base.config.model_type == "gpt2",
                         # The chat tokens were reserved but never seen in pretraining: train their embedding rows
                         # with peft's own mechanism instead of unfreezing the whole embedding matrix.
                         trainable_token_indices=im_ids if lora.train_chat_token_embeddings else None)
        return get_peft_model(base, cfg)

    model = build_model(model)
    base_snapshot = ({n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
                     if lora.use_lora else {})
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("trainable parameters: %s of %s (%.2f%%)%s", f"{trainable:,}", f"{total:,}", 100 * trainable / total,
                " (LoRA)" if lora.use_lora else " (full fine-tuning)")

    before = evaluate_answers(model, tokenizer, sft.eval_conversations, data.eval_max_new_tokens)
    logger.info("before SFT: exact match %.3f, stopped %.3f", before["exact_match"], before["stopped_rate"])

    from .callbacks import DoctorCallback, InterruptCallback, TinyTrainer
    from .train import train_with_recovery

    if sft.eval is None:
        args.eval_strategy = "no"
    interrupt = InterruptCallback()

    def make_trainer(m):
        return TinyTrainer(model=m, args=args, train_dataset=sft.train, eval_dataset=sft.eval,
                           data_collator=SFTCollator(tokenizer.pad_token_id), processing_class=tokenizer,
                           callbacks=[DoctorCallback(args.learning_rate), interrupt])

    # The "before" loss is measured on a copy: evaluating the training model first makes Trainer treat it as
    # already prepared, and under DDP it would then skip the DistributedDataParallel wrapper (unsynced grads).
    eval_before = make_trainer(copy.deepcopy(model)).evaluate() if sft.eval is not None else {}
    start = time.time()
    trainer, result = train_with_recovery(make_trainer, model, args, resume, interrupt,
                                          lambda: build_model(_load_base(model_args.model_name_or_path)[0]))
    seconds = time.time() - start

    eval_after = trainer.evaluate() if sft.eval is not None else {}
    after = evaluate_answers(trainer.model, tokenizer, sft.eval_conversations, data.eval_max_new_tokens)
    logger.info("after SFT: exact match %.3f, stopped %.3f", after["exact_match"], after["stopped_rate"])

    if lora.use_lora:
        frozen_changed = [n for n, p in trainer.model.named_parameters()
                          if n in base_snapshot and not torch.equal(p.detach(), base_snapshot[n])]
        if frozen_changed:
            raise TinyLLMError(f"internal error: frozen base weights changed ({frozen_changed[:3]})")
    metrics = {**result.metrics, "sft_runtime_s": round(seconds, 1),
               "eval_answer_loss_before": eval_before.get("eval_loss"),
               "eval_answer_loss": eval_after.get("eval_loss"),
               "exact_match_before": before["exact_match"], "exact_match": after["exact_match"],
               "stopped_rate_before": before["stopped_rate"], "stopped_rate": after["stopped_rate"],
               "trainable_parameters": trainable, "total_parameters": total, **sft.stats}
    if trainer.is_world_process_zero():
        _save_sft(trainer, tokenizer, args, model_args, data, lora, metrics, after, im_ids, sft)
        print(f"\nexact match on held-out questions: {before['exact_match']:.3f} before -> "
              f"{after['exact_match']:.3f} after SFT; answers that stop by themselves: "
              f"{after['stopped_rate']:.0%}")
        for ex in after["examples"][:4]:
            print(f"  Q: {ex['question']}\n  A: {ex['prediction']}   (expected: {ex['reference']})")
        print(f"\nChat model saved to {out.resolve()} (adapter in {out / 'adapter'})\n"
              f"  chat:      tinyllm chat --model {out}\n"
              f"  in Python: pipeline('text-generation', model='{out}')([{{'role': 'user', 'content': '...'}}])")
        if push:
            from .hub import push_folder

            print(f"Pushed to {push_folder(out, args.hub_model_id, args.hub_private_repo)}")
    trainer.accelerator.wait_for_everyone()
    return out


def _save_sft(trainer, tokenizer, args, model_args, data, lora, metrics, after, im_ids, sft) -> None:
    import torch

    from .hub import hardware_summary, make_generation_config, plot_loss, save_model_folder, write_model_card
    from .io import staged_into

    out = Path(args.output_dir)
    with staged_into(out) as staging:
        model = trainer.model
        sample = torch.tensor([sft.train[0]["input_ids"][:64]], device=model.device)
        if lora.use_lora:
            model.save_pretrained(staging / "adapter")
            tokenizer.save_pretrained(staging / "adapter")
            model.eval()
            with torch.no_grad():
                ref_logits = model(input_ids=sample).logits
            merged = model.merge_and_unload()
            diff = merge_check(ref_logits, merged, sample)
            metrics["merge_max_abs_logit_diff"] = diff
            if not diff < 1e-3:
                raise TinyLLMError(f"merged and adapter logits disagree (max diff {diff:.2e}); nothing was saved. Retry "
                                   f"with --use_lora false, or report this with --debug output")
        else:
            merged = model
        gen = make_generation_config(tokenizer, args, eos_ids=[im_ids[1], tokenizer.eos_token_id])
        save_model_folder(merged, tokenizer, gen, staging)
        if args.plot_loss:
            plot_loss(trainer.state.log_history, staging / "loss_curve.png", title="SFT loss (answer tokens only)")
        (staging / "sft_eval_examples.json").write_text(json.dumps(after["examples"], indent=2, ensure_ascii=False))
        summary = {"architecture": type(merged).__name__, "base model": model_args.model_name_or_path,
                   "method": f"LoRA r={lora.lora_r}, alpha={lora.lora_alpha}" if lora.use_lora else "full fine-tuning",
                   "trainable parameters": f"{metrics['trainable_parameters']:,} of {metrics['total_parameters']:,}",
                   "SFT data": data.dataset_name, "training examples": metrics["train_examples"],
                   "answer-token loss before / after": f"{_f(metrics['eval_answer_loss_before'])} / "
                                                       f"{_f(metrics['eval_answer_loss'])}",
                   "exact match before / after": f"{metrics['exact_match_before']:.3f} / {metrics['exact_match']:.3f}",
                   "answers ending with <|im_end|>": f"{metrics['stopped_rate']:.0%}",
                   "steps": trainer.state.global_step, "hardware": hardware_summary(),
                   "training time (s)": metrics["sft_runtime_s"]}
        question = sft.eval_conversations[0][-2]["content"] if sft.eval_conversations else "Hello!"
        write_model_card(staging, name=args.hub_model_id or out.name, title=f"tinyllm chat model ({out.name})",
                         datasets=[data.dataset_name], license=args.license, summary=summary, chat=True,
                         description=f"An instruction-tuned version of {model_args.model_name_or_path}, trained with "
                                     f"LoRA on question-answer pairs and merged into plain transformers weights.",
                         usage_prompt=question, base_model=model_args.model_name_or_path)
    trainer.save_metrics("all", {k: v for k, v in metrics.items() if v is not None and not
                                 (isinstance(v, float) and math.isnan(v))})
    trainer.save_state()


def _f(x):
    return "n/a" if x is None else f"{x:.3f}"
