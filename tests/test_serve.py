"""`tinyllm serve` against real clients: the official `openai` client, raw HTTP for 20+ bad requests, 16
concurrent streaming clients, a client that disconnects mid-stream, and headless Chromium on the chat page."""

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers import REPO

pytestmark = pytest.mark.slow  # live servers in subprocesses
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _model(tmp_path_factory, bpe_tokenizer, chat: bool) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    from tinyllm.config import ModelArguments
    from tinyllm.modeling import build_config

    tok = bpe_tokenizer
    cfg = build_config(ModelArguments(n_layer=2, n_embd=64, n_head=2), len(tok), 128, tok.bos_token_id,
                       tok.eos_token_id, tok.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    eos = [tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id] if chat else [tok.eos_token_id]
    model.generation_config = GenerationConfig(do_sample=True, temperature=0.8, top_k=50, max_new_tokens=24,
                                               eos_token_id=eos, pad_token_id=tok.pad_token_id,
                                               bos_token_id=tok.bos_token_id)
    path = tmp_path_factory.mktemp("chat" if chat else "base") / ("tiny-chat" if chat else "tiny-base")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model: Path, *extra):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "tinyllm", "serve", "--model", str(model), "--port",
                                      str(self.port), *map(str, extra)], cwd=REPO, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
        deadline = time.time() + 90
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(self.proc.stderr.read()[-3000:])
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        raise RuntimeError("server did not start")

    def stop(self) -> tuple[int, str, str]:
        self.proc.send_signal(2)  # Ctrl+C
        out, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, out, err


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory, bpe_tokenizer):
    return _model(tmp_path_factory, bpe_tokenizer, chat=True)


@pytest.fixture(scope="module")
def server(chat_model):
    srv = Server(chat_model, "--max_queue", "4")
    yield srv
    code, out, err = srv.stop()
    assert code == 0, err[-2000:]  # Ctrl+C is a clean shutdown
    assert "Traceback" not in err and "Server stopped." in out


def _client(server, key="unused"):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=60)


def test_openai_client_chat_completions_and_models(server, chat_model):
    client = _client(server)
    assert [m.id for m in client.models.list().data] == [chat_model.name]
    msgs = [{"role": "user", "content": "What does a cat say? 猫怎么叫？"}]
    plain = client.chat.completions.create(model=chat_model.name, messages=msgs, max_tokens=20, seed=3)
    text = plain.choices[0].message.content
    assert plain.choices[0].finish_reason in ("stop", "length") and plain.usage.completion_tokens > 0
    assert plain.usage.prompt_tokens > 5  # (an untrained model emits invalid byte sequences: no text check here)
    chunks = list(client.chat.completions.create(model=chat_model.name, messages=msgs, max_tokens=20, seed=3,
                                                 stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text  # same seed, same tokens, streamed piece by piece
    assert chunks[-1].choices[0].finish_reason == plain.choices[0].finish_reason
    again = client.chat.completions.create(model=chat_model.name, messages=msgs, max_tokens=20, seed=3)
    assert again.choices[0].message.content == text
    comp = client.completions.create(model=chat_model.name, prompt="Once upon a time", max_tokens=10, seed=1)
    assert comp.choices[0].text and comp.usage.completion_tokens <= 10
    greedy = [client.chat.completions.create(model=chat_model.name, messages=msgs, max_tokens=8,
                                             temperature=0).choices[0].message.content for _ in range(2)]
    assert greedy[0] == greedy[1]


def test_compiled_server_answers_as_the_eager_one(server, chat_model):
    """`--compile true` compiles the decoding step at start-up; greedy answers equal the eager server's."""
    fast = Server(chat_model, "--compile", "true")
    try:
        msgs = [{"role": "user", "content": "What does a cat say?"}]
        answers = [_client(s).chat.completions.create(model=chat_model.name, messages=msgs, max_tokens=16,
                                                      temperature=0) for s in (fast, server)]
    finally:
        code, _, err = fast.stop()
    assert code == 0, err[-2000:]
    assert "--compile: the decoding step is compiled once" in err
    assert answers[0].choices[0].message.content == answers[1].choices[0].message.content
    assert answers[0].usage.completion_tokens == answers[1].usage.completion_tokens > 0


def test_stop_strings_cut_the_text_the_same_streamed_or_not(server, chat_model):
    client = _client(server)
    msgs = [{"role": "user", "content": "Tell me a story."}]
    full = client.chat.completions.create(model=chat_model.name, messages=msgs, max_tokens=24, seed=5,
                                          temperature=1.0).choices[0].message.content
    assert len(full) > 4
    stop = full[len(full) // 2: len(full) // 2 + 2]
    cut = client.chat.completions.create(model=chat_model.name, messages=msgs, max_tokens=24, seed=5,
                                         temperature=1.0, stop=[stop])
    assert cut.choices[0].message.content == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=chat_model.name, messages=msgs, max_tokens=24, seed=5, temperature=1.0, stop=[stop], stream=True)
        if c.choices)
    assert streamed == cut.choices[0].message.content


def test_long_conversations_drop_the_oldest_turns(server, chat_model):
    msgs = []
    for i in range(30):
        msgs += [{"role": "user", "content": f"Question number {i}: what does a dog say?"},
                 {"role": "assistant", "content": "A dog says woof. " * 3}]
    msgs.append({"role": "user", "content": "And a cat?"})
    r = httpx.post(server.url + "/v1/chat/completions", json={"messages": msgs, "max_tokens": 8}, timeout=60)
    assert r.status_code == 200, r.text
    dropped = r.json()["usage"]["dropped_messages"]
    assert dropped > 0 and int(r.headers["X-Tinyllm-Dropped-Messages"]) == dropped
    assert r.json()["usage"]["prompt_tokens"] <= 128


BAD = [
    ("post", "/v1/chat/completions", b"{not json", "application/json", 400, "invalid_json"),
    ("post", "/v1/chat/completions", b"[1, 2]", "application/json", 400, "invalid_json"),
    ("post", "/v1/chat/completions", {"model": "tiny-chat"}, None, 400, "missing"),
    ("post", "/v1/chat/completions", {"messages": "hi"}, None, 400, "invalid_type"),
    ("post", "/v1/chat/completions", {"messages": []}, None, 400, "empty"),
    ("post", "/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, None, 400, "invalid_value"),
    ("post", "/v1/chat/completions", {"messages": [{"role": "user"}]}, None, 400, "invalid_type"),
    ("post", "/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, None, 400, "invalid_type"),
    ("post", "/v1/chat/completions", {"messages": ["hi"]}, None, 400, "invalid_type"),
    ("post", "/v1/chat/completions", {"messages": [{"role": "assistant", "content": "hi"}]}, None, 400,
     "invalid_value"),
    ("post", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": -5}, None, 400,
     "out_of_range"),
    ("post", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**9}, None,
     400, "out_of_range"),
    ("post", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": "ten"}, None,
     400, "invalid_type"),
    ("post", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "temperature": 7}, None, 400,
     "out_of_range"),
    ("post", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "top_p": 1.5}, None, 400,
     "out_of_range"),
    ("post", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stop": 3}, None, 400,
     "invalid_type"),
    ("post", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, None, 400,
     "invalid_type"),
    ("post", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "n": 3}, None, 400,
     "out_of_range"),
    ("post", "/v1/chat/completions", {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}, None, 404,
     "model_not_found"),
    ("post", "/v1/chat/completions", b'{"messages": []}', "text/plain", 415, "unsupported_media_type"),
    ("post", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x" * 1_100_000}]}, None, 413,
     "body_too_large"),
    ("post", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x" * 40_000}]}, None, 400,
     "too_long"),
    ("post", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}] * 300}, None, 400, "too_many"),
    ("post", "/v1/completions", {"max_tokens": 5}, None, 400, "missing"),
    ("post", "/v1/completions", {"prompt": 42}, None, 400, "invalid_type"),
    ("get", "/v1/chat/completions", None, None, 405, "method_not_allowed"),
    ("get", "/v1/nothing", None, None, 404, "not_found"),
]


def test_bad_requests_get_openai_style_errors_and_the_server_keeps_serving(server):
    for method, path, body, ctype, status, code in BAD:
        kw = {}
        if isinstance(body, (dict, list)):
            kw["content"] = json.dumps(body).encode()
            kw["headers"] = {"Content-Type": ctype or "application/json"}
        elif body is not None:
            kw["content"] = body
            kw["headers"] = {"Content-Type": ctype}
        r = httpx.request(method.upper(), server.url + path, timeout=30, **kw)
        assert r.status_code == status, (path, body if not isinstance(body, dict) else list(body), r.text[:300])
        err = r.json()["error"]
        assert err["code"] == code and err["message"] and err["type"], r.text[:300]
    ok = httpx.post(server.url + "/v1/chat/completions", timeout=60,
                    json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["role"] == "assistant"


def test_sixteen_concurrent_streams_complete_or_get_503(server):
    """The one model serves requests one at a time; 4 may wait; the rest get 503 with Retry-After, and every
    accepted stream completes with [DONE]."""
    results = []
    start = threading.Barrier(16)

    def client():
        start.wait()
        with httpx.stream("POST", server.url + "/v1/chat/completions", timeout=180, json={
                "messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 100, "stream": True,
                "stop": ["\u2603"]}) as r:  # a stop string that never appears: every reply runs 100 tokens
            if r.status_code == 503:
                results.append(("busy", r.headers.get("retry-after"), json.loads(r.read())["error"]["code"]))
                return
            lines = [line for line in r.iter_lines() if line.startswith("data: ")]
            results.append(("ok", lines[-1], len(lines)))

    threads = [threading.Thread(target=client) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert len(results) == 16
    done = [r for r in results if r[0] == "ok"]
    busy = [r for r in results if r[0] == "busy"]
    assert len(done) >= 5 and all(r[1] == "data: [DONE]" for r in done)  # the running one + 4 waiting, at least
    assert busy and all(r[1] == "2" and r[2] == "server_busy" for r in busy)
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


def test_a_client_that_disconnects_stops_its_generation(server):
    """Read a few chunks of a 2000-token stream and hang up: the worker stops at the next token and frees its
    slot (the job ends with far fewer tokens than asked)."""
    before = httpx.get(server.url + "/health").json()
    with httpx.stream("POST", server.url + "/v1/completions", timeout=60, json={
            "prompt": "Once upon a time", "max_tokens": 2000, "stream": True, "temperature": 1.0,
            "stop": ["\u2603"]}) as r:
        it = r.iter_lines()
        assert [line for line in (next(it), next(it), next(it)) if line]
    start = time.time()
    while time.time() - start < 20:
        health = httpx.get(server.url + "/health").json()
        if health["served"] > before["served"] and not health["busy"]:
            break
        time.sleep(0.05)
    assert health["cancelled"] == before["cancelled"] + 1, health
    assert health["last_completion_tokens"] < 2000, health
    ok = httpx.post(server.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 3}, timeout=30)
    assert ok.status_code == 200


def test_base_model_refuses_chat_and_api_key_is_enforced(tmp_path_factory, bpe_tokenizer):
    base = _model(tmp_path_factory, bpe_tokenizer, chat=False)
    srv = Server(base, "--api_key", "s3cret")
    try:
        no_key = httpx.get(srv.url + "/v1/models")
        assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "invalid_api_key"
        wrong = _client(srv, key="nope")
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
        client = _client(srv, key="s3cret")
        with pytest.raises(openai.BadRequestError, match="base model"):
            client.chat.completions.create(model=base.name, messages=[{"role": "user", "content": "hi"}])
        assert client.completions.create(model=base.name, prompt="Once", max_tokens=3).choices[0].text is not None
    finally:
        code, _, err = srv.stop()
    assert code == 0, err[-2000:]


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="headless Chromium not installed (.ci/run installs it)")
def test_the_chat_page_streams_a_reply_in_a_real_browser(server, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1100, "height": 700})
        page.goto(server.url + "/")
        page.wait_for_function("document.getElementById('model').textContent.includes('tiny-chat')")
        page.fill("#input", "What does a cat say? 猫怎么叫？")
        page.keyboard.press("Enter")
        page.wait_for_selector(".msg.assistant[data-done]", timeout=60000)
        # the page rendered the reply piece by piece as server-sent events arrived (it counts them)
        assert int(page.get_attribute(".msg.assistant", "data-chunks") or 0) >= 2
        reply = page.inner_text(".msg.assistant")
        # some text, then the stats line (a sampled reply may itself start with a newline)
        assert "tokens/s" in reply and reply.rsplit("\n", 1)[0].strip()
        page.click("#lang")
        assert page.inner_text("#send") == "发送"
        page.screenshot(path=str(tmp_path / "chat_page.png"))
        page.click("#reset")
        assert page.locator(".msg").count() == 0
        browser.close()
    assert (tmp_path / "chat_page.png").stat().st_size > 5000
