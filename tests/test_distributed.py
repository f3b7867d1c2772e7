"""Two CPU processes (DDP over gloo, launched with the shipped accelerate configs exactly as the README says) follow
the same loss curve as one process with the same global batch; only the main process writes; the folders match."""

import json
import os
import subprocess
import sys

import pytest

from helpers import REPO, TINY_MODEL_ARGS

# Training losses are the same math summed in a different order: equal to ~1e-6 relative. Validation losses differ
# a little more because Trainer averages per-batch means and the batches split differently over 2 processes.
TRAIN_RTOL = 1e-3
EVAL_ATOL = 0.03


pytestmark = pytest.mark.slow
CONFIGS = REPO / "recipes" / "accelerate_configs"


def _launch(nproc, script, args, out):
    """1: the one-process config; 2: the README's multi_cpu.yaml command (accelerate launch --config_file ...)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    config = CONFIGS / ("cpu.yaml" if nproc == 1 else "multi_cpu.yaml")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    if nproc > 1:
        cmd += ["--main_process_port", "29517" if "pretrain" in script else "29518"]
    cmd += [script] + (["--ddp_backend", "gloo"] if nproc > 1 else [])
    res = subprocess.run(cmd + args + ["--output_dir", str(out)], cwd=REPO, capture_output=True, text=True,
                         env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    return res


def _curves(out):
    hist = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [h["loss"] for h in hist if "loss" in h], [h["eval_loss"] for h in hist if "eval_loss" in h]


def _layout(out):
    """Files of the output folder. Inside checkpoints each process keeps its own RNG state (rng_state_<rank>.pth,
    which an exact resume needs), so checkpoint files are compared by name without the rank suffix."""
    names = set()
    for p in out.rglob("*"):
        if p.is_file() and "runs" not in p.parts:
            name = str(p.relative_to(out))
            names.add("rng_state" if "rng_state" in name else name)
    return sorted(names)


def _compare(one, two, res_two):
    (t1, e1), (t2, e2) = _curves(one), _curves(two)
    assert len(t1) == len(t2) >= 5
    assert t1 == pytest.approx(t2, rel=TRAIN_RTOL)
    assert e1 == pytest.approx(e2, abs=EVAL_ATOL)
    assert t2[-1] < t2[0]
    assert _layout(one) == _layout(two)
    # only the main process writes and logs the summary
    assert res_two.stdout.count("saved to") == 1


def test_pretraining_two_processes_match_one(tmp_path, tokenizer_dir):
    args = [*TINY_MODEL_ARGS, "--dataset_name", "builtin", "--builtin_num_documents", "400",
            "--tokenizer_name_or_path", str(tokenizer_dir), "--max_steps", "20", "--eval_steps", "10",
            "--logging_steps", "2", "--save_steps", "10", "--seed", "7", "--learning_rate", "0.003"]
    _launch(1, "recipes/pretrain.py", args + ["--per_device_train_batch_size", "8"], tmp_path / "one")
    res = _launch(2, "recipes/pretrain.py", args + ["--per_device_train_batch_size", "4"], tmp_path / "two")
    _compare(tmp_path / "one", tmp_path / "two", res)
    assert res.stderr.count("plan:") == 1


def test_sft_two_processes_match_one(tmp_path, tokenizer_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from tinyllm.config import ModelArguments
    from tinyllm.model_io import load_tokenizer
    from tinyllm.modeling import build_config

    tok = load_tokenizer(str(tokenizer_dir))
    cfg = build_config(ModelArguments(n_layer=2, n_embd=64, n_head=2), len(tok), 128, tok.bos_token_id,
                       tok.eos_token_id, tok.pad_token_id)
    torch.manual_seed(0)
    base = tmp_path / "base"
    AutoModelForCausalLM.from_config(cfg).save_pretrained(base)
    tok.save_pretrained(base)
    args = ["--model_name_or_path", str(base), "--max_steps", "10", "--logging_steps", "2", "--eval_steps", "5",
            "--save_steps", "5", "--report_to", "none", "--eval_max_new_tokens", "4", "--seed", "3",
            "--learning_rate", "0.01"]
    _launch(1, "recipes/sft.py", args + ["--per_device_train_batch_size", "8"], tmp_path / "one")
    res = _launch(2, "recipes/sft.py", args + ["--per_device_train_batch_size", "4"], tmp_path / "two")
    _compare(tmp_path / "one", tmp_path / "two", res)
