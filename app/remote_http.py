"""Talking to an OpenAI-compatible server (app/remote.py's backend): its address, its window, the words of its
errors, the events of a streamed answer, and a request that Cancel can leave behind.
"""

from __future__ import annotations

import json
import logging
import threading
from urllib.parse import urlsplit, urlunsplit

import httpx

from app.errors import BackendError, Cancelled

log = logging.getLogger("app.remote")

# Words that servers put in the message of a 400 for a prompt over the context length:
# vLLM "maximum context length" / "maximum model length", SGLang "longer than the model's context length",
# llama.cpp "exceed context window" / "exceeds the available context size".
_CONTEXT_WORDS = ("context length", "context window", "context size", "maximum model length", "max_model_len",
                  "context_length_exceeded", "exceed_context_size")


def _api_root(base_url: str) -> str:
    """'http://h:8000' -> 'http://h:8000/v1'; an address with a path is kept as given (without a final /)."""
    parts = urlsplit(base_url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BackendError(f"--base-url must look like http://HOST:PORT/v1, not '{base_url}'")
    path = parts.path.rstrip("/") or "/v1"
    return urlunsplit(parts._replace(path=path))


def _window_of(model: dict) -> int:
    """The context length a `/v1/models` entry reports: vLLM and SGLang give `max_model_len`;
    llama.cpp gives `meta.n_ctx_train` (the trained window, an upper bound of what it was started with)."""
    for key in ("max_model_len", "context_length", "max_context_length", "context_window"):
        if model.get(key):
            return int(model[key])
    meta = model.get("meta") or {}
    return int(meta.get("n_ctx") or meta.get("n_ctx_train") or 0)


def _error_message(response: httpx.Response) -> str:
    try:
        return _message_of(response.json())
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase


def _message_of(body) -> str:
    """The message of an OpenAI-style error body, in the shapes servers use."""
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            text = error.get("message") or error.get("detail") or json.dumps(error)[:500]
            return str(text)
        if body.get("detail"):
            return str(body["detail"])
        return str(error)[:500]
    return str(body)[:500]


def _is_context_error(message: str) -> bool:
    lower = message.lower()
    return any(word in lower for word in _CONTEXT_WORDS) or ("longer than" in lower and "context" in lower)


def _reason(err: Exception) -> str:
    text = str(err) or type(err).__name__
    return "connection refused" if "refused" in text.lower() else text


def _events(response: httpx.Response):
    """Parsed server-sent events of a streamed completion; None for the final `[DONE]`."""
    for line in response.iter_lines():
        if not line.startswith("data:"):
            continue  # blank separators, comments (": ping"), "event:" lines
        data = line[5:].strip()
        if data == "[DONE]":
            yield None
            return
        try:
            yield json.loads(data)
        except ValueError:
            log.warning("skipping a malformed event from the server: %.200s", data)


def _wait(call, cancel: threading.Event | None):
    """Run a blocking `call` in a thread so that `cancel` can stop the wait (the server may go on)."""
    if cancel is None:
        return call()
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as err:  # handed back to the waiting thread
            box["error"] = err

    worker = threading.Thread(target=run, daemon=True, name="omnibus-remote-load")
    worker.start()
    while worker.is_alive():
        if cancel.wait(0.1):
            raise Cancelled("loading stopped; the server may finish prefilling the corpus in the background")
    if "error" in box:
        raise box["error"]
    return box["value"]
