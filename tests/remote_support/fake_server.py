"""A minimal OpenAI-style HTTP server for the remote engine's error cases.

It is not the main test (that one runs a real llama.cpp server): it plays the failures a real server
can't be made to show on demand (a 400 for a long prompt, a stream that breaks off, a slow answer).
Each test gives it a `chat` function that writes the reply to /v1/chat/completions.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeServer:
    """Serves `models` at GET /v1/models and calls `chat(handler, body)` for POST /v1/chat/completions."""

    def __init__(self, models=({"id": "omni", "max_model_len": 4096},), chat=None):
        self.models = list(models)
        self.chat = chat
        self.requests: list[dict] = []  # bodies of the chat requests, in order
        self.headers: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                if self.path == "/v1/models":
                    send_json(self, 200, {"object": "list", "data": server.models})
                else:
                    send_json(self, 404, {"detail": "Not Found"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                server.headers.append(dict(self.headers))
                server.chat(self, body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def send_json(handler, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def start_stream(handler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()


def send_event(handler, payload) -> None:
    """One server-sent event as one HTTP chunk; `payload` is a dict or the string "[DONE]"."""
    text = payload if isinstance(payload, str) else json.dumps(payload)
    data = f"data: {text}\n\n".encode()
    handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    handler.wfile.flush()


def end_stream(handler) -> None:
    handler.wfile.write(b"0\r\n\r\n")
    handler.wfile.flush()


def delta(text: str, finish: str | None = None) -> dict:
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text},
                                                            "finish_reason": finish}]}


def completion(text: str, prompt_tokens: int, cached: int | None = None) -> dict:
    """A non-streamed reply (the warm-up's), with usage."""
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": 1, "total_tokens": prompt_tokens + 1}
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return {"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                                      "finish_reason": "length"}], "usage": usage}
