"""Logging for the command line, configured once by the entry point (never at import, never by the library).

Only tinyllm's own logger gets a handler, so a Python caller's logging setup is left alone. In multi-process
runs only the main process logs at INFO. transformers/datasets are quietened through their documented
environment variables, read when they are first imported.
"""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["setup_logging", "is_main_process"]


def is_main_process() -> bool:
    """Rank 0 of a torchrun/accelerate launch, or a single process."""
    return os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) in ("0", "")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of each record (it may be replaced after setup)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup_logging(_objs=None) -> None:
    logger = logging.getLogger("tinyllm")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO if is_main_process() else logging.WARNING)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "warning")
    os.environ.setdefault("DATASETS_VERBOSITY", "warning")
    if not sys.stderr.isatty():
        # a log file or CI: no carriage-return progress bars from the libraries (tinyllm logs plain progress lines)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TQDM_DISABLE", "1")
    if "transformers" in sys.modules:
        import transformers

        transformers.utils.logging.set_verbosity_warning()
