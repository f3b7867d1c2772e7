"""Corpora: local files of every kind, named corpora downloaded from a loopback server, clear errors."""

import hashlib
import http.server
import json
import threading
from functools import partial

import pytest

from helpers import SHARED_DATA, needs_shared_data
from tinyllm.config import DataArguments
from tinyllm.data.corpora import NAMED_CORPORA, CorpusFile, download
from tinyllm.data.documents import iter_documents
from tinyllm.errors import DataError


def docs(name, seed=0, **kw):
    """The documents the stages read (tinyllm.data.documents), none held out."""
    return list(iter_documents(DataArguments(dataset_name=name, **kw), seed))


def test_txt_with_endoftext_markers(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("first story\n<|endoftext|>\nsecond story\n<|endoftext|>\n")
    assert docs(str(f)) == ["first story", "second story"]


def test_txt_without_markers_is_paragraphs_or_one_document(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("ROMEO:\nhello\n\nJULIET:\nhi\n")
    assert docs(str(f)) == ["ROMEO:\nhello", "JULIET:\nhi"]
    assert docs(str(f), document_separator="none") == ["ROMEO:\nhello\n\nJULIET:\nhi\n"]


def test_jsonl_json_and_text_column(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "one"}\n\n{"text": "two"}\n')
    (tmp_path / "b.json").write_text(json.dumps([{"body": "x", "story": "three"}]))
    (tmp_path / "c.jsonl").write_text('{"title": "t", "content2": "four"}\n')
    assert docs(str(tmp_path / "a.jsonl")) == ["one", "two"]
    assert docs(str(tmp_path / "b.json")) == ["three"]  # 'story' comes before 'body' in the known fields
    assert docs(str(tmp_path / "c.jsonl"), text_column="content2") == ["four"]
    with pytest.raises(DataError, match="pass --text_column"):
        docs(str(tmp_path / "c.jsonl"))


def test_chinese_poetry_layout_keeps_lines_and_punctuation(tmp_path):
    rec = {"author": "李白", "title": "静夜思", "paragraphs": ["床前明月光，疑是地上霜。", "举头望明月，低头思故乡。"]}
    (tmp_path / "p.json").write_text(json.dumps([rec], ensure_ascii=False), encoding="utf-8")
    assert docs(str(tmp_path / "p.json")) == ["静夜思\n李白\n床前明月光，疑是地上霜。\n举头望明月，低头思故乡。"]


def test_parquet_and_folder(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["p1", "p2"], "n": [1, 2]}), tmp_path / "d.parquet")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "e.txt").write_text("t1")
    (tmp_path / "ignored.csv").write_text("a,b")
    assert docs(str(tmp_path)) == ["p1", "p2", "t1"]


def test_non_utf8_names_file_and_offset(tmp_path):
    f = tmp_path / "gbk.txt"
    f.write_bytes("abc".encode() + "中文".encode("gbk"))
    with pytest.raises(DataError, match=r"gbk.txt is not valid UTF-8.*offset 3"):
        docs(str(f))


def test_missing_path_and_unknown_name():
    with pytest.raises(DataError, match="not found"):
        docs("./no/such/file.txt")
    with pytest.raises(DataError, match="did you mean 'tinystories'"):
        docs("tinystorie")


def test_hf_dataset_offline_is_one_clear_error():
    with pytest.raises(DataError, match="could not load Hugging Face dataset 'someone/missing'.*local path"):
        docs("someone/missing")


def test_builtin_is_deterministic():
    a = docs("builtin", builtin_num_documents=50, seed=3)
    assert a == docs("builtin", builtin_num_documents=50, seed=3)
    assert a != docs("builtin", builtin_num_documents=50, seed=4)
    assert any("从前" in d for d in a) and any("Once upon a time" in d for d in a)


class _Server:
    def __init__(self, root):
        handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
        handler.log_message = lambda *a, **k: None
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@needs_shared_data
@pytest.mark.parametrize("name", ["tiny_shakespeare", "tinystories", "chinese_poetry"])
def test_named_corpus_downloads_verifies_and_caches(name, tmp_path, monkeypatch):
    """The real download code runs against a loopback server serving ../shared/data; then works offline."""
    cache = tmp_path / "cache"
    with _Server(SHARED_DATA) as server:
        monkeypatch.setenv("TINYLLM_CORPUS_MIRROR", server.url)
        first = docs(name, cache_dir=str(cache))
    # server gone and mirror pointing nowhere: the cache serves the corpus offline
    monkeypatch.setenv("TINYLLM_CORPUS_MIRROR", "http://127.0.0.1:9")
    assert docs(name, cache_dir=str(cache)) == first
    if name == "tiny_shakespeare":
        assert len(first) == 1 and first[0].startswith("First Citizen:") and len(first[0]) == 1115394
    if name == "chinese_poetry":
        assert len(first) == 366 + 3002 + 280 + 4000
        assert any("\n" in d and "，" in d for d in first)
    if name == "tinystories":  # no <|endoftext|>: stories and their paragraphs, cut at blank lines
        assert len(first) > 1000 and first[0].startswith("Spot.")


def test_checksum_mismatch_and_offline_errors(tmp_path, monkeypatch):
    (tmp_path / "srv" / "x").mkdir(parents=True)
    (tmp_path / "srv" / "x" / "f.txt").write_text("tampered")
    bad = CorpusFile("x/f.txt", "http://example.invalid/f.txt", hashlib.sha256(b"original").hexdigest())
    with _Server(tmp_path / "srv") as server:
        monkeypatch.setenv("TINYLLM_CORPUS_MIRROR", server.url)
        with pytest.raises(DataError, match="checksum mismatch"):
            download(bad, str(tmp_path / "cache"))
    assert not list((tmp_path / "cache").rglob("f.txt*")), "no half-written file is left behind"
    monkeypatch.setenv("TINYLLM_CORPUS_MIRROR", "http://127.0.0.1:9")
    with pytest.raises(DataError, match=r"could not download http://127.0.0.1:9/tiny_shakespeare/input.txt.*local"):
        download(NAMED_CORPORA["tiny_shakespeare"][0], str(tmp_path / "cache2"))
