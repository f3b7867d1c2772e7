"""How much text does BPE training need? Held-out compression of tokenizers trained on growing samples of a corpus,
against the one trained on all of it: the measurement behind --tokenizer_sample_bytes's default.

    python benchmarks/tokenizer_sample.py [--vocab_size 8000]

Corpora (../shared/data, all the distinct text there is): TinyStories (English), Chinese poetry, and both mixed.
The held-out documents (tinyllm's split) are never in a sample. A sample of B bytes is documents kept at random
(by seed) until B, as `tinyllm prepare`/`pretrain` take it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"


def main() -> int:
    from tinyllm.config import DataArguments, TokenizerArguments
    from tinyllm.data.tokenizer import build_tokenizer

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab_size", type=int, default=8000)
    a = p.parse_args()
    corpora = {
        "TinyStories (0.8 MB)": DATA / "tinystories" / "tinystories_v1_valid_head.txt",
        "Chinese poetry (3.6 MB)": DATA / "chinese_poetry",
    }
    print(f"BPE, vocab {a.vocab_size}; compression = held-out UTF-8 bytes per token (higher is better)\n")
    print("| corpus | sample | sample bytes | bytes/token | vs all | train s |\n|---|---:|---:|---:|---:|---:|")
    for name, path in corpora.items():
        data = DataArguments(dataset_name=str(path))
        rows = []
        for budget in (64 << 10, 256 << 10, 1 << 20, 2 << 20, 0):
            start = time.perf_counter()
            options = TokenizerArguments(vocab_size=a.vocab_size, tokenizer_sample_bytes=budget)
            _, report = build_tokenizer(data, options)
            rows.append((budget, report["sample_bytes"], report["heldout"]["bytes_per_token"],
                         time.perf_counter() - start))
        full = rows[-1][2]
        for budget, taken, bpt, secs in rows:
            label = "all" if budget == 0 else f"{budget >> 10} KB"
            print(f"| {name} | {label} | {taken:,} | {bpt:.3f} | {100 * (bpt / full - 1):+.1f}% | {secs:.1f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
