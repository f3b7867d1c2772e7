"""Instruction-tune a pretrained tinyllm model with LoRA on question-answer pairs.

    accelerate launch recipes/sft.py --config recipes/configs/sft_quickstart.yaml \
        --model_name_or_path outputs/quickstart --output_dir outputs/sft_quickstart
    python recipes/sft.py --config recipes/configs/sft_quickstart.yaml --max_steps 20   # tiny CPU check

Every option: python recipes/sft.py --help
"""

import sys

from tinyllm.cli import run

if __name__ == "__main__":
    sys.exit(run("sft"))
