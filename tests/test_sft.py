"""SFT: the label mask, the frozen base, merged-vs-adapter agreement, stop behaviour, and bad input."""

import json
import subprocess
import sys

import pytest

from helpers import assert_user_error, run_inprocess, run_python
from tinyllm.data.sft_data import row_to_messages, tokenize_conversation
from tinyllm.data.tokenizer import IM_END

SFT_ARGS = ["--max_steps", "12", "--per_device_train_batch_size", "8", "--logging_steps", "4", "--eval_steps", "6",
            "--report_to", "none", "--learning_rate", "0.01", "--warmup_steps", "2", "--save_steps", "1000",
            "--eval_max_new_tokens", "8", "--max_seq_length", "96"]


def _base(tmp_path_factory, tokenizer, model_type):
    import torch
    from transformers import AutoModelForCausalLM

    from tinyllm.config import ModelArguments
    from tinyllm.modeling import build_config

    margs = ModelArguments(model_type=model_type, preset="nano", n_layer=2, n_embd=64, n_head=2)
    cfg = build_config(margs, len(tokenizer), 128, tokenizer.bos_token_id, tokenizer.eos_token_id,
                       tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    path = tmp_path_factory.mktemp(f"base_{model_type}")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def base_llama(tmp_path_factory, bpe_tokenizer):
    return _base(tmp_path_factory, bpe_tokenizer, "llama")


@pytest.mark.parametrize("row", [
    {"instruction": "Name a color.", "input": "", "output": "Blue."},
    {"instruction": "Translate", "input": "猫", "output": "cat"},
    {"question": "What does a cat say?", "answer": "A cat says meow."},
    {"prompt": "2+2=", "completion": "4"},
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"},
                  {"role": "user", "content": "猫怎么叫？"}, {"role": "assistant", "content": "猫会说喵喵。"}]},
])
def test_supervised_tokens_decode_to_exactly_the_answers(bpe_tokenizer, row):
    msgs = row_to_messages(row, "test")
    ids, labels = tokenize_conversation(bpe_tokenizer, msgs)
    supervised = bpe_tokenizer.decode([t for t, lab in zip(ids, labels) if lab != -100])
    expected = "".join(m["content"] + IM_END for m in msgs if m["role"] == "assistant")
    assert supervised == expected
    assert labels[-1] == -100  # the newline after <|im_end|> is formatting, not supervised


def test_alpaca_input_is_part_of_the_prompt():
    msgs = row_to_messages({"instruction": "Translate", "input": "猫", "output": "cat"}, "x")
    assert msgs[0] == {"role": "user", "content": "Translate\n\n猫"}


def test_collator_pads_right_and_refuses_a_batch_that_supervises_nothing(bpe_tokenizer):
    from tinyllm.data.sft_data import SFTCollator
    from tinyllm.errors import DataError

    batch = SFTCollator(bpe_tokenizer)([{"input_ids": [0, 5, 6], "labels": [-100, 5, 6]},
                                        {"input_ids": [0, 7], "labels": [-100, 7]}])
    assert batch["input_ids"][1].tolist() == [0, 7, bpe_tokenizer.pad_token_id]
    assert batch["labels"][1].tolist() == [-100, 7, -100] and batch["attention_mask"][1].tolist() == [1, 1, 0]
    with pytest.raises(DataError, match="supervises 0 tokens"):
        SFTCollator(bpe_tokenizer)([{"input_ids": [0, 5, 6], "labels": [-100, -100, -100]}])


@pytest.fixture(scope="module")
def sft_run(base_llama, tmp_path_factory):
    from tinyllm.cli import run

    out = tmp_path_factory.mktemp("sft") / "chat"
    code = run("sft", ["--model_name_or_path", str(base_llama), "--dataset_name", "builtin_qa",
                       "--output_dir", str(out), *SFT_ARGS])
    assert code == 0
    return out


def test_sft_output_layout_and_metrics(sft_run):
    for name in ["model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "README.md",
                 "adapter/adapter_config.json", "adapter/adapter_model.safetensors", "all_results.json"]:
        assert (sft_run / name).is_file(), name
    res = json.loads((sft_run / "all_results.json").read_text())
    assert res["merge_max_abs_logit_diff"] < 1e-3
    assert 0 < res["trainable_parameters"] < res["total_parameters"] * 0.5
    assert "exact_match_before" in res and "exact_match" in res and "eval_answer_loss" in res
    assert res["eval_answer_loss"] < res["eval_answer_loss_before"]  # the answers got more likely
    gen = json.loads((sft_run / "generation_config.json").read_text())
    tok = json.loads((sft_run / "tokenizer.json").read_text())
    im_end = next(t["id"] for t in tok["added_tokens"] if t["content"] == IM_END)
    assert im_end in gen["eos_token_id"]


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # inside peft's loader
def test_merged_model_matches_adapter_and_base_stayed_frozen(sft_run, base_llama):
    import torch
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[0, 10, 20, 30, 40, 50]])
    adapter = AutoPeftModelForCausalLM.from_pretrained(sft_run / "adapter").eval()
    merged = AutoModelForCausalLM.from_pretrained(sft_run).eval()
    base = AutoModelForCausalLM.from_pretrained(base_llama).eval()
    with torch.no_grad():
        a, m, b = adapter(input_ids=ids).logits, merged(input_ids=ids).logits, base(input_ids=ids).logits
    assert torch.allclose(a, m, atol=1e-4)
    assert not torch.allclose(m, b, atol=1e-4)  # SFT changed the model
    # the base weights inside the adapter model are the untouched pretrained ones
    base_sd = base.state_dict()
    for name, p in adapter.get_base_model().named_parameters():
        key = name.replace(".base_layer", "")
        if "lora_" in name or "trainable_tokens" in name or key not in base_sd:
            continue
        assert torch.equal(p, base_sd[key]), name


def test_sft_trains_exactly_the_chat_token_rows_of_the_embeddings(sft_run, base_llama):
    """tinyllm's tokenizers reserve <|im_start|>/<|im_end|> but pretraining never sees them, so SFT trains those
    two embedding rows (and no others) besides the LoRA matrices: compare the merged model with its base."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tinyllm.training.sft import chat_token_ids

    tok = AutoTokenizer.from_pretrained(sft_run)
    chat_ids = chat_token_ids(tok)
    assert chat_ids == [tok.convert_tokens_to_ids(t) for t in ("<|im_start|>", IM_END)]
    merged = AutoModelForCausalLM.from_pretrained(sft_run).get_input_embeddings().weight.detach()
    base = AutoModelForCausalLM.from_pretrained(base_llama).get_input_embeddings().weight.detach()
    changed = (merged != base).any(dim=1).nonzero().flatten().tolist()
    assert changed == sorted(chat_ids)


@pytest.mark.slow
def test_pipeline_chats_in_fresh_process(sft_run, tmp_path):
    code = (
        "import sys\nfrom transformers import pipeline\n"
        f"pipe = pipeline('text-generation', model={str(sft_run)!r})\n"
        "out = pipe([{'role': 'user', 'content': 'What does a cat say?'}], max_new_tokens=8)\n"
        "msgs = out[0]['generated_text']\n"
        "assert msgs[-1]['role'] == 'assistant' and isinstance(msgs[-1]['content'], str)\n"
        "assert 'peft' not in sys.modules and 'tinyllm' not in sys.modules\nprint('ok')\n"
    )
    assert run_python(code, tmp_path).strip().endswith("ok")


@pytest.mark.slow
def test_chat_command_multi_turn(sft_run):
    res = subprocess.run([sys.executable, "-m", "tinyllm", "chat", "--model", str(sft_run), "--max_new_tokens", "6"],
                         input="What does a cat say?\n/reset\n猫怎么叫？\n/exit\n", capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("bot> ") == 2 and "(history cleared)" in res.stdout


def test_full_finetuning_and_gpt2(tmp_path_factory, bpe_tokenizer, tmp_path, capsys):
    base = _base(tmp_path_factory, bpe_tokenizer, "gpt2")
    code, _, err = run_inprocess(capsys, "sft", "--model_name_or_path", base, "--output_dir", tmp_path / "lora",
                                 *SFT_ARGS, "--max_steps", "4")
    assert code == 0, err
    code, _, err = run_inprocess(capsys, "sft", "--model_name_or_path", base, "--output_dir", tmp_path / "full",
                                 "--use_lora", "false", *SFT_ARGS, "--max_steps", "4")
    assert code == 0, err
    assert not (tmp_path / "full" / "adapter").exists() and (tmp_path / "full" / "model.safetensors").is_file()


def test_bad_inputs(base_llama, tmp_path, capsys, bpe_tokenizer):
    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"question": "q", "answer": "a"}\n{"query": "q2", "response": "a2"}\n')
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"question": "q", "answer": "  "}\n')
    no_tok = tmp_path / "no_tok"
    no_tok.mkdir()
    (no_tok / "config.json").write_text((base_llama / "config.json").read_text())
    not_lm = tmp_path / "not_lm"
    not_lm.mkdir()
    cfg = json.loads((base_llama / "config.json").read_text())
    cfg["architectures"] = ["LlamaForSequenceClassification"]
    (not_lm / "config.json").write_text(json.dumps(cfg))
    bpe_tokenizer.save_pretrained(not_lm)
    cases = [
        (["--model_name_or_path", base_llama, "--dataset_name", missing], f"{missing}:2"),
        (["--model_name_or_path", base_llama, "--dataset_name", empty], "empty answer"),
        (["--model_name_or_path", no_tok], "no tokenizer"),
        (["--model_name_or_path", not_lm], "not a causal language model"),
        (["--model_name_or_path", tmp_path / "nope"], "not found"),
    ]
    for extra, needle in cases:
        code, _, err = run_inprocess(capsys, "sft", *SFT_ARGS, "--output_dir", tmp_path / "o", *extra)
        line = assert_user_error(code, err, needle)
        if "missing" in str(extra[-1]):
            assert "Alpaca" in line and "messages" in line  # names the accepted layouts
    assert not (tmp_path / "o").exists()


def test_long_chats_drop_the_oldest_turns_to_fit(bpe_tokenizer):
    """The rule the chat command and the server share: keep the system message and the last user turn, drop the
    oldest turns until the prompt fits."""
    from tinyllm.inference.chat import encode_chat, fit_conversation

    msgs = [{"role": "system", "content": "Be kind."}]
    for i in range(10):
        msgs += [{"role": "user", "content": f"Question {i}: what does a cat say?"},
                 {"role": "assistant", "content": "A cat says meow."}]
    msgs.append({"role": "user", "content": "And a dog?"})
    full = len(encode_chat(bpe_tokenizer, msgs))
    kept, dropped, ids = fit_conversation(bpe_tokenizer, msgs, budget=full // 3)
    assert len(ids) <= full // 3 and dropped > 0
    assert kept[0] == msgs[0] and kept[-1] == msgs[-1] and kept[1]["role"] == "user"
    assert ids == encode_chat(bpe_tokenizer, kept)
    assert fit_conversation(bpe_tokenizer, msgs, budget=full) == (msgs, 0, encode_chat(bpe_tokenizer, msgs))


@pytest.mark.parametrize("style", ["chatml", "zephyr", "llama3"])
def test_label_mask_without_generation_markers(bpe_tokenizer, style):
    """Templates without {% generation %} markers (most models' own) still supervise exactly each answer and its
    end-of-turn token."""
    import copy

    templates = {
        "chatml": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                  "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
        "zephyr": "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
                  "{% if add_generation_prompt %}<|assistant|>\n{% endif %}",
        "llama3": "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}<|im_end|>\n\n"
                  "{{ m['content'] | trim }}<|pad|>{% endfor %}",
    }
    eot = {"chatml": IM_END, "zephyr": bpe_tokenizer.eos_token, "llama3": "<|pad|>"}[style]
    tok = copy.deepcopy(bpe_tokenizer)
    tok.chat_template = templates[style]
    msgs = [{"role": "user", "content": "猫怎么叫？"}, {"role": "assistant", "content": "猫会说喵喵。"},
            {"role": "user", "content": "And a dog?"}, {"role": "assistant", "content": "A dog says woof."}]
    ids, labels = tokenize_conversation(tok, msgs)
    supervised = tok.decode([t for t, lab in zip(ids, labels) if lab != -100])
    assert supervised == "猫会说喵喵。" + eot + "A dog says woof." + eot
    from tinyllm.inference.chat import end_of_turn_token

    assert end_of_turn_token(tok) == eot


def test_sft_data_is_tokenized_once_and_cached(tmp_path, bpe_tokenizer, monkeypatch):
    """QA rows go through datasets.map with a fingerprint of rows, tokenizer and options: a second run loads the
    Arrow cache instead of tokenizing again; a changed file is tokenized again."""
    from tinyllm.config import DataArguments, SFTArguments
    from tinyllm.data import sft_data

    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": f"{i + 1}."}) + "\n"
                            for i in range(300)))
    calls = []
    real = sft_data.tokenize_conversation
    monkeypatch.setattr(sft_data, "tokenize_conversation", lambda *a: calls.append(1) or real(*a))
    data = DataArguments(dataset_name=str(path), validation_split_percentage=10, cache_dir=str(tmp_path / "c"))
    first = sft_data.build_sft_datasets(data, SFTArguments(), bpe_tokenizer, seed=0)
    assert len(calls) == 300 and first.stats["train_examples"] == 270 and len(first.eval_conversations) == 30
    second = sft_data.build_sft_datasets(data, SFTArguments(), bpe_tokenizer, seed=0)
    assert len(calls) == 300, "the second run tokenized again instead of loading the cache"
    assert second.train[5] == first.train[5] and second.stats == first.stats
    sft_data.build_sft_datasets(data, SFTArguments(max_seq_length=64), bpe_tokenizer, seed=0)
    assert len(calls) == 600  # other options: other cache
