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


TINY_PROMPTS = ["Once upon a time", "从前，有一只", "A cat likes to eat"]
TINY_MODEL_ARGS = ["--model_type", "llama", "--preset", "nano", "--n_layer", "2", "--n_embd", "64", "--n_head", "2",
                   "--block_size", "32", "--per_device_train_batch_size", "8", "--report_to", "none",
                   "--logging_steps", "5", "--warmup_steps", "5", "--save_steps", "1000", "--plot_loss", "true",
                   "--sample_max_new_tokens", "8", "--dataloader_num_workers", "0"]


def run_python(code: str, cwd) -> str:
    """Run a Python snippet in a fresh interpreter (no tinyllm imported); return its stdout, assert success."""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


# Foreign base models: how other projects ship them (used by test_foreign.py and benchmarks/byo_base.py)
ZEPHYR = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
          "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
OTHER_CHATML = ("{% for m in messages %}<|start|>{{ m['role'] }}\n{{ m['content'] }}<|end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|start|>assistant\n{% endif %}")
STYLES = {  # name: (model type, special tokens, bos, eos, chat template, end-of-turn token)
    "zephyr": ("llama", ["<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"], "<s>", "</s>", ZEPHYR, "</s>"),
    "other_chatml": ("llama", ["<s>", "</s>", "<|start|>", "<|end|>"], "<s>", "</s>", OTHER_CHATML, "<|end|>"),
    "gpt2_plain": ("gpt2", ["<|endoftext|>"], "<|endoftext|>", "<|endoftext|>", None, "<|im_end|>"),
}
def build_foreign(folder, docs, style):
    """A tiny random "foreign" model folder of one of STYLES, with its own byte-level BPE tokenizer."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PreTrainedTokenizerFast

    model_type, specials, bos, eos, template, _ = STYLES[style]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's own split
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(docs, trainers.BpeTrainer(vocab_size=700, special_tokens=specials,
                                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                             show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=bos, eos_token=eos, chat_template=template,
                                  clean_up_tokenization_spaces=False)
    common = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    if model_type == "gpt2":
        cfg = GPT2Config(n_layer=2, n_head=2, n_embd=64, n_positions=256, **common)
    else:
        cfg = LlamaConfig(num_hidden_layers=2, num_attention_heads=2, hidden_size=64, intermediate_size=128,
                          max_position_embeddings=256, **common)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    path = Path(folder) / style
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
