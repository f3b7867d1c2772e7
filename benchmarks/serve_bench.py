"""Requests/s and tokens/s of `tinyllm serve` with 1, 4 and 16 concurrent streaming clients.

    python benchmarks/serve_bench.py --model outputs/sft_quickstart
    python benchmarks/serve_bench.py --model outputs/sft_quickstart --requests 32 --max_tokens 64   # more samples

Starts the server as a user would (`tinyllm serve`, loopback), sends --requests streaming chat requests at each
concurrency (enough queue for all, so none is refused), and prints a Markdown table: requests/s, completion
tokens/s (the model runs one request at a time, so this is its decoding rate under load), and latency to first
token and to the end (median and p90).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_request(url: str, max_tokens: int, i: int, out: list) -> None:
    import httpx

    start = time.perf_counter()
    first = None
    tokens = 0
    body = {"messages": [{"role": "user", "content": ["What does a cat say?", "熊喜欢吃什么？"][i % 2]}],
            "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}, "seed": i}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif first is None and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - start
    out.append((first or 0.0, time.perf_counter() - start, tokens))


def run_level(url: str, clients: int, requests: int, max_tokens: int) -> dict:
    results: list = []
    todo = list(range(requests))
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                if not todo:
                    return
                i = todo.pop()
            one_request(url, max_tokens, i, results)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    firsts = sorted(r[0] for r in results)
    ends = sorted(r[1] for r in results)
    tokens = sum(r[2] for r in results)
    p90 = lambda xs: xs[min(len(xs) - 1, int(0.9 * len(xs)))]  # noqa: E731
    return {"clients": clients, "requests": len(results), "wall": wall, "rps": len(results) / wall,
            "tps": tokens / wall, "tokens": tokens, "ttft_p50": statistics.median(firsts), "ttft_p90": p90(firsts),
            "end_p50": statistics.median(ends), "end_p90": p90(ends)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="outputs/sft_quickstart")
    p.add_argument("--requests", type=int, default=16, help="requests per concurrency level")
    p.add_argument("--max_tokens", type=int, default=48)
    p.add_argument("--levels", default="1,4,16")
    a = p.parse_args()
    port = _port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "tinyllm", "serve", "--model", a.model, "--port", str(port),
                             "--max_queue", "64"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=dict(os.environ))
    try:
        import httpx

        for _ in range(300):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        one_request(url, 8, 0, [])  # warm-up
        rows = [run_level(url, int(c), a.requests, a.max_tokens) for c in a.levels.split(",")]
    finally:
        proc.send_signal(2)
        proc.wait(timeout=30)
    print(f"model: {a.model}; {a.requests} streaming chat requests per level, max_tokens {a.max_tokens}; "
          f"CPU threads: {os.cpu_count()}\n")
    print("| concurrent clients | requests/s | completion tokens/s | first token p50 / p90 (s) | "
          "whole reply p50 / p90 (s) |\n|---:|---:|---:|---|---|")
    for r in rows:
        print(f"| {r['clients']} | {r['rps']:.2f} | {r['tps']:.0f} | {r['ttft_p50']:.3f} / {r['ttft_p90']:.3f} | "
              f"{r['end_p50']:.3f} / {r['end_p90']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
