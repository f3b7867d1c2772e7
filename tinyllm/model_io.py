"""What every stage shares: loading a model folder, resume, the output guard, precision, and recovery.

- `load_model_folder` / `load_tokenizer`: the one way a saved folder is read (safetensors only, no remote code).
- `prepare_run`: resume target, output guard, Hub token kept out of saved arguments, device policy, seed.
- `train_with_recovery`: `trainer.train()` with out-of-memory retries, NaN stops and Ctrl+C checkpoints.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from tinyllm.errors import ConfigError, TinyLLMError, first_line

__all__ = ["Interrupted", "RunSetup", "final_evaluation", "load_tokenizer", "resolve_model_path", "check_model_folder",
           "load_model_folder",
           "find_last_checkpoint", "resolve_resume", "check_checkpoint_matches", "prepare_run",
           "train_with_recovery", "context_length"]

logger = logging.getLogger(__name__)


class Interrupted(TinyLLMError):
    """Training was stopped by Ctrl+C/SIGTERM after saving a checkpoint."""

    exit_code = 130


# ---------------------------------------------------------------- model folders

def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    p = Path(path)
    if not p.is_dir():
        raise ConfigError(f"tokenizer folder not found: {path}; train one with tokenizer_training/train_tokenizer.py "
                          f"or leave tokenizer_name_or_path empty to train one now")
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except Exception as exc:  # many error types for broken files
        raise ConfigError(f"cannot load a tokenizer from {path} ({first_line(exc, 150)}); it needs tokenizer.json "
                          f"and tokenizer_config.json") from None


def resolve_model_path(name_or_path: str) -> str:
    """A local folder as is; a Hub id ("org/name") is downloaded once (safetensors, configs and tokenizer files
    only: never pickled weights or code) into the Hugging Face cache. Offline, one line says what to do."""
    p = Path(name_or_path).expanduser()
    if p.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") != 1:
        return str(p)
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name_or_path, allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.txt",
                                                              "*.model", "tokenizer*"])
    except Exception as exc:  # offline, unknown repo, gated repo, ...: many types
        raise ConfigError(f"could not get '{name_or_path}' from the Hugging Face Hub ({first_line(exc, 150)}); "
                          f"check the id and your connection, or download it elsewhere and pass the local folder"
                          ) from None


def check_model_folder(path: str | Path) -> dict:
    """Refuse, with one line each, what is not a loadable causal LM folder; return its config.json."""
    p = Path(path)
    if not p.is_dir():
        raise ConfigError(f"model folder not found: {path}; train one first (recipes/pretrain.py) or fix the path")
    if not (p / "config.json").is_file():
        if (p / "adapter_config.json").is_file():
            raise ConfigError(f"{path} holds a LoRA adapter only; use the merged model folder (the adapter's "
                              f"parent, written by tinyllm sft) or merge it with peft first")
        raise ConfigError(f"{path} has no config.json: not a saved model folder")
    try:
        cfg = json.loads((p / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}/config.json is not valid JSON ({first_line(exc)}); the folder is damaged") from None
    if cfg.get("auto_map"):
        raise ConfigError(f"{path} needs custom code from the checkpoint (auto_map in config.json); tinyllm never "
                          f"runs code from a checkpoint (trust_remote_code stays off)")
    archs = cfg.get("architectures") or []
    if archs and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        raise ConfigError(f"{path} is not a causal language model ({', '.join(archs)}); use a decoder-only model "
                          f"such as GPT-2 or Llama")
    if not any(p.glob("*.safetensors")):
        raise ConfigError(f"{path} has no .safetensors weights; tinyllm loads safetensors only (never pickled .bin)")
    return cfg


def load_model_folder(path: str | Path, device: str | None = None, dtype=None, tokenizer: bool = True):
    """(model, tokenizer) from a saved folder with plain transformers: safetensors only, no remote code, fp32
    unless `dtype` says otherwise. `device=None` leaves the model on the CPU."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from tinyllm.modeling import check_vocab

    check_model_folder(path)
    tok = None
    try:
        if tokenizer:
            tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
            check_vocab(tok, AutoConfig.from_pretrained(path, trust_remote_code=False), str(path))
        model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, trust_remote_code=False,
                                                     dtype=dtype or torch.float32)
    except (ConfigError, KeyboardInterrupt):
        raise
    except Exception as exc:  # truncated/corrupt files raise many types
        raise ConfigError(f"cannot load the model in {path}: {first_line(exc)}") from None
    if device:
        model.to(device)
    return model, tok


def context_length(config) -> int | None:
    """The model's context window (max_position_embeddings for Llama, n_positions for GPT-2)."""
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


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

    from tinyllm.device import apply_precision_policy
    from tinyllm.io import check_output_dir

    resume = resolve_resume(args.resume_from_checkpoint, args.output_dir)
    check_output_dir(args.output_dir, args.overwrite_output_dir, resume=resume is not None)
    token, args.hub_token = args.hub_token, None  # never saved in training_args.bin or logged
    push, args.push_to_hub = args.push_to_hub, False  # we push the final folder ourselves, once
    device_line = apply_precision_policy(args)
    if device_line.startswith("device: cpu"):
        args.dataloader_pin_memory = False  # pinning needs an accelerator; avoids a warning per epoch
    set_seed(args.seed)
    return RunSetup(resume, push, token, device_line)


# ---------------------------------------------------------------- training with recovery

def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


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
    from tinyllm.training.callbacks import NonFiniteLossError

    if resume and args.max_steps > 0 and _checkpoint_step(resume) >= args.max_steps:
        return _already_finished(make_trainer, model, resume, args.max_steps)
    interrupt.install()
    try:
        for attempt in range(max_halvings + 1):
            trainer = make_trainer(model)
            try:
                result = trainer.train(resume_from_checkpoint=resume)
                if interrupt.interrupted:
                    raise Interrupted(f"{interrupt.interrupted}: stopped at step {trainer.state.global_step}; "
                                      f"checkpoint saved to {find_last_checkpoint(args.output_dir)}. Resume with the "
                                      f"same command plus --resume_from_checkpoint true")
                return trainer, result
            except NonFiniteLossError as exc:
                raise TinyLLMError(str(exc)) from None
            except (RuntimeError, MemoryError) as exc:
                if not _is_oom(exc):
                    raise
                batch = args.per_device_train_batch_size
                if attempt == max_halvings or batch == 1:
                    raise TinyLLMError(f"out of memory even at per_device_train_batch_size={batch}; lower "
                                       f"--block_size, use a smaller --preset, or --precision bf16") from None
                args.per_device_train_batch_size = batch // 2
                args.gradient_accumulation_steps *= 2
                logger.warning("out of memory at batch %d: retrying with batch %d x accumulation %d (same global "
                               "batch). Set these in your config to skip this search next time.", batch,
                               args.per_device_train_batch_size, args.gradient_accumulation_steps)
                del trainer
                import gc

                import torch

                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                model = reload_model()
        raise AssertionError("unreachable")
    finally:
        interrupt.uninstall()
