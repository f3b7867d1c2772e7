"""The `tinyllm` command: one table of commands, typed options from `--config run.yaml` plus flags.

    tinyllm train-tokenizer --dataset_name builtin --vocab_size 4000 --output_dir outputs/tok
    tinyllm prepare --config recipes/configs/tinystories.yaml --dataset_name big.txt
    tinyllm pretrain --config recipes/configs/quickstart.yaml
    tinyllm sft --config recipes/configs/sft_quickstart.yaml
    tinyllm dpo --config recipes/configs/dpo_quickstart.yaml
    tinyllm grpo --config recipes/configs/grpo_arithmetic.yaml
    tinyllm generate --model outputs/quickstart --prompt "Once upon a time"
    tinyllm chat --model outputs/sft_quickstart
    tinyllm plan --config recipes/configs/tinystories.yaml
    tinyllm eval outputs/quickstart
    tinyllm export outputs/sft_quickstart --format gguf
    tinyllm serve outputs/sft_quickstart
    tinyllm report outputs
    tinyllm presets
    tinyllm speedrun --dataset_name my_text.txt --time_budget 30m

Precedence: dataclass default < YAML < command line. YAML values become the parser's defaults with their types
intact (lists and mappings survive); unknown keys (YAML or flags) are errors that suggest the closest valid key.
`--help` is answered from the dataclasses' metadata without importing transformers. User errors print one line
and exit with status 2; add --debug for the traceback.
"""

from __future__ import annotations

import dataclasses
import sys
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import tinyllm
from tinyllm import __version__
from tinyllm import config as c
from tinyllm.errors import ConfigError, TinyLLMError, first_line, suggest
from tinyllm.logs import setup_logging
from tinyllm.modeling import describe_presets

__all__ = ["COMMANDS", "Command", "parse_args", "load_yaml", "format_help", "run", "main"]


# Each command's runner is imported when the command runs, so `--help` and `tinyllm presets` never import torch
# or transformers; the imports are written out (not "module:function" strings) so readers and
# tests/test_layout.py see which stage each command runs.

def _train_tokenizer(*objs):
    from tinyllm.data.tokenizer_stage import run_tokenizer_training

    return run_tokenizer_training(*objs)


def _prepare(*objs):
    from tinyllm.data.prepare_stage import run_prepare

    return run_prepare(*objs)


def _pretrain(*objs):
    from tinyllm.training.pretrain import run_pretraining

    return run_pretraining(*objs)


def _sft(*objs):
    from tinyllm.training.sft import run_sft

    return run_sft(*objs)


def _dpo(*objs):
    from tinyllm.training.dpo import run_dpo

    return run_dpo(*objs)


def _grpo(*objs):
    from tinyllm.training.grpo import run_grpo

    return run_grpo(*objs)


def _generate(*objs):
    from tinyllm.inference.terminal import run_generate

    return run_generate(*objs)


def _chat(*objs):
    from tinyllm.inference.terminal import run_chat

    return run_chat(*objs)


def _plan(*objs):
    from tinyllm.training.plan import run_plan

    return run_plan(*objs)


def _eval(*objs):
    from tinyllm.evaluation.eval_stage import run_eval

    return run_eval(*objs)


def _export(*objs):
    from tinyllm.inference.export import run_export

    return run_export(*objs)


def _serve(*objs):
    from tinyllm.inference.serve import run_serve

    return run_serve(*objs)


def _report(*objs):
    from tinyllm.evaluation.compare import run_report

    return run_report(*objs)


def _speedrun(*objs):
    from tinyllm.training.speedrun import run_speedrun

    return run_speedrun(*objs, run_command=run)  # each stage runs as its own command, in this process


def _presets() -> None:
    print(describe_presets())


@dataclass(frozen=True)
class Command:
    help: str
    types: tuple  # option dataclasses; training options are swapped for their TrainingArguments subclass
    runner: Callable  # called with one instance per type
    positional: str | None = None  # `tinyllm eval outputs/x` means `--model outputs/x`
    defaults: dict = field(default_factory=dict)  # this command's defaults for shared options (dataset_name, ...)


_PRETRAIN_TYPES = (c.ModelArguments, c.DataArguments, c.TokenizerArguments, c.PretrainTrainingOptions)
COMMANDS: dict[str, Command] = {
    "speedrun": Command("one command from text to a chatting model, sized to --time_budget (tokenizer, pretrain, "
                        "SFT, eval, GGUF)", (c.SpeedrunArguments, c.DataArguments), _speedrun),
    "train-tokenizer": Command("train a BPE or char tokenizer on a corpus",
                               (c.DataArguments, c.TokenizerArguments, c.OutputArguments), _train_tokenizer),
    "prepare": Command("tokenize a corpus once into token shards on disk (pretrain finds and reuses them)",
                       _PRETRAIN_TYPES, _prepare),
    "pretrain": Command("pretrain a GPT-2/Llama model (from scratch, or continue one) with transformers.Trainer",
                        _PRETRAIN_TYPES, _pretrain),
    "sft": Command("instruction-tune a pretrained model with LoRA on question-answer pairs",
                   (c.SFTModelArguments, c.DataArguments, c.SFTArguments, c.LoraArguments, c.SFTTrainingOptions),
                   _sft, defaults={"dataset_name": "builtin_qa", "validation_split_percentage": 10.0}),
    "dpo": Command("preference-tune a chat model (DPO through TRL, LoRA) on chosen/rejected answer pairs",
                   (c.PostTrainingModelArguments, c.DataArguments, c.PreferenceArguments, c.LoraArguments,
                    c.DPOTrainingOptions), _dpo,
                   defaults={"dataset_name": "builtin", "validation_split_percentage": 10.0}),
    "grpo": Command("RL with verifiable rewards (GRPO through TRL): sample answers, reward the right ones",
                    (c.PostTrainingModelArguments, c.DataArguments, c.GRPOArguments, c.LoraArguments,
                     c.GRPOTrainingOptions), _grpo,
                    # full fine-tuning by default: measured better than LoRA on small models (see README)
                    defaults={"dataset_name": "builtin_arithmetic", "validation_split_percentage": 10.0,
                              "model_name_or_path": "outputs/sft_arithmetic", "use_lora": False}),
    "generate": Command("sample text from a saved model (streams to the terminal)", (c.GenerationArguments,),
                        _generate, "model"),
    "chat": Command("chat with an instruction-tuned model in the terminal", (c.GenerationArguments,), _chat, "model"),
    "plan": Command("print parameters, tokens, memory and time estimates for a config without training",
                    _PRETRAIN_TYPES, _plan),
    # eval's dataset options default to None: "the run's own corpus and split" (recorded in run_summary.json)
    "eval": Command("evaluate a saved model: bits per byte, built-in tasks, lm-evaluation-harness tasks",
                    (c.EvalArguments, c.DataArguments), _eval, "model",
                    defaults={"dataset_name": None, "validation_split_percentage": None, "eval_max_tokens": None,
                              "document_separator": None}),
    "export": Command("export a model to GGUF (llama.cpp, Ollama, LM Studio) with an Ollama Modelfile",
                      (c.ExportArguments,), _export, "model"),
    "serve": Command("serve a model: OpenAI-compatible API (/v1) and a web chat page (/)", (c.ServeArguments,),
                     _serve, "model"),
    "report": Command("compare the runs in a folder side by side (Markdown table + plot)", (c.ReportArguments,),
                      _report, "runs"),
    "presets": Command("list the model size presets", (), _presets),
}
TRAINING_OPTIONS = (c.PretrainTrainingOptions, c.SFTTrainingOptions, c.DPOTrainingOptions, c.GRPOTrainingOptions)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a recipe YAML into a flat dict, with one-line errors for missing or broken files."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (check the path; shipped recipes are in recipes/configs/)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"config file {path} is not valid YAML{where}: {problem}; fix the syntax") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of 'key: value' lines, got a {type(data).__name__}")
    return data


def _split_config_flag(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    rest, config, i = [], None, 0
    argv = list(argv)
    while i < len(argv):
        arg = argv[i]
        if arg == "--config":
            if i + 1 >= len(argv):
                raise ConfigError("--config needs a path to a YAML file, e.g. --config recipes/configs/quickstart.yaml")
            config = argv[i + 1]
            i += 2
            continue
        if arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return config, rest


def _runtime_types(option_types: Sequence[type]) -> list[type]:
    """The types to parse into: training options become their TrainingArguments subclass (imports transformers)."""
    if not any(t in TRAINING_OPTIONS for t in option_types):
        return list(option_types)
    if any(t in (c.DPOTrainingOptions, c.GRPOTrainingOptions) for t in option_types):
        from tinyllm.training.trl_arguments import DPOTrainingArguments, GRPOTrainingArguments  # imports TRL

        trl_types = {c.DPOTrainingOptions: DPOTrainingArguments, c.GRPOTrainingOptions: GRPOTrainingArguments}
        return [trl_types.get(t, t) for t in option_types]
    from tinyllm.training.arguments import training_arguments_class

    return [training_arguments_class(t) if t in TRAINING_OPTIONS else t for t in option_types]


def _hints(types_: Sequence[type]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for t in types_:
        hints = typing.get_type_hints(t)
        for f in dataclasses.fields(t):
            if f.init:
                out.setdefault(f.name, hints.get(f.name, str))
    return out


def _coerce(key: str, value: Any, hint: Any, where: str) -> Any:
    """A YAML value checked and converted against its field's type; lists and mappings keep their structure."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for kind in (list, dict):  # a field that accepts a list or mapping takes the YAML one as it is
            if any(a is kind or typing.get_origin(a) is kind for a in args) and isinstance(value, kind):
                return value
        if value is None:
            return None
        hint = args[0] if len(args) == 1 else (str if str in args else args[0])
        origin = typing.get_origin(hint)
    if origin is list or hint is list:
        return list(value) if isinstance(value, (list, tuple)) else [value]
    if origin is dict or hint is dict:
        if isinstance(value, dict):
            return value
        raise ConfigError(f"'{key}' in {where} must be a mapping (key: value lines), got {value!r}")
    bad = ConfigError(f"'{key}' in {where} must be of type {getattr(hint, '__name__', hint)}, got {value!r}; "
                      f"fix the value")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "false", "yes", "no", "1", "0"):
            return str(value).lower() in ("true", "yes", "1")
        raise bad
    if hint is int:
        digits = isinstance(value, str) and value.lstrip("-").isdigit()
        if isinstance(value, bool) or not (isinstance(value, int) or digits):
            raise bad
        return int(value)
    if hint is float:
        if isinstance(value, bool):
            raise bad
        try:
            return float(value)
        except (TypeError, ValueError) as exc:
            raise bad from exc
    if isinstance(value, (list, dict)):
        raise bad
    return value if isinstance(value, str) else str(value)


class _Parser:
    """HfArgumentParser whose argparse errors become ConfigError instead of exiting."""

    def __init__(self, types_):
        from transformers import HfArgumentParser

        class Quiet(HfArgumentParser):
            def error(self, message):  # argparse calls this on bad values
                raise ConfigError(f"{message}; check the value's type (see --help)")

        self.parser = Quiet(types_)


def parse_args(option_types: Sequence[type], argv: Sequence[str] | None = None, prog: str = "tinyllm",
               command_defaults: dict[str, Any] | None = None) -> tuple:
    """One instance per dataclass in `option_types`, filled from defaults (the dataclasses', then the command's),
    `--config` YAML and flags."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(format_help(option_types, prog, command_defaults))
        raise SystemExit(0)
    config_path, cli = _split_config_flag(argv)
    types_ = _runtime_types(option_types)
    hints = _hints(types_)
    names = list(hints)
    defaults: dict[str, Any] = dict(command_defaults or {})
    if config_path:
        for key, value in load_yaml(config_path).items():
            if key not in hints:
                raise ConfigError(f"unknown key '{key}' in {config_path}{suggest(key, names)}; see --help for valid "
                                  f"keys")
            defaults[key] = _coerce(key, value, hints[key], config_path)
    cli = _take_mappings(cli, hints, defaults)
    for arg in cli:
        if arg.startswith("--"):
            key = arg[2:].split("=", 1)[0]
            if key not in hints and not (key.startswith("no_") and key[3:] in hints):
                raise ConfigError(f"unknown option '--{key}'{suggest(key, names)}; see --help for valid options")
        elif arg.startswith("-") and len(arg) > 1 and not _is_number(arg):
            raise ConfigError(f"unknown option '{arg}'; options look like --key value (see --help)")
    wrapper = _Parser(types_)
    wrapper.parser.set_defaults(**defaults)
    try:
        *objs, remaining = wrapper.parser.parse_args_into_dataclasses(args=cli, return_remaining_strings=True)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:  # raised by a dataclass __post_init__ (e.g. TrainingArguments)
        raise ConfigError(first_line(exc)) from exc
    if remaining:
        raise ConfigError(f"unexpected argument(s): {' '.join(remaining)}; options look like --key value")
    return tuple(objs)


def _is_mapping(hint: Any) -> bool:
    return hint is dict or typing.get_origin(hint) is dict or any(
        a is dict or typing.get_origin(a) is dict for a in typing.get_args(hint))


def _take_mappings(cli: list[str], hints: dict[str, Any], defaults: dict[str, Any]) -> list[str]:
    """Mapping options given on the command line (`--lr_scheduler_kwargs '{"min_lr_rate": 0.0}'`, JSON or YAML
    flow style) go into `defaults`, parsed; argparse alone cannot type a mapping. Returns the other arguments."""
    import yaml

    rest, i = [], 0
    while i < len(cli):
        arg = cli[i]
        key, eq, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if key in hints and _is_mapping(hints[key]):
            if not eq:
                if i + 1 >= len(cli):
                    raise ConfigError(f"--{key} needs a value, e.g. --{key} '{{\"name\": 1}}'")
                value, i = cli[i + 1], i + 1
            try:
                parsed = yaml.safe_load(value) if value.strip() else {}
            except yaml.YAMLError:
                parsed = value
            defaults[key] = _coerce(key, {} if parsed is None else parsed, hints[key], "the command line")
        else:
            rest.append(arg)
        i += 1
    return rest


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _group_line(t: type) -> str:
    """A dataclass's own one-line description (its docstring's first line; never the generated signature)."""
    doc = (t.__doc__ or "").strip()
    first = doc.splitlines()[0] if doc and not doc.startswith(f"{t.__name__}(") else ""
    return f"{t.__name__}: {first}" if first else t.__name__


def format_help(option_types: Sequence[type], prog: str, command_defaults: dict[str, Any] | None = None) -> str:
    """Help text from dataclass metadata, without importing transformers."""
    lines = [f"usage: {prog} [--config FILE.yaml] [--key value ...] [--debug]", "",
             "Options; precedence: default < YAML < command line.", ""]
    command_defaults = command_defaults or {}
    for t in option_types:
        lines.append(_group_line(t))
        for f in dataclasses.fields(t):
            if f.name in command_defaults:
                default = command_defaults[f.name]
            elif f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = "(required)"
            lines.append(f"  --{f.name:<30} {f.metadata.get('help', '')} [default: {default}]")
        lines.append("")
    if any(t in TRAINING_OPTIONS for t in option_types):
        lines.append("Every transformers.TrainingArguments field is accepted too (--gradient_accumulation_steps, "
                     "--num_train_epochs, --resume_from_checkpoint, --push_to_hub, --hub_model_id, --seed, "
                     "--torch_compile, ...).")
    return "\n".join(lines)


def run(command: str, argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status. User errors become one line unless --debug is given."""
    tinyllm.STARTED_AT = time.time()  # a --time_budget counts from here (in-process callers run several commands)
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    cmd = COMMANDS[command]
    if "-h" in argv or "--help" in argv:
        print(format_help(cmd.types, f"tinyllm {command}", cmd.defaults))
        return 0
    if cmd.positional and argv and not argv[0].startswith("-"):
        argv = [f"--{cmd.positional}", argv[0], *argv[1:]]
    try:
        objs = parse_args(cmd.types, argv, prog=f"tinyllm {command}", command_defaults=cmd.defaults)
        setup_logging()
        return _call(cmd.runner, objs)
    except TinyLLMError as exc:
        if debug:
            raise
        kind = "" if exc.exit_code == 130 else "error: "  # an interrupt that saved a checkpoint is no error
        print(f"tinyllm {command}: {kind}{exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"\ntinyllm {command}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # disk full, permission denied, ...: still one line
        if debug:
            raise
        print(f"tinyllm {command}: error: {exc.strerror or exc} ({exc.filename or ''}); add --debug for details",
              file=sys.stderr)
        return 1


def _call(runner: Callable, objs: tuple) -> int:
    result = runner(*objs)
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: tinyllm COMMAND [--config FILE.yaml] [--key value ...] [--debug]\n\ncommands:")
        for name, cmd in COMMANDS.items():
            print(f"  {name:<16} {cmd.help}")
        print("\nRun 'tinyllm COMMAND --help' for a command's options.")
        return 0
    if argv[0] == "--version":
        print(__version__)
        return 0
    command = argv[0]
    if command not in COMMANDS:
        print(f"tinyllm: error: unknown command '{command}'{suggest(command, COMMANDS)}; "
              f"choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return run(command, argv[1:])
