"""RL with verifiable rewards (GRPO) on a chat model through TRL's GRPOTrainer, LoRA by default.

    tinyllm sft  --dataset_name builtin_arithmetic --output_dir outputs/sft_arithmetic      # SFT first
    tinyllm grpo --model_name_or_path outputs/sft_arithmetic --output_dir outputs/grpo_arithmetic

For each prompt GRPO samples a group of answers, scores them with the reward functions and pushes the model
toward the answers that scored above their group's mean. A group whose answers all score the same carries no
signal: its share is logged, and when every group of the first steps is like that the run says so (SFT first).
Prompts are tokenized with tinyllm's chat encoding (user text never becomes control tokens); TRL renders the
template itself otherwise. Output layout as SFT's: D/adapter/ and D/ (merged, plain transformers).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from transformers import TrainerCallback
from trl import GRPOTrainer

from tinyllm.config import DataArguments, LoraArguments
from tinyllm.data.prompt_data import PromptData, build_prompt_datasets
from tinyllm.errors import ConfigError
from tinyllm.evaluation.report import RunSummary
from tinyllm.evaluation.rewards import builtin_rewards, checked_reward, load_reward_function, pass_at_k
from tinyllm.hub import hardware_summary
from tinyllm.inference.chat import encode_chat
from tinyllm.post_training_config import GRPOArguments, PostTrainingModelArguments
from tinyllm.training.adapters import load_chat_model, lora_config
from tinyllm.training.callbacks import InterruptCallback
from tinyllm.training.posttrain import (
    TunedFolder,
    announce_folder,
    save_tuned_folder,
    trainable_counts,
    use_tinyllm_callbacks,
)
from tinyllm.training.recovery import prepare_run, train_with_recovery

if TYPE_CHECKING:
    from tinyllm.training.trl_arguments import GRPOTrainingArguments

__all__ = ["run_grpo", "ChatEncodedGRPOTrainer", "SignalCallback", "reward_functions"]

logger = logging.getLogger(__name__)
PASS_K = 8


class ChatEncodedGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose chat prompts go through tinyllm's chat encoding (tinyllm.inference.chat)."""

    def _tokenize_prompts(self, prompts: list):
        if prompts and isinstance(prompts[0], list):
            return [encode_chat(self.processing_class, p, add_generation_prompt=True) for p in prompts], None, {}
        return super()._tokenize_prompts(prompts)


class SignalCallback(TrainerCallback):
    """Logs the share of groups whose answers all got the same reward (no learning signal), and says once, in one
    line, when every group of the first `first_logs` logged steps was like that."""

    def __init__(self, first_logs: int = 2):
        self.first_logs = first_logs
        self.seen: list[float] = []
        self.warned = False

    def on_log(self, args, state, control, logs=None, **kwargs):
        share = (logs or {}).get("frac_reward_zero_std")
        if share is None:
            return
        self.seen.append(share)
        logger.info("step %d: %.0f%% of groups carry no signal (all answers scored alike); mean reward %.3f",
                    state.global_step, 100 * share, logs.get("reward", float("nan")))
        if not self.warned and len(self.seen) == self.first_logs and all(s >= 1.0 for s in self.seen):
            self.warned = True
            logger.warning("every group in the first steps got the same reward for all its answers, so GRPO has "
                           "nothing to learn from: the model never (or always) finds the answer. Run tinyllm sft "
                           "on the task first (e.g. tinyllm sft --dataset_name builtin_arithmetic), or raise "
                           "--temperature / --num_generations")


def reward_functions(opts: GRPOArguments, data: DataArguments, prompts: PromptData, tokenizer, model) -> list:
    """The user's `path.py:function` rewards (checked, wrapped to fail in one line), or the built-in task's."""
    if opts.reward_funcs:
        return [checked_reward(load_reward_function(spec.strip()), spec.strip().rpartition(":")[2])
                for spec in opts.reward_funcs.split(",") if spec.strip()]
    if "answer" not in prompts.train.column_names:
        raise ConfigError(f"{data.dataset_name} has no 'answer' column for the built-in exact-answer reward; give "
                          f"your own with --reward_funcs rewards.py:my_reward (columns found: "
                          f"{', '.join(prompts.train.column_names)})")
    return [checked_reward(f) for f in builtin_rewards(tokenizer, model)]


def _scores(model, tokenizer, prompts: PromptData, opts: GRPOArguments, seed: int) -> dict | None:
    if not prompts.eval_answers or not opts.answer_eval_examples:
        return None
    n = opts.answer_eval_examples
    return pass_at_k(model, tokenizer, prompts.eval_prompts[:n], prompts.eval_answers[:n], k=PASS_K,
                     max_new_tokens=opts.eval_max_new_tokens, seed=seed)


def run_grpo(model_args: PostTrainingModelArguments, data: DataArguments, opts: GRPOArguments, lora: LoraArguments,
             args: GRPOTrainingArguments) -> Path:
    """The GRPO stage, as a list of steps. Returns the output folder."""
    setup = prepare_run(args)
    model, tokenizer = load_chat_model(model_args.model_name_or_path, "grpo")
    prompts = build_prompt_datasets(data, opts, args.seed)
    rewards = reward_functions(opts, data, prompts, tokenizer, model)
    logger.info(setup.device_line)
    logger.info("GRPO prompts: %s; rewards: %s", json.dumps(prompts.stats), ", ".join(f.__name__ for f in rewards))
    args.remove_unused_columns = False  # the reward functions read the dataset's columns
    before = _scores(model, tokenizer, prompts, opts, args.seed)
    if before:
        logger.info("before GRPO: held-out pass@1 %.3f, pass@%d %.3f (%d problems)", before["pass@1"], PASS_K,
                    before[f"pass@{PASS_K}"], before["n"])
    interrupt = InterruptCallback()
    signal = SignalCallback()
    peft_config = lora_config(model, lora) if lora.use_lora else None

    def make_trainer(m):
        trainer = ChatEncodedGRPOTrainer(model=m, reward_funcs=rewards, args=args, train_dataset=prompts.train,
                                         processing_class=tokenizer, peft_config=peft_config)
        trainer.add_callback(signal)
        return use_tinyllm_callbacks(trainer, args.learning_rate, interrupt, doctor=False)

    start = time.time()
    trainer, result = train_with_recovery(make_trainer, model, args, setup.resume, interrupt,
                                          lambda: load_chat_model(model_args.model_name_or_path, "grpo")[0])
    seconds = time.time() - start
    after = _scores(trainer.model, tokenizer, prompts, opts, args.seed)
    logs = [h for h in trainer.state.log_history if "reward" in h]
    metrics = {**result.metrics, "grpo_runtime_s": round(seconds, 1), **prompts.stats,
               **trainable_counts(trainer.model), "reward_first": logs[0]["reward"] if logs else None,
               "reward_last": logs[-1]["reward"] if logs else None,
               "no_signal_share_mean": sum(signal.seen) / len(signal.seen) if signal.seen else None}
    if before and after:
        metrics.update({"pass@1_before": before["pass@1"], "pass@1": after["pass@1"],
                        f"pass@{PASS_K}_before": before[f"pass@{PASS_K}"], f"pass@{PASS_K}": after[f"pass@{PASS_K}"]})
    if trainer.is_world_process_zero():
        import torch

        sample = torch.tensor([encode_chat(tokenizer, prompts.train[0]["prompt"])[:64]], device=trainer.model.device)
        info = TunedFolder(
            stage="grpo", base_model=model_args.model_name_or_path, dataset=data.dataset_name,
            description=f"{model_args.model_name_or_path} after GRPO (TRL) with "
                        f"{'LoRA' if lora.use_lora else 'full fine-tuning'}: sampled answers scored by verifiable "
                        f"rewards ({', '.join(f.__name__ for f in rewards)}), merged into plain transformers weights.",
            usage_prompt=prompts.eval_prompts[0][-1]["content"] if prompts.eval_prompts else "Hello!",
            summary=_summary(trainer, model_args, data, lora, args, metrics, rewards, seconds), metrics=metrics,
            eval_results=[{"dataset": data.dataset_name, "metric": "pass@1", "task_name": "held-out problems",
                           "metric_name": "pass@1", "value": round(metrics["pass@1"], 4)}] if "pass@1" in metrics
            else [], examples=(after or {}).get("examples", []), plot_title="GRPO loss")
        out = save_tuned_folder(trainer, tokenizer, args, sample, lora.use_lora, info)
        _announce(before, after, metrics)
        announce_folder(out, args, setup)
    trainer.accelerator.wait_for_everyone()
    return Path(args.output_dir)


def _summary(trainer, model_args, data, lora: LoraArguments, args, metrics: dict, rewards, seconds) -> RunSummary:
    details = {"method": f"GRPO ({args.num_generations} answers per prompt, beta={args.beta}), "
                         + (f"LoRA r={lora.lora_r}, alpha={lora.lora_alpha}" if lora.use_lora else "full fine-tuning"),
               "trainable parameters": f"{metrics['trainable_parameters']:,} of {metrics['total_parameters']:,}",
               "prompts": data.dataset_name, "training prompts": metrics["train_prompts"],
               "rewards": ", ".join(f.__name__ for f in rewards), "hardware": hardware_summary()}
    if metrics.get("reward_first") is not None:
        details["mean reward first / last log"] = f"{metrics['reward_first']:.3f} / {metrics['reward_last']:.3f}"
    if metrics.get("no_signal_share_mean") is not None:
        details["groups without signal (mean)"] = f"{metrics['no_signal_share_mean']:.0%}"
    if "pass@1" in metrics:
        details["held-out pass@1 before / after"] = f"{metrics['pass@1_before']:.3f} / {metrics['pass@1']:.3f}"
        details[f"held-out pass@{PASS_K} before / after"] = \
            f"{metrics[f'pass@{PASS_K}_before']:.3f} / {metrics[f'pass@{PASS_K}']:.3f}"
    base = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    return RunSummary(stage="grpo", architecture=type(base).__name__, parameters=metrics["total_parameters"],
                      steps=trainer.state.global_step, training_seconds=round(seconds, 1),
                      base_model=model_args.model_name_or_path, final_train_loss=metrics.get("train_loss"),
                      details=details)


def _announce(before, after, metrics: dict) -> None:
    if metrics.get("reward_first") is not None:
        print(f"\nmean reward: {metrics['reward_first']:.3f} (first log) -> {metrics['reward_last']:.3f} (last log)")
    if before and after:
        print(f"held-out pass@1: {before['pass@1']:.3f} -> {after['pass@1']:.3f}; pass@{PASS_K}: "
              f"{before[f'pass@{PASS_K}']:.3f} -> {after[f'pass@{PASS_K}']:.3f} ({after['n']} problems)")
        for ex in after["examples"][:4]:
            print(f"  Q: {ex['question']}\n  A: {ex['prediction']}   (expected: {ex['reference']})")
