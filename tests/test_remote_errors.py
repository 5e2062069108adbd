"""The remote engine's failures, played by a minimal local HTTP server: each one reaches the user as a
plain, typed error, and a stream that breaks off keeps its partial answer."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from app.protocol import AnswerStats, Settings
from app.errors import BackendError, Cancelled, CorpusTooLarge, NoCorpus
from app.prompt import Turn
from app.remote import RemoteEngine
from ingest import build_corpus, load_tokenizer
from remote_support.fake_server import (FakeServer, completion, delta, end_stream, send_event, send_json,
                                        start_stream)
from serving import free_port


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture
def corpus(tmp_path, tokenizer):
    (tmp_path / "notes.txt").write_text("The vault code is 4417.\n" * 20)
    return build_corpus([str(tmp_path / "notes.txt")], tokenizer=tokenizer)


def answer(engine, question, **kwargs):
    pieces = list(engine.ask(question, **kwargs))
    assert isinstance(pieces[-1], AnswerStats)
    return "".join(pieces[:-1]), pieces[-1]


def streaming_chat(words, usage=None):
    """A chat handler: the warm-up gets a completion, questions get `words` streamed, then [DONE]."""
    def chat(handler, body):
        if not body.get("stream"):
            return send_json(handler, 200, completion("x", 300))
        start_stream(handler)
        for word in words:
            send_event(handler, delta(word))
        send_event(handler, delta("", "stop"))
        if usage:
            send_event(handler, {"object": "chat.completion.chunk", "choices": [], "usage": usage})
        send_event(handler, "[DONE]")
        end_stream(handler)
    return chat


def test_refused_connection_names_the_address(tokenizer):
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(BackendError, match=r"cannot reach the server at .*connection refused.*running"):
        RemoteEngine(url, tokenizer=tokenizer)


def test_missing_base_url_and_missing_key_are_plain_errors(tokenizer, monkeypatch):
    with pytest.raises(BackendError, match="--base-url"):
        RemoteEngine(None, tokenizer=tokenizer)
    monkeypatch.delenv("OMNIBUS_TEST_KEY", raising=False)
    with pytest.raises(BackendError, match="OMNIBUS_TEST_KEY"):
        RemoteEngine("http://127.0.0.1:1/v1", api_key_env="OMNIBUS_TEST_KEY", tokenizer=tokenizer)


def test_wrong_model_name_lists_the_served_ones(tokenizer):
    models = [{"id": "omni", "max_model_len": 4096}, {"id": "other", "max_model_len": 2048}]
    with FakeServer(models=models) as server:
        with pytest.raises(BackendError, match=r"does not serve the model 'nope'; it serves: omni, other"):
            RemoteEngine(server.url, served_model="nope", tokenizer=tokenizer)
        engine = RemoteEngine(server.url, served_model="other", tokenizer=tokenizer)
        assert (engine.model_name, engine.window) == ("other", 2048)


def test_model_unknown_at_request_time_is_reported(tokenizer, corpus):
    def chat(handler, body):
        send_json(handler, 404, {"object": "error", "message": f"The model `{body['model']}` does not exist.",
                                 "type": "NotFoundError", "code": 404})
    with FakeServer(chat=chat) as server:
        engine = RemoteEngine(server.url, tokenizer=tokenizer)
        with pytest.raises(BackendError, match=r"does not serve the model 'omni'.*it serves: omni"):
            engine.load(corpus)


def test_base_url_without_v1_and_api_key_header(tokenizer, corpus, monkeypatch):
    monkeypatch.setenv("OMNIBUS_TEST_KEY", "sekret")
    with FakeServer(chat=streaming_chat(["ok"])) as server:
        engine = RemoteEngine(server.url[:-3], api_key_env="OMNIBUS_TEST_KEY", tokenizer=tokenizer)
        assert engine.base_url == server.url
        engine.load(corpus)
        assert server.headers[0]["Authorization"] == "Bearer sekret"


def test_unauthorized_is_explained(tokenizer, corpus):
    def chat(handler, body):
        send_json(handler, 401, {"error": {"message": "Unauthorized"}})
    with FakeServer(chat=chat) as server:
        engine = RemoteEngine(server.url, tokenizer=tokenizer)
        with pytest.raises(BackendError, match=r"refused the API key \(HTTP 401.*--api-key-env"):
            engine.load(corpus)


def test_corpus_over_max_model_len_is_refused_before_sending(tokenizer, corpus):
    with FakeServer(models=[{"id": "omni", "max_model_len": 160}], chat=streaming_chat(["x"])) as server:
        engine = RemoteEngine(server.url, tokenizer=tokenizer)
        layout = engine.plan(corpus.total_tokens)
        assert not layout.fits and layout.window == 160
        assert f"{corpus.total_tokens:,} tokens" in layout.reason and "160" in layout.reason
        with pytest.raises(CorpusTooLarge, match="160"):
            engine.load(corpus)
        assert server.requests == []
        # The constructor's max_model_len overrides what the server reports.
        assert RemoteEngine(server.url, max_model_len=8192, tokenizer=tokenizer).plan(corpus.total_tokens).fits


def test_context_length_400_at_load_and_at_ask(tokenizer, corpus):
    state = {"refuse": True}

    def chat(handler, body):
        if state["refuse"]:
            message = ("This model's maximum context length is 4096 tokens. However, you requested 5000 tokens "
                       "(4900 in the messages, 100 in the completion).")
            return send_json(handler, 400, {"object": "error", "message": message, "type": "BadRequestError",
                                            "code": 400})
        send_json(handler, 200, completion("x", 300))

    with FakeServer(chat=chat) as server:
        engine = RemoteEngine(server.url, tokenizer=tokenizer)
        with pytest.raises(CorpusTooLarge, match="maximum context length is 4096"):
            engine.load(corpus)
        state["refuse"] = False
        engine.load(corpus)
        state["refuse"] = True
        with pytest.raises(BackendError, match=r"longer than the server's context \(HTTP 400"):
            answer(engine, "What is the vault code?")


def test_other_http_errors_carry_the_status(tokenizer, corpus):
    def chat(handler, body):
        send_json(handler, 503, {"detail": "engine is overloaded"})
    with FakeServer(chat=chat) as server:
        engine = RemoteEngine(server.url, tokenizer=tokenizer)
        with pytest.raises(BackendError, match="HTTP 503: engine is overloaded"):
            engine.load(corpus)


def test_dropped_stream_keeps_the_partial_answer(tokenizer, corpus):
    def chat(handler, body):
        if not body.get("stream"):
            return send_json(handler, 200, completion("x", 300))
        start_stream(handler)
        for word in ["The ", "vault ", "code "]:
            send_event(handler, delta(word))
        handler.close_connection = True  # the server dies mid-answer: no last chunk, no [DONE]
        handler.connection.shutdown(socket.SHUT_RDWR)

    with FakeServer(chat=chat) as server:
        engine = RemoteEngine(server.url, tokenizer=tokenizer)
        engine.load(corpus)
        text, stats = answer(engine, "What is the vault code?")
        assert text == "The vault code "
        assert stats.finish_reason == "cut" and stats.new_tokens > 0


def test_stream_closed_cleanly_without_finish_is_cut(tokenizer, corpus):
    def chat(handler, body):
        if not body.get("stream"):
            return send_json(handler, 200, completion("x", 300))
        start_stream(handler)
        send_event(handler, delta("The "))
        end_stream(handler)

    with FakeServer(chat=chat) as server:
        engine = RemoteEngine(server.url, tokenizer=tokenizer)
        engine.load(corpus)
        text, stats = answer(engine, "What is the vault code?")
        assert (text, stats.finish_reason) == ("The ", "cut")


def test_error_event_in_the_stream_is_raised(tokenizer, corpus):
    def chat(handler, body):
        if not body.get("stream"):
            return send_json(handler, 200, completion("x", 300))
        start_stream(handler)
        send_event(handler, {"error": {"message": "CUDA out of memory", "code": 500}})
        end_stream(handler)

    with FakeServer(chat=chat) as server:
        engine = RemoteEngine(server.url, tokenizer=tokenizer)
        engine.load(corpus)
        with pytest.raises(BackendError, match="CUDA out of memory"):
            answer(engine, "What is the vault code?")


def test_timeout_is_reported_with_the_limit(tokenizer, corpus):
    def chat(handler, body):
        time.sleep(1.5)
        send_json(handler, 200, completion("x", 300))

    with FakeServer(chat=chat) as server:
        engine = RemoteEngine(server.url, timeout=0.5, tokenizer=tokenizer)
        with pytest.raises(BackendError, match=r"could not get an answer from the server at .* within 0.5 s"):
            engine.load(corpus)


def test_usage_cached_tokens_and_ttft_come_from_the_server(tokenizer, corpus):
    usage = {"prompt_tokens": 321, "completion_tokens": 3, "total_tokens": 324,
             "prompt_tokens_details": {"cached_tokens": 304}}
    with FakeServer(chat=streaming_chat(["4", "4", "17"], usage)) as server:
        engine = RemoteEngine(server.url, tokenizer=tokenizer)
        with pytest.raises(NoCorpus):
            answer(engine, "too early")
        stats = engine.load(corpus)
        assert (stats.tokens, stats.kv_dtype) == (300, "server")
        text, result = answer(engine, "What is the vault code?", settings=Settings(max_new_tokens=7, seed=3))
        assert text == "4417"
        assert (result.prompt_tokens, result.cached_tokens, result.new_tokens) == (321, 304, 3)
        assert result.usage_from_server and result.cached_from_server and result.finish_reason == "stop"
        assert result.ttft_s >= 0
        body = server.requests[-1]
        assert body["stream"] and body["stream_options"] == {"include_usage": True}
        assert (body["max_tokens"], body["seed"], body["model"]) == (7, 3, "omni")


def test_every_request_starts_with_the_same_corpus_messages(tokenizer, corpus):
    with FakeServer(chat=streaming_chat(["ok"])) as server:
        engine = RemoteEngine(server.url, tokenizer=tokenizer)
        engine.load(corpus, system_prompt="Be brief.")
        answer(engine, "First?")
        first = "".join(p for p in engine.ask("Second?", history=[Turn("First?", "ok")])
                        if isinstance(p, str))
        assert first == "ok"
        warmup, one, two = (body["messages"] for body in server.requests)
        assert warmup[0] == one[0] == two[0] == {"role": "system", "content": "Be brief."}
        prefix = corpus.text + "\n\n"
        assert all(m[1]["content"].startswith(prefix) for m in (warmup, one, two))
        assert two[1]["content"] == prefix + "First?" and two[-1] == {"role": "user", "content": "Second?"}


def test_cancel_stops_a_slow_load(tokenizer, corpus):
    release = threading.Event()

    def chat(handler, body):
        release.wait(5)
        send_json(handler, 200, completion("x", 300))

    with FakeServer(chat=chat) as server:
        engine = RemoteEngine(server.url, tokenizer=tokenizer)
        cancel = threading.Event()
        threading.Timer(0.3, cancel.set).start()
        started = time.perf_counter()
        with pytest.raises(Cancelled):
            engine.load(corpus, cancel=cancel)
        assert time.perf_counter() - started < 3
        release.set()


def test_old_turns_are_dropped_to_fit_the_window(tokenizer, corpus):
    with FakeServer(models=[{"id": "omni", "max_model_len": 2048}], chat=streaming_chat(["ok"])) as server:
        engine = RemoteEngine(server.url, tokenizer=tokenizer)
        engine.load(corpus)
        long_turn = Turn("Tell me everything. " * 300, "Everything. " * 400)
        pieces = list(engine.ask("And now?", history=[long_turn, Turn("Short?", "Yes.")]))
        assert pieces[-1].dropped_turns == 1
        messages = server.requests[-1]["messages"]
        assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
        assert messages[1]["content"].endswith("\n\nShort?") and messages[-1]["content"] == "And now?"


def test_window_from_what_each_server_reports(tokenizer):
    cases = [({"id": "m", "max_model_len": 131072}, 131072),  # vLLM
             ({"id": "m", "meta": {"n_ctx_train": 8192}}, 8192),  # llama.cpp's llama-server
             ({"id": "m", "owned_by": "me"}, 0)]  # llama-cpp-python: not reported
    for entry, window in cases:
        with FakeServer(models=[entry]) as server:
            engine = RemoteEngine(server.url, tokenizer=tokenizer)
            assert engine.window == window
            assert engine.plan(10**9).fits is (window == 0)
