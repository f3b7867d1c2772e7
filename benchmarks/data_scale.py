"""Data at scale, measured in one run: prepare throughput against the raw `tokenizers` pass and nanoGPT's prepare
approach, peak memory and start-up cost of pretraining as the corpus grows, and training speed from shards.

    python benchmarks/data_scale.py --work_dir /tmp/ds [--big] [--baseline_repo /tmp/before]

The corpus is TinyStories (../shared/data/tinystories/tinystories_v1_valid_head.txt: plain text, stories and
paragraphs separated by blank lines, no <|endoftext|>) repeated to 5 MB, 0.5 GB and, with --big, 5 GB (made here,
never committed). One BPE tokenizer (vocab 8000, trained on the 5 MB slice) serves every row.

1. prepare, 0.5 GB: `tinyllm prepare` against (a) the raw pass the issue names as the floor: `Tokenizer.encode_batch`
   over the blank-line documents on all cores, ids written as uint16, and (b) nanoGPT's openwebtext/prepare.py
   approach with the same tokenizer: `datasets` (text, paragraphs) + `map(num_proc=cores)` + one uint16 memmap.
2. pretrain, peak RSS (/usr/bin/time -v) with a fresh cache (prepare included), 0.5 GB and (--big) 5 GB.
3. a second pretraining run on 0.5 GB (shards found; 40 steps, 2 evaluations) against the same command on the
   5 MB slice: start-up and evaluation must not grow with the corpus.
4. with --baseline_repo (an older checkout that packs in memory, e.g. `git worktree add /tmp/before 573d87b`):
   training tokens/s of the shakespeare_char recipe from shards against in-memory blocks, alternating.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO.parent / "shared" / "data" / "tinystories" / "tinystories_v1_valid_head.txt"


def make_corpus(path: Path, size: int) -> Path:
    if path.is_file() and path.stat().st_size >= size:
        return path
    text = SOURCE.read_text(encoding="utf-8").rstrip("\n") + "\n\n"
    with open(path, "w", encoding="utf-8") as f:
        written = 0
        while written < size:
            f.write(text)
            written += len(text.encode("utf-8"))
    return path


def timed(cmd: list[str], cwd: Path = REPO, env: dict | None = None) -> tuple[float, float, str]:
    """(wall seconds, peak RSS GB, stderr) of a command, through /usr/bin/time -v."""
    start = time.perf_counter()
    res = subprocess.run(["/usr/bin/time", "-v", *cmd], cwd=cwd, capture_output=True, text=True,
                         env={**os.environ, **(env or {})})
    wall = time.perf_counter() - start
    if res.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{res.stderr[-3000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr).group(1)) / 2**20
    return wall, rss, res.stderr


RAW = r'''
import re, sys, numpy as np
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[2] + "/tokenizer.json")
blank = re.compile(r"\n[ \t\r]*\n\s*")
with open(sys.argv[1], encoding="utf-8") as f, open(sys.argv[3], "wb") as out:
    rest = ""
    for chunk in iter(lambda: f.read(8 << 20), ""):
        docs = blank.split(rest + chunk)
        rest = docs.pop()
        enc = tok.encode_batch([d for d in docs if d.strip()])
        np.concatenate([np.asarray(e.ids, dtype=np.uint16) for e in enc]).tofile(out)
    if rest.strip():
        np.asarray(tok.encode(rest).ids, dtype=np.uint16).tofile(out)
'''

NANOGPT_STYLE = r'''
import os, sys, numpy as np
from datasets import load_dataset
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[2] + "/tokenizer.json")
eot = tok.token_to_id("<|end_of_text|>")
ds = load_dataset("text", data_files=sys.argv[1], sample_by="paragraph", cache_dir=sys.argv[4])["train"]
def process(example):
    ids = tok.encode(example["text"]).ids + [eot]
    return {"ids": ids, "len": len(ids)}
tokenized = ds.map(process, remove_columns=["text"], num_proc=os.cpu_count())
total = int(np.sum(tokenized["len"], dtype=np.uint64))
arr = np.memmap(sys.argv[3], dtype=np.uint16, mode="w+", shape=(total,))
idx = 0
for i in range(64):
    batch = tokenized.shard(num_shards=64, index=i, contiguous=True).with_format("numpy")
    chunk = np.concatenate(batch["ids"])
    arr[idx: idx + len(chunk)] = chunk
    idx += len(chunk)
arr.flush()
'''


def prepare_rows(work: Path, corpus: Path, tok: Path) -> list[tuple]:
    rows = []
    env = {"TOKENIZERS_PARALLELISM": "true"}
    shutil.rmtree(work / "cache_prepare", ignore_errors=True)
    ours, ours_rss, err = timed([sys.executable, "-m", "tinyllm", "prepare", "--dataset_name", str(corpus),
                                 "--tokenizer_name_or_path", str(tok), "--cache_dir", str(work / "cache_prepare"),
                                 "--output_dir", str(work / "unused")], env=env)
    (work / "raw.py").write_text(RAW)
    raw, raw_rss, _ = timed([sys.executable, str(work / "raw.py"), str(corpus), str(tok), str(work / "raw.bin")],
                            env=env)
    (work / "nano.py").write_text(NANOGPT_STYLE)
    shutil.rmtree(work / "hf_cache", ignore_errors=True)
    nano, nano_rss, _ = timed([sys.executable, str(work / "nano.py"), str(corpus), str(tok), str(work / "nano.bin"),
                               str(work / "hf_cache")], env=env)
    mb = corpus.stat().st_size / 2**20
    rows.append(("raw tokenizers encode_batch (the floor)", raw, mb / raw, raw_rss, "1.00x"))
    rows.append(("nanoGPT's approach (datasets map + memmap)", nano, mb / nano, nano_rss, f"{raw / nano:.2f}x"))
    rows.append(("tinyllm prepare (whole command)", ours, mb / ours, ours_rss, f"{raw / ours:.2f}x"))
    return rows


def pretrain(work: Path, corpus: Path, tok: Path, cache: Path, out: str, fresh: bool, repo: Path = REPO) -> tuple:
    if fresh:
        shutil.rmtree(cache, ignore_errors=True)
    cmd = [sys.executable, "-m", "tinyllm", "pretrain", "--config", "recipes/configs/tinystories.yaml",
           "--dataset_name", str(corpus), "--tokenizer_name_or_path", str(tok), "--cache_dir", str(cache),
           "--max_steps", "40", "--eval_steps", "20", "--logging_steps", "10", "--save_steps", "1000",
           "--report_to", "none", "--plot_loss", "false", "--sample_max_new_tokens", "16",
           "--output_dir", str(work / out), "--overwrite_output_dir", "true"]
    return timed(cmd, cwd=repo, env={"TOKENIZERS_PARALLELISM": "true"})


def tokens_per_second(folder: Path) -> float:
    state = json.loads((folder / "trainer_state.json").read_text())
    return statistics.median([h["tokens_per_second"] for h in state["log_history"] if "tokens_per_second" in h][1:])


def shakespeare(work: Path, repo: Path, out: str, steps: int) -> float:
    cmd = [sys.executable, "recipes/pretrain.py", "--config", "recipes/configs/shakespeare_char.yaml",
           "--output_dir", str(work / out), "--overwrite_output_dir", "true", "--report_to", "none",
           "--max_steps", str(steps), "--logging_steps", "50", "--eval_steps", str(steps), "--save_steps", "100000",
           "--plot_loss", "false", "--torch_compile", "false", "--cache_dir", str(work / f"cache_{out}")]
    # Tiny Shakespeare from ../shared/data (the named corpus's mirror layout) rather than a download
    timed(cmd, cwd=repo, env={"PYTHONPATH": str(repo), "TINYLLM_CORPUS_MIRROR": f"file://{SOURCE.parents[1]}"})
    return tokens_per_second(work / out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work_dir", required=True)
    p.add_argument("--big", action="store_true", help="also the 5 GB corpus (about half an hour of prepare here)")
    p.add_argument("--baseline_repo", default=None)
    p.add_argument("--parts", default="prepare,memory,startup,speed")
    p.add_argument("--steps", type=int, default=600, help="shakespeare_char steps for the speed rows")
    a = p.parse_args()
    parts = set(a.parts.split(","))
    work = Path(a.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    small = make_corpus(work / "slice5.txt", 5 * 10**6)
    half = make_corpus(work / "c500.txt", 5 * 10**8)
    tok = work / "tok"
    if not (tok / "tokenizer.json").is_file():
        subprocess.run([sys.executable, "-m", "tinyllm", "train-tokenizer", "--dataset_name", str(small),
                        "--vocab_size", "8000", "--output_dir", str(tok), "--overwrite_output_dir", "true"],
                       cwd=REPO, check=True, capture_output=True)
    print(f"{os.cpu_count()} CPU threads; corpus: {SOURCE.name} repeated; tokenizer: BPE 8000\n", flush=True)
    if "prepare" in parts:
        print(f"## prepare, {half.stat().st_size / 2**30:.2f} GB plain text\n")
        print("| pass | wall (s) | MB/s | peak RSS (GB) | speed vs the raw pass |\n|---|---:|---:|---:|---:|")
        for name, wall, rate, rss, ratio in prepare_rows(work, half, tok):
            print(f"| {name} | {wall:.0f} | {rate:.2f} | {rss:.2f} | {ratio} |", flush=True)
    if "memory" in parts:
        print("\n## pretrain with a fresh cache (prepare included), 40 steps, 2 evaluations\n")
        print("| corpus | wall (s) | peak RSS (GB) |\n|---|---:|---:|")
        corpora = [("5 MB", small), ("0.5 GB", half)]
        if a.big:
            corpora.append(("5 GB", make_corpus(work / "c5000.txt", 5 * 10**9)))
        for name, corpus in corpora:
            wall, rss, _ = pretrain(work, corpus, tok, work / f"cache_{name.replace(' ', '')}", "run_mem", True)
            print(f"| {name} | {wall:.0f} | {rss:.2f} |", flush=True)
            if name == "5 GB":
                corpus.unlink()  # 5 GB of scratch text
    if "startup" in parts:
        print("\n## second run (shards found), 40 steps, 2 evaluations\n")
        print("| corpus | wall (s) | peak RSS (GB) | held-out tokens scored |\n|---|---:|---:|---:|")
        walls = {}
        for name, corpus in (("5 MB", small), ("0.5 GB", half)):
            cache = work / f"cache_second_{name.replace(' ', '')}"
            pretrain(work, corpus, tok, cache, "run_second", True)  # prepares
            wall, rss, err = pretrain(work, corpus, tok, cache, "run_second", False)
            scored = re.search(r"evaluating on ([\d,]+) held-out tokens", err)
            walls[name] = wall
            print(f"| {name} | {wall:.0f} | {rss:.2f} | {scored.group(1) if scored else '?'} |", flush=True)
        print(f"\n0.5 GB / 5 MB wall: {walls['0.5 GB'] / walls['5 MB']:.2f}x (aim <= 1.5x)")
    if "speed" in parts and a.baseline_repo:
        print(f"\n## training tokens/s, shakespeare_char, {a.steps} steps, eager, alternating\n")
        ours, theirs = [], []
        for _ in range(2):
            theirs.append(shakespeare(work, Path(a.baseline_repo), "sp_before", a.steps))
            ours.append(shakespeare(work, REPO, "sp_shards", a.steps))
        t, o = statistics.median(theirs), statistics.median(ours)
        print("| data path | tokens/s (median of 2) | ratio |\n|---|---:|---:|")
        print(f"| in-memory blocks ({Path(a.baseline_repo).name}) | {t:,.0f} | 1.00x |")
        print(f"| token shards (this checkout) | {o:,.0f} | {o / t:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
