"""Tokenizer training: tinyllm's byte-level BPE (`tokenizers`) against sentencepiece BPE on the same corpus and
vocabulary size, measured side by side: training time and characters per token on a held-out slice.

    python benchmarks/tokenizer_bench.py                      # ../shared/data: Shakespeare + TinyStories + poetry
    python benchmarks/tokenizer_bench.py --vocab_size 8000 --data_dir /path/to/shared/data

Needs `pip install sentencepiece` (in the dev extra).
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def load_corpus(data_dir: Path) -> list[str]:
    from tinyllm.config import DataArguments
    from tinyllm.data.documents import iter_documents

    # plain text without <|endoftext|> is cut into paragraphs at blank lines, so both trainers see many sentences
    docs = []
    for path in [data_dir / "tiny_shakespeare" / "input.txt", data_dir / "tinystories", data_dir / "chinese_poetry"]:
        docs += list(iter_documents(DataArguments(dataset_name=str(path))))
    docs += list(iter_documents(DataArguments(dataset_name=str(data_dir / "sft_en" / "alpaca_en_demo.jsonl"),
                                              text_column="output")))
    return docs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--vocab_size", type=int, default=8000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sample_fractions", default="",
                   help="also learn the default tokenizer on these fractions of the training documents, e.g. "
                        "0.5,0.3,0.2 (what sampling would trade in compression for speed)")
    a = p.parse_args()
    import random

    import sentencepiece as spm

    from tinyllm.data.tokenizer import LEGACY_SPLIT_PATTERN, SPLIT_PATTERN, train_tokenizer

    docs = load_corpus(Path(a.data_dir))
    random.Random(0).shuffle(docs)
    n_held = len(docs) // 20
    held, train = docs[:n_held], docs[n_held:]
    size = sum(len(d.encode()) for d in train)
    chars_held = sum(len(d) for d in held)
    tmp = Path(tempfile.mkdtemp())
    (tmp / "corpus.txt").write_text("\n".join(d.replace("\n", " ") for d in train), encoding="utf-8")

    def best(fn):
        times = []
        for _ in range(a.repeats):
            t = time.perf_counter()
            res = fn()
            times.append(time.perf_counter() - t)
        return min(times), res

    t_ours, tok = best(lambda: train_tokenizer(train, "bpe", a.vocab_size, show_progress=False))
    n_ours = sum(len(x) for x in tok(held, add_special_tokens=False)["input_ids"])
    t_old, old = best(lambda: train_tokenizer(train, "bpe", a.vocab_size, show_progress=False,
                                              encode_pattern=LEGACY_SPLIT_PATTERN))
    n_old = sum(len(x) for x in old(held, add_special_tokens=False)["input_ids"])
    t_whole, whole = best(lambda: train_tokenizer(train, "bpe", a.vocab_size, show_progress=False,
                                                  learn_pattern=SPLIT_PATTERN))
    n_whole = sum(len(x) for x in whole(held, add_special_tokens=False)["input_ids"])

    def sp_train(corpus: str = "corpus.txt"):
        spm.SentencePieceTrainer.train(
            input=str(tmp / corpus), model_prefix=str(tmp / "sp"), vocab_size=a.vocab_size, model_type="bpe",
            character_coverage=0.9995, byte_fallback=True, num_threads=os.cpu_count(), minloglevel=2,
            max_sentence_length=1 << 20, train_extremely_large_corpus=False)
        return spm.SentencePieceProcessor(model_file=str(tmp / "sp.model"))

    t_sp, sp = best(sp_train)
    n_sp = sum(len(x) for x in sp.encode(held))
    rt_ours = all(tok.decode(tok(d, add_special_tokens=False)["input_ids"]) == d for d in held[:500])
    rt_sp = all(sp.decode(sp.encode(d)) == d for d in held[:500])
    print(f"\ncorpus: {len(train):,} documents, {size / 1e6:.2f} MB UTF-8 (English + Chinese), vocab {a.vocab_size}, "
          f"held-out {n_held:,} documents; best of {a.repeats} runs, {os.cpu_count()} cores\n")
    print("| tokenizer | train time (s) | held-out chars/token | exact round trip |\n|---|---:|---:|---|")
    print(f"| tinyllm BPE (default): learn on Han pieces <= 2, encode Llama 3 split (llama-bpe) | {t_ours:.2f} | "
          f"{chars_held / n_ours:.3f} | {rt_ours} |")
    print(f"| tinyllm BPE, learn and encode with the Llama 3 split (whole Han runs) | {t_whole:.2f} | "
          f"{chars_held / n_whole:.3f} | True |")
    print(f"| tinyllm BPE before: learn and encode on Han pieces <= 2 (no GGUF export) | {t_old:.2f} | "
          f"{chars_held / n_old:.3f} | True |")
    print(f"| sentencepiece BPE (byte fallback) | {t_sp:.2f} | {chars_held / n_sp:.3f} | {rt_sp} |")
    print(f"\nspeed ratio (sentencepiece time / ours): {t_sp / t_ours:.2f}x; compression ratio (ours / sp): "
          f"{(chars_held / n_ours) / (chars_held / n_sp):.3f}")
    if a.sample_fractions:
        from tokenizers import Regex, pre_tokenizers

        from tinyllm.data.tokenizer import LEARN_SPLIT_PATTERN

        for name, pre in (("the learn split (regex)", pre_tokenizers.Split(Regex(LEARN_SPLIT_PATTERN), "isolated")),
                          ("the byte-level mapping", pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                              use_regex=False))):
            t = time.perf_counter()
            for d in train:
                pre.pre_tokenize_str(d)
            print(f"pre-tokenization alone, {name}, one thread from Python: {time.perf_counter() - t:.2f} s")
        print("\n| learned on a sample of the training documents | tinyllm train time (s) | held-out chars/token "
              "| sentencepiece on the same sample (s) | chars/token | sentencepiece on all (s) / tinyllm |\n"
              "|---|---:|---:|---:|---:|---:|")
        for frac in [float(f) for f in a.sample_fractions.split(",")]:
            sub = train[: max(1, int(len(train) * frac))]
            (tmp / "sample.txt").write_text("\n".join(d.replace("\n", " ") for d in sub), encoding="utf-8")
            t_sub, sub_tok = best(lambda: train_tokenizer(sub, "bpe", a.vocab_size, show_progress=False))
            n_sub = sum(len(x) for x in sub_tok(held, add_special_tokens=False)["input_ids"])
            t_sp_sub, sp_sub = best(lambda: sp_train("sample.txt"))
            n_sp_sub = sum(len(x) for x in sp_sub.encode(held))
            print(f"| {frac:.0%} | {t_sub:.2f} | {chars_held / n_sub:.3f} | {t_sp_sub:.2f} | "
                  f"{chars_held / n_sp_sub:.3f} | {t_sp / t_sub:.2f}x |")
    json.dump({"ours_s": t_ours, "sp_s": t_sp, "ours_cpt": chars_held / n_ours, "sp_cpt": chars_held / n_sp},
              sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
