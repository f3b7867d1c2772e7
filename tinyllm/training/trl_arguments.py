"""The post-training stages' arguments: TRL's DPOConfig and GRPOConfig (both transformers.TrainingArguments) with
tinyllm's defaults and checks. Kept apart from tinyllm.training.arguments so pretraining never imports TRL.
"""

from __future__ import annotations

from dataclasses import dataclass

from trl import DPOConfig, GRPOConfig

from tinyllm.errors import ConfigError
from tinyllm.post_training_config import DPOTrainingOptions, GRPOTrainingOptions
from tinyllm.training.arguments import check_common

__all__ = ["DPOTrainingArguments", "GRPOTrainingArguments"]


@dataclass
class DPOTrainingArguments(DPOTrainingOptions, DPOConfig):
    """DPOConfig for LoRA preference tuning of small chat models (defaults in tinyllm.config)."""

    def __post_init__(self):
        if self.beta <= 0:
            raise ConfigError(f"beta must be > 0 (DPO's strength of the reference), got {self.beta}")
        check_common(self)
        super().__post_init__()


@dataclass
class GRPOTrainingArguments(GRPOTrainingOptions, GRPOConfig):
    """GRPOConfig for LoRA RL with verifiable rewards on small chat models (defaults in tinyllm.config)."""

    def __post_init__(self):
        if self.num_generations < 2:
            raise ConfigError(f"num_generations must be at least 2 (GRPO compares completions within a group), got "
                              f"{self.num_generations}")
        check_common(self)
        super().__post_init__()
