"""Peak memory and time of DPO's and GRPO's data step on a dataset far bigger than the test fixtures.

    python benchmarks/post_training_data_scale.py [--rows 20000 200000] [--tokenizer outputs/sft_quickstart]

Writes N preference pairs and N arithmetic prompts as JSONL, then builds DPO's pairs (tokenized through the chat
encoding; then again, from the cache) and GRPO's prompts, each in a fresh process under /usr/bin/time -v, and
prints a Markdown table. Flat memory: the peak does not grow with N.
"""

import argparse
import json
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

STEP = """
import sys, time
from tinyllm.config import DataArguments
from tinyllm.post_training_config import GRPOArguments, PreferenceArguments
t0 = time.time()
data = DataArguments(dataset_name=sys.argv[2], validation_split_percentage=1.0)
if sys.argv[1] == "dpo":
    from transformers import AutoTokenizer
    from tinyllm.data.preference_data import build_preference_datasets
    out = build_preference_datasets(data, PreferenceArguments(), AutoTokenizer.from_pretrained(sys.argv[3]), None)
else:
    from tinyllm.data.prompt_data import build_prompt_datasets
    out = build_prompt_datasets(data, GRPOArguments())
print("STATS", out.stats, round(time.time() - t0, 1))
"""


def write_files(folder: Path, rows: int) -> tuple[Path, Path]:
    r = random.Random(0)
    pairs, prompts = folder / "pairs.jsonl", folder / "prompts.jsonl"
    with pairs.open("w") as f:
        for i in range(rows):
            q = f"Question {i}: what does animal {r.randint(0, 10**6)} like to eat, and where does it live?"
            f.write(json.dumps({"prompt": q, "chosen": f"It likes food {r.randint(0, 999)} and lives in place {i}.",
                                "rejected": f"It likes food {r.randint(0, 999)}."}) + "\n")
    with prompts.open("w") as f:
        for _ in range(rows):
            a, b = r.randint(0, 999), r.randint(0, 999)
            f.write(json.dumps({"prompt": f"What is {a} + {b}?", "answer": str(a + b)}) + "\n")
    return pairs, prompts


def measure(kind: str, path: Path, tokenizer: str) -> tuple[float, float]:
    res = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-c", STEP, kind, str(path), tokenizer],
                         capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        raise SystemExit(res.stderr[-2000:])
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr).group(1)) / 1024 ** 2
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", res.stderr).group(1)
    seconds = sum(float(x) * 60 ** i for i, x in enumerate(reversed(wall.split(":"))))
    return seconds, rss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[20_000, 200_000])
    ap.add_argument("--tokenizer", default="outputs/sft_quickstart", help="A chat model folder (its tokenizer).")
    a = ap.parse_args()
    print("| step | rows | file (MB) | wall (s) | peak RSS (GB) |\n|---|---:|---:|---:|---:|")
    for rows in a.rows:
        with tempfile.TemporaryDirectory() as tmp:
            pairs, prompts = write_files(Path(tmp), rows)
            for kind, path, label in (("dpo", pairs, "dpo data"), ("dpo", pairs, "dpo data, again (cached)"),
                                      ("grpo", prompts, "grpo data")):
                seconds, rss = measure(kind, path, a.tokenizer)
                print(f"| {label} | {rows:,} | {path.stat().st_size / 1e6:.0f} | {seconds:.1f} | {rss:.2f} |",
                      flush=True)


if __name__ == "__main__":
    main()
