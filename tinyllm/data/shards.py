"""Token shards: a corpus tokenized once into flat token files on disk, read back as windows without loading them.

    CACHE/shards/<key>/          (CACHE: --cache_dir, $TINYLLM_CACHE or ~/.cache/tinyllm; on a shared filesystem
      meta.json                   every machine of a multi-node run finds the same folder)
      train-00000.bin ...        uint16 token ids when the vocabulary fits, else uint32: bos + document + eos,
                                 documents back to back, at most SHARD_TOKENS per file
      validation-00000.bin       the held-out documents (data/documents.py decides which)
      validation-docs.npy        per held-out document: tokens, UTF-8 bytes, characters (int64), so evaluation takes
                                 whole documents up to --eval_max_tokens and turns its loss into bits per byte

The key is a hash of the corpus's fingerprint (files: path, size, modification time; HF: id, config, split,
content hash; builtin: its settings), the tokenizer (its tokenizer.json) and the format: the same corpus and
tokenizer find the same folder and are never tokenized twice; a changed file gets a new key. A prepare writes into
a temporary sibling folder and renames it when complete (meta.json last), so a killed prepare leaves nothing that
is ever read; its leftovers are removed by the next prepare.

Reading: a training block is `block_size` tokens at a fixed position of one shard, read with `os.pread` into a
fresh array (the page cache serves it as it would a memory map; nothing stays mapped, as nanoGPT re-creates its
memmap per batch for the same reason), so memory stays flat however big the corpus: ~10 us a block, where a
memmap made per block cost ~900 us. Trainer's sampler shuffles block indices by seed (resume is exact) and gives
each rank its own.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

from tinyllm.config import DataArguments
from tinyllm.data.corpora import cache_root
from tinyllm.data.documents import CorpusStream
from tinyllm.errors import DataError
from tinyllm.formatting import fmt_bytes
from tinyllm.logs import Progress

__all__ = ["FORMAT_VERSION", "SHARD_TOKENS", "Shards", "prepare_shards", "shard_key", "TrainBlocks",
           "ValidationBlocks"]

logger = logging.getLogger(__name__)
FORMAT_VERSION = 2  # 2: documents start at their exact byte offsets (the held-out tail)
SHARD_TOKENS = 1 << 25  # 33.5M tokens: 64 MB of uint16 per file
BATCH_BYTES = 4 << 20  # text per encode_batch call (the tokenizers library spreads it over all cores)


def _tokenizer_digest(tokenizer) -> str:
    spec = tokenizer.backend_tokenizer.to_str() + json.dumps([tokenizer.bos_token_id, tokenizer.eos_token_id])
    return hashlib.sha256(spec.encode("utf-8")).hexdigest()[:16]


def shard_key(stream: CorpusStream, tokenizer) -> str:
    spec = {"format": FORMAT_VERSION, "corpus": stream.fingerprint(), "tokenizer": _tokenizer_digest(tokenizer)}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Shards:
    """A prepared folder: where it is and what meta.json says."""

    folder: Path
    meta: dict

    @property
    def dtype(self):
        import numpy as np

        return np.dtype(self.meta["dtype"])

    def files(self, split: str) -> list[tuple[Path, int]]:
        return [(self.folder / name, n) for name, n in self.meta[split]["files"]]


def _load(folder: Path) -> Shards | None:
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return Shards(folder, meta)


def prepare_shards(data: DataArguments, tokenizer, seed: int = 0, shards_dir: str | None = None) -> Shards:
    """The shards of `data`'s corpus under `tokenizer`: found when already prepared, else written (atomically)."""
    stream = CorpusStream(data, seed)
    key = shard_key(stream, tokenizer)
    folder = Path(shards_dir) if shards_dir else cache_root(data.cache_dir) / "shards" / key
    found = _load(folder)
    if found is not None and found.meta.get("format") == FORMAT_VERSION and found.meta.get("key") == key:
        logger.info("token shards found in %s (%s training tokens): no tokenizing needed", folder,
                    f"{found.meta['train']['tokens']:,}")
        return found
    if found is not None:
        why = ("an older shard format" if found.meta.get("format") != FORMAT_VERSION else
               "another corpus, corpus version or tokenizer")
        logger.warning("%s holds shards of %s: preparing them again", folder, why)
    return _write(stream, tokenizer, key, folder)


def _clean_leftovers(folder: Path) -> None:
    """Temporary folders of prepares that were killed (their process is gone) are removed."""
    host = socket.gethostname()
    for tmp in folder.parent.glob(f"{folder.name}.tmp-*"):
        _, _, rest = tmp.name.partition(".tmp-")
        tmp_host, _, pid = rest.rpartition("-")
        if tmp_host == host and pid.isdigit():
            try:
                os.kill(int(pid), 0)
                continue  # still running
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
            shutil.rmtree(tmp, ignore_errors=True)


def _check_disk(stream: CorpusStream, folder: Path, bytes_per_token: float, tokens_per_byte: float | None) -> None:
    if not stream.total_bytes or not tokens_per_byte:
        return
    need = stream.total_bytes * tokens_per_byte * bytes_per_token * 1.05
    free = shutil.disk_usage(folder.parent).free
    if free < need:
        raise DataError(f"not enough disk for the token shards in {folder.parent}: about {fmt_bytes(need)} needed, "
                        f"{fmt_bytes(free)} free; free some space or point --cache_dir at a bigger disk")


class _Writer:
    """Token files of one split: rotated every SHARD_TOKENS tokens."""

    def __init__(self, folder: Path, split: str, dtype, rotate: bool):
        self.folder, self.split, self.dtype, self.rotate = folder, split, dtype, rotate
        self.files: list[list] = []
        self.handle = None

    def write(self, tokens) -> None:
        while len(tokens):
            if self.handle is None or (self.rotate and self.files[-1][1] >= SHARD_TOKENS):
                self._next()
            room = SHARD_TOKENS - self.files[-1][1] if self.rotate else len(tokens)
            part, tokens = tokens[:room], tokens[room:]
            part.astype(self.dtype, copy=False).tofile(self.handle)
            self.files[-1][1] += len(part)

    def _next(self) -> None:
        self.close()
        name = f"{self.split}-{len(self.files):05d}.bin"
        self.handle = open(self.folder / name, "wb")
        self.files.append([name, 0])

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def _write(stream: CorpusStream, tokenizer, key: str, folder: Path) -> Shards:
    import numpy as np

    folder.parent.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(folder)
    tmp = folder.with_name(f"{folder.name}.tmp-{socket.gethostname()}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    dtype = np.dtype(np.uint16 if len(tokenizer) <= 1 << 16 else np.uint32)
    backend = tokenizer.backend_tokenizer
    eos, unk = tokenizer.eos_token_id, tokenizer.unk_token_id
    adds_bos = tokenizer.bos_token_id is not None and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]
    writers = {"train": _Writer(tmp, "train", dtype, rotate=True), "validation": _Writer(tmp, "validation", dtype,
                                                                                           rotate=False)}
    totals = {s: {"tokens": 0, "documents": 0, "bytes": 0, "chars": 0} for s in writers}
    val_docs: list[tuple[int, int, int]] = []
    samples: list[str] = []
    unknown = 0
    start = time.perf_counter()
    bar = Progress(stream.total_bytes, "tokenizing into shards", unit="B")

    def flush(batch: list[tuple[str, bool]]) -> None:
        nonlocal unknown
        encodings = backend.encode_batch([t for t, _ in batch], add_special_tokens=True)
        for split in ("train", "validation"):
            idx = [i for i, (_, v) in enumerate(batch) if v == (split == "validation")]
            if not idx:
                continue
            lengths = [len(encodings[i].ids) + 1 for i in idx]
            flat = np.fromiter(chain.from_iterable(chain(encodings[i].ids, (eos,)) for i in idx), dtype=np.int64,
                               count=sum(lengths))
            if unk is not None:
                unknown += int(np.count_nonzero(flat == unk))
            writers[split].write(flat)
            t = totals[split]
            t["tokens"] += len(flat)
            t["documents"] += len(idx)
            for i, n in zip(idx, lengths):
                text = batch[i][0]
                nbytes = len(text.encode("utf-8"))
                t["bytes"] += nbytes
                t["chars"] += len(text)
                if split == "validation":
                    val_docs.append((n, nbytes, len(text)))
                    if len(samples) < 8:
                        samples.append(text[:400])

    try:
        batch, size, checked = [], 0, False
        for text, is_val in stream:
            batch.append((text, is_val))
            size += len(text)
            if size >= BATCH_BYTES:
                flush(batch)
                if not checked:  # the disk check, from the tokens per byte of the first batch
                    measured = sum(t["tokens"] for t in totals.values()) / max(sum(t["bytes"] for t in
                                                                                totals.values()), 1)
                    _check_disk(stream, tmp, dtype.itemsize, measured)
                    checked = True
                batch, size = [], 0
                bar.update_to(stream.bytes_read)
        if batch:
            flush(batch)
        bar.update_to(stream.bytes_read)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno == 28:  # ENOSPC
            raise DataError(f"the disk filled up while writing token shards to {folder.parent}: nothing was kept; "
                            f"free some space or point --cache_dir at a bigger disk") from exc
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        bar.close()
        for w in writers.values():
            w.close()
    if totals["train"]["tokens"] == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"corpus '{stream.data.dataset_name}' has no training documents (all "
                        f"{totals['validation']['documents']} are held out); lower --validation_split_percentage or "
                        f"use more data")
    np.save(tmp / "validation-docs.npy", np.array(val_docs, dtype=np.int64).reshape(-1, 3))
    seconds = time.perf_counter() - start
    meta = {"format": FORMAT_VERSION, "key": key, "dtype": dtype.name, "vocab_size": len(tokenizer),
            "bos_id": tokenizer.bos_token_id, "eos_id": eos, "adds_bos": adds_bos, "unk_id": unk,
            "unknown_tokens": unknown, "fingerprint": stream.fingerprint(), "validation_samples": samples,
            "seconds": round(seconds, 2),
            "train": {**totals["train"], "files": writers["train"].files},
            "validation": {**totals["validation"], "files": writers["validation"].files}}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str, ensure_ascii=False) + "\n")
    _publish(tmp, folder)
    mb = (stream.bytes_read or sum(t["bytes"] for t in totals.values())) / 2**20
    logger.info("prepared %s training + %s held-out tokens from %.0f MB in %.0f s (%.1f MB/s) into %s",
                f"{totals['train']['tokens']:,}", f"{totals['validation']['tokens']:,}", mb, seconds,
                mb / max(seconds, 1e-9), folder)
    return Shards(folder, meta)


def _publish(tmp: Path, folder: Path) -> None:
    """Move a complete temporary folder into place; another process that got there first wins."""
    old = None
    if folder.exists():
        old = folder.with_name(f"{folder.name}.old-{os.getpid()}")
        os.replace(folder, old)
    try:
        os.replace(tmp, folder)
    except OSError:  # a concurrent prepare (another node on a shared filesystem) published first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- reading

def _labels(ids, bos_id: int | None):
    """Labels of a block: its tokens, with bos masked (bos always follows eos, so predicting it is free)."""
    labels = ids.clone()
    if bos_id is not None:
        labels[ids == bos_id] = -100
    return labels


class TrainBlocks:
    """The training split as `block_size`-token blocks (torch map-style dataset); blocks stay within a shard."""

    def __init__(self, shards: Shards, block_size: int):
        self.shards, self.block_size = shards, block_size
        self.files = shards.files("train")
        self.dtype = shards.dtype
        self.starts = [0]
        for _, n in self.files:
            self.starts.append(self.starts[-1] + n // block_size)
        meta = shards.meta
        self.mask = meta["bos_id"] if meta["adds_bos"] and meta["bos_id"] != meta["eos_id"] else None
        self._fds: dict[int, int] = {}

    def __len__(self) -> int:
        return self.starts[-1]

    def __getstate__(self):  # pickled into DataLoader workers / spawned processes: descriptors are reopened there
        return {**self.__dict__, "_fds": {}}

    def __del__(self):
        for fd in getattr(self, "_fds", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass

    def __getitem__(self, i: int) -> dict:
        import numpy as np
        import torch

        if not 0 <= i < len(self):
            raise IndexError(i)
        k = bisect.bisect_right(self.starts, i) - 1
        fd = self._fds.get(k)
        if fd is None:  # opened on first use, in the process that reads (DataLoader workers included)
            fd = self._fds[k] = os.open(self.files[k][0], os.O_RDONLY)
        size = self.block_size * self.dtype.itemsize
        raw = os.pread(fd, size, (i - self.starts[k]) * size)
        ids = torch.from_numpy(np.frombuffer(raw, dtype=self.dtype).astype(np.int64))
        return {"input_ids": ids, "labels": _labels(ids, self.mask)}


class ValidationBlocks:
    """The held-out documents, whole, from the first until `max_tokens` (None or 0: all), packed into blocks as in
    training; small by construction, so held in memory. Also what bits per byte needs: predicted tokens per byte
    and per character of exactly these documents."""

    def __init__(self, shards: Shards, block_size: int, max_tokens: int | None):
        import numpy as np
        import torch

        meta = shards.meta
        docs = np.load(shards.folder / "validation-docs.npy")
        ends = np.cumsum(docs[:, 0]) if len(docs) else np.zeros(0, dtype=np.int64)
        n_docs = len(docs) if not max_tokens else max(1, int(np.searchsorted(ends, max_tokens, side="right")))
        n_docs = min(n_docs, len(docs))
        take = int(ends[n_docs - 1]) if n_docs else 0
        files = shards.files("validation")
        tokens = np.fromfile(files[0][0], dtype=shards.dtype, count=take).astype(np.int64) if files else \
            np.zeros(0, dtype=np.int64)
        n_blocks = len(tokens) // block_size
        ids = torch.from_numpy(tokens[: n_blocks * block_size].reshape(n_blocks, block_size))
        mask = meta["bos_id"] if meta["adds_bos"] and meta["bos_id"] != meta["eos_id"] else None
        self.input_ids, self.labels = ids, _labels(ids, mask)
        used = docs[:n_docs]
        predicted = int(used[:, 0].sum()) - (n_docs if mask is not None else 0)  # bos is never predicted
        self.documents, self.tokens = n_docs, int(used[:, 0].sum())
        self.tokens_per_byte = predicted / max(int(used[:, 1].sum()), 1)
        self.tokens_per_char = predicted / max(int(used[:, 2].sum()), 1)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, i):
        return {"input_ids": self.input_ids[i], "labels": self.labels[i]}
