"""The speedrun's sizing rule, fitted from pretraining runs measured on this machine.

    TINYLLM_CORPUS_MIRROR=file:///path/to/shared/data python benchmarks/speedrun_fit.py [--corpus tinystories]
        [--workdir /tmp/speedrun_fit]
    python benchmarks/speedrun_fit.py --corpus builtin --corpus_flags '--builtin_num_documents 100000' \
        --lr 0.0033 --workdir /tmp/speedrun_fit_builtin --also /tmp/speedrun_fit      # the joint fit

1. Learning rate by width: three shapes (2x64, 4x128, 6x256) x three AdamW learning rates, each `tinyllm pretrain
   --time_budget 75s`; the best rate per width (a parabola through log lr) and a power law through them:
   lr = lr_128 * (128 / width) ** k.
2. Loss against size and tokens: five shapes x two budgets (30 s, 120 s) at the fitted rate. The fit:
   L = E + A / N^alpha + B / D'^beta (N parameters without embeddings, D' Muennighoff's effective tokens),
   alpha and beta by grid search, E, A, B by least squares.
Every run is a plain `tinyllm pretrain` with one shared tokenizer (BPE 2048, trained once), block 128, 16 sequences
per step, evaluation only at the end on 65,536 held-out tokens. Runs are kept in runs.jsonl (rerunning skips the
ones done). Prints Markdown tables for docs/speedrun.md and the learning-rate constants for
tinyllm/training/sizing.py; the loss fit is the data behind TOKENS_PER_PARAM (the speedrun no longer predicts its loss
with it: the pretraining run forecasts its own, training/forecast.py).
"""

import argparse
import itertools
import json
import math
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tinyllm.training.sizing import Shape, effective_tokens  # noqa: E402

LR_SHAPES = [Shape(2, 2, 64), Shape(4, 4, 128), Shape(6, 4, 256)]
LRS = [1.5e-3, 3e-3, 6e-3]
FIT_SHAPES = [Shape(2, 2, 64), Shape(3, 3, 96), Shape(4, 4, 128), Shape(6, 6, 192), Shape(6, 4, 256)]
FIT_BUDGETS = [30, 120]
BLOCK, BATCH = 128, 16


def tinyllm(*args) -> None:
    res = subprocess.run([sys.executable, "-m", "tinyllm", *map(str, args)], cwd=ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"tinyllm {' '.join(map(str, args))} failed:\n{res.stderr[-3000:]}")


def run(work: Path, corpus: str, tok: Path, shape: Shape, lr: float, budget: int, done: dict, extra: list) -> dict:
    key = f"{shape.name}_lr{lr:g}_{budget}s"
    if key in done:
        return done[key]
    out = work / key
    start = time.time()
    tinyllm("pretrain", "--dataset_name", corpus, *extra, "--tokenizer_name_or_path", tok, "--preset", "nano",
            "--n_layer", shape.n_layer, "--n_head", shape.n_head, "--n_embd", shape.n_embd, "--block_size", BLOCK,
            "--per_device_train_batch_size", BATCH, "--learning_rate", lr, "--warmup_steps", 50,
            "--time_budget", f"{budget}s", "--eval_steps", 10 ** 6, "--save_steps", 10 ** 6, "--eval_max_tokens",
            65536, "--report_to", "none", "--plot_loss", "false", "--output_dir", out, "--overwrite_output_dir",
            "true", "--sample_max_new_tokens", 8)
    wall = time.time() - start
    m = json.loads((out / "all_results.json").read_text())
    row = {"key": key, "shape": shape.name, "width": shape.n_embd, "params": shape.non_embedding_params(), "lr": lr,
           "budget_s": budget, "wall_s": round(wall, 1), "steps": m["time_budget_steps"],
           "tokens": m["time_budget_steps"] * BLOCK * BATCH, "unique_tokens": m["train_tokens"],
           "tokens_per_s": round(m["time_budget_steps"] * BLOCK * BATCH / m["train_runtime"]),
           "eval_loss": round(m["eval_loss"], 4), "bpb": m.get("eval_bits_per_byte")}
    with open(work / "runs.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    done[key] = row
    print(f"  {key}: loss {row['eval_loss']} bpb {row['bpb']} ({row['steps']} steps, {wall:.0f} s)", flush=True)
    return row


def best_lr(rows: list[dict]) -> float:
    """The minimum of a parabola through (log lr, loss) of the three rates (the best measured if it opens down)."""
    pts = sorted((math.log(r["lr"]), r["eval_loss"]) for r in rows)
    (x0, y0), (x1, y1), (x2, y2) = pts
    denom = (x0 - x1) * (x0 - x2) * (x1 - x2)
    a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denom
    b = (x2 ** 2 * (y0 - y1) + x1 ** 2 * (y2 - y0) + x0 ** 2 * (y1 - y2)) / denom
    if a <= 0:
        return math.exp(min(pts, key=lambda p: p[1])[0])
    return math.exp(min(max(-b / (2 * a), x0), x2))


def bytes_per_token(r: dict) -> float:
    """Held-out bytes per token of a run: its loss in nats per token over nats per byte."""
    return r["eval_loss"] / (math.log(2) * r["bpb"])


def lstsq(rows: dict, alpha: float, beta: float):
    """One E per corpus and shared A, B >= 0, least squares for fixed exponents; nats per byte against bytes (the
    units sizing.LossModel uses: a character tokenizer and a BPE one share them)."""
    import numpy as np

    groups = list(rows)
    X, y = [], []
    for gi, g in enumerate(groups):
        for r in rows[g]:
            seen = effective_tokens(r["tokens"], r["unique_tokens"]) * bytes_per_token(r)
            X.append([1.0 if gj == gi else 0.0 for gj in range(len(groups))] + [r["params"] ** -alpha, seen ** -beta])
            y.append(r["bpb"] * math.log(2))
    X, y = np.array(X), np.array(y)
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    coef[-2:] = np.maximum(coef[-2:], 0.0)
    return coef, float(((X @ coef - y) ** 2).mean()), groups


def fit(rows: dict) -> dict:
    best = None
    # the exponents are searched within the range published fits give (0.2 to 0.6; Hoffmann et al. 0.34 / 0.28):
    # a dozen small runs do not pin them down on their own (unconstrained they run off to 1.5)
    for alpha, beta in itertools.product([i / 100 for i in range(20, 61, 2)], repeat=2):
        coef, err, groups = lstsq(rows, alpha, beta)
        if best is None or err < best[0]:
            best = (err, alpha, beta, coef, groups)
    err, alpha, beta, coef, groups = best
    return {"E": dict(zip(groups, coef[:-2])), "A": coef[-2], "alpha": alpha, "B": coef[-1], "beta": beta,
            "rmse": math.sqrt(err)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default="tinystories")
    ap.add_argument("--corpus_flags", default="", help="more corpus flags, e.g. '--builtin_num_documents 100000'")
    ap.add_argument("--vocab_size", type=int, default=2048)
    ap.add_argument("--lr", type=float, default=None, help="skip the learning-rate sweep: this rate at every width")
    ap.add_argument("--budgets", nargs="+", type=int, default=FIT_BUDGETS)
    ap.add_argument("--workdir", default="/tmp/speedrun_fit")
    ap.add_argument("--also", nargs="*", default=[], help="other workdirs whose runs join the fit (each its own E)")
    ap.add_argument("--max_epochs", type=float, default=4.5, help="runs repeating the corpus more are left out")
    ap.add_argument("--min_steps", type=int, default=150, help="shorter runs (mostly warmup) are left out: the "
                    "speedrun plans hundreds of steps")
    a = ap.parse_args()
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    done = load(work)
    tok = work / "tokenizer"
    extra = a.corpus_flags.split()
    if not (tok / "tokenizer.json").is_file():
        tinyllm("train-tokenizer", "--dataset_name", a.corpus, *extra, "--vocab_size", a.vocab_size, "--output_dir",
                tok)
    lr_rows = {}
    if a.lr is None:
        print("1. learning rate by width (75 s each)")
        lr_rows = {s: [run(work, a.corpus, tok, s, lr, 75, done, extra) for lr in LRS] for s in LR_SHAPES}
        best = {s.n_embd: best_lr(rows) for s, rows in lr_rows.items()}
        xs, ys = zip(*[(math.log(128 / w), math.log(lr)) for w, lr in best.items()])
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        k = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
        lr128 = math.exp(my - k * mx)
        head = " | ".join(f"lr {lr:g}" for lr in LRS)
        print(f"\n| shape | {head} | best (parabola) |\n|---|" + "---|" * (len(LRS) + 1))
        for s, rows in lr_rows.items():
            print(f"| {s.name} | " + " | ".join(f"{r['eval_loss']:.4f}" for r in rows) + f" | {best[s.n_embd]:.2g} |")
        print(f"\nlr = {lr128:.3g} x (128 / width) ^ {k:.2f}")
    else:
        lr128, k = a.lr, 0.0
    print("\n2. loss against size and tokens")
    rule = {s: min(lr128 * (128 / s.n_embd) ** k, 6e-3) for s in FIT_SHAPES}
    for s in FIT_SHAPES:
        for b in a.budgets:
            run(work, a.corpus, tok, s, float(f"{rule[s]:.2g}"), b, done, extra)
    groups = {str(work): list(done.values())}
    groups.update({d: list(load(Path(d)).values()) for d in a.also})
    near = {r["key"]: abs(math.log(r["lr"] / min(lr128 * (128 / r["width"]) ** k, 6e-3))) < 0.35
            for rs in groups.values() for r in rs}  # the sweep's other rates are left out
    rows = {g: [r for r in rs if r["tokens"] / r["unique_tokens"] <= a.max_epochs and r["steps"] >= a.min_steps
                and near[r["key"]]] for g, rs in groups.items()}
    f = fit(rows)
    print(f"\nruns repeating the corpus at most {a.max_epochs:g} times (the speedrun caps epochs at 4), of at least "
          f"{a.min_steps} steps")
    print("\n| corpus (workdir) | run | N (no emb.) | tokens | epochs | loss (nats/token) | bytes/token | nats/byte "
          "| fit |\n" + "|---" * 9 + "|")
    for g, rs in rows.items():
        for r in sorted(rs, key=lambda r: (r["params"], r["tokens"])):
            per = bytes_per_token(r)
            pred = f["E"][g] + f["A"] * r["params"] ** -f["alpha"] + f["B"] * (effective_tokens(
                r["tokens"], r["unique_tokens"]) * per) ** -f["beta"]
            print(f"| {Path(g).name} | {r['key']} | {r['params']:,} | {r['tokens']:,} | "
                  f"{r['tokens'] / r['unique_tokens']:.1f} | {r['eval_loss']:.4f} | {per:.2f} | "
                  f"{r['bpb'] * math.log(2):.4f} | {pred:.4f} |")
    print(f"\nfit (nats per byte against bytes): A={f['A']:.3g} alpha={f['alpha']:.2f} B={f['B']:.4g} "
          f"beta={f['beta']:.2f}, E per corpus " + ", ".join(f"{Path(g).name} {e:.3f}" for g, e in f["E"].items())
          + f" (rmse {f['rmse']:.4f} nats per byte, {sum(map(len, rows.values()))} runs)")
    print(f"sizing.py: LR_AT_128 = {lr128:.2g}; LR_EXPONENT = {k:.2f}")


def load(work: Path) -> dict:
    if not (work / "runs.jsonl").is_file():
        return {}
    return {r["key"]: r for r in map(json.loads, (work / "runs.jsonl").read_text().splitlines())}


if __name__ == "__main__":
    main()
