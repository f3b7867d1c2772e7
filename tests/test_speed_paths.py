"""The opt-in speed paths: compiled batch-1 decoding (`--compile`) and Muon (`--matrix_optimizer muon`). Each must
compute what the plain path computes (same greedy tokens; a real Muon step) and survive what users do with it
(context slides, checkpoints and resume)."""

import json

import pytest

from helpers import TINY_MODEL_ARGS


def _tiny_model(tok, model_type="llama", context=24):
    from types import SimpleNamespace

    import torch
    from transformers import AutoModelForCausalLM

    from tinyllm.config import ModelArguments
    from tinyllm.hub import make_generation_config
    from tinyllm.modeling import build_config

    cfg = build_config(ModelArguments(model_type=model_type, preset="nano", n_layer=2, n_embd=32, n_head=2),
                       len(tok), context, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # weights large enough that every position of the context moves the logits
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.3)
    model.generation_config = make_generation_config(tok, SimpleNamespace(
        gen_temperature=0.8, gen_top_k=40, gen_top_p=0.95, gen_repetition_penalty=1.1, gen_max_new_tokens=256))
    return model


def test_compiled_decoding_gives_the_eager_tokens_across_slides(bpe_tokenizer):
    """Sampling through the compiled static-cache step picks the eager loop's tokens for the same seed (its logits
    agree to ~1e-6 here), across several context slides (60 new tokens, context 24)."""
    import torch

    from tinyllm.inference import fast_decode
    from tinyllm.inference.fast_decode import fast_processors
    from tinyllm.inference.generation import compile_decoding, generate_ids

    tok = bpe_tokenizer
    model = _tiny_model(tok)
    assert fast_processors(model, {"do_sample": True}) is not None  # the lean loop, not generate()
    prompt = tok("Once upon a time")["input_ids"]
    never = [tok.pad_token_id]
    sampling = {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "repetition_penalty": 1.0}
    torch.manual_seed(3)
    eager = generate_ids(model, prompt, 60, eos=never, **sampling).ids
    calls = []
    assert compile_decoding(model)
    decoder = fast_decode.compiled_decoder(model)
    step = decoder.step
    decoder.step = lambda *a: calls.append(1) or step(*a)  # count the compiled steps taken
    try:
        torch.manual_seed(3)
        compiled = generate_ids(model, prompt, 60, eos=never, **sampling).ids
    finally:
        fast_decode.disable_compiled_decoding(model)
    assert fast_decode.compiled_decoder(model) is None and not any("compiled" in k for k in model.__dict__)
    assert not any("compiled" in k for k in model.state_dict())
    n_compiled = len(calls)
    torch.manual_seed(3)
    assert generate_ids(model, prompt, 60, eos=never, **sampling).ids == eager
    assert len(calls) == n_compiled  # detached: decoding is eager again
    assert len(eager) > 30 and compiled == eager  # > 30 tokens with a context of 24: slides
    assert len(calls) > 20  # the compiled step did the decoding (one per token after each window's first)



def test_compiled_step_logits_equal_a_full_forward(bpe_tokenizer):
    """Each compiled one-token step over the static cache gives the logits of running the whole sequence."""
    import torch

    from tinyllm.inference.fast_decode import CompiledDecoder

    model = _tiny_model(bpe_tokenizer)
    torch.manual_seed(5)
    seq = torch.randint(3, len(bpe_tokenizer), (1, 20))
    decoder = CompiledDecoder(model, 24)
    with torch.inference_mode():
        got = [decoder.prefill(seq[:, :8])]
        got += [decoder.step(seq[:, i:i + 1], torch.tensor([i])) for i in range(8, 20)]
        for n, logits in zip(range(8, 21), got):
            want = model(input_ids=seq[:, :n]).logits[:, -1, :]
            assert torch.allclose(logits, want, atol=1e-4), n


def test_newton_schulz_orthogonalises_every_matrix_of_a_batch():
    import torch

    from tinyllm.training.optim import newton_schulz

    torch.manual_seed(0)
    g = torch.randn(3, 16, 40) * torch.tensor([1e-3, 1.0, 50.0]).view(3, 1, 1)  # any scale
    for batch in (g, g.mT):  # wide and tall
        s = torch.linalg.svdvals(newton_schulz(batch))
        assert s.min() > 0.5 and s.max() < 1.3, s  # the reference iteration's band around 1
    one = newton_schulz(g[1])
    assert torch.allclose(one, newton_schulz(g)[1], atol=1e-5)  # batched = one at a time


def test_muon_steps_matrices_and_adamw_the_rest_and_resumes_exactly(bpe_tokenizer):
    """Hidden matrices get Muon (an update whose singular values are ~lr), embeddings/norms AdamW; a state_dict
    round trip continues exactly like the uninterrupted optimizer."""
    import copy

    import torch

    from tinyllm.training.optim import MuonFactory, MuonWithAdamW, muon_parameter_names

    model = _tiny_model(bpe_tokenizer).train()
    names = muon_parameter_names(model)
    assert names and all(".layers." in n for n in names) and not any("embed" in n or "norm" in n for n in names)

    def make(m):
        return MuonFactory()(m, lr=1e-3, muon_lr=0.02, weight_decay=0.1, muon_weight_decay=0.0)

    ids = torch.randint(0, len(bpe_tokenizer), (4, 16))

    def step(m, opt):
        m(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()

    twin = copy.deepcopy(model)
    opt = make(model)
    assert isinstance(opt, MuonWithAdamW)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    step(model, opt)
    for n, p in model.named_parameters():
        delta = p.detach() - before[n]
        assert delta.abs().max() > 0, n
        if n in names:  # an orthogonalised update: singular values near lr (0.02), whatever the gradient's scale
            s = torch.linalg.svdvals(delta)
            assert 0.01 < s.median() < 0.03 and s.max() < 0.04, (n, s)
    twin_opt = make(twin)
    step(twin, twin_opt)
    state = copy.deepcopy(twin_opt.state_dict())
    resumed = make(twin)
    resumed.load_state_dict(state)
    for group in resumed.param_groups:
        group["lr"] *= 0.5  # a scheduler's change must reach both halves
    for group in opt.param_groups:
        group["lr"] *= 0.5
    step(model, opt)
    step(twin, resumed)
    for (n, a), b in zip(model.named_parameters(), twin.parameters()):
        assert torch.allclose(a, b, atol=1e-6), n


def test_pretrain_with_muon_learns_and_resumes(tmp_path, builtin_docs):
    """`--matrix_optimizer muon` through Trainer: the loss falls, a checkpoint holds the optimizer state, and
    resuming from it finishes the run."""
    from tinyllm.cli import run

    out = tmp_path / "muon"
    common = ["--dataset_name", "builtin", "--builtin_num_documents", "300", "--vocab_size", "300",
              "--output_dir", str(out), "--eval_steps", "20", "--matrix_optimizer", "muon", *TINY_MODEL_ARGS]
    common[common.index("--save_steps") + 1] = "20"
    assert run("pretrain", [*common, "--max_steps", "20"]) == 0
    assert (out / "checkpoint-20" / "optimizer.pt").is_file()
    assert run("pretrain", [*common, "--max_steps", "40", "--resume_from_checkpoint", "true"]) == 0
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert history[-1]["step"] == 40 and losses[-1] < 0.88 * losses[0], losses  # 5.74 -> 4.89 measured
    evals = [h["step"] for h in history if "eval_loss" in h]
    assert len(evals) == len(set(evals))  # the final evaluation is Trainer's, not repeated


@pytest.mark.parametrize("argv, expected", [
    (["--lr_scheduler_kwargs", '{"min_lr_rate": 0.0}'], {"min_lr_rate": 0.0}),
    (["--lr_scheduler_kwargs={min_lr_rate: 0.2}"], {"min_lr_rate": 0.2}),
    (["--lr_scheduler_type", "linear"], {}),  # the default min_lr_rate belongs to the default schedule
])
def test_mapping_options_parse_from_the_command_line(argv, expected):
    from tinyllm.cli import COMMANDS, parse_args

    objs = parse_args(COMMANDS["pretrain"].types, ["--output_dir", "/tmp/x", *argv])
    args = [o for o in objs if hasattr(o, "lr_scheduler_kwargs")][0]
    assert args.lr_scheduler_kwargs == expected


@pytest.mark.parametrize("command, argv, needle", [
    ("pretrain", ["--lr_scheduler_type", "linear", "--lr_scheduler_kwargs", '{"min_lr_rate": 0.0}'], "min_lr_rate"),
    ("pretrain", ["--lr_scheduler_kwargs", "[1, 2]"], "mapping"),
    ("pretrain", ["--matrix_optimizer", "muonn"], "did you mean 'muon'"),
    ("sft", ["--lr_scheduler_kwargs", '{"min_lr_rate": 0.1}'], "min_lr_rate"),  # SFT's cosine takes no minimum
])
def test_bad_optimizer_settings_are_one_line_errors(command, argv, needle):
    from tinyllm.cli import COMMANDS, parse_args
    from tinyllm.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        parse_args(COMMANDS[command].types, ["--output_dir", "/tmp/x", *argv])
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_quick_exit_commands_keep_their_output_and_exit_status(tmp_path):
    """`tinyllm generate/chat/plan/report` end with os._exit (no ~1 s interpreter finalization): everything they
    printed, piped and not a terminal, still arrives, the exit status is kept, and a redirected log is whole."""
    import os
    import subprocess
    import sys

    from helpers import REPO

    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # piped stdout is block-buffered

    def run_cli(*args):
        return subprocess.run([sys.executable, "-m", "tinyllm", *args], capture_output=True, text=True, cwd=REPO,
                              env=env, timeout=120)

    ok = run_cli("plan", "--config", "recipes/configs/quickstart.yaml")
    assert ok.returncode == 0 and "time estimate:" in ok.stdout and ok.stdout.splitlines()[-1].startswith("fits in")
    bad = run_cli("generate", "--model", str(tmp_path / "missing"), "--prompt", "x")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        f"tinyllm generate: error: model folder not found: {tmp_path / 'missing'}; train one first "
        f"(recipes/pretrain.py) or fix the path"]


@pytest.mark.parametrize("kind", ["llama", "gpt2", "lora"])
def test_chunked_loss_equals_the_models_own_loss_and_gradients(kind, bpe_tokenizer, monkeypatch, tmp_path):
    """TinyTrainer's chunked loss (no full logits tensor) gives the loss and the gradients of the model's own
    loss: plain models, and a LoRA model whose chat-token embedding rows are trained (peft wraps the tied head)."""
    from types import SimpleNamespace

    import torch
    from transformers import AutoModelForCausalLM

    from tinyllm.config import ModelArguments
    from tinyllm.modeling import build_config
    from tinyllm.training import chunked_loss
    from tinyllm.training.arguments import PretrainingArguments
    from tinyllm.training.callbacks import TinyTrainer
    from tinyllm.training.sft import build_lora_model, chat_token_ids

    tok = bpe_tokenizer
    cfg = build_config(ModelArguments(model_type="gpt2" if kind == "gpt2" else "llama", n_layer=2, n_embd=32,
                                      n_head=2), len(tok), 32, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    if kind == "lora":
        lora = SimpleNamespace(use_lora=True, lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_target_modules=None,
                               train_chat_token_embeddings=True)
        model = build_lora_model(model, lora, chat_token_ids(tok))
    model.train()
    ids = torch.randint(5, len(tok), (3, 24))
    ids[0, :2] = torch.tensor(chat_token_ids(tok))  # the trained rows are used
    labels = ids.clone()
    labels[:, :5] = -100  # a masked prompt, as in SFT
    trainer = TinyTrainer(model=model, args=PretrainingArguments(output_dir=str(tmp_path), report_to="none",
                                                                 eval_strategy="no"))

    def loss_and_grads(force: bool):
        monkeypatch.setattr(chunked_loss, "MIN_LOGITS", 0 if force else 1 << 60)
        monkeypatch.setattr(chunked_loss, "CHUNK_TOKENS", 7)  # several chunks, one with nothing supervised
        model.zero_grad()
        loss = trainer.compute_loss(model, {"input_ids": ids, "labels": labels})
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, plain_grads = loss_and_grads(False)
    chunked, chunked_grads = loss_and_grads(True)
    assert torch.allclose(plain, chunked, rtol=1e-5)
    assert plain_grads.keys() == chunked_grads.keys() and plain_grads
    for name, grad in plain_grads.items():
        assert torch.allclose(grad, chunked_grads[name], rtol=1e-4, atol=1e-6), name
