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
from dataclasses import dataclass
from pathlib import Path

from tinyllm.data.tokenizer import IM_END, IM_START
from tinyllm.errors import ConfigError, TinyLLMError

__all__ = ["run_sft", "load_base", "chat_token_ids", "build_lora_model", "lora_targets", "evaluate_answers",
           "merge_check"]

logger = logging.getLogger(__name__)

LORA_TARGETS = {
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


def lora_targets(model, override: str | None) -> list[str]:
    """--lora_target_modules, else the known names for GPT-2 / Llama, else every linear layer's name found in the
    model except the output head (Qwen, SmolLM, TinyLlama, Phi, ... without a table here)."""
    import torch
    from transformers.pytorch_utils import Conv1D  # GPT-2's linear layers

    if override:
        return [x.strip() for x in override.split(",") if x.strip()]
    if model.config.model_type in LORA_TARGETS:
        return LORA_TARGETS[model.config.model_type]
    head = model.get_output_embeddings()
    names = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                    if isinstance(module, (torch.nn.Linear, Conv1D)) and module is not head})
    if not names:
        raise ConfigError(f"no linear layers found in {type(model).__name__} for LoRA; pass --lora_target_modules")
    return names


def load_base(path: str):
    """The base model and tokenizer for SFT: any causal LM folder (or Hub id) that transformers loads without
    remote code. Its own chat template is used when it has one; otherwise it gets tinyllm's ChatML template."""
    from tinyllm.inference.chat import has_chat_template
    from tinyllm.model_io import load_model_folder, resolve_model_path

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
    from tinyllm.data.tokenizer import CHAT_TEMPLATE
    from tinyllm.modeling import pad_vocab

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


def _uses_conv1d(model, targets: list[str]) -> bool:
    """GPT-2-style Conv1D layers store weights as (in, out): peft must know (fan_in_fan_out)."""
    from transformers.pytorch_utils import Conv1D

    return any(isinstance(m, Conv1D) and name.rsplit(".", 1)[-1] in targets for name, m in model.named_modules())


def build_lora_model(base, lora, trainable_token_ids: list[int]):
    """Wrap `base` with a LoRA adapter on all its linear layers (or `lora.lora_target_modules`); the chat tokens'
    embedding rows are trained through peft's trainable_token_indices (not the whole embedding matrix)."""
    if not lora.use_lora:
        return base
    import warnings

    from peft import LoraConfig, get_peft_model

    targets = lora_targets(base, lora.lora_target_modules)
    logger.info("LoRA on: %s", ", ".join(targets))
    cfg = LoraConfig(r=lora.lora_r, lora_alpha=lora.lora_alpha, lora_dropout=lora.lora_dropout,
                     target_modules=targets,
                     task_type="CAUSAL_LM", fan_in_fan_out=_uses_conv1d(base, targets),
                     trainable_token_indices=(trainable_token_ids or None) if lora.train_chat_token_embeddings
                     else None)
    with warnings.catch_warnings():
        # peft 0.21 calls transformers' deprecated `is_gradient_checkpointing`; not the user's concern
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(base, cfg)


def evaluate_answers(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int = 32,
                     batch_size: int = 16) -> dict:
    """Greedy answers to the held-out questions: exact match (local evaluate module), overall and per language,
    and the share of answers that end with the template's end-of-turn token before max_new_tokens."""
    import evaluate
    import torch

    from tinyllm.data.tokenizer_stage import language_of
    from tinyllm.evaluation.metrics import metric_path
    from tinyllm.inference.chat import encode_chat
    from tinyllm.inference.generation import chat_eos_ids

    eos = chat_eos_ids(tokenizer, model)
    pad = tokenizer.pad_token_id
    preds, refs, stopped = [], [], 0
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(conversations), batch_size):
            chunk = conversations[i: i + batch_size]
            prompts = [encode_chat(tokenizer, c[:-1], add_generation_prompt=True) for c in chunk]
            refs += [c[-1]["content"] for c in chunk]
            width = max(len(p) for p in prompts)  # left padding: every answer starts at the same column
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=model.device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=model.device)
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                     do_sample=False, eos_token_id=eos, pad_token_id=pad)
            for row in out[:, width:].tolist():
                stop = next((k for k, t in enumerate(row) if t in eos), None)
                stopped += int(stop is not None)
                preds.append(tokenizer.decode(row[:stop], skip_special_tokens=True).strip())
    finally:
        if was_training:
            model.train()
    em = evaluate.load(metric_path("exact_match"))
    langs = [language_of(c[-2]["content"]) for c in conversations]
    per_language = {}
    if len(set(langs)) > 1:
        for lang in sorted(set(langs)):
            idx = [k for k, x in enumerate(langs) if x == lang]
            per_language[lang] = em.compute(predictions=[preds[k] for k in idx],
                                            references=[refs[k] for k in idx])["exact_match"]
    return {"exact_match": em.compute(predictions=preds, references=refs)["exact_match"] if preds else 0.0,
            "stopped_rate": stopped / max(len(preds), 1), "per_language": per_language,
            "examples": [{"question": c[-2]["content"], "reference": r, "prediction": p}
                         for c, r, p in zip(conversations, refs, preds)][:8]}


def merge_check(adapter_logits, merged, sample_ids) -> float:
    """Max |logit difference| between the adapter model's logits (computed before merging, since merging
    modifies the base in place) and the merged model's on the same sample batch."""
    import torch

    with torch.no_grad():
        return float((adapter_logits - merged(input_ids=sample_ids).logits).abs().max())


@dataclass
class SFTRun:
    """What the final save needs from one SFT run."""

    args: object
    model_args: object
    data: object
    lora: object
    tokenizer: object
    metrics: dict
    after: dict  # evaluate_answers() after training
    sft: object  # tinyllm.data.sft_data.SFTData


def run_sft(model_args, data, lora, args) -> Path:
    """The SFT stage, as a list of steps. Returns the output folder."""
    from tinyllm.data.sft_data import build_sft_datasets
    from tinyllm.model_io import final_evaluation, prepare_run

    setup = prepare_run(args)
    model, tokenizer = load_base(model_args.model_name_or_path)
    sft = build_sft_datasets(data, tokenizer, args.seed)
    logger.info(setup.device_line)
    logger.info("SFT data: %s", json.dumps(sft.stats))
    args.remove_unused_columns = False
    token_ids = chat_token_ids(tokenizer)
    if args.gradient_checkpointing and lora.use_lora:
        model.enable_input_require_grads()  # checkpointed blocks need a grad path through the frozen embeddings
    model = build_lora_model(model, lora, token_ids)
    counts = _log_trainable(model, lora)
    before = evaluate_answers(model, tokenizer, sft.eval_conversations, data.eval_max_new_tokens)
    logger.info("before SFT: exact match %.3f, stopped %.3f", before["exact_match"], before["stopped_rate"])

    def reload():
        return build_lora_model(load_base(model_args.model_name_or_path)[0], lora, token_ids)

    trainer, result, seconds, eval_before = _train(model, tokenizer, sft, args, setup.resume, reload)
    eval_after = final_evaluation(trainer) if sft.eval is not None else {}
    after = evaluate_answers(trainer.model, tokenizer, sft.eval_conversations, data.eval_max_new_tokens)
    logger.info("after SFT: exact match %.3f, stopped %.3f", after["exact_match"], after["stopped_rate"])
    metrics = {**result.metrics, "sft_runtime_s": round(seconds, 1),
               "eval_answer_loss_before": eval_before.get("eval_loss"),
               "eval_answer_loss": eval_after.get("eval_loss"),
               "exact_match_before": before["exact_match"], "exact_match": after["exact_match"],
               "stopped_rate_before": before["stopped_rate"], "stopped_rate": after["stopped_rate"],
               **{f"exact_match_{k}": v for k, v in after["per_language"].items()},
               **counts, **sft.stats}
    if trainer.is_world_process_zero():
        _save_sft(trainer, SFTRun(args, model_args, data, lora, tokenizer, metrics, after, sft))
        _announce(before, after, args, setup)
    trainer.accelerator.wait_for_everyone()
    return Path(args.output_dir)


def _log_trainable(model, lora) -> dict:
    if lora.use_lora:
        trainable, total = model.get_nb_trainable_parameters()
    else:
        trainable = total = model.num_parameters()
    logger.info("trainable parameters: %s of %s (%.2f%%)%s", f"{trainable:,}", f"{total:,}", 100 * trainable / total,
                " (LoRA)" if lora.use_lora else " (full fine-tuning)")
    return {"trainable_parameters": trainable, "total_parameters": total}


def _train(model, tokenizer, sft, args, resume, reload_model):
    import torch

    from tinyllm.data.sft_data import SFTCollator
    from tinyllm.model_io import train_with_recovery
    from tinyllm.training.callbacks import DoctorCallback, InterruptCallback, TinyTrainer

    if sft.eval is None:
        args.eval_strategy = "no"
    interrupt = InterruptCallback()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad} \
        if hasattr(model, "peft_config") else {}

    def make_trainer(m):
        return TinyTrainer(model=m, args=args, train_dataset=sft.train, eval_dataset=sft.eval,
                           data_collator=SFTCollator(tokenizer), processing_class=tokenizer,
                           callbacks=[DoctorCallback(args.learning_rate), interrupt])

    # The "before" loss is measured on a copy: evaluating the training model first makes Trainer treat it as
    # already prepared, and under DDP it would then skip the DistributedDataParallel wrapper (unsynced grads).
    eval_before = make_trainer(copy.deepcopy(model)).evaluate() if sft.eval is not None else {}
    start = time.time()
    trainer, result = train_with_recovery(make_trainer, model, args, resume, interrupt, reload_model)
    seconds = time.time() - start
    changed = [n for n, p in trainer.model.named_parameters() if n in frozen and not torch.equal(p.detach(), frozen[n])]
    if changed:
        raise TinyLLMError(f"internal error: frozen base weights changed ({changed[:3]})")
    return trainer, result, seconds, eval_before


def _announce(before, after, args, setup) -> None:
    out = Path(args.output_dir)
    langs = "".join(f" ({k}: {v:.3f})" for k, v in after["per_language"].items())
    print(f"\nexact match on held-out questions: {before['exact_match']:.3f} before -> "
          f"{after['exact_match']:.3f} after SFT{langs}; answers that stop by themselves: {after['stopped_rate']:.0%}")
    for ex in after["examples"][:4]:
        print(f"  Q: {ex['question']}\n  A: {ex['prediction']}   (expected: {ex['reference']})")
    print(f"\nChat model saved to {out.resolve()} (adapter in {out / 'adapter'})\n"
          f"  chat:      tinyllm chat --model {out}\n"
          f"  in Python: pipeline('text-generation', model='{out}')([{{'role': 'user', 'content': '...'}}])")
    if setup.push:
        from tinyllm.hub import push_folder

        print(f"Pushed to {push_folder(out, args.hub_model_id, args.hub_private_repo, setup.hub_token)}")


def _save_sft(trainer, run: SFTRun) -> None:
    import torch

    from tinyllm.hub import (
        CardInfo,
        hardware_summary,
        make_generation_config,
        plot_loss,
        save_model_folder,
        write_model_card,
    )
    from tinyllm.inference.generation import chat_eos_ids
    from tinyllm.io import staged_into

    args, lora, metrics, tokenizer = run.args, run.lora, run.metrics, run.tokenizer
    out = Path(args.output_dir)
    with staged_into(out) as staging:
        model = trainer.model
        sample = torch.tensor([run.sft.train[0]["input_ids"][:64]], device=model.device)
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
                raise TinyLLMError(f"merged and adapter logits disagree (max diff {diff:.2e}); nothing was saved. "
                                   f"Retry "
                                   f"with --use_lora false, or report this with --debug output")
        else:
            merged = model
        # the template's end-of-turn token is the eos, so answers stop by themselves in pipeline() and llama.cpp
        gen = make_generation_config(tokenizer, args, eos_ids=chat_eos_ids(tokenizer, merged))
        save_model_folder(merged, tokenizer, gen, staging)
        if args.plot_loss:
            plot_loss(trainer.state.log_history, staging / "loss_curve.png", title="SFT loss (answer tokens only)")
        (staging / "sft_eval_examples.json").write_text(json.dumps(run.after["examples"], indent=2,
                                                                   ensure_ascii=False))
        summary = {"architecture": type(merged).__name__, "base model": run.model_args.model_name_or_path,
                   "method": f"LoRA r={lora.lora_r}, alpha={lora.lora_alpha}" if lora.use_lora else "full fine-tuning",
                   "trainable parameters": f"{metrics['trainable_parameters']:,} of {metrics['total_parameters']:,}",
                   "SFT data": run.data.dataset_name, "training examples": metrics["train_examples"],
                   "answer-token loss before / after": f"{_f(metrics['eval_answer_loss_before'])} / "
                                                       f"{_f(metrics['eval_answer_loss'])}",
                   "exact match before / after": f"{metrics['exact_match_before']:.3f} / {metrics['exact_match']:.3f}",
                   "answers that stop by themselves": f"{metrics['stopped_rate']:.0%}",
                   "steps": trainer.state.global_step, "hardware": hardware_summary(),
                   "training time (s)": metrics["sft_runtime_s"]}
        for lang, value in run.after["per_language"].items():
            summary[f"exact match ({lang})"] = f"{value:.3f}"
        question = run.sft.eval_conversations[0][-2]["content"] if run.sft.eval_conversations else "Hello!"
        results = [{"dataset": run.data.dataset_name, "metric": "exact_match", "task_name": "held-out questions",
                    "metric_name": "exact match", "value": round(metrics["exact_match"], 4)}]
        card = CardInfo(name=args.hub_model_id or out.name, title=f"tinyllm chat model ({out.name})",
                        datasets=[run.data.dataset_name], license=args.license, summary=summary, chat=True,
                        description=f"An instruction-tuned version of {run.model_args.model_name_or_path}, trained "
                                    f"with LoRA on question-answer pairs and merged into plain transformers weights.",
                        usage_prompt=question, base_model=run.model_args.model_name_or_path, eval_results=results)
        write_model_card(staging, card)
        from tinyllm.evaluation.report import write_run_report

        write_run_report(staging, out, summary=summary, metrics=metrics, samples=[
            f"Q: {e['question']}\nA: {e['prediction']}" for e in run.after["examples"][:4]],
            log_history=trainer.state.log_history)
    trainer.save_metrics("all", {k: v for k, v in metrics.items() if v is not None and not
                                 (isinstance(v, float) and math.isnan(v))})
    trainer.save_state()


def _f(x):
    return "n/a" if x is None else f"{x:.3f}"
