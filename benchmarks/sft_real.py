"""SFT on real data: LoRA on the Alpaca-format English set in ../shared/data/sft_en on top of a model pretrained on
a real corpus (TinyStories by default). Reports the answer-token loss before and after, and the share of held-out
generations that end with <|im_end|> before max_new_tokens.

    python benchmarks/sft_real.py [--base outputs/tinystories] [--max_steps 600]
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default=None, help="a pretrained folder; default: pretrain tinystories.yaml first")
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "sft_en" /
                                         "alpaca_en_demo.jsonl"))
    p.add_argument("--max_steps", type=int, default=600)
    p.add_argument("--pretrain_steps", type=int, default=600)
    p.add_argument("--use_lora", default="true")
    p.add_argument("--max_new_tokens", type=int, default=256, help="generation budget for the stop-rate check")
    a = p.parse_args()
    from tinyllm.cli import run

    work = Path(tempfile.mkdtemp(prefix="sft_real_"))
    base = a.base
    if base is None:
        base = str(work / "base")
        code = run("pretrain", ["--config", "recipes/configs/tinystories.yaml", "--output_dir", base,
                                "--max_steps", str(a.pretrain_steps), "--report_to", "none", "--block_size", "256",
                                "--eval_steps", "100000", "--save_strategy", "no"])
        if code:
            return code
    out = work / "sft"
    code = run("sft", ["--config", "recipes/configs/sft_quickstart.yaml", "--model_name_or_path", base,
                       "--dataset_name", a.data, "--output_dir", str(out), "--max_seq_length", "256",
                       "--max_steps", str(a.max_steps), "--per_device_train_batch_size", "8",
                       "--learning_rate", "0.002", "--eval_steps", "100000", "--save_strategy", "no",
                       "--eval_max_new_tokens", str(a.max_new_tokens), "--use_lora", a.use_lora, "--report_to", "none"])
    if code:
        return code
    r = json.loads((out / "all_results.json").read_text())
    print("\n| metric | before SFT | after SFT |\n|---|---:|---:|")
    print(f"| answer-token loss (held-out) | {r['eval_answer_loss_before']:.3f} | {r['eval_answer_loss']:.3f} |")
    print(f"| answers ending with <|im_end|> within {a.max_new_tokens} tokens | {r['stopped_rate_before']:.0%} | "
          f"{r['stopped_rate']:.0%} |")
    print(f"\nbase: {base}; SFT data: {r['train_examples']} train / {r['eval_examples']} held-out examples "
          f"({r['dropped_too_long']} longer than 256 tokens dropped); {a.max_steps} steps, "
          f"{'LoRA' if a.use_lora == 'true' else 'full fine-tuning'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
