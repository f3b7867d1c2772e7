"""Reliability: kill -9 and resume, SIGTERM, NaN, out-of-memory recovery, the training doctor, secrets,
and determinism."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from helpers import REPO, TINY_MODEL_ARGS, assert_user_error, run_inprocess


def _args(tokenizer_dir, out, steps, save_steps, seed=7):
    return [*TINY_MODEL_ARGS, "--dataset_name", "builtin", "--builtin_num_documents", "400",
            "--tokenizer_name_or_path", str(tokenizer_dir), "--output_dir", str(out), "--max_steps", str(steps),
            "--save_steps", str(save_steps), "--eval_strategy", "no", "--seed", str(seed), "--learning_rate", "0.003",
            "--save_total_limit", "10"]


import torch  # noqa: E402


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _popen(args):
    return subprocess.Popen([sys.executable, "-m", "tinyllm", "pretrain", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _complete_checkpoints(out):
    return sorted(p for p in out.glob("checkpoint-*") if (p / "trainer_state.json").is_file())


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, tokenizer_dir, capsys):
    steps, save = 80, 10
    code, _, err = run_inprocess(capsys, "pretrain", *_args(tokenizer_dir, tmp_path / "a", steps, save))
    assert code == 0, err
    out = tmp_path / "b"
    proc = _popen(_args(tokenizer_dir, out, steps, save))
    deadline = time.time() + 240
    while time.time() < deadline and not _complete_checkpoints(out) and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 0.5))  # a random moment after the first checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = _complete_checkpoints(out)
    assert done, "the run was killed before its first checkpoint"
    assert not (out / "model.safetensors").exists(), "killed before the end: no final model"
    # A checkpoint folder half-written at the moment of a kill must never be taken as the newest.
    half = out / "checkpoint-9999"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"\x00" * 10)
    code, _, err = run_inprocess(capsys, "pretrain", *_args(tokenizer_dir, out, steps, save),
                                 "--resume_from_checkpoint", "true")
    assert code == 0, err
    a, b = _weights(tmp_path / "a"), _weights(out)
    assert a.keys() == b.keys()
    diffs = {k: (a[k] - b[k]).abs().max().item() for k in a}
    assert all(d == 0.0 for d in diffs.values()), f"not bit-identical: {diffs}"
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == steps
    # A kill between the last checkpoint and the final save: resuming must not train an extra step.
    late = tmp_path / "late"
    late.mkdir()
    shutil.copytree(tmp_path / "a" / f"checkpoint-{steps}", late / f"checkpoint-{steps}")
    code, _, err = run_inprocess(capsys, "pretrain", *_args(tokenizer_dir, late, steps, save),
                                 "--resume_from_checkpoint", "true")
    assert code == 0, err
    c = _weights(late)
    assert all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_says_how_to_resume(tmp_path, tokenizer_dir):
    out = tmp_path / "run"
    proc = _popen(_args(tokenizer_dir, out, 100000, 100000) + ["--report_to", "tensorboard"])  # runs/ marks the start
    deadline = time.time() + 240
    while time.time() < deadline and not list(out.glob("runs/*")) and proc.poll() is None:
        time.sleep(0.1)
    time.sleep(2.0)  # training is under way
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    assert "\r" not in stderr  # a log off a terminal: no carriage-return bars (the checkpoint's "Writing" included)
    assert "--resume_from_checkpoint true" in stderr
    ckpts = _complete_checkpoints(out)
    assert len(ckpts) == 1 and (ckpts[0] / "optimizer.pt").is_file()
    assert f"checkpoint saved to {ckpts[0]}" in stderr
    assert not (out / "model.safetensors").exists()


def test_nan_loss_stops_without_saving_a_final_model(tmp_path, tokenizer_dir, capsys, monkeypatch):
    from transformers import Trainer

    original = Trainer.compute_loss

    def poisoned(self, model, inputs, *a, **k):
        loss = original(self, model, inputs, *a, **k)
        if self.state.global_step >= 6:  # something goes wrong mid-run (fp16 overflow, bad batch, LR too high)
            loss = loss * float("nan")
        return loss

    monkeypatch.setattr(Trainer, "compute_loss", poisoned)
    out = tmp_path / "nan"
    code, _, err = run_inprocess(capsys, "pretrain", *_args(tokenizer_dir, out, 40, 1000))
    line = assert_user_error(code, err, "nan", "learning_rate")
    assert "step 10" in line  # caught at the first logging interval after it happened (logging_steps=5)
    assert not (out / "model.safetensors").exists()


def test_out_of_memory_halves_batch_and_keeps_global_batch(tmp_path, tokenizer_dir, capsys, monkeypatch):
    import torch
    from transformers import Trainer

    original = Trainer.compute_loss

    def small_memory(self, model, inputs, *a, **k):
        if model.training and inputs["input_ids"].shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, model, inputs, *a, **k)

    monkeypatch.setattr(Trainer, "compute_loss", small_memory)
    out = tmp_path / "oom"
    code, _, err = run_inprocess(capsys, "pretrain", *_args(tokenizer_dir, out, 6, 1000))
    assert code == 0, err
    assert "retrying with batch 4 x accumulation 2" in err and "batch 2 x accumulation 4" in err
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["train_batch_size"] == 2
    results = json.loads((out / "all_results.json").read_text())
    assert results["train_runtime"] > 0


def test_doctor_diagnoses_in_plain_words():
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from tinyllm.training.callbacks import DoctorCallback

    args = TrainingArguments(output_dir="/tmp/x", report_to="none")
    state = TrainerState(max_steps=100)
    doc = DoctorCallback(learning_rate=1e-3)
    for step in range(10, 100, 10):
        state.global_step = step
        doc.on_log(args, state, TrainerControl(), logs={"loss": 4.0 + 0.001 * step})
    assert any("learning_rate 0.0001" in m for m in doc.messages)

    doc = DoctorCallback(learning_rate=1e-3)
    for step, (train, val) in enumerate([(3.0, 2.9), (2.5, 2.6), (2.0, 2.7), (1.5, 2.9)], 1):
        state.global_step = step * 10
        doc.on_log(args, state, TrainerControl(), logs={"loss": train})
        doc.on_log(args, state, TrainerControl(), logs={"eval_loss": val})
    assert any("memorising" in m and "more data" in m for m in doc.messages)


def test_planner_warns_when_model_dwarfs_data():
    from tinyllm.config import DataArguments, ModelArguments
    from tinyllm.modeling import build_config
    from tinyllm.training.arguments import PretrainingArguments
    from tinyllm.training.estimate import estimate

    cfg = build_config(ModelArguments(), 512, 64, 0, 1, 2)
    plan = estimate(cfg, DataArguments(block_size=64), PretrainingArguments(report_to="none"),
                    n_params=5_000_000, n_params_no_emb=4_000_000, train_tokens=100_000)
    assert plan["warnings"] and "memorise" in plan["warnings"][0]
    assert plan["memory_bytes"] > 5_000_000 * 16


def test_planner_counts_attention_flops():
    """Time estimates use 6N + 12 L d T FLOPs per token: a longer context costs more at the same parameter count."""
    from tinyllm.config import DataArguments, ModelArguments
    from tinyllm.modeling import build_config
    from tinyllm.training.arguments import PretrainingArguments
    from tinyllm.training.estimate import estimate

    args = PretrainingArguments(report_to="none", max_steps=100, per_device_train_batch_size=4)
    flops = {}
    for block in (64, 1024):
        cfg = build_config(ModelArguments(preset="nano"), 512, block, 0, 1, 2)
        plan = estimate(cfg, DataArguments(block_size=block), args, n_params=1_000_000, n_params_no_emb=800_000,
                        train_tokens=None)
        tokens = 100 * 4 * block
        assert plan["total_tokens"] == tokens
        flops[block] = plan["flops"] / tokens
    assert flops[64] == 6 * 1_000_000 + 12 * 4 * 128 * 64  # nano: 4 layers, 128 wide
    assert flops[1024] == 6 * 1_000_000 + 12 * 4 * 128 * 1024


def test_hub_token_never_written_or_logged(tmp_path, tokenizer_dir, capsys, monkeypatch):
    secret = "hf_TinyllmTestSecret0123456789"
    monkeypatch.delenv("HF_TOKEN", raising=False)
    out = tmp_path / "secret"
    code, stdout, err = run_inprocess(capsys, "pretrain", *_args(tokenizer_dir, out, 4, 2), "--hub_token", secret)
    assert code == 0, err
    assert secret not in stdout and secret not in err
    for path in out.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert (out / "checkpoint-4" / "training_args.bin").is_file()  # the saved arguments were checked too
    assert os.environ.get("HF_TOKEN") != secret  # not put into the process environment either


@pytest.mark.slow
def test_same_seed_same_loss_curve(tmp_path, tokenizer_dir, capsys):
    curves = []
    for name, seed in (("x", 3), ("y", 3), ("z", 4)):
        code, _, err = run_inprocess(capsys, "pretrain", *_args(tokenizer_dir, tmp_path / name, 20, 1000, seed=seed),
                                     "--logging_steps", "1")
        assert code == 0, err
        state = json.loads((tmp_path / name / "trainer_state.json").read_text())
        curves.append([h["loss"] for h in state["log_history"] if "loss" in h])
    assert len(curves[0]) == 20
    assert curves[0] == curves[1]
    assert curves[0] != curves[2]


def test_loading_never_executes_checkpoint_code(tmp_path, capsys, bpe_tokenizer):
    """A complete, loadable model folder (safetensors, tokenizer) whose config maps to remote code: refused with the
    reason, and the code never runs. (With the auto_map check removed and trust_remote_code=True, transformers would
    import evil.py and create the `pwned` file.)"""
    from transformers import AutoModelForCausalLM

    from tinyllm.config import ModelArguments
    from tinyllm.modeling import build_config

    folder = tmp_path / "evil"
    cfg = build_config(ModelArguments(n_layer=1, n_embd=32, n_head=2), len(bpe_tokenizer), 32,
                       bpe_tokenizer.bos_token_id, bpe_tokenizer.eos_token_id, bpe_tokenizer.pad_token_id)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    bpe_tokenizer.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.Config", "AutoModelForCausalLM": "evil.Model"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text(f"open({str(tmp_path / 'pwned')!r}, 'w').write('x')\n")
    for command in ("generate", "eval", "sft"):
        flag = "--model_name_or_path" if command == "sft" else "--model"
        code, _, err = run_inprocess(capsys, command, flag, folder, "--output_dir" if command == "sft" else "--seed",
                                     tmp_path / "o" if command == "sft" else "0")
        assert_user_error(code, err, "custom code")
    assert not (tmp_path / "pwned").exists() and "evil" not in sys.modules  # never imported, never run
