"""Peak memory (RSS) of LoRA SFT on models of real size: does SFT hold one copy of the base weights?

    python benchmarks/sft_memory.py [--steps 10] [--batch 16] [--max_seq_length 256] [--baseline_repo DIR]

Builds two base models with random weights and tinyllm's tokenizer (no download): a Llama of 143M parameters
(the gpt2-small preset as a Llama with an untied 37k vocabulary) and SmolLM2-135M's shape (30 layers x 576, 9
heads, 3 key/value heads, 49k vocabulary). Runs `tinyllm sft` on the built-in QA for each, at SFT's default
micro-batch and sequence length unless told otherwise, as shipped and with --gradient_checkpointing true, and reads
the peak RSS from /usr/bin/time -v. The aim is <= 1 GB + 2x the fp32 weights. With --baseline_repo, the same
command runs from that checkout too (e.g. `git worktree add /tmp/before 573d87b`), side by side in the same run.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build_bases(folder: Path) -> dict[str, Path]:
    sys.path.insert(0, str(ROOT))
    from transformers import AutoModelForCausalLM, LlamaConfig

    from tinyllm.data.builtin import generate_corpus
    from tinyllm.data.tokenizer import train_tokenizer

    docs = [d.text for d in generate_corpus(3000, 0)]
    tok = train_tokenizer(docs, "bpe", 4000)
    shapes = {
        "llama-143M": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12,
                           intermediate_size=2048, vocab_size=37376, tie_word_embeddings=False),
        "smollm2-135M-shape": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                                   num_key_value_heads=3, intermediate_size=1536, vocab_size=49152,
                                   tie_word_embeddings=True),
    }
    out = {}
    for name, shape in shapes.items():
        path = folder / name
        cfg = LlamaConfig(max_position_embeddings=512, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id, **shape)
        AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
        tok.save_pretrained(path)
        out[name] = path
    return out


def peak_rss(cmd: list[str], cwd: Path, env: dict) -> tuple[float, float, str]:
    start = time.time()
    res = subprocess.run(["/usr/bin/time", "-v", *cmd], cwd=cwd, env=env, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr[-3000:]}")
    kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr).group(1))
    return kb / 1024 / 1024, time.time() - start, res.stdout


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=16, help="micro-batch (SFT's default: 16)")
    p.add_argument("--max_seq_length", type=int, default=256, help="(SFT's default: 256)")
    p.add_argument("--models", default="llama-143M,smollm2-135M-shape")
    p.add_argument("--baseline_repo", default=None, help="an older tinyllm checkout to measure side by side")
    a = p.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    tmp = Path(tempfile.mkdtemp(prefix="tinyllm_sftmem_"))
    bases = build_bases(tmp)
    repos = [("this checkout", ROOT, ()), ("this checkout, --gradient_checkpointing true", ROOT,
                                           ("--gradient_checkpointing", "true"))]
    repos += [("baseline", Path(a.baseline_repo), ())] if a.baseline_repo else []
    print(f"micro-batch {a.batch}, max_seq_length {a.max_seq_length}, {a.steps} steps, built-in QA\n")
    print("| model | parameters | fp32 weights | code | peak RSS | aim (1 GB + 2x weights) | wall |")
    print("|---|---:|---:|---|---:|---:|---:|")
    for name, base in bases.items():
        if name not in a.models.split(","):
            continue
        weights = sum(f.stat().st_size for f in base.glob("*.safetensors")) / 1024 ** 3
        for label, repo, extra in repos:
            cmd = [sys.executable, "-m", "tinyllm", "sft", "--model_name_or_path", str(base), "--dataset_name",
                   "builtin_qa", "--output_dir", str(tmp / f"out-{name}-{label.replace(' ', '_')}"),
                   "--max_steps", str(a.steps), "--per_device_train_batch_size", str(a.batch), "--eval_steps",
                   "1000", "--save_steps", "1000", "--logging_steps", "5", "--report_to", "none", "--max_seq_length",
                   str(a.max_seq_length), "--plot_loss", "false", *extra]
            run_env = {**env, "PYTHONPATH": str(repo)}
            gb, seconds, _ = peak_rss(cmd, repo, run_env)
            params = weights * 1024 ** 3 / 4 / 1e6
            print(f"| {name} | {params:.0f}M | {weights:.2f} GB | {label} | {gb:.2f} GB | {1 + 2 * weights:.2f} GB | "
                  f"{seconds:.0f} s |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
