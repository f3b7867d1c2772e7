"""The one way a saved model folder is read: safetensors only, no code from the checkpoint.

- `resolve_model_path`: a local folder as it is, or a Hub id downloaded once (safetensors and configs only).
- `check_model_folder`: one-line refusals for what is not a loadable causal LM folder.
- `load_model_folder` / `load_tokenizer`: plain transformers classes, `trust_remote_code=False`.
"""

from __future__ import annotations

import json
from pathlib import Path

from tinyllm.errors import ConfigError, first_line
from tinyllm.modeling import check_vocab

__all__ = ["load_tokenizer", "resolve_model_path", "check_model_folder", "load_model_folder", "context_length"]


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
                          f"and tokenizer_config.json") from exc


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
                          ) from exc


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
        raise ConfigError(f"{path}/config.json is not valid JSON ({first_line(exc)}); the folder is damaged") from exc
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
        raise ConfigError(f"cannot load the model in {path}: {first_line(exc)}") from exc
    if device:
        model.to(device)
    return model, tok


def context_length(config) -> int | None:
    """The model's context window (max_position_embeddings for Llama, n_positions for GPT-2)."""
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
