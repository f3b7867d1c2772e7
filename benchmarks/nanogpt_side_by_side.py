"""tinyllm against nanoGPT itself, side by side on this machine, in one run (karpathy/nanoGPT checkout given by
--nanogpt_dir; see benchmarks/RESULTS.md for how to get it and the commit measured):

1. training: nanoGPT's README CPU command for shakespeare_char and `tinyllm pretrain` with the shakespeare_char
   recipe (same shape: 4 layers, 4 heads, 128 wide, context 64, batch 12), alternating, --repeats times; steady-
   state tokens/s (median of the per-iteration / per-interval rates after warm-up) and wall time;
2. decoding in-process at batch 1: nanoGPT's own `GPT.generate` (imported from the checkout, the trained nanoGPT
   checkpoint) against tinyllm's generation path on the tinyllm model, 500 new characters, best of --repeats,
   with sample.py's sampling settings on both sides; then again with `--compile` (compiled once, timed apart);
   the recipe runs eagerly (`--torch_compile false`) and, with `compiled`, as shipped (`torch_compile: true`,
   compilation counted in its wall time);
   with `quality`, the recipe tuned for quality per second (recipes/configs/shakespeare_char_speedrun.yaml) runs
   in the same rotation: its validation loss and wall time against nanoGPT's;
3. the whole command a user types: `python sample.py --out_dir=... --device=cpu` (10 samples x 500 characters)
   against `tinyllm generate --num_samples 10 --max_new_tokens 500`, best of --repeats;
4. (`stream`) one sample of 2000 characters: sample.py against `tinyllm generate` streaming it, and tinyllm's same
   decode in-process (what the command itself costs).

    python benchmarks/nanogpt_side_by_side.py --nanogpt_dir /path/to/nanoGPT
    python benchmarks/nanogpt_side_by_side.py --nanogpt_dir /path/to/nanoGPT --iters 500 --repeats 2   # quicker

The checkout needs Tiny Shakespeare prepared: copy input.txt to data/shakespeare_char/ and run its prepare.py.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def nanogpt_train(nano: Path, out: Path, iters: int) -> dict:
    cmd = [sys.executable, "train.py", "config/train_shakespeare_char.py", "--device=cpu", "--compile=False",
           "--eval_iters=20", "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4",
           "--n_embd=128", f"--max_iters={iters}", f"--lr_decay_iters={iters}", "--dropout=0.0", f"--out_dir={out}"]
    start = time.perf_counter()
    res = subprocess.run(cmd, cwd=nano, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if res.returncode:
        raise RuntimeError(res.stderr[-2000:])
    found = re.findall(r"^iter (\d+): loss [\d.]+, time ([\d.]+)ms", res.stdout, re.M)
    ms = [float(t) for it, t in found if int(it) >= 20]  # after warm-up
    val = [float(v) for v in re.findall(r"val loss ([\d.]+)", res.stdout)]
    ms = sorted(ms)[: max(1, int(len(ms) * 0.9))]  # drop the iterations that ran an evaluation
    return {"wall": wall, "tok_s": 12 * 64 / (statistics.median(ms) / 1000), "val": val[-1] if val else None}


def tinyllm_train(out: Path, iters: int | None, config: str = "shakespeare_char", extra: tuple = ()) -> dict:
    cmd = [sys.executable, "recipes/pretrain.py", "--config", f"recipes/configs/{config}.yaml",
           "--output_dir", str(out), "--overwrite_output_dir", "true", "--report_to", "none",
           "--logging_steps", "50", "--save_steps", "100000", "--plot_loss", "false", *extra]
    cmd += ["--max_steps", str(iters)] if iters else []
    start = time.perf_counter()
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if res.returncode:
        raise RuntimeError(res.stderr[-2000:])
    state = json.loads((out / "trainer_state.json").read_text())
    rates = [h["tokens_per_second"] for h in state["log_history"] if "tokens_per_second" in h][1:]
    metrics = json.loads((out / "all_results.json").read_text())
    return {"wall": wall, "tok_s": statistics.median(rates), "val": metrics.get("eval_loss"),
            "train_s": metrics.get("train_runtime")}


# nanoGPT's sample.py settings (temperature 0.8, top-k 200, nothing else) for both sides
SAMPLING = {"do_sample": True, "temperature": 0.8, "top_k": 200, "top_p": 1.0, "repetition_penalty": 1.0}


def decode_in_process(nano: Path, nano_out: Path, ours: Path, n: int, repeats: int) -> tuple[float, float, float,
                                                                                              float]:
    import torch

    sys.path.insert(0, str(nano))
    from model import GPT, GPTConfig  # nanoGPT's own model, from the checkout

    from tinyllm.inference.generation import generate_ids
    from tinyllm.model_io import load_model_folder

    ckpt = torch.load(nano_out / "ckpt.pt", map_location="cpu", weights_only=False)
    theirs = GPT(GPTConfig(**ckpt["model_args"]))
    theirs.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()})
    theirs.eval()
    model, tok = load_model_folder(str(ours), device="cpu")
    model.eval()
    prompt = tok("\n")["input_ids"]
    never = tok.pad_token_id

    def run_theirs() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            theirs.generate(torch.zeros((1, 1), dtype=torch.long), n, temperature=0.8, top_k=200)
        return n / (time.perf_counter() - start)

    def run_ours() -> float:
        start = time.perf_counter()
        gen = generate_ids(model, prompt, n, eos=[never], **SAMPLING)
        return len(gen.ids) / (time.perf_counter() - start)

    run_theirs(), run_ours()
    best_t = best_o = 0.0
    for _ in range(repeats):
        best_t, best_o = max(best_t, run_theirs()), max(best_o, run_ours())
    from tinyllm.inference.generation import compile_decoding

    start = time.perf_counter()
    compile_decoding(model, warm_up=True)  # --compile: the one-time compilation, timed on its own
    compile_s = time.perf_counter() - start
    best_c = 0.0
    for _ in range(repeats):
        best_t, best_c = max(best_t, run_theirs()), max(best_c, run_ours())
    return best_t, best_o, best_c, compile_s


def _timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(res.stderr[-2000:])
    return time.perf_counter() - start


def _ours_generate(ours: Path, n: int, extra: tuple = ()) -> list[str]:
    """`tinyllm generate` with sample.py's settings (temperature 0.8, top-k 200, nothing else)."""
    return [sys.executable, "-m", "tinyllm", "generate", "--model", str(ours), "--prompt", "\n", "--max_new_tokens",
            str(n), "--temperature", "0.8", "--top_k", "200", "--top_p", "1.0", "--repetition_penalty", "1.0", *extra]


def whole_command(nano: Path, nano_out: Path, ours: Path, repeats: int) -> tuple[float, float]:
    theirs = [sys.executable, "sample.py", f"--out_dir={nano_out}", "--device=cpu", "--num_samples=10",
              "--max_new_tokens=500"]
    mine = _ours_generate(ours, 500, ("--num_samples", "10"))
    best_t = best_o = float("inf")
    for _ in range(repeats):
        best_t, best_o = min(best_t, _timed(theirs, nano)), min(best_o, _timed(mine, REPO))
    return best_t, best_o


def streamed_command(nano: Path, nano_out: Path, ours: Path, n: int, repeats: int) -> tuple[float, float, float]:
    """One sample of `n` characters as a user types it: sample.py printing one sample against `tinyllm generate`
    streaming to the terminal (a pipe here), eagerly; and tinyllm's same decode in-process, to show what the
    command adds. Best of `repeats`, alternating."""
    import torch

    from tinyllm.inference.generation import generate_ids
    from tinyllm.model_io import load_model_folder

    theirs = [sys.executable, "sample.py", f"--out_dir={nano_out}", "--device=cpu", "--num_samples=1",
              f"--max_new_tokens={n}"]
    model, tok = load_model_folder(str(ours), device="cpu")
    model.eval()
    best_t = best_o = best_in = float("inf")
    for _ in range(repeats):
        best_t, best_o = min(best_t, _timed(theirs, nano)), min(best_o, _timed(_ours_generate(ours, n), REPO))
        torch.manual_seed(0)
        start = time.perf_counter()
        generate_ids(model, tok("\n")["input_ids"], n, eos=[tok.pad_token_id], **SAMPLING)
        best_in = min(best_in, time.perf_counter() - start)
    return best_t, best_o, best_in


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nanogpt_dir", required=True)
    p.add_argument("--iters", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--work_dir", default=None, help="keep the trained models here (default: a temporary folder)")
    p.add_argument("--parts", default="train,compiled,quality,decode,command,stream",
                   help="which comparisons to run (compiled and quality run with train); decode and command reuse "
                        "the models trained in --work_dir")
    a = p.parse_args()
    parts = set(a.parts.split(","))
    nano = Path(a.nanogpt_dir).resolve()
    if not (nano / "data" / "shakespeare_char" / "train.bin").is_file():
        print(f"{nano}/data/shakespeare_char is not prepared: copy Tiny Shakespeare's input.txt there and run "
              f"prepare.py", file=sys.stderr)
        return 2
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=nano, capture_output=True, text=True)
    commit = commit.stdout.strip() if commit.returncode == 0 else "(not a git checkout; see RESULTS.md)"
    tmp = Path(a.work_dir) if a.work_dir else Path(tempfile.mkdtemp())
    runs_t, runs_o, runs_q, runs_c = [], [], [], []
    for r in range(a.repeats if "train" in parts else 0):  # alternating: all see the same machine conditions
        runs_t.append(nanogpt_train(nano, tmp / "nano", a.iters))
        runs_o.append(tinyllm_train(tmp / "ours", a.iters, extra=("--torch_compile", "false")))
        if "compiled" in parts:
            runs_c.append(tinyllm_train(tmp / "compiled", a.iters, extra=("--torch_compile", "true")))
        if "quality" in parts:
            runs_q.append(tinyllm_train(tmp / "speedrun", None, "shakespeare_char_speedrun"))
        print(f"run {r + 1}: nanoGPT {runs_t[-1]['tok_s']:,.0f} tok/s ({runs_t[-1]['wall']:.0f} s wall, val "
              f"{runs_t[-1]['val']:.3f}), tinyllm {runs_o[-1]['tok_s']:,.0f} tok/s ({runs_o[-1]['wall']:.0f} s wall)"
              + (f", compiled {runs_c[-1]['tok_s']:,.0f} tok/s ({runs_c[-1]['wall']:.0f} s wall)" if runs_c else "")
              + (f", speedrun recipe val {runs_q[-1]['val']:.3f} ({runs_q[-1]['wall']:.0f} s wall)" if runs_q else ""),
              flush=True)
    nan = float("nan")
    dec_t, dec_o, dec_c, compile_s = decode_in_process(nano, tmp / "nano", tmp / "ours", 500, max(3, a.repeats)) \
        if "decode" in parts else (nan, nan, nan, nan)
    cmd_t, cmd_o = whole_command(nano, tmp / "nano", tmp / "ours", a.repeats) if "command" in parts else (nan, nan)
    str_t, str_o, str_in = streamed_command(nano, tmp / "nano", tmp / "ours", 2000, max(3, a.repeats)) \
        if "stream" in parts else (nan, nan, nan)

    def med(values):
        values = list(values)
        return statistics.median(values) if values else nan

    t_tok, o_tok = med(r["tok_s"] for r in runs_t), med(r["tok_s"] for r in runs_o)
    t_wall, o_wall = med(r["wall"] for r in runs_t), med(r["wall"] for r in runs_o)
    t_val, o_val = med(r["val"] for r in runs_t), med(r["val"] for r in runs_o)
    q_val, q_wall = med(r["val"] for r in runs_q), med(r["wall"] for r in runs_q)
    c_tok, c_wall = med(r["tok_s"] for r in runs_c), med(r["wall"] for r in runs_c)
    print(f"\nnanoGPT checkout: {commit}; {os.cpu_count()} CPU threads; shakespeare_char, "
          f"{a.iters} iterations, batch 12 x 64, 4 layers / 4 heads / 128 wide; median of {a.repeats} alternating "
          f"runs\n")
    rows = [("training tokens/s (steady state), eager", f"{t_tok:,.0f}", f"{o_tok:,.0f}", f"{o_tok / t_tok:.2f}x"),
            ("training wall time, whole command (s), eager", f"{t_wall:.0f}", f"{o_wall:.0f}",
             f"{t_wall / o_wall:.2f}x"),
            ("training tokens/s, torch.compile (the recipe's setting)", f"{t_tok:,.0f}", f"{c_tok:,.0f}",
             f"{c_tok / t_tok:.2f}x"),
            ("training wall time (s), torch.compile, compilation included", f"{t_wall:.0f}", f"{c_wall:.0f}",
             f"{t_wall / c_wall:.2f}x"),
            ("final validation loss", f"{t_val:.3f}", f"{o_val:.3f}", ""),
            ("validation loss in nanoGPT's wall time: shakespeare_char_speedrun.yaml (loss, wall s)",
             f"{t_val:.3f} ({t_wall:.0f} s)", f"{q_val:.3f} ({q_wall:.0f} s)", ""),
            ("decoding at batch 1, in-process (tokens/s, best)", f"{dec_t:,.0f}", f"{dec_o:,.0f}",
             f"{dec_o / dec_t:.2f}x"),
            (f"decoding at batch 1 with --compile (tokens/s, best; compiled once in {compile_s:.1f} s)",
             f"{dec_t:,.0f}", f"{dec_c:,.0f}", f"{dec_c / dec_t:.2f}x"),
            ("10 samples x 500 characters, whole command (s, best)", f"{cmd_t:.1f}", f"{cmd_o:.1f}",
             f"{cmd_t / cmd_o:.2f}x"),
            ("1 sample x 2000 characters streamed, whole command, eager (s, best)", f"{str_t:.1f}", f"{str_o:.1f}",
             f"{str_t / str_o:.2f}x"),
            ("  the same 2000-token decode in-process, tinyllm (s, best)", "", f"{str_in:.1f}",
             f"command adds {str_o - str_in:.1f} s")]
    print("| measure | nanoGPT | tinyllm | tinyllm / nanoGPT |\n|---|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
