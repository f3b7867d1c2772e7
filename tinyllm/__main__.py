"""`python -m tinyllm` and the `tinyllm` command (see tinyllm.cli)."""

import os
import sys

from tinyllm.cli import main

# Commands that only read a model or a config and print (not `report`, which writes files): once they have
# printed, the process ends with os._exit
# instead of Python's interpreter finalization, which after importing torch and transformers' models takes ~1 s on
# a 2-core CPU (`python -c "import torch, transformers.models.llama.modeling_llama"`: 3.95 s; with os._exit(0)
# at the end: 2.75 s) and would be a fifth of `tinyllm generate`'s time. Commands that train, serve or write files
# exit normally, so every atexit handler and finalizer runs.
QUICK_EXIT = {"generate", "chat", "plan"}


def entry() -> None:
    try:
        code = main()
    except BrokenPipeError:  # `tinyllm ... --help | head`: the reader left; nothing more to say, and no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own flush at exit would fail again
        sys.exit(0)
    if len(sys.argv) > 1 and sys.argv[1] in QUICK_EXIT:
        import logging

        logging.shutdown()  # flushes the log handlers
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
