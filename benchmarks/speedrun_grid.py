"""`tinyllm speedrun` against a hand grid given the same budget: budget kept, quality, prediction.

    TINYLLM_CORPUS_MIRROR=file:///path/to/shared/data python benchmarks/speedrun_grid.py \
        [--corpora builtin tiny_shakespeare tinystories] [--budgets 2m 5m 15m] [--grid_budgets 2m] \
        [--presets nano micro baby small] [--workdir /tmp/speedrun_grid]

Per corpus and budget:
- the speedrun, exactly as a user runs it (`tinyllm speedrun --dataset_name X --time_budget B`; char tokens for
  Tiny Shakespeare; the built-in corpus gets its SFT stage as by default): its wall time against the budget, the
  validation loss its pretraining forecast (at 40% of its steps, training/forecast.py) and revised where the
  cool-down began (at 80%), the loss achieved, and its pretrained model's held-out bits per byte;
- for the budgets in --grid_budgets, the hand grid: presets nano, micro, baby and small (each with its own context
  and the default 32 sequences per step) x learning rates 1e-3 and 3e-3, each `tinyllm pretrain --time_budget B`
  (the whole budget for pretraining alone), on the speedrun's own tokenizer, evaluated on the same held-out
  documents (--eval_max_tokens 65536) once at the end.
Runs are kept in WORKDIR/rows.jsonl (rerunning skips the ones done); prints the Markdown tables for RESULTS.md.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ["nano", "micro", "baby", "small"]
LRS = [1e-3, 3e-3]


def tinyllm(*args) -> tuple[float, int, str]:
    start = time.time()
    res = subprocess.run([sys.executable, "-m", "tinyllm", *map(str, args)], cwd=ROOT, capture_output=True, text=True)
    return time.time() - start, res.returncode, res.stderr[-2000:]


def seconds(budget: str) -> float:
    return float(budget[:-1]) * {"s": 1, "m": 60, "h": 3600}[budget[-1]]


def corpus_flags(corpus: str) -> list:
    return ["--tokenizer_type", "char"] if corpus == "tiny_shakespeare" else []


def speedrun(work: Path, corpus: str, budget: str) -> dict:
    out = work / f"speedrun_{corpus}_{budget}"
    wall, rc, err = tinyllm("speedrun", "--dataset_name", corpus, "--time_budget", budget, "--output_dir", out,
                            "--overwrite_output_dir", "true", *corpus_flags(corpus))
    if rc != 0:
        raise SystemExit(f"speedrun {corpus} {budget} failed:\n{err}")
    state = json.loads((out / "speedrun.json").read_text())
    c, pre = state["plan"]["choice"], state["stages"]["pretrain"]
    forecast = pre.get("forecast_loss")
    return {"kind": "speedrun", "corpus": corpus, "budget": budget, "wall_s": round(wall, 1),
            "budget_error": round(wall / seconds(budget) - 1, 4), "shape": c["shape"]["name"],
            "lr": c["learning_rate"], "batch": c["tokens_per_step"], "steps": pre.get("steps"),
            "predicted_loss": forecast, "forecast_at_step": pre.get("forecast_at_step"), "loss": pre["loss"],
            "prediction_error": round(forecast / pre["loss"] - 1, 4) if forecast else None,
            "revised_loss": pre.get("forecast_revised_loss"), "revised_at_step": pre.get("forecast_revised_at_step"),
            "bpb": pre["bits_per_byte"], "pretrain_s": pre["seconds"], "forecast_s": pre.get("forecast_seconds"),
            "tokenizer": str(out / "tokenizer")}


def hand(work: Path, corpus: str, budget: str, preset: str, lr: float, tokenizer: str) -> dict:
    out = work / f"hand_{corpus}_{budget}_{preset}_{lr:g}"
    wall, rc, err = tinyllm("pretrain", "--dataset_name", corpus, "--tokenizer_name_or_path", tokenizer, "--preset",
                            preset, "--learning_rate", lr, "--time_budget", budget, "--eval_steps", 10 ** 6,
                            "--save_steps", 10 ** 6, "--eval_max_tokens", 65536, "--report_to", "none",
                            "--output_dir", out, "--overwrite_output_dir", "true", "--plot_loss", "false")
    row = {"kind": "hand", "corpus": corpus, "budget": budget, "preset": preset, "lr": lr, "wall_s": round(wall, 1)}
    if rc != 0:
        return {**row, "error": err.strip().splitlines()[-1] if err.strip() else f"exit {rc}"}
    m = json.loads((out / "all_results.json").read_text())
    return {**row, "loss": m.get("eval_loss"), "bpb": m.get("eval_bits_per_byte"), "steps": m.get("time_budget_steps")}


def kept(work: Path, row: dict) -> str:
    """Which weights the speedrun's pretraining ended with (--keep_best, past 4 epochs): the last, an evaluation's
    step, or a cooled-down copy (from its speedrun.json)."""
    state = work / f"speedrun_{row['corpus']}_{row['budget']}" / "speedrun.json"
    pre = json.loads(state.read_text())["stages"]["pretrain"] if state.is_file() else {}
    if pre.get("keep_best_copy"):
        return f"copy at {pre['keep_best_step']}"
    if pre.get("keep_best_step") and pre["keep_best_step"] == pre.get("steps"):
        # written before the copies were named (the last step is never "kept"): the copy whose loss it scored
        points = json.loads((state.parent / "pretrain" / "forecast.json").read_text())["points"]
        copy = min(points, key=lambda p: abs(p["loss"] - pre["loss"]))
        return f"copy at {copy['step']}"
    return f"step {pre['keep_best_step']}" if pre.get("keep_best_step") else "last"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpora", nargs="+", default=["builtin", "tiny_shakespeare", "tinystories"])
    ap.add_argument("--budgets", nargs="+", default=["2m", "5m", "15m"])
    ap.add_argument("--grid_budgets", nargs="+", default=["2m"])
    ap.add_argument("--presets", nargs="+", default=PRESETS, choices=PRESETS,
                    help="the grid's presets (rows already in WORKDIR/rows.jsonl count too)")
    ap.add_argument("--workdir", default="/tmp/speedrun_grid")
    a = ap.parse_args()
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    rows_file = work / "rows.jsonl"
    rows = [json.loads(x) for x in rows_file.read_text().splitlines()] if rows_file.is_file() else []

    def have(**key):
        return next((r for r in rows if all(r.get(k) == v for k, v in key.items())), None)

    def keep(row):
        rows.append(row)
        with open(rows_file, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)

    for budget in a.budgets:
        for corpus in a.corpora:
            sr = have(kind="speedrun", corpus=corpus, budget=budget)
            if sr is None:
                sr = speedrun(work, corpus, budget)
                keep(sr)
            if budget in a.grid_budgets:
                for preset in a.presets:
                    for lr in LRS:
                        if have(kind="hand", corpus=corpus, budget=budget, preset=preset, lr=lr) is None:
                            keep(hand(work, corpus, budget, preset, lr, sr["tokenizer"]))

    print("\n| corpus | budget | wall | kept (±5%) | shape | steps (forecast at) | pretraining s (forecast s) | "
          "forecast loss | achieved | error | revised (at step) | error | kept | bpb | best hand bpb (preset, lr) | "
          "ratio |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in (r for r in rows if r["kind"] == "speedrun"):
        grid = [h for h in rows if h["kind"] == "hand" and h["corpus"] == r["corpus"] and h["budget"] == r["budget"]
                and h.get("bpb") is not None]
        best = min(grid, key=lambda h: h["bpb"]) if grid else None
        ref = f"{best['bpb']:.4f} ({best['preset']}, {best['lr']:g})" if best else "—"
        ratio = f"{r['bpb'] / best['bpb']:.3f}" if best else "—"
        forecast = (f"{r['predicted_loss']:.3f} | {r['loss']:.3f} | {r['prediction_error']:+.1%}"
                    if r.get("prediction_error") is not None else f"— | {r['loss']:.3f} | —")
        revised = (f"{r['revised_loss']:.3f} ({r['revised_at_step']}) | {r['revised_loss'] / r['loss'] - 1:+.1%}"
                   if r.get("revised_loss") is not None else "— | —")
        print(f"| {r['corpus']} | {r['budget']} | {r['wall_s']:.0f} s | {r['budget_error']:+.1%} | {r['shape']} | "
              f"{r.get('steps')} ({r.get('forecast_at_step')}) | {r['pretrain_s']:.0f} ({r.get('forecast_s')}) | "
              f"{forecast} | {revised} | {kept(work, r)} | {r['bpb']:.4f} | {ref} | {ratio} |")
    print("\n| corpus | budget | preset | lr | wall | steps | loss | bpb |\n|---|---|---|---|---|---|---|---|")
    for h in (r for r in rows if r["kind"] == "hand"):
        if "error" in h:
            print(f"| {h['corpus']} | {h['budget']} | {h['preset']} | {h['lr']:g} | {h['wall_s']:.0f} s | failed: "
                  f"{h['error'][:60]} | | |")
        else:
            print(f"| {h['corpus']} | {h['budget']} | {h['preset']} | {h['lr']:g} | {h['wall_s']:.0f} s | "
                  f"{h['steps']} | {h['loss']:.3f} | {h['bpb']:.4f} |")


if __name__ == "__main__":
    main()
