"""Data at scale: documents streamed from files, token shards written once and read as blocks, the held-out set
bounded by tokens, tokenizer training on a sample, and what happens when prepare is killed or the disk fills."""

import json
import os

import numpy as np
import pytest

from helpers import assert_user_error, run_inprocess


def _data(**kw):
    from tinyllm.config import DataArguments

    return DataArguments(**kw)


def _stream(path, chunk=None, monkeypatch=None, **kw):
    from tinyllm.data import documents

    if chunk:
        monkeypatch.setattr(documents, "CHUNK", chunk)
    return list(documents.CorpusStream(_data(dataset_name=str(path), **kw)))


# ---------------------------------------------------------------- documents

@pytest.mark.parametrize("chunk", [7, 64, 1 << 20])  # small chunks cut separators and characters in two
def test_blank_line_paragraphs_are_documents_streamed(tmp_path, monkeypatch, chunk):
    paragraphs = [f"Story {i}: 猫 sat.\nIt was happy {i}." for i in range(40)]
    path = tmp_path / "stories.txt"
    path.write_text("\ufeff" + "\n\n".join(paragraphs) + "\n\n\n", encoding="utf-8")  # a BOM, trailing blanks
    docs = _stream(path, chunk, monkeypatch, validation_split_percentage=10)
    assert [d for d, _ in docs] == paragraphs
    flags = [v for _, v in docs]
    assert flags == sorted(flags) and 2 <= sum(flags) <= 6  # a contiguous tail of about 10% of the bytes


@pytest.mark.parametrize("separator, expected", [
    ("auto", ["one\n\ntwo", "three"]),  # <|endoftext|> present: it wins over blank lines
    ("eot", ["one\n\ntwo", "three"]),
    ("blank_line", ["one", "two<|endoftext|>three"]),
    ("\\n", ["one", "two<|endoftext|>three"]),
])
def test_document_separators(tmp_path, separator, expected):
    path = tmp_path / "c.txt"
    path.write_text("one\n\ntwo<|endoftext|>three")
    assert [d for d, _ in _stream(path, document_separator=separator, validation_split_percentage=0)] == expected


def test_one_document_is_split_by_characters_like_nanogpt(tmp_path):
    text = "".join(f"line {i}\n" for i in range(500))
    path = tmp_path / "input.txt"
    path.write_text(text)
    docs = _stream(path, document_separator="none", validation_split_percentage=10)
    cut = int(len(text) * 0.9)
    assert docs == [(text[:cut], False), (text[cut:], True)]


def test_bad_utf8_names_the_byte_offset_even_across_chunks(tmp_path, monkeypatch):
    from tinyllm.errors import DataError

    path = tmp_path / "bad.txt"
    path.write_bytes(("a" * 20 + "\n\n").encode() + "é".encode("latin-1") + b" rest")
    with pytest.raises(DataError, match="offset 22"):
        _stream(path, 8, monkeypatch)


def test_max_documents_keeps_the_tail_of_the_first_n(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(100)))
    docs = _stream(path, max_documents=20, validation_split_percentage=10)
    assert [d for d, _ in docs] == [f"doc {i}" for i in range(20)]
    assert [d for d, v in docs if v] == ["doc 18", "doc 19"]


# ---------------------------------------------------------------- shards

@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(f"Document {i}: the dog found {i % 13} bones in the yard." for i in range(300)))
    return path


def test_shards_hold_each_document_as_the_tokenizer_encodes_it(corpus, bpe_tokenizer, tmp_path):
    from tinyllm.data.shards import TrainBlocks, prepare_shards

    data = _data(dataset_name=str(corpus), cache_dir=str(tmp_path / "cache"), validation_split_percentage=5)
    shards = prepare_shards(data, bpe_tokenizer)
    docs = _stream(corpus, validation_split_percentage=5)
    eos = bpe_tokenizer.eos_token_id
    expect = {False: [], True: []}
    for text, val in docs:
        expect[val] += bpe_tokenizer(text)["input_ids"] + [eos]  # bos + text + eos, as packing always did
    meta = shards.meta
    assert meta["dtype"] == "uint16" and meta["train"]["documents"] + meta["validation"]["documents"] == 300
    train = np.fromfile(shards.folder / "train-00000.bin", dtype=np.uint16)
    assert train.tolist() == expect[False]
    assert np.fromfile(shards.folder / "validation-00000.bin", dtype=np.uint16).tolist() == expect[True]
    assert meta["train"]["bytes"] == sum(len(t.encode()) for t, v in docs if not v)
    blocks = TrainBlocks(shards, 16)
    assert len(blocks) == len(expect[False]) // 16
    item = blocks[3]
    assert item["input_ids"].tolist() == expect[False][48:64]
    bos = bpe_tokenizer.bos_token_id
    assert item["labels"].tolist() == [-100 if t == bos else t for t in expect[False][48:64]]
    with pytest.raises(IndexError):
        blocks[len(blocks)]


def test_blocks_stay_within_a_shard_when_there_are_several(corpus, bpe_tokenizer, tmp_path, monkeypatch):
    from tinyllm.data import shards as sh

    monkeypatch.setattr(sh, "SHARD_TOKENS", 1000)
    shards = sh.prepare_shards(_data(dataset_name=str(corpus), cache_dir=str(tmp_path / "c")), bpe_tokenizer)
    files = shards.files("train")
    assert len(files) > 3 and all(n == 1000 for _, n in files[:-1])
    blocks = sh.TrainBlocks(shards, 64)
    assert len(blocks) == sum(n // 64 for _, n in files)
    whole = np.concatenate([np.fromfile(p, dtype=np.uint16) for p, _ in files])
    first_of_second = blocks.starts[1]  # the first block of the second file starts at its first token
    assert blocks[first_of_second]["input_ids"].tolist() == whole[1000:1064].tolist()


def test_evaluation_takes_whole_documents_up_to_the_token_budget(corpus, bpe_tokenizer, tmp_path):
    from tinyllm.data.shards import ValidationBlocks, prepare_shards

    shards = prepare_shards(_data(dataset_name=str(corpus), cache_dir=str(tmp_path / "c"),
                                  validation_split_percentage=30), bpe_tokenizer)
    per_doc = np.load(shards.folder / "validation-docs.npy")
    everything = ValidationBlocks(shards, 8, None)
    assert everything.documents == len(per_doc) > 20
    budget = int(per_doc[:10, 0].sum()) + 3  # ten documents and a bit: the eleventh does not fit whole
    some = ValidationBlocks(shards, 8, budget)
    assert some.documents == 10 and some.tokens == int(per_doc[:10, 0].sum())
    assert len(some) == some.tokens // 8
    docs = [t for t, v in _stream(corpus, validation_split_percentage=30) if v][:10]
    predicted = sum(len(bpe_tokenizer(d, add_special_tokens=False)["input_ids"]) + 1 for d in docs)  # text + eos
    assert some.tokens_per_byte == pytest.approx(predicted / sum(len(d.encode()) for d in docs))
    assert ValidationBlocks(shards, 8, budget)[0]["input_ids"].tolist() == some[0]["input_ids"].tolist()


def test_builtin_held_out_documents_are_the_entropy_floors(bpe_tokenizer, tmp_path):
    """The held-out set evaluation scores is exactly the documents the entropy floor is computed on."""
    from tinyllm.data.builtin import generate_corpus
    from tinyllm.data.corpora import split_documents
    from tinyllm.data.shards import ValidationBlocks, prepare_shards

    data = _data(builtin_num_documents=400, cache_dir=str(tmp_path / "c"))
    shards = prepare_shards(data, bpe_tokenizer)
    val = ValidationBlocks(shards, 8, 600)
    held = split_documents([d.text for d in generate_corpus(400, 0)], 5.0)[1][:val.documents]
    tokens = np.fromfile(shards.folder / "validation-00000.bin", dtype=np.uint16)[: val.tokens].tolist()
    texts = bpe_tokenizer.decode(tokens, skip_special_tokens=False).split(bpe_tokenizer.eos_token)
    assert [t.replace(bpe_tokenizer.bos_token, "") for t in texts if t] == held
    assert 0 < val.documents < 20  # the budget cut it, at a document boundary


def test_prepare_is_found_again_and_redone_for_an_old_format(corpus, bpe_tokenizer, tmp_path, caplog):
    from tinyllm.data.shards import FORMAT_VERSION, prepare_shards

    data = _data(dataset_name=str(corpus), cache_dir=str(tmp_path / "c"))
    first = prepare_shards(data, bpe_tokenizer)
    stamp = (first.folder / "train-00000.bin").stat().st_mtime_ns
    assert prepare_shards(data, bpe_tokenizer).folder == first.folder
    assert (first.folder / "train-00000.bin").stat().st_mtime_ns == stamp
    meta = json.loads((first.folder / "meta.json").read_text())
    meta["format"] = 0
    (first.folder / "meta.json").write_text(json.dumps(meta))
    with caplog.at_level("WARNING", logger="tinyllm"):
        again = prepare_shards(data, bpe_tokenizer)
    assert again.meta["format"] == FORMAT_VERSION
    assert any("older shard format" in r.getMessage() for r in caplog.records)
    other = bpe_tokenizer.__class__(tokenizer_object=bpe_tokenizer.backend_tokenizer, bos_token="<|pad|>",
                                    eos_token=bpe_tokenizer.eos_token)
    assert prepare_shards(data, other).folder != first.folder  # another tokenizer: other shards


def test_a_killed_prepare_leaves_nothing_that_is_read(corpus, bpe_tokenizer, tmp_path, monkeypatch):
    from tinyllm.data import shards as sh

    data = _data(dataset_name=str(corpus), cache_dir=str(tmp_path / "c"))
    calls = []
    real = sh._Writer.write

    def dies(self, tokens):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt  # Ctrl+C (or a kill) in the middle of writing
        real(self, tokens)

    monkeypatch.setattr(sh, "BATCH_BYTES", 2000)
    monkeypatch.setattr(sh._Writer, "write", dies)
    with pytest.raises(KeyboardInterrupt):
        sh.prepare_shards(data, bpe_tokenizer)
    root = tmp_path / "c" / "shards"
    assert list(root.iterdir()) == []  # no half-written folder, no temporary one
    # a temporary folder of a process that died without cleaning up is removed by the next prepare
    monkeypatch.setattr(sh._Writer, "write", real)
    key = sh.shard_key(sh.CorpusStream(data), bpe_tokenizer)
    stale = root / f"{key}.tmp-{os.uname().nodename}-999999"
    stale.mkdir(parents=True)
    (stale / "train-00000.bin").write_bytes(b"\x00" * 10)
    done = sh.prepare_shards(data, bpe_tokenizer)
    assert not stale.exists() and (done.folder / "meta.json").is_file()


def test_disk_full_is_one_line_and_leaves_nothing(corpus, bpe_tokenizer, tmp_path, monkeypatch, capsys):
    import shutil

    from tinyllm.data import shards as sh

    monkeypatch.setattr(sh, "BATCH_BYTES", 2000)
    monkeypatch.setattr(sh.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 100, 100))
    args = ["--dataset_name", corpus, "--tokenizer_name_or_path", "{tok}", "--cache_dir", tmp_path / "c",
            "--output_dir", tmp_path / "o"]
    tok = tmp_path / "tok"
    bpe_tokenizer.save_pretrained(tok)
    args = [str(a).replace("{tok}", str(tok)) for a in args]
    code, _, err = run_inprocess(capsys, "prepare", *args)
    assert_user_error(code, err, "not enough disk")
    monkeypatch.undo()

    def full(self, tokens):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sh._Writer, "write", full)
    code, _, err = run_inprocess(capsys, "prepare", *args)
    assert_user_error(code, err, "disk filled up")
    assert list((tmp_path / "c" / "shards").iterdir()) == []


def test_tokenizer_learns_on_a_bounded_sample(tmp_path):
    from tinyllm.config import TokenizerArguments
    from tinyllm.data.tokenizer import build_tokenizer

    path = tmp_path / "big.txt"
    path.write_text("\n\n".join(f"Paragraph {i} about ÷ rivers and {i * 7} stones." for i in range(3000)))
    data = _data(dataset_name=str(path))
    _, report = build_tokenizer(data, TokenizerArguments(vocab_size=400, tokenizer_sample_bytes=20_000))
    assert 15_000 < report["sample_bytes"] < 25_000  # documents kept at random until the budget
    _, full = build_tokenizer(data, TokenizerArguments(vocab_size=400, tokenizer_sample_bytes=0))
    assert full["sample_bytes"] > 100_000
    # char mode: the vocabulary covers every character of the corpus, held-out ones too
    path.write_text(path.read_text() + "\n\nthe last one has a rare ж")
    tok, _ = build_tokenizer(data, TokenizerArguments(tokenizer_type="char", tokenizer_sample_bytes=1000))
    assert "ж" in tok.get_vocab()


def test_prepare_command_then_pretrain_reuses(corpus, tokenizer_dir, tmp_path, capsys):
    from helpers import TINY_MODEL_ARGS

    args = ["--dataset_name", corpus, "--tokenizer_name_or_path", tokenizer_dir, "--cache_dir", tmp_path / "c"]
    code, out, err = run_inprocess(capsys, "prepare", *args, "--output_dir", tmp_path / "unused")
    assert code == 0, err
    assert "Token shards in" in out and "reads them without tokenizing again" in out
    folder = next((tmp_path / "c" / "shards").iterdir())
    stamp = (folder / "meta.json").stat().st_mtime_ns
    code, _, err = run_inprocess(capsys, "pretrain", *args, *TINY_MODEL_ARGS, "--max_steps", "2", "--eval_steps", "1",
                                 "--output_dir", tmp_path / "run")
    assert code == 0, err
    assert (folder / "meta.json").stat().st_mtime_ns == stamp and "token shards found" in err


# ---------------------------------------------------------------- launch settings checked before training

@pytest.mark.parametrize("env, needle", [
    ({"ACCELERATE_USE_FSDP": "true"}, "FSDP launch config"),
    ({"ACCELERATE_USE_DEEPSPEED": "true"}, "DeepSpeed launch config"),
    ({"MASTER_ADDR": "192.0.2.1", "WORLD_SIZE": "2"}, "placeholder of multi_node.yaml"),
])
def test_launch_settings_that_would_do_something_else(env, needle, monkeypatch, tmp_path):
    from tinyllm.errors import ConfigError
    from tinyllm.training.arguments import PretrainingArguments

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=needle):
        PretrainingArguments(output_dir=str(tmp_path), report_to="none")


@pytest.mark.parametrize("separator", ["<|endoftext|>", "\n\n\n", "\n###\n"])
def test_the_held_out_tail_is_measured_in_real_bytes(tmp_path, separator):
    """Each document's start is its exact byte offset (separators counted at their length), so the held-out tail
    is the last % of the file whatever the separator."""
    docs = [f"doc {i} about é and 猫" for i in range(200)]
    path = tmp_path / "c.txt"
    path.write_text(separator.join(docs))
    mode = "auto" if separator == "<|endoftext|>" else "blank_line" if separator == "\n\n\n" else "\\n###\\n"
    out = _stream(path, document_separator=mode, validation_split_percentage=10)
    assert [d for d, _ in out] == docs
    held = [d for d, v in out if v]
    assert 18 <= len(held) <= 22 and held == docs[-len(held):]
