"""`tinyllm eval` and report cards: bits per byte on the run's own held-out documents, built-in cloze tasks with
chance level, lm-evaluation-harness offline on a local task, results in eval_results.json, report.md and the model
card's model-index, `tinyllm report` across runs, and bad input."""

import json
import math

import pytest

from helpers import TINY_MODEL_ARGS, assert_user_error, run_inprocess


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tokenizer_dir):
    from tinyllm.cli import run

    out = tmp_path_factory.mktemp("eval") / "base"
    code = run("pretrain", [*TINY_MODEL_ARGS, "--dataset_name", "builtin", "--builtin_num_documents", "500",
                            "--tokenizer_name_or_path", str(tokenizer_dir), "--output_dir", str(out),
                            "--max_steps", "40", "--eval_steps", "20", "--learning_rate", "0.005"])
    assert code == 0
    return out


def test_eval_scores_the_runs_own_heldout_documents(run_dir, capsys):
    """bits per byte from `tinyllm eval` equals the run's final validation bits per byte: same documents, same
    packing, same formula (one split rule)."""
    code, out, err = run_inprocess(capsys, "eval", "--model", run_dir, "--tasks", "bpb")
    assert code == 0, err
    results = json.loads((run_dir / "eval_results.json").read_text())["results"]
    bpb = next(r["value"] for r in results if r["metric"] == "bits_per_byte")
    trained = json.loads((run_dir / "all_results.json").read_text())
    assert bpb == pytest.approx(trained["eval_bits_per_byte"], abs=2e-3)
    ppl = next(r["value"] for r in results if r["metric"] == "perplexity")
    assert ppl == pytest.approx(math.exp(trained["eval_loss"]), rel=1e-2)
    assert "bits per byte" in out


def test_a_named_corpus_is_read_in_the_models_own_blocks():
    """`tinyllm eval --dataset_name X` (the speedrun's eval stage) keeps the run's block size, else the model's
    context: the default 256 tokens would score a 128-token model on positions it never trained on (TinyStories:
    1.43 bits per byte against the run's own 1.39)."""
    from tinyllm.config import DataArguments
    from tinyllm.errors import ConfigError
    from tinyllm.evaluation.eval_stage import _eval_data_args
    from tinyllm.usage_config import EvalArguments

    args = EvalArguments(model="m")
    named = DataArguments(dataset_name="tinystories", block_size=None, validation_split_percentage=None,
                          document_separator=None)
    run = {"data": {"dataset_name": "tinystories", "block_size": 128, "document_separator": "eot"}}
    assert _eval_data_args(args, named, run, context=128).block_size == 128
    assert _eval_data_args(args, named, {}, context=128).block_size == 128  # no run record: the model's context
    assert _eval_data_args(args, named, {}, context=8192).block_size == 1024  # a long-context model: at most 1024
    with pytest.raises(ConfigError, match="exceeds the model's context"):
        _eval_data_args(args, DataArguments(dataset_name="tinystories", block_size=512), {}, context=128)


def test_builtin_cloze_is_well_formed_and_scored_by_likelihood():
    from tinyllm.data.builtin import ANIMALS
    from tinyllm.evaluation.tasks import builtin_cloze_items

    for lang in ("en", "zh"):
        items = builtin_cloze_items(lang)
        assert len(items) == 45  # 15 animals x (food, home, sound)
        assert all(len(set(i["choices"])) == 4 and 0 <= i["label"] < 4 for i in items)
        labels = [i["label"] for i in items]
        assert len(set(labels)) == 4  # the answer is not always in the same place
    # the labelled choice is this animal's own fact, and no distractor is
    kind_index = {"en": {"sound": 0, "food": 1, "home": 2}, "zh": {"sound": 1, "food": 2, "home": 3}}
    for lang, facts in (("en", 0), ("zh", 1)):
        for item in builtin_cloze_items(lang):
            truth = ANIMALS[item["animal"]][facts][kind_index[lang][item["kind"]]]
            stripped = [c.strip(" .。").removesuffix("里") for c in item["choices"]]
            assert stripped[item["label"]] == truth, item
            assert stripped.count(truth) == 1, item


def test_a_model_that_knows_the_facts_beats_chance_and_noise_does_not(bpe_tokenizer):
    """score_choices picks the continuation the model finds likely: an untrained model sits near chance; the same
    model after a few hundred steps on the fact sheets scores far above it."""
    import torch
    from transformers import AutoModelForCausalLM

    from tinyllm.config import ModelArguments
    from tinyllm.data.builtin import ANIMALS, fact_sentences
    from tinyllm.evaluation.tasks import builtin_cloze
    from tinyllm.modeling import build_config

    tok = bpe_tokenizer
    cfg = build_config(ModelArguments(n_layer=2, n_embd=64, n_head=2), len(tok), 64, tok.bos_token_id,
                       tok.eos_token_id, tok.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    untrained = {r["task"]: r["value"] for r in builtin_cloze(model, tok)}
    assert all(v < 0.5 for v in untrained.values()), untrained
    facts = [s for a in ANIMALS for lang in ("en", "zh") for s in fact_sentences(a, lang)]
    batch = tok(facts, padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    trained = {r["task"]: r["value"] for r in builtin_cloze(model, tok)}
    assert all(v >= 0.9 for v in trained.values()), trained


def test_eval_command_report_card_and_model_index(run_dir, capsys):
    code, out, err = run_inprocess(capsys, "eval", "--model", run_dir)
    assert code == 0, err
    assert "builtin_cloze_en: accuracy" in out and "chance 0.25" in out and "bits per byte" in out
    report = (run_dir / "report.md").read_text()
    assert "## Evaluation" in report and "builtin_cloze_zh" in report and "heldout:builtin" in report
    from huggingface_hub import ModelCard

    card = ModelCard.load(run_dir / "README.md")
    tasks = {r.task_name for r in card.data.eval_results}
    assert {"builtin_cloze_en", "builtin_cloze_zh", "heldout:builtin"} <= tasks


@pytest.mark.slow
def test_lm_eval_runs_offline_on_a_local_task(run_dir, tmp_path, capsys):
    """lm-evaluation-harness, through its own HF model class on our folder, on a task defined from a local JSONL
    file: no Hub. It scores the same cloze items as the built-in task and must agree with it exactly."""
    pytest.importorskip("lm_eval")
    from tinyllm.evaluation.tasks import builtin_cloze_items

    for lang in ("en", "zh"):
        rows = builtin_cloze_items(lang)
        (tmp_path / f"{lang}.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
        (tmp_path / f"local_cloze_{lang}.yaml").write_text(
            f"task: local_cloze_{lang}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
            f"    test: {tmp_path / f'{lang}.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
            "doc_to_text: '{{context}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: '{{label}}'\n"
            "target_delimiter: ''\nmetric_list:\n  - metric: acc\n")
    code, out, err = run_inprocess(capsys, "eval", "--model", run_dir, "--tasks",
                                   "builtin_cloze,local_cloze_en,local_cloze_zh", "--include_path", tmp_path,
                                   "--output", tmp_path / "res.json")
    assert code == 0, err
    res = {(r["task"], r["metric"]): r["value"] for r in json.loads((tmp_path / "res.json").read_text())["results"]}
    for lang in ("en", "zh"):
        assert res[(f"local_cloze_{lang}", "acc")] == pytest.approx(res[(f"builtin_cloze_{lang}", "accuracy")])


def test_report_compares_runs(run_dir, tmp_path, capsys):
    import shutil

    root = tmp_path / "runs"
    root.mkdir()
    for name in ("a", "b"):
        shutil.copytree(run_dir, root / name, ignore=shutil.ignore_patterns("checkpoint-*", "runs"))
    code, out, err = run_inprocess(capsys, "report", "--runs", root)
    assert code == 0, err
    table = (root / "comparison.md").read_text()
    assert "| a |" in table and "| b |" in table and "val bits/byte" in table
    assert (root / "comparison.png").stat().st_size > 1000


@pytest.mark.slow
def test_eval_bad_input(run_dir, tmp_path, capsys):
    (tmp_path / "not_a_model").mkdir()
    cases = [
        (["--model", tmp_path / "not_a_model"], "no config.json"),
        (["--model", tmp_path / "missing"], "not found"),
        (["--model", run_dir, "--tasks", "builtin_clozee"], "unknown task"),
        (["--model", run_dir, "--tasks", "bpb", "--validation_split_percentage", "0"], "no validation split"),
        (["--model", run_dir, "--tasks", "sft"], "needs a chat model"),
        (["--model", run_dir, "--tasks", "bpb", "--dataset_name", str(tmp_path / "none.txt")], "not found"),
    ]
    for argv, needle in cases:
        code, _, err = run_inprocess(capsys, "eval", *argv, "--output", tmp_path / "r.json")
        assert_user_error(code, err, needle)
    assert not (tmp_path / "r.json").exists()
    code, _, err = run_inprocess(capsys, "report", "--runs", tmp_path / "not_a_model")
    assert_user_error(code, err, "no run folders")


def test_eval_harness_task_without_its_data_offline(run_dir, tmp_path, capsys):
    pytest.importorskip("lm_eval")
    code, _, err = run_inprocess(capsys, "eval", "--model", run_dir, "--tasks", "arc_easy", "--output",
                                 tmp_path / "r.json")
    assert_user_error(code, err, "could not be loaded")  # offline: lm_eval cannot fetch the task's data
    assert not (tmp_path / "r.json").exists()
