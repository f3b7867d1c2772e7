"""Trainer additions: derived metrics (perplexity, bits per byte), tokens/s, samples at each evaluation, NaN
detection and a "training doctor" that explains, in plain words, what looks wrong and what to try."""

from __future__ import annotations

import logging
import math
import sys
import time

from transformers import Trainer, TrainerCallback

from tinyllm.formatting import fmt_clock
from tinyllm.inference.generation import generate_text
from tinyllm.modeling import eval_mode
from tinyllm.training.budget import budget_schedule
from tinyllm.training.chunked_loss import chunked_causal_lm_loss, worth_chunking
from tinyllm.training.recovery import NonFiniteLossError

__all__ = ["TinyTrainer", "ProgressLogger", "SampleCallback", "DoctorCallback", "InterruptCallback",
           "KeepBestCallback"]

logger = logging.getLogger(__name__)


class TinyTrainer(Trainer):
    """Trainer that adds perplexity, bits per byte/char and tokens per second to its logs, and reports progress
    with tinyllm's ProgressLogger (a bar on a terminal, plain lines in a log file) instead of transformers'."""

    def __init__(self, *args, tokens_per_step: int = 0, eval_tokens_per_byte: float | None = None,
                 eval_tokens_per_char: float | None = None, entropy_floor: float | None = None, budget=None,
                 **kwargs):
        self.budget = budget  # a training.budget.TimeBudget: the schedule's length follows the measured steps
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        super().__init__(*args, **kwargs)
        self.remove_callback(ProgressCallback)
        self.remove_callback(PrinterCallback)
        self.add_callback(ProgressLogger())
        self.tokens_per_step = tokens_per_step
        self.eval_tokens_per_byte = eval_tokens_per_byte
        self.eval_tokens_per_char = eval_tokens_per_char
        self.entropy_floor = entropy_floor
        self._last = None  # (time, step) of the previous training log

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.budget is None:
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            kwargs = self.args.lr_scheduler_kwargs or {}
            self.lr_scheduler = budget_schedule(optimizer or self.optimizer, self.budget,
                                                str(getattr(self.args.lr_scheduler_type, "value",
                                                            self.args.lr_scheduler_type)),
                                                kwargs.get("min_lr_rate", kwargs.get("min_lr_ratio", 0.0)))
        return self.lr_scheduler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Training on a large vocabulary: the loss over chunks of tokens (training/chunked_loss.py), never the
        whole logits tensor; otherwise, and for evaluation, Trainer's own."""
        head = self.accelerator.unwrap_model(model).get_output_embeddings()
        if (return_outputs or not model.training or "labels" not in inputs or head is None or self.args.torch_compile
                or self.label_smoother is not None or not worth_chunking(self.model, inputs["input_ids"])):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, _ = chunked_causal_lm_loss(model, head, inputs, num_items_in_batch if self.model_accepts_loss_kwargs
                                         else None)
        if self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs \
                and num_items_in_batch is not None:  # as Trainer.compute_loss scales the model's own loss
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        return loss

    def log(self, logs: dict, start_time: float | None = None) -> None:
        if "eval_loss" in logs and math.isfinite(logs["eval_loss"]):
            loss = logs["eval_loss"]
            logs["eval_perplexity"] = round(math.exp(min(loss, 50)), 4)
            if self.eval_tokens_per_byte:
                logs["eval_bits_per_byte"] = round(loss / math.log(2) * self.eval_tokens_per_byte, 4)
            if self.eval_tokens_per_char:
                logs["eval_bits_per_char"] = round(loss / math.log(2) * self.eval_tokens_per_char, 4)
            if self.entropy_floor is not None:
                logs["entropy_floor_bits_per_char"] = round(self.entropy_floor, 4)
        if "loss" in logs and self.tokens_per_step:
            now, step = time.perf_counter(), self.state.global_step
            if self._last is not None and step > self._last[1]:
                rate = (step - self._last[1]) * self.tokens_per_step / (now - self._last[0])
                logs["tokens_per_second"] = round(rate, 1)
            self._last = (now, step)
        super().log(logs, start_time)


class ProgressLogger(TrainerCallback):
    """Progress with ETA: a tqdm bar (loss, tokens/s) when stderr is a terminal; when it is not (a log file, CI,
    nohup), one plain line per logging step instead of carriage-return fragments."""

    def __init__(self):
        self.bar = None
        self.start = None
        self.tty = sys.stderr.isatty()

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()
        if state.is_world_process_zero and self.tty and not args.disable_tqdm:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="training", dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if "loss" in logs:
            rate = logs.get("tokens_per_second")
            if self.bar is not None:
                post = {"loss": f"{logs['loss']:.3f}"}
                if rate:
                    post["tok/s"] = f"{rate:,.0f}"
                self.bar.set_postfix(post, refresh=False)
                return
            elapsed = time.perf_counter() - (self.start or time.perf_counter())
            done = max(state.global_step, 1)
            eta = elapsed / done * max(state.max_steps - state.global_step, 0)
            logger.info("step %d/%d (%.0f%%) | loss %.4f%s | elapsed %s | ETA %s", state.global_step, state.max_steps,
                        100 * state.global_step / max(state.max_steps, 1), logs["loss"],
                        f" | {rate:,.0f} tok/s" if rate else "", fmt_clock(elapsed), fmt_clock(eta))
        elif "eval_loss" in logs:
            shown = ", ".join(f"{k[5:]} {v:.4f}" for k, v in logs.items() if k.startswith("eval_") and
                              isinstance(v, float) and "runtime" not in k and "per_second" not in k)
            (self.bar.write if self.bar is not None else logger.info)(f"step {state.global_step} validation: {shown}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class SampleCallback(TrainerCallback):
    """Generate a few samples at each evaluation so users watch gibberish turn into words. Sampling runs in a
    forked RNG so training's random stream (dropout, shuffling) is the same with or without samples."""

    def __init__(self, tokenizer, prompts: list[str], max_new_tokens: int = 64, seed: int = 0):
        self.tokenizer = tokenizer
        self.prompts = prompts
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        self.history: list[tuple[int, list[str]]] = []

    def samples(self, model) -> list[str]:
        import torch

        out = []
        devices = [model.device] if model.device.type == "cuda" else []
        with eval_mode(model), torch.random.fork_rng(devices=devices):
            for i, prompt in enumerate(self.prompts):
                torch.manual_seed(self.seed + i)
                text = generate_text(model, self.tokenizer, prompt, max_new_tokens=self.max_new_tokens,
                                     do_sample=True, temperature=0.8, top_k=50)
                out.append(prompt + text)
        return out

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero or model is None or getattr(args, "fsdp", None):
            return
        texts = self.samples(model)
        self.history.append((state.global_step, texts))
        shown = "\n".join(f"  [{i}] {t[:300]!r}" for i, t in enumerate(texts))
        logger.info("samples at step %d:\n%s", state.global_step, shown)


class DoctorCallback(TrainerCallback):
    """Plain-words diagnosis while training: NaN/inf, loss not decreasing, overfitting."""

    def __init__(self, learning_rate: float, patience_fraction: float = 0.3):
        self.lr = learning_rate
        self.patience_fraction = patience_fraction
        self.train_losses: list[tuple[int, float]] = []
        self.eval_losses: list[tuple[int, float]] = []
        self.warned: set[str] = set()
        self.messages: list[str] = []

    def _say(self, key: str, text: str) -> None:
        if key not in self.warned:
            self.warned.add(key)
            self.messages.append(text)
            logger.warning("doctor: %s", text)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        loss = logs.get("loss")
        if loss is not None:
            if not math.isfinite(loss):
                control.should_training_stop = True
                control.should_save = False
                raise NonFiniteLossError(
                    f"the training loss became {loss} at step {state.global_step}: the run is stopped and no final "
                    f"model is saved. Try --learning_rate {self.lr / 10:g} (10x lower), keep --max_grad_norm 1.0, "
                    f"and use fp32 or bf16 rather than fp16; resume with --resume_from_checkpoint true")
            self.train_losses.append((state.global_step, loss))
            self._check_plateau(state)
        if "eval_loss" in logs:
            self.eval_losses.append((state.global_step, logs["eval_loss"]))
            self._check_overfit()

    def _check_plateau(self, state) -> None:
        if not state.max_steps or state.global_step < self.patience_fraction * state.max_steps:
            return
        if len(self.train_losses) < 6:
            return
        first = sum(x for _, x in self.train_losses[:3]) / 3
        last = sum(x for _, x in self.train_losses[-3:]) / 3
        if last > first * 0.98:
            self._say("plateau", f"the loss has not decreased ({first:.3f} -> {last:.3f}) after "
                                 f"{state.global_step} steps: try --learning_rate {self.lr / 10:g} (10x lower), "
                                 f"check the data, or a smaller model")

    def _check_overfit(self) -> None:
        if len(self.eval_losses) < 3 or len(self.train_losses) < 2:
            return
        e = [x for _, x in self.eval_losses[-3:]]
        step_prev = self.eval_losses[-3][0]
        t_before = [x for s, x in self.train_losses if s <= step_prev]
        if e[0] < e[1] < e[2] and t_before and self.train_losses[-1][1] < t_before[-1]:
            self._say("overfit", f"validation loss is rising ({e[0]:.3f} -> {e[2]:.3f}) while training loss falls: "
                                 f"the model is memorising. Use more data, --dropout 0.1, or fewer --max_steps")


class InterruptCallback(TrainerCallback):
    """Ctrl+C or SIGTERM: finish the current step, save a checkpoint, stop cleanly. A second signal aborts."""

    def __init__(self):
        self.interrupted: str | None = None
        self._previous = {}

    def install(self) -> None:
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, frame):
        import signal

        if self.interrupted:  # second signal: stop now
            self.uninstall()
            raise KeyboardInterrupt
        self.interrupted = signal.Signals(signum).name
        logger.warning("%s received: saving a checkpoint after this step, then stopping (press Ctrl+C again to "
                       "abort without saving)", self.interrupted)

    def on_step_end(self, args, state, control, **kwargs):
        if self.interrupted:
            control.should_save = True
            control.should_training_stop = True


class KeepBestCallback(TrainerCallback):
    """--keep_best: a copy, on the CPU, of the weights at the lowest validation loss of the run's evaluations, to
    put back after training when the last weights are worse (a small corpus repeated many times overfits: its
    held-out loss turns up before the end). With --forecast the copies cooled down on the way are offered too: a
    cooled-down copy is a finished run of that length, better than the run's own weights at a held learning rate, and
    in a run that overfits after it, better than the end. A full copy per process: DDP's replicas, not FSDP's or
    DeepSpeed's shards (arguments.check_keep_best refuses those)."""

    def __init__(self):
        self.best_loss = math.inf
        self.best_step: int | None = None
        self.best_copy: str | None = None  # what the best weights are when not the run's own: a cooled-down copy
        self.weights: dict | None = None

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        loss = (metrics or {}).get("eval_loss")
        if loss is not None and model is not None:
            self.offer(loss, model, state.global_step)

    def offer(self, loss: float, model, step: int, copy: str | None = None) -> bool:
        """`model`'s weights scored `loss` at `step` (`copy`: what they are, when not the run's own): kept when they
        are the best so far."""
        if not loss < self.best_loss:
            return False
        self.best_loss, self.best_step, self.best_copy = loss, step, copy
        self.weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        return True

    def restore_if_better(self, model, last_loss: float, last_step: int) -> bool:
        """Put the best weights back when they are better than the last (`last_loss` at `last_step`)."""
        if self.weights is None or (self.best_step == last_step and self.best_copy is None) or \
                not self.best_loss < last_loss:
            return False
        model.load_state_dict(self.weights)
        return True
