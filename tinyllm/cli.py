"""Parse typed dataclasses from `--config run.yaml` plus command-line overrides.

Precedence: dataclass default < YAML < command line. Unknown keys (YAML or flags) are errors that suggest the
closest valid key. `--help` is answered from the dataclasses' metadata without importing transformers.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from .errors import ConfigError, suggest

__all__ = ["parse_args", "load_yaml", "format_help"]


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a recipe YAML into a flat dict, with one-line errors for missing or broken files."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (check the path; shipped recipes are in recipes/configs/)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"config file {path} is not valid YAML{where}: {problem}; fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of 'key: value' lines, got a {type(data).__name__}")
    return data


def _split_config_flag(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    rest, config = [], None
    i = 0
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


def _field_names(types: Sequence[type]) -> list[str]:
    return [f.name for t in types for f in dataclasses.fields(t) if f.init]


def _to_tokens(key: str, value: Any) -> list[str]:
    if isinstance(value, bool):
        return [f"--{key}", "true" if value else "false"]
    if isinstance(value, dict):
        return [f"--{key}", json.dumps(value)]
    if isinstance(value, (list, tuple)):
        return [f"--{key}", ",".join(str(v) for v in value)]
    return [f"--{key}", str(value)]


class _Parser:
    """Wrap HfArgumentParser so that argparse errors become ConfigError instead of exiting."""

    def __init__(self, types):
        from transformers import HfArgumentParser

        class Quiet(HfArgumentParser):
            def error(self, message):  # argparse calls this on bad values
                raise ConfigError(f"{message}; check the value's type (see --help)")

        self.parser = Quiet(types)


def parse_args(types: Sequence[type], argv: Sequence[str] | None = None, prog: str = "tinyllm") -> tuple:
    """Return one instance per dataclass in `types`, filled from defaults, `--config` YAML and flags."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(format_help(types, prog))
        raise SystemExit(0)
    config_path, cli = _split_config_flag(argv)
    names = _field_names(types)
    tokens: list[str] = []
    nulls: dict[str, None] = {}
    if config_path:
        for key, value in load_yaml(config_path).items():
            if key not in names:
                raise ConfigError(f"unknown key '{key}' in {config_path}{suggest(key, names)}; see --help for valid keys")
            if value is None:
                nulls[key] = None
            else:
                tokens += _to_tokens(key, value)
    for arg in cli:
        if arg.startswith("--"):
            key = arg[2:].split("=", 1)[0]
            if key not in names and not (key.startswith("no_") and key[3:] in names):
                raise ConfigError(f"unknown option '--{key}'{suggest(key, names)}; see --help for valid options")
        elif arg.startswith("-") and len(arg) > 1 and not _is_number(arg):
            raise ConfigError(f"unknown option '{arg}'; options look like --key value (see --help)")
    wrapper = _Parser(types)
    if nulls:
        wrapper.parser.set_defaults(**nulls)
    try:
        out = wrapper.parser.parse_args_into_dataclasses(args=tokens + cli, return_remaining_strings=True)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:  # raised by a dataclass __post_init__ (e.g. TrainingArguments)
        raise ConfigError(str(exc).strip().splitlines()[0]) from None
    *objs, remaining = out
    if remaining:
        raise ConfigError(f"unexpected argument(s): {' '.join(remaining)}; options look like --key value")
    return tuple(objs)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def format_help(types: Sequence[type], prog: str) -> str:
    """Help text from dataclass metadata. TrainingArguments subclasses are summarised, not imported."""
    lines = [f"usage: {prog} [--config FILE.yaml] [--key value ...]", "",
             "Options come from the dataclasses below; precedence: default < YAML < command line.", ""]
    for t in types:
        lines.append(f"{t.__name__}:")
        for f in dataclasses.fields(t):
            default = f.default if f.default is not dataclasses.MISSING else "(computed)"
            lines.append(f"  --{f.name:<30} {f.metadata.get('help', '')} [default: {default}]")
        lines.append("")
    return "\n".join(lines)
