"""The speedrun's words: the plan as it prints, the closing commands, and the report card SPEEDRUN.md (per stage
the predicted and the achieved time and loss, the choices and why, the commands each stage ran). `run` is the
speedrun.Speedrun (its state, options and folders); this module does not import it, which imports this one."""

from __future__ import annotations

from pathlib import Path

from tinyllm.formatting import fmt_duration
from tinyllm.training import sizing

__all__ = ["plan_text", "next_steps", "write_card", "CARD_FILE"]

CARD_FILE = "SPEEDRUN.md"


def plan_text(plan: dict, run) -> str:
    c = plan["choice"]
    shares = plan["shares"]
    lines = [f"plan ({'calibrated' if 'curve' in plan or 'E' in plan else 'before calibration'}):"]
    lines += [f"  - {r}" for r in c["reasons"]]
    lines.append("  budget: " + ", ".join(f"{k} {fmt_duration(v)}" for k, v in shares.items() if v)
                 + f" (after {fmt_duration(run.elapsed())} of tokenizer, data and probe)")
    return "\n".join(lines)


def _loss_line(plan: dict, cal: dict) -> str:
    """How the predicted loss was made: the calibration runs' curve in seconds, or (a plan from before this rule)
    the loss model with one calibrated constant."""
    curve = plan.get("curve")
    if curve:
        runs = "; ".join(f"{r['seconds']:.1f} s of training, {r['tokens']:,} tokens: loss {r['loss']:.3f}"
                         for r in cal.get("runs", []))
        line = (f"- predicted loss: L(t) = {curve['E']:.3f} + {curve['K']:.3f} / t^{curve['g']:g} after t seconds of "
                f"training (E and K through the two calibration runs of {cal.get('shape', '?')}: {runs}; the exponent "
                f"fitted here, docs/speedrun.md), the pretraining's seconds counted as D' counts repeated tokens")
        bound = curve.get("loss_model")
        if bound:
            line += (f"; past {sizing.DATA_BOUND_EPOCHS:g} epochs no lower than L = {bound['E']:.3f} + "
                     f"{sizing.FIT.A:g} / N^{sizing.FIT.alpha:g} + {bound['B']:g} / D'^{sizing.FIT.beta:g} in nats "
                     f"per byte (N parameters, D' effective bytes; E and B through the same two runs)")
        return line
    return (f"- loss model: L = E + {sizing.FIT.A:g} / N^{sizing.FIT.alpha:g} + {sizing.FIT.B:g} / D'^"
            f"{sizing.FIT.beta:g} in nats per byte, D' in bytes (fitted here, docs/speedrun.md), "
            f"{plan.get('bytes_per_token')} bytes per token, E = {plan.get('E')} from the calibration run "
            f"({cal.get('tokens', 0):,} tokens, loss {cal.get('loss', 0):.3f})")


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
            row("calibrate", f"{s.get('calibrate', {}).get('planned_s', 0):.0f} s", secs("calibrate")),
            row("pretrain", f"{shares['pretrain']:.0f} s", secs("pretrain"), f"{c['predicted_loss']:.3f}",
                f"{pre['loss']:.3f}" if pre.get("loss") is not None else "—")]
    if "sft" in s:
        rows.append(row("sft", f"{shares['sft']:.0f} s", secs("sft"), "", s["sft"].get("skipped", "")))
    rows.append(row("eval", f"{shares['eval']:.0f} s", secs("eval")))
    if gguf:
        rows.append(row("export", f"{shares['export']:.0f} s", secs("export")))
    total = sum(v.get("seconds", 0) for v in s.values())
    error = (c["predicted_loss"] / pre["loss"] - 1) if pre.get("loss") else None
    lines = [f"# Speedrun report card: {run.data.dataset_name} in {fmt_duration(run.total)}", "",
             f"Wall time {run.elapsed():.0f} s of a {run.total:.0f} s budget ({run.elapsed() / run.total:.1%}); "
             f"{sum(1 for v in s.values() if v.get('resumed_from'))} resume(s). Device: {plan['device']}.", "",
             "| stage | predicted time | achieved time | predicted loss | achieved loss |", "|---|---|---|---|---|",
             *rows, "", f"Stages total {total:.0f} s (the rest is start-up and bookkeeping)."]
    if error is not None:
        span = plan.get("curve", {}).get("predicted_range")
        lines.append(f"Validation loss (nats per token) predicted {c['predicted_loss']:.3f}"
                     + (f" ({span[0]:.3f}-{span[1]:.3f} for the curve's exponent from {sizing.EXPONENT_RANGE[0]:g} to "
                        f"{sizing.EXPONENT_RANGE[1]:g}: a wide range says "
                        f"the calibration runs were early on the curve)" if span else "")
                     + f", achieved {pre['loss']:.3f}: the prediction was off by {error:+.1%}; bits per byte "
                     f"{pre.get('bits_per_byte')}.")
    if pre.get("keep_best_step") is not None:
        lines.append(f"Pretraining kept the weights of step {pre['keep_best_step']} of {pre.get('steps')} "
                     f"(--keep_best): the held-out loss rose after it, to {pre['last_step_eval_loss']:.3f} at the "
                     f"last step (the corpus repeated {c['epochs']:.1f} times).")
    lines += ["", "## Choices and why", "", f"- tokenizer: {s.get('tokenizer', {}).get('choice', '')}",
              *[f"- {r}" for r in c["reasons"]],
              _loss_line(plan, s.get("calibrate", {})),
              "", "| shape | parameters (no emb.) | tokens/s | tokens | tokens per parameter | predicted loss |",
              "|---|---|---|---|---|---|"]
    for cand in c["candidates"]:
        lines.append(f"| {cand['shape']} | {cand['params']:,} | {cand['tokens_per_second']:,.0f} | "
                     f"{cand['tokens'] / 1e6:.2f}M | {cand['tokens_per_param']:.1f} | {cand['predicted_loss']:.3f} |")
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
