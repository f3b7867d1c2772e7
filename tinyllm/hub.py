"""Hub-ready output folders: safetensors, configs, generation config, tokenizer + chat template, model card
with metadata and a loss curve, and an optional push to the Hugging Face Hub."""

from __future__ import annotations

import json
import logging
import os
import platform
from pathlib import Path

from .errors import TinyLLMError

__all__ = ["make_generation_config", "save_model_folder", "plot_loss", "write_model_card", "push_folder",
           "check_finite", "hardware_summary"]

logger = logging.getLogger(__name__)


def make_generation_config(tokenizer, args, eos_ids: list[int] | None = None):
    from transformers import GenerationConfig

    return GenerationConfig(
        do_sample=True, temperature=args.gen_temperature, top_k=args.gen_top_k, top_p=args.gen_top_p,
        repetition_penalty=args.gen_repetition_penalty, max_new_tokens=args.gen_max_new_tokens,
        bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos_ids or [tokenizer.eos_token_id],
    )


def check_finite(model) -> None:
    import torch

    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise TinyLLMError(f"parameter {name} has NaN/inf values; refusing to save a broken model. Lower the "
                               f"learning rate 10x or resume from an earlier checkpoint")


def hardware_summary() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return f"Apple MPS ({platform.machine()})"
    return f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


def plot_loss(log_history: list[dict], path: Path, floor_nats: float | None = None, title: str = "") -> bool:
    """Training and validation loss against steps, with the corpus entropy floor when known."""
    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h and "step" in h]
    if not train and not evals:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train loss", color="tab:blue")
    if evals:
        ax.plot(*zip(*evals), "o-", label="validation loss", color="tab:orange")
    if floor_nats is not None:
        ax.axhline(floor_nats, ls="--", color="gray", label="corpus entropy floor")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(title or "loss curve")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and v >= 10_000:
        return f"{v:,}"
    return str(v)


def write_model_card(folder: Path, *, name: str, title: str, datasets: list[str], license: str, summary: dict,
                     description: str, usage_prompt: str, chat: bool = False, base_model: str | None = None) -> None:
    """README.md with Hub metadata (library_name, pipeline_tag, datasets, license) and a training summary."""
    meta = ["---", "library_name: transformers", "pipeline_tag: text-generation", f"license: {license}",
            "tags:", "- tinyllm", "- text-generation"]
    hf_datasets = [d for d in datasets if "/" in d and not os.path.exists(d)]
    if hf_datasets:
        meta += ["datasets:"] + [f"- {d}" for d in hf_datasets]
    if base_model and "/" in base_model and not os.path.exists(base_model):
        meta += [f"base_model: {base_model}"]
    meta += ["---", ""]
    rows = "\n".join(f"| {k} | {_fmt(v)} |" for k, v in summary.items())
    if chat:
        usage = ("```python\nfrom transformers import pipeline\n\n"
                 f"pipe = pipeline(\"text-generation\", model=\"{name}\")\n"
                 f"messages = [{{\"role\": \"user\", \"content\": {json.dumps(usage_prompt, ensure_ascii=False)}}}]\n"
                 "print(pipe(messages)[0][\"generated_text\"][-1][\"content\"])\n```")
    else:
        usage = ("```python\nfrom transformers import pipeline\n\n"
                 f"pipe = pipeline(\"text-generation\", model=\"{name}\")\n"
                 f"print(pipe({json.dumps(usage_prompt, ensure_ascii=False)})[0][\"generated_text\"])\n```")
    plot = "\n![loss curve](loss_curve.png)\n" if (folder / "loss_curve.png").exists() else ""
    text = "\n".join(meta) + f"""# {title}

{description}

Trained with tinyllm on the Hugging Face stack (transformers `Trainer`, `accelerate`).
It is a standard `{summary.get('architecture', 'transformers')}` checkpoint in safetensors: no custom code,
`trust_remote_code` is not needed.

## Use

{usage}

Sampling defaults tuned for this model are in `generation_config.json`.

## Training summary

| | |
|---|---|
{rows}
{plot}
## Limitations

A small model trained from scratch: it imitates the style of its training data and makes up facts. Do not rely on
its output.
"""
    (folder / "README.md").write_text(text, encoding="utf-8")


def save_model_folder(model, tokenizer, generation_config, folder: Path) -> None:
    """model.safetensors + config.json + generation_config.json + tokenizer files (with the chat template)."""
    check_finite(model)
    model.config.use_cache = True  # Trainer turns the KV cache off for training; generation wants it on
    model.generation_config = generation_config
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def push_folder(folder: Path, repo_id: str | None, private: bool | None = None) -> str:
    """Upload a saved folder (without checkpoints and logs) to the Hub. The token comes from the environment
    (HF_TOKEN) or `hf auth login`, never from a config file."""
    if not repo_id:
        raise TinyLLMError("push_to_hub needs --hub_model_id your-name/model-name")
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder),
                                 ignore_patterns=["checkpoint-*/**", "runs/**", ".*", "training_args.bin"],
                                 commit_message="Upload model trained with tinyllm")
    except Exception as exc:  # network, auth and HTTP errors come in many types
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TinyLLMError(f"could not push {folder} to the Hub repo '{repo_id}': {msg[:200]}. The model is saved "
                           f"locally; check your network and `hf auth login`, then run: hf upload {repo_id} {folder}")
    return str(getattr(info, "commit_url", "") or f"https://huggingface.co/{repo_id}")
