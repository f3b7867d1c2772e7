"""The training stages' arguments: transformers.TrainingArguments with tinyllm's defaults and options.

The options themselves are plain dataclasses in `tinyllm.config` (so `--help` needs no transformers import);
here they are mixed into TrainingArguments. A field both define takes tinyllm's default.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from transformers import TrainingArguments

from tinyllm.config import PretrainTrainingOptions, SFTTrainingOptions
from tinyllm.device import apply_precision_policy, declare_cpu, detect_device
from tinyllm.errors import ConfigError, first_line, suggest
from tinyllm.training.budget import BUDGET_SCHEDULES, parse_duration
from tinyllm.training.optim import MuonFactory

MATRIX_OPTIMIZERS = ("adamw", "muon")

__all__ = ["PretrainingArguments", "SFTTrainingArguments", "training_arguments_class"]


@dataclass
class PretrainingArguments(PretrainTrainingOptions, TrainingArguments):
    """TrainingArguments for pretraining small LMs from scratch (defaults in tinyllm.config)."""

    def __post_init__(self):
        if self.matrix_optimizer not in MATRIX_OPTIMIZERS:
            raise ConfigError(f"matrix_optimizer must be one of {', '.join(MATRIX_OPTIMIZERS)}, got "
                              f"'{self.matrix_optimizer}'" + suggest(self.matrix_optimizer, MATRIX_OPTIMIZERS))
        check_time_budget(self)
        check_forecast(self)
        check_keep_best(self)
        check_common(self)
        super().__post_init__()

    def optimizer_factory(self) -> tuple | None:
        """Trainer's `optimizer_cls_and_kwargs` for --matrix_optimizer muon (None: Trainer's own AdamW)."""
        if self.matrix_optimizer != "muon":
            return None

        return MuonFactory, {"lr": self.learning_rate, "muon_lr": self.muon_learning_rate,
                             "weight_decay": self.weight_decay, "muon_weight_decay": self.muon_weight_decay,
                             "betas": (self.adam_beta1, self.adam_beta2), "eps": self.adam_epsilon}


def check_time_budget(args) -> None:
    """--time_budget: parsed (one-line error otherwise), a schedule that can follow the measured steps, and
    max_steps lifted (the budget callback ends the run)."""
    args.time_budget_seconds = parse_duration(args.time_budget) if args.time_budget else None
    if args.time_budget and str(args.lr_scheduler_type) not in BUDGET_SCHEDULES:
        raise ConfigError(f"--time_budget needs a schedule whose length can follow the measured steps "
                          f"({', '.join(BUDGET_SCHEDULES)}), got '{args.lr_scheduler_type}'")
    if args.time_budget:
        args.max_steps = 10 ** 9  # an upper bound for Trainer; the budget callback ends the run


def check_forecast(args) -> None:
    """--forecast cools copies of the run down from a held rate: tinyllm's warmup_stable_decay under a budget."""
    if getattr(args, "forecast", False) and not (args.time_budget and
                                                 str(args.lr_scheduler_type) == "warmup_stable_decay"):
        raise ConfigError("--forecast needs --time_budget and --lr_scheduler_type warmup_stable_decay (its copies "
                          "are cooled down from the held learning rate); add both, or drop --forecast")


def check_keep_best(args) -> None:
    """--keep_best keeps a full copy of the weights in each process: DDP's replicas, not sharded ones."""
    if getattr(args, "keep_best", False) and (args.fsdp or args.deepspeed):
        raise ConfigError("--keep_best keeps a full copy of the weights, which FSDP and DeepSpeed shard: use "
                          "--load_best_model_at_end true --metric_for_best_model eval_loss (checkpoints on disk) "
                          "instead")


def check_common(args) -> None:
    """What every training stage's arguments run before TrainingArguments' own __post_init__ (which joins the
    process group, resolves the device and derives mixed precision and the optimizer from these fields)."""
    check_scheduler_kwargs(args)
    check_report_to(args)
    check_launch(args)  # before TrainingArguments joins the process group
    declare_cpu(args)  # before TrainingArguments resolves its device
    apply_precision_policy(args)  # before TrainingArguments derives mixed_precision and the optimizer from it


def check_scheduler_kwargs(args) -> None:
    """Both stages' schedules: the stage's default `lr_scheduler_kwargs` belong to its default schedule, so another
    `--lr_scheduler_type` drops them, and a keyword the chosen schedule does not take is a one-line error here, not
    a TypeError at the first step. Checked by building the schedule once through transformers' public
    `get_scheduler` on a throwaway one-parameter optimizer (microseconds)."""
    import dataclasses
    import json

    import torch
    from transformers import get_scheduler
    from transformers.trainer_utils import SchedulerType

    raw = args.lr_scheduler_kwargs
    kwargs = dict(json.loads(raw) if isinstance(raw, str) else raw or {})  # TrainingArguments also takes JSON
    try:
        kind = SchedulerType(args.lr_scheduler_type)
    except ValueError:
        return  # TrainingArguments names the valid schedules
    fields = {f.name: f for f in dataclasses.fields(args)}
    kw_field = fields["lr_scheduler_kwargs"]
    default_kwargs = (kw_field.default_factory() if kw_field.default_factory is not dataclasses.MISSING
                      else kw_field.default)
    if args.lr_scheduler_type != fields["lr_scheduler_type"].default and kwargs == (default_kwargs or {}):
        kwargs = {}
    if kwargs and getattr(args, "time_budget", None) and kind == SchedulerType.WARMUP_STABLE_DECAY:
        # under a time budget tinyllm's own schedule (training/budget.py): the cool-down's length follows the
        # measured steps, only its floor is set
        if set(kwargs) - {"min_lr_ratio"}:
            raise ConfigError(f"lr_scheduler_kwargs {json.dumps(kwargs)}: with --time_budget, warmup_stable_decay "
                              f"takes only min_lr_ratio (its cool-down is the last fifth of the measured steps); "
                              f"fix --lr_scheduler_kwargs")
    elif kwargs:
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        try:
            get_scheduler(kind, optimizer, num_warmup_steps=1, num_training_steps=10,
                          scheduler_specific_kwargs=kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"lr_scheduler_kwargs {json.dumps(kwargs)} not accepted by the '{kind.value}' "
                              f"schedule ({first_line(exc)}); fix --lr_scheduler_kwargs") from exc
    args.lr_scheduler_kwargs = kwargs


PLACEHOLDER_NETWORK = ipaddress.ip_network("192.0.2.0/24")  # RFC 5737: for documentation, never a real host


def check_launch(args) -> None:
    """Launch settings that would run but do something else, or hang, refused in one line before training:
    - an FSDP or DeepSpeed launch config on a machine without a GPU: accelerate quietly trains plain DDP then
      (nothing is sharded), so say so and point at multi_cpu.yaml;
    - recipes/accelerate_configs/multi_node.yaml's placeholder main_process_ip (a documentation address): the
      processes would wait for a machine that does not exist."""
    sharded = [name for name, on in (("FSDP", os.environ.get("ACCELERATE_USE_FSDP") == "true" or bool(args.fsdp)),
                                     ("DeepSpeed", os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true"
                                      or bool(args.deepspeed))) if on]
    if sharded and detect_device(args.use_cpu) == "cpu":
        raise ConfigError(f"the {sharded[0]} launch config shards a model across GPUs, and this machine has none: "
                          f"accelerate would quietly train plain DDP instead. On CPUs use "
                          f"recipes/accelerate_configs/multi_cpu.yaml (DDP over gloo)")
    master = os.environ.get("MASTER_ADDR")
    if master and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        try:
            placeholder = ipaddress.ip_address(master) in PLACEHOLDER_NETWORK
        except ValueError:
            placeholder = False
        if placeholder:
            raise ConfigError(f"main_process_ip {master} is the placeholder of multi_node.yaml: set it to the main "
                              f"machine's address, reachable by every machine (e.g. --main_process_ip 10.1.2.3)")


def check_report_to(args) -> None:
    """`report_to: [tensorboard, none]` means two opposite things; transformers refuses it only when Trainer is
    built, with a traceback. Say so here, in one line."""
    value = args.report_to
    items = [value] if isinstance(value, str) else list(value or [])
    for word in ("none", "all"):
        if word in items and len(items) > 1:
            others = ", ".join(i for i in items if i != word)
            raise ConfigError(f"report_to lists '{word}' together with {others}; use report_to: {word}, or list "
                              f"only the loggers you want (e.g. report_to: [{others}])")


@dataclass
class SFTTrainingArguments(SFTTrainingOptions, TrainingArguments):
    """TrainingArguments for LoRA instruction tuning (defaults in tinyllm.config)."""

    def __post_init__(self):
        check_time_budget(self)
        check_common(self)
        super().__post_init__()


_BY_OPTIONS = {PretrainTrainingOptions: PretrainingArguments, SFTTrainingOptions: SFTTrainingArguments}


def training_arguments_class(options: type) -> type:
    """The TrainingArguments subclass built on a tinyllm options dataclass."""
    return _BY_OPTIONS[options]
