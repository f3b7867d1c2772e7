"""Instruction tuning with LoRA (peft) on question-answer pairs, then a merged, Hub-ready chat model.

Output layout:
  D/adapter/       the peft adapter (AutoPeftModelForCausalLM.from_pretrained(D/adapter))
  D/               the merged model: plain transformers, `pipeline("text-generation", model=D)` takes chat messages

Memory: one copy of the base weights. The "before" measurements run on the same model with the adapter
disabled (peft's `disable_adapter()`), and the merge is checked against the adapter model's own logits.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import tinyllm
from tinyllm.config import DataArguments, LoraArguments, SFTArguments, SFTModelArguments
from tinyllm.data.sft_data import SFTCollator, SFTData, build_sft_datasets
from tinyllm.evaluation.report import RunSummary
from tinyllm.evaluation.scoring import evaluate_answers, mean_token_loss
from tinyllm.hub import hardware_summary
from tinyllm.training.adapters import build_lora_model, chat_token_ids, load_base, without_adapter
from tinyllm.training.budget import BudgetCallback, TimeBudget
from tinyllm.training.callbacks import DoctorCallback, InterruptCallback, TinyTrainer
from tinyllm.training.posttrain import TunedFolder, announce_folder, save_tuned_folder
from tinyllm.training.recovery import RunSetup, final_evaluation, prepare_run, train_with_recovery

if TYPE_CHECKING:
    from tinyllm.training.arguments import SFTTrainingArguments

__all__ = ["run_sft", "load_base", "chat_token_ids", "build_lora_model"]  # the last three: tinyllm.training.adapters

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scores:
    """Held-out answer-token loss and (for short factual answers) exact match of greedy answers."""

    answer_loss: float | None
    answers: dict | None  # evaluation.scoring.evaluate_answers(), None when turned off


def run_sft(model_args: SFTModelArguments, data: DataArguments, sft_args: SFTArguments, lora: LoraArguments,
            args: SFTTrainingArguments) -> Path:
    """The SFT stage, as a list of steps. Returns the output folder."""
    setup = prepare_run(args)
    model, tokenizer = load_base(model_args.model_name_or_path)
    sft = build_sft_datasets(data, sft_args, tokenizer, args.seed)
    logger.info(setup.device_line)
    logger.info("SFT data: %s", json.dumps(sft.stats))
    args.remove_unused_columns = False
    token_ids = chat_token_ids(tokenizer)
    if args.gradient_checkpointing and lora.use_lora:
        model.enable_input_require_grads()  # checkpointed blocks need a grad path through the frozen embeddings
    model = build_lora_model(model, lora, token_ids)
    counts = _log_trainable(model, lora)
    questions = sft.eval_conversations[: sft_args.answer_eval_examples]
    with without_adapter(model):
        before = _score(model, tokenizer, sft, questions, sft_args, args)
    _log_scores("before SFT", before)

    def reload():
        return build_lora_model(load_base(model_args.model_name_or_path)[0], lora, token_ids)

    trainer, result, seconds = _train(model, tokenizer, sft, args, setup.resume, reload)
    after_loss = final_evaluation(trainer).get("eval_loss") if sft.eval is not None else None
    after = Scores(after_loss, _answers(trainer.model, tokenizer, questions, sft_args))
    _log_scores("after SFT", after)
    metrics = {**result.metrics, "sft_runtime_s": round(seconds, 1), "eval_answer_loss_before": before.answer_loss,
               "eval_answer_loss": after.answer_loss, **counts, **sft.stats}
    if after.answers is not None:
        metrics.update({"exact_match_before": before.answers["exact_match"],
                        "exact_match": after.answers["exact_match"],
                        "stopped_rate_before": before.answers["stopped_rate"],
                        "stopped_rate": after.answers["stopped_rate"],
                        **{f"exact_match_{k}": v for k, v in after.answers["per_language"].items()}})
    if trainer.is_world_process_zero():
        summary = _summary(trainer, model_args, data, lora, metrics, after, seconds)
        _save_sft(trainer, tokenizer, sft, model_args, data, lora, args, metrics, after, summary)
        _announce(before, after, args, setup)
    trainer.accelerator.wait_for_everyone()
    return Path(args.output_dir)


def _answers(model, tokenizer, questions: list[list[dict]], sft_args: SFTArguments) -> dict | None:
    if not questions:
        return None
    return evaluate_answers(model, tokenizer, questions, sft_args.eval_max_new_tokens)


def _score(model, tokenizer, sft: SFTData, questions, sft_args: SFTArguments, args) -> Scores:
    loss = mean_token_loss(model, sft.eval, args.per_device_eval_batch_size, collate=SFTCollator(tokenizer)) \
        if sft.eval is not None else None
    return Scores(loss, _answers(model, tokenizer, questions, sft_args))


def _log_scores(when: str, s: Scores) -> None:
    loss = "n/a" if s.answer_loss is None else f"{s.answer_loss:.3f}"
    if s.answers is None:
        logger.info("%s: held-out answer-token loss %s", when, loss)
    else:
        logger.info("%s: held-out answer-token loss %s, exact match %.3f, stopped %.3f (%d questions)", when, loss,
                    s.answers["exact_match"], s.answers["stopped_rate"], s.answers["n"])


def _log_trainable(model, lora: LoraArguments) -> dict:
    if lora.use_lora:
        trainable, total = model.get_nb_trainable_parameters()
    else:
        trainable = total = model.num_parameters()
    logger.info("trainable parameters: %s of %s (%.2f%%)%s", f"{trainable:,}", f"{total:,}", 100 * trainable / total,
                " (LoRA)" if lora.use_lora else " (full fine-tuning)")
    return {"trainable_parameters": trainable, "total_parameters": total}


def _train(model, tokenizer, sft: SFTData, args, resume, reload_model):
    if sft.eval is None:
        args.eval_strategy = "no"
    interrupt = InterruptCallback()
    # --time_budget counts from the start of the command; the answers scored after training are kept room for
    budget = TimeBudget(args.time_budget_seconds, start=tinyllm.STARTED_AT, warmup_steps=args.warmup_steps) \
        if args.time_budget else None

    def make_trainer(m):
        return TinyTrainer(model=m, args=args, train_dataset=sft.train, eval_dataset=sft.eval,
                           data_collator=SFTCollator(tokenizer), processing_class=tokenizer,
                           callbacks=[DoctorCallback(args.learning_rate), interrupt]
                           + ([BudgetCallback(budget)] if budget else []), budget=budget)

    start = time.time()
    trainer, result = train_with_recovery(make_trainer, model, args, resume, interrupt, reload_model)
    return trainer, result, time.time() - start


def _announce(before: Scores, after: Scores, args, setup: RunSetup) -> None:
    out = Path(args.output_dir)
    if after.answer_loss is not None and before.answer_loss is not None:
        print(f"\nheld-out answer-token loss: {before.answer_loss:.3f} before -> {after.answer_loss:.3f} after SFT")
    if after.answers is not None:
        langs = "".join(f" ({k}: {v:.3f})" for k, v in after.answers["per_language"].items())
        print(f"exact match on {after.answers['n']} held-out questions: {before.answers['exact_match']:.3f} before "
              f"-> {after.answers['exact_match']:.3f} after SFT{langs}; answers that stop by themselves: "
              f"{after.answers['stopped_rate']:.0%} (exact match suits short factual answers)")
        for ex in after.answers["examples"][:4]:
            print(f"  Q: {ex['question']}\n  A: {ex['prediction']}   (expected: {ex['reference']})")
    announce_folder(out, args, setup)


def _summary(trainer, model_args: SFTModelArguments, data: DataArguments, lora: LoraArguments, metrics: dict,
             after: Scores, seconds: float) -> RunSummary:
    details = {"method": f"LoRA r={lora.lora_r}, alpha={lora.lora_alpha}" if lora.use_lora else "full fine-tuning",
               "trainable parameters": f"{metrics['trainable_parameters']:,} of {metrics['total_parameters']:,}",
               "SFT data": data.dataset_name, "training examples": metrics["train_examples"],
               "answer-token loss before": metrics["eval_answer_loss_before"], "hardware": hardware_summary()}
    if after.answers is not None:
        details["exact match before / after"] = f"{metrics['exact_match_before']:.3f} / {metrics['exact_match']:.3f}"
        details["answers that stop by themselves"] = f"{metrics['stopped_rate']:.0%}"
        for lang, value in after.answers["per_language"].items():
            details[f"exact match ({lang})"] = f"{value:.3f}"
    state = trainer.state
    return RunSummary(stage="sft", architecture=type(trainer.model.get_base_model() if hasattr(
                          trainer.model, "get_base_model") else trainer.model).__name__,
                      parameters=metrics["total_parameters"], steps=state.global_step,
                      training_seconds=round(seconds, 1), base_model=model_args.model_name_or_path,
                      tokens_seen=state.num_input_tokens_seen or None, final_train_loss=metrics.get("train_loss"),
                      validation_loss=metrics.get("eval_answer_loss"),
                      details={k: v for k, v in details.items() if v is not None})


def _save_sft(trainer, tokenizer, sft: SFTData, model_args: SFTModelArguments, data: DataArguments,
              lora: LoraArguments, args, metrics: dict, after: Scores, summary: RunSummary) -> None:
    import torch

    sample = torch.tensor([sft.train[0]["input_ids"][:64]], device=trainer.model.device)
    results = []
    if after.answers is not None:
        results.append({"dataset": data.dataset_name, "metric": "exact_match", "task_name": "held-out questions",
                        "metric_name": "exact match", "value": round(metrics["exact_match"], 4)})
    if metrics.get("eval_answer_loss") is not None:
        results.append({"dataset": data.dataset_name, "metric": "loss", "task_name": "held-out answers",
                        "metric_name": "answer-token loss", "value": round(metrics["eval_answer_loss"], 4)})
    info = TunedFolder(
        stage="sft", base_model=model_args.model_name_or_path, dataset=data.dataset_name,
        description=f"An instruction-tuned version of {model_args.model_name_or_path}, trained with LoRA on "
                    f"question-answer pairs and merged into plain transformers weights.",
        usage_prompt=sft.eval_conversations[0][-2]["content"] if sft.eval_conversations else "Hello!",
        summary=summary, metrics=metrics, eval_results=results,
        examples=after.answers["examples"] if after.answers else [], plot_title="SFT loss (answer tokens only)")
    save_tuned_folder(trainer, tokenizer, args, sample, lora.use_lora, info)
