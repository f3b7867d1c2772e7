"""Logging for the command line, configured once by the entry point (never at import, never by the library).

Only tinyllm's own logger gets a handler, so a Python caller's logging setup is left alone. In multi-process
runs only the main process logs at INFO. transformers/datasets are quietened through their documented
environment variables, read when they are first imported.
"""

from __future__ import annotations

import logging
import os
import sys

from tinyllm.formatting import fmt_clock

__all__ = ["setup_logging", "is_main_process", "Progress"]


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


def setup_logging() -> None:
    """tinyllm's logger on stderr (INFO on the main process, WARNING on the others) and quiet libraries; off a
    terminal, no carriage-return progress bars from transformers, datasets or the Hub client."""
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
        # transformers' own bars ("Loading weights", "Writing model shards") follow huggingface_hub's switch, read
        # when transformers is imported; set it in the Hub client too in case it was imported before this call
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
        if "transformers" in sys.modules:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
    if "transformers" in sys.modules:
        import transformers

        transformers.utils.logging.set_verbosity_warning()


class Progress:
    """Progress of a long step that is not training (prepare): a tqdm bar with rate and ETA on a terminal; off a
    terminal, one plain line every `every` seconds. `total` may be None (unknown length: rate only)."""

    def __init__(self, total: float | None, desc: str, unit: str = "it", every: float = 10.0):
        import time

        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.done, self.start, self.last = 0.0, time.perf_counter(), time.perf_counter()
        self.bar = None
        if sys.stderr.isatty() and is_main_process():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, unit_divisor=1024 if unit == "B"
                            else 1000, dynamic_ncols=True)

    def update_to(self, done: float) -> None:
        import time

        step, self.done = done - self.done, done
        if self.bar is not None:
            self.bar.update(step)
            return
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            self._line(now)

    def _line(self, now: float) -> None:
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        scale, name = (2**20, "MB") if self.unit == "B" else (1, self.unit)
        text = f"{self.desc}: {self.done / scale:,.1f} {name}"
        if self.total:
            eta = (self.total - self.done) / rate if rate else 0.0
            text += f" of {self.total / scale:,.1f} ({100 * self.done / self.total:.0f}%)"
        text += f" | {rate / scale:,.1f} {name}/s | elapsed {fmt_clock(elapsed)}"
        if self.total:
            text += f" | ETA {fmt_clock(eta)}"
        logging.getLogger("tinyllm").info(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
