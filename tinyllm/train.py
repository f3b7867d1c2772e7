"""Pretraining on transformers.Trainer: corpus -> (tokenizer) -> packed blocks -> GPT-2/Llama -> Hub folder."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

from .config import DataArguments, ModelArguments, TokenizerArguments
from .errors import ConfigError, TinyLLMError

__all__ = ["Interrupted", "train_with_recovery", "check_checkpoint_matches", "run_pretraining", "resolve_resume", "load_tokenizer", "find_last_checkpoint"]

logger = logging.getLogger("tinyllm.train")


class Interrupted(TinyLLMError):
    """Training was stopped by Ctrl+C/SIGTERM after saving a checkpoint."""

    exit_code = 130


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    p = Path(path)
    if not p.is_dir():
        raise ConfigError(f"tokenizer folder not found: {path}; train one with tokenizer_training/train_tokenizer.py "
                          f"or leave tokenizer_name_or_path empty to train one now")
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except Exception as exc:  # many error types for broken files
        raise ConfigError(f"cannot load a tokenizer from {path} ({str(exc).splitlines()[0][:150] if str(exc) else type(exc).__name__}); "
                          f"it needs tokenizer.json and tokenizer_config.json") from None


def find_last_checkpoint(output_dir: str) -> str | None:
    """Newest *complete* checkpoint: a folder killed mid-write lacks trainer_state.json (written last) or weights."""
    root = Path(output_dir)
    if not root.is_dir():
        return None
    cands = []
    for d in root.glob("checkpoint-*"):
        try:
            step = int(d.name.split("-")[-1])
        except ValueError:
            continue
        if (d / "trainer_state.json").is_file() and any(d.glob("*.safetensors")) and (d / "optimizer.pt").is_file():
            try:
                json.loads((d / "trainer_state.json").read_text())
            except (json.JSONDecodeError, OSError):
                continue
            cands.append((step, d))
    return str(max(cands)[1]) if cands else None


def resolve_resume(value, output_dir: str) -> str | None:
    if value in (None, "", False, "false", "False"):
        return None
    if value in (True, "true", "True"):
        last = find_last_checkpoint(output_dir)
        if last is None:
            raise ConfigError(f"--resume_from_checkpoint true: no complete checkpoint in {output_dir}; start without "
                              f"it, or give a checkpoint folder path")
        return last
    if not Path(value).is_dir():
        raise ConfigError(f"checkpoint not found: {value}; give an existing checkpoint-N folder or 'true' for the newest")
    return str(value)


def _default_prompts(data: DataArguments, sample_texts: list[str]) -> list[str]:
    if data.dataset_name == "builtin":
        langs = data.builtin_languages
        return [p for lang, p in (("en", "Once upon a time"), ("zh", "从前")) if lang in langs]
    prompts = []
    for t in sample_texts[:2]:
        t = t.strip()
        if t:
            prompts.append(t[: 12 if any(ord(c) > 0x2e80 for c in t[:12]) else 24])
    return prompts or ["The"]


def _entropy_floor(data: DataArguments, seed: int) -> float | None:
    """Bits per character of the built-in corpus's validation documents under the true generator."""
    if data.dataset_name != "builtin" or data.validation_split_percentage <= 0:
        return None
    from .builtin import corpus_entropy, generate_corpus

    docs = generate_corpus(data.builtin_num_documents, seed, data.builtin_languages)
    if data.max_documents:
        docs = docs[: data.max_documents]
    n_val = max(1, round(len(docs) * data.validation_split_percentage / 100))
    return corpus_entropy(docs[-n_val:])["bits_per_char"]


def _setup_logging(args) -> None:
    import datasets
    import transformers

    level = logging.INFO if args.process_index == 0 else logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=level,
                        force=True)
    for noisy in ("accelerate", "matplotlib", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    transformers.utils.logging.set_verbosity_warning()
    datasets.utils.logging.set_verbosity_warning()


def _prepare_tokenizer(model_args, data, tok_args, args):
    if tok_args.tokenizer_name_or_path:
        return load_tokenizer(tok_args.tokenizer_name_or_path), None
    if model_args.model_name_or_path:
        return load_tokenizer(model_args.model_name_or_path), None
    from .tokenizer_stage import build_tokenizer

    logger.info("no tokenizer_name_or_path: training a %s tokenizer (vocab %d) on %s first",
                tok_args.tokenizer_type, tok_args.vocab_size, data.dataset_name)
    with args.main_process_first(desc="tokenizer training"):
        return build_tokenizer(data, tok_args, args.seed)


def _load_model(model_args, tokenizer, data, args):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from .modeling import build_config, check_vocab

    if model_args.model_name_or_path:
        path = Path(model_args.model_name_or_path)
        if not (path / "config.json").is_file():
            raise ConfigError(f"model folder {path} has no config.json; give a folder saved by tinyllm or transformers")
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
        check_vocab(tokenizer, config, str(path))
        try:
            model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, trust_remote_code=False,
                                                         dtype=torch.float32)
        except Exception as exc:
            raise ConfigError(f"cannot load the model in {path}: {str(exc).splitlines()[0][:200]}") from None
        return model
    config = build_config(model_args, len(tokenizer), data.block_size, tokenizer.bos_token_id,
                          tokenizer.eos_token_id, tokenizer.pad_token_id)
    check_vocab(tokenizer, config)
    torch.manual_seed(args.seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")


def prepare_run(args) -> tuple[str | None, bool, str]:
    """What every training stage does first: resolve the checkpoint to resume, refuse to clobber outputs, keep
    the Hub token out of saved arguments and logs, apply the device/precision policy, and seed.
    Returns (checkpoint to resume or None, whether to push at the end, the device line to log)."""
    from transformers import set_seed

    from .device import apply_precision_policy
    from .io import check_output_dir

    resume = resolve_resume(args.resume_from_checkpoint, args.output_dir)
    check_output_dir(args.output_dir, args.overwrite_output_dir, resume=resume is not None)
    if args.hub_token:  # keep secrets out of saved arguments (training_args.bin) and logs
        os.environ.setdefault("HF_TOKEN", args.hub_token)
        args.hub_token = None
    push, args.push_to_hub = args.push_to_hub, False  # we push the final folder ourselves, once
    device_line = apply_precision_policy(args)
    if device_line.startswith("device: cpu"):
        args.dataloader_pin_memory = False  # pinning needs an accelerator; avoids a warning per epoch
    set_seed(args.seed)
    return resume, push, device_line


def run_pretraining(model_args: ModelArguments, data: DataArguments, tok_args: TokenizerArguments, args) -> Path:
    """The whole pretraining stage. Returns the output folder."""
    _setup_logging(args)
    out = Path(args.output_dir)
    if args.max_steps <= 0 and data.streaming:
        raise ConfigError("streaming needs --max_steps > 0 (the corpus length is unknown)")
    resume, push, device_line = prepare_run(args)
    tokenizer, tok_report = _prepare_tokenizer(model_args, data, tok_args, args)
    if not tokenizer.eos_token or not tokenizer.bos_token or not tokenizer.pad_token:
        raise ConfigError("the tokenizer needs bos, eos and pad tokens; train it with tinyllm")
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ConfigError("the tokenizer's pad token equals its eos token, so padding masks would hide the end of "
                          "texts; train the tokenizer with tinyllm (it reserves a separate <|pad|>)")
    from .data import build_lm_datasets

    with args.main_process_first(desc="tokenizing and packing"):
        lm = build_lm_datasets(data, tokenizer, args.seed)
    model = _load_model(model_args, tokenizer, data, args)
    max_pos = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if max_pos and data.block_size > max_pos:
        raise ConfigError(f"block_size {data.block_size} exceeds the model's context of {max_pos}; lower --block_size")

    from .modeling import count_parameters

    n_params = count_parameters(model)
    n_params_no_emb = count_parameters(model, exclude_embeddings=True)
    world = args.world_size
    from .plan import estimate

    plan = estimate(model_args, data, args, n_params, n_params_no_emb, lm.train_tokens, model.config.vocab_size, world)
    floor = _entropy_floor(data, args.seed)
    logger.info(device_line)
    logger.info("plan:\n%s", plan["text"])
    if floor is not None:
        logger.info("built-in corpus entropy floor: %.4f bits/char (no model can beat it)", floor)

    if args.overwrite_output_dir and resume is None and out.is_dir():
        if args.process_index == 0:
            shutil.rmtree(out)
    if args.process_index == 0:
        out.mkdir(parents=True, exist_ok=True)

    from transformers import default_data_collator

    if resume:
        check_checkpoint_matches(resume, model)
    from .callbacks import DoctorCallback, InterruptCallback, SampleCallback, TinyTrainer

    prompts = [p for p in (args.sample_prompts or "").split("|") if p] or _default_prompts(data, lm.eval_texts_sample)
    sampler = SampleCallback(tokenizer, prompts, args.sample_max_new_tokens, args.seed)
    doctor = DoctorCallback(args.learning_rate)
    interrupt = InterruptCallback()
    if lm.eval is None:
        args.eval_strategy = "no"
    from .device import compile_friendly_loader

    compile_friendly_loader(args, None if data.streaming else len(lm.train))

    def make_trainer(model):
        return TinyTrainer(
            model=model, args=args, train_dataset=lm.train, eval_dataset=lm.eval, data_collator=default_data_collator,
            processing_class=tokenizer, callbacks=[sampler, doctor, interrupt],
            tokens_per_step=plan["tokens_per_step"], eval_tokens_per_byte=lm.eval_tokens_per_byte,
            eval_tokens_per_char=lm.eval_tokens_per_char, entropy_floor=floor,
        )

    start = time.time()
    trainer, result = train_with_recovery(make_trainer, model, args, resume, interrupt,
                                          lambda: _load_model(model_args, tokenizer, data, args))
    train_seconds = time.time() - start
    metrics = dict(result.metrics)
    if lm.eval is not None:
        metrics.update(trainer.evaluate())
    metrics["train_tokens"] = lm.train_tokens
    metrics["parameters"] = n_params
    if floor is not None:
        metrics["entropy_floor_bits_per_char"] = round(floor, 4)

    if trainer.is_world_process_zero():
        last = sampler.history[-1] if sampler.history else None
        final_samples = last[1] if last and last[0] == trainer.state.global_step else sampler.samples(trainer.model)
        _save_final(trainer, tokenizer, tok_report, args, model_args, data, metrics, plan, train_seconds, floor,
                    final_samples, doctor.messages, lm, prompts)
        print("\n".join(["", "Samples from the final model:"] + [f"  {s!r}" for s in final_samples]))
        print(f"\nModel saved to {out.resolve()}\n"
              f"  generate:  tinyllm generate --model {out} --prompt \"{prompts[0]}\"\n"
              f"  in Python: pipeline('text-generation', model='{out}')")
        if push:
            from .hub import push_folder

            url = push_folder(out, args.hub_model_id, args.hub_private_repo)
            print(f"Pushed to {url}")
    trainer.accelerator.wait_for_everyone()
    return out


def check_checkpoint_matches(checkpoint: str, model) -> None:
    """Refuse to resume from a checkpoint of another architecture or shape (it would fail deep inside torch)."""
    cfg_path = Path(checkpoint) / "config.json"
    if not cfg_path.is_file():
        return
    ckpt = json.loads(cfg_path.read_text())
    ours = model.config.to_dict()
    for key in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size", "n_embd", "n_layer"):
        if key in ckpt and key in ours and ckpt[key] != ours[key]:
            raise ConfigError(f"checkpoint {checkpoint} has {key}={ckpt[key]} but this run's model has {ours[key]}; "
                              f"resume with the config that produced it, or start a new --output_dir")


def _checkpoint_step(checkpoint: str) -> int:
    try:
        return int(json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"])
    except (OSError, ValueError, KeyError):
        return -1


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def train_with_recovery(make_trainer, model, args, resume, interrupt, reload_model, max_halvings: int = 4):
    """trainer.train() with the failure modes users hit, turned into actions and plain words:
    out-of-memory halves the micro-batch and doubles gradient accumulation (same global batch) and retries;
    a NaN/inf loss stops without saving a final model; Ctrl+C/SIGTERM saves a checkpoint and raises Interrupted
    with the resume command."""
    from .callbacks import NonFiniteLossError

    if resume and args.max_steps > 0 and _checkpoint_step(resume) >= args.max_steps:
        # transformers would take one extra optimizer step when resuming from the final checkpoint (a kill
        # between the last checkpoint and the final save); there is nothing left to train, so just load it.
        from transformers import TrainerState
        from transformers.trainer_utils import TrainOutput

        trainer = make_trainer(model)
        trainer._load_from_checkpoint(resume)
        trainer.state = TrainerState.load_from_json(str(Path(resume) / "trainer_state.json"))
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        logger.info("%s already reached max_steps=%d: nothing left to train", resume, args.max_steps)
        return trainer, TrainOutput(trainer.state.global_step, losses[-1] if losses else float("nan"),
                                    {"train_runtime": 0.0, "train_loss": losses[-1] if losses else float("nan")})
    interrupt.install()
    try:
        for attempt in range(max_halvings + 1):
            trainer = make_trainer(model)
            try:
                result = trainer.train(resume_from_checkpoint=resume)
                if interrupt.interrupted:
                    raise Interrupted(f"{interrupt.interrupted}: stopped at step {trainer.state.global_step}; "
                                      f"checkpoint saved to {find_last_checkpoint(args.output_dir)}. Resume with the "
                                      f"same command plus --resume_from_checkpoint true")
                return trainer, result
            except NonFiniteLossError as exc:
                raise TinyLLMError(str(exc)) from None
            except (RuntimeError, MemoryError) as exc:
                if not _is_oom(exc):
                    raise
                batch = args.per_device_train_batch_size
                if attempt == max_halvings or batch == 1:
                    raise TinyLLMError(f"out of memory even at per_device_train_batch_size={batch}; lower "
                                       f"--block_size, use a smaller --preset, or --precision bf16") from None
                args.per_device_train_batch_size = batch // 2
                args.gradient_accumulation_steps *= 2
                logger.warning("out of memory at batch %d: retrying with batch %d x accumulation %d (same global "
                               "batch). Set these in your config to skip this search next time.", batch,
                               args.per_device_train_batch_size, args.gradient_accumulation_steps)
                del trainer
                import gc

                import torch

                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                model = reload_model()
        raise AssertionError("unreachable")
    finally:
        interrupt.uninstall()


def _save_final(trainer, tokenizer, tok_report, args, model_args, data, metrics, plan, seconds, floor, samples,
                doctor_messages, lm, prompts) -> None:
    from .corpora import describe_source
    from .hub import hardware_summary, make_generation_config, plot_loss, save_model_folder, write_model_card
    from .io import staged_into

    out = Path(args.output_dir)
    with staged_into(out) as staging:
        model = trainer.model
        save_model_folder(model, tokenizer, make_generation_config(tokenizer, args), staging)
        if tok_report:
            (staging / "tokenizer_report.json").write_text(json.dumps(tok_report, indent=2, ensure_ascii=False) + "\n")
        floor_nats = None
        if floor is not None and lm.eval_tokens_per_char:
            floor_nats = floor * math.log(2) / lm.eval_tokens_per_char
        if args.plot_loss:
            plot_loss(trainer.state.log_history, staging / "loss_curve.png", floor_nats,
                      f"{model.config.model_type} {model_args.preset} on {data.dataset_name}")
        (staging / "samples.md").write_text("# Samples\n\n" + "\n\n".join(f"```\n{s}\n```" for s in samples) + "\n",
                                            encoding="utf-8")
        summary = {
            "architecture": type(model).__name__, "preset": model_args.preset, "parameters": metrics["parameters"],
            "layers / heads / width": f"{model.config.num_hidden_layers} / {model.config.num_attention_heads} / "
                                      f"{model.config.hidden_size}",
            "context (block_size)": data.block_size, "vocab size": model.config.vocab_size,
            "corpus": describe_source(data.dataset_name), "training tokens (corpus)": metrics.get("train_tokens"),
            "tokens seen": plan["tokens_per_step"] * trainer.state.global_step, "steps": trainer.state.global_step,
            "final train loss": metrics.get("train_loss"), "final validation loss": metrics.get("eval_loss"),
            "validation perplexity": metrics.get("eval_perplexity"),
            "validation bits per byte": metrics.get("eval_bits_per_byte"),
            "hardware": hardware_summary(), "training time (s)": round(seconds, 1),
        }
        if floor is not None:
            summary["validation bits per char"] = metrics.get("eval_bits_per_char")
            summary["corpus entropy floor (bits per char)"] = round(floor, 4)
        if doctor_messages:
            summary["training doctor"] = " / ".join(doctor_messages)
        write_model_card(staging, name=args.hub_model_id or out.name, title=f"tinyllm {model_args.preset} ({model.config.model_type}) on {data.dataset_name}",
                         datasets=[data.dataset_name], license=args.license, summary=summary,
                         description=f"A {metrics['parameters'] / 1e6:.2f}M-parameter language model trained from "
                                     f"scratch on {describe_source(data.dataset_name)}.",
                         usage_prompt=prompts[0])
    trainer.save_metrics("all", {k: v for k, v in metrics.items() if v is not None})
    trainer.save_state()
