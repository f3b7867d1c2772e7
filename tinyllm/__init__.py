"""tinyllm: train your own small language model from scratch on the Hugging Face stack.

The package has no side effects at import and keeps heavy imports (torch, transformers) inside functions.
"""

import time as _time

__version__ = "0.1.0"
STARTED_AT = _time.time()  # when this command started (cli.run resets it): where a --time_budget counts from

__all__ = ["__version__", "STARTED_AT"]
