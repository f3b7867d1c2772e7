"""Local `evaluate` metric modules, loaded by path so no Hub download is needed:

    import evaluate
    from tinyllm.evaluation.metrics import metric_path
    em = evaluate.load(metric_path("exact_match"))
"""

from pathlib import Path

__all__ = ["metric_path"]


def metric_path(name: str) -> str:
    path = Path(__file__).parent / name / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"no local metric '{name}' in {path.parent.parent}")
    return str(path)
