"""Preference tuning (DPO) of a chat model through TRL's DPOTrainer, LoRA by default, then a merged Hub folder.

    tinyllm dpo --model_name_or_path outputs/sft_quickstart --output_dir outputs/dpo_quickstart

Output layout as SFT's: D/adapter/ (peft) and D/ (merged, plain transformers). With LoRA the reference model is
the same weights with the adapter switched off (TRL does this when given a peft_config): no second copy. Pairs are
tokenized by tinyllm's chat encoding (tinyllm.data.preference_data) and handed to TRL already tokenized.

Measured before and after: greedy answers to the held-out questions (exact match, per language, stop rate) and
the bits per byte of the held-out chosen answers (DPO can lower the likelihood of the very answers it prefers;
that is reported, not hidden); after: TRL's reward accuracy and margin on the held-out pairs.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

from trl import DPOTrainer

from tinyllm.config import DataArguments, LoraArguments
from tinyllm.data.preference_data import PreferenceData, build_preference_datasets
from tinyllm.data.sft_data import SFTCollator
from tinyllm.evaluation.report import RunSummary
from tinyllm.evaluation.scoring import evaluate_answers, mean_token_loss
from tinyllm.hub import hardware_summary
from tinyllm.model_io import load_model_folder, resolve_model_path
from tinyllm.post_training_config import PostTrainingModelArguments, PreferenceArguments
from tinyllm.training.adapters import load_chat_model, lora_config
from tinyllm.training.callbacks import InterruptCallback
from tinyllm.training.posttrain import (
    TunedFolder,
    announce_folder,
    save_tuned_folder,
    trainable_counts,
    use_tinyllm_callbacks,
)
from tinyllm.training.recovery import prepare_run, train_with_recovery

if TYPE_CHECKING:
    from tinyllm.training.trl_arguments import DPOTrainingArguments

__all__ = ["run_dpo", "PretokenizedDPOTrainer", "chosen_bits_per_byte"]

logger = logging.getLogger(__name__)


class PretokenizedDPOTrainer(DPOTrainer):
    """DPOTrainer on pairs tinyllm has already tokenized (prompt_ids / chosen_ids / rejected_ids): TRL's own
    tokenization renders content through apply_chat_template, where user text could become control tokens."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        missing = {"prompt_ids", "chosen_ids", "rejected_ids"} - set(dataset.column_names)
        if missing:
            raise ValueError(f"{dataset_name} pairs are not tokenized (missing {sorted(missing)})")
        return dataset


def chosen_bits_per_byte(model, tokenizer, dataset, batch_size: int = 16) -> float | None:
    """Bits per UTF-8 byte of the chosen answers (end-of-turn included) after their prompts."""
    if dataset is None or len(dataset) == 0:
        return None
    import datasets

    rows = [{"input_ids": r["prompt_ids"] + r["chosen_ids"],
             "labels": [-100] * len(r["prompt_ids"]) + r["chosen_ids"]} for r in dataset]
    nats = mean_token_loss(model, datasets.Dataset.from_list(rows), batch_size, collate=SFTCollator(tokenizer))
    tokens = sum(len(r["chosen_ids"]) for r in dataset)
    nbytes = sum(len(tokenizer.decode(r["chosen_ids"]).encode("utf-8")) for r in dataset)
    return nats * tokens / math.log(2) / max(nbytes, 1)


def _scores(model, tokenizer, pref: PreferenceData, questions, opts: PreferenceArguments, batch: int) -> dict:
    out = {"chosen_bits_per_byte": chosen_bits_per_byte(model, tokenizer, pref.eval, batch)}
    if questions:
        out["answers"] = evaluate_answers(model, tokenizer, questions, opts.eval_max_new_tokens)
    return out


def _log_scores(when: str, s: dict) -> None:
    bpb = s.get("chosen_bits_per_byte")
    line = f"{when}: held-out chosen answers {bpb:.3f} bits/byte" if bpb is not None else f"{when}:"
    if "answers" in s:
        a = s["answers"]
        langs = "".join(f", {k} {v:.3f}" for k, v in a["per_language"].items())
        line += f"; exact match {a['exact_match']:.3f}{langs}; stopped {a['stopped_rate']:.0%} ({a['n']} questions)"
    logger.info(line)


def run_dpo(model_args: PostTrainingModelArguments, data: DataArguments, opts: PreferenceArguments,
            lora: LoraArguments, args: DPOTrainingArguments) -> Path:
    """The DPO stage, as a list of steps. Returns the output folder."""
    setup = prepare_run(args)
    model, tokenizer = load_chat_model(model_args.model_name_or_path, "dpo")
    pref = build_preference_datasets(data, opts, tokenizer, args.max_length, args.seed)
    logger.info(setup.device_line)
    logger.info("DPO pairs: %s", json.dumps(pref.stats))
    args.remove_unused_columns = False
    args.max_length = None  # pairs over max_length were dropped already (and counted); never cut one in half
    questions = pref.questions[: opts.answer_eval_examples]
    before = _scores(model, tokenizer, pref, questions, opts, args.per_device_eval_batch_size)
    _log_scores("before DPO", before)
    if pref.eval is None:
        args.eval_strategy = "no"
    interrupt = InterruptCallback()
    peft_config = lora_config(model, lora) if lora.use_lora else None

    def make_trainer(m):
        # full fine-tuning needs a frozen reference copy; with LoRA the reference is the adapter switched off
        ref = None if lora.use_lora else load_model_folder(resolve_model_path(model_args.model_name_or_path))[0]
        trainer = PretokenizedDPOTrainer(model=m, ref_model=ref, args=args, train_dataset=pref.train,
                                         eval_dataset=pref.eval, processing_class=tokenizer, peft_config=peft_config)
        return use_tinyllm_callbacks(trainer, args.learning_rate, interrupt, doctor=False)

    start = time.time()
    trainer, result = train_with_recovery(make_trainer, model, args, setup.resume, interrupt,
                                          lambda: load_chat_model(model_args.model_name_or_path, "dpo")[0])
    seconds = time.time() - start
    rewards = {k.replace("eval_", ""): v for k, v in trainer.evaluate().items() if k.startswith("eval_rewards")} \
        if pref.eval is not None else {}
    after = _scores(trainer.model, tokenizer, pref, questions, opts, args.per_device_eval_batch_size)
    _log_scores("after DPO", after)
    metrics = {**result.metrics, "dpo_runtime_s": round(seconds, 1), **pref.stats, **trainable_counts(trainer.model),
               "chosen_bits_per_byte_before": before["chosen_bits_per_byte"],
               "chosen_bits_per_byte": after["chosen_bits_per_byte"],
               "reward_accuracy": rewards.get("rewards/accuracies"), "reward_margin": rewards.get("rewards/margins")}
    if "answers" in after:
        a, b = after["answers"], before["answers"]
        metrics.update({"exact_match_before": b["exact_match"], "exact_match": a["exact_match"],
                        "stopped_rate_before": b["stopped_rate"], "stopped_rate": a["stopped_rate"],
                        "languages": ",".join(sorted(set(a["per_language"]) & set(b["per_language"]))),
                        **{f"exact_match_{k}_before": v for k, v in b["per_language"].items()},
                        **{f"exact_match_{k}": v for k, v in a["per_language"].items()}})
    if trainer.is_world_process_zero():
        sample = _sample_ids(pref, trainer.model.device)
        info = TunedFolder(
            stage="dpo", base_model=model_args.model_name_or_path, dataset=data.dataset_name,
            description=f"A preference-tuned version of {model_args.model_name_or_path}: DPO (TRL) with "
                        f"{'LoRA' if lora.use_lora else 'full fine-tuning'} on chosen/rejected answer pairs, merged "
                        f"into plain transformers weights.",
            usage_prompt=questions[0][-2]["content"] if questions else "Hello!",
            summary=_summary(trainer, model_args, data, lora, args, metrics, seconds), metrics=metrics,
            eval_results=_eval_results(data, metrics), examples=after.get("answers", {}).get("examples", []),
            plot_title="DPO loss")
        out = save_tuned_folder(trainer, tokenizer, args, sample, lora.use_lora, info)
        _announce(before, after, metrics)
        announce_folder(out, args, setup)
    trainer.accelerator.wait_for_everyone()
    return Path(args.output_dir)


def _sample_ids(pref: PreferenceData, device):
    import torch

    row = pref.train[0]
    return torch.tensor([(row["prompt_ids"] + row["chosen_ids"])[:64]], device=device)


def _eval_results(data: DataArguments, metrics: dict) -> list[dict]:
    out = []
    if metrics.get("exact_match") is not None:
        out.append({"dataset": data.dataset_name, "metric": "exact_match", "task_name": "held-out questions",
                    "metric_name": "exact match", "value": round(metrics["exact_match"], 4)})
    if metrics.get("reward_accuracy") is not None:
        out.append({"dataset": data.dataset_name, "metric": "accuracy", "task_name": "held-out preference pairs",
                    "metric_name": "reward accuracy", "value": round(metrics["reward_accuracy"], 4)})
    return out


def _summary(trainer, model_args, data, lora: LoraArguments, args, metrics: dict, seconds: float) -> RunSummary:
    details = {"method": f"DPO (beta={args.beta}), " + (f"LoRA r={lora.lora_r}, alpha={lora.lora_alpha}"
                                                        if lora.use_lora else "full fine-tuning"),
               "trainable parameters": f"{metrics['trainable_parameters']:,} of {metrics['total_parameters']:,}",
               "preference data": data.dataset_name, "training pairs": metrics["train_pairs"],
               "hardware": hardware_summary()}
    for key, label in (("reward_accuracy", "reward accuracy (held-out pairs)"),
                       ("reward_margin", "reward margin (held-out pairs)")):
        if metrics.get(key) is not None:
            details[label] = f"{metrics[key]:.3f}"
    if metrics.get("exact_match") is not None:
        details["exact match before / after"] = f"{metrics['exact_match_before']:.3f} / {metrics['exact_match']:.3f}"
        for lang in filter(None, metrics.get("languages", "").split(",")):
            details[f"exact match ({lang}) before / after"] = \
                f"{metrics[f'exact_match_{lang}_before']:.3f} / {metrics[f'exact_match_{lang}']:.3f}"
    if metrics.get("chosen_bits_per_byte") is not None:
        details["chosen answers bits/byte before / after"] = \
            f"{metrics['chosen_bits_per_byte_before']:.3f} / {metrics['chosen_bits_per_byte']:.3f}"
    base = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    return RunSummary(stage="dpo", architecture=type(base).__name__, parameters=metrics["total_parameters"],
                      steps=trainer.state.global_step, training_seconds=round(seconds, 1),
                      base_model=model_args.model_name_or_path, final_train_loss=metrics.get("train_loss"),
                      details=details)


def _announce(before: dict, after: dict, metrics: dict) -> None:
    if metrics.get("reward_accuracy") is not None:
        print(f"\nheld-out preference pairs: reward accuracy {metrics['reward_accuracy']:.3f}, margin "
              f"{metrics['reward_margin']:.3f}")
    if before.get("chosen_bits_per_byte") is not None:
        b, a = before["chosen_bits_per_byte"], after["chosen_bits_per_byte"]
        note = " (higher: DPO made the preferred answers less likely; see README)" if a > b * 1.02 else ""
        print(f"held-out chosen answers: {b:.3f} -> {a:.3f} bits per byte{note}")
    if "answers" in after:
        b, a = before["answers"], after["answers"]
        langs = "".join(f" ({k}: {b['per_language'].get(k, 0):.3f} -> {v:.3f})" for k, v in a["per_language"].items())
        print(f"exact match on {a['n']} held-out questions: {b['exact_match']:.3f} before -> {a['exact_match']:.3f} "
              f"after DPO{langs}; answers that stop: {b['stopped_rate']:.0%} -> {a['stopped_rate']:.0%}")
        for ex in a["examples"][:4]:
            print(f"  Q: {ex['question']}\n  A: {ex['prediction']}   (expected: {ex['reference']})")
