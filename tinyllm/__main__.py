"""The `tinyllm` command: one entry point per pipeline stage.

    tinyllm train-tokenizer --dataset_name builtin --vocab_size 4000 --output_dir outputs/tok
    tinyllm pretrain --config recipes/configs/quickstart.yaml
    tinyllm sft --config recipes/configs/sft_quickstart.yaml
    tinyllm generate --model outputs/quickstart --prompt "Once upon a time"
    tinyllm chat --model outputs/sft_quickstart
    tinyllm plan --config recipes/configs/tinystories.yaml
    tinyllm presets

User errors print one line and exit with status 2; add --debug for the traceback.
"""

from __future__ import annotations

import sys

from .errors import TinyLLMError

__all__ = ["main", "run"]

COMMANDS = {
    "train-tokenizer": "train a BPE or char tokenizer on a corpus",
    "pretrain": "pretrain a GPT-2/Llama model from scratch with transformers.Trainer",
    "sft": "instruction-tune a pretrained model with LoRA on question-answer pairs",
    "generate": "sample text from a saved model (streams to the terminal)",
    "chat": "chat with an instruction-tuned model in the terminal",
    "plan": "print parameters, tokens, memory and time estimates for a config without training",
    "presets": "list the model size presets",
}


def _types(command: str, light: bool):
    from . import config as c

    if command == "train-tokenizer":
        return [c.DataArguments, c.TokenizerArguments, c.OutputArguments]
    if command in ("pretrain", "plan"):
        if light:
            return [c.ModelArguments, c.DataArguments, c.TokenizerArguments, c.PretrainExtras]
        from .training_args import PretrainingArguments

        return [c.ModelArguments, c.DataArguments, c.TokenizerArguments, PretrainingArguments]
    if command == "sft":
        if light:
            return [c.SFTModelArguments, c.SFTDataArguments, c.LoraArguments, c.SFTExtras]
        from .training_args import SFTTrainingArguments

        return [c.SFTModelArguments, c.SFTDataArguments, c.LoraArguments, SFTTrainingArguments]
    return [c.GenerationArguments]


def _help(command: str) -> str:
    from . import config as c
    from .cli import format_help

    text = format_help(_types(command, light=True), f"tinyllm {command}")
    defaults = {"pretrain": c.PRETRAIN_TRAINING_DEFAULTS, "plan": c.PRETRAIN_TRAINING_DEFAULTS,
                "sft": c.SFT_TRAINING_DEFAULTS}.get(command)
    if defaults:
        text += ("\nEvery transformers.TrainingArguments field is accepted too (--learning_rate, --max_steps, "
                 "--per_device_train_batch_size, --gradient_accumulation_steps, --eval_steps, --save_steps, "
                 "--resume_from_checkpoint, --push_to_hub, --hub_model_id, --seed, ...).\ntinyllm's defaults for them:\n")
        text += "\n".join(f"  --{k:<30} {v}" for k, v in defaults.items())
    return text


def run(command: str, argv: list[str] | None = None) -> int:
    """Run one stage; returns the exit status. User errors become one line unless --debug is given."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if "-h" in argv or "--help" in argv:
        print(_help(command))
        return 0
    try:
        return _dispatch(command, argv) or 0
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


def _dispatch(command: str, argv: list[str]):
    from .cli import parse_args

    if command == "presets":
        from .modeling import describe_presets

        print(describe_presets())
        return 0
    types = _types(command, light=False)
    if command in ("pretrain", "sft"):
        from .device import detect_device

        if detect_device() == "cpu":
            # Without use_cpu, transformers 5 treats CPU multi-process runs as non-distributed and mis-scales the
            # loss (2x with 2 processes); declaring the CPU up front makes DDP over gloo match one process.
            argv = ["--use_cpu", "true", *argv]
    objs = parse_args(types, argv, prog=f"tinyllm {command}")
    if command == "train-tokenizer":
        from .tokenizer_stage import run_tokenizer_training

        run_tokenizer_training(*objs)
    elif command == "pretrain":
        from .train import run_pretraining

        run_pretraining(*objs)
    elif command == "plan":
        from .plan_cli import run_plan

        run_plan(*objs)
    elif command == "sft":
        from .sft import run_sft

        run_sft(*objs)
    elif command == "generate":
        from .generate import run_generate

        run_generate(objs[0])
    elif command == "chat":
        from .generate import run_chat

        run_chat(objs[0])
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: tinyllm COMMAND [--config FILE.yaml] [--key value ...] [--debug]\n\ncommands:")
        for k, v in COMMANDS.items():
            print(f"  {k:<16} {v}")
        print("\nRun 'tinyllm COMMAND --help' for a command's options.")
        return 0
    if argv[0] == "--version":
        from . import __version__

        print(__version__)
        return 0
    command = argv[0]
    if command not in COMMANDS:
        from .errors import suggest

        print(f"tinyllm: error: unknown command '{command}'{suggest(command, COMMANDS)}; "
              f"choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return run(command, argv[1:])


if __name__ == "__main__":
    sys.exit(main())
