"""Report cards: `report.md` in every run folder, rendered from the run's `RunSummary`.

A run folder keeps what its report needs in `run_summary.json` (written by the training stage: the RunSummary,
final metrics, tokenizer report, samples, validation curve) and `eval_results.json` (written by `tinyllm eval`);
`report.md` is rendered from those two files, so it is rewritten whenever either changes. `tinyllm report`
(evaluation/compare.py) reads the same RunSummary of several runs.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinyllm.formatting import fmt_value

__all__ = ["RunSummary", "write_run_report", "render_report", "find_runs", "load_run", "SUMMARY_FILE", "EVAL_FILE"]

SUMMARY_FILE = "run_summary.json"
EVAL_FILE = "eval_results.json"


@dataclass
class RunSummary:
    """What every training stage reports about its run; the report card, the model card and `tinyllm report`
    read these fields (never display strings)."""

    stage: str  # pretrain, sft, ...
    architecture: str
    parameters: int
    steps: int
    training_seconds: float
    base_model: str | None = None  # the model the stage started from (None: random weights)
    tokens_seen: int | None = None  # tokens through the model in training (SFT: prompt + answer tokens)
    final_train_loss: float | None = None
    validation_loss: float | None = None  # pretrain: held-out text; SFT: held-out answer tokens
    validation_bits_per_byte: float | None = None
    details: dict[str, Any] = field(default_factory=dict)  # the stage's own rows for the cards, label -> value

    _LABELS = {"stage": "stage", "architecture": "architecture", "base_model": "base model",
               "parameters": "parameters", "tokens_seen": "tokens seen", "steps": "steps",
               "final_train_loss": "final train loss", "validation_loss": "final validation loss",
               "validation_bits_per_byte": "validation bits per byte", "training_seconds": "training time (s)"}

    def rows(self) -> dict[str, Any]:
        """The summary table: common fields first (missing ones left out), then the stage's own rows."""
        out = {label: getattr(self, name) for name, label in self._LABELS.items() if getattr(self, name) is not None}
        return {**out, **self.details}

    @classmethod
    def from_dict(cls, d: dict) -> RunSummary:
        """From run_summary.json. Folders written before RunSummary existed hold the display table itself."""
        names = {f.name for f in dataclasses.fields(cls)}
        if "stage" in d:
            return cls(**{k: v for k, v in d.items() if k in names})
        by_label = {label: name for name, label in cls._LABELS.items()}
        known = {by_label[k]: v for k, v in d.items() if k in by_label}
        known.setdefault("stage", "pretrain")
        for name in ("architecture", "parameters", "steps", "training_seconds"):
            known.setdefault(name, None)
        return cls(**known, details={k: v for k, v in d.items() if k not in by_label})


def _curve(log_history: list[dict], tokens_per_step: int | None) -> list[list[float]]:
    """[tokens seen, validation bits per byte] at each evaluation."""
    out = []
    for h in log_history:
        if "eval_bits_per_byte" in h and "step" in h:
            out.append([h["step"] * (tokens_per_step or 0), h["eval_bits_per_byte"]])
    return out


def write_run_report(staging: Path, final: Path, *, summary: RunSummary, metrics: dict,
                     tok_report: dict | None = None, samples: list[str] | None = None,
                     log_history: list[dict] | None = None, tokens_per_step: int | None = None,
                     data: dict | None = None, seed: int | None = None) -> None:
    """Write run_summary.json and report.md into `staging` (the folder that becomes `final`). `data` (the run's
    DataArguments) and `seed` let `tinyllm eval` score the same held-out documents the run validated on."""
    kept = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) or v is None}
    record = {"name": final.name, "data": data, "seed": seed, "summary": dataclasses.asdict(summary),
              "metrics": kept, "tokenizer": tok_report, "samples": samples or [], "tokens_per_step": tokens_per_step,
              "validation_curve": _curve(log_history or [], tokens_per_step)}
    text = json.dumps(record, indent=2, default=str, ensure_ascii=False) + "\n"
    (staging / SUMMARY_FILE).write_text(text, encoding="utf-8")
    evals = final / EVAL_FILE  # an earlier `tinyllm eval` of a run being resumed
    render_report(staging, evals_from=evals if evals.is_file() else None)


def load_run(folder: Path) -> tuple[dict, RunSummary | None]:
    """(the run_summary.json record, its RunSummary) of a run folder; ({}, None) when it has none."""
    path = Path(folder) / SUMMARY_FILE
    if not path.is_file():
        return {}, None
    record = json.loads(path.read_text(encoding="utf-8"))
    return record, RunSummary.from_dict(record["summary"]) if record.get("summary") else None


def _tokenizer_section(tok: dict | None) -> list[str]:
    if not tok:
        return []
    lines = ["## Tokenizer", "", f"- {tok.get('tokenizer_type')} tokenizer, vocab {tok.get('vocab_size')}, "
             f"trained in {tok.get('train_seconds')} s on {tok.get('dataset_name')}", ""]
    rows = ([("all", tok["heldout"])] if tok.get("heldout") else []) + list((tok.get("per_language") or {}).items())
    if rows:
        lines += ["| held-out slice | chars/token | bytes/token |", "|---|---:|---:|"]
        lines += [f"| {k} | {v['chars_per_token']} | {v['bytes_per_token']} |" for k, v in rows]
        lines.append("")
    return lines


def _eval_section(evals: dict | None) -> list[str]:
    if not evals:
        return ["## Evaluation", "", "Not evaluated yet: `tinyllm eval --model THIS_FOLDER`.", ""]
    lines = ["## Evaluation", "", "| task | metric | value | chance |", "|---|---|---:|---:|"]
    for r in evals.get("results", []):
        lines.append(f"| {r['task']} | {r['metric']} | {fmt_value(r['value'])} | {fmt_value(r.get('chance'))} |")
    return lines + [""]


def render_report(folder: Path, evals_from: Path | None = None) -> Path:
    """(Re)write folder/report.md from run_summary.json and eval_results.json."""
    folder = Path(folder)
    run, summary = load_run(folder)
    evals_path = evals_from or folder / EVAL_FILE
    evals = json.loads(evals_path.read_text(encoding="utf-8")) if evals_path.is_file() else None
    lines = [f"# Report card: {run.get('name', folder.name)}", ""]
    if summary is not None:
        lines += ["## Run", "", "| | |", "|---|---|"]
        lines += [f"| {k} | {fmt_value(v)} |" for k, v in summary.rows().items()] + [""]
    if (folder / "loss_curve.png").exists():
        lines += ["![loss curve](loss_curve.png)", ""]
    lines += _tokenizer_section(run.get("tokenizer"))
    lines += _eval_section(evals)
    if run.get("samples"):
        lines += ["## Samples", ""] + [f"```\n{s}\n```\n" for s in run["samples"][:4]]
    path = folder / "report.md"
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return path


def find_runs(root: Path) -> list[Path]:
    root = Path(root)
    if (root / SUMMARY_FILE).is_file():
        return [root]
    return sorted(p.parent for p in root.glob(f"*/{SUMMARY_FILE}"))
