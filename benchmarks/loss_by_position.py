"""Held-out loss by position in the block: what a model pays at the start of each block, where the document it is
in began in the block before and its context is lost, against what it pays further in.

    python benchmarks/loss_by_position.py MODEL [MODEL ...] --shards FOLDER [--block_size 128 256]
        [--eval_max_tokens 65536]

MODEL: a saved model folder (safetensors). FOLDER: prepared shards (`tinyllm prepare`'s folder, with meta.json) or
a speedrun folder (the shards its prepare stage used). The held-out documents are packed into blocks exactly as
`tinyllm pretrain` evaluates them (data/shards.py ValidationBlocks, the same first --eval_max_tokens), for each
block size given; a model is scored only on blocks no longer than its context. Prints a Markdown table: the mean
held-out loss (nats per token; the run's eval_loss on the same blocks) and its mean over positions 1-8, 9-16,
17-32, 33-64, 65-128, 129-256, 257-512 and past 32 (position 1 is the first token predicted: the second of the
block).
"""

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BANDS = [(0, 8), (8, 16), (16, 32), (32, 64), (64, 128), (128, 256), (256, 512)]


def shards_folder(path: Path) -> Path:
    if (path / "speedrun.json").is_file():
        return Path(json.loads((path / "speedrun.json").read_text())["stages"]["prepare"]["folder"])
    return path


def losses(model, folder: Path, block: int, max_tokens: int):
    """Per-token held-out loss and which tokens count (labels not -100), one row per block; None if the model's
    context is shorter than the block."""
    import torch

    from tinyllm.data.shards import Shards, ValidationBlocks

    if block > model.config.max_position_embeddings:
        return None
    val = ValidationBlocks(Shards(folder, json.loads((folder / "meta.json").read_text())), block, max_tokens)
    rows, masks = [], []
    with torch.no_grad():
        for i in range(0, len(val), 8):
            ids, labels = val.input_ids[i:i + 8], val.labels[i:i + 8]
            logits = model(ids).logits[:, :-1].float()
            target = labels[:, 1:]
            rows.append(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                          reduction="none", ignore_index=-100).view(target.shape))
            masks.append(target != -100)
    return torch.cat(rows), torch.cat(masks)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--shards", required=True)
    ap.add_argument("--block_size", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--eval_max_tokens", type=int, default=65536)
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()
    folder = shards_folder(Path(args.shards))
    widest = max(args.block_size)
    bands = [b for b in BANDS if b[0] < widest - 1]
    print("| model | block | held-out loss | " + " | ".join(f"{a + 1}-{b}" for a, b in bands) + " | past 32 |")
    print("|---|---|---|" + "---|" * (len(bands) + 1))
    for model_dir in args.models:
        model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True).eval()  # once, for every block
        name = "/".join(Path(model_dir).parts[-2:]) if Path(model_dir).name == "pretrain" else Path(model_dir).name
        for block in args.block_size:
            scored = losses(model, folder, block, args.eval_max_tokens)
            if scored is None:
                continue
            per_token, mask = scored
            cells = []
            for a, b in bands:
                part, keep = per_token[:, a:b], mask[:, a:b]
                cells.append(f"{(part.sum() / keep.sum()).item():.4f}" if a < per_token.shape[1] else "")
            mean = (per_token.sum() / mask.sum()).item()
            past = (per_token[:, 32:].sum() / mask[:, 32:].sum()).item()
            print(f"| {name} | {block} | {mean:.4f} | " + " | ".join(cells) + f" | {past:.4f} |")


if __name__ == "__main__":
    main()
