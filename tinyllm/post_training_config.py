"""Typed configuration of post-training past SFT: DPO and GRPO (TRL's trainers), as `tinyllm.config` is for the other
stages. Plain dataclasses, importable without transformers or TRL; `tinyllm.training.trl_arguments` mixes the
training options into TRL's DPOConfig and GRPOConfig when a stage runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from tinyllm.config import RunDefaults, check_answer_eval_examples

__all__ = ["PostTrainingModelArguments", "PreferenceArguments", "GRPOArguments", "TRLRunDefaults",
           "DPOTrainingOptions", "GRPOTrainingOptions"]


@dataclass
class PostTrainingModelArguments:
    """The chat model to tune (an SFT output, or any chat model with its own template)."""

    model_name_or_path: str = field(
        default="outputs/sft_quickstart", metadata={"help": "A chat model folder (tinyllm sft's output) or Hub id."}
    )


@dataclass
class PreferenceArguments:
    """How preference pairs become DPO examples, and how answers are scored before and after."""

    max_examples: Optional[int] = field(default=None, metadata={"help": "Use at most this many training pairs."})
    eval_max_new_tokens: int = field(default=32, metadata={"help": "Token budget for generated answers in evaluation."})
    answer_eval_examples: int = field(default=200, metadata={
        "help": "Held-out questions answered (greedy) before and after for exact match; 0 turns it off."})

    def __post_init__(self):
        check_answer_eval_examples(self.answer_eval_examples)


@dataclass
class GRPOArguments:
    """The task and rewards for GRPO (RL with verifiable rewards)."""

    reward_funcs: Optional[str] = field(default=None, metadata={
        "help": "Comma-separated 'path.py:function' rewards, each called as f(prompts, completions, **columns) -> "
                "list of floats (default: the built-in task's exact-answer, format and stop rewards)."})
    max_prompts: Optional[int] = field(default=None, metadata={"help": "Use at most this many training prompts."})
    eval_max_new_tokens: int = field(default=16, metadata={"help": "Token budget for answers in evaluation."})
    answer_eval_examples: int = field(default=200, metadata={
        "help": "Held-out problems answered (greedy) before and after for pass@1; 0 turns it off."})

    def __post_init__(self):
        check_answer_eval_examples(self.answer_eval_examples)


@dataclass
class TRLRunDefaults(RunDefaults):
    """What DPO and GRPO (TRL's configs) change the same way."""

    save_total_limit: Optional[int] = field(default=2, metadata={"help": "Keep at most N checkpoints."})
    # TRL turns checkpointing on by default; on models this small it only slows training
    activation_checkpointing: Optional[bool] = field(default=False, metadata={
        "help": "Recompute activations in the backward pass (saves memory on big models, slows small ones)."})
    gradient_checkpointing: Optional[bool] = field(default=None, metadata={
        "help": "Old name of activation_checkpointing (TRL turns it on by default; tinyllm does not)."})
    gen_temperature: float = field(default=0.3, metadata={"help": "Sampling temperature stored in "
                                                                  "generation_config.json."})


@dataclass
class DPOTrainingOptions(TRLRunDefaults):
    """Training: TRL's DPOConfig (transformers.TrainingArguments plus DPO's own), with defaults for LoRA on small
    chat models on a CPU."""

    output_dir: str = field(default="outputs/dpo", metadata={"help": "Where the tuned chat model and adapter go."})
    # measured on the built-in pairs (benchmarks/post_training.py): plain DPO at lr 2e-3 or beta 0.1 drives the
    # chosen answers' likelihood down until greedy answers break; with the NLL term on the chosen answers (TRL's
    # "sft" loss, as in RPO) lr 2e-3 is safe and moves held-out answers most
    beta: float = field(default=0.5, metadata={"help": "DPO's beta: how far the model may move from the "
                                                       "reference (higher: less)."})
    loss_type: list[str] = field(default_factory=lambda: ["sigmoid", "sft"], metadata={
        "help": "TRL's DPO losses, summed: sigmoid (DPO) plus sft (negative log-likelihood of the chosen answers, "
                "which keeps their likelihood from collapsing); e.g. --loss_type sigmoid for plain DPO, ipo, ..."})
    max_length: Optional[int] = field(default=128, metadata={"help": "Prompt + the longer answer, in tokens; longer "
                                                                     "pairs are counted and dropped (never cut)."})
    learning_rate: float = field(default=2e-3, metadata={"help": "Peak learning rate (LoRA on a tiny model)."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    warmup_steps: int = field(default=10, metadata={"help": "Linear warmup steps."})
    max_steps: int = field(default=150, metadata={"help": "Optimizer steps."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Pairs per micro-batch per device."})
    per_device_eval_batch_size: int = field(default=32, metadata={"help": "Evaluation pairs per device."})
    eval_steps: float = field(default=50, metadata={"help": "Evaluate every N steps."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    save_steps: float = field(default=50, metadata={"help": "Checkpoint every N steps."})


@dataclass
class GRPOTrainingOptions(TRLRunDefaults):
    """Training: TRL's GRPOConfig (transformers.TrainingArguments plus GRPO's own), with defaults for small chat
    models on a CPU (full fine-tuning: the grpo command's default)."""

    output_dir: str = field(default="outputs/grpo", metadata={"help": "Where the tuned chat model and adapter go."})
    # measured on builtin_arithmetic (benchmarks/post_training.py): full fine-tuning at 1e-4 with 16 prompts x 8
    # answers per step at temperature 0.7 raised held-out pass@1; LoRA (1e-3..2e-3) and temperature 1.0 did not
    learning_rate: float = field(default=1e-4, metadata={"help": "Peak learning rate."})
    lr_scheduler_type: str = field(default="constant_with_warmup", metadata={"help": "Learning-rate schedule."})
    warmup_steps: int = field(default=5, metadata={"help": "Linear warmup steps."})
    max_steps: int = field(default=100, metadata={"help": "Optimizer steps."})
    per_device_train_batch_size: int = field(default=128, metadata={"help": "Completions per micro-batch per "
                                                                            "device (a multiple of num_generations)."})
    num_generations: int = field(default=8, metadata={"help": "Completions sampled per prompt (the group)."})
    max_completion_length: int = field(default=16, metadata={"help": "Tokens per sampled completion."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature of the completions."})
    beta: float = field(default=0.0, metadata={"help": "KL penalty against the reference (0: none, TRL's default)."})
    eval_strategy: str = field(default="no", metadata={"help": "When to evaluate: held-out pass@1 is measured before "
                                                               "and after in any case."})
    logging_steps: float = field(default=5, metadata={"help": "Log every N steps."})
    save_steps: float = field(default=50, metadata={"help": "Checkpoint every N steps."})
