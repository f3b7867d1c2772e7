"""Exact match after light normalisation (surrounding whitespace, repeated spaces, case), as a local
`evaluate` module: `evaluate.load("path/to/exact_match.py")` works offline."""

import re

import datasets
import evaluate

_DESCRIPTION = """Share of predictions equal to their reference after stripping surrounding whitespace, collapsing
internal runs of whitespace and (by default) lower-casing. Returns {"exact_match": float in [0, 1]}."""

_KWARGS = """
Args:
    predictions (list of str): generated answers.
    references (list of str): expected answers.
    ignore_case (bool): compare case-insensitively (default True).
Returns:
    exact_match (float): fraction of exact matches.
"""


def _norm(text: str, ignore_case: bool) -> str:
    text = re.sub(r"\s+", " ", text.strip())
    return text.lower() if ignore_case else text


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class ExactMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, ignore_case=True):
        if not predictions:
            return {"exact_match": 0.0}
        hits = sum(_norm(p, ignore_case) == _norm(r, ignore_case) for p, r in zip(predictions, references))
        return {"exact_match": hits / len(predictions)}
