"""The speedrun's sizing stages: the shares of the budget, the probe and the plan, the check of the corpus's epochs,
and the flags of `tinyllm pretrain` that carry it out (with --forecast: the final loss predicted on the way). A mixin of
speedrun.Speedrun, which holds the run's state and runs the commands (`state`, `stage`, `done`, `finish`, `command`,
`save`, `left`, `elapsed`, `total`, `sp`, `device`, `sft_name`, `out`, `eval_max_tokens`, `data_flags`); the rule
itself, pure arithmetic, is sizing.py's."""

from __future__ import annotations

import math
import time
from pathlib import Path

from tinyllm.errors import ConfigError, DataError
from tinyllm.training import sizing
from tinyllm.training.forecast import COPIES_SHARE
from tinyllm.training.probe import measure_speeds, micro_batch_for

__all__ = ["SizingStages", "MIN_PRETRAIN_STEPS", "KEEP_BEST_EPOCHS", "FORECAST_COST", "ceil_budget"]

MIN_PRETRAIN_STEPS = 150
# the share of the pretraining's training time its --forecast takes (copies cooled down at 10/20/40% of the steps,
# each for a quarter of the steps before it: COPIES_SHARE = 0.175 of the run's steps on top of them)
FORECAST_COST = COPIES_SHARE / (1 + COPIES_SHARE)
# the pretraining command's own start-up (imports, data, model) and final evaluation and save, in seconds: 0.4-1.2 s
# for the calibration runs of the 2/5/15-minute grid (docs/speedrun.md)
PRETRAIN_OVERHEAD_S = 1.5
# the trainer's tokens per second over the probe's bare loop: 0.75-1.19 (median 0.91) on the 2/5/15-minute grid's
# nine runs, 0.77 on a 2-minute built-in run of 3x96 with 13 sequences a step (docs/speedrun.md). The lowest: a
# batch sized on a faster guess gives fewer steps than TARGET_STEPS (928 instead of ~1,160 there), more does not
TRAINER_SPEED = 0.75
# past this many epochs the pretraining run is evaluated on the way and keeps its best weights: the 800 KB
# TinyStories slice given 5 minutes (4x128, 13.5 epochs) ended worse than given 2 minutes (docs/speedrun.md)
KEEP_BEST_EPOCHS = 4.0
KEEP_BEST_EVALUATIONS = 6


class SizingStages:
    """The sizing stages of speedrun.Speedrun (see the module's docstring for what they use of it)."""

    def shares(self) -> dict:
        """Seconds for what follows the probe, from what is left now."""
        left = self.left()
        sft = 0.2 * left if self.sft_name else 0.0
        # measured on a 2-core CPU (benchmarks/speedrun_grid.py): eval ~1 s for these models (a bounded held-out
        # set, 50 questions with SFT), export ~0.1 s
        evaluation = max(2.0, 0.01 * self.total) + (max(1.0, 0.005 * self.total) if self.sft_name else 0.0)
        export = max(1.0, 0.005 * self.total) if self.sp.export_gguf else 0.0
        pretrain = left - sft - evaluation - export - 0.005 * self.total
        return {"pretrain": pretrain, "sft": sft, "eval": evaluation, "export": export}

    def plan(self, corpus: dict) -> dict:
        if self.done("plan"):
            return self.state["plan"]
        started = time.time()
        shares = self.shares()
        max_width = 512 if self.device in ("cpu", "mps") else 768
        speeds = measure_speeds(sizing.shape_ladder(max_width), corpus["vocab_size"], self.sp.tokenizer_type,
                                self.device, max(shares["pretrain"], 1.0))
        self.finish("probe", started, speeds={s.name: round(v) for s, v in speeds.items()})
        shares = self.shares()  # the probe took some of the time
        # the seconds that train: the pretraining's share less its start-up, final evaluation and forecast, at
        # TRAINER_SPEED of the probe's tokens per second
        training_s = max(shares["pretrain"] - PRETRAIN_OVERHEAD_S, 1.0) * (1 - FORECAST_COST) * TRAINER_SPEED
        choice = sizing.choose(speeds, training_s, corpus["train_tokens"], self.sp.tokenizer_type, self.sp.max_epochs)
        smallest = min(speeds, key=lambda s: s.non_embedding_params())
        need = MIN_PRETRAIN_STEPS * sizing.tokens_per_step(0, sizing.block_size_for(
            smallest, self.sp.tokenizer_type)) / speeds[smallest]
        if shares["pretrain"] < need:
            minimum = self.elapsed() + need + sum(v for k, v in shares.items() if k != "pretrain") + 5
            raise ConfigError(f"time_budget {self.sp.time_budget} is too small for even the smallest model here: "
                              f"give at least {ceil_budget(minimum)} (the fixed stages took {self.elapsed():.0f} s, "
                              f"{MIN_PRETRAIN_STEPS} steps of {smallest.name} need {need:.0f} s)")
        plan = {"choice": choice.to_dict(), "shares": {k: round(v, 1) for k, v in shares.items()},
                "train_tokens": corpus["train_tokens"], "vocab_size": corpus["vocab_size"], "device": self.device}
        self.state["plan"] = plan
        self.stage("plan")["done"] = True
        self.save()
        return plan

    def check_epochs(self, plan: dict) -> None:
        c = plan["choice"]
        if c["capped"]:
            # the budget whose pretraining share trains max_epochs (the plan's seconds are those of the capped tokens)
            needed = c["seconds"] / ((1 - FORECAST_COST) * TRAINER_SPEED) + PRETRAIN_OVERHEAD_S + \
                (self.total - plan["shares"]["pretrain"])
            raise DataError(f"the corpus is too small for {self.sp.time_budget}: {plan['train_tokens']:,} tokens would "
                            f"be repeated ~{c['epochs']:.0f} epochs (capped at {self.sp.max_epochs:g}: repeats beyond "
                            f"add almost nothing); give more text, --time_budget {ceil_budget(needed)}, or "
                            f"--max_epochs {math.ceil(c['epochs'])}")

    def pretrain_flags(self, shape: sizing.Shape, block: int, lr: float, per_step: int, steps: int,
                       tokenizer_dir: Path, folder: Path, seconds: float, epochs: float | None = None) -> list:
        """`tinyllm pretrain`'s flags for this shape: warmup, a held rate and a linear cool-down over the last fifth
        of the steps that fit (warmup_stable_decay, to zero), the final held-out loss forecast from copies cooled
        down at 10/20/40% of them (--forecast, training/forecast.py). A run that repeats the corpus more than
        KEEP_BEST_EPOCHS times is evaluated KEEP_BEST_EVALUATIONS times on the way and keeps its best weights
        (--keep_best): it may overfit before the end."""
        keep = bool(epochs and epochs > KEEP_BEST_EPOCHS)
        evals = ["--eval_steps", max(steps // KEEP_BEST_EVALUATIONS, 10), "--keep_best", "true"] if keep else \
            ["--eval_steps", 10 ** 6]
        seqs = max(per_step // block, 1)
        micro = max(d for d in range(1, min(micro_batch_for(self.device, block), seqs) + 1) if seqs % d == 0)
        return [*self.data_flags(), "--tokenizer_name_or_path", tokenizer_dir, "--model_type", "llama",
                "--preset", "nano", "--n_layer", shape.n_layer, "--n_head", shape.n_head, "--n_embd", shape.n_embd,
                "--block_size", block, "--per_device_train_batch_size", micro,
                "--gradient_accumulation_steps", max(per_step // (micro * block), 1),
                "--learning_rate", f"{lr:.3g}", "--warmup_steps", max(min(steps // 20, 100), 5),
                "--time_budget", f"{max(seconds, 1):.0f}s", "--lr_scheduler_type", "warmup_stable_decay",
                "--lr_scheduler_kwargs", '{"min_lr_ratio": 0.0}', "--forecast", "true", *evals, "--logging_steps",
                max(steps // 40, 5), "--eval_max_tokens", self.eval_max_tokens,
                "--report_to", "none", "--precision", self.sp.precision, "--seed", self.sp.seed,
                "--output_dir", folder]


def ceil_budget(seconds: float) -> str:
    if seconds <= 90:
        return f"{math.ceil(seconds / 5) * 5:.0f}s"
    return f"{math.ceil(seconds / 60):.0f}m"
