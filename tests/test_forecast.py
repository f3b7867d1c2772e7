"""`pretrain --forecast`: the warmup-stable-decay schedule under a time budget, the power law through the cooled-down
copies, copies that leave the run exactly as it was, the budget that reserves their steps, and a budgeted run that
writes its forecast."""

import json
import math
from types import SimpleNamespace

import pytest

from helpers import TINY_MODEL_ARGS, assert_user_error, run_inprocess
from tinyllm.training.budget import DECAY_FRACTION, TimeBudget, budget_schedule, decay_steps
from tinyllm.training.forecast import EXPONENT_BOUNDS, FORECAST_AT, ForecastCallback, PowerLaw, cool_down_steps


def test_warmup_stable_decay_holds_the_rate_then_cools_down_the_last_fifth():
    import torch

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    budget = TimeBudget(60, warmup_steps=10)
    factor = budget_schedule(opt, budget, "warmup_stable_decay", min_lr_rate=0.1).lr_lambdas[0]
    assert factor(500) == 1.0  # before the run's length is measured: held
    budget.total_steps, budget.measured = 200, True
    cool = round(DECAY_FRACTION * 200)
    assert factor(5) == pytest.approx(0.6) and factor(100) == 1.0 and factor(200 - cool - 1) == 1.0
    assert factor(200 - cool) == pytest.approx(1 - 0.9 / cool)  # the cool-down's first step
    assert factor(199) == pytest.approx(0.1)  # the last step gets the floor
    budget.total_steps = 400  # the machine sped up: step 180 is back in the held part
    assert factor(180) == 1.0


def test_the_power_law_through_three_points_recovers_the_curve():
    true = PowerLaw(E=1.5, K=30.0, g=0.6)
    points = [(x, true.predict(x)) for x in (100, 250, 500)]
    fitted = PowerLaw.through3(list(reversed(points)))  # any order
    assert fitted.g == pytest.approx(0.6, abs=1e-6)
    assert fitted.E == pytest.approx(1.5, abs=1e-6) and fitted.predict(1000) == pytest.approx(true.predict(1000))
    # a fall that looks log-linear (the steep start) is clipped to the flattest exponent allowed
    loglinear = [(x, 5.0 - 0.3 * math.log(x)) for x in (100, 200, 400)]
    assert PowerLaw.through3(loglinear).g == EXPONENT_BOUNDS[0]
    # a drop that speeds up in log tokens (a phase change under way) is flagged
    sudden = [(100, 0.83), (200, 0.75), (400, 0.44)]
    assert PowerLaw.accelerating(sudden)
    # ... and not extrapolated: the curve through the last two that flattens soonest
    assert PowerLaw.through3(sudden).g == EXPONENT_BOUNDS[1] and 0.40 < PowerLaw.through3(sudden).predict(800) < 0.44
    assert not PowerLaw.accelerating(points) and not PowerLaw.accelerating(loglinear)
    # losses that stop falling: flat at the last level, never an extrapolated rise or fall
    assert PowerLaw.through3([(100, 3.0), (200, 2.5), (400, 2.6)]).predict(10 ** 6) == pytest.approx(2.5)
    assert PowerLaw.through3([(100, 3.0), (200, 3.1), (400, 2.9)]).predict(400) == pytest.approx(2.9)


def test_the_curve_is_not_carried_under_the_lowest_loss_there_is():
    # a 5-minute built-in speedrun's copies (effective tokens, held-out nats per token); it ended at 0.387 after
    # 4.39M effective tokens. A free fit runs on to E = -0.25: below any loss, and far below the corpus's entropy
    copies = [(602_000, 0.7647), (1_081_000, 0.5827), (2_302_000, 0.3952)]
    assert PowerLaw.free(copies).E < 0 and PowerLaw.free(copies).predict(4_394_000) < 0.3
    at_zero = PowerLaw.through3(copies)  # no loss is under 0
    assert at_zero.E == 0.0 and at_zero.predict(2_302_000) == pytest.approx(0.3952)
    floored = PowerLaw.through3(copies, floor=0.351)  # the built-in corpus's entropy as nats per token
    assert floored.E == 0.351 and floored.predict(1_081_000) == pytest.approx(0.5827)
    assert floored.predict(2_302_000) == pytest.approx(0.3952)
    assert 0.351 < floored.predict(4_394_000) < 0.3952 and floored.predict(4_394_000) == pytest.approx(0.362, abs=1e-3)
    # a fit that stays above the floor is the free fit
    above = [(100, 2.0), (200, 1.8), (400, 1.7)]
    assert PowerLaw.through3(above, floor=0.5) == PowerLaw.free(above)


def test_a_copy_is_cooled_down_as_the_run_cools_down_its_last_fifth():
    for step in (40, 100, 401):
        cool = cool_down_steps(step)
        assert cool / (step + cool) == pytest.approx(DECAY_FRACTION, abs=1 / step)


def _tiny_trainer(tmp_path, callbacks, steps=24):
    import torch
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16))
    g = torch.Generator().manual_seed(1)
    rows = torch.randint(0, 64, (96, 16), generator=g).tolist()
    train = Dataset.from_dict({"input_ids": rows[:80], "labels": rows[:80]})
    held = Dataset.from_dict({"input_ids": rows[80:], "labels": rows[80:]})
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=4,
                             learning_rate=3e-3, lr_scheduler_type="constant", report_to="none", save_strategy="no",
                             logging_strategy="no", use_cpu=True, seed=0, data_seed=0, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=train, callbacks=callbacks)
    return trainer, train, held


def test_the_copies_leave_the_run_exactly_as_it_was(tmp_path):
    """Three copies cooled down on the way (each trains, scores, and is put back): the run's own weights at the end
    are bit for bit those of the same run without them. Without putting the optimizer's state back, they differ."""
    import torch

    plain, _, _ = _tiny_trainer(tmp_path / "a", [])
    plain.train()
    budget = SimpleNamespace(measured=True, total_steps=24, reserve_share=0.0, reserve_s=0.0, aside_s=0.0)
    forecaster = ForecastCallback(budget, None, None, tokens_per_step=64, unique_tokens=None)
    forecasted, train, held = _tiny_trainer(tmp_path / "b", [forecaster])
    forecaster.train, forecaster.eval, forecaster.trainer = train, held, forecasted
    forecasted.train()
    assert [p["step"] for p in forecaster.points] == [math.ceil(a * 24) for a in FORECAST_AT]  # 3, 5, 10
    assert all(p["steps"] == p["step"] + cool_down_steps(p["step"]) for p in forecaster.points)
    assert forecaster.result and forecaster.result["total_steps"] == 24
    assert forecaster.revision["at_step"] == 24 - decay_steps(24)  # scored on the way too, and left as it was
    for (name, a), b in zip(plain.model.state_dict().items(), forecasted.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_the_forecast_is_revised_where_the_cool_down_begins(monkeypatch):
    """At the cool-down's first step (not before): the run's held-out loss times what cooling down gave the last copy
    (above the floor); with --keep_best, no higher than the best loss kept."""
    import tinyllm.training.forecast as forecast

    scored = []
    monkeypatch.setattr(forecast, "mean_token_loss", lambda model, data, bs: scored.append(model) or 0.8)

    def revised(best_loss=None, total=100, floor=0.0):
        budget = SimpleNamespace(measured=True, total_steps=total, reserve_share=0.0, reserve_s=0.0, aside_s=0.0)
        cb = ForecastCallback(budget, None, None, tokens_per_step=64, unique_tokens=None, loss_floor=floor)
        cb.keeper = SimpleNamespace(best_loss=best_loss) if best_loss is not None else None
        cb.pending = []
        cb.result = {"loss": 0.7, "at_step": 40, "total_steps": total, "E": 0.5, "K": 1.0, "exponent": 0.5,
                     "accelerating": False, "floored": False}
        cb.points = [{"at": 0.4, "step": 40, "steps": 50, "loss": 0.9, "run_loss": 1.0}]
        args, control = SimpleNamespace(per_device_eval_batch_size=4), SimpleNamespace(should_training_stop=False)
        for step in range(1, total + 1):
            cb.on_step_end(args, SimpleNamespace(global_step=step), control, model=step)
        return cb

    cb = revised()
    assert scored == [100 - decay_steps(100)] and cb.to_revise is False  # once, at step 80
    assert cb.revision["loss"] == pytest.approx(0.8 * 0.9) and cb.revision["gain"] == pytest.approx(0.9)
    assert cb.revision["kept"] is False and cb.revision["total_steps"] == 100
    assert cb.summary()["forecast_revised_eval_loss"] == cb.revision["loss"]
    assert cb.data()["revision"] == cb.revision
    assert revised(best_loss=0.75).revision["loss"] == pytest.approx(0.72)  # the kept weights are worse
    kept = revised(best_loss=0.65).revision
    assert kept["loss"] == pytest.approx(0.65) and kept["kept"] is True and kept["estimate"] == pytest.approx(0.72)
    # above a floor (the built-in corpus's entropy): the copy kept (0.9 - 0.5) / (1.0 - 0.5) of what was above it
    floored = revised(floor=0.5).revision
    assert floored["gain"] == pytest.approx(0.8) and floored["loss"] == pytest.approx(0.5 + 0.3 * 0.8)


def test_a_resumed_run_keeps_its_copies_its_forecast_and_its_revision(tmp_path, monkeypatch):
    """Saved into a checkpoint and read back: a run resumed after its last copy still has its forecast, and is still
    revised where its cool-down begins (once)."""
    import tinyllm.training.forecast as forecast

    monkeypatch.setattr(forecast, "mean_token_loss", lambda model, data, bs: 0.8)

    def callback(resume=None, total=100):
        budget = SimpleNamespace(measured=True, total_steps=total, reserve_share=0.0, reserve_s=0.0, aside_s=0.0)
        return ForecastCallback(budget, None, None, tokens_per_step=64, unique_tokens=None, resume=resume)

    first = callback()
    first.pending = []
    first.points = [{"at": a, "step": s, "steps": s + cool_down_steps(s), "tokens": 64 * (s + cool_down_steps(s)),
                     "loss": loss, "run_loss": loss + 0.1}
                    for a, s, loss in zip(FORECAST_AT, (10, 20, 40), (2.0, 1.5, 1.0))]
    first.predict(100)
    args = SimpleNamespace(output_dir=str(tmp_path), per_device_eval_batch_size=4)
    control = SimpleNamespace(should_training_stop=False)
    (tmp_path / "checkpoint-50").mkdir()
    first.on_save(args, SimpleNamespace(global_step=50, is_world_process_zero=True), control)
    resumed = callback(resume=tmp_path / "checkpoint-50")
    assert resumed.pending == [] and resumed.points == first.points
    assert resumed.summary()["forecast_eval_loss"] == first.result["loss"]
    for step in range(51, 101):
        resumed.on_step_end(args, SimpleNamespace(global_step=step), control, model=None)
    assert resumed.revision["at_step"] == 80
    assert resumed.summary()["forecast_revised_eval_loss"] == pytest.approx(0.8 * 1.0 / 1.1, abs=1e-4)
    (tmp_path / "checkpoint-90").mkdir()
    resumed.on_save(args, SimpleNamespace(global_step=90, is_world_process_zero=True), control)
    again = callback(resume=tmp_path / "checkpoint-90")
    assert again.revision == resumed.revision and again.to_revise is False


def test_keep_best_is_offered_the_cooled_down_copies(tmp_path):
    """With --keep_best the copies' cooled weights compete with the run's evaluations: the best copy's weights (not
    the run's at that step) are kept, put back at the end when better than the last, and score what the copy did."""
    import torch

    from tinyllm.evaluation.scoring import mean_token_loss
    from tinyllm.training.callbacks import KeepBestCallback

    budget = SimpleNamespace(measured=True, total_steps=24, reserve_share=0.0, reserve_s=0.0, aside_s=0.0)
    forecaster = ForecastCallback(budget, None, None, tokens_per_step=64, unique_tokens=None)
    keeper = KeepBestCallback()
    trainer, train, held = _tiny_trainer(tmp_path, [forecaster])
    forecaster.train, forecaster.eval, forecaster.trainer, forecaster.keeper = train, held, trainer, keeper
    trainer.train()
    best = min(forecaster.points, key=lambda p: p["loss"])
    assert keeper.best_loss == pytest.approx(best["loss"], abs=1e-4) and keeper.best_step == best["step"]
    assert keeper.best_copy == f"a copy of step {best['step']} cooled down for {best['steps'] - best['step']} steps"
    final = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    assert not keeper.restore_if_better(trainer.model, keeper.best_loss, 24)  # the last no worse: kept as it is
    assert keeper.restore_if_better(trainer.model, keeper.best_loss + 1.0, 24)
    assert any(not torch.equal(final[k], v) for k, v in trainer.model.state_dict().items())
    assert mean_token_loss(trainer.model, held) == pytest.approx(keeper.best_loss, abs=1e-5)


def _budgeted_steps(monkeypatch, save_steps=None):
    """A 100 s TimeBudget and its BudgetCallback on a fake clock; `run(steps, between)` makes steps of 0.1 s and
    calls `between(step)` after each step's end (what runs between two steps)."""
    from tinyllm.training import budget as budget_module
    from tinyllm.training.budget import BudgetCallback

    clock = [0.0]
    monkeypatch.setattr(budget_module.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(budget_module.time, "time", lambda: 1000.0 + clock[0])
    budget = TimeBudget(100, start=1000.0)
    cb = BudgetCallback(budget, probe_steps=5, every=10)
    args = SimpleNamespace(eval_strategy="no", eval_steps=None, save_strategy="steps" if save_steps else "no",
                           save_steps=save_steps, per_device_train_batch_size=8, gradient_accumulation_steps=1)
    state, control = SimpleNamespace(global_step=0, max_steps=0), SimpleNamespace(should_training_stop=False)

    def run(steps: int, between=lambda step: None):
        for step in range(1, steps + 1):
            cb.on_step_begin(args, state, control)
            clock[0] += 0.1
            state.global_step = step
            cb.on_step_end(args, state, control, model=None)
            between(step)

    return clock, budget, cb, run, (args, state, control)


def test_the_budget_reserves_the_copies_steps(monkeypatch):
    def fits(share: float) -> int:
        _, budget, _, run, _ = _budgeted_steps(monkeypatch)
        budget.reserve_share = share
        run(5)
        return budget.total_steps

    assert fits(0.175) == pytest.approx(fits(0.0) / 1.175, rel=0.01)


def test_a_copy_at_a_checkpoints_step_is_not_the_checkpoints_cost(monkeypatch):
    """A copy cooled down at the step a checkpoint is saved (both run between two steps): the checkpoint is timed
    without the copy. Timed with it, a 20 s copy made every checkpoint look 20 s, and a Tiny Shakespeare speedrun
    reserved that for each one to come and ended 44 s early."""
    clock, budget, cb, run, callback_args = _budgeted_steps(monkeypatch, save_steps=4)

    def between(step):
        if step == 4:  # a copy (after the budget's on_step_end, as the forecast is added after it), then the save
            clock[0] += 20.0
            budget.aside_s += 20.0
        if step in (4, 8):
            cb.on_save(*callback_args)
            clock[0] += 0.3

    run(10, between)
    assert cb.save_s == [pytest.approx(0.3), pytest.approx(0.3)]


def test_forecast_needs_the_schedule_it_cools_down(tmp_path, capsys):
    code, _, err = run_inprocess(capsys, "pretrain", "--forecast", "true", "--time_budget", "1m",
                                 "--output_dir", tmp_path / "x")
    assert_user_error(code, err, "--forecast needs --time_budget and --lr_scheduler_type warmup_stable_decay")
    code, _, err = run_inprocess(capsys, "pretrain", "--time_budget", "1m", "--lr_scheduler_type",
                                 "warmup_stable_decay", "--lr_scheduler_kwargs", '{"num_decay_steps": 10}',
                                 "--output_dir", tmp_path / "x")
    assert_user_error(code, err, "takes only min_lr_ratio")
    assert not (tmp_path / "x").exists()


def test_a_budgeted_run_forecasts_its_loss(tmp_path, capsys):
    out = tmp_path / "m"
    code, _, err = run_inprocess(capsys, "pretrain", "--dataset_name", "builtin", "--builtin_num_documents", "400",
                                 "--vocab_size", "400", "--output_dir", out, "--time_budget", "25s",
                                 "--eval_steps", "1000", "--learning_rate", "0.005", *TINY_MODEL_ARGS,
                                 "--lr_scheduler_type", "warmup_stable_decay", "--forecast", "true")
    assert code == 0, err
    res = json.loads((out / "all_results.json").read_text())
    saved = json.loads((out / "forecast.json").read_text())
    assert [p["at"] for p in saved["points"]] == list(FORECAST_AT)
    steps = [p["step"] for p in saved["points"]]
    assert steps == sorted(steps) and steps[-1] < res["time_budget_steps"]
    losses = [p["loss"] for p in saved["points"]]
    assert losses[-1] < losses[0]  # the later copy, trained longer, is better
    assert res["forecast_eval_loss"] == saved["forecast"]["loss"] > 0 and res["forecast_at_step"] == steps[-1]
    assert "forecast:" in err and "predicted at step" in err
    last = saved["points"][-1]
    assert last["loss"] < last["run_loss"]  # cooling the copy down lowered its held-out loss
    rev = saved["revision"]
    assert steps[-1] < rev["at_step"] < res["time_budget_steps"] and rev["gain"] == pytest.approx(
        (last["loss"] - rev["floor"]) / (last["run_loss"] - rev["floor"]), abs=1e-3)
    assert res["forecast_revised_eval_loss"] == rev["loss"] and "forecast revised at step" in err
    assert rev["floor"] == pytest.approx(saved["loss_floor"], abs=1e-4)
    # the run at its cool-down's start, still at the held rate, scored above where the cool-down took it
    assert rev["run_loss"] > res["eval_loss"]
    state = json.loads((out / "trainer_state.json").read_text())
    lrs = [h["learning_rate"] for h in state["log_history"] if "learning_rate" in h]
    assert lrs[-1] < 0.005 * 0.2 and max(lrs) == pytest.approx(0.005, rel=0.05)  # held, then cooled down
