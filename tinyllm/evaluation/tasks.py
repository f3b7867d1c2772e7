"""The tasks `tinyllm eval` runs besides bits per byte: built-in cloze questions about the built-in corpus's world
(English and Chinese, with chance level), the built-in QA for chat models, and any lm-evaluation-harness task."""

from __future__ import annotations

import random

from tinyllm.data.builtin import ANIMALS, generate_arithmetic, generate_qa
from tinyllm.data.sft_data import load_qa_rows, row_to_messages
from tinyllm.data.tokenizer import language_of
from tinyllm.errors import ConfigError, DataError, first_line, suggest
from tinyllm.evaluation.rewards import pass_at_k
from tinyllm.evaluation.scoring import evaluate_answers, score_choices

__all__ = ["BUILTIN_TASKS", "builtin_cloze_items", "builtin_cloze", "sft_metrics", "arithmetic_metrics", "task_manager",
           "lm_eval_tasks"]

BUILTIN_TASKS = ("bpb", "builtin_cloze", "sft", "builtin_arithmetic")


# ---------------------------------------------------------------- built-in cloze

def builtin_cloze_items(language: str) -> list[dict]:
    """Four-way cloze questions about every (animal, food | home | sound) fact of the built-in world, phrased as
    the corpus's fact sheets phrase them; distractors are the same kind of fact about other animals."""

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


# ---------------------------------------------------------------- built-in QA (chat models)

def sft_metrics(model, tokenizer) -> list[dict]:

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


def arithmetic_metrics(model, tokenizer, k: int = 1, temperature: float = 1.0, seed: int = 0) -> list[dict]:
    """pass@1 (greedy) on every held-out problem of the built-in arithmetic task (and pass@k, k answers sampled
    at `temperature`, when k > 1), overall and per language of the question."""
    rows = generate_arithmetic()["test"]
    out = []
    for lang in (None, "en", "zh"):
        sub = [r for r in rows if lang is None or r["language"] == lang]
        res = pass_at_k(model, tokenizer, [[{"role": "user", "content": r["question"]}] for r in sub],
                        [r["answer"] for r in sub], k=k, temperature=temperature, seed=seed)
        name = "builtin_arithmetic" + (f"_{lang}" if lang else "")
        out.append({"task": name, "metric": "pass@1", "value": round(res["pass@1"], 4), "n": res["n"]})
        if k > 1:
            out.append({"task": name, "metric": f"pass@{k}", "value": round(res[f"pass@{k}"], 4), "n": res["n"],
                        "temperature": temperature})
    return out


# ---------------------------------------------------------------- lm-evaluation-harness

def task_manager(tasks: list[str], include_path: str | None):
    """lm-evaluation-harness's TaskManager, after checking that every task name is known (before any work)."""

    try:
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise ConfigError(f"unknown task '{tasks[0]}'{suggest(tasks[0], BUILTIN_TASKS)}: built-in tasks are "
                          f"{', '.join(BUILTIN_TASKS)}; lm-evaluation-harness tasks need pip install -e \".[eval]\"") \
            from exc
    manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ConfigError(f"unknown task '{unknown[0]}'{suggest(unknown[0], list(BUILTIN_TASKS) + manager.all_tasks)}"
                          f"; use bpb, builtin_cloze, sft, builtin_arithmetic or an lm_eval task name "
                          f"(lm_eval ls tasks)")
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
                from exc
        raise
    results = []
    out = out or {}
    for task, metrics in out.get("results", {}).items():
        # the task's metrics are the names in higher_is_better; the rest (sample_len, alias, stderr) describe the run
        names = set((out.get("higher_is_better") or {}).get(task) or ())
        for key, value in metrics.items():
            metric = key.split(",")[0]
            known = metric in names if names else metric not in ("sample_len", "sample_count", "alias")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and known and "stderr" not in key:
                results.append({"task": task, "metric": metric, "value": round(float(value), 4),
                                "source": "lm-evaluation-harness"})
    return results

