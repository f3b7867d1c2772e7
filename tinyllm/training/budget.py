"""`--time_budget 10m`: a run that ends by a deadline with its learning-rate schedule completed.

The number of steps is not known in advance, so it is measured: after a few steps the budget callback knows the
time per step, per evaluation and per checkpoint, and sets the run's total steps to what fits before the deadline
(re-estimated every few steps as the machine speeds up or slows down). The schedule reads that total each step (a
LambdaLR over a mutable total), so warmup, cosine decay and the final learning rate land at the last step that fits.
The budget counts from the start of the command (tinyllm.STARTED_AT: imports, data preparation, evaluation,
samples and saving are all in it).
"""

from __future__ import annotations

import logging
import math
import re
import statistics
import time

from transformers import TrainerCallback

from tinyllm.errors import ConfigError
from tinyllm.formatting import fmt_duration

__all__ = ["parse_duration", "TimeBudget", "BudgetCallback", "budget_schedule", "BUDGET_SCHEDULES", "DECAY_FRACTION",
           "decay_factor"]

logger = logging.getLogger(__name__)
BUDGET_SCHEDULES = ("cosine_with_min_lr", "cosine", "linear", "constant_with_warmup", "warmup_stable_decay")
# warmup_stable_decay under a time budget: the rate is held until the last DECAY_FRACTION of the steps, then falls
# linearly to min_lr_ratio. A fifth matched a cosine schedule's final loss in Hägele et al. 2024 ("Scaling Laws and
# Compute-Optimal Training Beyond Fixed Training Durations"), and the held part does not depend on the run's length:
# a copy of the run cooled down at any step is a finished run of that length (training/forecast.py)
DECAY_FRACTION = 0.2
_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """'90s', '10m', '1.5h' (or a bare number of seconds) -> seconds; anything else is a one-line error."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text).lower())
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"time_budget '{text}' can't be parsed: give a positive number with s, m or h, e.g. 90s, "
                          f"10m or 1.5h")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


class TimeBudget:
    """The deadline and the current estimate of the run's total steps (read by the schedule, set by the callback)."""

    def __init__(self, seconds: float, start: float | None = None, warmup_steps: int = 0):
        self.seconds = seconds
        self.start = time.time() if start is None else start
        self.deadline = self.start + seconds
        self.warmup_steps = warmup_steps
        self.total_steps = 10 ** 9  # unknown until measured; the schedule stays in warmup until then
        self.measured = False
        # work still to come besides the run's own steps (--forecast's cooled-down copies): steps as a share of
        # the run's total, and seconds
        self.reserve_share = 0.0
        # seconds that work reserved that way has taken so far, between two steps: not an evaluation's or a
        # checkpoint's cost (a copy made at a checkpoint's step was once timed as the checkpoint's: 20 s a save)
        self.aside_s = 0.0
        self.reserve_s = 0.0

    def remaining(self) -> float:
        return self.deadline - time.time()


def decay_factor(done: int, steps: int, floor: float = 0.0) -> float:
    """The learning rate's factor at the `done`-th of a cool-down's `steps` steps (1-based): linear to `floor`."""
    return 1.0 - (1.0 - floor) * min(max(done / max(steps, 1), 0.0), 1.0)


def decay_steps(total: int) -> int:
    """warmup_stable_decay's cool-down steps in a run of `total` steps."""
    return max(round(DECAY_FRACTION * total), 1)


def budget_schedule(optimizer, budget: TimeBudget, kind: str, min_lr_rate: float = 0.0):
    """A LambdaLR whose length is `budget.total_steps`, read at every step: linear warmup, then cosine (to
    min_lr_rate), linear decay, constant, or constant then a linear cool-down over the last DECAY_FRACTION of the
    steps (warmup_stable_decay, to min_lr_rate)."""
    from torch.optim.lr_scheduler import LambdaLR

    if kind not in BUDGET_SCHEDULES:
        raise ConfigError(f"--time_budget works with the schedules {', '.join(BUDGET_SCHEDULES)}; got "
                          f"'{kind}' (its length must follow the measured number of steps)")
    floor = min_lr_rate if kind in ("cosine_with_min_lr", "warmup_stable_decay") else 0.0

    def factor(step: int) -> float:
        total = max(budget.total_steps, 1)
        warmup = min(budget.warmup_steps, max(total // 10, 1)) if budget.measured else budget.warmup_steps
        if step < warmup:
            return (step + 1) / max(warmup, 1)
        if kind == "constant_with_warmup":
            return 1.0
        if kind == "warmup_stable_decay":
            # the last step (index total - 1) is the cool-down's last
            cool = decay_steps(total)
            return decay_factor(step - (total - cool) + 1, cool, floor)
        # the optimizer's last step (index total - 1) gets the final rate
        progress = min(max((step - warmup + 1) / max(total - warmup, 1), 0.0), 1.0)
        if kind == "linear":
            return 1.0 - progress
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


class BudgetCallback(TrainerCallback):
    """Keeps `budget.total_steps` at what fits before the deadline and stops the run at that step.

    Measured as the run goes: the median time of a training step, and the wall time of each evaluation block
    (evaluation plus samples) and checkpoint between two steps. Future evaluations and checkpoints are counted at
    their measured cost, and room is kept for the final evaluation and the saved folder."""

    def __init__(self, budget: TimeBudget, probe_steps: int = 5, every: int = 10, eval_sequences: int | None = None):
        self.budget, self.probe_steps, self.every = budget, probe_steps, every
        self.eval_sequences = eval_sequences  # the held-out set's size, for the final evaluation's cost
        self.step_times: list[float] = []
        self.eval_s: list[float] = []
        self.save_s: list[float] = []
        self._begin = self._end = None
        self._aside = 0.0  # budget.aside_s at the last step's end
        self._evaluated = self._saved = False

    def on_step_begin(self, args, state, control, **kwargs):
        now = time.perf_counter()
        if self._end is not None and (self._evaluated or self._saved):
            # what ran between the two steps: evaluation + samples, and/or a checkpoint, less the reserved work
            gap = now - self._end - (self.budget.aside_s - self._aside)
            (self.eval_s if self._evaluated else self.save_s).append(gap)
        self._evaluated = self._saved = False
        self._begin = now

    def on_evaluate(self, args, state, control, **kwargs):
        self._evaluated = True

    def on_save(self, args, state, control, **kwargs):
        self._saved = True

    def on_step_end(self, args, state, control, **kwargs):
        self._end, self._aside = time.perf_counter(), self.budget.aside_s
        if self._begin is not None:
            self.step_times.append(self._end - self._begin)
        # estimate after `probe_steps` steps, or sooner when steps are slow (a step over 2% of the budget: five of
        # them would spend a tenth of it before the first estimate)
        ready = len(self.step_times) >= self.probe_steps or sum(self.step_times) > 0.02 * self.budget.seconds
        if ready and (not self.budget.measured or state.global_step % self.every == 0):
            self._estimate(args, state, kwargs.get("model"))
        if self.budget.measured and state.global_step >= self.budget.total_steps and \
                state.global_step % self.every != 0:
            # measure again before stopping, from the last few steps: the machine may have been slow when the
            # last estimate was made (start-up, another process) and faster since
            self._estimate(args, state, kwargs.get("model"), window=5)
        if self.budget.measured and state.global_step >= self.budget.total_steps:
            control.should_training_stop = True
            control.should_save = False  # the stage saves the final model itself
            control.should_evaluate = False  # and evaluates it once, after training
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        """Trainer counts the samples of the whole schedule from args.max_steps, lifted to 10^9 under a budget:
        its train_samples_per_second came out at ~10^8. Put right from the steps actually trained per second
        (what Trainer measures right) times the global batch, in the logs and in the saved log history."""
        if logs and "train_samples_per_second" in logs and "train_steps_per_second" in logs:
            batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(args.world_size, 1)
            logs["train_samples_per_second"] = round(logs["train_steps_per_second"] * batch, 3)
            if state.log_history and "train_samples_per_second" in state.log_history[-1]:
                state.log_history[-1]["train_samples_per_second"] = logs["train_samples_per_second"]

    def _guess_eval(self, args, step_s: float) -> float:
        """Before any evaluation was timed: a forward pass costs about a third of a training step per sequence
        (x1.5 for safety), plus a second for the samples and the bookkeeping (less in a budget under 20 s: a
        fixed reserve would eat a short run, such as a 10 s one); unknown size: 20 steps."""
        if self.eval_sequences is None:
            return step_s * 20
        per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps
        return 1.5 * step_s * self.eval_sequences / max(per_step, 1) / 3 + min(1.0, 0.05 * self.budget.seconds)

    @staticmethod
    def _guess_save(model) -> float:
        """Before any checkpoint was timed: weights and AdamW's two moments (12 bytes a parameter) at ~200 MB/s,
        plus 0.2 s (a 0.3M-parameter folder saves in ~0.1 s on a 2-core CPU)."""
        if model is None:
            return 2.0
        return 0.2 + 12 * model.num_parameters() / 200e6

    def _estimate(self, args, state, model=None, window: int = 50) -> None:
        recent = statistics.median(self.step_times[-window:])  # robust to a slow step
        eval_cost = max(self.eval_s) if self.eval_s else self._guess_eval(args, recent)
        save_cost = max(self.save_s) if self.save_s else self._guess_save(model)
        # the strategies are str enums: equal to their plain names
        eval_every = args.eval_steps if args.eval_strategy != "no" and args.eval_steps else None
        save_every = args.save_steps if args.save_strategy != "no" and args.save_steps else None
        per_step = recent + (eval_cost / eval_every if eval_every else 0) + (save_cost / save_every if save_every
                                                                            else 0)
        # the final evaluation with samples, the folder, its plot and cards (a smaller fixed part in a short budget)
        final = eval_cost + 2 * save_cost + min(2.0, 0.1 * self.budget.seconds)
        # the run's total T: its (T - now) steps at per_step each, and reserve_share * T extra steps at the bare step
        # time (copies cooled down on the way), in what is left
        left = max(self.budget.remaining() - final - self.budget.reserve_s, 0)
        total = int((left + state.global_step * per_step) / (per_step + self.budget.reserve_share * recent))
        total = max(total, state.global_step)
        first = not self.budget.measured
        self.budget.total_steps, self.budget.measured = total, True
        state.max_steps = max(total, state.global_step)  # progress and ETA follow the estimate
        if first:
            logger.info("time budget %s: %.3f s per step measured, about %d steps fit (re-estimated every %d steps; "
                        "the schedule ends at the last one)", fmt_duration(self.budget.seconds), recent, total,
                        self.every)
