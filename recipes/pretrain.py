"""Pretrain a small GPT-2/Llama model from scratch.

    accelerate launch recipes/pretrain.py --config recipes/configs/quickstart.yaml
    python recipes/pretrain.py --config recipes/configs/shakespeare_char.yaml --max_steps 50   # tiny CPU check

Every option: python recipes/pretrain.py --help
"""

import sys

from tinyllm.cli import run

if __name__ == "__main__":
    sys.exit(run("pretrain"))
