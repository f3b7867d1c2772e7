"""The bad-input catalogue: every entry point, many kinds of bad input. Each must give one clear error line,
a non-zero exit, no traceback, and leave existing outputs untouched."""

import json
import shutil

import pytest

from helpers import TINY_MODEL_ARGS, assert_user_error, run_cli, run_inprocess


@pytest.fixture(scope="module")
def world(tmp_path_factory, bpe_tokenizer):
    """Files the cases point at: a small trained model, broken copies of it, bad corpora and configs."""
    import torch
    from transformers import AutoModelForCausalLM

    from tinyllm.config import ModelArguments
    from tinyllm.modeling import build_config

    root = tmp_path_factory.mktemp("bad")
    tok = bpe_tokenizer
    model_dir = root / "model"
    for mtype, folder in (("llama", model_dir), ("gpt2", root / "gpt2_model")):
        cfg = build_config(ModelArguments(model_type=mtype, n_layer=1, n_embd=32, n_head=2), len(tok), 32,
                           tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
        tok.save_pretrained(folder)
    # a run whose checkpoint belongs to the GPT-2 architecture
    ckpt = root / "gpt2_run" / "checkpoint-5"
    shutil.copytree(root / "gpt2_model", ckpt)
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 5}))
    (ckpt / "optimizer.pt").write_bytes(b"")
    truncated = root / "truncated"
    shutil.copytree(model_dir, truncated)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    corrupted = root / "corrupted"
    shutil.copytree(model_dir, corrupted)
    (corrupted / "model.safetensors").write_bytes(b"\x07garbage" * 100)
    other_tok = root / "other_tok"
    from tinyllm.data.tokenizer import train_tokenizer

    train_tokenizer([f"w{i} x{i} " * 2 for i in range(4000)], "bpe", vocab_size=2000,
                    show_progress=False).save_pretrained(other_tok)
    files = {
        "broken_yaml": "model_type: [llama\n", "list_yaml": "- a\n- b\n", "unknown_key_yaml": "learning_rat: 0.1\n",
        "wrong_type_yaml": "max_steps: lots\n", "empty.txt": "\n \n", "empty_sft.jsonl": "",
        "bad_json.jsonl": '{"text": "ok"}\n{"text": \n', "no_layout.jsonl": '{"foo": "bar"}\n',
        "long_sft.jsonl": json.dumps({"question": "q " * 2000, "answer": "a"}) + "\n",
        "empty_answer.jsonl": '{"instruction": "Say hi", "output": ""}\n',
    }
    for name, text in files.items():
        (root / name).write_text(text)
    (root / "latin1.txt").write_bytes("café crème".encode("latin-1"))
    (root / "data.csv").write_text("a,b\n")
    return root


# (command, arguments, words the one-line error must contain). {r} is the fixture folder.
CASES = [
    ("pretrain", ["--config", "{r}/broken_yaml"], "not valid YAML"),
    ("pretrain", ["--config", "{r}/list_yaml"], "mapping"),
    ("pretrain", ["--config", "{r}/unknown_key_yaml"], "did you mean 'learning_rate'"),
    ("pretrain", ["--config", "{r}/wrong_type_yaml"], "max_steps"),
    ("pretrain", ["--config", "{r}/missing.yaml"], "config file not found"),
    ("pretrain", ["--max_step", "3"], "did you mean 'max_steps'"),
    ("pretrain", ["--learning_rate", "fast"], "learning_rate"),
    ("pretrain", ["--preset", "tiny"], "unknown preset"),
    ("pretrain", ["--model_type", "lama"], "did you mean 'llama'"),
    ("pretrain", ["--n_embd", "100", "--n_head", "3"], "divisible"),
    ("pretrain", ["--config_overrides", "rope_thta=1"], "not a LlamaConfig field"),
    ("pretrain", ["--precision", "fp8"], "precision"),
    ("pretrain", ["--dataset_name", "{r}/nope.txt"], "not found"),
    ("pretrain", ["--dataset_name", "{r}/empty.txt"], "empty"),
    ("pretrain", ["--dataset_name", "{r}/latin1.txt"], "offset 3"),
    ("pretrain", ["--dataset_name", "{r}/bad_json.jsonl"], "bad_json.jsonl:2"),
    ("pretrain", ["--dataset_name", "{r}/data.csv"], "unsupported file type"),
    ("pretrain", ["--dataset_name", "shakespeare"], "did you mean 'tiny_shakespeare'"),
    ("pretrain", ["--tokenizer_name_or_path", "{r}/no_tokenizer_here"], "tokenizer folder not found"),
    ("pretrain", ["--model_name_or_path", "{r}/model", "--tokenizer_name_or_path", "{r}/other_tok"],
     "embedding rows"),
    ("pretrain", ["--model_name_or_path", "{r}/truncated"], "cannot load the model"),
    ("pretrain", ["--model_name_or_path", "{r}/corrupted"], "cannot load the model"),
    ("pretrain", ["--output_dir", "{r}/gpt2_run", "--resume_from_checkpoint", "{r}/gpt2_run/checkpoint-5",
                  "--tokenizer_name_or_path", "{r}/model"], "model_type=gpt2"),
    ("pretrain", ["--resume_from_checkpoint", "{r}/no_such_checkpoint"], "checkpoint not found"),
    ("pretrain", ["--validation_split_percentage", "100"], "validation_split_percentage"),
    ("train-tokenizer", ["--vocab_size", "10"], "smaller than the 256"),
    ("train-tokenizer", ["--tokenizer_type", "sentencepiece"], "tokenizer_type"),
    ("sft", ["--model_name_or_path", "{r}/model", "--dataset_name", "{r}/no_layout.jsonl"], "no_layout.jsonl:1"),
    ("sft", ["--model_name_or_path", "{r}/model", "--dataset_name", "{r}/empty_answer.jsonl"], "empty answer"),
    ("sft", ["--model_name_or_path", "{r}/model", "--dataset_name", "{r}/long_sft.jsonl",
             "--max_seq_length", "64"], "no usable training examples"),
    ("sft", ["--model_name_or_path", "{r}/model", "--dataset_name", "{r}/empty_sft.jsonl"], "no rows"),
    ("sft", ["--model_name_or_path", "{r}/model", "--truncation", "cut"], "truncation"),
    ("sft", ["--model_name_or_path", "{r}/other_tok"], "no config.json"),
    ("generate", ["--model", "{r}/truncated"], "cannot load the model"),
    ("generate", ["--model", "{r}/missing_model"], "not found"),
    ("chat", ["--model", "{r}/other_tok"], "no config.json"),
]


@pytest.mark.parametrize("command, args, needle", CASES, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(CASES)])
def test_bad_input_is_one_clear_line(world, tmp_path, capsys, command, args, needle):
    # An existing output folder that a failing run must leave exactly as it was (overwrite is allowed, so only
    # validating everything before touching it keeps it safe).
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "precious.txt").write_text("keep me")
    argv = [a.replace("{r}", str(world)) for a in args]
    if command in ("pretrain", "train-tokenizer", "sft") and "--output_dir" not in argv:
        argv += ["--output_dir", str(existing), "--overwrite_output_dir", "true"]
    if command == "pretrain":
        argv = [*TINY_MODEL_ARGS, "--builtin_num_documents", "200", "--max_steps", "2", *argv]
    if command == "sft":
        argv += ["--max_steps", "2", "--report_to", "none"]
    code, _, err = run_inprocess(capsys, command, *argv)
    assert_user_error(code, err, needle)
    assert sorted(p.name for p in existing.iterdir()) == ["precious.txt"]
    assert (existing / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize("args, needle", [
    (["pretrain", "--preset", "nanno"], "did you mean 'nano'"),
    (["sft", "--model_name_or_path", "/nonexistent/model"], "not found"),
    (["frobnicate"], "unknown command"),
])
@pytest.mark.slow
def test_real_process_exit_status_and_no_traceback(args, needle):
    res = run_cli(*args)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr and needle in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr


@pytest.mark.slow
def test_debug_flag_shows_the_traceback():
    res = run_cli("pretrain", "--preset", "nanno", "--debug")
    assert res.returncode != 0 and "Traceback" in res.stderr


def test_debug_shows_the_cause_behind_the_one_line(world, tmp_path):
    """Without --debug a user error is one line; with it, the exception comes out with the error that caused it
    chained (`raise ... from exc`), not hidden."""
    from tinyllm.cli import run
    from tinyllm.errors import ConfigError

    broken = tmp_path / "broken"
    shutil.copytree(world / "model", broken)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON") as info:
        run("generate", ["--model", str(broken), "--prompt", "x", "--debug"])
    assert isinstance(info.value.__cause__, json.JSONDecodeError)
