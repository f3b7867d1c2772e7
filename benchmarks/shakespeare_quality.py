"""Quality per time on Tiny Shakespeare (char level): validation loss and training time of the
shakespeare_char recipe, as a Llama (tinyllm's default) and as a GPT-2 of the same shape (the baseline),
measured one after the other in one run on the same machine.

    python benchmarks/shakespeare_quality.py                      # the recipe as shipped
    python benchmarks/shakespeare_quality.py --max_steps 3000 --learning_rate 0.003

Reference on this 2-core CPU (../shared/GUIDE.md): nanoGPT's CPU recipe reaches val loss 1.886 after 143 s.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max_steps", type=int, default=None)
    p.add_argument("--learning_rate", type=float, default=None)
    p.add_argument("--per_device_train_batch_size", type=int, default=None)
    p.add_argument("--models", default="llama,gpt2")
    a = p.parse_args()
    from tinyllm.cli import run

    rows = []
    for model_type in a.models.split(","):
        out = Path(tempfile.mkdtemp(prefix=f"sc_{model_type}_"))
        extra = [f"--{k}={v}" for k, v in vars(a).items() if v is not None and k != "models"]
        code = run("pretrain", ["--config", "recipes/configs/shakespeare_char.yaml", "--model_type", model_type,
                                "--output_dir", str(out), "--overwrite_output_dir", "true", "--report_to", "none",
                                "--eval_steps", "100000", "--save_strategy", "no", *extra])
        if code:
            return code
        res = json.loads((out / "all_results.json").read_text())
        rows.append((model_type, res["parameters"], res["train_runtime"], res["eval_loss"]))
    print("\n| model | parameters | training time (s) | validation loss (nats/char) |\n|---|---:|---:|---:|")
    print("| nanoGPT CPU recipe (reference, GUIDE.md) | 800,000 | 143 | 1.886 |")
    for m, n, t, loss in rows:
        print(f"| tinyllm {m} | {n:,} | {t:.0f} | {loss:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
