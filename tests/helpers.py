"""Shared test helpers."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TINYLLM_SHARED_DATA", REPO.parent / "shared" / "data"))
needs_shared_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"real corpora not found at {SHARED_DATA} (CI provides ../shared/data)"
)


def run_cli(*args, cwd=None, env=None, timeout=300):
    """Run `python -m tinyllm ARGS` in a fresh process; return CompletedProcess with text output."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "tinyllm", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or REPO, env=full_env, timeout=timeout)


def run_inprocess(capsys, command, *args):
    """Run a tinyllm command in this process; return (exit code, stdout, stderr)."""
    from tinyllm.cli import run

    code = run(command, [str(a) for a in args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def assert_user_error(code, err, *needles):
    """A clear one-line error: non-zero status, no traceback, and the expected words."""
    assert code != 0, "expected a non-zero exit status"
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if "error:" in line]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle.lower() in lines[0].lower(), (needle, lines[0])
    return lines[0]


TINY_MODEL_ARGS = ["--model_type", "llama", "--preset", "nano", "--n_layer", "2", "--n_embd", "64", "--n_head", "2",
                   "--block_size", "32", "--per_device_train_batch_size", "8", "--report_to", "none",
                   "--logging_steps", "5", "--warmup_steps", "5", "--save_steps", "1000", "--plot_loss", "true",
                   "--sample_max_new_tokens", "8", "--dataloader_num_workers", "0"]


def run_python(code: str, cwd) -> str:
    """Run a Python snippet in a fresh interpreter (no tinyllm imported); return its stdout, assert success."""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout
