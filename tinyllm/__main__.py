"""`python -m tinyllm`: the same as the `tinyllm` command (see tinyllm.cli)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
