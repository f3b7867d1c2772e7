"""Typed configuration for every stage.

Plain dataclasses, importable without transformers so `--help` answers instantly. The training dataclasses
that subclass `transformers.TrainingArguments` live in `tinyllm.training_args` and are imported lazily.
Precedence everywhere: dataclass default < YAML (`--config`) < command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

__all__ = [
    "DataArguments",
    "TokenizerArguments",
    "ModelArguments",
    "LoraArguments",
    "GenerationArguments",
    "SFTDataArguments",
    "SFTModelArguments",
    "OutputArguments",
    "PretrainExtras",
    "SFTExtras",
    "PRETRAIN_TRAINING_DEFAULTS",
    "SFT_TRAINING_DEFAULTS",
]


@dataclass
class DataArguments:
    dataset_name: str = field(
        default="builtin",
        metadata={"help": "Corpus: builtin, tiny_shakespeare, tinystories, chinese_poetry, a local "
                          "txt/json/jsonl/parquet file or folder, or a Hugging Face dataset id."},
    )
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "HF dataset configuration name."})
    dataset_split: str = field(default="train", metadata={"help": "Split to read from an HF dataset."})
    validation_split_name: Optional[str] = field(
        default=None, metadata={"help": "Use this split of an HF dataset for validation instead of a held-out slice."}
    )
    text_column: Optional[str] = field(default=None, metadata={"help": "Column/field holding the text (auto-detected)."})
    validation_split_percentage: float = field(
        default=5.0, metadata={"help": "Percent of documents held out for validation when no split is given."}
    )
    block_size: int = field(default=256, metadata={"help": "Tokens per training sequence (context length)."})
    max_documents: Optional[int] = field(default=None, metadata={"help": "Use at most this many documents."})
    streaming: bool = field(default=False, metadata={"help": "Stream the corpus instead of loading it in memory."})
    preprocessing_num_workers: Optional[int] = field(default=None, metadata={"help": "Processes for datasets.map."})
    builtin_num_documents: int = field(default=20000, metadata={"help": "Documents in the built-in corpus."})
    builtin_languages: str = field(default="en,zh", metadata={"help": "Languages of the built-in corpus: en, zh or en,zh."})
    cache_dir: Optional[str] = field(default=None, metadata={"help": "Where corpora and processed data are cached."})

    def __post_init__(self):
        from .errors import ConfigError

        if self.block_size < 2:
            raise ConfigError(f"block_size must be >= 2, got {self.block_size}")
        if not 0 <= self.validation_split_percentage < 100:
            raise ConfigError(
                f"validation_split_percentage must be in [0, 100), got {self.validation_split_percentage}"
            )


@dataclass
class TokenizerArguments:
    tokenizer_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "A saved tokenizer folder. Empty: train one on the corpus first."}
    )
    tokenizer_type: str = field(default="bpe", metadata={"help": "bpe (byte-level BPE) or char (one token per character)."})
    vocab_size: int = field(default=8000, metadata={"help": "Vocabulary size for BPE, special tokens included."})
    min_frequency: int = field(default=2, metadata={"help": "Minimum pair frequency for a BPE merge."})
    tokenizer_max_documents: Optional[int] = field(
        default=None, metadata={"help": "Train the tokenizer on at most this many documents."}
    )

    def __post_init__(self):
        from .errors import ConfigError, suggest

        if self.tokenizer_type not in ("bpe", "char"):
            raise ConfigError(
                f"tokenizer_type must be 'bpe' or 'char', got '{self.tokenizer_type}'"
                + suggest(self.tokenizer_type, ["bpe", "char"])
            )


@dataclass
class ModelArguments:
    model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Start from this saved model folder instead of random weights."}
    )
    model_type: str = field(default="llama", metadata={"help": "llama or gpt2."})
    preset: str = field(default="nano", metadata={"help": "Size preset (see `tinyllm presets`)."})
    n_layer: Optional[int] = field(default=None, metadata={"help": "Override the preset's number of layers."})
    n_head: Optional[int] = field(default=None, metadata={"help": "Override the preset's attention heads."})
    n_embd: Optional[int] = field(default=None, metadata={"help": "Override the preset's hidden size."})
    n_kv_head: Optional[int] = field(default=None, metadata={"help": "Key/value heads (llama, grouped-query attention)."})
    intermediate_size: Optional[int] = field(default=None, metadata={"help": "MLP width (default: 4x, or 8/3x for llama)."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout probability."})
    tie_word_embeddings: bool = field(default=True, metadata={"help": "Share input and output embeddings."})
    config_overrides: Optional[str] = field(
        default=None,
        metadata={"help": "Any other config field, e.g. 'rope_theta=500000,initializer_range=0.01'."},
    )

    def __post_init__(self):
        from .errors import ConfigError, suggest

        if self.model_type not in ("llama", "gpt2"):
            raise ConfigError(
                f"model_type must be 'llama' or 'gpt2', got '{self.model_type}'" + suggest(self.model_type, ["llama", "gpt2"])
            )
        from .modeling import PRESETS

        if self.preset not in PRESETS:
            raise ConfigError(
                f"unknown preset '{self.preset}'{suggest(self.preset, PRESETS)}; choose one of: {', '.join(PRESETS)}"
            )


@dataclass
class LoraArguments:
    use_lora: bool = field(default=True, metadata={"help": "Train a LoRA adapter (false: full fine-tuning)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling alpha."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA path."})
    lora_target_modules: Optional[str] = field(
        default=None, metadata={"help": "Comma-separated module names (default: all linear layers of the architecture)."}
    )
    train_chat_token_embeddings: bool = field(
        default=True, metadata={"help": "Train the chat tokens' embedding rows (peft trainable_token_indices)."}
    )


@dataclass
class SFTDataArguments:
    dataset_name: str = field(
        default="builtin_qa", metadata={"help": "QA data: builtin_qa, a jsonl/json/parquet file, or an HF dataset id."}
    )
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "HF dataset configuration name."})
    dataset_split: str = field(default="train", metadata={"help": "Split to train on."})
    validation_split_name: Optional[str] = field(default=None, metadata={"help": "Split to evaluate on."})
    validation_split_percentage: float = field(default=10.0, metadata={"help": "Held-out percent when no split is given."})
    max_seq_length: int = field(default=256, metadata={"help": "Longer examples are truncated or dropped."})
    truncation: str = field(default="drop", metadata={"help": "What to do with over-long examples: drop or truncate."})
    system_prompt: Optional[str] = field(default=None, metadata={"help": "Optional system message for every example."})
    max_examples: Optional[int] = field(default=None, metadata={"help": "Use at most this many training examples."})
    eval_max_new_tokens: int = field(default=32, metadata={"help": "Token budget for generated answers in evaluation."})
    cache_dir: Optional[str] = field(default=None, metadata={"help": "Cache folder."})

    def __post_init__(self):
        from .errors import ConfigError, suggest

        if self.truncation not in ("drop", "truncate"):
            raise ConfigError(
                f"truncation must be 'drop' or 'truncate', got '{self.truncation}'" + suggest(self.truncation, ["drop", "truncate"])
            )


@dataclass
class GenerationArguments:
    model: str = field(default="outputs/quickstart", metadata={"help": "A saved model folder (or Hub id if cached)."})
    prompt: str = field(default="", metadata={"help": "Text to continue."})
    max_new_tokens: int = field(default=200, metadata={"help": "Tokens to generate."})
    temperature: Optional[float] = field(default=None, metadata={"help": "Sampling temperature (default: the model's)."})
    top_k: Optional[int] = field(default=None, metadata={"help": "Keep the k most likely tokens (default: the model's)."})
    top_p: Optional[float] = field(default=None, metadata={"help": "Nucleus sampling mass (default: the model's)."})
    repetition_penalty: Optional[float] = field(default=None, metadata={"help": "Penalty > 1 discourages repeats."})
    num_samples: int = field(default=1, metadata={"help": "How many samples to print."})
    seed: int = field(default=0, metadata={"help": "Random seed for sampling."})
    device: Optional[str] = field(default=None, metadata={"help": "cpu, cuda, mps (default: best available)."})


# Defaults that differ from transformers.TrainingArguments, tuned for small LMs trained from scratch.
# Kept here (no transformers import) so `--help` can show them instantly.
PRETRAIN_TRAINING_DEFAULTS = {
    "output_dir": "outputs/run",
    "learning_rate": 1e-3,  # small models tolerate (and need) a much higher LR than fine-tuning
    "lr_scheduler_type": "cosine_with_min_lr",
    "lr_scheduler_kwargs": {"min_lr_rate": 0.1},  # decay to 10% of the peak, as nanoGPT/Chinchilla do
    "warmup_steps": 100,
    "weight_decay": 0.1,
    "adam_beta2": 0.99,  # small batches: a shorter second-moment memory is more stable (nanoGPT uses 0.99)
    "max_grad_norm": 1.0,
    "max_steps": 2000,
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 32,
    "eval_strategy": "steps",
    "eval_steps": 250,
    "logging_steps": 25,
    "save_steps": 500,
    "save_total_limit": 3,
    "report_to": "tensorboard",
    "optim": "adamw_torch",
    "logging_nan_inf_filter": False,  # a NaN must surface in the logs, not be averaged away
    "save_only_model": False,
}

SFT_TRAINING_DEFAULTS = {
    "output_dir": "outputs/sft",
    "learning_rate": 2e-3,  # LoRA on a tiny model: higher than the 2e-4 usual for 7B models
    "lr_scheduler_type": "cosine",
    "warmup_steps": 20,
    "weight_decay": 0.0,
    "max_grad_norm": 1.0,
    "max_steps": 300,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 16,
    "eval_strategy": "steps",
    "eval_steps": 100,
    "logging_steps": 10,
    "save_steps": 100,
    "save_total_limit": 2,
    "report_to": "tensorboard",
    "optim": "adamw_torch",
    "logging_nan_inf_filter": False,
}


@dataclass
class OutputArguments:
    """Output options for stages that do not use transformers.TrainingArguments (tokenizer training)."""

    output_dir: str = field(default="outputs/tokenizer", metadata={"help": "Folder to write."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace a non-empty output_dir."})
    seed: int = field(default=42, metadata={"help": "Random seed."})


@dataclass
class RunDefaults:
    """Options shared by pretraining and SFT: precision policy and the sampling defaults saved with the model."""

    precision: str = field(default="auto", metadata={"help": "auto (bf16 on CUDA that supports it, else fp16 on CUDA, fp32 on CPU/MPS), fp32, bf16 or fp16."})
    gen_temperature: float = field(default=0.8, metadata={"help": "Sampling temperature stored in generation_config.json."})
    gen_top_k: int = field(default=50, metadata={"help": "top_k stored in generation_config.json."})
    gen_top_p: float = field(default=0.95, metadata={"help": "top_p stored in generation_config.json."})
    gen_repetition_penalty: float = field(default=1.1, metadata={"help": "Repetition penalty stored in generation_config.json."})
    gen_max_new_tokens: int = field(default=256, metadata={"help": "max_new_tokens stored in generation_config.json."})


@dataclass
class PretrainExtras(RunDefaults):
    """tinyllm fields added to transformers.TrainingArguments for pretraining."""

    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace a non-empty output_dir."})
    sample_prompts: Optional[str] = field(
        default=None, metadata={"help": "'|'-separated prompts sampled at each evaluation (default: from the corpus)."}
    )
    sample_max_new_tokens: int = field(default=64, metadata={"help": "Tokens per sample at evaluation."})
    plot_loss: bool = field(default=True, metadata={"help": "Save loss_curve.png in the output folder."})
    license: str = field(default="apache-2.0", metadata={"help": "License written into the model card."})
    nan_policy: str = field(default="stop", metadata={"help": "On a non-finite loss: stop (and say what to try)."})


@dataclass
class SFTModelArguments:
    model_name_or_path: str = field(default="outputs/quickstart", metadata={"help": "Pretrained tinyllm/HF model folder."})


@dataclass
class SFTExtras(RunDefaults):
    """tinyllm fields added to transformers.TrainingArguments for instruction tuning."""

    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace a non-empty output_dir."})
    license: str = field(default="apache-2.0", metadata={"help": "License written into the model card."})
    plot_loss: bool = field(default=True, metadata={"help": "Save loss_curve.png in the output folder."})
    gen_temperature: float = field(default=0.7, metadata={"help": "Sampling temperature stored in generation_config.json."})
