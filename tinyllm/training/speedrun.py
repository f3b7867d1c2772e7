"""`tinyllm speedrun`: one command from text to a chatting model, sized to the time there is.

    tinyllm speedrun --dataset_name my_text.txt --time_budget 30m
    tinyllm speedrun --dataset_name builtin --time_budget 5m --dry_run true

Stages, in order, each the same tinyllm command a user would run by hand (the report card lists them):
  tokenizer  train-tokenizer (BPE sized by the corpus, or char)
  prepare    token shards on disk (data/shards.py), which give the corpus's size in tokens
  probe      tokens per second of each candidate shape on this device (training/probe.py)
  plan       the shape whose budget buys ~8 tokens per parameter, its batch, learning rate and tokens
             (training/sizing.py)
  pretrain   `tinyllm pretrain --time_budget <its share> --forecast true`: the final held-out loss predicted at
             40% of the steps from copies of the run cooled down early (training/forecast.py)
  sft        `tinyllm sft --time_budget <its share>` when question-answer data is given (builtin_qa for builtin)
  eval       `tinyllm eval`
  export     `tinyllm export --format gguf` (GGUF + Ollama Modelfile)
  report     SPEEDRUN.md: per stage, the predicted and the achieved time and loss, the choices and why

The budget counts from the start of the command. speedrun.json in the output folder records the options, the plan
and each finished stage: the same command, run again after Ctrl+C or a kill, skips what is done and resumes
pretraining from its last checkpoint with what is left of its share.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Callable

import tinyllm
from tinyllm.config import DataArguments, SpeedrunArguments
from tinyllm.data.builtin import generate_corpus
from tinyllm.data.documents import CorpusStream
from tinyllm.data.shards import prepare_shards
from tinyllm.device import detect_device
from tinyllm.errors import ConfigError, DataError, TinyLLMError
from tinyllm.formatting import fmt_bytes, fmt_duration
from tinyllm.model_io import load_tokenizer
from tinyllm.training import sizing
from tinyllm.training.budget import parse_duration
from tinyllm.training.recovery import find_last_checkpoint
from tinyllm.training.speedrun_card import CARD_FILE, next_steps, plan_text, write_card
from tinyllm.training.speedrun_sizing import MIN_PRETRAIN_STEPS, SizingStages

__all__ = ["run_speedrun", "MIN_BUDGET_S", "Interrupted"]

logger = logging.getLogger(__name__)
STATE_FILE = "speedrun.json"
MIN_BUDGET_S = 60  # below this not even the smallest shape gets a few hundred steps after the fixed stages
_OPTION_KEYS = ("time_budget", "sft_dataset_name", "tokenizer_type", "vocab_size", "max_epochs", "seed",
                "export_gguf")


_STAGE_FOLDERS = {"sft": "chat"}


class Interrupted(TinyLLMError):
    exit_code = 130


class Speedrun(SizingStages):
    """The run's state (speedrun.json) and its stages (the sizing ones in speedrun_sizing.SizingStages)."""

    def __init__(self, sp: SpeedrunArguments, data: DataArguments, run_command: Callable[[str, list], int]):
        self.sp, self.data, self.run_command = sp, data, run_command
        self.start = tinyllm.STARTED_AT
        self.total = parse_duration(sp.time_budget)
        self.out = Path(sp.output_dir)
        self.state_path = self.out / STATE_FILE
        self.state: dict = {}
        self.sft_name = _sft_dataset(sp.sft_dataset_name, data.dataset_name)
        self.device = detect_device()
        self.eval_max_tokens = 65536 if self.device == "cpu" else 262144  # held-out tokens each evaluation reads

    # ------------------------------------------------------------ state

    def options(self) -> dict:
        opts = {k: getattr(self.sp, k) for k in _OPTION_KEYS}
        opts["data"] = {f.name: getattr(self.data, f.name) for f in dataclasses.fields(self.data)
                        if getattr(self.data, f.name) != f.default}
        return json.loads(json.dumps(opts, default=str))

    def open(self) -> None:
        """Start, or resume the speedrun already in output_dir (same options), or refuse."""
        if self.sp.overwrite_output_dir and self.out.exists() and not self.sp.dry_run:
            shutil.rmtree(self.out)
        if self.state_path.is_file():
            state = json.loads(self.state_path.read_text())
            if state.get("options") != self.options():
                changed = sorted(k for k in set(state.get("options", {})) | set(self.options())
                                 if state.get("options", {}).get(k) != self.options().get(k))
                raise ConfigError(f"{self.out} holds a speedrun with other options ({', '.join(changed)}); run the "
                                  f"same command to resume it, or pass --overwrite_output_dir true or another "
                                  f"--output_dir")
            self.state = state
            for name, rec in state["stages"].items():
                since = rec.pop("running_since", None)
                if since:  # killed while running: count its time until the last file it wrote
                    folder = self.out / _STAGE_FOLDERS.get(name, name)
                    files = [p.stat().st_mtime for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
                    lost = max(max(files, default=since) - since, 0.0)
                    rec["attempt_s"] = round(rec.get("attempt_s", 0.0) + lost, 1)
                    state["spent_s"] = round(state.get("spent_s", 0.0) + lost, 1)
            done = [k for k, v in state["stages"].items() if v.get("done")]
            if state.get("spent_s") and not self.sp.dry_run and not self.done("report"):
                spent = state.get("spent_s", 0.0)
                print(f"Resuming the speedrun in {self.out}: done {', '.join(done)}; {fmt_duration(spent)} of "
                      f"{fmt_duration(self.total)} spent", flush=True)
                self.start -= spent  # the budget counts the earlier attempts too
            return
        if self.out.is_dir() and any(self.out.iterdir()):
            raise ConfigError(f"output_dir {self.out} exists and is not a speedrun; choose another --output_dir or "
                              f"pass --overwrite_output_dir true")
        self.state = {"version": 1, "options": self.options(), "budget_s": self.total, "stages": {}, "spent_s": 0.0}

    def save(self) -> None:
        if self.sp.dry_run and not self.state["stages"]:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        self.state["spent_s"] = round(self.elapsed(), 1)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2, ensure_ascii=False) + "\n")
        tmp.replace(self.state_path)

    def elapsed(self) -> float:
        return time.time() - self.start

    def left(self) -> float:
        return self.total - self.elapsed()

    def stage(self, name: str) -> dict:
        return self.state["stages"].setdefault(name, {})

    def done(self, name: str) -> bool:
        return bool(self.state["stages"].get(name, {}).get("done"))

    def finish(self, name: str, started: float, **info) -> None:
        rec = self.stage(name)
        rec.update(info)
        rec["seconds"] = round(max(rec.get("seconds", 0.0) + time.time() - started, rec.get("attempt_s", 0.0)), 1)
        rec["done"] = True
        self.save()

    def command(self, name: str, command: str, argv: list[str]) -> None:
        """Run a tinyllm command in this process; a failure or an interrupt stops the speedrun with a line that
        says how to go on."""
        self.stage(name).setdefault("commands", []).append("tinyllm " + " ".join([command, *map(_quote, argv)]))
        started = time.time()
        self.stage(name)["running_since"] = started  # still there after a kill: open() counts the lost time
        self.save()
        rc = self.run_command(command, [str(a) for a in argv])
        self.stage(name).pop("running_since", None)
        self.stage(name)["attempt_s"] = round(self.stage(name).get("attempt_s", 0.0) + time.time() - started, 1)
        self.save()
        if rc == 130:
            raise Interrupted(f"interrupted during {name}: run the same command again to resume")
        if rc != 0:
            raise TinyLLMError(f"the {name} stage failed (exit {rc}, its error is above); fix it and run the same "
                               f"command again to resume")

    # ------------------------------------------------------------ stages

    def tokenizer(self) -> Path:
        folder = self.out / "tokenizer"
        if self.done("tokenizer"):
            return folder
        started = time.time()
        corpus_bytes = _corpus_bytes(self.data, self.sp.seed)
        _check_disk(self.out, corpus_bytes)
        if self.sp.tokenizer_type == "char":
            vocab, why = None, "char: one token per character (--tokenizer_type char)"
            extra = []
        else:
            vocab = self.sp.vocab_size or sizing.vocab_for_corpus(corpus_bytes or 64 << 20)
            why = (f"BPE {vocab}: --vocab_size" if self.sp.vocab_size else
                   f"BPE {vocab}: by corpus size ({fmt_bytes(corpus_bytes)})" if corpus_bytes else
                   f"BPE {vocab}: corpus size unknown before reading (a Hub dataset)")
            extra = ["--vocab_size", vocab]
        self.command("tokenizer", "train-tokenizer", ["--tokenizer_type", self.sp.tokenizer_type, *extra,
                                                      *self.data_flags(), "--output_dir", folder,
                                                      "--overwrite_output_dir", "true", "--seed", self.sp.seed])
        self.finish("tokenizer", started, choice=why, corpus_bytes=corpus_bytes)
        return folder

    def prepare(self, tokenizer_dir: Path) -> dict:
        if self.done("prepare"):
            return self.stage("prepare")
        started = time.time()
        tokenizer = load_tokenizer(str(tokenizer_dir))
        shards = prepare_shards(self.data, tokenizer, self.sp.seed)
        m = shards.meta
        self.finish("prepare", started, train_tokens=m["train"]["tokens"], eval_tokens=m["validation"]["tokens"],
                    folder=str(shards.folder), vocab_size=len(tokenizer))
        print(f"corpus: {m['train']['tokens']:,} training tokens, {m['validation']['tokens']:,} held out "
              f"({shards.folder})", flush=True)
        return self.stage("prepare")

    def pretrain(self, plan: dict, tokenizer_dir: Path) -> Path:
        folder = self.out / "pretrain"
        if self.done("pretrain"):
            return folder
        started = time.time()
        c = plan["choice"]
        rec = self.stage("pretrain")
        planned = plan["shares"]["pretrain"]
        seconds = planned - rec.get("attempt_s", 0.0)
        shape = sizing.Shape(c["shape"]["n_layer"], c["shape"]["n_head"], c["shape"]["n_embd"])
        flags = self.pretrain_flags(shape, c["block_size"], c["learning_rate"], c["tokens_per_step"], c["steps"],
                                    tokenizer_dir, folder, seconds, c["epochs"])
        last = find_last_checkpoint(str(folder))
        if last is None:
            flags += ["--overwrite_output_dir", "true"]  # a run killed before its first checkpoint starts over
        else:
            flags += ["--resume_from_checkpoint", last]
            rec["resumed_from"] = last
            print(f"pretrain: resuming from {last} with {fmt_duration(seconds)} of its share left", flush=True)
        flags += ["--save_steps", max(c["steps"] // 4, 10)]  # checkpoints to resume from, even in a short run
        self.command("pretrain", "pretrain", flags)
        m = json.loads((folder / "all_results.json").read_text())
        self.finish("pretrain", started, loss=m.get("eval_loss"), bits_per_byte=m.get("eval_bits_per_byte"),
                    steps=m.get("time_budget_steps"), tokens=(m.get("time_budget_steps") or 0) * c["tokens_per_step"],
                    **{k: m[k] for k in ("keep_best_step", "keep_best_copy", "last_step_eval_loss") if k in m},
                    **{k.replace("_eval_loss", "_loss"): m[k] for k in
                       ("forecast_eval_loss", "forecast_at_step", "forecast_total_steps", "forecast_exponent",
                        "forecast_accelerating", "forecast_floored", "forecast_seconds", "forecast_skipped",
                        "forecast_revised_eval_loss", "forecast_revised_at_step") if k in m})
        for ckpt in folder.glob("checkpoint-*"):  # the final folder is complete; checkpoints were for resuming
            shutil.rmtree(ckpt, ignore_errors=True)
        return folder

    def sft(self, base: Path) -> Path | None:
        if not self.sft_name:
            return None
        folder = self.out / "chat"
        if self.done("sft"):
            return folder if (folder / "config.json").is_file() else None
        started = time.time()
        shares = self.state["plan"]["shares"]
        seconds = self.left() - shares["eval"] - shares["export"] - 0.005 * self.total  # what pretraining left
        if seconds < 5:
            logger.warning("sft: only %.0f s left for it: skipped (the base model is the result)", seconds)
            self.finish("sft", started, skipped=f"{seconds:.0f} s left")
            return None
        self.command("sft", "sft", ["--model_name_or_path", base, "--dataset_name", self.sft_name,
                                    "--time_budget", f"{seconds:.0f}s", "--report_to", "none", "--output_dir", folder,
                                    "--overwrite_output_dir", "true", "--seed", self.sp.seed, "--save_steps", 10 ** 6,
                                    "--eval_steps", 10 ** 6, "--precision", self.sp.precision,
                                    "--answer_eval_examples", 50, "--warmup_steps", 10])
        m = json.loads((folder / "all_results.json").read_text())
        self.finish("sft", started, loss=m.get("eval_answer_loss"), exact_match=m.get("exact_match"),
                    exact_match_before=m.get("exact_match_before"))
        return folder

    def evaluate(self, final: Path) -> dict:
        if self.done("eval"):
            return self.stage("eval")
        started = time.time()
        out = self.out / "eval_results.json"
        tasks = ["bpb"] + (["builtin_cloze"] if self.data.dataset_name == "builtin" else []) + (
            ["sft"] if self.sft_name == "builtin_qa" and final.name == "chat" else [])
        self.command("eval", "eval", [final, *self.data_flags(), "--tasks", ",".join(tasks), "--output", out,
                                      "--eval_max_tokens",
                                      self.eval_max_tokens, "--seed", self.sp.seed])
        results = json.loads(out.read_text())["results"]
        self.finish("eval", started, results={f"{r['task']}:{r['metric']}": r["value"] for r in results})
        return self.stage("eval")

    def export(self, final: Path) -> Path | None:
        if not self.sp.export_gguf:
            return None
        import importlib.util

        if self.sp.tokenizer_type == "char":
            logger.warning("export: skipped: GGUF runtimes need a byte-level BPE tokenizer, not a char one "
                           "(the model folder works with tinyllm chat/serve and pipeline())")
            self.finish("export", time.time(), skipped="char tokenizer")
            return None
        if importlib.util.find_spec("gguf") is None:
            logger.warning("export: the gguf package is not installed (pip install 'tinyllm[gguf]'): no GGUF file")
            return None
        gguf = final / f"{self.out.name}-f16.gguf"
        if self.done("export"):
            return gguf
        started = time.time()
        self.command("export", "export", [final, "--format", "gguf", "--outtype", "f16", "--output", gguf,
                                          "--overwrite", "true"])
        self.finish("export", started, file=str(gguf))
        return gguf

    def data_flags(self) -> list:
        """The corpus options the user gave (those that differ from the defaults), as flags for each stage."""
        flags = ["--dataset_name", self.data.dataset_name]
        for f in dataclasses.fields(self.data):
            value = getattr(self.data, f.name)
            if f.name in ("dataset_name", "block_size", "eval_max_tokens") or value is None or value == f.default:
                continue
            flags += [f"--{f.name}", value]
        return flags


def _quote(arg) -> str:
    text = str(arg)
    return f"'{text}'" if any(ch in text for ch in " |'\"$") else text


def _sft_dataset(value: str | None, corpus: str | None) -> str | None:
    if value in (None, "", "none", "None"):
        return None
    if value == "auto":
        return "builtin_qa" if corpus == "builtin" else None
    return value


def _corpus_bytes(data: DataArguments, seed: int) -> int | None:
    """The corpus's size in bytes: its files', the built-in corpus generated, None for a Hub dataset."""
    stream = CorpusStream(data, seed)
    if stream.total_bytes is not None:
        return stream.total_bytes
    if stream.kind == "builtin":
        docs = generate_corpus(data.builtin_num_documents, seed, data.builtin_languages)
        return sum(len(d.text.encode("utf-8")) for d in docs)
    return None


def _check_disk(out: Path, corpus_bytes: int | None) -> None:
    """Shards (at most 2 bytes per corpus byte as uint16 tokens, 4 as uint32) plus the model folders."""
    root = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    need = 4 * (corpus_bytes or 0) + (300 << 20)
    free = shutil.disk_usage(root).free
    if free < need:
        raise DataError(f"not enough disk in {root.resolve()} for the speedrun: about {fmt_bytes(need)} needed "
                        f"(token shards and model folders), {fmt_bytes(free)} free; free some space or choose "
                        f"another --output_dir (and --cache_dir for the shards)")


# ---------------------------------------------------------------- the command

def run_speedrun(sp: SpeedrunArguments, data: DataArguments, run_command: Callable[[str, list], int]) -> int:
    """The speedrun. `run_command(name, argv) -> exit status` runs one tinyllm command in this process (the CLI
    gives its own `run`: each stage is exactly the command the report card shows)."""
    if not sp.time_budget:
        raise ConfigError("give --time_budget, the wall time for the whole run: e.g. 90s, 10m or 1.5h")
    total = parse_duration(sp.time_budget)
    if data.block_size is not None:
        raise ConfigError("the speedrun chooses block_size with the model's shape; drop --block_size (or train by "
                          "hand with tinyllm pretrain)")
    if total < MIN_BUDGET_S:
        raise ConfigError(f"time_budget {sp.time_budget} is too small for even the smallest model: give at least "
                          f"{MIN_BUDGET_S}s (tokenizer, data, a probe of this machine, {MIN_PRETRAIN_STEPS} training "
                          f"steps, evaluation and export)")
    run = Speedrun(sp, data, run_command)
    run.open()
    if run.done("report") and not sp.dry_run:
        final = run.out / "chat" if (run.out / "chat" / "config.json").is_file() else run.out / "pretrain"
        gguf = run.state["stages"].get("export", {}).get("file")
        print(f"This speedrun is complete: report card {run.out / CARD_FILE} (--overwrite_output_dir true to run "
              f"it again)")
        print(next_steps(final, final.name == "chat", Path(gguf) if gguf else None))
        return 0
    print(f"speedrun: {data.dataset_name} in {fmt_duration(total)} on {run.device}; output {run.out}", flush=True)
    tokenizer_dir = run.tokenizer()
    corpus = run.prepare(tokenizer_dir)
    plan = run.plan(corpus)
    print(plan_text(plan, run), flush=True)
    run.check_epochs(plan)
    if sp.dry_run:
        print("dry run: nothing trained. The tokenizer and token shards are kept; the same command without "
              "--dry_run trains with this plan (measured again at its start).")
        if run.state_path.is_file():  # a dry run leaves no plan and no spent time behind: the real run probes again
            run.state["stages"] = {k: v for k, v in run.state["stages"].items() if k in ("tokenizer", "prepare")}
            run.state.pop("plan", None)
            run.state["spent_s"] = 0.0
            run.state_path.write_text(json.dumps(run.state, indent=2, ensure_ascii=False) + "\n")
        return 0
    base = run.pretrain(plan, tokenizer_dir)
    pre = run.stage("pretrain")
    if pre.get("forecast_loss") is not None and pre.get("loss") is not None:
        print(f"pretrain: validation loss {pre['loss']:.3f}; forecast {pre['forecast_loss']:.3f} at step "
              f"{pre['forecast_at_step']:,} of {pre['steps']:,} ({pre['forecast_loss'] / pre['loss'] - 1:+.1%})"
              + (f", revised {pre['forecast_revised_loss']:.3f} at step {pre['forecast_revised_at_step']:,} "
                 f"({pre['forecast_revised_loss'] / pre['loss'] - 1:+.1%})" if pre.get("forecast_revised_loss")
                 else ""),
              flush=True)
    chat = run.sft(base)
    final = chat or base
    run.evaluate(final)
    gguf = run.export(final)
    card = write_card(run, final, gguf)
    run.state["stages"].setdefault("report", {})["done"] = True
    run.save()
    print(f"\nSpeedrun done in {fmt_duration(run.elapsed())} of {fmt_duration(total)}; report card: {card}")
    print(next_steps(final, chat is not None, gguf))
    return 0
