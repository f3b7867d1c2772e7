"""Preference-tune a chat model with DPO (TRL's DPOTrainer) and LoRA on chosen/rejected answer pairs.

    accelerate launch recipes/dpo.py --config recipes/configs/dpo_quickstart.yaml
    python recipes/dpo.py --config recipes/configs/dpo_quickstart.yaml --max_steps 5   # tiny CPU check

Every option: python recipes/dpo.py --help
"""

import sys

from tinyllm.cli import run

if __name__ == "__main__":
    sys.exit(run("dpo"))
