"""Bring your own base model: SFT and continued pretraining on "foreign" models built in-process, the way other
projects ship them: a Llama with a Zephyr-style template (no generation markers, no pad token), a Llama with a
ChatML-like template under other special-token names, and a GPT-2 with no chat template at all (bos == eos)."""

import json
import warnings

import pytest

from helpers import STYLES, assert_user_error, build_foreign, run_inprocess, run_python

SFT_ARGS = ["--max_steps", "30", "--per_device_train_batch_size", "8", "--report_to", "none", "--eval_strategy",
            "no", "--save_steps", "1000", "--eval_max_new_tokens", "12", "--max_seq_length", "128",
            "--learning_rate", "0.01", "--warmup_steps", "2"]


@pytest.fixture(scope="module", params=list(STYLES))
def foreign(request, tmp_path_factory, builtin_docs):
    return request.param, build_foreign(tmp_path_factory.mktemp("foreign"), builtin_docs, request.param)


@pytest.fixture(scope="module")
def sft_foreign(foreign, tmp_path_factory):
    from tinyllm.cli import run

    style, base = foreign
    out = tmp_path_factory.mktemp("foreign_sft") / f"{style}-chat"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = run("sft", ["--model_name_or_path", str(base), "--output_dir", str(out), *SFT_ARGS])
    assert code == 0
    # whether the adapter carries the embedding rows is decided by tinyllm, not left to peft's guess and warning
    assert not [w for w in caught if "save_embedding_layers" in str(w.message)]
    return style, base, out


def test_label_mask_is_exactly_the_answers_and_their_end_of_turn(foreign):
    from tinyllm.data.sft_data import tokenize_conversation
    from tinyllm.training.sft import load_base

    style, base = foreign
    _, tok = load_base(str(base))
    eot = STYLES[style][5]
    msgs = [{"role": "user", "content": "What does a cat say?"}, {"role": "assistant", "content": "A cat says meow."},
            {"role": "user", "content": "猫怎么叫？"}, {"role": "assistant", "content": "猫会说喵喵。"}]
    ids, labels = tokenize_conversation(tok, msgs)
    supervised = [t for t, lab in zip(ids, labels) if lab != -100]
    assert tok.decode(supervised) == "A cat says meow." + eot + "猫会说喵喵。" + eot
    assert sum(1 for lab in labels if lab != -100) < len(ids) // 2  # prompts and markup stay unsupervised


@pytest.mark.slow
def test_sft_on_a_foreign_model_chats_and_stops(sft_foreign, tmp_path):
    style, base, out = sft_foreign
    metrics = json.loads((out / "all_results.json").read_text())
    gen = json.loads((out / "generation_config.json").read_text())
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    eot = STYLES[style][5]
    vocab = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]
    added = {t["content"]: t["id"] for t in json.loads((out / "tokenizer.json").read_text())["added_tokens"]}
    eot_id = added.get(eot, vocab.get(eot))
    assert eot_id in gen["eos_token_id"]  # the template's end-of-turn token stops generation
    assert metrics["stopped_rate"] >= 0.9 > metrics["stopped_rate_before"]  # SFT taught it to end its answers
    assert metrics["eval_answer_loss"] < metrics["eval_answer_loss_before"]
    assert metrics["supervised_tokens"] > 0
    if style == "gpt2_plain":  # no template: ChatML was added, embeddings grown, the template saved
        cfg = json.loads((out / "config.json").read_text())
        assert cfg["vocab_size"] % 64 == 0 and cfg["vocab_size"] >= len(vocab) + 2
        assert "<|im_start|>" in (out / "chat_template.jinja").read_text() or "chat_template" in tok_cfg
    # the adapter folder holds the whole grown embedding matrix exactly when SFT grew it (else only LoRA and the
    # trained chat-token rows)
    from safetensors import safe_open

    rows = json.loads((out / "config.json").read_text())["vocab_size"]
    with safe_open(str(out / "adapter" / "adapter_model.safetensors"), "pt") as f:
        matrices = [k for k in f.keys() if f.get_slice(k).get_shape()[0] == rows]
    assert bool(matrices) == (style == "gpt2_plain"), matrices
    code = (
        "import sys\nfrom transformers import pipeline\n"
        f"pipe = pipeline('text-generation', model={str(out)!r})\n"
        "out = pipe([{'role': 'user', 'content': 'What does a cat say?'}], max_new_tokens=8, do_sample=False)\n"
        "msgs = out[0]['generated_text']\n"
        "assert msgs[-1]['role'] == 'assistant' and isinstance(msgs[-1]['content'], str)\n"
        "assert 'tinyllm' not in sys.modules and 'peft' not in sys.modules\nprint('ok')\n"
    )
    assert run_python(code, tmp_path).strip().endswith("ok")


def test_lora_covers_every_linear_layer_but_the_head(foreign):
    """tinyllm asks peft for "all-linear" (no table of names per architecture): every projection of any
    architecture gets an adapter, the output head does not, and GPT-2's Conv1D layers are marked fan_in_fan_out."""
    from types import SimpleNamespace

    from tinyllm.training.sft import build_lora_model, load_base

    style, base = foreign
    model, _ = load_base(str(base))
    lora = SimpleNamespace(use_lora=True, lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_target_modules=None,
                           train_chat_token_embeddings=False)
    peft_model = build_lora_model(model, lora, [])
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in peft_model.named_parameters() if "lora_A" in n}
    if STYLES[style][0] == "llama":
        assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    else:
        assert adapted == {"c_attn", "c_proj", "c_fc"}
        assert peft_model.peft_config["default"].fan_in_fan_out
    assert not any("lm_head" in n and "lora_" in n for n, _ in peft_model.named_parameters())
    only = build_lora_model(load_base(str(base))[0], SimpleNamespace(**{**vars(lora), "lora_target_modules":
                                                                         "q_proj" if STYLES[style][0] == "llama"
                                                                         else "c_attn"}), [])
    assert {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in only.named_parameters() if "lora_A" in n} == \
        {"q_proj" if STYLES[style][0] == "llama" else "c_attn"}


@pytest.mark.slow
def test_continued_pretraining_keeps_the_tokenizer_and_lowers_the_loss(tmp_path, tmp_path_factory, capsys,
                                                                      builtin_docs):
    # GPT-2 style: no pad token, bos == eos
    base = build_foreign(tmp_path_factory.mktemp("foreign"), builtin_docs, "gpt2_plain")
    corpus = tmp_path / "new.txt"
    corpus.write_text("<|endoftext|>".join(f"The robot number {i} likes to paint blue boxes." for i in range(400)))
    out = tmp_path / "cont"
    code, stdout, err = run_inprocess(capsys, "pretrain", "--model_name_or_path", base, "--dataset_name", corpus,
                                      "--output_dir", out, "--max_steps", "30", "--block_size", "64",
                                      "--per_device_train_batch_size", "8", "--report_to", "none",
                                      "--eval_steps", "15", "--save_steps", "1000", "--learning_rate", "0.003",
                                      "--warmup_steps", "2", "--sample_max_new_tokens", "4")
    assert code == 0, err
    metrics = json.loads((out / "all_results.json").read_text())
    assert metrics["eval_bits_per_byte"] < metrics["before_eval_bits_per_byte"]
    assert json.loads((out / "tokenizer.json").read_text())["model"]["vocab"] == \
        json.loads((base / "tokenizer.json").read_text())["model"]["vocab"]
    assert json.loads((out / "config.json").read_text())["n_embd"] == 64
    assert "bits per byte before" in (out / "README.md").read_text().replace("validation bits per byte before",
                                                                              "bits per byte before")


def test_foreign_bad_input(tmp_path, capsys, builtin_docs, tmp_path_factory):
    import shutil

    base = build_foreign(tmp_path_factory.mktemp("foreign"), builtin_docs[:300], "zephyr")
    remote = tmp_path / "remote"
    shutil.copytree(base, remote)
    cfg = json.loads((remote / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_x.X"}
    (remote / "config.json").write_text(json.dumps(cfg))
    encoder = tmp_path / "encoder"
    shutil.copytree(base, encoder)
    cfg = json.loads((encoder / "config.json").read_text())
    cfg["architectures"] = ["BertForMaskedLM"]
    (encoder / "config.json").write_text(json.dumps(cfg))
    strict = tmp_path / "strict"
    shutil.copytree(base, strict)
    tc = json.loads((strict / "tokenizer_config.json").read_text())
    tc["chat_template"] = "{{ raise_exception('roles must alternate user/assistant') }}"
    (strict / "tokenizer_config.json").write_text(json.dumps(tc))
    (strict / "chat_template.jinja").unlink(missing_ok=True)
    small = tmp_path / "small"
    shutil.copytree(base, small)
    cfg = json.loads((small / "config.json").read_text())
    cfg["vocab_size"] = 100  # fewer embedding rows than the tokenizer has tokens
    (small / "config.json").write_text(json.dumps(cfg))
    cases = [(remote, "custom code"), (encoder, "not a causal language model"), (strict, "cannot render"),
             (small, "embedding rows")]
    for folder, needle in cases:
        code, _, err = run_inprocess(capsys, "sft", "--model_name_or_path", folder, "--output_dir",
                                     tmp_path / "o", *SFT_ARGS)
        assert_user_error(code, err, needle)
    assert not (tmp_path / "o").exists()
