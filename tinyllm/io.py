"""Output folders that are never half-written: work in a temporary sibling folder, then rename."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from tinyllm.errors import ConfigError

__all__ = ["check_output_dir", "atomic_output_dir", "atomic_file", "staged_into"]


def check_output_dir(path: str | os.PathLike, overwrite: bool, resume: bool = False) -> None:
    """Refuse to clobber a non-empty folder unless asked to overwrite (or to resume into it)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"output_dir {path} exists and is a file; choose another --output_dir")
    if path.is_dir() and any(path.iterdir()) and not overwrite and not resume:
        raise ConfigError(f"output_dir {path} exists and is not empty; pass --overwrite_output_dir true to replace "
                          f"it, --resume_from_checkpoint true to continue, or choose another --output_dir")


@contextlib.contextmanager
def atomic_output_dir(final: str | os.PathLike):
    """Yield a temporary folder next to `final`; on success it replaces `final`, on error it is removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    backup = None
    if final.exists():
        backup = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, backup)
    os.replace(tmp, final)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


@contextlib.contextmanager
def staged_into(dest: str | os.PathLike):
    """Yield a hidden temporary folder inside `dest` (which may hold checkpoints already); on success move each of
    its entries into `dest`, replacing same-named ones; on error remove it. `dest` never holds half-written
    final files."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".final-", dir=dest))
    try:
        yield staging
        for item in staging.iterdir():
            target = dest / item.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(final: str | os.PathLike, overwrite: bool = False):
    """Yield a temporary path next to `final`; on success it is renamed to `final`, on error removed. Refuses an
    existing `final` unless `overwrite`, and a missing or read-only folder, with one line each."""
    final = Path(final)
    if final.exists() and not overwrite:
        raise ConfigError(f"{final} already exists; pass --overwrite true to replace it, or choose another --output")
    if not final.parent.is_dir():
        raise ConfigError(f"output folder {final.parent} does not exist; create it first or choose another --output")
    if not os.access(final.parent, os.W_OK):
        raise ConfigError(f"output folder {final.parent} is not writable; choose another --output")
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.tmp-", dir=final.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
