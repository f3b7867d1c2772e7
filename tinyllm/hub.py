"""Hub-ready output folders: safetensors, configs, generation config, tokenizer + chat template, model card
with metadata and a loss curve, and an optional push to the Hugging Face Hub."""

from __future__ import annotations

import json
import logging
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

from tinyllm.errors import TinyLLMError, first_line
from tinyllm.formatting import fmt_value

__all__ = ["make_generation_config", "save_model_folder", "plot_loss", "CardInfo", "write_model_card",
           "push_folder", "check_finite", "hardware_summary"]

logger = logging.getLogger(__name__)


def make_generation_config(tokenizer, args, eos_ids: list[int] | None = None):
    """Sampling defaults tuned per recipe (args.gen_*) and the token ids generation needs; pad falls back to eos
    for tokenizers without a pad token (GPT-2's)."""
    from transformers import GenerationConfig

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return GenerationConfig(
        do_sample=True, temperature=args.gen_temperature, top_k=args.gen_top_k, top_p=args.gen_top_p,
        repetition_penalty=args.gen_repetition_penalty, max_new_tokens=args.gen_max_new_tokens,
        bos_token_id=tokenizer.bos_token_id, pad_token_id=pad,
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


def plot_loss(log_history: list[dict], path: Path, floor_nats: float | None = None, title: str = "",
              forecast: dict | None = None) -> bool:
    """Training and validation loss against steps, with the corpus entropy floor when known and, for a run with
    --forecast, its cooled-down copies, the curve through them and the forecast at the last step."""
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
    if forecast and forecast.get("points"):
        ax.plot([p["steps"] for p in forecast["points"]], [p["loss"] for p in forecast["points"]], "s",
                color="tab:green", label="copies cooled down (validation)")
        if forecast.get("curve") and forecast.get("forecast"):
            ax.plot(*zip(*forecast["curve"]), "--", color="tab:green", label="curve through them")
            ax.plot([forecast["forecast"]["total_steps"]], [forecast["forecast"]["loss"]], "*", ms=12,
                    color="tab:red", label=f"forecast {forecast['forecast']['loss']:.3f}")
        if forecast.get("revision"):
            r = forecast["revision"]
            ax.plot([r["total_steps"]], [r["loss"]], "P", ms=10, color="tab:purple",
                    label=f"revised at step {r['at_step']:,}: {r['loss']:.3f}")
    save_figure(fig, ax, path, "step", "loss (nats / token)", title or "loss curve")
    return True


def save_figure(fig, ax, path: Path, xlabel: str, ylabel: str, title: str) -> None:
    """Label, grid, legend, save and close a matplotlib figure (every plot tinyllm writes looks the same)."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


@dataclass
class CardInfo:
    """What the model card says: title, description, usage, a training summary table and eval results."""

    name: str
    title: str
    description: str
    usage_prompt: str
    summary: dict
    datasets: list[str] = field(default_factory=list)
    license: str = "apache-2.0"
    chat: bool = False
    base_model: str | None = None
    # [{"task": ..., "dataset": ..., "metric": ..., "value": ...}] -> the card's model-index metadata
    eval_results: list[dict] = field(default_factory=list)


_CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

{{ description }}

Trained with tinyllm on the Hugging Face stack (transformers `Trainer`, `accelerate`).
It is a standard `{{ architecture }}` checkpoint in safetensors: no custom code, `trust_remote_code` is not needed.

## Use

{{ usage }}

Sampling defaults tuned for this model are in `generation_config.json`.

## Training summary

| | |
|---|---|
{{ rows }}
{{ plot }}{{ evals }}
## Limitations

A small model trained from scratch: it imitates the style of its training data and makes up facts. Do not rely on
its output.
"""


def _usage(name: str, prompt: str, chat: bool) -> str:
    head = f"```python\nfrom transformers import pipeline\n\npipe = pipeline(\"text-generation\", model=\"{name}\")\n"
    p = json.dumps(prompt, ensure_ascii=False)
    if chat:
        return head + (f"messages = [{{\"role\": \"user\", \"content\": {p}}}]\n"
                       "print(pipe(messages)[0][\"generated_text\"][-1][\"content\"])\n```")
    return head + f"print(pipe({p})[0][\"generated_text\"])\n```"


def write_model_card(folder: Path, card: CardInfo) -> None:
    """README.md through huggingface_hub's ModelCard: metadata (library, pipeline tag, license, datasets, base
    model, model-index eval results the Hub renders) and a readable training summary."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    hub_ids = [d for d in card.datasets if "/" in d and not os.path.exists(d)]
    base = card.base_model if card.base_model and "/" in card.base_model and not os.path.exists(card.base_model) \
        else None
    results = [EvalResult(task_type="text-generation", task_name=r.get("task_name"), dataset_type=r["dataset"],
                          dataset_name=r["dataset"], metric_type=r["metric"], metric_name=r.get("metric_name"),
                          metric_value=r["value"]) for r in card.eval_results]
    data = ModelCardData(library_name="transformers", pipeline_tag="text-generation", license=card.license,
                         tags=["tinyllm", "text-generation"], datasets=hub_ids or None, base_model=base,
                         model_name=card.name, eval_results=results or None)
    evals = ""
    if card.eval_results:
        evals = "\n## Evaluation\n\n| task | dataset | metric | value |\n|---|---|---|---:|\n" + "\n".join(
            f"| {r.get('task_name') or ''} | {r['dataset']} | {r.get('metric_name') or r['metric']} | "
            f"{fmt_value(r['value'])} |"
            for r in card.eval_results) + "\n"
    text = ModelCard.from_template(
        data, template_str=_CARD_TEMPLATE, title=card.title, description=card.description,
        architecture=card.summary.get("architecture", "transformers"),
        usage=_usage(card.name, card.usage_prompt, card.chat),
        rows="\n".join(f"| {k} | {fmt_value(v)} |" for k, v in card.summary.items()),
        plot="\n![loss curve](loss_curve.png)\n" if (folder / "loss_curve.png").exists() else "", evals=evals)
    (folder / "README.md").write_text(str(text), encoding="utf-8")


def save_model_folder(model, tokenizer, generation_config, folder: Path) -> None:
    """model.safetensors + config.json + generation_config.json + tokenizer files (with the chat template)."""
    check_finite(model)
    model.config.use_cache = True  # Trainer turns the KV cache off for training; generation wants it on
    model.generation_config = generation_config
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def push_folder(folder: Path, repo_id: str | None, private: bool | None = None, token: str | None = None) -> str:
    """Upload a saved folder (without checkpoints and logs) to the Hub. The token comes from the environment
    (HF_TOKEN) or `hf auth login`, never from a config file."""
    if not repo_id:
        raise TinyLLMError("push_to_hub needs --hub_model_id your-name/model-name")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder),
                                 ignore_patterns=["checkpoint-*/**", "runs/**", ".*", "training_args.bin"],
                                 commit_message="Upload model trained with tinyllm")
    except Exception as exc:  # network, auth and HTTP errors come in many types
        raise TinyLLMError(f"could not push {folder} to the Hub repo '{repo_id}': {first_line(exc)}. The model is "
                           f"saved "
                           f"locally; check your network and `hf auth login`, then run: hf upload {repo_id} {folder}")
    return str(getattr(info, "commit_url", "") or f"https://huggingface.co/{repo_id}")
