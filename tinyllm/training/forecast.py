"""`--forecast`: the run's final held-out loss predicted while it trains, from copies of it cooled down early.

Under `--time_budget` with `--lr_scheduler_type warmup_stable_decay` the learning rate is held until the last fifth
of the steps (training/budget.py). A copy of the run taken at step s and cooled down for s/4 steps (a fifth of
s + s/4) is a finished run of that length, as Hägele et al. 2024 ("Scaling Laws and Compute-Optimal Training Beyond
Fixed Training Durations") take their scaling-law points from one run. At FORECAST_AT (10%, 20% and 40% of the
steps the budget fits) the callback keeps the weights and the optimizer's state, cools a copy down on other batches
of the training data, scores it on the held-out set, and puts the run back as it was. Through the three losses,
against the tokens each copy was trained on (repeats counted less, as Muennighoff et al.'s D'), it fits
L(D) = E + K / D^g (`PowerLaw.through3`: three points give the exponent too) and predicts the loss at the last step.

The forecast cannot see a drop in the loss that has not begun by 40% of the steps (the built-in corpus's 5-minute
run sat at 0.50 from step 570 to 760, then fell to 0.40 by step 950: +12.5% for a forecast made at step 595). So it
is revised where the run's cool-down begins (the last fifth of the steps): the run's held-out loss there, at the
held rate, times what cooling down gave the last copy (its cooled loss over the held-out loss of the run it was
taken from, both measured at the copy; counted above the floor under the curve, so that the revision is not under
it either): a copy at step s cooled for s/4 steps stands to the run at s as the finished run stands to the run at
its cool-down's start. With `--keep_best` the revision is no higher than the best loss kept so far.

The copies cost a quarter of the steps before each (17.5% of the run's steps), which the budget callback reserves;
they use the run's own model, batch and data, so the prediction needs nothing measured elsewhere. With
`--keep_best` each copy is offered to the run's KeepBestCallback (`keeper`): a run that overfits after a copy ends
with that copy's weights. One process only (a copy in DDP would need its own gradient synchronisation; the forecast
is skipped there, with a message).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

from transformers import TrainerCallback

from tinyllm.evaluation.scoring import mean_token_loss
from tinyllm.training.budget import DECAY_FRACTION, decay_factor, decay_steps
from tinyllm.training.sizing import effective_tokens

__all__ = ["FORECAST_AT", "COPIES_SHARE", "PowerLaw", "ForecastCallback", "cool_down_steps", "revised_loss"]

logger = logging.getLogger(__name__)

STATE_FILE = "forecast_state.json"  # in each checkpoint
# fractions of the run's steps where a copy is cooled down: each twice the one before, so that the three points are
# evenly spaced in log tokens and the last (a finished run of half the steps) leaves a factor of two to extrapolate
FORECAST_AT = (0.1, 0.2, 0.4)
# a copy taken at step s cools down for s * COOL_DOWN_RATIO steps (a fifth of the finished run it stands for), so the
# copies add COPIES_SHARE of the run's steps: 0.175
COOL_DOWN_RATIO = DECAY_FRACTION / (1 - DECAY_FRACTION)
COPIES_SHARE = COOL_DOWN_RATIO * sum(FORECAST_AT)
# the exponents a three-point fit may give, clipped: no flatter than Chinchilla's data term (beta = 0.28, Hoffmann
# et al. 2022; the copy at a tenth of the steps is still on the steep start, whose fall alone looks log-linear: a Tiny
# Shakespeare run's three points gave 0.11, a curve with a negative floor), and at most 3 (a corpus at its floor)
EXPONENT_BOUNDS = (0.28, 3.0)


def cool_down_steps(step: int) -> int:
    """Steps that cool a copy taken at `step` down as warmup_stable_decay cools a run of step + these steps."""
    return max(round(step * COOL_DOWN_RATIO), 1)


def revised_loss(run_loss: float, copy_loss: float, copy_run_loss: float, floor: float = 0.0) -> tuple:
    """The forecast revised where the cool-down begins: (loss, gain, floor). The run's held-out loss there,
    `run_loss`, keeps above the floor the share of it that cooling down kept for the last copy (`copy_loss` over
    the run's `copy_run_loss` at the copy's step, both above the floor)."""
    floor = min(floor, copy_loss, run_loss)
    gain = (copy_loss - floor) / max(copy_run_loss - floor, 1e-9)
    return floor + (run_loss - floor) * gain, gain, floor


@dataclass(frozen=True)
class PowerLaw:
    """L(x) = E + K / x^g."""

    E: float
    K: float
    g: float

    def predict(self, x: float) -> float:
        return max(self.E + self.K * max(x, 1e-9) ** -self.g, 0.0)

    @staticmethod
    def accelerating(points: list[tuple[float, float]]) -> bool:
        """Losses that fall faster in log tokens between the later copies than between the earlier ones: no power
        law with a falling slope goes through them (a phase change under way: the built-in corpus's templates are
        learned in a sudden drop), so the forecast is a guess. `through3` then takes the curve through the last two
        that flattens soonest (the highest exponent allowed): it does not extrapolate a drop whose end it cannot
        see. The flattest one did: a 2-minute built-in run's copies 0.872 / 0.743 / 0.481 gave 0.227 for an end at
        0.434."""
        (x1, l1), (x2, l2), (x3, l3) = sorted(points)
        return l1 > l2 > l3 and (l2 - l3) / math.log(x3 / x2) > (1 + 1e-6) * (l1 - l2) / math.log(x2 / x1)

    @classmethod
    def through2(cls, x1: float, l1: float, x2: float, l2: float, g: float) -> "PowerLaw":
        """Through two points (x1 < x2) with the exponent given; flat at the better loss if the later is no
        better."""
        if x2 <= x1 or l2 >= l1:
            return cls(min(l1, l2), 0.0, g)
        k = (l1 - l2) / (x1 ** -g - x2 ** -g)
        return cls(l2 - k * x2 ** -g, k, g)

    @classmethod
    def through3(cls, points: list[tuple[float, float]], floor: float = 0.0) -> "PowerLaw":
        """Through three points (x increasing): the exponent from the ratio of the two drops, solved by bisection
        and kept within EXPONENT_BOUNDS, then E and K through the last two. Losses that stop falling give a flat
        curve at the last point's level (the run has reached what this shape gets from this data); losses that fall
        faster and faster (`accelerating`) the highest exponent. A curve whose E falls below `floor` (no loss is
        under 0; the built-in corpus knows its entropy) is `floored`."""
        law = cls.free(points)
        return law if law.E >= floor else cls.floored(points, floor)

    @classmethod
    def floored(cls, points: list[tuple[float, float]], floor: float) -> "PowerLaw":
        """E = floor, and K and the exponent (within EXPONENT_BOUNDS) through the last two points: a drop that a
        free fit would carry on under a loss no model can reach. The built-in corpus's 5-minute copies 0.765 /
        0.583 / 0.395 fit E = -0.25 (0.273 for an end at 0.387); at its entropy (0.351 nats per token) 0.362."""
        (x2, l2), (x3, l3) = sorted(points)[1:]
        lo, hi = EXPONENT_BOUNDS
        if l3 <= floor or l2 <= l3:
            return cls(min(l2, l3), 0.0, hi)
        g = min(max(math.log((l2 - floor) / (l3 - floor)) / math.log(x3 / x2), lo), hi)
        return cls(floor, (l3 - floor) * x3 ** g, g)

    @classmethod
    def free(cls, points: list[tuple[float, float]]) -> "PowerLaw":
        """`through3` with no floor under E."""
        (x1, l1), (x2, l2), (x3, l3) = sorted(points)
        lo, hi = EXPONENT_BOUNDS
        if not (l1 > l2 > l3):
            return cls.through2(x2, l2, x3, l3, hi) if l2 > l3 else cls(min(l2, l3), 0.0, hi)
        ratio = (l1 - l2) / (l2 - l3)

        def drops(g: float) -> float:  # (x1^-g - x2^-g) / (x2^-g - x3^-g), increasing in g
            return (x1 ** -g - x2 ** -g) / (x2 ** -g - x3 ** -g)

        if cls.accelerating(points):
            g = hi
        elif ratio <= drops(lo):
            g = lo
        elif ratio >= drops(hi):
            g = hi
        else:
            a, b = lo, hi
            for _ in range(60):
                mid = (a + b) / 2
                a, b = (mid, b) if drops(mid) < ratio else (a, mid)
            g = (a + b) / 2
        return cls.through2(x2, l2, x3, l3, g)


class ForecastCallback(TrainerCallback):
    """Cools copies of the run down at FORECAST_AT of its steps and predicts its final held-out loss (see the
    module's docstring). `trainer` is set after the trainer is built; `budget` is the run's TimeBudget."""

    def __init__(self, budget, train, evaluation, tokens_per_step: int, unique_tokens: float | None,
                 min_lr_ratio: float = 0.0, seed: int = 0, resume: str | None = None, loss_floor: float = 0.0):
        self.budget, self.train, self.eval = budget, train, evaluation
        self.tokens_per_step, self.unique, self.seed = tokens_per_step, unique_tokens, seed
        self.min_lr_ratio = min_lr_ratio
        self.loss_floor = loss_floor  # the lowest held-out loss there is (nats per token): the curve's E is not below
        self.trainer = None
        self.keeper = None  # the run's KeepBestCallback (--keep_best): offered each copy's weights
        self.pending = list(FORECAST_AT)
        self.points: list[dict] = []
        self.result: dict | None = None
        self.revision: dict | None = None  # the forecast revised where the cool-down begins
        self.to_revise = True
        self.seconds = 0.0
        self.skipped: str | None = None
        kept = Path(resume, STATE_FILE) if resume else None
        if kept and kept.is_file():  # resumed: the copies made before the checkpoint count
            saved = json.loads(kept.read_text())
            self.points, self.seconds = saved["points"], saved["seconds"]
            self.pending = [a for a in FORECAST_AT if a not in {p["at"] for p in self.points}]
            self.result, self.revision = saved.get("result"), saved.get("revision")
            self.to_revise = self.revision is None
        self._reserve()

    def _reserve(self, eval_s: float = 1.0) -> None:
        """What the copies still to come will cost: a share of the run's steps, and their evaluations (two each: the
        run's and the copy's), and the revision's one."""
        self.budget.reserve_share = COOL_DOWN_RATIO * sum(self.pending)
        self.budget.reserve_s = eval_s * (2 * len(self.pending) + (1 if self.to_revise else 0))

    def on_save(self, args, state, control, **kwargs):
        """The copies made so far, the forecast and its revision go into the checkpoint: a resumed run keeps them
        (one resumed after its last copy had no forecast before)."""
        folder = Path(args.output_dir, f"checkpoint-{state.global_step}")
        if folder.is_dir() and state.is_world_process_zero:
            Path(folder, STATE_FILE).write_text(json.dumps({"points": self.points, "seconds": self.seconds,
                                                            "result": self.result, "revision": self.revision}))

    def on_train_begin(self, args, state, control, **kwargs):
        if args.world_size > 1:
            self.skip(f"{args.world_size} processes (the cooled-down copies run in one)")

    def skip(self, why: str) -> None:
        if self.pending:
            logger.warning("--forecast skipped: %s", why)
        self.skipped, self.pending, self.to_revise = why, [], False
        self._reserve()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if not self.budget.measured or control.should_training_stop:
            return
        step = state.global_step
        if not self.pending:
            total = self.budget.total_steps
            if self.to_revise and self.result and step >= total - decay_steps(total):
                self.revise(args, model, step)
            return
        if step < self.pending[0] * self.budget.total_steps:
            return
        fraction = self.pending.pop(0)
        started = time.perf_counter()
        steps = cool_down_steps(step)
        held = mean_token_loss(model, self.eval, args.per_device_eval_batch_size)  # the run's own, at the held rate
        loss, eval_s = self.cool_down(args, model, steps, step)
        seconds = time.perf_counter() - started
        self.seconds += seconds
        self.budget.aside_s += seconds  # reserved: not the cost of a checkpoint saved at this step
        tokens = (step + steps) * self.tokens_per_step
        self.points.append({"at": fraction, "step": step, "steps": step + steps, "tokens": tokens,
                            "loss": round(loss, 4), "run_loss": round(held, 4), "seconds": round(seconds, 2)})
        logger.info("forecast: a copy at step %d cooled down for %d steps: held-out loss %.4f (the run's %.4f; %.1f s)",
                    step, steps, loss, held, seconds)
        self._reserve(eval_s)
        if not self.pending and len(self.points) == len(FORECAST_AT):
            self.predict(self.budget.total_steps)

    def revise(self, args, model, step: int) -> dict | None:
        """Where the cool-down begins: the run's held-out loss times the last copy's cooled / run loss, both counted
        above the floor (see the module's docstring), no higher than the best loss --keep_best holds. Counted from 0,
        the built-in corpus's copy mid-drop (0.437 -> 0.392) cut a run at 0.403 to 0.362, under its entropy (0.351)
        plus what a block's first tokens cost; it ended at 0.386, and above the floor the same copy says 0.376."""
        self.to_revise = False
        last = self.points[-1]
        if not last.get("run_loss"):  # copies made by a version that did not score the run (a resumed checkpoint)
            self._reserve()
            return None
        started = time.perf_counter()
        held = mean_token_loss(model, self.eval, args.per_device_eval_batch_size)
        seconds = time.perf_counter() - started
        self.seconds += seconds
        self.budget.aside_s += seconds
        estimate, gain, floor = revised_loss(held, last["loss"], last["run_loss"], self.loss_floor)
        kept = self.keeper is not None and self.keeper.best_loss < estimate
        loss = self.keeper.best_loss if kept else estimate
        self.revision = {"loss": round(loss, 4), "at_step": step, "total_steps": self.budget.total_steps,
                         "run_loss": round(held, 4), "gain": round(gain, 4), "gain_at_step": last["step"],
                         "floor": round(floor, 4), "estimate": round(estimate, 4), "kept": kept}
        logger.info("forecast revised where the cool-down begins (step %d of %d): held-out loss %.4f, above %.4f x "
                    "%.4f (what cooling down gave the copy at step %d) = %.4f%s", step, self.budget.total_steps, held,
                    floor, gain, last["step"], estimate,
                    f"; the best loss kept so far is lower: {loss:.4f}" if kept else "")
        self._reserve()
        return self.revision

    def predict(self, total_steps: int) -> dict:
        x = [(effective_tokens(p["tokens"], self.unique), p["loss"]) for p in self.points]
        law = PowerLaw.through3(x, self.loss_floor)
        final_tokens = total_steps * self.tokens_per_step
        loss = law.predict(effective_tokens(final_tokens, self.unique))
        self.result = {"loss": round(loss, 4), "at_step": self.points[-1]["step"], "total_steps": total_steps,
                       "E": round(law.E, 4), "K": round(law.K, 4), "exponent": round(law.g, 3),
                       "accelerating": PowerLaw.accelerating(x),
                       "floored": PowerLaw.free(x).E < self.loss_floor}
        if self.result["accelerating"]:
            logger.warning("forecast: the copies' loss falls faster and faster (%s): a sudden drop under way, which "
                           "no power law follows; the forecast below, the curve that flattens soonest, is a guess",
                           " / ".join(f"{p['loss']:.3f}" for p in self.points))
        if self.result["floored"]:
            logger.info("forecast: the copies' curve would run on under %.4f, the lowest loss there is on this corpus; "
                        "it is held at that floor", self.loss_floor)
        logger.info("forecast: held-out loss %.4f at step %d (L = %.3f + %.3g / D^%.2f through the copies' %s)", loss,
                    total_steps, law.E, law.K, law.g, " / ".join(f"{p['loss']:.3f}" for p in self.points))
        return self.result

    def cool_down(self, args, model, steps: int, step: int) -> tuple[float, float]:
        """`steps` optimizer steps of a linear cool-down from the current rate, on random batches of the training
        data, then the held-out loss (and the seconds scoring it took); the cooled weights are offered to the keeper
        (--keep_best), then the weights, the optimizer's state and the random state are put back."""
        import torch
        from transformers import default_data_collator

        trainer = self.trainer
        optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
        weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        moments = optimizer.state_dict()
        moments = {"state": {k: {n: (t.detach().clone() if torch.is_tensor(t) else t) for n, t in v.items()}
                             for k, v in moments["state"].items()},
                   "param_groups": [dict(g) for g in moments["param_groups"]]}
        rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        rates = [g["lr"] for g in optimizer.param_groups]
        generator = torch.Generator().manual_seed(self.seed * 1000 + len(self.points))
        micro, accum = args.per_device_train_batch_size, args.gradient_accumulation_steps
        was_training = model.training
        model.train()
        try:
            for done in range(1, steps + 1):
                factor = decay_factor(done, steps, self.min_lr_ratio)
                for group, rate in zip(optimizer.param_groups, rates):
                    group["lr"] = rate * factor
                for _ in range(accum):
                    rows = torch.randint(len(self.train), (micro,), generator=generator).tolist()
                    batch = trainer._prepare_inputs(default_data_collator([self.train[i] for i in rows]))
                    with trainer.compute_loss_context_manager():
                        loss = trainer.compute_loss(model, batch)
                    (loss / accum).backward()
                if args.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            scored = time.perf_counter()
            held_out = mean_token_loss(model, self.eval, args.per_device_eval_batch_size)
            scored = time.perf_counter() - scored
            if self.keeper is not None:
                self.keeper.offer(held_out, model, step, f"a copy of step {step} cooled down for {steps} steps")
        finally:
            model.load_state_dict(weights)
            optimizer.load_state_dict(moments)
            for group, rate in zip(optimizer.param_groups, rates):
                group["lr"] = rate
            optimizer.zero_grad(set_to_none=True)
            torch.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
            model.train(was_training)
        return held_out, scored

    def summary(self) -> dict:
        """For all_results.json: the forecast (made at 40% of the steps), what it cost, or why it was skipped."""
        if self.result:
            return {"forecast_eval_loss": self.result["loss"], "forecast_at_step": self.result["at_step"],
                    "forecast_total_steps": self.result["total_steps"], "forecast_exponent": self.result["exponent"],
                    "forecast_accelerating": self.result["accelerating"],
                    "forecast_floored": self.result["floored"], "forecast_seconds": round(self.seconds, 1),
                    **({"forecast_revised_eval_loss": self.revision["loss"],
                        "forecast_revised_at_step": self.revision["at_step"]} if self.revision else {})}
        return {"forecast_skipped": self.skipped or f"the run ended before {FORECAST_AT[-1]:.0%} of its steps"}

    def data(self) -> dict:
        """forecast.json: the copies' points, the fitted curve (as steps and losses, for the loss plot) and the
        forecast."""
        curve = []
        if self.result:
            law = PowerLaw(self.result["E"], self.result["K"], self.result["exponent"])
            first, last = self.points[0]["steps"], max(self.result["total_steps"], self.points[-1]["steps"])
            for i in range(25):
                step = first * (last / first) ** (i / 24)
                loss = law.predict(effective_tokens(step * self.tokens_per_step, self.unique))
                curve.append([round(step, 1), round(loss, 4)])
        return {"points": self.points, "forecast": self.result, "revision": self.revision, "curve": curve,
                "skipped": self.skipped,
                "decay_fraction": DECAY_FRACTION, "at": list(FORECAST_AT), "exponent_bounds": list(EXPONENT_BOUNDS),
                "unique_tokens": self.unique, "loss_floor": self.loss_floor,
                "tokens_per_step": self.tokens_per_step}
