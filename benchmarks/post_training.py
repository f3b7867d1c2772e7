"""Past SFT, measured: DPO and GRPO against spending the same effort on more SFT, over several seeds.

    python benchmarks/post_training.py [--seeds 1 2 3] [--workdir /tmp/post_training] [--only dpo|grpo]

Per seed, all with the shipped recipes and only --seed changed:
  quickstart.yaml (pretrain) -> sft_quickstart.yaml -> dpo_quickstart.yaml          DPO path
                              \\-> more SFT: sft_quickstart.yaml again on the SFT model, as many steps as DPO took
  quickstart.yaml            -> sft_arithmetic.yaml -> grpo_arithmetic.yaml        GRPO path
                              \\-> more SFT: sft_arithmetic.yaml again on the SFT model, for GRPO's training time
Every folder is scored by the same command, `tinyllm eval --tasks sft` (built-in held-out questions, exact match
overall and per language) or `tinyllm eval --tasks builtin_arithmetic --pass_k 8` (held-out pass@1 greedy, pass@8
sampled at temperature 1), so the before / after / more-SFT numbers are measured the same way. Prints Markdown
tables (paste into RESULTS.md); wall times are whole commands (start-up included).
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def tinyllm(*args) -> float:
    """Run a tinyllm command; return its wall time in seconds (raises on failure with the error's last lines)."""
    start = time.time()
    res = subprocess.run([sys.executable, "-m", "tinyllm", *map(str, args)], cwd=ROOT, capture_output=True,
                         text=True)
    if res.returncode != 0:
        raise SystemExit(f"tinyllm {' '.join(map(str, args))} failed:\n{res.stderr[-3000:]}")
    return time.time() - start


def scores(folder: Path, task: str) -> dict:
    out = folder / f"eval_{task}.json"
    extra = ["--pass_k", "8"] if task == "builtin_arithmetic" else []
    tinyllm("eval", folder, "--tasks", task, "--output", out, *extra)
    return {f"{r['task']}:{r['metric']}": r["value"] for r in json.loads(out.read_text())["results"]}


def results(folder: Path) -> dict:
    return json.loads((folder / "all_results.json").read_text())


def recipe(command: str, config: str, seed: int, out: Path, *flags, model: Path | None = None) -> float:
    """Run a shipped recipe with only the seed, the start model and the output folder changed; its wall time."""
    start = ["--model_name_or_path", model] if model is not None else []
    return tinyllm(command, "--config", f"recipes/configs/{config}.yaml", "--seed", seed, *start, "--output_dir", out,
                   "--report_to", "none", "--overwrite_output_dir", "true", *flags)


def chain(work: Path, seed: int, sft_config: str, sft_name: str) -> tuple[Path, Path]:
    """The pretrained base and its SFT model for this seed, trained unless a previous run left them."""
    base, sft = work / "base", work / sft_name
    if not (base / "model.safetensors").is_file():
        recipe("pretrain", "quickstart", seed, base)
    if not (sft / "model.safetensors").is_file():
        recipe("sft", sft_config, seed, sft, model=base)
    return base, sft


def dpo_seed(work: Path, seed: int) -> dict:
    _, sft = chain(work, seed, "sft_quickstart", "sft")
    dpo, more = work / "dpo", work / "sft_more"
    wall = recipe("dpo", "dpo_quickstart", seed, dpo, model=sft)
    r = results(dpo)
    more_wall = recipe("sft", "sft_quickstart", seed, more, "--max_steps", 150, model=sft)  # DPO's steps
    return {"seed": seed, "dpo_wall_s": wall, "dpo_train_s": r["train_runtime"], "more_sft_wall_s": more_wall,
            "reward_accuracy": r["reward_accuracy"], "reward_margin": r["reward_margin"],
            "chosen_bpb_before": r["chosen_bits_per_byte_before"], "chosen_bpb_after": r["chosen_bits_per_byte"],
            "sft": scores(sft, "sft"), "dpo": scores(dpo, "sft"), "more": scores(more, "sft")}


def grpo_seed(work: Path, seed: int) -> dict:
    _, sft = chain(work, seed, "sft_arithmetic", "sft_arithmetic")
    grpo, more = work / "grpo", work / "sft_arithmetic_more"
    wall = recipe("grpo", "grpo_arithmetic", seed, grpo, model=sft)
    r, s = results(grpo), results(sft)
    steps = max(1, round(r["train_runtime"] / (s["train_runtime"] / 600)))  # SFT steps in GRPO's training time
    more_wall = recipe("sft", "sft_arithmetic", seed, more, "--max_steps", steps, "--warmup_steps", 0, model=sft)
    return {"seed": seed, "grpo_wall_s": wall, "grpo_train_s": r["train_runtime"], "more_sft_steps": steps,
            "more_sft_wall_s": more_wall, "reward_first": r["reward_first"], "reward_last": r["reward_last"],
            "no_signal": r["no_signal_share_mean"], "sft": scores(sft, "builtin_arithmetic"),
            "grpo": scores(grpo, "builtin_arithmetic"), "more": scores(more, "builtin_arithmetic")}


def mean(values) -> str:
    values = list(values)
    return f"{statistics.mean(values):.3f}" if values else "n/a"


def dpo_table(rows: list[dict]) -> str:
    em, zh = "builtin_qa:exact_match", "builtin_qa_zh:exact_match"
    lines = ["| seed | SFT EM (zh) | DPO EM (zh) | more SFT EM (zh) | DPO wall s (train s) | reward acc | margin "
             "| chosen bits/byte before -> after |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['sft'][em]:.3f} ({r['sft'][zh]:.3f}) | {r['dpo'][em]:.3f} "
                     f"({r['dpo'][zh]:.3f}) | {r['more'][em]:.3f} ({r['more'][zh]:.3f}) | {r['dpo_wall_s']:.0f} "
                     f"({r['dpo_train_s']:.0f}) | {r['reward_accuracy']:.3f} | {r['reward_margin']:.2f} | "
                     f"{r['chosen_bpb_before']:.3f} -> {r['chosen_bpb_after']:.3f} |")
    lines.append(f"| mean | {mean(r['sft'][em] for r in rows)} ({mean(r['sft'][zh] for r in rows)}) | "
                 f"{mean(r['dpo'][em] for r in rows)} ({mean(r['dpo'][zh] for r in rows)}) | "
                 f"{mean(r['more'][em] for r in rows)} ({mean(r['more'][zh] for r in rows)}) | | | | |")
    return "\n".join(lines)


def grpo_table(rows: list[dict]) -> str:
    p1, p8 = "builtin_arithmetic:pass@1", "builtin_arithmetic:pass@8"
    lines = ["| seed | SFT pass@1 / @8 | GRPO pass@1 / @8 | GRPO - SFT pass@1 | more SFT (steps) pass@1 / @8 | "
             "GRPO wall s (train s) | mean reward first -> last | groups w/o signal |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['sft'][p1]:.3f} / {r['sft'][p8]:.3f} | {r['grpo'][p1]:.3f} / "
                     f"{r['grpo'][p8]:.3f} | {r['grpo'][p1] - r['sft'][p1]:+.3f} | ({r['more_sft_steps']}) "
                     f"{r['more'][p1]:.3f} / {r['more'][p8]:.3f} | {r['grpo_wall_s']:.0f} ({r['grpo_train_s']:.0f}) | "
                     f"{r['reward_first']:.3f} -> {r['reward_last']:.3f} | {r['no_signal']:.0%} |")
    lines.append(f"| mean | {mean(r['sft'][p1] for r in rows)} | {mean(r['grpo'][p1] for r in rows)} | "
                 f"{mean(r['grpo'][p1] - r['sft'][p1] for r in rows)} | {mean(r['more'][p1] for r in rows)} | | | |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--workdir", default="/tmp/post_training")
    ap.add_argument("--only", choices=("dpo", "grpo"))
    a = ap.parse_args()
    dpo_rows, grpo_rows = [], []
    for seed in a.seeds:
        work = Path(a.workdir) / f"seed{seed}"
        work.mkdir(parents=True, exist_ok=True)
        if a.only != "grpo":
            dpo_rows.append(dpo_seed(work, seed))
            print(json.dumps(dpo_rows[-1]), flush=True)
        if a.only != "dpo":
            grpo_rows.append(grpo_seed(work, seed))
            print(json.dumps(grpo_rows[-1]), flush=True)
    if dpo_rows:
        print("\nDPO (dpo_quickstart.yaml) vs more SFT, held-out built-in questions, `tinyllm eval --tasks sft`\n")
        print(dpo_table(dpo_rows))
    if grpo_rows:
        print("\nGRPO (grpo_arithmetic.yaml) vs more SFT in the same time, held-out builtin_arithmetic\n")
        print(grpo_table(grpo_rows))


if __name__ == "__main__":
    main()
