"""What the post-training stages (SFT, DPO, GRPO) share around their trainers: tinyllm's progress, doctor and
interrupt callbacks on TRL's trainers, and the saved chat folder (merged weights + adapter + cards), announced and
pushed the same way.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from tinyllm.evaluation.report import RunSummary, write_run_report
from tinyllm.hub import CardInfo, make_generation_config, plot_loss, push_folder, save_model_folder, write_model_card
from tinyllm.inference.chat import chat_eos_ids
from tinyllm.io import staged_into
from tinyllm.training.adapters import merge_adapter
from tinyllm.training.callbacks import DoctorCallback, InterruptCallback, ProgressLogger

__all__ = ["use_tinyllm_callbacks", "TunedFolder", "save_tuned_folder", "announce_folder", "trainable_counts"]

logger = logging.getLogger(__name__)


def use_tinyllm_callbacks(trainer, learning_rate: float, interrupt: InterruptCallback, doctor: bool = True):
    """TRL trainers report progress with transformers' bar; use tinyllm's (ETA, plain lines in a log file), the
    training doctor (NaN stops) and the Ctrl+C/SIGTERM checkpoint instead."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(ProgressLogger())
    if doctor:
        trainer.add_callback(DoctorCallback(learning_rate))
    trainer.add_callback(interrupt)
    return trainer


def trainable_counts(model) -> dict:
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
    else:
        trainable = total = model.num_parameters()
    logger.info("trainable parameters: %s of %s (%.2f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)
    return {"trainable_parameters": trainable, "total_parameters": total}


@dataclass
class TunedFolder:
    """What goes into the saved folder besides the weights."""

    stage: str  # dpo, grpo
    base_model: str
    dataset: str
    description: str
    usage_prompt: str
    summary: RunSummary
    metrics: dict
    eval_results: list[dict]
    examples: list[dict]
    plot_title: str


def save_tuned_folder(trainer, tokenizer, args, sample_ids, use_lora: bool, info: TunedFolder) -> Path:
    """Merged model (checked against the adapter's logits) + adapter + generation config (stops at the template's
    end of turn) + model card + report card, written to a staging folder and renamed into args.output_dir."""
    out = Path(args.output_dir)
    model = trainer.model
    with staged_into(out) as staging:
        if use_lora:
            merged, info.metrics["merge_max_abs_logit_diff"] = merge_adapter(model, sample_ids, staging, tokenizer)
        else:
            merged = model
        gen = make_generation_config(tokenizer, args, eos_ids=chat_eos_ids(tokenizer, merged))
        save_model_folder(merged, tokenizer, gen, staging)
        if args.plot_loss:
            plot_loss(trainer.state.log_history, staging / "loss_curve.png", title=info.plot_title)
        (staging / f"{info.stage}_eval_examples.json").write_text(
            json.dumps(info.examples, indent=2, ensure_ascii=False))
        card = CardInfo(name=args.hub_model_id or out.name, title=f"tinyllm chat model ({out.name})",
                        datasets=[info.dataset], license=args.license, summary=info.summary.rows(), chat=True,
                        description=info.description, usage_prompt=info.usage_prompt, base_model=info.base_model,
                        eval_results=info.eval_results)
        write_model_card(staging, card)
        write_run_report(staging, out, summary=info.summary, metrics=info.metrics,
                         samples=[f"Q: {e['question']}\nA: {e['prediction']}" for e in info.examples[:4]],
                         log_history=trainer.state.log_history)
    trainer.save_metrics("all", {k: v for k, v in info.metrics.items() if v is not None and isinstance(
        v, (int, float, str)) and not (isinstance(v, float) and math.isnan(v))})
    trainer.save_state()
    return out


def announce_folder(out: Path, args, setup) -> None:
    """Where the chat model went and how to use it; the push to the Hub when asked (setup: recovery.RunSetup)."""
    print(f"\nChat model saved to {out.resolve()} (adapter in {out / 'adapter'})\n"
          f"  chat:      tinyllm chat --model {out}\n"
          f"  in Python: pipeline('text-generation', model='{out}')([{{'role': 'user', 'content': '...'}}])")
    if setup.push:
        print(f"Pushed to {push_folder(out, args.hub_model_id, args.hub_private_repo, setup.hub_token)}")
