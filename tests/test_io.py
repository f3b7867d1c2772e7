"""Output folders are never half-written."""

import pytest

from tinyllm.io import staged_into


def test_staged_into_moves_everything_or_nothing(tmp_path):
    dest = tmp_path / "run"
    (dest / "checkpoint-5").mkdir(parents=True)
    (dest / "adapter").mkdir()
    (dest / "adapter" / "old.bin").write_text("old")
    with pytest.raises(RuntimeError):
        with staged_into(dest) as staging:
            (staging / "model.safetensors").write_text("half")
            raise RuntimeError("crash while saving")
    assert sorted(p.name for p in dest.iterdir()) == ["adapter", "checkpoint-5"]  # no staging left behind
    with staged_into(dest) as staging:
        (staging / "model.safetensors").write_text("new")
        (staging / "adapter").mkdir()
        (staging / "adapter" / "new.bin").write_text("new")
    assert sorted(p.name for p in dest.iterdir()) == ["adapter", "checkpoint-5", "model.safetensors"]
    assert [p.name for p in (dest / "adapter").iterdir()] == ["new.bin"]  # replaced, not merged
