"""TrainingArguments subclasses: transformers' fields, tinyllm defaults for small LMs, and tinyllm extras."""

from __future__ import annotations

import dataclasses
from typing import get_type_hints

from transformers import TrainingArguments

from .config import PRETRAIN_TRAINING_DEFAULTS, SFT_TRAINING_DEFAULTS, PretrainExtras, SFTExtras

__all__ = ["PretrainingArguments", "SFTTrainingArguments"]


def _subclass(name: str, defaults: dict, extras: type) -> type:
    """A TrainingArguments subclass whose defaults are `defaults` and which adds the fields of `extras`."""
    hints = get_type_hints(TrainingArguments)
    base_fields = {f.name: f for f in dataclasses.fields(TrainingArguments)}
    new = []
    for key, value in defaults.items():
        meta = base_fields[key].metadata
        if isinstance(value, (dict, list)):
            fld = dataclasses.field(default_factory=lambda v=value: type(v)(v), metadata=meta)
        else:
            fld = dataclasses.field(default=value, metadata=meta)
        new.append((key, hints[key], fld))
    extra_hints = get_type_hints(extras)
    for f in dataclasses.fields(extras):
        new.append((f.name, extra_hints[f.name], dataclasses.field(default=f.default, metadata=f.metadata)))
    cls = dataclasses.make_dataclass(name, new, bases=(TrainingArguments,))
    cls.__module__ = __name__
    return cls


PretrainingArguments = _subclass("PretrainingArguments", PRETRAIN_TRAINING_DEFAULTS, PretrainExtras)
SFTTrainingArguments = _subclass("SFTTrainingArguments", SFT_TRAINING_DEFAULTS, SFTExtras)
