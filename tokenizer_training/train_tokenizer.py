"""Train a byte-level BPE (default) or char-level tokenizer with `tokenizers`.

    python tokenizer_training/train_tokenizer.py --dataset_name tiny_shakespeare --tokenizer_type char \
        --output_dir outputs/tok_char
    python tokenizer_training/train_tokenizer.py --dataset_name builtin --vocab_size 2000 --output_dir outputs/tok

Every option: python tokenizer_training/train_tokenizer.py --help
"""

import sys

from tinyllm.cli import run

if __name__ == "__main__":
    sys.exit(run("train-tokenizer"))
