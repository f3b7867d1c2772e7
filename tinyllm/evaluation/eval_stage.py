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

import json
import logging
import math
import random
from pathlib import Path

from tinyllm.errors import ConfigError, DataError, first_line

__all__ = ["mean_token_loss", "heldout_bits_per_byte", "builtin_cloze_items", "score_choices", "builtin_cloze",
           "run_eval", "BUILTIN_TASKS"]

logger = logging.getLogger(__name__)
BUILTIN_TASKS = ("bpb", "builtin_cloze", "sft")


def mean_token_loss(model, dataset, batch_size: int = 16) -> float:
    """Mean cross-entropy (nats) over the supervised tokens of packed blocks ({"input_ids", "labels"})."""
    import torch

    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with torch.inference_mode():
            for i in range(0, len(dataset), batch_size):
                rows = dataset[i: i + batch_size]
                ids = torch.as_tensor(rows["input_ids"], device=device)
                labels = torch.as_tensor(rows["labels"], device=device)
                logits = model(input_ids=ids).logits[:, :-1].float()
                target = labels[:, 1:]
                loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                         ignore_index=-100, reduction="sum")
                total += float(loss)
                count += int((target != -100).sum())
    finally:
        if was_training:
            model.train()
    return total / max(count, 1)


# ---------------------------------------------------------------- bits per byte

def _eval_data_args(args, run: dict):
    """DataArguments for the held-out text: the run's own corpus and split unless the command line says otherwise."""
    from tinyllm.config import DataArguments

    saved = dict(run.get("data") or {})
    fields = set(DataArguments.__dataclass_fields__)
    values = {k: v for k, v in saved.items() if k in fields}
    if args.dataset_name:
        values = {k: v for k, v in values.items() if k.startswith("builtin_")}
        values["dataset_name"] = args.dataset_name
    if "dataset_name" not in values:
        raise ConfigError(f"{args.model} does not say which corpus it was trained on; pass --dataset_name (a corpus "
                          f"name, a file or an HF dataset id) for bits per byte")
    for key in ("validation_split_name", "validation_split_percentage", "text_column", "block_size",
                "max_documents"):
        value = getattr(args, key)
        if value is not None:
            values[key] = value
    values["streaming"] = False
    return DataArguments(**values)


def heldout_bits_per_byte(model, tokenizer, data, seed: int, batch_size: int = 16) -> dict:
    """Loss, perplexity and bits per byte on the held-out documents (tinyllm.data.packing decides which, as in training)."""
    from tinyllm.data.packing import build_validation_set

    val = build_validation_set(data, tokenizer, seed)
    loss = mean_token_loss(model, val.blocks, batch_size)
    return {"loss": round(loss, 4), "perplexity": round(math.exp(min(loss, 50)), 3),
            "bits_per_byte": round(loss / math.log(2) * val.tokens_per_byte, 4),
            "documents": val.documents, "tokens": val.tokens}


# ---------------------------------------------------------------- built-in cloze

def builtin_cloze_items(language: str) -> list[dict]:
    """Four-way cloze questions about every (animal, food | home | sound) fact of the built-in world, phrased as
    the corpus's fact sheets phrase them; distractors are the same kind of fact about other animals."""
    from tinyllm.data.builtin import ANIMALS

    items = []
    rng = random.Random(f"cloze-{language}")
    animals = sorted(ANIMALS)
    for animal in animals:
        (sound, food, home), (zh, zsound, zfood, zhome) = ANIMALS[animal]
        for kind, k in (("food", 1), ("home", 2), ("sound", 0)):
            others = rng.sample([a for a in animals if a != animal], 3)
            if language == "en":
                prefix = {"food": f"A {animal} likes to eat", "home": f"A {animal} lives in the",
                          "sound": f"A {animal} says"}[kind]
                answer = ANIMALS[animal][0][k]
                wrong = [ANIMALS[o][0][k] for o in others]
                choices = [f" {w}." for w in [answer] + wrong]
            else:
                zk = {"food": 2, "home": 3, "sound": 1}[kind]
                prefix = {"food": f"{zh}喜欢吃", "home": f"{zh}住在", "sound": f"{zh}会说"}[kind]
                answer = ANIMALS[animal][1][zk]
                wrong = [ANIMALS[o][1][zk] for o in others]
                tail = "里。" if kind == "home" else "。"
                choices = [w + tail for w in [answer] + wrong]
            order = list(range(4))
            rng.shuffle(order)
            items.append({"context": prefix, "choices": [choices[i] for i in order], "label": order.index(0),
                          "animal": animal, "kind": kind, "language": language})
    return items


def score_choices(model, tokenizer, context: str, choices: list[str]) -> list[float]:
    """Sum of log-probabilities of each continuation after the context, split as lm-evaluation-harness splits
    them (encode context + continuation whole, the continuation is what follows the context's tokens), with bos
    first as in training."""
    import torch

    ctx = tokenizer(context)["input_ids"]
    rows = []
    for c in choices:
        whole = tokenizer(context + c)["input_ids"]
        rows.append(whole if whole[:len(ctx)] == ctx and len(whole) > len(ctx)
                    else ctx + tokenizer(c, add_special_tokens=False)["input_ids"])
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)
    with torch.inference_mode():
        logp = torch.log_softmax(model(input_ids=ids).logits.float(), dim=-1)
    scores = []
    for i, r in enumerate(rows):
        positions = range(len(ctx), len(r))
        scores.append(sum(float(logp[i, p - 1, r[p]]) for p in positions))
    return scores


def builtin_cloze(model, tokenizer) -> list[dict]:
    results = []
    for lang in ("en", "zh"):
        items = builtin_cloze_items(lang)
        correct = 0
        for item in items:
            scores = score_choices(model, tokenizer, item["context"], item["choices"])
            correct += int(max(range(4), key=scores.__getitem__) == item["label"])
        results.append({"task": f"builtin_cloze_{lang}", "metric": "accuracy", "value": round(correct / len(items), 4),
                        "chance": 0.25, "n": len(items)})
    return results


# ---------------------------------------------------------------- lm-evaluation-harness

def task_manager(tasks: list[str], include_path: str | None):
    """lm-evaluation-harness's TaskManager, after checking that every task name is known (before any work)."""
    from tinyllm.errors import suggest

    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ConfigError(f"unknown task '{tasks[0]}'{suggest(tasks[0], BUILTIN_TASKS)}: built-in tasks are "
                          f"{', '.join(BUILTIN_TASKS)}; lm-evaluation-harness tasks need pip install -e \".[eval]\"") \
            from None
    manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ConfigError(f"unknown task '{unknown[0]}'{suggest(unknown[0], list(BUILTIN_TASKS) + manager.all_tasks)}"
                          f"; use bpb, builtin_cloze, sft or an lm_eval task name (lm_eval ls tasks)")
    return manager


def lm_eval_tasks(model, tokenizer, tasks: list[str], manager, batch_size: int, limit: int | None) -> list[dict]:
    """Run lm-evaluation-harness tasks through its HF model class (HFLM) wrapped around the loaded model."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    # add_bos_token: tinyllm's models saw bos before every document in training, so score with it
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
              add_bos_token=tokenizer.bos_token_id is not None and tokenizer("x")["input_ids"][0] ==
              tokenizer.bos_token_id)
    try:
        out = lm_eval.simple_evaluate(model=lm, tasks=tasks, limit=limit, task_manager=manager, log_samples=False,
                                      bootstrap_iters=1000)
    except Exception as exc:  # datasets raises many types when a task's data cannot be fetched
        text = first_line(exc)
        if any(w in text.lower() for w in ("offline", "connection", "couldn't reach", "resolve", "not found",
                                           "doesn't exist", "cannot find")):
            raise DataError(f"the data of task {', '.join(tasks)} could not be loaded ({text}); lm_eval downloads it "
                            f"from the Hugging Face Hub: run once online, or use a local task (--include_path)") \
                from None
        raise
    results = []
    for task, metrics in (out or {}).get("results", {}).items():
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and "stderr" not in key and key != "alias":
                results.append({"task": task, "metric": key.split(",")[0], "value": round(float(value), 4),
                                "source": "lm-evaluation-harness"})
    return results


# ---------------------------------------------------------------- the command

def _tasks(args, is_chat: bool, has_run: bool) -> list[str]:
    if args.tasks in ("auto", ""):
        return (["bpb"] if has_run or args.dataset_name else []) + ["builtin_cloze"] + (["sft"] if is_chat else [])
    return [t.strip() for t in args.tasks.split(",") if t.strip()]


def _sft_metrics(model, tokenizer) -> list[dict]:
    from tinyllm.data.builtin import generate_qa
    from tinyllm.data.sft_data import load_qa_rows, row_to_messages
    from tinyllm.data.tokenizer_stage import language_of
    from tinyllm.training.sft import evaluate_answers

    convs = [row_to_messages(r, w) for w, r in load_qa_rows("builtin_qa", "test")]
    res = evaluate_answers(model, tokenizer, convs, 32)
    out = [{"task": "builtin_qa", "metric": "exact_match", "value": round(res["exact_match"], 4)},
           {"task": "builtin_qa", "metric": "stopped_rate", "value": round(res["stopped_rate"], 4)}]
    out += [{"task": f"builtin_qa_{k}", "metric": "exact_match", "value": round(v, 4)}
            for k, v in res["per_language"].items()]
    # the same held-out questions as the second turn, after an exchange in the other language
    firsts = {lang: [x for x in generate_qa()["train"] if x.get("language") == lang and "question" in x]
              for lang in ("en", "zh")}
    two = []
    for i, c in enumerate(convs):
        lang = language_of(c[-2]["content"])
        other = firsts["en" if lang == "zh" else "zh"]
        if other:
            first = other[i % len(other)]
            two.append([{"role": "user", "content": first["question"]},
                        {"role": "assistant", "content": first["answer"]}] + c[-2:])
    if two:
        res2 = evaluate_answers(model, tokenizer, two, 32)
        out.append({"task": "builtin_qa_after_other_language_turn", "metric": "exact_match",
                    "value": round(res2["exact_match"], 4)})
    return out


def run_eval(args) -> dict:
    from tinyllm.device import detect_device
    from tinyllm.evaluation.report import SUMMARY_FILE, render_report
    from tinyllm.inference.chat import is_chat_model
    from tinyllm.inference.generation import seed_everything
    from tinyllm.io import atomic_file
    from tinyllm.model_io import load_model_folder

    model, tokenizer = load_model_folder(args.model, device=args.device or detect_device())
    model.eval()
    seed_everything(args.seed)
    run_file = Path(args.model) / SUMMARY_FILE
    run = json.loads(run_file.read_text(encoding="utf-8")) if run_file.is_file() else {}
    chat = is_chat_model(model, tokenizer)
    tasks = _tasks(args, chat, bool(run.get("data")))
    results: list[dict] = []
    if "sft" in tasks and not chat:  # checked before any task runs, as unknown task names are
        raise ConfigError(f"task 'sft' needs a chat model (instruction-tuned with tinyllm sft); {args.model} "
                          f"is a base model")
    harness = [t for t in tasks if t not in BUILTIN_TASKS]
    manager = task_manager(harness, args.include_path) if harness else None
    for task in tasks:
        if task == "bpb":
            data = _eval_data_args(args, run)
            seed = run["seed"] if run.get("seed") is not None else args.seed  # the built-in corpus depends on it
            scores = heldout_bits_per_byte(model, tokenizer, data, seed, args.batch_size)
            for metric in ("bits_per_byte", "perplexity", "loss"):
                results.append({"task": f"heldout:{data.dataset_name}", "metric": metric, "value": scores[metric],
                                "n": scores["documents"]})
            print(f"held-out {data.dataset_name}: {scores['bits_per_byte']} bits per byte, perplexity "
                  f"{scores['perplexity']} ({scores['documents']} documents, {scores['tokens']:,} tokens)")
        elif task == "builtin_cloze":
            for r in builtin_cloze(model, tokenizer):
                results.append(r)
                print(f"{r['task']}: accuracy {r['value']:.3f} (chance {r['chance']:.2f}, {r['n']} questions)")
        elif task == "sft":
            for r in _sft_metrics(model, tokenizer):
                results.append(r)
                print(f"{r['task']}: {r['metric']} {r['value']:.3f}")
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
