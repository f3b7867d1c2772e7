"""Device and precision policy: what each device gets, and that Trainer will actually use it."""

import pytest

from tinyllm import device as dev
from tinyllm.errors import ConfigError


def _args(**kw):
    from tinyllm.training.arguments import PretrainingArguments

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
    args = _args(precision=precision)  # the policy runs inside __post_init__, before TrainingArguments' own
    line = dev.describe_device(args)
    assert args.mixed_precision == expected  # derived by TrainingArguments itself: what Trainer passes to accelerate
    assert args.bf16 == (expected == "bf16") and args.fp16 == (expected == "fp16")
    assert line.startswith("device: ") and "precision:" in line
    # the default AdamW becomes the fused kernel on CUDA and CPU (Trainer reads args.optim when building it)
    assert (args.optim == "adamw_torch_fused") == (device in ("cuda", "cpu"))


@pytest.mark.parametrize("device, precision", [("mps", "fp16"), ("cpu", "fp16")])
def test_unsupported_precision_is_a_clear_error(monkeypatch, device, precision):
    monkeypatch.setattr(dev, "detect_device", lambda use_cpu=False: device)
    with pytest.raises(ConfigError, match="fp16"):
        _args(precision=precision)


def test_cpu_bf16_run_trains_in_bf16_autocast(tmp_path, tokenizer_dir, capsys, monkeypatch):
    """End to end on CPU: --precision bf16 reaches the Trainer's accelerator (its autocast), and the run completes."""
    from helpers import TINY_MODEL_ARGS, run_inprocess
    from tinyllm.training.callbacks import TinyTrainer

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


def test_fused_adamw_choice_is_one_trainer_can_build(monkeypatch):
    """The policy's optimizer name must be one Trainer's optimizer table knows (it is keyed by an enum)."""
    import torch
    from transformers import Trainer

    monkeypatch.setattr(dev, "detect_device", lambda use_cpu=False: "cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Fake GPU")
    args = _args()
    assert "fused AdamW" in dev.describe_device(args)
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    assert cls is torch.optim.AdamW and kwargs.get("fused") is True


@pytest.mark.parametrize("compile_, n_train, workers, drop, persistent", [
    (True, 100, 4, True, True), (True, 10, 0, False, False), (False, 100, 4, False, False),
    (True, None, 2, False, True),
])
def test_compiled_runs_avoid_the_epoch_end_recompile(compile_, n_train, workers, drop, persistent):
    args = _args(torch_compile=compile_, per_device_train_batch_size=32, dataloader_num_workers=workers)
    settings = dev.compile_loader_settings(args, n_train)
    assert settings.get("dataloader_drop_last", False) is drop  # a partial batch would change the traced shapes
    assert settings.get("dataloader_persistent_workers", False) is persistent


@pytest.mark.parametrize("device, compiler, kept", [
    ("cpu", "/usr/bin/c++", True), ("cpu", None, False), ("mps", "/usr/bin/c++", False),
])
def test_torch_compile_is_dropped_with_a_warning_where_it_cannot_work(monkeypatch, caplog, device, compiler, kept):
    import shutil

    monkeypatch.setattr(dev, "detect_device", lambda use_cpu=False: device)
    monkeypatch.setattr(shutil, "which", lambda name: compiler)
    with caplog.at_level("WARNING", logger="tinyllm.device"):
        args = _args(torch_compile=True)
    line = dev.describe_device(args)
    assert args.torch_compile is kept and ("torch.compile" in line) is kept
    assert any("torch_compile" in r.getMessage() for r in caplog.records) is not kept
    if not kept:
        assert args.torch_compile_backend is None  # Trainer builds its dynamo plugin from the backend
