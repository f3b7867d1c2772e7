"""The tokenizer stage: corpus -> trained tokenizer folder with a report (JSON + Markdown)."""

from __future__ import annotations

import json
from pathlib import Path

from tinyllm.config import DataArguments, OutputArguments, TokenizerArguments
from tinyllm.data.tokenizer import build_tokenizer
from tinyllm.io import atomic_output_dir, check_output_dir

__all__ = ["run_tokenizer_training", "write_tokenizer"]


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


def run_tokenizer_training(data: DataArguments, tok_args: TokenizerArguments, out: OutputArguments) -> Path:
    check_output_dir(out.output_dir, out.overwrite_output_dir)
    tokenizer, report = build_tokenizer(data, tok_args, out.seed)
    with atomic_output_dir(out.output_dir) as tmp:
        write_tokenizer(tokenizer, report, tmp)
    print(_report_markdown(report))
    print(f"Saved the tokenizer to {out.output_dir}  (load it with AutoTokenizer.from_pretrained('{out.output_dir}'))")
    return Path(out.output_dir)
