"""Typed configuration of using a saved model: generate and chat, eval, report, serve and export, as
`tinyllm.config` is for the stages that train. Plain dataclasses, importable without transformers so `--help` answers
instantly."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

__all__ = ["GenerationArguments", "EvalArguments", "ReportArguments", "ServeArguments", "ExportArguments"]


COMPILE_HELP = ("Compile the one-token decoding step (torch.compile, static KV cache): ~2x tokens/s at batch 1 "
                "after a one-time compilation of seconds; pays back on long outputs and servers.")


@dataclass
class GenerationArguments:
    """The model to load and how to sample from it."""

    model: str = field(default="outputs/quickstart", metadata={"help": "A saved model folder (or Hub id if cached)."})
    prompt: str = field(default="", metadata={"help": "Text to continue."})
    max_new_tokens: int = field(default=200, metadata={"help": "Tokens to generate."})
    temperature: Optional[float] = field(
        default=None, metadata={"help": "Sampling temperature (default: the model's)."}
    )
    top_k: Optional[int] = field(
        default=None, metadata={"help": "Keep the k most likely tokens (default: the model's)."}
    )
    top_p: Optional[float] = field(default=None, metadata={"help": "Nucleus sampling mass (default: the model's)."})
    repetition_penalty: Optional[float] = field(default=None, metadata={"help": "Penalty > 1 discourages repeats."})
    num_samples: int = field(default=1, metadata={"help": "How many samples to print."})
    seed: int = field(default=0, metadata={"help": "Random seed for sampling."})
    device: Optional[str] = field(default=None, metadata={"help": "cpu, cuda, mps (default: best available)."})
    compile: bool = field(default=False, metadata={"help": COMPILE_HELP})


@dataclass
class EvalArguments:
    """Evaluate a saved model folder (the held-out text comes from the dataset options)."""

    model: str = field(default="outputs/quickstart", metadata={"help": "A saved model folder."})
    tasks: str = field(default="auto", metadata={"help": "Comma-separated: bpb, builtin_cloze, sft, builtin_arithmetic "
                                                           "(pass@1/pass@k), or lm_eval task "
                                                           "names (hellaswag, arc_easy, ...). auto: what fits the "
                                                           "model (bpb, builtin_cloze, and sft for chat models)."})
    batch_size: int = field(default=16, metadata={"help": "Sequences per forward pass."})
    limit: Optional[int] = field(default=None, metadata={"help": "lm_eval: at most this many examples per task."})
    pass_k: int = field(default=1, metadata={"help": "builtin_arithmetic: also report pass@k (k answers sampled per "
                                                     "problem) when k > 1; pass@1 is the greedy answer."})
    pass_k_temperature: float = field(default=1.0, metadata={"help": "Sampling temperature for pass@k."})
    include_path: Optional[str] = field(default=None, metadata={"help": "lm_eval: a folder of extra task YAMLs."})
    output: Optional[str] = field(default=None, metadata={"help": "Write the results as JSON here (default: "
                                                                  "MODEL/eval_results.json)."})
    device: Optional[str] = field(default=None, metadata={"help": "cpu, cuda, mps (default: best available)."})
    seed: int = field(default=0, metadata={"help": "Random seed (and the built-in corpus's seed when the folder does "
                                                    "not record its run's)."})


@dataclass
class ReportArguments:
    """Compare runs side by side."""

    runs: str = field(default="outputs", metadata={"help": "A folder of run folders (or one run folder)."})
    output: Optional[str] = field(default=None, metadata={"help": "Markdown file to write (default: RUNS/report.md "
                                                                  "for several runs)."})


@dataclass
class ServeArguments:
    """Serve a saved model: an OpenAI-compatible API and a web chat page."""

    model: str = field(default="outputs/sft_quickstart", metadata={"help": "A saved model folder."})
    host: str = field(default="127.0.0.1", metadata={"help": "Address to bind (loopback by default)."})
    port: int = field(default=8000, metadata={"help": "Port."})
    api_key: Optional[str] = field(default=None, metadata={"help": "Require 'Authorization: Bearer KEY' on /v1."})
    max_queue: int = field(default=8, metadata={"help": "Requests that may wait for the model; more get 503."})
    max_tokens_cap: int = field(default=2048, metadata={"help": "Largest max_tokens a request may ask for."})
    device: Optional[str] = field(default=None, metadata={"help": "cpu, cuda, mps (default: best available)."})
    compile: bool = field(default=False, metadata={"help": COMPILE_HELP + " Compiled at start-up."})


@dataclass
class ExportArguments:
    """Export a saved model to GGUF for llama.cpp, Ollama and LM Studio."""

    model: str = field(default="outputs/quickstart",
                       metadata={"help": "A saved model folder (merged, not an adapter)."})
    format: str = field(default="gguf", metadata={"help": "Output format: gguf."})
    outtype: str = field(default="f16", metadata={"help": "Weights: f32, f16 or q8_0."})
    output: Optional[str] = field(default=None,
                                  metadata={"help": "The .gguf file (default: MODEL/<name>-<outtype>.gguf)."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing output file."})
