"""`/v1` and `/mcp` against hostile requests (issue 25, item 3 and the nested-JSON low item): bodies are capped
while read (chunked too), over-long messages are refused before any tokenizing, only JSON is accepted, and a web
page of another origin is refused. Real server (uvicorn), real demo model."""


from types import SimpleNamespace
import httpx
import pytest

from app.engine.engine import Engine
from app.server.access import KeyRule
from app.server.request_guard import body_limit, chars_limit
from app.server.serve import app as server_app
from serving import serving_in_thread


@pytest.fixture(scope="module")
def server(demo_model):
    model, tokenizer = demo_model
    engine = Engine(model, tokenizer, model_name="demo")
    with serving_in_thread(server_app(engine, KeyRule(None))) as base:
        yield SimpleNamespace(engine=engine, base=base)


def chat_body(content: str) -> dict:
    return {"model": "demo", "max_tokens": 2, "messages": [{"role": "user", "content": content}]}


def test_a_text_plain_post_as_a_web_page_sends_is_refused(server):
    reply = httpx.post(server.base + "/v1/chat/completions", content=b'{"model": "demo", "messages": []}',
                       headers={"Content-Type": "text/plain"}, timeout=30)
    assert reply.status_code == 415
    assert "application/json" in reply.json()["error"]["message"]
    mcp = httpx.post(server.base + "/mcp", content=b'{"jsonrpc": "2.0", "id": 1, "method": "ping"}',
                     headers={"Content-Type": "text/plain", "Accept": "application/json, text/event-stream"},
                     timeout=30)
    assert mcp.status_code == 415


def test_requests_from_another_origin_are_refused_and_the_own_origin_passes(server):
    foreign = {"Origin": "http://attacker.example"}
    assert httpx.get(server.base + "/v1/models", headers=foreign, timeout=30).status_code == 403
    reply = httpx.post(server.base + "/v1/chat/completions", json=chat_body("hi"), headers=foreign, timeout=30)
    assert reply.status_code == 403 and "web pages" in reply.json()["error"]["message"]
    assert httpx.post(server.base + "/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                      headers=foreign, timeout=30).status_code == 403
    own = {"Origin": server.base}
    assert httpx.get(server.base + "/v1/models", headers=own, timeout=30).status_code == 200


def test_a_chunked_body_over_the_cap_is_refused_while_it_is_read(server):
    limit = body_limit(server.engine.window)

    def chunks():  # a body with no Content-Length, three times the cap
        for _ in range(3 * limit // 2**20):
            yield b"x" * 2**20

    reply = httpx.post(server.base + "/v1/chat/completions", content=chunks(),
                       headers={"Content-Type": "application/json"}, timeout=60)
    assert reply.status_code == 413  # before: the whole body was read, then refused as bad JSON (400)
    assert f"{limit / 2**20:,.0f} MB" in reply.json()["error"]["message"]


def test_an_over_long_message_is_refused_by_its_characters_before_tokenizing(server):
    window = server.engine.window
    text = "word " * (chars_limit(window) // 5 + 1)
    reply = httpx.post(server.base + "/v1/chat/completions", json=chat_body(text), timeout=120)
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert f"{len(text):,} characters" in error["message"] and f"{window:,} tokens" in error["message"]


def test_deeply_nested_json_is_a_400_in_openai_shape(server):
    body = b'{"model": "demo", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    reply = httpx.post(server.base + "/v1/chat/completions", content=body,
                       headers={"Content-Type": "application/json"}, timeout=60)
    assert reply.status_code == 400
    assert "nested" in reply.json()["error"]["message"]
