"""RL with verifiable rewards: GRPO (TRL's GRPOTrainer) on a chat model, e.g. after SFT on builtin_arithmetic.

    accelerate launch recipes/grpo.py --config recipes/configs/grpo_arithmetic.yaml
    python recipes/grpo.py --config recipes/configs/grpo_arithmetic.yaml --max_steps 3   # tiny CPU check

Every option: python recipes/grpo.py --help
"""

import sys

from tinyllm.cli import run

if __name__ == "__main__":
    sys.exit(run("grpo"))
