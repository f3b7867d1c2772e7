"""The speedrun's words: the plan as it prints, the closing commands, and the report card SPEEDRUN.md (per stage
the predicted and the achieved time and loss, the choices and why, the commands each stage ran). `run` is the
speedrun.Speedrun (its state, options and folders); this module does not import it, which imports this one."""

from __future__ import annotations

import json
from pathlib import Path

from tinyllm.formatting import fmt_duration

__all__ = ["plan_text", "next_steps", "write_card", "CARD_FILE"]

CARD_FILE = "SPEEDRUN.md"


def plan_text(plan: dict, run) -> str:
    c = plan["choice"]
    shares = plan["shares"]
    lines = ["plan:"]
    lines += [f"  - {r}" for r in c["reasons"]]
    lines.append("  budget: " + ", ".join(f"{k} {fmt_duration(v)}" for k, v in shares.items() if v)
                 + f" (after {fmt_duration(run.elapsed())} of tokenizer, data and probe)")
    return "\n".join(lines)


def _forecast_line(pre: dict, folder: Path) -> str:
    """How the predicted loss was made: the pretraining's copies cooled down early (its forecast.json)."""
    path = folder / "forecast.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    f = data.get("forecast")
    if not f:
        return f"- predicted loss: none ({pre.get('forecast_skipped') or data.get('skipped') or 'no forecast.json'})"
    points = "; ".join(f"step {p['step']:,} + {p['steps'] - p['step']:,}: {p['loss']:.3f}" for p in data["points"])
    floor = data.get("loss_floor", 0.0)
    at = ", ".join(f"{a:.0%}" for a in data["at"])
    return (f"- predicted loss: copies of the pretraining run cooled down at {at} of its steps, each for a quarter "
            f"of the steps before it, as the run cools down its last fifth "
            f"(warmup_stable_decay): {points}. Through them L(D) = {f['E']:.3f} + {f['K']:.4g} / D^{f['exponent']:g} "
            f"(D the effective tokens, repeats counted as Muennighoff et al.'s D'; the exponent from the three "
            f"points, at least {data.get('exponent_bounds', [0.28])[0]:g}), at the {f['total_steps']:,} steps then "
            f"expected: "
            f"{f['loss']:.3f} (training/forecast.py)"
            + ("; the copies' loss fell faster and faster (a sudden drop under way), which no power law follows: "
               "a guess, the curve through the last two that flattens soonest" if f.get("accelerating") else "")
            + (f"; a free fit would have run on under {floor:.3f}, the lowest loss there is on this corpus "
               f"({'its entropy plus what each block start costs' if floor > 0 else 'no loss is below 0'}), so E "
               f"is held there" if f.get("floored")
               else "")
            + (_revision_sentence(data["revision"]) if data.get("revision") else ""))


def _revision_sentence(r: dict) -> str:
    floor = r.get("floor", 0.0)
    above = f"{floor:.3f} + ({r['run_loss']:.3f} - {floor:.3f}) x {r['gain']:.3f}" if floor > 0 else \
        f"{r['run_loss']:.3f} x {r['gain']:.3f}"
    return (f". Revised where the run's cool-down began (step {r['at_step']:,} of {r['total_steps']:,}), from the "
            f"run's held-out loss there and what cooling down gave the copy at step {r['gain_at_step']:,} (its cooled "
            f"loss over the run's at that step{', above the floor' if floor > 0 else ''}): {above} = "
            f"{r.get('estimate', r['loss']):.3f}"  # forecast.json of a version before the estimate was kept apart
            + (f"; the best weights kept so far (--keep_best) are lower: {r['loss']:.3f}" if r.get("kept") else ""))


def next_steps(final: Path, chat: bool, gguf: Path | None) -> str:
    name = final.parent.name.replace("_", "-").lower() or "tinyllm"
    lines = ["Next:"]
    lines.append(f"  tinyllm chat {final}" if chat else f"  tinyllm generate {final} --prompt \"Once upon a time\"")
    lines.append(f"  tinyllm serve {final}      # OpenAI-compatible API + web chat")
    if gguf:
        lines.append(f"  ollama create {name} -f {gguf.with_suffix('.Modelfile')} && ollama run {name}")
    return "\n".join(lines)


def write_card(run, final: Path, gguf: Path | None) -> Path:
    """SPEEDRUN.md: per stage the predicted and achieved time (and loss), the choices and why, and the commands."""
    s, plan = run.state["stages"], run.state["plan"]
    c, shares = plan["choice"], plan["shares"]
    pre = s.get("pretrain", {})

    def row(name, predicted, achieved, p_loss="", a_loss=""):
        return f"| {name} | {predicted} | {achieved} | {p_loss} | {a_loss} |"

    def secs(name):
        rec = s.get(name, {})
        return f"{rec['seconds']:.0f} s" if "seconds" in rec else "—"

    rows = [row("tokenizer", "—", secs("tokenizer")), row("prepare", "—", secs("prepare")),
            row("probe", "—", secs("probe")),
            row("pretrain", f"{shares['pretrain']:.0f} s", secs("pretrain"),
                (f"{pre['forecast_loss']:.3f}" + (f" (revised {pre['forecast_revised_loss']:.3f})"
                                                  if pre.get("forecast_revised_loss") is not None else ""))
                if pre.get("forecast_loss") is not None else "—",
                f"{pre['loss']:.3f}" if pre.get("loss") is not None else "—")]
    if "sft" in s:
        rows.append(row("sft", f"{shares['sft']:.0f} s", secs("sft"), "", s["sft"].get("skipped", "")))
    rows.append(row("eval", f"{shares['eval']:.0f} s", secs("eval")))
    if gguf:
        rows.append(row("export", f"{shares['export']:.0f} s", secs("export")))
    total = sum(v.get("seconds", 0) for v in s.values())
    forecast = pre.get("forecast_loss")
    error = (forecast / pre["loss"] - 1) if forecast is not None and pre.get("loss") else None
    lines = [f"# Speedrun report card: {run.data.dataset_name} in {fmt_duration(run.total)}", "",
             f"Wall time {run.elapsed():.0f} s of a {run.total:.0f} s budget ({run.elapsed() / run.total:.1%}); "
             f"{sum(1 for v in s.values() if v.get('resumed_from'))} resume(s). Device: {plan['device']}.", "",
             "| stage | predicted time | achieved time | predicted loss | achieved loss |", "|---|---|---|---|---|",
             *rows, "", f"Stages total {total:.0f} s (the rest is start-up and bookkeeping)."]
    if error is not None:
        lines.append(f"Validation loss (nats per token) forecast {forecast:.3f} at step {pre['forecast_at_step']:,} of "
                     f"{pre.get('steps') or 0:,} (from copies cooled down early, below), achieved {pre['loss']:.3f}: "
                     f"the forecast was off by {error:+.1%}; bits per byte {pre.get('bits_per_byte')}.")
        if pre.get("forecast_revised_loss") is not None:
            lines[-1] += (f" Revised where the cool-down began (step {pre['forecast_revised_at_step']:,}, below): "
                          f"{pre['forecast_revised_loss']:.3f}, off by "
                          f"{pre['forecast_revised_loss'] / pre['loss'] - 1:+.1%}.")
    if (run.out / "pretrain" / "loss_curve.png").is_file():
        lines += ["", "![pretraining loss, the forecast's cooled-down copies and the curve through them]"
                      "(pretrain/loss_curve.png)", ""]
    if pre.get("keep_best_step") is not None:
        kept = pre.get("keep_best_copy") or f"step {pre['keep_best_step']}"
        lines.append(f"Pretraining kept the weights of {kept} (--keep_best): the held-out loss rose after it, to "
                     f"{pre['last_step_eval_loss']:.3f} at the last step, {pre.get('steps')} (the corpus repeated "
                     f"{c['epochs']:.1f} times).")
    lines += ["", "## Choices and why", "", f"- tokenizer: {s.get('tokenizer', {}).get('choice', '')}",
              *[f"- {r}" for r in c["reasons"]],
              _forecast_line(pre, run.out / "pretrain"),
              "", "| shape | parameters (no emb.) | tokens/s | tokens | tokens per parameter |",
              "|---|---|---|---|---|"]
    for cand in c["candidates"]:
        lines.append(f"| {cand['shape']} | {cand['params']:,} | {cand['tokens_per_second']:,.0f} | "
                     f"{cand['tokens'] / 1e6:.2f}M | {cand['tokens_per_param']:.1f} |")
    if s.get("sft", {}).get("exact_match") is not None:
        lines += ["", f"SFT on {run.sft_name}: held-out exact match {s['sft']['exact_match_before']:.3f} before -> "
                      f"{s['sft']['exact_match']:.3f} after."]
    ev = s.get("eval", {}).get("results", {})
    if ev:
        lines += ["", "## Evaluation of the final model", "", "| task:metric | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in ev.items()]
    lines += ["", "## The commands each stage ran", ""]
    for name, rec in s.items():
        for cmd in rec.get("commands", []):
            lines.append(f"- {name}: `{cmd}`")
    lines += ["", "```", next_steps(final, "sft" in s and not s["sft"].get("skipped"), gguf), "```", ""]
    path = run.out / CARD_FILE
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
