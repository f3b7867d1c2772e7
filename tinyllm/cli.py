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

Options: dataclass default < YAML < command line (tinyllm/options.py parses them; `--help` is answered without
importing transformers). User errors print one line and exit with status 2; add --debug for the traceback.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import tinyllm
from tinyllm import __version__
from tinyllm import config as c
from tinyllm import post_training_config as pc
from tinyllm import usage_config as u
from tinyllm.errors import TinyLLMError, suggest
from tinyllm.logs import setup_logging
from tinyllm.modeling import describe_presets
from tinyllm.options import format_help, load_yaml, parse_args

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
                   (pc.PostTrainingModelArguments, c.DataArguments, pc.PreferenceArguments, c.LoraArguments,
                    pc.DPOTrainingOptions), _dpo,
                   defaults={"dataset_name": "builtin", "validation_split_percentage": 10.0}),
    "grpo": Command("RL with verifiable rewards (GRPO through TRL): sample answers, reward the right ones",
                    (pc.PostTrainingModelArguments, c.DataArguments, pc.GRPOArguments, c.LoraArguments,
                     pc.GRPOTrainingOptions), _grpo,
                    # full fine-tuning by default: measured better than LoRA on small models (see README)
                    defaults={"dataset_name": "builtin_arithmetic", "validation_split_percentage": 10.0,
                              "model_name_or_path": "outputs/sft_arithmetic", "use_lora": False}),
    "generate": Command("sample text from a saved model (streams to the terminal)", (u.GenerationArguments,),
                        _generate, "model"),
    "chat": Command("chat with an instruction-tuned model in the terminal", (u.GenerationArguments,), _chat, "model"),
    "plan": Command("print parameters, tokens, memory and time estimates for a config without training",
                    _PRETRAIN_TYPES, _plan),
    # eval's dataset options default to None: "the run's own corpus and split" (recorded in run_summary.json)
    "eval": Command("evaluate a saved model: bits per byte, built-in tasks, lm-evaluation-harness tasks",
                    (u.EvalArguments, c.DataArguments), _eval, "model",
                    defaults={"dataset_name": None, "validation_split_percentage": None, "eval_max_tokens": None,
                              "document_separator": None}),
    "export": Command("export a model to GGUF (llama.cpp, Ollama, LM Studio) with an Ollama Modelfile",
                      (u.ExportArguments,), _export, "model"),
    "serve": Command("serve a model: OpenAI-compatible API (/v1) and a web chat page (/)", (u.ServeArguments,),
                     _serve, "model"),
    "report": Command("compare the runs in a folder side by side (Markdown table + plot)", (u.ReportArguments,),
                      _report, "runs"),
    "presets": Command("list the model size presets", (), _presets),
}
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
