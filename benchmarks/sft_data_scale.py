"""SFT data at scale: a 200k-conversation JSONL through tinyllm's SFT data step, first and second run, peak memory
and time, side by side with an older checkout that built Python lists (`--baseline_repo`).

    python benchmarks/sft_data_scale.py --work_dir /tmp/sftdata [--rows 200000] [--baseline_repo /tmp/before]

Rows are question/answer pairs made from the built-in QA set with numbered variations (no download); the
tokenizer is tinyllm's BPE trained on the built-in corpus. Measured with /usr/bin/time -v on a fresh process.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

STEP = r'''
import sys
from transformers import AutoTokenizer
from tinyllm.config import DataArguments
tok = AutoTokenizer.from_pretrained(sys.argv[2])
data = DataArguments(dataset_name=sys.argv[1], validation_split_percentage=1, cache_dir=sys.argv[3])
try:
    from tinyllm.config import SFTArguments
    from tinyllm.data.sft_data import build_sft_datasets
    sft = build_sft_datasets(data, SFTArguments(), tok, seed=0)
except ImportError:  # an older checkout: one options class, Python lists
    from tinyllm.config import SFTDataArguments
    from tinyllm.sft_data import build_sft_datasets
    sft = build_sft_datasets(SFTDataArguments(dataset_name=sys.argv[1], validation_split_percentage=1,
                                              cache_dir=sys.argv[3]), tok, 0)
print(len(sft.train))
'''


def run(repo: Path, rows: Path, tok: Path, cache: Path, work: Path) -> tuple[float, float]:
    script = work / "step.py"
    script.write_text(STEP)
    start = time.perf_counter()
    res = subprocess.run(["/usr/bin/time", "-v", sys.executable, str(script), str(rows), str(tok), str(cache)],
                         cwd=repo, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(repo), "HF_DATASETS_OFFLINE": "1"})
    wall = time.perf_counter() - start
    if res.returncode:
        raise SystemExit(res.stderr[-3000:])
    kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr).group(1))
    return wall, kb / 2**20


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work_dir", required=True)
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--baseline_repo", default=None)
    a = p.parse_args()
    work = Path(a.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    from tinyllm.data.builtin import generate_corpus, generate_qa
    from tinyllm.data.tokenizer import train_tokenizer

    tok = work / "tok"
    if not (tok / "tokenizer.json").is_file():
        train_tokenizer([d.text for d in generate_corpus(3000, 0)], "bpe", 4000).save_pretrained(tok)
    rows = work / f"qa-{a.rows}.jsonl"
    if not rows.is_file():
        base = [r for r in generate_qa()["train"] if "question" in r]
        with open(rows, "w", encoding="utf-8") as f:
            for i in range(a.rows):
                r = base[i % len(base)]
                f.write(json.dumps({"question": f"({i}) {r['question']}", "answer": r["answer"]},
                                   ensure_ascii=False) + "\n")
    print(f"{a.rows:,} conversations, {rows.stat().st_size / 2**20:.0f} MB of JSONL\n")
    print("| code | run | wall (s) | peak RSS (GB) |\n|---|---|---:|---:|")
    repos = [("this checkout", REPO)] + ([("baseline", Path(a.baseline_repo))] if a.baseline_repo else [])
    for label, repo in repos:
        cache = work / f"cache-{label.replace(' ', '_')}"
        for which in ("first", "second"):
            wall, gb = run(repo, rows, tok, cache, work)
            print(f"| {label} | {which} | {wall:.0f} | {gb:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
