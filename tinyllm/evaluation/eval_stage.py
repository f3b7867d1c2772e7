"""`tinyllm eval`: how good is a saved model?

- bits per byte (the headline: it compares models with different tokenizers) and perplexity on held-out text —
  by default the run's own validation documents, chosen by the same split rule training used;
- built-in tasks that need no download: multiple-choice cloze questions about the built-in corpus's world
  ("A bear likes to eat ..." with four choices, English and Chinese), scored by log-likelihood, with chance level;
- for chat models, the SFT metrics (exact match on held-out questions, share of answers that stop);
- any lm-evaluation-harness task (hellaswag, arc_easy, piqa, lambada_openai, ... or a local task YAML) through its
  own HF model class on the loaded folder (`pip install -e ".[eval]"`).

Results go to MODEL/eval_results.json, the run's report.md, and the model card's model-index metadata.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from tinyllm.config import DataArguments
from tinyllm.device import detect_device
from tinyllm.errors import ConfigError
from tinyllm.evaluation.report import SUMMARY_FILE, render_report
from tinyllm.evaluation.scoring import heldout_bits_per_byte
from tinyllm.evaluation.tasks import (
    BUILTIN_TASKS,
    arithmetic_metrics,
    builtin_cloze,
    lm_eval_tasks,
    sft_metrics,
    task_manager,
)
from tinyllm.inference.chat import is_chat_model
from tinyllm.inference.generation import seed_everything
from tinyllm.io import atomic_file
from tinyllm.model_io import context_length, load_model_folder
from tinyllm.usage_config import EvalArguments

__all__ = ["run_eval"]


def _eval_data_args(args: EvalArguments, data: DataArguments, run: dict, context: int | None = None) -> DataArguments:
    """The held-out text: the run's own corpus and split (recorded in run_summary.json) unless the command line
    names others. `data` holds only what was given: eval's dataset defaults are None (cli.COMMANDS). The blocks are
    the model's own (the run's block_size, else its `context`), whatever the corpus: positions a model never
    trained on (a 128-token model read in 256-token blocks) would count against it."""
    saved = dict(run.get("data") or {})
    fields = {f.name for f in dataclasses.fields(DataArguments)}
    values = {k: v for k, v in saved.items() if k in fields}
    if data.dataset_name:
        values = {k: v for k, v in values.items() if k.startswith("builtin_") or k == "block_size"}
        values.update(dataset_name=data.dataset_name, dataset_config_name=data.dataset_config_name,
                      dataset_split=data.dataset_split, cache_dir=data.cache_dir)
    if not values.get("dataset_name"):
        raise ConfigError(f"{args.model} does not say which corpus it was trained on; pass --dataset_name (a corpus "
                          f"name, a file or an HF dataset id) for bits per byte")
    for key in ("validation_split_name", "validation_split_percentage", "text_column", "block_size",
                "max_documents", "eval_max_tokens", "document_separator"):
        value = getattr(data, key)
        if value is not None:
            values[key] = value
    if context and values.get("block_size") is None:
        values["block_size"] = min(context, 1024)
    elif context and values["block_size"] > context:
        raise ConfigError(f"block_size {values['block_size']} exceeds the model's context of {context}; lower "
                          f"--block_size")
    values["streaming"] = False
    return DataArguments(**values)


def _tasks(args: EvalArguments, data: DataArguments, is_chat: bool, has_run: bool) -> list[str]:
    if args.tasks in ("auto", ""):
        return (["bpb"] if has_run or data.dataset_name else []) + ["builtin_cloze"] + (["sft"] if is_chat else [])
    return [t.strip() for t in args.tasks.split(",") if t.strip()]



def run_eval(args: EvalArguments, data: DataArguments) -> dict:
    model, tokenizer = load_model_folder(args.model, device=args.device or detect_device())
    model.eval()
    seed_everything(args.seed)
    run_file = Path(args.model) / SUMMARY_FILE
    run = json.loads(run_file.read_text(encoding="utf-8")) if run_file.is_file() else {}
    chat = is_chat_model(model, tokenizer)
    tasks = _tasks(args, data, chat, bool(run.get("data")))
    results: list[dict] = []
    for needs_chat in ("sft", "builtin_arithmetic"):  # checked before any task runs, as unknown task names are
        if needs_chat in tasks and not chat:
            raise ConfigError(f"task '{needs_chat}' needs a chat model (instruction-tuned with tinyllm sft); "
                              f"{args.model} is a base model")
    harness = [t for t in tasks if t not in BUILTIN_TASKS]
    manager = task_manager(harness, args.include_path) if harness else None
    for task in tasks:
        if task == "bpb":
            held = _eval_data_args(args, data, run, context_length(model.config))
            seed = run["seed"] if run.get("seed") is not None else args.seed  # the built-in corpus depends on it
            scores = heldout_bits_per_byte(model, tokenizer, held, seed, args.batch_size)
            for metric in ("bits_per_byte", "perplexity", "loss"):
                results.append({"task": f"heldout:{held.dataset_name}", "metric": metric, "value": scores[metric],
                                "n": scores["documents"]})
            print(f"held-out {held.dataset_name}: {scores['bits_per_byte']} bits per byte, perplexity "
                  f"{scores['perplexity']} ({scores['documents']} documents, {scores['tokens']:,} tokens)")
        elif task == "builtin_cloze":
            for r in builtin_cloze(model, tokenizer):
                results.append(r)
                print(f"{r['task']}: accuracy {r['value']:.3f} (chance {r['chance']:.2f}, {r['n']} questions)")
        elif task == "sft":
            for r in sft_metrics(model, tokenizer):
                results.append(r)
                print(f"{r['task']}: {r['metric']} {r['value']:.3f}")
        elif task == "builtin_arithmetic":
            for r in arithmetic_metrics(model, tokenizer, args.pass_k, args.pass_k_temperature, args.seed):
                results.append(r)
                print(f"{r['task']}: {r['metric']} {r['value']:.3f} ({r['n']} held-out problems)")
    if harness:
        for r in lm_eval_tasks(model, tokenizer, harness, manager, args.batch_size, args.limit):
            results.append(r)
            print(f"{r['task']}: {r['metric']} {r['value']:.4f} (lm-evaluation-harness)")
    report = {"model": str(args.model), "tasks": tasks, "results": results}
    out = Path(args.output) if args.output else Path(args.model) / "eval_results.json"
    with atomic_file(out, overwrite=True) as tmp:
        tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if not args.output:
        render_report(Path(args.model))
        _update_card(Path(args.model), results)
    print(f"Results written to {out}")
    return report


def _update_card(folder: Path, results: list[dict]) -> None:
    """Put the eval results into the model card's model-index metadata (huggingface_hub's ModelCard API)."""
    from huggingface_hub import EvalResult, ModelCard

    card_path = folder / "README.md"
    if not card_path.is_file():
        return
    card = ModelCard.load(card_path)
    name = card.data.model_name or folder.name
    card.data.model_name = name
    card.data.eval_results = [EvalResult(task_type="text-generation", task_name=r["task"], dataset_type=r["task"],
                                         dataset_name=r["task"], metric_type=r["metric"], metric_value=r["value"])
                              for r in results]
    card.save(card_path)

