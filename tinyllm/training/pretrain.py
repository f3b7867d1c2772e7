"""`tinyllm pretrain`: corpus -> (tokenizer) -> packed blocks -> GPT-2/Llama on transformers.Trainer -> Hub folder.

From scratch (a preset) or continued from any causal LM folder (`--model_name_or_path`: its tokenizer and config
are kept, documents are packed with its eos, and bits per byte are reported before and after).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from tinyllm.config import DataArguments, ModelArguments, TokenizerArguments
from tinyllm.errors import ConfigError

__all__ = ["run_pretraining", "PretrainRun", "default_prompts", "entropy_floor", "resolve_block_size"]

logger = logging.getLogger(__name__)


@dataclass
class PretrainRun:
    """Everything one pretraining run derives before and during training, passed between its stages."""

    model_args: ModelArguments
    data: DataArguments
    args: object  # PretrainingArguments
    tokenizer: object = None
    tok_report: dict | None = None
    lm: object = None  # tinyllm.data.packing.LMData
    plan: dict = field(default_factory=dict)
    floor: float | None = None  # built-in corpus entropy, bits per char
    prompts: list[str] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    seconds: float = 0.0
    samples: list[str] = field(default_factory=list)
    doctor: list[str] = field(default_factory=list)


def run_pretraining(model_args: ModelArguments, data: DataArguments, tok_args: TokenizerArguments, args) -> Path:
    """The whole pretraining stage, as a list of steps. Returns the output folder."""
    from tinyllm.data.packing import build_lm_datasets
    from tinyllm.model_io import prepare_run

    if args.max_steps <= 0 and data.streaming:
        raise ConfigError("streaming needs --max_steps > 0 (the corpus length is unknown)")
    if model_args.model_name_or_path:  # continued pretraining: a local folder, or a Hub id downloaded once
        from tinyllm.model_io import resolve_model_path

        model_args.model_name_or_path = resolve_model_path(model_args.model_name_or_path)
    run = PretrainRun(model_args, data, args)
    setup = prepare_run(args)
    run.tokenizer, run.tok_report = _prepare_tokenizer(model_args, data, tok_args, args)
    _check_tokenizer(run.tokenizer, from_scratch=not model_args.model_name_or_path)
    resolve_block_size(model_args, data)
    with args.main_process_first(desc="tokenizing and packing"):
        run.lm = build_lm_datasets(data, run.tokenizer, args.seed)
    model = _load_model(model_args, run.tokenizer, data, args)
    _log_plan(run, model, setup.device_line)
    _prepare_output_dir(args, setup.resume)
    if setup.resume:
        from tinyllm.model_io import check_checkpoint_matches

        check_checkpoint_matches(setup.resume, model)
    trainer, sampler, doctor = _train(run, model, setup.resume)
    if trainer.is_world_process_zero():
        last = sampler.history[-1] if sampler.history else None
        run.samples = last[1] if last and last[0] == trainer.state.global_step else sampler.samples(trainer.model)
        run.doctor = doctor.messages
        _save_final(trainer, run)
        _announce(run, setup)
    trainer.accelerator.wait_for_everyone()
    return Path(args.output_dir)


def resolve_block_size(model_args: ModelArguments, data: DataArguments) -> int:
    """block_size defaults to the preset's context, or to the loaded model's; it may not exceed the model's."""
    from tinyllm.modeling import PRESETS

    limit = None
    if model_args.model_name_or_path:
        cfg_path = Path(model_args.model_name_or_path) / "config.json"
        if cfg_path.is_file():
            cfg = json.loads(cfg_path.read_text())
            limit = cfg.get("max_position_embeddings") or cfg.get("n_positions")
    if data.block_size is None:
        data.block_size = min(limit, 1024) if limit else PRESETS[model_args.preset].block_size
    if limit and data.block_size > limit:
        raise ConfigError(f"block_size {data.block_size} exceeds the model's context of {limit}; lower --block_size")
    return data.block_size


def default_prompts(data: DataArguments, sample_texts: list[str]) -> list[str]:
    if data.dataset_name == "builtin":
        langs = data.builtin_languages
        return [p for lang, p in (("en", "Once upon a time"), ("zh", "从前")) if lang in langs]
    prompts = []
    for t in sample_texts[:2]:
        t = t.strip()
        if t:
            prompts.append(t[: 12 if any(ord(c) > 0x2e80 for c in t[:12]) else 24])
    return prompts or ["The"]


def entropy_floor(data: DataArguments, seed: int) -> float | None:
    """Bits per character of the built-in corpus's validation documents under the true generator (the same
    held-out documents as training uses: corpora.split_documents decides)."""
    if data.dataset_name != "builtin" or data.validation_split_percentage <= 0:
        return None
    from tinyllm.data.builtin import corpus_entropy, generate_corpus
    from tinyllm.data.corpora import split_documents

    docs = generate_corpus(data.builtin_num_documents, seed, data.builtin_languages)
    if data.max_documents:
        docs = docs[: data.max_documents]
    return corpus_entropy(split_documents(docs, data.validation_split_percentage)[1])["bits_per_char"]


# ---------------------------------------------------------------- steps

def _prepare_tokenizer(model_args, data, tok_args, args):
    from tinyllm.model_io import load_tokenizer

    if tok_args.tokenizer_name_or_path:
        return load_tokenizer(tok_args.tokenizer_name_or_path), None
    if model_args.model_name_or_path:
        return load_tokenizer(model_args.model_name_or_path), None
    from tinyllm.data.tokenizer_stage import build_tokenizer

    logger.info("no tokenizer_name_or_path: training a %s tokenizer (vocab %d) on %s first",
                tok_args.tokenizer_type, tok_args.vocab_size, data.dataset_name)
    with args.main_process_first(desc="tokenizer training"):
        return build_tokenizer(data, tok_args, args.seed)


def _check_tokenizer(tokenizer, from_scratch: bool) -> None:
    if tokenizer.eos_token_id is None:
        raise ConfigError("the tokenizer has no eos token, so documents cannot be separated when packing; set "
                          "eos_token in its tokenizer_config.json or train one with tinyllm")
    if not from_scratch:
        return  # a model someone else trained keeps its own tokenizer (GPT-2 has no pad token and bos == eos)
    if not tokenizer.bos_token or not tokenizer.pad_token:
        raise ConfigError("the tokenizer needs bos, eos and pad tokens; train it with tinyllm")
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ConfigError("the tokenizer's pad token equals its eos token, so padding masks would hide the end of "
                          "texts; train the tokenizer with tinyllm (it reserves a separate <|pad|>)")


def _load_model(model_args, tokenizer, data, args):
    import torch
    from transformers import AutoModelForCausalLM

    from tinyllm.modeling import build_config, check_vocab

    if model_args.model_name_or_path:
        from tinyllm.model_io import load_model_folder

        model, _ = load_model_folder(model_args.model_name_or_path, tokenizer=False)
        check_vocab(tokenizer, model.config, model_args.model_name_or_path)
        return model
    config = build_config(model_args, len(tokenizer), data.block_size, tokenizer.bos_token_id,
                          tokenizer.eos_token_id, tokenizer.pad_token_id)
    check_vocab(tokenizer, config)
    torch.manual_seed(args.seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")


def _log_plan(run: PretrainRun, model, device_line: str) -> None:
    from tinyllm.training.plan import estimate

    n_params = model.num_parameters()
    run.plan = estimate(model.config, run.data, run.args, n_params, model.num_parameters(exclude_embeddings=True),
                        run.lm.train_tokens, run.args.world_size)
    run.metrics["parameters"] = n_params
    run.floor = entropy_floor(run.data, run.args.seed)
    logger.info(device_line)
    logger.info("plan:\n%s", run.plan["text"])
    if run.floor is not None:
        logger.info("built-in corpus entropy floor: %.4f bits/char (no model can beat it)", run.floor)


def _prepare_output_dir(args, resume) -> None:
    out = Path(args.output_dir)
    if args.overwrite_output_dir and resume is None and out.is_dir() and args.process_index == 0:
        shutil.rmtree(out)
    if args.process_index == 0:
        out.mkdir(parents=True, exist_ok=True)


def _train(run: PretrainRun, model, resume):
    from transformers import default_data_collator

    from tinyllm.device import compile_loader_settings
    from tinyllm.model_io import final_evaluation, train_with_recovery
    from tinyllm.training.callbacks import DoctorCallback, InterruptCallback, SampleCallback, TinyTrainer

    args, lm = run.args, run.lm
    run.prompts = [p for p in (args.sample_prompts or "").split("|") if p] or default_prompts(run.data,
                                                                                              lm.eval_texts_sample)
    sampler = SampleCallback(run.tokenizer, run.prompts, args.sample_max_new_tokens, args.seed)
    doctor, interrupt = DoctorCallback(args.learning_rate), InterruptCallback()
    if lm.eval is None:
        args.eval_strategy = "no"
    for key, value in compile_loader_settings(args, None if run.data.streaming else len(lm.train)).items():
        setattr(args, key, value)

    def make_trainer(m):
        return TinyTrainer(
            model=m, args=args, train_dataset=lm.train, eval_dataset=lm.eval, data_collator=default_data_collator,
            processing_class=run.tokenizer, callbacks=[sampler, doctor, interrupt],
            tokens_per_step=run.plan["tokens_per_step"], eval_tokens_per_byte=lm.eval_tokens_per_byte,
            eval_tokens_per_char=lm.eval_tokens_per_char, entropy_floor=run.floor,
            optimizer_cls_and_kwargs=args.optimizer_factory(),
        )

    if run.model_args.model_name_or_path and lm.eval is not None and not resume:
        from tinyllm.evaluation.eval_stage import mean_token_loss

        loss = mean_token_loss(model, lm.eval, args.per_device_eval_batch_size)
        run.metrics["before_eval_loss"] = round(loss, 4)
        if lm.eval_tokens_per_byte:
            run.metrics["before_eval_bits_per_byte"] = round(loss / math.log(2) * lm.eval_tokens_per_byte, 4)
        logger.info("before continued pretraining: validation loss %.4f, %s bits per byte", loss,
                    run.metrics.get("before_eval_bits_per_byte"))
    start = time.time()
    trainer, result = train_with_recovery(make_trainer, model, args, resume, interrupt,
                                          lambda: _load_model(run.model_args, run.tokenizer, run.data, args))
    run.seconds = time.time() - start
    run.metrics.update(result.metrics)
    if lm.eval is not None:
        run.metrics.update(final_evaluation(trainer))
    run.metrics["train_tokens"] = lm.train_tokens
    if run.floor is not None:
        run.metrics["entropy_floor_bits_per_char"] = round(run.floor, 4)
    return trainer, sampler, doctor


def _summary(trainer, run: PretrainRun) -> dict:
    from tinyllm.data.corpora import describe_source
    from tinyllm.hub import hardware_summary

    cfg, m = trainer.model.config, run.metrics
    summary = {
        "architecture": type(trainer.model).__name__,
        "preset": "continued from " + str(run.model_args.model_name_or_path) if run.model_args.model_name_or_path
        else run.model_args.preset,
        "parameters": m["parameters"],
        "layers / heads / width": f"{cfg.num_hidden_layers} / {cfg.num_attention_heads} / {cfg.hidden_size}",
        "context (block_size)": run.data.block_size, "vocab size": cfg.vocab_size,
        "corpus": describe_source(run.data.dataset_name), "training tokens (corpus)": m.get("train_tokens"),
        "tokens seen": run.plan["tokens_per_step"] * trainer.state.global_step, "steps": trainer.state.global_step,
        "final train loss": m.get("train_loss"), "final validation loss": m.get("eval_loss"),
        "validation perplexity": m.get("eval_perplexity"), "validation bits per byte": m.get("eval_bits_per_byte"),
        "hardware": hardware_summary(), "training time (s)": round(run.seconds, 1),
    }
    if "before_eval_bits_per_byte" in m:
        summary["validation bits per byte before"] = m["before_eval_bits_per_byte"]
    if run.floor is not None:
        summary["validation bits per char"] = m.get("eval_bits_per_char")
        summary["corpus entropy floor (bits per char)"] = round(run.floor, 4)
    if run.doctor:
        summary["training doctor"] = " / ".join(run.doctor)
    return summary


def _save_final(trainer, run: PretrainRun) -> None:
    from tinyllm.data.corpora import describe_source
    from tinyllm.hub import CardInfo, make_generation_config, plot_loss, save_model_folder, write_model_card
    from tinyllm.io import staged_into

    args, out = run.args, Path(run.args.output_dir)
    model = trainer.model
    with staged_into(out) as staging:
        save_model_folder(model, run.tokenizer, make_generation_config(run.tokenizer, args), staging)
        if run.tok_report:
            (staging / "tokenizer_report.json").write_text(json.dumps(run.tok_report, indent=2, ensure_ascii=False)
                                                           + "\n")
        floor_nats = None
        if run.floor is not None and run.lm.eval_tokens_per_char:
            floor_nats = run.floor * math.log(2) / run.lm.eval_tokens_per_char
        if args.plot_loss:
            plot_loss(trainer.state.log_history, staging / "loss_curve.png", floor_nats,
                      f"{model.config.model_type} {run.model_args.preset} on {run.data.dataset_name}")
        (staging / "samples.md").write_text("# Samples\n\n" + "\n\n".join(f"```\n{s}\n```" for s in run.samples)
                                            + "\n", encoding="utf-8")
        summary = _summary(trainer, run)
        card = CardInfo(
            name=args.hub_model_id or out.name, license=args.license, summary=summary, datasets=[run.data.dataset_name],
            title=f"tinyllm {run.model_args.preset} ({model.config.model_type}) on {run.data.dataset_name}",
            description=f"A {run.metrics['parameters'] / 1e6:.2f}M-parameter language model trained on "
                        f"{describe_source(run.data.dataset_name)}.",
            usage_prompt=run.prompts[0], base_model=run.model_args.model_name_or_path,
            eval_results=_card_results(run))
        write_model_card(staging, card)
        from tinyllm.evaluation.report import write_run_report

        write_run_report(staging, out, summary=summary, metrics=run.metrics, tok_report=run.tok_report,
                         samples=run.samples, log_history=trainer.state.log_history,
                         tokens_per_step=run.plan["tokens_per_step"], data=dataclasses.asdict(run.data),
                         seed=args.seed)
    trainer.save_metrics("all", {k: v for k, v in run.metrics.items() if v is not None})
    trainer.save_state()


def _card_results(run: PretrainRun) -> list[dict]:
    m, name = run.metrics, run.data.dataset_name
    out = []
    if m.get("eval_bits_per_byte") is not None:
        out.append({"dataset": name, "metric": "bits_per_byte", "metric_name": "validation bits per byte",
                    "task_name": "language modeling", "value": m["eval_bits_per_byte"]})
    if m.get("eval_perplexity") is not None:
        out.append({"dataset": name, "metric": "perplexity", "metric_name": "validation perplexity",
                    "task_name": "language modeling", "value": m["eval_perplexity"]})
    return out


def _announce(run: PretrainRun, setup) -> None:
    out = Path(run.args.output_dir)
    print("\n".join(["", "Samples from the final model:"] + [f"  {s!r}" for s in run.samples]))
    print(f"\nModel saved to {out.resolve()}\n"
          f"  generate:  tinyllm generate --model {out} --prompt \"{run.prompts[0]}\"\n"
          f"  evaluate:  tinyllm eval --model {out}\n"
          f"  in Python: pipeline('text-generation', model='{out}')")
    if setup.push:
        from tinyllm.hub import push_folder

        print(f"Pushed to {push_folder(out, run.args.hub_model_id, run.args.hub_private_repo, setup.hub_token)}")
