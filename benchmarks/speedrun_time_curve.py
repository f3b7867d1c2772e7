"""The exponent g of the speedrun's loss curve L(t) = E + K / t^g (tinyllm.training.sizing.TimeCurve), checked on
finished speedruns: each run's own two calibration runs give E and K for every g tried, and the curve at the
pretraining's (effective) seconds is compared with the loss it achieved. Then the rule before it (the loss model in
parameters and bytes, sizing.FIT, with its E set by the longer calibration run alone), and the rule as the code has
it now, replayed on the run's own measurements (sizing.choose with the recorded speeds, shares and calibration runs:
the curve at g = TIME_EXPONENT, bounded past DATA_BOUND_EPOCHS epochs by the loss model through the same two runs).
The prediction does not change the plan (shape, batch and tokens come from the tokens-per-parameter rule), so the
replay gives the prediction the run would have made.

    python benchmarks/speedrun_time_curve.py /tmp/speedrun_grid/speedrun_*      # folders of `tinyllm speedrun`

Prints one row per speedrun and one column per g (prediction error in %), then the largest error per g and how
many runs are within 5%.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tinyllm.training import sizing  # noqa: E402
from tinyllm.training.sizing import FIT, TIME_EXPONENT, Shape, TimeCurve, effective_seconds, effective_tokens  # noqa: E402

EXPONENTS = [0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 1.0]


def replay(state: dict, folder: Path) -> float:
    """The predicted loss the current rule makes from this run's recorded probe speeds (scaled by the calibration's
    Trainer-to-probe ratio, as recorded in the final plan's candidates), shares and calibration runs."""
    cal, plan = state["stages"]["calibrate"], state["plan"]
    short, long = cal["runs"]
    unique, bpt = plan["train_tokens"], plan["bytes_per_token"]
    cands = [sizing.Candidate.from_dict(d) for d in plan["choice"]["candidates"]]
    small = min(cands, key=lambda x: x.params)
    curve, bound = sizing.through_calibration(short, long, small.params, unique, bpt)
    tokenizer = state["options"].get("tokenizer_type", "bpe")
    choice = sizing.choose({x.shape: x.tokens_per_second for x in cands},
                           max(plan["shares"]["pretrain"] - long["overhead_s"], 1.0), bound, unique, tokenizer,
                           state["options"].get("max_epochs", 16.0), bytes_per_token=bpt, curve=curve)
    if choice.shape.name != plan["choice"]["shape"]["name"]:
        print(f"{folder}: the replay chose {choice.shape.name}, the run {plan['choice']['shape']['name']}",
              file=sys.stderr)
    return choice.predicted_loss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("folders", nargs="+", type=Path)
    a = ap.parse_args()
    rows = []
    for folder in a.folders:
        state = json.loads((folder / "speedrun.json").read_text())
        cal, pre, plan = state["stages"].get("calibrate", {}), state["stages"].get("pretrain", {}), state["plan"]
        if len(cal.get("runs", [])) != 2 or not pre.get("loss"):
            print(f"{folder}: no two calibration runs or no finished pretraining: skipped", file=sys.stderr)
            continue
        short, long = cal["runs"]
        m = json.loads((folder / "pretrain" / "all_results.json").read_text())
        c = plan["choice"]
        t = effective_seconds(m["train_runtime"], pre["tokens"], plan["train_tokens"])
        errors = {}
        for g in EXPONENTS:
            curve = TimeCurve.through(short["effective_s"], short["loss"], long["effective_s"], long["loss"], g)
            errors[g] = curve.predict(t) / pre["loss"] - 1
        small = min(c["candidates"], key=lambda x: x["params"])["params"]
        unique, bpt = plan["train_tokens"], plan["bytes_per_token"]
        one = FIT.calibrated(long["loss"], small, effective_tokens(long["tokens"], unique), bpt, floor=0.0)
        final = Shape(c["shape"]["n_layer"], c["shape"]["n_head"], c["shape"]["n_embd"]).non_embedding_params()
        errors["one point"] = one.predict(final, effective_tokens(pre["tokens"], unique), bpt) / pre["loss"] - 1
        errors["now"] = replay(state, folder) / pre["loss"] - 1
        rows.append((folder.name, c["shape"]["name"], short, long, m["train_runtime"], pre["loss"], errors))
    print("| speedrun | shape | calibration (s: loss) | pretraining s | achieved | "
          + " | ".join(f"g={g:g}" + (" (used)" if g == TIME_EXPONENT else "") for g in EXPONENTS)
          + " | one point, loss model | the rule now |")
    print("|---|---|---|---|---|" + "---|" * (len(EXPONENTS) + 2))
    for name, shape, short, long, secs, loss, errors in rows:
        print(f"| {name} | {shape} | {short['seconds']:.1f}: {short['loss']:.3f}, {long['seconds']:.1f}: "
              f"{long['loss']:.3f} | {secs:.0f} | {loss:.3f} | "
              + " | ".join(f"{100 * errors[g]:+.1f}%" for g in [*EXPONENTS, "one point", "now"]) + " |")
    if rows:
        print("| largest error | | | | | " + " | ".join(
            f"{100 * max(abs(r[-1][g]) for r in rows):.1f}%" for g in [*EXPONENTS, "one point", "now"]) + " |")
        print("| within 5% | | | | | " + " | ".join(
            f"{sum(abs(r[-1][g]) <= 0.05 for r in rows)} of {len(rows)}" for g in [*EXPONENTS, "one point", "now"])
            + " |")


if __name__ == "__main__":
    main()
