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


def _launch(nproc, script, args, out, env=None):
    """1: the one-process config; 2: the README's multi_cpu.yaml command (accelerate launch --config_file ...)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
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


@pytest.mark.parametrize("chunked", [False, True])
def test_pretraining_two_processes_match_one(tmp_path, tokenizer_dir, chunked):
    """chunked: the loss over chunks of tokens (used for large vocabularies) forced on, with gradient accumulation
    on one process and DDP on two: the same curve."""
    args = [*TINY_MODEL_ARGS, "--dataset_name", "builtin", "--builtin_num_documents", "400",
            "--tokenizer_name_or_path", str(tokenizer_dir), "--max_steps", "20", "--eval_steps", "10",
            "--logging_steps", "2", "--save_steps", "10", "--seed", "7", "--learning_rate", "0.003"]
    env = {"TINYLLM_CHUNK_MIN_LOGITS": "0"} if chunked else {}
    one = ["--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2"] if chunked else \
        ["--per_device_train_batch_size", "8"]
    _launch(1, "recipes/pretrain.py", args + one, tmp_path / "one", env)
    res = _launch(2, "recipes/pretrain.py", args + ["--per_device_train_batch_size", "4"], tmp_path / "two", env)
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


def _two_machines(args, out, port):
    """Two "machines" on 127.0.0.1 (accelerate launch --num_machines 2, one process each), started together."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = []
    for rank in (0, 1):
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "multi_cpu.yaml"),
               "--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank), "--main_process_ip",
               "127.0.0.1", "--main_process_port", str(port), "recipes/pretrain.py", "--ddp_backend", "gloo",
               *args, "--output_dir", str(out)]
        procs.append(subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env=env))
    results = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-4000:]
    return results


def test_two_machines_on_loopback_match_one_process_and_resume(tmp_path, tokenizer_dir):
    """num_machines: 2 on 127.0.0.1 reads one set of shards from the shared cache, follows one process's loss at
    the same global batch, and a resume from its checkpoint reaches the same final curve."""
    cache = tmp_path / "cache"
    args = [*TINY_MODEL_ARGS, "--dataset_name", "builtin", "--builtin_num_documents", "400",
            "--tokenizer_name_or_path", str(tokenizer_dir), "--max_steps", "20", "--eval_steps", "10",
            "--logging_steps", "2", "--save_steps", "10", "--seed", "7", "--learning_rate", "0.003",
            "--cache_dir", str(cache)]
    _launch(1, "recipes/pretrain.py", args + ["--per_device_train_batch_size", "8"], tmp_path / "one")
    two = tmp_path / "two"
    results = _two_machines(args + ["--per_device_train_batch_size", "4"], two, 29531)
    (t1, e1), (t2, e2) = _curves(tmp_path / "one"), _curves(two)
    assert len(t1) == len(t2) >= 5 and t1 == pytest.approx(t2, rel=TRAIN_RTOL)
    assert e1 == pytest.approx(e2, abs=EVAL_ATOL)
    assert len(list((cache / "shards").glob("*/meta.json"))) == 1  # prepared once, found by the other "machine"
    assert sum(out.count("saved to") for out, _ in results) == 1
    # resume both machines from the middle checkpoint: the second half of the curve is the same
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    import shutil

    shutil.copytree(two / "checkpoint-10", resumed / "checkpoint-10")
    _two_machines(args + ["--per_device_train_batch_size", "4", "--resume_from_checkpoint", "true"], resumed, 29533)
    t3, _ = _curves(resumed)
    assert t3[-5:] == pytest.approx(t2[-5:], rel=TRAIN_RTOL)


READER = r'''
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, default_data_collator
from tinyllm.config import DataArguments, ModelArguments
from tinyllm.data.shards import TrainBlocks, prepare_shards
from tinyllm.modeling import build_config
from tinyllm.training.arguments import PretrainingArguments

tok_dir, cache, out = sys.argv[1:4]
args = PretrainingArguments(output_dir=out, per_device_train_batch_size=4, report_to="none", ddp_backend="gloo",
                            eval_strategy="no", remove_unused_columns=False,
                            seed=0)
with args.main_process_first():
    shards = prepare_shards(DataArguments(builtin_num_documents=300, cache_dir=cache),
                            AutoTokenizer.from_pretrained(tok_dir))

class Indexed(TrainBlocks):
    def __getitem__(self, i):
        return {**super().__getitem__(i), "index": torch.tensor(i)}

blocks = Indexed(shards, 16)
tok = AutoTokenizer.from_pretrained(tok_dir)
model = AutoModelForCausalLM.from_config(build_config(ModelArguments(n_layer=1, n_embd=32, n_head=2), len(tok), 16,
                                                      tok.bos_token_id, tok.eos_token_id, tok.pad_token_id))
trainer = Trainer(model=model, args=args, train_dataset=blocks, data_collator=default_data_collator)
seen = [int(i) for batch in trainer.get_train_dataloader() for i in batch["index"]]
with open(f"{out}/seen-{args.process_index}.json", "w") as f:
    json.dump({"rank": args.process_index, "n": len(blocks), "seen": seen}, f)
'''


def test_each_rank_reads_its_own_blocks(tmp_path, tokenizer_dir):
    """Trainer's sampler over the shard blocks, two processes (torchrun): every block is read by one rank only
    (apart from the few accelerate repeats to even out the last batch), and together they read all of them."""
    script = tmp_path / "reader.py"
    script.write_text(READER)
    out = tmp_path / "out"
    out.mkdir()
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          "29535", str(script), str(tokenizer_dir), str(tmp_path / "cache"), str(out)], cwd=REPO,
                         capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    a, b = (json.loads((out / f"seen-{r}.json").read_text()) for r in (0, 1))
    n = a["n"]
    assert set(a["seen"]) | set(b["seen"]) == set(range(n))
    assert len(set(a["seen"]) & set(b["seen"])) <= (8 - n % 8) % 8  # only the padding of the last batch
    assert len(a["seen"]) == len(b["seen"])
