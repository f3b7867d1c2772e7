"""The pretraining forecast (`--forecast`, training/forecast.py) replayed on finished runs: how far off it was, and
what other ways of drawing the curve through the same cooled-down copies would have said.

    python benchmarks/speedrun_forecast.py /tmp/grid/speedrun_* [/tmp/run ...]

Each argument is a speedrun folder (its pretrain/ is read) or a `tinyllm pretrain --forecast true` output folder
(forecast.json, all_results.json). Columns: the forecast as the run made it (at the number of steps then expected),
this checkout's rule at the steps the run really took (what the estimate of the steps cost, and what a change of the
rule since the run would have said: with the floor under E, the built-in corpus's entropy plus what block starts
cost), and the curve through the last two copies with the exponent fixed instead of fitted on three; then the
forecast revised where the run's
cool-down began, as the run made it and by this checkout's rule (`revised_loss`, from the losses forecast.json
keeps: the run's at the copy and at 80%, the copy's). The forecast does not change the run, so these are the
forecasts the run would have made. Prints a Markdown table and, per column, the runs within 5%.
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tinyllm.data.builtin import loss_floor  # noqa: E402
from tinyllm.training.forecast import PowerLaw, revised_loss  # noqa: E402
from tinyllm.training.sizing import effective_tokens  # noqa: E402

FIXED = (0.28, 0.5, 0.75, 1.0)


def load(folder: Path) -> tuple[dict, dict] | None:
    for f in (folder / "pretrain", folder):
        if (f / "forecast.json").is_file() and (f / "all_results.json").is_file():
            fc = json.loads((f / "forecast.json").read_text())
            cfg = json.loads((f / "config.json").read_text()) if (f / "config.json").is_file() else {}
            fc["block_size"] = cfg.get("max_position_embeddings") or cfg.get("n_positions")
            return fc, json.loads((f / "all_results.json").read_text())
    return None


def floor(fc: dict, res: dict) -> float:
    """The lowest loss there is by this checkout's rule (builtin.loss_floor): the built-in corpus's entropy as nats
    per token, from its bits per char and the run's own loss per char, plus what each block's start costs; 0 for any
    other corpus."""
    if res.get("entropy_floor_bits_per_char") and res.get("eval_bits_per_char") and fc.get("block_size"):
        return loss_floor(res["entropy_floor_bits_per_char"] * res["eval_loss"] / res["eval_bits_per_char"],
                          fc["block_size"])
    return 0.0


def main(folders: list[str]) -> None:
    cols = ["as made", "rule, real steps"] + [f"g={g:g}, last two" for g in FIXED] + ["revised as made",
                                                                                     "revised, rule"]
    print("| run | copies (step + cool-down: loss) | fitted g | steps expected / real | achieved | "
          + " | ".join(cols) + " |")
    print("|---" * (5 + len(cols)) + "|")
    hits = [0] * len(cols)
    n = 0
    for name in folders:
        got = load(Path(name))
        if got is None or not got[0].get("forecast"):
            continue
        fc, res = got
        n += 1
        unique, per_step = fc["unique_tokens"], fc["tokens_per_step"]
        xs = [(effective_tokens(p["tokens"], unique), p["loss"]) for p in fc["points"]]
        real = res["time_budget_steps"]
        achieved = res.get("eval_loss")
        at = effective_tokens(real * per_step, unique)
        law = PowerLaw.through3(xs, floor(fc, res))
        (x2, l2), (x3, l3) = sorted(xs)[1:]
        preds = [fc["forecast"]["loss"], law.predict(at)] + [PowerLaw.through2(x2, l2, x3, l3, g).predict(at)
                                                             for g in FIXED]
        rev, last = fc.get("revision"), fc["points"][-1]
        if rev and last.get("run_loss"):
            again = revised_loss(rev["run_loss"], last["loss"], last["run_loss"], floor(fc, res))[0]
            preds += [rev["loss"], min(again, rev["loss"]) if rev.get("kept") else again]
        else:
            preds += [None, None]
        errors = [p / achieved - 1 if p is not None else None for p in preds]
        hits = [h + (e is not None and abs(e) <= 0.05) for h, e in zip(hits, errors)]
        copies = ", ".join(f"{p['step']}+{p['steps'] - p['step']}: {p['loss']:.3f}" for p in fc["points"])
        print(f"| {Path(name).name} | {copies} | {law.g:.2f} | {fc['forecast']['total_steps']} / {real} | "
              f"{achieved:.3f} | " + " | ".join(f"{p:.3f} ({e:+.1%})" if p is not None else "—"
                                                for p, e in zip(preds, errors)) + " |")
    print(f"| within 5% (of {n}) | | | | | " + " | ".join(str(h) for h in hits) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
