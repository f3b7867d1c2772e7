"""`tinyllm speedrun`: the sizing rule on its own, bad input as one line, a dry run, and a tiny budget end to end
(interrupted during pretraining, then resumed by the same command)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import REPO, assert_user_error, run_cli, run_inprocess
from tinyllm.training import sizing
from tinyllm.training.sizing import Shape, choose, effective_tokens

SMALL, BIG = Shape(2, 2, 64), Shape(6, 6, 192)


def test_more_time_buys_a_bigger_model():
    speeds = {SMALL: 40_000.0, Shape(4, 4, 128): 15_000.0, BIG: 5_000.0}
    short = choose(speeds, 20, unique_tokens=None)
    long = choose(speeds, 20_000, unique_tokens=None)
    assert short.shape.n_embd < long.shape.n_embd
    assert long.tokens == pytest.approx(speeds[long.shape] * 20_000)
    assert long.steps * long.tokens_per_step <= long.tokens
    assert any("learning rate" in r for r in long.reasons) and any("shape" in r for r in long.reasons)


def test_the_shape_is_the_one_closest_to_the_measured_tokens_per_parameter():
    # the 2-minute Tiny Shakespeare plan measured on this CPU: 2x64 would see ~70 tokens per parameter, 3x96 ~10,
    # 4x128 ~2; 3x96 won there (2.43 against 2.51 bits per byte for 2x64)
    speeds = {SMALL: 73_553.0, Shape(3, 3, 96): 31_955.0, Shape(4, 4, 128): 15_526.0, BIG: 5_020.0}
    choice = choose(speeds, 100, unique_tokens=None)
    assert choice.shape == Shape(3, 3, 96)
    ratios = {c.shape: c.tokens_per_param for c in choice.candidates}
    assert ratios[SMALL] > sizing.TOKENS_PER_PARAM > ratios[Shape(4, 4, 128)]
    assert ratios[Shape(3, 3, 96)] == pytest.approx(31_955 * 100 / Shape(3, 3, 96).non_embedding_params())
    # another target moves the choice the way it should
    assert choose(speeds, 100, None, tokens_per_param=60).shape == SMALL
    assert choose(speeds, 100, None, tokens_per_param=1).shape == Shape(4, 4, 128)


def test_a_small_corpus_is_capped_at_max_epochs_and_favours_size():
    speeds = {SMALL: 40_000.0, BIG: 5_000.0}
    free = choose(speeds, 600, unique_tokens=None)
    tight = choose(speeds, 600, unique_tokens=100_000, max_epochs=4)
    assert tight.tokens <= 4 * 100_000
    assert tight.capped and tight.epochs > 4
    # repeated tokens are worth less: with the same time the small corpus pushes towards the bigger model
    assert tight.shape.n_embd >= free.shape.n_embd


def test_effective_tokens_discount_repeats_only():
    assert effective_tokens(50, 100) == 50
    assert 0.9 * 400 < effective_tokens(400, 100) < 400  # 4 epochs: worth nearly as much as fresh data
    assert effective_tokens(10_000, 100) < 0.2 * 10_000  # 100 epochs: worth much less


def test_context_by_width_and_tokenizer():
    # 128-token blocks only for the smallest BPE shapes: at 4x128 they ended 1.035x the hand grid's best on the
    # built-in corpus (a block's first tokens cost twice the rest), 256-token blocks 0.991x
    block = sizing.block_size_for
    assert block(Shape(3, 3, 96), "bpe") == 128 < block(Shape(4, 4, 128), "bpe") == block(BIG, "bpe") == 256
    assert block(Shape(8, 8, 512), "bpe") == 512
    # characters: twice the BPE context where Tiny Shakespeare's runs were measured, never past 1024
    assert block(Shape(4, 4, 128), "char") == block(BIG, "char") == 256 < block(Shape(6, 4, 256), "char") == 512
    assert block(Shape(12, 12, 768), "char") == 1024
    choice = choose({SMALL: 40_000.0, Shape(4, 4, 128): 15_000.0, BIG: 5_000.0}, 600, None)
    assert choice.block_size == block(choice.shape, "bpe") and choice.tokens_per_step % choice.block_size == 0


def test_rules_by_width_and_corpus_size():
    assert sizing.lr_for_width(64) >= sizing.lr_for_width(256) > sizing.lr_for_width(512) > sizing.lr_for_width(768)
    assert sizing.vocab_for_corpus(1 << 20) < sizing.vocab_for_corpus(50 << 20) < sizing.vocab_for_corpus(1 << 30)
    per_step = sizing.tokens_per_step(10_000_000, 128)
    assert per_step % 128 == 0 and 10_000_000 / per_step >= sizing.TARGET_STEPS
    assert sizing.tokens_per_step(1000, 128) == 8 * 128  # never under 8 sequences
    # a trainer measured 14% faster buys 14% more tokens, not half the steps (a power-of-two batch doubled there:
    # 922 steps instead of 1,445, and a worse model, on the built-in corpus)
    for total in (1.6e6, 1.9e6, 2.3e6, 4.5e6, 9e6, 3e7):
        steps = [t / sizing.tokens_per_step(t, 128) for t in (total, 1.14 * total)]
        assert sizing.TARGET_STEPS <= min(steps) and max(steps) <= 1.125 * sizing.TARGET_STEPS
    # the shapes' parameter counts match the models pretraining builds
    from transformers import AutoModelForCausalLM

    from tinyllm.config import ModelArguments
    from tinyllm.modeling import build_config

    for shape in (SMALL, BIG):
        cfg = build_config(ModelArguments(n_layer=shape.n_layer, n_head=shape.n_head, n_embd=shape.n_embd), 512, 64,
                           1, 2, 0)
        model = AutoModelForCausalLM.from_config(cfg)
        assert model.num_parameters(exclude_embeddings=True) == shape.non_embedding_params()


def test_the_probe_takes_the_median_step_not_a_slow_one(monkeypatch):
    """A step slowed by something else (the process's cold start, another program) does not set the shape's speed:
    eight steps of 10 ms and one of a second measure 10 ms a step, not the ~120 ms their mean is."""
    from tinyllm.training import probe

    clock, durations = [0.0], iter([0.0, 0.0, 1.0] + [0.01] * 100)  # two warm-up steps, then a slow one

    def fake_step_fn(model, optimizer, batch, device):
        def step():
            clock[0] += next(durations)
        return step

    monkeypatch.setattr(probe, "_step_fn", fake_step_fn)
    monkeypatch.setattr(probe.time, "perf_counter", lambda: clock[0])
    tps = probe.measure_one(SMALL, 64, "bpe", "cpu", seconds=1.08)
    tokens = probe.micro_batch_for("cpu", 128) * 128
    assert tps == pytest.approx(tokens / 0.01)


def test_keep_best_puts_the_best_evaluated_weights_back():
    import torch

    from tinyllm.training.callbacks import KeepBestCallback

    class State:
        global_step = 0

    model, keeper, state, seen = torch.nn.Linear(3, 3), KeepBestCallback(), State(), {}
    for step, loss in ((10, 3.0), (20, 2.0), (30, 2.5)):  # the held-out loss turns up after step 20
        with torch.no_grad():
            model.weight.fill_(step)
        state.global_step = step
        keeper.on_evaluate(None, state, None, metrics={"eval_loss": loss}, model=model)
        seen[step] = model.weight.clone()
    assert keeper.best_step == 20 and torch.equal(keeper.weights["weight"], seen[20])
    assert keeper.restore_if_better(model, 2.5, 30)
    assert torch.equal(model.weight, seen[20])
    assert not KeepBestCallback().restore_if_better(model, 2.5, 30)  # nothing evaluated: nothing to put back
    keeper.on_evaluate(None, state, None, metrics={"eval_loss": 1.0}, model=model)  # the last is the best
    assert keeper.best_step == 30 and not keeper.restore_if_better(model, 1.0, 30)


def test_bad_input_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_inprocess(capsys, "speedrun", "--time_budget", "10minutes", "--output_dir", out)
    assert_user_error(code, err, "time_budget '10minutes'", "90s, 10m or 1.5h")
    code, _, err = run_inprocess(capsys, "speedrun", "--output_dir", out)
    assert_user_error(code, err, "--time_budget")
    code, _, err = run_inprocess(capsys, "speedrun", "--time_budget", "20s", "--output_dir", out)
    assert_user_error(code, err, "too small", "at least 60s")
    code, _, err = run_inprocess(capsys, "speedrun", "--time_budget", "5m", "--block_size", "64", "--output_dir", out)
    assert_user_error(code, err, "block_size")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    code, _, err = run_inprocess(capsys, "speedrun", "--time_budget", "5m", "--output_dir", tmp_path / "other")
    assert_user_error(code, err, "not a speedrun")
    assert not out.exists() and (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_not_enough_disk_is_one_line(tmp_path, capsys, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 << 20, 9 << 20, 1 << 20))
    code, _, err = run_inprocess(capsys, "speedrun", "--time_budget", "5m", "--builtin_num_documents", "300",
                                 "--output_dir", tmp_path / "run")
    assert_user_error(code, err, "not enough disk", "free")
    assert not (tmp_path / "run" / "tokenizer").exists()


def test_a_corpus_too_small_for_the_budget_says_the_epochs(tmp_path, capsys):
    text = tmp_path / "tiny.txt"
    text.write_text("\n\n".join(f"The fox number {i} jumps over the lazy dog and runs home." for i in range(300)))
    code, out, err = run_inprocess(capsys, "speedrun", "--dataset_name", text, "--time_budget", "20m",
                                   "--output_dir", tmp_path / "run", "--dry_run", "true")
    line = assert_user_error(code, err, "too small for 20m", "epochs", "capped at 16")
    assert "--time_budget" in line
    assert "plan" in out  # the plan was shown before the refusal


def test_dry_run_shows_the_plan_and_trains_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run_inprocess(capsys, "speedrun", "--time_budget", "2m", "--builtin_num_documents", "6000",
                                      "--output_dir", out, "--dry_run", "true")
    assert code == 0, err
    assert "shape" in stdout and "learning rate" in stdout and "tokens per step" in stdout
    assert "dry run" in stdout and "budget:" in stdout
    assert not (out / "pretrain").exists()
    state = json.loads((out / "speedrun.json").read_text())
    assert set(state["stages"]) == {"tokenizer", "prepare"}  # kept for the real run; no plan left behind


@pytest.mark.slow
def test_tiny_budget_end_to_end_interrupted_then_resumed(tmp_path):
    """100 s budget on a small built-in corpus: Ctrl+C during pretraining, then the same command finishes."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "tinyllm", "speedrun", "--time_budget", "100s", "--builtin_num_documents", "3000",
           "--output_dir", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state_path = out / "speedrun.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # wait for pretraining to save its first checkpoint
        if any((out / "pretrain").glob("checkpoint-*/trainer_state.json")):
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert "run the same command again to resume" in stderr
    first = json.loads(state_path.read_text())
    assert first["stages"]["tokenizer"]["done"] and not first["stages"].get("pretrain", {}).get("done")

    start = time.time()
    res = run_cli(*cmd[3:], env=env, timeout=300)
    wall = time.time() - start
    assert res.returncode == 0, res.stderr[-3000:]
    state = json.loads(state_path.read_text())
    assert state["stages"]["pretrain"]["resumed_from"].startswith(str(out / "pretrain" / "checkpoint-"))
    assert len(state["stages"]["tokenizer"]["commands"]) == 1  # not run again
    assert all(state["stages"][k]["done"] for k in ("pretrain", "sft", "eval", "export", "report"))
    # the restart costs time (a new process, the checkpoint reloaded): SFT gets what is left, or says why it could not
    sft_ran = not state["stages"]["sft"].get("skipped")
    final = out / ("chat" if sft_ran else "pretrain")
    assert state["spent_s"] <= 100 * 1.05, state["spent_s"]  # both attempts together kept to the budget
    assert wall < 100
    card = (out / "SPEEDRUN.md").read_text()
    assert "| pretrain |" in card and "predicted loss" in card and "## Choices and why" in card
    # the forecast's copies made before the interruption were kept in the checkpoint and count after the resume
    pre = state["stages"]["pretrain"]
    forecast = json.loads((out / "pretrain" / "forecast.json").read_text())
    assert len(forecast["points"]) == 3 and pre["forecast_loss"] == forecast["forecast"]["loss"]
    assert f"forecast {pre['forecast_loss']:.3f}" in card
    # and revised where the cool-down began, from the run's loss there and the last copy's gain
    assert pre["forecast_revised_loss"] == forecast["revision"]["loss"] > 0
    assert pre["forecast_revised_at_step"] > forecast["points"][-1]["step"]
    assert f"(revised {pre['forecast_revised_loss']:.3f})" in card and "Revised where the run's cool-down" in card
    # the floor under the forecast's curve: the built-in corpus's entropy (bits per char) as nats per token, plus
    # what each block's start costs
    from tinyllm.data.builtin import BLOCK_START_NATS

    m = json.loads((out / "pretrain" / "all_results.json").read_text())
    block = json.loads((out / "pretrain" / "config.json").read_text())["max_position_embeddings"]
    floor = m["entropy_floor_bits_per_char"] * m["eval_loss"] / m["eval_bits_per_char"] + BLOCK_START_NATS / block
    assert forecast["loss_floor"] == pytest.approx(floor, rel=2e-3) and forecast["forecast"]["loss"] >= floor
    assert "Resuming" in res.stdout
    for line in ("tinyllm chat" if sft_ran else "tinyllm generate", "tinyllm serve", "ollama create"):
        assert line in res.stdout
    assert (final / "model.safetensors").is_file()
    if sft_ran:
        assert (final / "chat_template.jinja").is_file() or \
            "chat_template" in (final / "tokenizer_config.json").read_text()
        assert state["stages"]["sft"]["exact_match"] is not None
    else:
        assert "left" in state["stages"]["sft"]["skipped"]
    assert list(final.glob("*.gguf")) and list(final.glob("*.Modelfile"))
    assert not list((out / "pretrain").glob("checkpoint-*"))
    assert state["stages"]["pretrain"]["loss"] < forecast["points"][0]["loss"]  # it learned past its first copy
    again = run_cli(*cmd[3:], env=env, timeout=120)  # the same command once more: nothing to do
    assert again.returncode == 0 and "This speedrun is complete" in again.stdout, again.stderr[-2000:]
    assert json.loads(state_path.read_text())["stages"] == state["stages"]


def test_the_report_card_says_how_the_loss_was_predicted_and_which_weights_were_kept(tmp_path):
    from types import SimpleNamespace

    from tinyllm.training.speedrun_card import write_card

    (tmp_path / "pretrain").mkdir()
    points = [{"at": 0.1, "step": 106, "steps": 132, "loss": 4.1}, {"at": 0.2, "step": 212, "steps": 265, "loss": 3.6},
              {"at": 0.4, "step": 424, "steps": 530, "loss": 3.3}]
    (tmp_path / "pretrain" / "forecast.json").write_text(json.dumps({
        "points": points, "at": [0.1, 0.2, 0.4],
        "forecast": {"loss": 2.898, "at_step": 424, "total_steps": 1060, "E": 2.4, "K": 310.0, "exponent": 0.61}}))
    state = {"stages": {"tokenizer": {"seconds": 0.3, "choice": "BPE 1024"},
                        "pretrain": {"seconds": 252.0, "loss": 3.042, "bits_per_byte": 1.41, "steps": 1060,
                                     "forecast_loss": 2.898, "forecast_at_step": 424,
                                     "keep_best_step": 548, "last_step_eval_loss": 3.527},
                        "eval": {"seconds": 0.5}},
             "plan": {"choice": {"epochs": 13.8, "reasons": ["shape 4x128"], "candidates": []},
                      "shares": {"pretrain": 253.0, "eval": 3.0, "export": 2.0}, "device": "cpu"}}
    run = SimpleNamespace(state=state, data=SimpleNamespace(dataset_name="tinystories"), total=300.0,
                          elapsed=lambda: 293.0, out=tmp_path, sft_name=None)
    card = write_card(run, tmp_path / "pretrain", None).read_text()
    assert "| pretrain | 253 s | 252 s | 2.898 | 3.042 |" in card
    assert "forecast 2.898 at step 424 of 1,060" in card and "off by -4.7%" in card
    assert "step 424 + 106: 3.300" in card and "L(D) = 2.400 + 310 / D^0.61" in card
    assert "kept the weights of step 548 (--keep_best)" in card and "3.527 at the last step, 1060" in card
    copy = "a copy of step 424 cooled down for 106 steps"
    state["stages"]["pretrain"].update(keep_best_step=424, keep_best_copy=copy)
    card = write_card(run, tmp_path / "pretrain", None).read_text()
    assert f"kept the weights of {copy} (--keep_best)" in card
    del state["stages"]["pretrain"]["keep_best_step"], state["stages"]["pretrain"]["keep_best_copy"]
    assert "kept the weights" not in write_card(run, tmp_path / "pretrain", None).read_text()
    assert "lowest loss there is" not in card and "revised" not in card
    # revised where the cool-down began
    forecast = json.loads((tmp_path / "pretrain" / "forecast.json").read_text())
    forecast["revision"] = {"loss": 3.0, "at_step": 848, "total_steps": 1060, "run_loss": 3.2, "gain": 0.9375,
                            "gain_at_step": 424, "estimate": 3.0, "kept": False}
    (tmp_path / "pretrain" / "forecast.json").write_text(json.dumps(forecast))
    state["stages"]["pretrain"].update(forecast_revised_loss=3.0, forecast_revised_at_step=848)
    card = write_card(run, tmp_path / "pretrain", None).read_text()
    assert "| pretrain | 253 s | 252 s | 2.898 (revised 3.000) | 3.042 |" in card
    assert "Revised where the cool-down began (step 848, below): 3.000, off by -1.4%" in card
    assert "what cooling down gave the copy at step 424 (its cooled loss over the run's at that step): " \
           "3.200 x 0.938 = 3.000" in card
    assert "--keep_best) are" not in card
    forecast["revision"].update(loss=2.95, kept=True)
    (tmp_path / "pretrain" / "forecast.json").write_text(json.dumps(forecast))
    card = write_card(run, tmp_path / "pretrain", None).read_text()
    assert "= 3.000; the best weights kept so far (--keep_best) are lower: 2.950" in card
    forecast["revision"].update(floor=0.351, run_loss=0.403, gain=0.4767, loss=0.376, estimate=0.376,
                                kept=False)  # built-in corpus
    (tmp_path / "pretrain" / "forecast.json").write_text(json.dumps(forecast))
    card = write_card(run, tmp_path / "pretrain", None).read_text()
    assert "(its cooled loss over the run's at that step, above the floor): 0.351 + (0.403 - 0.351) x 0.477 = 0.376" \
        in card
    del forecast["revision"]["estimate"], forecast["revision"]["floor"]  # forecast.json of an earlier version
    (tmp_path / "pretrain" / "forecast.json").write_text(json.dumps(forecast))
    assert "0.403 x 0.477 = 0.376" in write_card(run, tmp_path / "pretrain", None).read_text()
    del forecast["revision"], state["stages"]["pretrain"]["forecast_revised_loss"]
    (tmp_path / "pretrain" / "forecast.json").write_text(json.dumps(forecast))
    # a curve held at the corpus's entropy says so
    forecast = json.loads((tmp_path / "pretrain" / "forecast.json").read_text())
    forecast["forecast"]["floored"], forecast["loss_floor"] = True, 0.351
    (tmp_path / "pretrain" / "forecast.json").write_text(json.dumps(forecast))
    card = write_card(run, tmp_path / "pretrain", None).read_text()
    assert "would have run on under 0.351, the lowest loss there is on this corpus (its entropy plus what each block " \
        "start costs)" in card
    forecast["loss_floor"] = 0.0  # any other corpus: the floor is 0, not an entropy
    (tmp_path / "pretrain" / "forecast.json").write_text(json.dumps(forecast))
    card = write_card(run, tmp_path / "pretrain", None).read_text()
    assert "under 0.000, the lowest loss there is on this corpus (no loss is below 0)" in card
    # a run without a forecast (resumed before its first copy, or streamed) says so instead of a number
    (tmp_path / "pretrain" / "forecast.json").unlink()
    del state["stages"]["pretrain"]["forecast_loss"]
    state["stages"]["pretrain"]["forecast_skipped"] = "2 processes"
    card = write_card(run, tmp_path / "pretrain", None).read_text()
    assert "predicted loss: none (2 processes)" in card and "off by" not in card
