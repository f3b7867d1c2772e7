"""`tinyllm pretrain`: corpus -> (tokenizer) -> packed blocks -> GPT-2/Llama on transformers.Trainer -> Hub folder.

From scratch (a preset) or continued from any causal LM folder (`--model_name_or_path`: its tokenizer and config
are kept, documents are packed with its eos, and bits per byte are reported before and after).

The stage is a list of steps; each returns what it produces (typed) and the next step takes it as an argument.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import tinyllm
from tinyllm.config import DataArguments, ModelArguments, TokenizerArguments
from tinyllm.data.builtin import corpus_entropy, generate_corpus, loss_floor
from tinyllm.data.corpora import describe_source, split_documents
from tinyllm.data.packing import LMData, build_lm_datasets
from tinyllm.data.tokenizer import check_pretraining_tokenizer, tokenizer_for_run
from tinyllm.device import compile_loader_settings
from tinyllm.evaluation.report import RunSummary, write_run_report
from tinyllm.evaluation.scoring import mean_token_loss
from tinyllm.hub import (
    CardInfo,
    hardware_summary,
    make_generation_config,
    plot_loss,
    push_folder,
    save_model_folder,
    write_model_card,
)
from tinyllm.io import staged_into
from tinyllm.model_io import load_model_folder, resolve_model_path
from tinyllm.modeling import build_config, check_vocab, resolve_block_size
from tinyllm.training.arguments import PretrainingArguments
from tinyllm.training.budget import BudgetCallback, TimeBudget
from tinyllm.training.callbacks import DoctorCallback, InterruptCallback, KeepBestCallback, SampleCallback, TinyTrainer
from tinyllm.training.estimate import estimate
from tinyllm.training.forecast import ForecastCallback
from tinyllm.training.recovery import (
    RunSetup,
    check_checkpoint_matches,
    final_evaluation,
    prepare_run,
    train_with_recovery,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["run_pretraining", "default_prompts", "entropy_floor"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Trained:
    """What the training step produces."""

    trainer: TinyTrainer
    metrics: dict
    seconds: float
    samples: list[str]  # from the final model
    doctor: list[str]  # the training doctor's messages
    prompts: list[str]
    forecast: dict | None = None  # --forecast: forecast.json's content


def run_pretraining(model_args: ModelArguments, data: DataArguments, tok_args: TokenizerArguments,
                    args: PretrainingArguments) -> Path:
    """The whole pretraining stage, as a list of steps. Returns the output folder."""
    budget = TimeBudget(args.time_budget_seconds, start=tinyllm.STARTED_AT, warmup_steps=args.warmup_steps) \
        if args.time_budget else None
    if model_args.model_name_or_path:  # continued pretraining: a local folder, or a Hub id downloaded once
        model_args.model_name_or_path = resolve_model_path(model_args.model_name_or_path)
    setup = prepare_run(args)
    tokenizer, tok_report = _prepare_tokenizer(model_args, data, tok_args, args)
    check_pretraining_tokenizer(tokenizer, from_scratch=not model_args.model_name_or_path)
    resolve_block_size(model_args, data)
    lm = _data(data, tokenizer, args)
    model = _load_model(model_args, tokenizer, data, args)
    plan = _log_plan(model, data, args, lm, setup.device_line)
    floor = entropy_floor(data, args.seed, lm.eval_documents)
    if floor is not None:
        logger.info("built-in corpus entropy floor: %.4f bits/char (no model can beat it)", floor)
    _prepare_output_dir(args, setup.resume)
    if setup.resume:
        check_checkpoint_matches(setup.resume, model)
    before = _before(model, lm, args) if model_args.model_name_or_path and not setup.resume else {}
    trained = _train(model, tokenizer, model_args, data, args, lm, plan, floor, setup.resume, budget)
    metrics = {"parameters": model.num_parameters(), **before, **trained.metrics}
    if trained.trainer.is_world_process_zero():
        summary = _summary(trained, model_args, data, plan, metrics)
        _save_final(trained, tokenizer, tok_report, model_args, data, args, lm, plan, floor, metrics, summary)
        _announce(args, trained.prompts, trained.samples, setup)
    trained.trainer.accelerator.wait_for_everyone()
    return Path(args.output_dir)


def default_prompts(data: DataArguments, sample_texts: list[str]) -> list[str]:
    if data.dataset_name == "builtin":
        langs = data.builtin_languages
        return [p for lang, p in (("en", "Once upon a time"), ("zh", "从前")) if lang in langs]
    prompts = []
    for t in sample_texts[:2]:
        t = t.strip()
        if t:
            prompts.append(t[: 12 if any(ord(c) > 0x2e80 for c in t[:12]) else 24])
    return prompts or ["The"]


def entropy_floor(data: DataArguments, seed: int, documents: int | None = None) -> float | None:
    """Bits per character of the built-in corpus's held-out documents under the true generator: the same held-out
    documents as evaluation scores (corpora.split_documents decides which; `documents`: the first that many, as
    --eval_max_tokens takes them)."""
    if data.dataset_name != "builtin" or not data.validation_split_percentage:
        return None
    docs = generate_corpus(data.builtin_num_documents, seed, data.builtin_languages)
    if data.max_documents:
        docs = docs[: data.max_documents]
    held = split_documents(docs, data.validation_split_percentage)[1]
    return corpus_entropy(held[:documents] if documents else held)["bits_per_char"]


def floor_nats_per_token(floor: float | None, lm: LMData) -> float | None:
    """The entropy floor (bits per character) as a held-out loss: nats per token of the held-out set."""
    return floor * math.log(2) / lm.eval_tokens_per_char if floor is not None and lm.eval_tokens_per_char else None


# ---------------------------------------------------------------- steps

def _prepare_tokenizer(model_args: ModelArguments, data: DataArguments, tok_args: TokenizerArguments,
                       args: PretrainingArguments) -> tuple[PreTrainedTokenizerBase, dict | None]:
    with args.main_process_first(local=False, desc="tokenizer"), args.main_process_first(local=True, desc="tokenizer"):
        return tokenizer_for_run(tok_args.tokenizer_name_or_path, model_args.model_name_or_path, data, tok_args,
                                 args.seed)


def _data(data: DataArguments, tokenizer, args) -> LMData:
    """The corpus's token shards (prepared once: by the first process, then found by the others on this machine
    and, on a shared filesystem, on the other machines) as training blocks and a held-out set."""
    with args.main_process_first(local=False, desc="preparing token shards"), \
            args.main_process_first(local=True, desc="preparing token shards"):
        return build_lm_datasets(data, tokenizer, args.seed)


def _load_model(model_args: ModelArguments, tokenizer, data: DataArguments, args) -> PreTrainedModel:
    import torch
    from transformers import AutoModelForCausalLM

    if model_args.model_name_or_path:
        model, _ = load_model_folder(model_args.model_name_or_path, tokenizer=False)
        check_vocab(tokenizer, model.config, model_args.model_name_or_path)
        return model
    config = build_config(model_args, len(tokenizer), data.block_size, tokenizer.bos_token_id,
                          tokenizer.eos_token_id, tokenizer.pad_token_id)
    check_vocab(tokenizer, config)
    torch.manual_seed(args.seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")


def _log_plan(model, data: DataArguments, args, lm: LMData, device_line: str) -> dict:
    plan = estimate(model.config, data, args, model.num_parameters(), model.num_parameters(exclude_embeddings=True),
                    lm.train_tokens, args.world_size)
    logger.info(device_line)
    logger.info("plan:\n%s", plan["text"])
    return plan


def _prepare_output_dir(args, resume: str | None) -> None:
    out = Path(args.output_dir)
    if args.overwrite_output_dir and resume is None and out.is_dir() and args.process_index == 0:
        shutil.rmtree(out)
    if args.process_index == 0:
        out.mkdir(parents=True, exist_ok=True)


def _before(model, lm: LMData, args) -> dict:
    """Continued pretraining: the validation loss and bits per byte of the model as it came."""
    if lm.eval is None:
        return {}
    loss = mean_token_loss(model, lm.eval, args.per_device_eval_batch_size)
    out = {"before_eval_loss": round(loss, 4)}
    if lm.eval_tokens_per_byte:
        out["before_eval_bits_per_byte"] = round(loss / math.log(2) * lm.eval_tokens_per_byte, 4)
    logger.info("before continued pretraining: validation loss %.4f, %s bits per byte", loss,
                out.get("before_eval_bits_per_byte"))
    return out


def _train(model, tokenizer, model_args: ModelArguments, data: DataArguments, args, lm: LMData, plan: dict,
           floor: float | None, resume: str | None, budget: TimeBudget | None = None) -> Trained:
    from transformers import default_data_collator

    prompts = [p for p in (args.sample_prompts or "").split("|") if p] or default_prompts(data, lm.eval_texts_sample)
    sampler = SampleCallback(tokenizer, prompts, args.sample_max_new_tokens, args.seed)
    doctor, interrupt = DoctorCallback(args.learning_rate), InterruptCallback()
    keeper = KeepBestCallback() if args.keep_best and lm.eval is not None else None
    if lm.eval is None:
        args.eval_strategy = "no"
    for key, value in compile_loader_settings(args, None if data.streaming else len(lm.train)).items():
        setattr(args, key, value)

    forecaster = None
    if args.forecast:
        if lm.eval is None or data.streaming:
            logger.warning("--forecast skipped: it needs a held-out set and a corpus read in any order (not "
                           "--streaming)")
        else:
            kwargs = args.lr_scheduler_kwargs or {}
            forecaster = ForecastCallback(budget, lm.train, lm.eval, plan["tokens_per_step"], lm.train_tokens,
                                          kwargs.get("min_lr_ratio", 0.0), args.seed, resume,
                                          loss_floor(floor_nats_per_token(floor, lm), data.block_size))

    def make_trainer(m):
        trainer = TinyTrainer(
            model=m, args=args, train_dataset=lm.train, eval_dataset=lm.eval, data_collator=default_data_collator,
            processing_class=tokenizer,
            callbacks=[sampler, doctor, interrupt] + ([keeper] if keeper else []) + (
                [BudgetCallback(budget, eval_sequences=len(lm.eval) if lm.eval is not None else 0)] if budget else []),
            tokens_per_step=plan["tokens_per_step"], eval_tokens_per_byte=lm.eval_tokens_per_byte,
            eval_tokens_per_char=lm.eval_tokens_per_char, entropy_floor=floor,
            optimizer_cls_and_kwargs=args.optimizer_factory(), budget=budget,
        )
        if forecaster:  # after the budget callback: a copy's steps are not counted as the run's
            forecaster.trainer, forecaster.keeper = trainer, keeper
            trainer.add_callback(forecaster)
        return trainer

    start = time.time()
    trainer, result = train_with_recovery(make_trainer, model, args, resume, interrupt,
                                          lambda: _load_model(model_args, tokenizer, data, args))
    seconds = time.time() - start
    metrics = dict(result.metrics)
    if lm.eval is not None:
        metrics.update(final_evaluation(trainer))
    if keeper and keeper.restore_if_better(trainer.model, metrics["eval_loss"], trainer.state.global_step):
        last = metrics["eval_loss"]
        trainer.remove_callback(keeper)  # the evaluation below measures what was kept, it is not a candidate
        metrics.update(trainer.evaluate())  # the weights put back, measured again
        metrics.update({"keep_best_step": keeper.best_step, "last_step_eval_loss": round(last, 4)})
        if keeper.best_copy:
            metrics["keep_best_copy"] = keeper.best_copy
        logger.info("--keep_best: the weights of %s (validation loss %.4f) replace the last ones (%.4f at step %d: "
                    "the held-out loss rose on the way)", keeper.best_copy or f"step {keeper.best_step}",
                    metrics["eval_loss"], last, trainer.state.global_step)
    if forecaster:
        metrics.update(forecaster.summary())
        if "forecast_eval_loss" in metrics and "eval_loss" in metrics:
            logger.info("forecast: %.4f predicted at step %d of %d, %.4f measured (%+.1f%%)",
                        metrics["forecast_eval_loss"], metrics["forecast_at_step"], trainer.state.global_step,
                        metrics["eval_loss"], 100 * (metrics["forecast_eval_loss"] / metrics["eval_loss"] - 1))
        if "forecast_revised_eval_loss" in metrics and "eval_loss" in metrics:
            logger.info("forecast revised at step %d: %.4f (%+.1f%%)", metrics["forecast_revised_at_step"],
                        metrics["forecast_revised_eval_loss"],
                        100 * (metrics["forecast_revised_eval_loss"] / metrics["eval_loss"] - 1))
    metrics["train_tokens"] = lm.train_tokens
    if floor is not None:
        metrics["entropy_floor_bits_per_char"] = round(floor, 4)
    if budget is not None:
        metrics.update({"time_budget_s": budget.seconds, "time_budget_steps": trainer.state.global_step,
                        "time_budget_used_s_at_train_end": round(time.time() - budget.start, 1)})
    samples = []
    if trainer.is_world_process_zero():
        last = sampler.history[-1] if sampler.history else None
        samples = last[1] if last and last[0] == trainer.state.global_step else sampler.samples(trainer.model)
    return Trained(trainer, metrics, seconds, samples, doctor.messages, prompts,
                   forecaster.data() if forecaster else None)


def _summary(trained: Trained, model_args: ModelArguments, data: DataArguments, plan: dict,
             m: dict) -> RunSummary:
    cfg, state = trained.trainer.model.config, trained.trainer.state
    details = {"preset": "continued" if model_args.model_name_or_path else model_args.preset,
               "layers / heads / width": f"{cfg.num_hidden_layers} / {cfg.num_attention_heads} / {cfg.hidden_size}",
               "context (block_size)": data.block_size, "vocab size": cfg.vocab_size,
               "corpus": describe_source(data.dataset_name), "training tokens (corpus)": m.get("train_tokens"),
               "validation perplexity": m.get("eval_perplexity"), "hardware": hardware_summary()}
    if "before_eval_bits_per_byte" in m:
        details["validation bits per byte before"] = m["before_eval_bits_per_byte"]
    if m.get("entropy_floor_bits_per_char") is not None:
        details["validation bits per char"] = m.get("eval_bits_per_char")
        details["corpus entropy floor (bits per char)"] = m["entropy_floor_bits_per_char"]
    if trained.doctor:
        details["training doctor"] = " / ".join(trained.doctor)
    return RunSummary(stage="pretrain", architecture=type(trained.trainer.model).__name__,
                      parameters=m["parameters"], steps=state.global_step, training_seconds=round(trained.seconds, 1),
                      base_model=model_args.model_name_or_path,
                      tokens_seen=plan["tokens_per_step"] * state.global_step, final_train_loss=m.get("train_loss"),
                      validation_loss=m.get("eval_loss"), validation_bits_per_byte=m.get("eval_bits_per_byte"),
                      details={k: v for k, v in details.items() if v is not None})


def _save_final(trained: Trained, tokenizer, tok_report: dict | None, model_args: ModelArguments,
                data: DataArguments, args, lm: LMData, plan: dict, floor: float | None, metrics: dict,
                summary: RunSummary) -> None:
    trainer, out = trained.trainer, Path(args.output_dir)
    model = trainer.model
    with staged_into(out) as staging:
        save_model_folder(model, tokenizer, make_generation_config(tokenizer, args), staging)
        if tok_report:
            (staging / "tokenizer_report.json").write_text(json.dumps(tok_report, indent=2, ensure_ascii=False)
                                                           + "\n")
        floor_nats = floor_nats_per_token(floor, lm)
        if trained.forecast is not None:
            (staging / "forecast.json").write_text(json.dumps(trained.forecast, indent=1) + "\n")
        if args.plot_loss:
            plot_loss(trainer.state.log_history, staging / "loss_curve.png", floor_nats,
                      f"{model.config.model_type} {model_args.preset} on {data.dataset_name}", trained.forecast)
        (staging / "samples.md").write_text("# Samples\n\n" + "\n\n".join(f"```\n{s}\n```" for s in trained.samples)
                                            + "\n", encoding="utf-8")
        card = CardInfo(
            name=args.hub_model_id or out.name, license=args.license, summary=summary.rows(),
            datasets=[data.dataset_name],
            title=f"tinyllm {model_args.preset} ({model.config.model_type}) on {data.dataset_name}",
            description=f"A {metrics['parameters'] / 1e6:.2f}M-parameter language model trained on "
                        f"{describe_source(data.dataset_name)}.",
            usage_prompt=trained.prompts[0], base_model=model_args.model_name_or_path,
            eval_results=_card_results(metrics, data.dataset_name))
        write_model_card(staging, card)
        write_run_report(staging, out, summary=summary, metrics=metrics, tok_report=tok_report,
                         samples=trained.samples, log_history=trainer.state.log_history,
                         tokens_per_step=plan["tokens_per_step"], data=dataclasses.asdict(data), seed=args.seed)
    trainer.save_metrics("all", {k: v for k, v in metrics.items() if v is not None})
    trainer.save_state()


def _card_results(m: dict, name: str) -> list[dict]:
    out = []
    if m.get("eval_bits_per_byte") is not None:
        out.append({"dataset": name, "metric": "bits_per_byte", "metric_name": "validation bits per byte",
                    "task_name": "language modeling", "value": m["eval_bits_per_byte"]})
    if m.get("eval_perplexity") is not None:
        out.append({"dataset": name, "metric": "perplexity", "metric_name": "validation perplexity",
                    "task_name": "language modeling", "value": m["eval_perplexity"]})
    return out


def _announce(args, prompts: list[str], samples: list[str], setup: RunSetup) -> None:
    out = Path(args.output_dir)
    print("\n".join(["", "Samples from the final model:"] + [f"  {s!r}" for s in samples]))
    print(f"\nModel saved to {out.resolve()}\n"
          f"  generate:  tinyllm generate --model {out} --prompt \"{prompts[0]}\"\n"
          f"  evaluate:  tinyllm eval --model {out}\n"
          f"  in Python: pipeline('text-generation', model='{out}')")
    if setup.push:
        print(f"Pushed to {push_folder(out, args.hub_model_id, args.hub_private_repo, setup.hub_token)}")
