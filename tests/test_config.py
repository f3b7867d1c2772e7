"""Configuration: precedence, unknown keys with suggestions, bad values, and every shipped YAML parses."""

from pathlib import Path

import pytest

from tinyllm.cli import parse_args
from tinyllm.config import DataArguments, ModelArguments, OutputArguments, TokenizerArguments
from tinyllm.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
TOK_TYPES = [DataArguments, TokenizerArguments, OutputArguments]


def test_precedence_default_yaml_cli(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("vocab_size: 3000\nblock_size: 64\ndataset_name: tiny_shakespeare\n")
    data, tok, out = parse_args(TOK_TYPES, ["--config", str(cfg), "--vocab_size", "5000"])
    assert tok.vocab_size == 5000  # command line beats YAML
    assert data.block_size == 64  # YAML beats default
    assert data.dataset_name == "tiny_shakespeare"
    assert tok.min_frequency == 2  # default
    assert out.overwrite_output_dir is False


def test_unknown_yaml_key_suggests_closest(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("vocab_sise: 3000\n")
    with pytest.raises(ConfigError, match=r"unknown key 'vocab_sise'.*did you mean 'vocab_size'"):
        parse_args(TOK_TYPES, ["--config", str(cfg)])


def test_unknown_flag_suggests_closest():
    with pytest.raises(ConfigError, match=r"unknown option '--dataset_nme'.*dataset_name"):
        parse_args(TOK_TYPES, ["--dataset_nme", "x"])


def test_bad_value_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match="vocab_size"):
        parse_args(TOK_TYPES, ["--vocab_size", "lots"])
    cfg = tmp_path / "run.yaml"
    cfg.write_text("block_size: big\n")
    with pytest.raises(ConfigError, match="block_size"):
        parse_args(TOK_TYPES, ["--config", str(cfg)])


def test_validation_in_post_init():
    with pytest.raises(ConfigError, match="tokenizer_type"):
        parse_args(TOK_TYPES, ["--tokenizer_type", "wordpiece"])
    with pytest.raises(ConfigError, match="did you mean 'baby'"):
        parse_args([ModelArguments], ["--preset", "bbay"])


@pytest.mark.parametrize("text, needle", [("a: [1, 2\n", "not valid YAML"), ("- just\n- a list\n", "mapping")])
def test_broken_yaml(tmp_path, text, needle):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        parse_args(TOK_TYPES, ["--config", str(cfg)])


def test_missing_config_file():
    with pytest.raises(ConfigError, match="config file not found"):
        parse_args(TOK_TYPES, ["--config", "nope.yaml"])


def test_training_arguments_defaults_and_overrides(tmp_path):
    from tinyllm.config import PretrainTrainingOptions

    model, data, tok, args = parse_args([ModelArguments, DataArguments, TokenizerArguments, PretrainTrainingOptions],
                                        ["--learning_rate", "0.01", "--output_dir", str(tmp_path / "o")])
    assert args.learning_rate == 0.01
    assert args.lr_scheduler_kwargs == {"min_lr_rate": 0.1}  # tinyllm default
    assert getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type) == "cosine_with_min_lr"
    assert args.logging_nan_inf_filter is False


@pytest.mark.parametrize("path", sorted((REPO / "recipes" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_yaml_parses(path):
    """Each recipe YAML parses against its recipe's dataclasses (litgpt's test_config_hub)."""
    from tinyllm.cli import COMMANDS

    command = next((c for c in ("sft", "dpo", "grpo", "speedrun") if path.name.startswith(c)), "pretrain")
    objs = parse_args(COMMANDS[command].types, ["--config", str(path)], command_defaults=COMMANDS[command].defaults)
    assert next(o for o in objs if hasattr(o, "output_dir")).output_dir.startswith("outputs/")
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith("#"), "recipes open with a comment saying how to run them"
    assert f"recipes/{command}.py" in path.read_text()


def test_yaml_lists_and_mappings_survive(tmp_path):
    """YAML values become parser defaults with their types: a list stays a list, a mapping a mapping, and the
    command line still wins."""
    from tinyllm.config import PretrainTrainingOptions

    path = tmp_path / "run.yaml"
    path.write_text("report_to: [tensorboard]\nlr_scheduler_kwargs: {min_lr_rate: 0.2}\nmax_steps: 7\n"
                    "warmup_steps: 3\n")
    types = [ModelArguments, DataArguments, TokenizerArguments, PretrainTrainingOptions]
    *_, args = parse_args(types, ["--config", str(path), "--output_dir", str(tmp_path / "o")])
    assert args.report_to == ["tensorboard"]  # a YAML list stays a list (it once went through strings)
    assert args.lr_scheduler_kwargs == {"min_lr_rate": 0.2} and args.max_steps == 7 and args.warmup_steps == 3
    *_, args = parse_args(types, ["--config", str(path), "--output_dir", str(tmp_path / "o"), "--max_steps", "9",
                                  "--report_to", "none"])
    assert args.max_steps == 9 and args.report_to == []  # transformers reads "none" as no integrations
    path.write_text("report_to: [tensorboard, none]\n")  # was transformers' ValueError traceback at Trainer init
    with pytest.raises(ConfigError, match="report_to lists 'none' together with tensorboard"):
        parse_args(types, ["--config", str(path)])
    path.write_text("max_steps: lots\n")
    with pytest.raises(ConfigError, match="'max_steps' in .* must be of type int"):
        parse_args(types, ["--config", str(path)])


def test_python_callers_get_the_cpu_declaration():
    """The device policy, not the command line, declares the CPU (DDP over gloo scales the loss right only then)."""
    from tinyllm.device import detect_device
    from tinyllm.training.arguments import PretrainingArguments

    args = PretrainingArguments(output_dir="/tmp/x", report_to="none")
    assert args.use_cpu is (detect_device() == "cpu")


def test_the_model_folder_may_be_given_without_its_flag(tmp_path, capsys):
    """`tinyllm eval FOLDER` is `tinyllm eval --model FOLDER` (and report RUNS, export/serve/generate/chat MODEL)."""
    from helpers import run_inprocess

    code, _, err = run_inprocess(capsys, "eval", tmp_path / "missing")
    assert code == 2 and "model folder not found" in err and str(tmp_path / "missing") in err
    code, _, err = run_inprocess(capsys, "report", tmp_path)
    assert code == 2 and "no run folders" in err


@pytest.mark.parametrize("command", ["pretrain", "sft", "eval", "train-tokenizer", "generate", "serve"])
def test_help_opens_each_option_group_with_one_line(command, capsys):
    """`--help` names each option group with its one-line description, never the dataclass's generated signature,
    and shows the command's own defaults (sft reads builtin_qa)."""
    from tinyllm.cli import COMMANDS, format_help

    cmd = COMMANDS[command]
    text = format_help(cmd.types, f"tinyllm {command}", cmd.defaults)
    groups = [line for line in text.splitlines() if line and not line.startswith((" ", "usage", "Options", "Every"))]
    assert len(groups) == len(cmd.types)
    for t, line in zip(cmd.types, groups):
        assert line.startswith(f"{t.__name__}: ") and "(" not in line.split(":")[0] and len(line) <= 120, line
        assert f"{t.__name__}(" not in line
    if command == "sft":
        assert "[default: builtin_qa]" in text


def test_help_into_a_closed_pipe_ends_quietly():
    """`tinyllm dpo --help | head -2`: the reader closes the pipe early; the command exits 0 without a traceback."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "tinyllm", "dpo", "--help"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=REPO, bufsize=0)
    assert proc.stdout.read(20).startswith(b"usage: tinyllm dpo")
    proc.stdout.close()  # the reader leaves before the help is printed
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and "Traceback" not in err and "BrokenPipe" not in err, err
