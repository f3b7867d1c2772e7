"""Training recovery, shared by every training stage: resume, the run's setup, and `trainer.train()` that turns
the failures users hit into actions and plain words.

- `prepare_run`: resume target, output guard, Hub token kept out of saved arguments, device line, seed.
- `train_with_recovery`: out-of-memory retries (accelerate's test of the error, then half the micro-batch), NaN
  stops, Ctrl+C/SIGTERM checkpoints.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from tinyllm.device import describe_device
from tinyllm.errors import ConfigError, TinyLLMError
from tinyllm.io import check_output_dir

__all__ = ["Interrupted", "NonFiniteLossError", "RunSetup", "final_evaluation", "find_last_checkpoint",
           "resolve_resume", "check_checkpoint_matches", "prepare_run", "train_with_recovery"]

logger = logging.getLogger(__name__)


class Interrupted(TinyLLMError):
    """Training was stopped by Ctrl+C/SIGTERM after saving a checkpoint."""

    exit_code = 130


class NonFiniteLossError(RuntimeError):
    """Raised by the training doctor (callbacks.DoctorCallback) when the loss is NaN/inf; turned into a one-line
    TinyLLMError by train_with_recovery."""


# ---------------------------------------------------------------- resume

def find_last_checkpoint(output_dir: str) -> str | None:
    """Newest *complete* checkpoint: a folder killed mid-write lacks trainer_state.json (written last) or weights."""
    root = Path(output_dir)
    if not root.is_dir():
        return None
    cands = []
    for d in root.glob("checkpoint-*"):
        try:
            step = int(d.name.split("-")[-1])
        except ValueError:
            continue
        if (d / "trainer_state.json").is_file() and any(d.glob("*.safetensors")) and (d / "optimizer.pt").is_file():
            try:
                json.loads((d / "trainer_state.json").read_text())
            except (json.JSONDecodeError, OSError):
                continue
            cands.append((step, d))
    return str(max(cands)[1]) if cands else None


def resolve_resume(value, output_dir: str) -> str | None:
    if value in (None, "", False, "false", "False"):
        return None
    if value in (True, "true", "True"):
        last = find_last_checkpoint(output_dir)
        if last is None:
            raise ConfigError(f"--resume_from_checkpoint true: no complete checkpoint in {output_dir}; start without "
                              f"it, or give a checkpoint folder path")
        return last
    if not Path(value).is_dir():
        raise ConfigError(f"checkpoint not found: {value}; give an existing checkpoint-N folder or 'true' for the "
                          f"newest")
    return str(value)


def check_checkpoint_matches(checkpoint: str, model) -> None:
    """Refuse to resume from a checkpoint of another architecture or shape (it would fail deep inside torch)."""
    cfg_path = Path(checkpoint) / "config.json"
    if not cfg_path.is_file():
        return
    ckpt = json.loads(cfg_path.read_text())
    ours = model.config.to_dict()
    for key in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size", "n_embd", "n_layer"):
        if key in ckpt and key in ours and ckpt[key] != ours[key]:
            raise ConfigError(f"checkpoint {checkpoint} has {key}={ckpt[key]} but this run's model has {ours[key]}; "
                              f"resume with the config that produced it, or start a new --output_dir")


def _checkpoint_step(checkpoint: str) -> int:
    try:
        return int(json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"])
    except (OSError, ValueError, KeyError):
        return -1


# ---------------------------------------------------------------- run setup

@dataclass
class RunSetup:
    resume: str | None  # checkpoint to resume from
    push: bool  # push the final folder to the Hub
    hub_token: str | None  # kept here, out of the saved training arguments and the environment
    device_line: str  # the device/precision policy, logged at start


def prepare_run(args) -> RunSetup:
    """What every training stage does first: resolve the checkpoint to resume, refuse to clobber outputs, keep
    the Hub token out of saved arguments and logs, apply the device/precision policy, and seed."""
    from transformers import set_seed

    resume = resolve_resume(args.resume_from_checkpoint, args.output_dir)
    check_output_dir(args.output_dir, args.overwrite_output_dir, resume=resume is not None)
    token, args.hub_token = args.hub_token, None  # never saved in training_args.bin or logged
    push, args.push_to_hub = args.push_to_hub, False  # we push the final folder ourselves, once
    _check_shared_output(args, resume)
    device_line = describe_device(args)  # the policy itself ran when the arguments were built
    if device_line.startswith("device: cpu"):
        args.dataloader_pin_memory = False  # pinning needs an accelerator; avoids a warning per epoch
    set_seed(args.seed)
    return RunSetup(resume, push, token, device_line)


def _check_shared_output(args, resume: str | None) -> None:
    """Several machines: checkpoints are written by the main process only, so a machine that cannot see the
    output folder could not resume. Each machine looks for a file the main process wrote there; where it is
    missing, that machine's first process saves its own copies (save_on_each_node), said in one line."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= int(os.environ.get("LOCAL_WORLD_SIZE", str(world))):
        return
    from accelerate import PartialState

    state = PartialState()
    out = Path(args.output_dir).resolve()
    # beside the output folder, not in it: another process may be checking that the folder is empty right now
    marker = out.parent / f".{out.name}.tinyllm-shared-{os.environ.get('MASTER_PORT', '0')}"
    if state.is_main_process:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("written by the main process to see which machines share this folder\n")
    state.wait_for_everyone()
    if not marker.is_file() and not args.save_on_each_node:
        args.save_on_each_node = True
        if state.is_local_main_process:
            logger.warning("%s is not shared with the main machine: this machine keeps its own checkpoints "
                           "(save_on_each_node); resume needs each machine's folder in place", args.output_dir)
    state.wait_for_everyone()
    if state.is_main_process:
        marker.unlink(missing_ok=True)


# ---------------------------------------------------------------- training with recovery

def _is_oom(exc: BaseException) -> bool:
    """accelerate's test of an out-of-memory error (CUDA, MPS, XPU and the CPU allocator), or Python's own."""
    from accelerate.utils.memory import should_reduce_batch_size

    return isinstance(exc, MemoryError) or should_reduce_batch_size(exc)


def _already_finished(make_trainer, model, resume: str, max_steps: int):
    """Resuming from the final checkpoint (a kill between it and the final save): transformers would take one
    extra optimizer step, so load the checkpoint's weights and state through public APIs instead of training."""
    from transformers import AutoModelForCausalLM, TrainerState
    from transformers.trainer_utils import TrainOutput

    loaded = AutoModelForCausalLM.from_pretrained(resume, use_safetensors=True, trust_remote_code=False,
                                                  dtype=next(model.parameters()).dtype)
    model.load_state_dict(loaded.state_dict())
    trainer = make_trainer(model)
    trainer.state = TrainerState.load_from_json(str(Path(resume) / "trainer_state.json"))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    last = losses[-1] if losses else float("nan")
    logger.info("%s already reached max_steps=%d: nothing left to train", resume, max_steps)
    return trainer, TrainOutput(trainer.state.global_step, last, {"train_runtime": 0.0, "train_loss": last})


def final_evaluation(trainer) -> dict:
    """The validation metrics of the trained model: Trainer's own evaluation at the last step when it made one
    (a step-based schedule evaluates at the end), else a fresh trainer.evaluate(). Evaluating twice would also
    sample twice: seconds of a short run."""
    state = trainer.state
    for entry in reversed(state.log_history):
        if "eval_loss" in entry:
            if entry.get("step") == state.global_step:
                return {k: v for k, v in entry.items() if k.startswith("eval_") or k == "epoch"}
            break
    return trainer.evaluate()


def train_with_recovery(make_trainer, model, args, resume, interrupt, reload_model, max_halvings: int = 4):
    """trainer.train() with the failure modes users hit, turned into actions and plain words:
    out-of-memory halves the micro-batch and doubles gradient accumulation (same global batch) and retries;
    a NaN/inf loss stops without saving a final model; Ctrl+C/SIGTERM saves a checkpoint and raises Interrupted
    with the resume command."""
    if resume and args.max_steps > 0 and _checkpoint_step(resume) >= args.max_steps:
        return _already_finished(make_trainer, model, resume, args.max_steps)
    from accelerate.utils.memory import clear_device_cache

    interrupt.install()
    try:
        for attempt in range(max_halvings + 1):
            trainer = make_trainer(model)
            try:
                with warnings.catch_warnings():
                    # a LoRA checkpoint of a model whose embeddings SFT grew (ChatML added) keeps the grown rows:
                    # peft decides so and warns; tinyllm logged the growth when it made it
                    warnings.filterwarnings("ignore", message="Setting `save_embedding_layers` to `True`",
                                            category=UserWarning)
                    result = trainer.train(resume_from_checkpoint=resume)
                if interrupt.interrupted:
                    raise Interrupted(f"{interrupt.interrupted}: stopped at step {trainer.state.global_step}; "
                                      f"checkpoint saved to {find_last_checkpoint(args.output_dir)}. Resume with the "
                                      f"same command plus --resume_from_checkpoint true")
                return trainer, result
            except NonFiniteLossError as exc:
                raise TinyLLMError(str(exc)) from exc
            except (RuntimeError, MemoryError) as exc:
                if not _is_oom(exc):
                    raise
                batch = args.per_device_train_batch_size
                if attempt == max_halvings or batch == 1:
                    raise TinyLLMError(f"out of memory even at per_device_train_batch_size={batch}; lower "
                                       f"--block_size, use a smaller --preset, or --precision bf16") from exc
                args.per_device_train_batch_size = batch // 2
                args.gradient_accumulation_steps *= 2
                logger.warning("out of memory at batch %d: retrying with batch %d x accumulation %d (same global "
                               "batch). Set these in your config to skip this search next time.", batch,
                               args.per_device_train_batch_size, args.gradient_accumulation_steps)
                del trainer
                clear_device_cache(garbage_collection=True)  # accelerate's: CUDA, MPS, XPU, NPU alike
                model = reload_model()
        raise AssertionError("unreachable")
    finally:
        interrupt.uninstall()
