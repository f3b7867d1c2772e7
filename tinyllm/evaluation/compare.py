"""`tinyllm report RUNS`: the runs in a folder side by side, one Markdown table and one plot of validation bits per
byte against tokens seen. Every column is a RunSummary field, so pretraining and SFT runs fill the same table."""

from __future__ import annotations

import json
from pathlib import Path

from tinyllm.errors import ConfigError
from tinyllm.evaluation.report import EVAL_FILE, SUMMARY_FILE, find_runs, load_run
from tinyllm.formatting import fmt_value
from tinyllm.hub import save_figure
from tinyllm.usage_config import ReportArguments

__all__ = ["run_report"]

_COLUMNS = [("stage", "stage"), ("parameters", "parameters"), ("tokens_seen", "tokens seen"), ("steps", "steps"),
            ("training_seconds", "time (s)"), ("validation_loss", "val loss"),
            ("validation_bits_per_byte", "val bits/byte")]


def run_report(args: ReportArguments) -> Path:
    """`tinyllm report RUNS`: one Markdown table of the runs found under RUNS and one plot of their validation bits
    per byte against tokens seen."""
    runs = find_runs(Path(args.runs))
    if not runs:
        raise ConfigError(f"no run folders under {args.runs} (a run folder has {SUMMARY_FILE}, written by tinyllm "
                          f"pretrain, sft, dpo and grpo); give the folder that holds your runs")
    data = [(p, *load_run(p)) for p in runs]
    evals = {p: json.loads((p / EVAL_FILE).read_text()) if (p / EVAL_FILE).is_file() else {} for p in runs}
    eval_cols = sorted({f"{r['task']} {r['metric']}" for e in evals.values() for r in e.get("results", [])})
    header = ["run", "architecture"] + [c[1] for c in _COLUMNS] + eval_cols
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for p, _run, s in data:
        ev = {f"{r['task']} {r['metric']}": r["value"] for r in evals[p].get("results", [])}
        row = [p.name, s.architecture if s else ""] + [fmt_value(getattr(s, k, None)) for k, _ in _COLUMNS] + \
              [fmt_value(ev.get(c)) for c in eval_cols]
        lines.append("| " + " | ".join(row) + " |")
    out = Path(args.output) if args.output else (Path(args.runs) / "comparison.md")
    plot = out.with_suffix(".png")
    text = f"# Runs in {args.runs}\n\n" + "\n".join(lines) + "\n"
    if _plot_curves(data, plot):
        text += f"\n![validation bits per byte]({plot.name})\n"
    out.write_text(text, encoding="utf-8")
    print(text)
    print(f"Written to {out}")
    return out


def _plot_curves(data, path: Path) -> bool:
    curves = [(p.name, run["validation_curve"]) for p, run, _ in data if run.get("validation_curve")]
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for name, pts in curves:
        ax.plot([x for x, _ in pts], [y for _, y in pts], "o-", label=name)
    save_figure(fig, ax, path, "tokens seen", "validation bits per byte", "validation bits per byte (lower is better)")
    return True

