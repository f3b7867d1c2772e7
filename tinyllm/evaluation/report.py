"""Report cards: `report.md` in every run folder, and `tinyllm report RUNS/` to compare runs side by side.

A run folder keeps what its report needs in `run_summary.json` (written by the training stage: summary table,
final metrics, tokenizer report, samples, validation curve) and `eval_results.json` (written by `tinyllm eval`);
`report.md` is rendered from those two files, so it is rewritten whenever either changes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

__all__ = ["write_run_report", "render_report", "run_report", "find_runs"]

logger = logging.getLogger(__name__)
SUMMARY_FILE = "run_summary.json"
EVAL_FILE = "eval_results.json"


def _curve(log_history: list[dict], tokens_per_step: int | None) -> list[list[float]]:
    """[tokens seen, validation bits per byte] at each evaluation."""
    out = []
    for h in log_history:
        if "eval_bits_per_byte" in h and "step" in h:
            out.append([h["step"] * (tokens_per_step or 0), h["eval_bits_per_byte"]])
    return out


def write_run_report(staging: Path, final: Path, *, summary: dict, metrics: dict, tok_report: dict | None = None,
                     samples: list[str] | None = None, log_history: list[dict] | None = None,
                     tokens_per_step: int | None = None, data: dict | None = None, seed: int | None = None) -> None:
    """Write run_summary.json and report.md into `staging` (the folder that becomes `final`). `data` (the run's
    DataArguments) and `seed` let `tinyllm eval` score the same held-out documents the run validated on."""
    kept = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) or v is None}
    record = {"name": final.name, "data": data, "seed": seed, "summary": summary, "metrics": kept,
            "tokenizer": tok_report, "samples": samples or [], "tokens_per_step": tokens_per_step,
            "validation_curve": _curve(log_history or [], tokens_per_step)}
    text = json.dumps(record, indent=2, default=str, ensure_ascii=False) + "\n"
    (staging / SUMMARY_FILE).write_text(text, encoding="utf-8")
    evals = final / EVAL_FILE  # an earlier `tinyllm eval` of a run being resumed
    render_report(staging, evals_from=evals if evals.is_file() else None)


def _fmt(v) -> str:
    from tinyllm.hub import fmt_value

    return fmt_value(v)


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
        lines.append(f"| {r['task']} | {r['metric']} | {_fmt(r['value'])} | {_fmt(r.get('chance'))} |")
    return lines + [""]


def render_report(folder: Path, evals_from: Path | None = None) -> Path:
    """(Re)write folder/report.md from run_summary.json and eval_results.json."""
    folder = Path(folder)
    summary_path = folder / SUMMARY_FILE
    run = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
    evals_path = evals_from or folder / EVAL_FILE
    evals = json.loads(evals_path.read_text(encoding="utf-8")) if evals_path.is_file() else None
    lines = [f"# Report card: {run.get('name', folder.name)}", ""]
    if run.get("summary"):
        lines += ["## Run", "", "| | |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in run["summary"].items()] + [""]
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


_COLUMNS = [("parameters", "parameters"), ("tokens seen", "tokens seen"), ("steps", "steps"),
            ("training time (s)", "time (s)"), ("final validation loss", "val loss"),
            ("validation bits per byte", "val bits/byte")]


def run_report(args) -> Path:
    """`tinyllm report RUNS`: one Markdown table of the runs found under RUNS and one plot of their validation bits
    per byte against tokens seen."""
    from tinyllm.errors import ConfigError

    runs = find_runs(Path(args.runs))
    if not runs:
        raise ConfigError(f"no run folders under {args.runs} (a run folder has {SUMMARY_FILE}, written by tinyllm "
                          f"pretrain and sft); give the folder that holds your runs")
    data = [(p, json.loads((p / SUMMARY_FILE).read_text(encoding="utf-8"))) for p in runs]
    evals = {p: json.loads((p / EVAL_FILE).read_text()) if (p / EVAL_FILE).is_file() else {} for p in runs}
    eval_cols = sorted({f"{r['task']} {r['metric']}" for e in evals.values() for r in e.get("results", [])})
    header = ["run", "architecture"] + [c[1] for c in _COLUMNS] + eval_cols
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for p, run in data:
        s = run.get("summary", {})
        ev = {f"{r['task']} {r['metric']}": r["value"] for r in evals[p].get("results", [])}
        row = [p.name, s.get("architecture", "")] + [_fmt(s.get(k)) for k, _ in _COLUMNS] + \
              [_fmt(ev.get(c)) for c in eval_cols]
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
    curves = [(p.name, run["validation_curve"]) for p, run in data if run.get("validation_curve")]
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for name, pts in curves:
        ax.plot([x for x, _ in pts], [y for _, y in pts], "o-", label=name)
    from tinyllm.hub import save_figure

    save_figure(fig, ax, path, "tokens seen", "validation bits per byte", "validation bits per byte (lower is better)")
    return True
