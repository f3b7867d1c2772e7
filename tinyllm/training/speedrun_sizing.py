"""The speedrun's sizing stages: the shares of the budget, the probe and the plan, the check of the corpus's epochs,
the two calibration runs and the plan again, and the flags of `tinyllm pretrain` that carry it out. A mixin of
speedrun.Speedrun, which holds the run's state and runs the commands (`state`, `stage`, `done`, `finish`, `command`,
`save`, `left`, `elapsed`, `total`, `sp`, `device`, `sft_name`, `out`, `eval_max_tokens`, `data_flags`); the rule
itself, pure arithmetic, is sizing.py's."""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

from tinyllm.errors import ConfigError, DataError
from tinyllm.training import sizing
from tinyllm.training.probe import measure_speeds, micro_batch_for

__all__ = ["SizingStages", "MIN_PRETRAIN_STEPS", "CALIBRATION_PARTS", "KEEP_BEST_EPOCHS", "ceil_budget"]

MIN_PRETRAIN_STEPS = 150
# the calibration stage's two runs, as parts of its time: two points of the loss curve, far enough apart in
# seconds to give its slope, the shorter still past the warmup
CALIBRATION_PARTS = (0.3, 0.7)
# past this many epochs the pretraining run is evaluated on the way and keeps its best weights: the 800 KB
# TinyStories slice given 5 minutes (4x128, 13.5 epochs) ended worse than given 2 minutes (docs/speedrun.md)
KEEP_BEST_EPOCHS = 4.0
KEEP_BEST_EVALUATIONS = 6


class SizingStages:
    """The sizing stages of speedrun.Speedrun (see the module's docstring for what they use of it)."""

    def shares(self, calibrated: bool = False) -> dict:
        """Seconds for what follows the probe (the calibration run once `calibrated`), from what is left now."""
        left = self.left()
        sft = 0.2 * left if self.sft_name else 0.0
        # measured on a 2-core CPU (benchmarks/speedrun_grid.py): eval ~1 s for these models (a bounded held-out
        # set, 50 questions with SFT), export ~0.1 s
        evaluation = max(2.0, 0.01 * self.total) + (max(1.0, 0.005 * self.total) if self.sft_name else 0.0)
        export = max(1.0, 0.005 * self.total) if self.sp.export_gguf else 0.0
        # two runs of the smallest shape, a quarter of what is left but at least 30 s (a third of a budget under ~2
        # minutes) and at most 120 s. Points at 5 and 14 s, still in the curve's steep start, predicted 2-minute
        # runs 12-24% off; at 6 and 20 s (12% of 5 minutes) 5-minute runs up to 14% off; the 15-minute runs' points at
        # 27 and 70 s predicted the 2- and 5-minute runs of the same corpora within 3.2% (docs/speedrun.md). On the
        # flat part of the curve the seconds taken from pretraining cost ~0.5% of its loss.
        calibrate = 0.0 if calibrated else min(max(0.25 * left, min(30.0, 0.3 * left)), 120.0)
        pretrain = left - sft - evaluation - export - calibrate - 0.005 * self.total
        return {"calibrate": calibrate, "pretrain": pretrain, "sft": sft, "eval": evaluation, "export": export}

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
        corpus_bytes = self.stage("tokenizer").get("corpus_bytes")
        # bytes per token until the calibration run measures it on held-out text: the corpus's size over its tokens
        # (a Hub dataset's size is not known before reading: ~4, English BPE)
        per_token = corpus_bytes / (corpus["train_tokens"] + corpus["eval_tokens"]) if corpus_bytes else 4.0
        choice = sizing.choose(speeds, shares["pretrain"] * 0.9, sizing.FIT, corpus["train_tokens"],
                               self.sp.tokenizer_type, self.sp.max_epochs, bytes_per_token=per_token)
        smallest = min(speeds, key=lambda s: s.non_embedding_params())
        need = MIN_PRETRAIN_STEPS * sizing.tokens_per_step(0, sizing.block_size_for(
            smallest, self.sp.tokenizer_type)) / speeds[smallest]
        if shares["pretrain"] < need:
            minimum = self.elapsed() + need + sum(v for k, v in shares.items() if k != "pretrain") + 5
            raise ConfigError(f"time_budget {self.sp.time_budget} is too small for even the smallest model here: "
                              f"give at least {ceil_budget(minimum)} (the fixed stages took {self.elapsed():.0f} s, "
                              f"{MIN_PRETRAIN_STEPS} steps of {smallest.name} need {need:.0f} s)")
        plan = {"choice": choice.to_dict(), "shares": {k: round(v, 1) for k, v in shares.items()},
                "train_tokens": corpus["train_tokens"], "vocab_size": corpus["vocab_size"], "device": self.device,
                "bytes_per_token": round(per_token, 3)}
        self.state["plan"] = plan
        self.stage("plan")["done"] = True
        self.save()
        return plan

    def check_epochs(self, plan: dict) -> None:
        c = plan["choice"]
        if c["capped"]:
            needed = c["seconds"] / 0.9 + (self.total - plan["shares"]["pretrain"])
            raise DataError(f"the corpus is too small for {self.sp.time_budget}: {plan['train_tokens']:,} tokens would "
                            f"be repeated ~{c['epochs']:.0f} epochs (capped at {self.sp.max_epochs:g}: repeats beyond "
                            f"add almost nothing); give more text, --time_budget {ceil_budget(needed)}, or "
                            f"--max_epochs {math.ceil(c['epochs'])}")

    def calibrate(self, plan: dict, tokenizer_dir: Path) -> dict:
        """The smallest shape (the most steps per second) trained twice with a full schedule on this corpus, for
        about a third and two thirds of the stage's time: the two held-out losses give this corpus's loss curve in
        training seconds (sizing.TimeCurve, the predicted loss), the longer run the trainer's real speed (the probe's
        bare loop runs faster than Trainer's step) and the held-out bytes per token. Then the plan again."""
        if self.done("calibrate"):
            return self.state["plan"]
        started = time.time()
        cands = [sizing.Candidate.from_dict(d) for d in plan["choice"]["candidates"]]
        small = min(cands, key=lambda x: x.params)
        block = sizing.block_size_for(small.shape, self.sp.tokenizer_type)
        folder = self.out / ".calibration"
        per_step = sizing.tokens_per_step(0, block)  # the fewest tokens per step: the most steps in the time
        runs = []
        for part in CALIBRATION_PARTS:
            run_started = time.time()
            flags = self.pretrain_flags(small.shape, block, sizing.lr_for_width(small.shape.n_embd), per_step, 200,
                                        tokenizer_dir, folder, part * plan["shares"]["calibrate"])
            self.command("calibrate", "pretrain", [*flags, "--save_steps", 10 ** 6, "--sample_max_new_tokens", 8,
                                                   "--overwrite_output_dir", "true"])
            m = json.loads((folder / "all_results.json").read_text())
            shutil.rmtree(folder, ignore_errors=True)
            tokens = m["time_budget_steps"] * per_step
            runs.append({"seconds": round(m["train_runtime"], 2), "loss": m["eval_loss"], "tokens": tokens,
                         "bits_per_byte": m.get("eval_bits_per_byte"),
                         "overhead_s": round(max(time.time() - run_started - m["train_runtime"], 0.0), 1),
                         "effective_s": round(sizing.effective_seconds(m["train_runtime"], tokens,
                                                                        plan["train_tokens"]), 2)})
        short, long = runs
        if long.get("bits_per_byte"):  # held-out bytes per token, measured: nats per token / nats per byte
            plan["bytes_per_token"] = round(long["loss"] / (math.log(2) * long["bits_per_byte"]), 3)
        # the curve in seconds, and the same two runs in parameters and tokens: what the corpus allows each shape
        # when its data runs out
        unique = plan["train_tokens"]
        curve, bound = sizing.through_calibration(short, long, small.params, unique, plan["bytes_per_token"])
        curve_info = {"E": round(curve.E, 4), "K": round(curve.K, 4), "g": curve.g,
                      "loss_model": {"E": round(bound.E, 4), "B": round(bound.B, 2)}}
        ratio = long["tokens"] / long["seconds"] / small.tokens_per_second
        self.finish("calibrate", started, planned_s=round(plan["shares"]["calibrate"], 1), shape=small.shape.name,
                    runs=runs, loss=long["loss"], tokens=long["tokens"], curve=curve_info,
                    trainer_tokens_per_s=round(long["tokens"] / long["seconds"]), probe_ratio=round(ratio, 3),
                    overhead_s=long["overhead_s"])
        # the plan again: every shape at the trainer's speed (the ratio measured here), this corpus's loss curve,
        # and the pretraining stage's own start-up and final evaluation (the calibration run's overhead) taken out
        shares = self.shares(calibrated=True)
        speeds = {x.shape: x.tokens_per_second * ratio for x in cands}
        choice = sizing.choose(speeds, max(shares["pretrain"] - long["overhead_s"], 1.0), bound, unique,
                               self.sp.tokenizer_type, self.sp.max_epochs, bytes_per_token=plan["bytes_per_token"],
                               curve=curve)
        # how much the prediction rests on the curve's exponent: the same two runs with g = 0.5 and 1.0 (two points
        # early on the curve, as in a short budget, leave a wide range)
        best = next(x for x in choice.candidates if x.shape == choice.shape)
        spread = [sizing.predicted_loss(best.params, best.tokens, best.tokens_per_second, unique, bound,
                                        sizing.through_calibration(short, long, small.params, unique,
                                                                   plan["bytes_per_token"], g)[0],
                                        plan["bytes_per_token"]) for g in sizing.EXPONENT_RANGE]
        plan.update({"choice": choice.to_dict(), "shares": {k: round(v, 1) for k, v in shares.items()},
                     "curve": {**curve_info, "predicted_range": [round(min(spread), 4), round(max(spread), 4)]}})
        self.state["plan"] = plan
        self.save()
        return plan

    def pretrain_flags(self, shape: sizing.Shape, block: int, lr: float, per_step: int, steps: int,
                       tokenizer_dir: Path, folder: Path, seconds: float, epochs: float | None = None) -> list:
        """`tinyllm pretrain`'s flags for this shape. A run that repeats the corpus more than KEEP_BEST_EPOCHS times
        is evaluated KEEP_BEST_EVALUATIONS times on the way and keeps its best weights (--keep_best): it may
        overfit before the end."""
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
                "--time_budget", f"{max(seconds, 1):.0f}s", *evals, "--logging_steps",
                max(steps // 40, 5), "--eval_max_tokens", self.eval_max_tokens,
                "--report_to", "none", "--precision", self.sp.precision, "--seed", self.sp.seed,
                "--output_dir", folder]


def ceil_budget(seconds: float) -> str:
    if seconds <= 90:
        return f"{math.ceil(seconds / 5) * 5:.0f}s"
    return f"{math.ceil(seconds / 60):.0f}m"
