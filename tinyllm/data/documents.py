"""A corpus as a stream of documents, each marked train or validation, never held in memory as a whole.

Documents:
- `.txt`: cut by `--document_separator`: `auto` (`<|endoftext|>` when the file has it, else blank lines), `blank_line`
  (paragraphs: one or more empty lines), `eot`, `none` (the whole file is one document, as nanoGPT treats Tiny
  Shakespeare; the named tiny_shakespeare corpus reads this way), or any other string, taken literally (`\\n`
  for one document per line). Read in 8 MB chunks.
- `.jsonl` line by line, `.parquet` in record batches, `.json` (one array) whole; builtin generated; Hugging Face
  datasets row by row (`--streaming true` never downloads the whole set).

The held-out split, the one rule for every stage (tokenizer report, shards, the entropy floor, `tinyllm eval`):
- files: the documents that start in the last `validation_split_percentage` % of the corpus's bytes (a contiguous
  tail, as nanoGPT holds out the end of its text);
- counted sources (builtin, a loaded HF split) and `--max_documents`: the last `validation_count(n)` documents;
- a corpus that is one document: its last % of characters;
- an HF split named by `--validation_split_name`: that split; HF streaming: the first 200 documents.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tinyllm.config import DataArguments
from tinyllm.data.builtin import GENERATOR_VERSION, generate_corpus
from tinyllm.data.corpora import (
    EOT_MARKER,
    _record_text,
    hf_text_column,
    jsonl_records,
    load_hf_split,
    read_records,
    resolve_corpus,
    split_documents,
    validation_count,
)
from tinyllm.errors import ConfigError, DataError

__all__ = ["CorpusStream", "SEPARATORS", "STREAMING_VALIDATION_DOCS", "iter_documents", "separator_of",
           "text_file_documents"]

SEPARATORS = ("auto", "blank_line", "eot", "none")
STREAMING_VALIDATION_DOCS = 200
CHUNK = 8 << 20
ONE_DOCUMENT_LIMIT = 256 << 20  # `none` reads the file whole: fine for Tiny Shakespeare, not for a 2 GB corpus
_BLANK = re.compile(r"\n[ \t\r]*\n\s*")
NAMED_SEPARATORS = {"tiny_shakespeare": "none"}  # one document, split by characters, as nanoGPT does


def separator_of(value: str) -> str:
    """`--document_separator` checked: a known mode, or a literal string with `\\n` / `\\t` escapes."""
    if value in SEPARATORS:
        return value
    if not value:
        raise ConfigError(f"document_separator is empty; use one of {', '.join(SEPARATORS)} or a literal string")
    return value.replace("\\n", "\n").replace("\\t", "\t")


def _file_has(path: Path, needle: bytes) -> bool:
    overlap = b""
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            if needle in overlap + chunk:
                return True
            overlap = chunk[-len(needle):]
    return False


def _complete(data: bytes) -> int:
    """Length of the longest prefix of `data` that does not end inside a UTF-8 multi-byte character."""
    for k in range(1, min(4, len(data)) + 1):
        b = data[-k]
        if b & 0xC0 == 0x80:  # a continuation byte: look further back for the lead byte
            continue
        if b >= 0xC0 and (2 if b < 0xE0 else 3 if b < 0xF0 else 4) > k:
            return len(data) - k
        break
    return len(data)


def _decoded_chunks(path: Path, progress=None) -> Iterator[tuple[str, int]]:
    """(text, byte offset of its start) in 8 MB chunks; bad UTF-8 names the file and byte offset; a BOM is
    dropped."""
    leftover, offset = b"", 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            data = leftover + chunk
            cut = _complete(data)
            try:
                text = data[:cut].decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{path} is not valid UTF-8: byte 0x{data[exc.start]:02x} at offset {offset + exc.start}; "
                    f"convert it first, e.g. iconv -f GBK -t UTF-8 {path.name} > fixed.txt (or -f latin1, cp1252, "
                    f"...)") from exc
            start = offset
            if offset == 0 and text.startswith("\ufeff"):  # a BOM: dropped, its 3 bytes still counted
                text, start = text[1:], 3
            if progress is not None:
                progress(len(chunk))
            yield text, start
            leftover, offset = data[cut:], offset + cut
    if leftover:
        raise DataError(f"{path} is not valid UTF-8: it ends in the middle of a character (offset {offset}); "
                        f"convert it first")


def text_file_documents(path: Path, separator: str, progress=None) -> Iterator[tuple[str, int]]:
    """(document, byte offset where it starts) for a text file, streamed."""
    mode = separator
    if mode == "auto":
        mode = "eot" if _file_has(path, EOT_MARKER.encode()) else "blank_line"
    if mode == "none":
        size = path.stat().st_size
        if size > ONE_DOCUMENT_LIMIT:
            raise DataError(f"{path} is {size / 2**20:.0f} MB and --document_separator none reads it as one "
                            f"document; use blank_line (paragraphs) or a separator string for a corpus this size")
        text = "".join(t for t, _ in _decoded_chunks(path, progress))
        if text.strip():
            yield text, 0
        return
    sep = _BLANK if mode == "blank_line" else re.compile(re.escape(EOT_MARKER if mode == "eot" else mode))

    def clean(piece: str) -> str:
        return piece.strip() if mode == "eot" else piece.strip("\n")

    buf, buf_at = "", 0  # text not yet cut, and the byte offset where it starts
    for text, start in _decoded_chunks(path, progress):
        if not buf:
            buf_at = start
        buf += text
        pos = 0
        for match in sep.finditer(buf):
            piece = buf[pos:match.start()]
            if clean(piece).strip():
                yield clean(piece), buf_at
            buf_at += len(piece.encode("utf-8")) + len(match.group().encode("utf-8"))
            pos = match.end()
        buf = buf[pos:]
    if clean(buf).strip():
        yield clean(buf), buf_at


def _record_file_documents(path: Path, text_column: str | None, progress=None) -> Iterator[tuple[str, float]]:
    """(document, position in [0, 1) within the file) for .jsonl (streamed by line), .parquet (record batches)
    and .json (an array, read whole)."""
    suffix = path.suffix.lower()
    size = max(path.stat().st_size, 1)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise DataError(f"{path}: cannot read parquet ({exc}); check the file") from exc
        rows, done = max(pf.metadata.num_rows, 1), 0
        for batch in pf.iter_batches(batch_size=4096):
            for rec in batch.to_pylist():
                doc = _record_text(rec, text_column, f"{path} row {done}")
                if doc and doc.strip():
                    yield doc, done / rows
                done += 1
            if progress is not None:
                progress(int(size * batch.num_rows / rows))
        return
    if suffix == ".jsonl":
        for where, rec, at in jsonl_records(path, progress):
            doc = _record_text(rec, text_column, where)
            if doc and doc.strip():
                yield doc, at / size
        return
    records = list(read_records(path))
    if progress is not None:
        progress(size)
    for i, (where, rec) in enumerate(records):
        doc = _record_text(rec, text_column, where)
        if doc and doc.strip():
            yield doc, i / max(len(records), 1)


@dataclass
class CorpusStream:
    """The documents of `data`'s corpus as (text, is_validation), in corpus order. `total_bytes` (files) lets a
    progress bar show MB/s and an ETA; `bytes_read` counts what has been read so far."""

    data: DataArguments
    seed: int = 0

    def __post_init__(self):
        self.kind, self.files = resolve_corpus(self.data.dataset_name, self.data.cache_dir)
        self.separator = separator_of(self.data.document_separator or "auto")
        if self.separator == "auto":
            self.separator = NAMED_SEPARATORS.get(self.data.dataset_name, "auto")
        self.total_bytes = sum(p.stat().st_size for p in self.files) if self.kind == "files" else None
        self.bytes_read = 0
        pct = self.data.validation_split_percentage
        self.pct = 5.0 if pct is None else pct

    def fingerprint(self) -> dict:
        """What identifies the documents: files by path, size and modification time; the built-in corpus by its
        settings and generator version; an HF dataset by id, config, split and (when loaded) content hash."""
        d = self.data
        out = {"dataset": d.dataset_name, "separator": self.separator, "validation_pct": self.pct,
               "validation_split_name": d.validation_split_name, "max_documents": d.max_documents,
               "text_column": d.text_column}
        if self.kind == "files":
            out["files"] = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in self.files]
        elif self.kind == "builtin":
            out["builtin"] = (d.builtin_num_documents, d.builtin_languages, self.seed, GENERATOR_VERSION)
        else:
            out["hf"] = (d.dataset_config_name, d.dataset_split, d.streaming, self._hf_fingerprint())
        return out

    def _hf_fingerprint(self) -> str | None:
        if self.data.streaming:
            return None
        return getattr(self._hf(self.data.dataset_split), "_fingerprint", None)

    def _hf(self, split: str):
        if not hasattr(self, "_hf_cache"):
            self._hf_cache = {}
        if split not in self._hf_cache:
            self._hf_cache[split] = load_hf_split(self.data.dataset_name, self.data.dataset_config_name, split,
                                                  streaming=self.data.streaming, cache_dir=self.data.cache_dir)
        return self._hf_cache[split]

    def _progress(self, n: int) -> None:
        self.bytes_read += n

    # ------------------------------------------------------------ the stream

    def __iter__(self) -> Iterator[tuple[str, bool]]:
        docs = self._marked()
        if self.data.max_documents:
            docs = self._first(docs, self.data.max_documents)
        yield from self._single_document_split(docs)

    def _marked(self) -> Iterator[tuple[str, bool]]:
        d = self.data
        if self.kind == "builtin":
            texts = [doc.text for doc in generate_corpus(d.builtin_num_documents, self.seed, d.builtin_languages)]
            if d.max_documents:
                texts = texts[: d.max_documents]
            n_val = validation_count(len(texts), self.pct)
            for i, text in enumerate(texts):
                self.bytes_read += len(text.encode("utf-8"))
                yield text, i >= len(texts) - n_val
        elif self.kind == "files":
            yield from self._file_documents()
        else:
            yield from self._hf_documents()

    def _file_documents(self) -> Iterator[tuple[str, bool]]:
        cut = (1 - self.pct / 100) * self.total_bytes if self.pct > 0 else float("inf")
        before = 0
        for path in self.files:
            size = path.stat().st_size
            if path.suffix.lower() == ".txt":
                for doc, at in text_file_documents(path, self.separator, self._progress):
                    yield doc, before + at >= cut
            else:
                for doc, frac in _record_file_documents(path, self.data.text_column, self._progress):
                    yield doc, before + frac * size >= cut
            before += size

    def _hf_documents(self) -> Iterator[tuple[str, bool]]:
        d = self.data
        ds = self._hf(d.dataset_split)
        columns = ds.column_names or list(next(iter(ds), {}))  # a stream may name its columns only in its rows
        column = hf_text_column(columns, d.text_column, d.dataset_name)

        def texts(dataset):
            for row in dataset:
                value = row[column]
                if isinstance(value, str) and value.strip():
                    self.bytes_read += len(value.encode("utf-8"))
                    yield value

        if d.validation_split_name:
            yield from ((t, False) for t in texts(ds))
            yield from ((t, True) for t in texts(self._hf(d.validation_split_name)))
        elif d.streaming:
            for i, t in enumerate(texts(ds)):
                yield t, i < STREAMING_VALIDATION_DOCS and self.pct > 0
        else:
            n = len(ds)
            n_val = validation_count(n, self.pct)
            for i, t in enumerate(texts(ds)):
                yield t, i >= n - n_val

    def _first(self, docs, limit: int) -> Iterator[tuple[str, bool]]:
        """The first `limit` documents, the last validation_count(limit) of them held out (a tail kept aside)."""
        n_val = validation_count(limit, self.pct)
        tail: collections.deque = collections.deque()
        count = 0
        for text, _ in docs:
            if count >= limit:
                break
            count += 1
            tail.append(text)
            if len(tail) > n_val:
                yield tail.popleft(), False
        n_val = validation_count(count, self.pct)  # fewer documents than the limit: the rule on what there is
        while len(tail) > n_val:
            yield tail.popleft(), False
        yield from ((t, True) for t in tail)

    def _single_document_split(self, docs) -> Iterator[tuple[str, bool]]:
        """A corpus of one document is split by characters (its last % held out); otherwise pass through. The
        first document waits until a second one shows up."""
        it = iter(docs)
        first = next(it, None)
        if first is None:
            raise DataError(f"corpus '{self.data.dataset_name}' is empty: no non-blank documents found; check the "
                            f"data")
        second = next(it, None)
        if second is None:
            train, val = split_documents([first[0]], self.pct)
            yield train[0], False
            if val:
                yield val[0], True
            return
        yield first
        yield second
        yield from it


def iter_documents(data: DataArguments, seed: int = 0) -> Iterator[str]:
    """Every document of a corpus in order, none held out and none split (tools, benchmarks and tests; the stages
    read CorpusStream, which also marks the held-out ones)."""
    whole = dataclasses.replace(data, validation_split_percentage=0)
    for text, _ in CorpusStream(whole, seed):
        yield text
