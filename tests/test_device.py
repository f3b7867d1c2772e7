"""Device and precision policy: what each device gets, and that Trainer will actually use it."""

import pytest

from tinyllm import device as dev
from tinyllm.errors import ConfigError


def _args(**kw):
    from tinyllm.training_args import PretrainingArguments

    return PretrainingArguments(output_dir="/tmp/x", report_to="none", use_cpu=True, **kw)


@pytest.mark.parametrize("device, bf16_ok, precision, expected", [
    ("cuda", True, "auto", "bf16"), ("cuda", False, "auto", "fp16"), ("mps", False, "auto", "no"),
    ("cpu", False, "auto", "no"), ("cpu", False, "bf16", "bf16"), ("cuda", True, "fp32", "no"),
])
def test_policy_sets_the_mixed_precision_trainer_reads(monkeypatch, device, bf16_ok, precision, expected):
    import torch

    monkeypatch.setattr(dev, "detect_device", lambda use_cpu=False: device)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_ok)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Fake GPU")
    args = _args(precision=precision)
    line = dev.apply_precision_policy(args)
    assert args.mixed_precision == expected  # what Trainer passes to accelerate
    assert args.bf16 == (expected == "bf16") and args.fp16 == (expected == "fp16")
    assert line.startswith("device: ") and "precision:" in line


@pytest.mark.parametrize("device, precision", [("mps", "fp16"), ("cpu", "fp16")])
def test_unsupported_precision_is_a_clear_error(monkeypatch, device, precision):
    monkeypatch.setattr(dev, "detect_device", lambda use_cpu=False: device)
    with pytest.raises(ConfigError, match="fp16"):
        dev.apply_precision_policy(_args(precision=precision))


def test_cpu_bf16_run_trains_in_bf16_autocast(tmp_path, tokenizer_dir, capsys, monkeypatch):
    """End to end on CPU: --precision bf16 reaches the Trainer's accelerator (its autocast), and the run completes."""
    from helpers import TINY_MODEL_ARGS, run_inprocess
    from tinyllm.callbacks import TinyTrainer

    seen = []
    original = TinyTrainer.__init__

    def spy(self, *a, **k):
        original(self, *a, **k)
        seen.append(self.accelerator.mixed_precision)

    monkeypatch.setattr(TinyTrainer, "__init__", spy)

    code, _, err = run_inprocess(capsys, "pretrain", *TINY_MODEL_ARGS, "--dataset_name", "builtin",
                                 "--builtin_num_documents", "200", "--tokenizer_name_or_path", tokenizer_dir,
                                 "--max_steps", "3", "--eval_strategy", "no", "--precision", "bf16",
                                 "--output_dir", tmp_path / "o")
    assert code == 0, err
    assert "precision: bf16" in err
    assert seen == ["bf16"]
