"""The tokenizer stage: corpus -> trained tokenizer folder with a report (JSON + Markdown)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from tinyllm.config import DataArguments, OutputArguments, TokenizerArguments
from tinyllm.data.corpora import iter_documents, split_documents
from tinyllm.data.tokenizer import is_cjk, train_tokenizer
from tinyllm.errors import DataError
from tinyllm.io import atomic_output_dir, check_output_dir

__all__ = ["run_tokenizer_training", "load_corpus_documents", "tokenizer_report", "language_of"]

logger = logging.getLogger(__name__)


def load_corpus_documents(data: DataArguments, seed: int = 0, limit: int | None = None) -> list[str]:
    """All documents of the configured corpus, in order (at most `limit` / `max_documents`)."""
    docs = []
    limit = limit or data.max_documents
    for doc in iter_documents(data.dataset_name, data.dataset_config_name, data.dataset_split, data.text_column,
                              data.cache_dir, data.builtin_num_documents, data.builtin_languages, seed):
        docs.append(doc)
        if limit and len(docs) >= limit:
            break
    if not docs:
        raise DataError(f"corpus '{data.dataset_name}' is empty: no non-blank documents found; check the data")
    return docs


def language_of(text: str) -> str:
    """'zh' when most letters are CJK, else 'en' (good enough to split a report by language)."""
    letters = [c for c in text[:2000] if c.isalpha()]
    if not letters:
        return "other"
    cjk = sum(1 for c in letters if is_cjk(c))
    return "zh" if cjk > len(letters) / 2 else "en"


def tokenizer_report(tokenizer, heldout: list[str], train_seconds: float, tokenizer_type: str,
                     dataset_name: str) -> dict:
    """Compression on held-out text: characters and UTF-8 bytes per token, overall and per language."""
    groups: dict[str, list[str]] = {}
    for doc in heldout:
        groups.setdefault(language_of(doc), []).append(doc)

    def stats(docs: list[str]) -> dict:
        ntok = sum(len(ids) for ids in tokenizer(docs, add_special_tokens=False, verbose=False)["input_ids"])
        nchar = sum(len(d) for d in docs)
        nbyte = sum(len(d.encode("utf-8")) for d in docs)
        return {"documents": len(docs), "tokens": ntok, "characters": nchar, "bytes": nbyte,
                "chars_per_token": round(nchar / max(ntok, 1), 3), "bytes_per_token": round(nbyte / max(ntok, 1), 3)}

    from tinyllm.data.tokenizer import PRE_TOKENIZER_NAME

    pre = ("one token per character" if tokenizer_type == "char" else
           f"{PRE_TOKENIZER_NAME}: Llama 3's split (GPT-4 style), chosen because llama.cpp implements it exactly "
           f"(GGUF tokenizer.ggml.pre = llama-bpe), so exported models tokenize as they do here; merges were "
           f"learned on Chinese pieces of at most 2 characters, so the vocabulary holds words, not phrases")
    report = {"tokenizer_type": tokenizer_type, "pre_tokenizer": pre, "vocab_size": len(tokenizer),
              "dataset_name": dataset_name,
              "train_seconds": round(train_seconds, 2), "heldout": stats(heldout) if heldout else None,
              "per_language": {k: stats(v) for k, v in sorted(groups.items())} if len(groups) > 1 else {}}
    return report


def _report_markdown(r: dict) -> str:
    lines = ["# Tokenizer report", "", f"- type: {r['tokenizer_type']}",
             f"- pre-tokenizer: {r.get('pre_tokenizer', 'n/a')}", f"- vocab size: {r['vocab_size']}",
             f"- corpus: {r['dataset_name']}", f"- training time: {r['train_seconds']} s", ""]
    rows = ([("all", r["heldout"])] if r["heldout"] else []) + list(r["per_language"].items())
    if rows:
        lines += ["Held-out compression:", "",
                  "| slice | documents | characters | tokens | chars/token | bytes/token |",
                  "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {k} | {v['documents']} | {v['characters']} | {v['tokens']} | {v['chars_per_token']} | "
                  f"{v['bytes_per_token']} |" for k, v in rows]
    return "\n".join(lines) + "\n"


def write_tokenizer(tokenizer, report: dict, folder: Path) -> None:
    tokenizer.save_pretrained(folder)
    (folder / "tokenizer_report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    (folder / "tokenizer_report.md").write_text(_report_markdown(report), encoding="utf-8")


def build_tokenizer(data: DataArguments, tok_args: TokenizerArguments, seed: int = 0, docs: list[str] | None = None):
    """Train a tokenizer on the corpus; return (tokenizer, report). Holds out the validation slice."""
    if docs is None:
        docs = load_corpus_documents(data, seed, limit=tok_args.tokenizer_max_documents or data.max_documents)
    train_docs, heldout = split_documents(docs, data.validation_split_percentage or 5.0)
    if tok_args.tokenizer_max_documents:
        train_docs = train_docs[: tok_args.tokenizer_max_documents]
    if tok_args.tokenizer_type == "char":
        # Char mode's vocabulary must cover the held-out text too, as nanoGPT's shakespeare_char builds it
        # from the whole file; BPE never needs this since it falls back to bytes.
        train_docs = train_docs + heldout
    start = time.perf_counter()
    tokenizer = train_tokenizer(train_docs, tok_args.tokenizer_type, tok_args.vocab_size, tok_args.min_frequency)
    seconds = time.perf_counter() - start
    report = tokenizer_report(tokenizer, heldout, seconds, tok_args.tokenizer_type, data.dataset_name)
    logger.info("trained a %s tokenizer with %d tokens in %.1f s", tok_args.tokenizer_type, len(tokenizer), seconds)
    return tokenizer, report


def run_tokenizer_training(data: DataArguments, tok_args: TokenizerArguments, out: OutputArguments) -> Path:
    check_output_dir(out.output_dir, out.overwrite_output_dir)
    tokenizer, report = build_tokenizer(data, tok_args, out.seed)
    with atomic_output_dir(out.output_dir) as tmp:
        write_tokenizer(tokenizer, report, tmp)
    print(_report_markdown(report))
    print(f"Saved the tokenizer to {out.output_dir}  (load it with AutoTokenizer.from_pretrained('{out.output_dir}'))")
    return Path(out.output_dir)
