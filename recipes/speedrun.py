"""From text to a chatting model in the time you have: tokenizer, pretraining sized to the budget, SFT, evaluation,
report card, GGUF.

    python recipes/speedrun.py --config recipes/configs/speedrun.yaml
    python recipes/speedrun.py --dataset_name my_text.txt --time_budget 30m --output_dir outputs/mine

Every option: python recipes/speedrun.py --help (the same as `tinyllm speedrun`)
"""

import sys

from tinyllm.cli import run

if __name__ == "__main__":
    sys.exit(run("speedrun"))
