"""Typed options for every command: `--config run.yaml` plus flags, parsed into the commands' dataclasses.

Precedence: dataclass default < the command's defaults < YAML < command line. YAML values become the parser's
defaults with their types intact (lists and mappings survive); unknown keys (YAML or flags) are errors that suggest
the closest valid key. `format_help` answers `--help` from the dataclasses' metadata without importing
transformers; training options become their TrainingArguments subclass only when parsed.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import Any, Sequence

from tinyllm import config as c
from tinyllm import post_training_config as pc
from tinyllm.errors import ConfigError, first_line, suggest

__all__ = ["parse_args", "load_yaml", "format_help", "TRAINING_OPTIONS"]

TRAINING_OPTIONS = (c.PretrainTrainingOptions, c.SFTTrainingOptions, pc.DPOTrainingOptions, pc.GRPOTrainingOptions)


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
    if any(t in (pc.DPOTrainingOptions, pc.GRPOTrainingOptions) for t in option_types):
        from tinyllm.training.trl_arguments import DPOTrainingArguments, GRPOTrainingArguments  # imports TRL

        trl_types = {pc.DPOTrainingOptions: DPOTrainingArguments, pc.GRPOTrainingOptions: GRPOTrainingArguments}
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
