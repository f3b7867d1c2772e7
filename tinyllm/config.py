"""Typed configuration for every stage.

Plain dataclasses, importable without transformers so `--help` answers instantly. The training options are
mixed into `transformers.TrainingArguments` by `tinyllm.training.arguments`, imported only when a stage runs.
Precedence everywhere: dataclass default < YAML (`--config`) < command line. The options of post-training past
SFT (DPO, GRPO: TRL's) are in `tinyllm.post_training_config`, those of using a saved model (generate, chat,
eval, report, serve, export) in `tinyllm.usage_config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from tinyllm.errors import ConfigError, suggest
from tinyllm.modeling import PRESETS

__all__ = [
    "DataArguments",
    "TokenizerArguments",
    "ModelArguments",
    "LoraArguments",
    "SFTArguments",
    "SFTModelArguments",
    "OutputArguments",
    "RunDefaults",
    "PretrainTrainingOptions",
    "SFTTrainingOptions",
    "SpeedrunArguments",
]


@dataclass
class DataArguments:
    """Dataset options (one class for every command that reads data).

    A command may change a default (sft reads builtin_qa; eval reads the run's own corpus): see cli.COMMANDS."""

    dataset_name: Optional[str] = field(
        default="builtin",
        metadata={"help": "Corpus: builtin, tiny_shakespeare, tinystories, chinese_poetry; QA data for sft: "
                          "builtin_qa; or a local txt/json/jsonl/parquet file or folder, or a Hugging Face dataset "
                          "id. eval: the run's own corpus unless given."},
    )
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "HF dataset configuration name."})
    dataset_split: str = field(default="train", metadata={"help": "Split to read from an HF dataset."})
    validation_split_name: Optional[str] = field(
        default=None, metadata={"help": "Use this split of an HF dataset for validation instead of a held-out slice."}
    )
    text_column: Optional[str] = field(
        default=None, metadata={"help": "Column/field holding the text (auto-detected)."}
    )
    validation_split_percentage: Optional[float] = field(
        default=5.0, metadata={"help": "Percent of documents held out for validation when no split is given."}
    )
    block_size: Optional[int] = field(
        default=None, metadata={"help": "Tokens per training sequence (default: the preset's or the model's context)."}
    )
    max_documents: Optional[int] = field(default=None, metadata={"help": "Use at most this many documents."})
    document_separator: Optional[str] = field(default="auto", metadata={
        "help": "How a .txt file is cut into documents: auto (<|endoftext|> when present, else blank lines), "
                "blank_line, eot, none (one document), or a literal string such as '\\n'."})
    eval_max_tokens: Optional[int] = field(default=262144, metadata={
        "help": "Held-out tokens scored at each evaluation (whole documents, the first of the held-out split): "
                "the cost stays fixed as the corpus grows. 0 or empty: all of them."})
    streaming: bool = field(default=False, metadata={"help": "Read an HF dataset as a stream (never downloaded "
                                                             "whole); prepare still writes shards from it."})
    builtin_num_documents: int = field(default=20000, metadata={"help": "Documents in the built-in corpus."})
    builtin_languages: str = field(
        default="en,zh", metadata={"help": "Languages of the built-in corpus: en, zh or en,zh."}
    )
    cache_dir: Optional[str] = field(default=None, metadata={"help": "Where corpora and processed data are cached."})

    def __post_init__(self):
        if self.block_size is not None and self.block_size < 2:
            raise ConfigError(f"block_size must be >= 2, got {self.block_size}")
        if self.eval_max_tokens is not None and self.eval_max_tokens < 0:
            raise ConfigError(f"eval_max_tokens must be >= 0 (0: no limit), got {self.eval_max_tokens}")
        pct = self.validation_split_percentage
        if pct is not None and not 0 <= pct < 100:
            raise ConfigError(f"validation_split_percentage must be in [0, 100), got {pct}")


@dataclass
class TokenizerArguments:
    """The tokenizer: a saved one, or one trained on the corpus first."""

    tokenizer_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "A saved tokenizer folder. Empty: train one on the corpus first."}
    )
    tokenizer_type: str = field(
        default="bpe", metadata={"help": "bpe (byte-level BPE) or char (one token per character)."}
    )
    vocab_size: int = field(default=8000, metadata={"help": "Vocabulary size for BPE, special tokens included."})
    min_frequency: int = field(default=2, metadata={"help": "Minimum pair frequency for a BPE merge."})
    tokenizer_max_documents: Optional[int] = field(
        default=None, metadata={"help": "Train the tokenizer on at most this many documents."}
    )
    tokenizer_sample_bytes: Optional[int] = field(default=64 << 20, metadata={
        "help": "Learn BPE merges on at most this much text, sampled from the whole corpus (0: all of it)."})

    def __post_init__(self):
        if self.tokenizer_type not in ("bpe", "char"):
            raise ConfigError(
                f"tokenizer_type must be 'bpe' or 'char', got '{self.tokenizer_type}'"
                + suggest(self.tokenizer_type, ["bpe", "char"])
            )


@dataclass
class ModelArguments:
    """The model: a size preset with any override, or a saved model to continue from."""

    model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Start from this saved model folder instead of random weights."}
    )
    model_type: str = field(default="llama", metadata={"help": "llama or gpt2."})
    preset: str = field(default="nano", metadata={"help": "Size preset (see `tinyllm presets`)."})
    n_layer: Optional[int] = field(default=None, metadata={"help": "Override the preset's number of layers."})
    n_head: Optional[int] = field(default=None, metadata={"help": "Override the preset's attention heads."})
    n_embd: Optional[int] = field(default=None, metadata={"help": "Override the preset's hidden size."})
    n_kv_head: Optional[int] = field(
        default=None, metadata={"help": "Key/value heads (llama, grouped-query attention)."}
    )
    intermediate_size: Optional[int] = field(
        default=None, metadata={"help": "MLP width (default: 4x, or 8/3x for llama)."}
    )
    dropout: float = field(default=0.0, metadata={"help": "Dropout probability."})
    tie_word_embeddings: bool = field(default=True, metadata={"help": "Share input and output embeddings."})
    config_overrides: Optional[str] = field(
        default=None,
        metadata={"help": "Any other config field, e.g. 'rope_theta=500000,initializer_range=0.01'."},
    )

    def __post_init__(self):
        if self.model_type not in ("llama", "gpt2"):
            raise ConfigError(
                f"model_type must be 'llama' or 'gpt2', got '{self.model_type}'"
                + suggest(self.model_type, ["llama", "gpt2"])
            )

        if self.preset not in PRESETS:
            raise ConfigError(
                f"unknown preset '{self.preset}'{suggest(self.preset, PRESETS)}; choose one of: {', '.join(PRESETS)}"
            )


@dataclass
class LoraArguments:
    """LoRA adapter (peft) on every linear layer, or full fine-tuning."""

    use_lora: bool = field(default=True, metadata={"help": "Train a LoRA adapter (false: full fine-tuning)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling alpha."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA path."})
    lora_target_modules: Optional[str] = field(
        default=None,
        metadata={"help": "Comma-separated module names (default: all linear layers except the output head)."},
    )
    train_chat_token_embeddings: bool = field(
        default=True, metadata={"help": "Train the chat tokens' embedding rows (peft trainable_token_indices)."}
    )


def check_answer_eval_examples(n: int) -> None:
    if n < 0:
        raise ConfigError(f"answer_eval_examples must be >= 0 (0 turns it off), got {n}")


@dataclass
class SFTArguments:
    """How question-answer data becomes training examples, and how answers are scored after training."""

    max_seq_length: int = field(default=256, metadata={"help": "Longer examples are truncated or dropped."})
    truncation: str = field(default="drop", metadata={"help": "What to do with over-long examples: drop or truncate."})
    system_prompt: Optional[str] = field(default=None, metadata={"help": "Optional system message for every example."})
    max_examples: Optional[int] = field(default=None, metadata={"help": "Use at most this many training examples."})
    eval_max_new_tokens: int = field(default=32, metadata={"help": "Token budget for generated answers in evaluation."})
    # Exact match is a measure for short factual answers (the built-in QA); for open-ended answers (Alpaca) the
    # held-out answer-token loss is the measure, and generating hundreds of answers twice costs minutes on a CPU.
    answer_eval_examples: int = field(default=200, metadata={
        "help": "Held-out questions answered (greedy) before and after SFT for exact match; 0 turns it off. Exact "
                "match suits short factual answers; for open-ended data read the answer-token loss."})

    def __post_init__(self):
        if self.truncation not in ("drop", "truncate"):
            raise ConfigError(
                f"truncation must be 'drop' or 'truncate', got '{self.truncation}'"
                + suggest(self.truncation, ["drop", "truncate"])
            )
        check_answer_eval_examples(self.answer_eval_examples)


@dataclass
class OutputArguments:
    """Output options for stages that do not use transformers.TrainingArguments (tokenizer training)."""

    output_dir: str = field(default="outputs/tokenizer", metadata={"help": "Folder to write."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace a non-empty output_dir."})
    seed: int = field(default=42, metadata={"help": "Random seed."})


TIME_BUDGET_HELP = ("End by this wall time (90s, 10m, 1.5h), counted from the start of the command, with the "
                    "learning-rate schedule completed: the steps are measured as the run goes (replaces max_steps).")


@dataclass
class RunDefaults:
    """Options shared by pretraining and SFT: precision policy, the sampling defaults saved with the model, and the
    TrainingArguments defaults both stages change in the same way."""

    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping."})
    eval_strategy: str = field(default="steps", metadata={"help": "When to evaluate: steps, epoch or no."})
    report_to: Optional[list[str]] = field(default_factory=lambda: ["tensorboard"],
                                           metadata={"help": "Loggers: tensorboard, wandb, none, ... (a list)."})
    # the device policy makes this the fused AdamW on CUDA and the CPU; the plain one runs everywhere
    optim: str = field(default="adamw_torch", metadata={"help": "Optimizer name (transformers' names)."})
    # a NaN must surface in the logs, not be averaged away
    logging_nan_inf_filter: bool = field(default=False, metadata={"help": "Filter NaN/inf losses from logs."})

    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace a non-empty output_dir."})
    precision: str = field(default="auto", metadata={"help": "auto (bf16 on CUDA that supports it, else fp16 on CUDA, "
                                                             "fp32 on CPU/MPS), fp32, bf16 or fp16."})
    license: str = field(default="apache-2.0", metadata={"help": "License written into the model card."})
    plot_loss: bool = field(default=True, metadata={"help": "Save loss_curve.png in the output folder."})
    gen_temperature: float = field(
        default=0.8, metadata={"help": "Sampling temperature stored in generation_config.json."}
    )
    gen_top_k: int = field(default=50, metadata={"help": "top_k stored in generation_config.json."})
    gen_top_p: float = field(default=0.95, metadata={"help": "top_p stored in generation_config.json."})
    gen_repetition_penalty: float = field(default=1.1, metadata={"help": "Repetition penalty stored in "
                                                                           "generation_config.json."})
    gen_max_new_tokens: int = field(default=256, metadata={"help": "max_new_tokens stored in generation_config.json."})


# The training options below are mixed into transformers.TrainingArguments (tinyllm.training.arguments):
#   PretrainingArguments(PretrainTrainingOptions, TrainingArguments)
# A field here that TrainingArguments also has replaces its default (as TRL's SFTConfig does); the others are
# tinyllm's own. They live here, free of transformers imports, so `--help` answers instantly.

@dataclass
class PretrainTrainingOptions(RunDefaults):
    """Training: transformers.TrainingArguments, with defaults for small models trained from scratch."""

    output_dir: str = field(default="outputs/run", metadata={"help": "Where the model folder and checkpoints go."})
    # small models tolerate (and need) a much higher LR than fine-tuning
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate."})
    lr_scheduler_type: str = field(default="cosine_with_min_lr", metadata={"help": "Learning-rate schedule."})
    # decay to 10% of the peak, as nanoGPT/Chinchilla do
    lr_scheduler_kwargs: Optional[dict] = field(default_factory=lambda: {"min_lr_rate": 0.1},
                                                metadata={"help": "Schedule options (a mapping)."})
    warmup_steps: int = field(default=100, metadata={"help": "Linear warmup steps."})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay (norms and biases excluded)."})
    # small batches: a shorter second-moment memory is more stable (nanoGPT uses 0.99)
    adam_beta2: float = field(default=0.99, metadata={"help": "AdamW beta2."})
    max_steps: int = field(default=2000, metadata={"help": "Optimizer steps (overrides num_train_epochs)."})
    time_budget: Optional[str] = field(default=None, metadata={"help": TIME_BUDGET_HELP})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Micro-batch per device."})
    per_device_eval_batch_size: int = field(default=32, metadata={"help": "Evaluation batch per device."})
    eval_steps: float = field(default=250, metadata={"help": "Evaluate every N steps."})
    logging_steps: float = field(default=25, metadata={"help": "Log every N steps."})
    save_steps: float = field(default=500, metadata={"help": "Checkpoint every N steps."})
    save_total_limit: Optional[int] = field(default=3, metadata={"help": "Keep at most N checkpoints."})
    sample_prompts: Optional[str] = field(
        default=None, metadata={"help": "'|'-separated prompts sampled at each evaluation (default: from the corpus)."}
    )
    sample_max_new_tokens: int = field(default=64, metadata={"help": "Tokens per sample at evaluation."})
    keep_best: bool = field(default=False, metadata={
        "help": "Keep the weights with the lowest validation loss of the evaluations (every --eval_steps) instead of "
                "the last ones, when those are worse: a small corpus repeated for many epochs overfits. With "
                "--forecast the cooled-down copies compete too."})
    forecast: bool = field(default=False, metadata={
        "help": "With --time_budget and --lr_scheduler_type warmup_stable_decay: predict the final validation loss "
                "from copies of the run cooled down at a tenth, a fifth and two fifths of its steps (they cost about a "
                "sixth of the steps), revised where the run's cool-down begins (forecast.json)."})
    matrix_optimizer: str = field(default="adamw", metadata={
        "help": "adamw, or muon: Muon for the hidden weight matrices (AdamW, --optim, keeps the embeddings, head "
                "and norms)."})
    muon_learning_rate: float = field(default=0.02, metadata={"help": "Peak learning rate of the Muon matrices."})
    muon_weight_decay: float = field(default=0.0, metadata={"help": "Decoupled weight decay of the Muon matrices."})


@dataclass
class SFTTrainingOptions(RunDefaults):
    """Training: transformers.TrainingArguments, with defaults for LoRA on small models."""

    output_dir: str = field(default="outputs/sft", metadata={"help": "Where the chat model and adapter go."})
    # LoRA on a tiny model: higher than the 2e-4 usual for 7B models
    learning_rate: float = field(default=2e-3, metadata={"help": "Peak learning rate."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    warmup_steps: int = field(default=20, metadata={"help": "Linear warmup steps."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_steps: int = field(default=300, metadata={"help": "Optimizer steps."})
    time_budget: Optional[str] = field(default=None, metadata={"help": TIME_BUDGET_HELP})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Micro-batch per device."})
    per_device_eval_batch_size: int = field(default=16, metadata={"help": "Evaluation batch per device."})
    eval_steps: float = field(default=100, metadata={"help": "Evaluate every N steps."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    save_steps: float = field(default=100, metadata={"help": "Checkpoint every N steps."})
    save_total_limit: Optional[int] = field(default=2, metadata={"help": "Keep at most N checkpoints."})
    gen_temperature: float = field(default=0.7, metadata={"help": "Sampling temperature stored in "
                                                                    "generation_config.json."})


@dataclass
class SFTModelArguments:
    """The model to instruction-tune."""

    model_name_or_path: str = field(
        default="outputs/quickstart", metadata={"help": "Pretrained tinyllm/HF model folder."}
    )


@dataclass
class SpeedrunArguments:
    """The speedrun: tokenizer -> prepare -> pretrain -> SFT -> eval -> GGUF, sized to --time_budget."""

    time_budget: Optional[str] = field(default=None, metadata={
        "help": "The wall time for everything, start to report card: 90s, 10m, 1.5h (required)."})
    output_dir: str = field(default="outputs/speedrun", metadata={"help": "Where every stage's folder goes."})
    sft_dataset_name: Optional[str] = field(default="auto", metadata={
        "help": "Question-answer data for the SFT stage (a file or dataset id, or builtin_qa); auto: builtin_qa "
                "for the built-in corpus, no SFT otherwise; none: no SFT."})
    tokenizer_type: str = field(default="bpe", metadata={"help": "bpe (byte-level BPE) or char (one token per "
                                                                 "character, for a small text like Shakespeare)."})
    vocab_size: Optional[int] = field(default=None, metadata={
        "help": "BPE vocabulary (default: by corpus size, 1024 under 2 MB up to 8192 over 200 MB)."})
    max_epochs: float = field(default=16.0, metadata={
        "help": "Never repeat the corpus more than this. Repeats count less and less in the sizing rule (Muennighoff "
                "et al. 2023: ~4 epochs are worth nearly as much as fresh data, ~16 add almost nothing more)."})
    dry_run: bool = field(default=False, metadata={"help": "Prepare the data, probe this machine and print the plan "
                                                           "without training."})
    export_gguf: bool = field(default=True, metadata={"help": "End with a GGUF file and an Ollama Modelfile."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Start over in a non-empty output_dir "
                                                                        "(default: resume the speedrun there)."})
    seed: int = field(default=42, metadata={"help": "Random seed."})
    precision: str = field(default="auto", metadata={"help": "auto, fp32, bf16 or fp16 (as pretrain)."})

    def __post_init__(self):
        if self.tokenizer_type not in ("bpe", "char"):
            raise ConfigError(f"tokenizer_type must be 'bpe' or 'char', got '{self.tokenizer_type}'"
                              + suggest(self.tokenizer_type, ["bpe", "char"]))
        if self.max_epochs <= 0:
            raise ConfigError(f"max_epochs must be > 0, got {self.max_epochs}")
