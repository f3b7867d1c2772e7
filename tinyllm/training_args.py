"""The training stages' arguments: transformers.TrainingArguments with tinyllm's defaults and options.

The options themselves are plain dataclasses in `tinyllm.config` (so `--help` needs no transformers import);
here they are mixed into TrainingArguments. A field both define takes tinyllm's default.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import TrainingArguments

from .config import PretrainTrainingOptions, SFTTrainingOptions
from .device import declare_cpu

__all__ = ["PretrainingArguments", "SFTTrainingArguments", "training_arguments_class"]


@dataclass
class PretrainingArguments(PretrainTrainingOptions, TrainingArguments):
    """TrainingArguments for pretraining small LMs from scratch (defaults in tinyllm.config)."""

    def __post_init__(self):
        declare_cpu(self)  # before TrainingArguments resolves its device
        super().__post_init__()


@dataclass
class SFTTrainingArguments(SFTTrainingOptions, TrainingArguments):
    """TrainingArguments for LoRA instruction tuning (defaults in tinyllm.config)."""

    def __post_init__(self):
        declare_cpu(self)
        super().__post_init__()


_BY_OPTIONS = {PretrainTrainingOptions: PretrainingArguments, SFTTrainingOptions: SFTTrainingArguments}


def training_arguments_class(options: type) -> type:
    """The TrainingArguments subclass built on a tinyllm options dataclass."""
    return _BY_OPTIONS[options]
