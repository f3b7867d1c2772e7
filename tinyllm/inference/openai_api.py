"""The OpenAI API as tinyllm serves it: request checks and the response bodies, with no model and no server.

Every bad request becomes an `ApiError` (status, message, param, code), sent as OpenAI's error body.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

__all__ = ["Limits", "ApiError", "check_headers", "parse_body", "parse_sampling", "parse_messages", "parse_prompt",
           "Reply"]

ROLES = ("system", "user", "assistant")


@dataclass
class Limits:
    max_body_bytes: int = 1_000_000
    max_tokens: int = 2048  # cap on a request's max_tokens (and the context bounds it further)
    max_messages: int = 256
    max_message_chars: int = 32_000
    max_queue: int = 8  # requests waiting for the model; more get 503
    max_stop: int = 4


class ApiError(Exception):
    """An OpenAI-style error response."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


# ---------------------------------------------------------------- requests

def check_headers(content_type: str, content_length: str | None, limits: Limits) -> None:
    """Before the body is read: JSON content, and a declared size within the limit."""
    if not content_type.split(";")[0].strip().lower() == "application/json":
        raise ApiError(415, f"Content-Type must be application/json, got '{content_type or 'nothing'}'", None,
                       "unsupported_media_type")
    if content_length and content_length.isdigit() and int(content_length) > limits.max_body_bytes:
        raise ApiError(413, f"request body too large ({content_length} bytes; at most {limits.max_body_bytes})",
                       None, "body_too_large")


def parse_body(raw: bytes, served: str, limits: Limits) -> dict:
    """The JSON object of a POST, or an ApiError: actual size, JSON object, model name (absent or empty means the
    served model), stream flag."""
    if len(raw) > limits.max_body_bytes:
        raise ApiError(413, f"request body too large (at most {limits.max_body_bytes} bytes)", None,
                       "body_too_large")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"malformed JSON: {exc}", None, "invalid_json") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", None, "invalid_json")
    model_name = body.get("model", served)
    if not isinstance(model_name, str):
        raise ApiError(400, "'model' must be a string", "model", "invalid_type")
    if model_name not in (served, ""):
        raise ApiError(404, f"model '{model_name}' not found; this server serves '{served}' (GET /v1/models)",
                       "model", "model_not_found")
    if body.get("stream") not in (None, True, False):
        raise ApiError(400, "'stream' must be true or false", "stream", "invalid_type")
    return body


def _number(body: dict, key: str, lo: float, hi: float, integer: bool = False, default=None):
    value = body.get(key, default)
    if value is None:
        return default
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok:
        raise ApiError(400, f"'{key}' must be {'an integer' if integer else 'a number'}, got {json.dumps(value)}",
                       key, "invalid_type")
    if not lo <= value <= hi:
        raise ApiError(400, f"'{key}' must be between {lo:g} and {hi:g}, got {value}", key, "out_of_range")
    return value


def parse_sampling(body: dict, limits: Limits) -> tuple[dict, int | None, int | None, list[str]]:
    """(generate() settings, max_tokens or None, seed or None, stop strings) from a request body."""
    temperature = _number(body, "temperature", 0, 2)
    top_p = _number(body, "top_p", 0, 1)
    max_tokens = _number(body, "max_tokens", 1, limits.max_tokens, integer=True)
    if max_tokens is None:
        max_tokens = _number(body, "max_completion_tokens", 1, limits.max_tokens, integer=True)
    seed = _number(body, "seed", -2**63, 2**63 - 1, integer=True)
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise ApiError(400, "'stop' must be a string or a list of strings", "stop", "invalid_type")
    if len(stops) > limits.max_stop:
        raise ApiError(400, f"'stop' takes at most {limits.max_stop} strings", "stop", "too_many")
    n = _number(body, "n", 1, 1, integer=True)
    del n  # only n=1 is supported; validated above
    kw: dict = {}
    if temperature is not None:
        if temperature == 0:
            kw["do_sample"] = False
        else:
            kw["temperature"] = float(temperature)
            kw["do_sample"] = True
    if top_p is not None:
        kw["top_p"] = float(top_p)
    return kw, max_tokens, seed, stops


def parse_messages(body: dict, limits: Limits) -> list[dict]:
    """Chat messages as {role, content} with text content (OpenAI's text parts joined), the last from the user."""
    messages = body.get("messages")
    if messages is None:
        raise ApiError(400, "'messages' is required: a list of {role, content} objects", "messages", "missing")
    if not isinstance(messages, list):
        raise ApiError(400, "'messages' must be a list of {role, content} objects", "messages", "invalid_type")
    if not messages:
        raise ApiError(400, "'messages' must not be empty", "messages", "empty")
    if len(messages) > limits.max_messages:
        raise ApiError(400, f"too many messages ({len(messages)}; at most {limits.max_messages})", "messages",
                       "too_many")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ApiError(400, f"{where} must be an object with role and content", where, "invalid_type")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise ApiError(400, f"{where}.role must be one of {', '.join(ROLES)}, got {json.dumps(role)}",
                           f"{where}.role", "invalid_value")
        if isinstance(content, list):  # OpenAI's content parts: text parts only
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise ApiError(400, f"{where}.content: only text parts are supported", f"{where}.content",
                               "invalid_type")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"{where}.content must be a string", f"{where}.content", "invalid_type")
        if len(content) > limits.max_message_chars:
            raise ApiError(400, f"{where}.content is too long ({len(content)} characters; at most "
                                f"{limits.max_message_chars})", f"{where}.content", "too_long")
        out.append({"role": role, "content": content})
    if out[-1]["role"] != "user":
        raise ApiError(400, "the last message must be from the user", "messages", "invalid_value")
    return out


def parse_prompt(body: dict, limits: Limits) -> str:
    """The text of a /v1/completions request (a string, or a list holding one string)."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ApiError(400, "'prompt' is required and must be a string", "prompt",
                       "missing" if prompt is None else "invalid_type")
    if len(prompt) > limits.max_message_chars:
        raise ApiError(400, f"'prompt' is too long (at most {limits.max_message_chars} characters)", "prompt",
                       "too_long")
    return prompt


# ---------------------------------------------------------------- responses

class Reply:
    """The response bodies of one chat ("chat") or text ("text") completion: the whole answer, or its stream of
    server-sent-event chunks."""

    def __init__(self, kind: str, model: str, rid: str, prompt_tokens: int, dropped: int = 0):
        self.kind, self.model, self.rid = kind, model, rid
        self.prompt_tokens, self.dropped = prompt_tokens, dropped
        self.object = "chat.completion" if kind == "chat" else "text_completion"

    def usage(self, completion: int) -> dict:
        out = {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
               "total_tokens": self.prompt_tokens + completion}
        if self.kind == "chat":
            out["dropped_messages"] = self.dropped
        return out

    def whole(self, text: str, finish: str, completion: int) -> dict:
        choice = {"index": 0, "finish_reason": finish}
        if self.kind == "chat":
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
            choice["logprobs"] = None
        return {"id": self.rid, "object": self.object, "created": int(time.time()), "model": self.model,
                "choices": [choice], "usage": self.usage(completion)}

    def chunk(self, delta=None, text=None, finish=None, use=None) -> str:
        if self.kind == "chat":
            choice = {"index": 0, "delta": delta if delta is not None else {}, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
        body = {"id": self.rid, "object": f"{self.object}.chunk" if self.kind == "chat" else self.object,
                "created": int(time.time()), "model": self.model, "choices": [choice] if use is None else []}
        if use is not None:
            body["usage"] = use
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"
