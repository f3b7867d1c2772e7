"""SFT on base models tinyllm did not train, one per chat-template style: supervised tokens, and the share of
answers that stop by themselves before and after SFT (tiny random bases built the way tests/test_foreign.py builds
them: a Zephyr-style Llama, a ChatML-like Llama with other token names, a GPT-2 with no template).

    python benchmarks/byo_base.py
    python benchmarks/byo_base.py --max_steps 200
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max_steps", type=int, default=120)
    a = p.parse_args()
    from helpers import STYLES, build_foreign
    from tinyllm.cli import run
    from tinyllm.data.builtin import generate_corpus

    docs = [d.text for d in generate_corpus(1500, seed=0)]
    tmp = Path(tempfile.mkdtemp())
    rows = []
    for style in STYLES:
        base = build_foreign(tmp, docs, style)
        out = tmp / f"{style}-chat"
        code = run("sft", ["--model_name_or_path", str(base), "--output_dir", str(out), "--max_steps",
                           str(a.max_steps), "--per_device_train_batch_size", "16", "--report_to", "none",
                           "--eval_strategy", "no", "--save_steps", "100000", "--eval_max_new_tokens", "24",
                           "--max_seq_length", "128", "--learning_rate", "0.01", "--warmup_steps", "5"])
        if code:
            return code
        m = json.loads((out / "all_results.json").read_text())
        rows.append((style, STYLES[style][5], m["supervised_tokens"], m["train_examples"], m["stopped_rate_before"],
                     m["stopped_rate"], m["exact_match"]))
    print(f"\n{a.max_steps} LoRA steps on the built-in QA set, tiny random 2-layer bases\n")
    print("| template style | end-of-turn token | supervised tokens | training examples | stop rate before | "
          "stop rate after | exact match after |\n|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r[0]} | `{r[1]}` | {r[2]:,} | {r[3]} | {r[4]:.0%} | {r[5]:.0%} | {r[6]:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
