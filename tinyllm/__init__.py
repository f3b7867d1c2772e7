"""tinyllm: train your own small language model from scratch on the Hugging Face stack.

The package has no side effects at import and keeps heavy imports (torch, transformers) inside functions.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
