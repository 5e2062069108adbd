"""Omnibus as a server, with real clients: the official `openai` package, a second Omnibus process
(`ask --backend openai`) and an MCP client (`mcp`), against the real API served by uvicorn over the demo model."""

from types import SimpleNamespace
import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from app.engine.engine import Engine
from app.prompt import system_prompt
from app.server.access import KeyRule
from app.server.serve import app as server_app
from app.server.service import Service
from app.store.library import Store
from serving import serving_in_thread

ROOT = Path(__file__).resolve().parent.parent
CODE = "PELICAN-42"
DOCUMENT = f"The secret launch code is {CODE}.\n"
QUESTION = "What is the secret launch code?"
SYSTEM = system_prompt(citations=False)  # what the app asks the demo model


@pytest.fixture(scope="module")
def server(demo_model, tmp_path_factory):
    """The API and MCP of `serve`, on a free localhost port, over the demo model (disk cache in a temp folder)."""
    model, tokenizer = demo_model
    store = Store(tmp_path_factory.mktemp("cache"))
    engine = Engine(model, tokenizer, model_name="demo", store=store)
    with serving_in_thread(server_app(engine, KeyRule(None))) as base:
        yield SimpleNamespace(engine=engine, url=base + "/v1")


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=300)


def _messages(question=QUESTION):
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"{DOCUMENT}\n\n{question}"}]


def test_models_list_the_loaded_model_with_its_window(client):
    models = client.models.list().data
    assert models[0].id == "demo" and models[0].max_model_len == 8192
    assert client.models.retrieve("demo").id == "demo"


def test_chat_answers_and_the_second_request_reuses_the_cached_corpus(client, server):
    first = client.chat.completions.create(model="demo", messages=_messages(), max_tokens=24)
    assert CODE in first.choices[0].message.content
    assert first.choices[0].finish_reason == "stop"
    assert first.usage.completion_tokens > 0 and first.usage.prompt_tokens > 40
    prefilled = server.engine.counters.corpus_tokens_prefilled
    second = client.chat.completions.create(model="demo", messages=_messages("What is the code?"),
                                            max_tokens=8)
    cached = second.usage.prompt_tokens_details.cached_tokens
    corpus_prefix = len(server.engine.prompt_prefix(server.engine.corpus_ids, SYSTEM))
    assert cached >= corpus_prefix > 60  # the system prompt and the whole document (and any shared turn) came from the cache
    assert server.engine.counters.corpus_tokens_prefilled == prefilled  # nothing of the corpus ran again
    assert second.usage.prompt_tokens > cached


def test_streaming_gives_the_same_answer_with_usage_at_the_end(client):
    whole = client.chat.completions.create(model="demo", messages=_messages(), max_tokens=24)
    chunks = list(client.chat.completions.create(model="demo", messages=_messages(), max_tokens=24, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content  # greedy: the same tokens, streamed
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens > 0


def test_stop_sequences_end_the_answer_before_them(client):
    reply = client.chat.completions.create(model="demo", messages=_messages(), max_tokens=24, stop=["-42"])
    assert reply.choices[0].message.content.endswith("PELICAN")
    assert reply.choices[0].finish_reason == "stop"


def test_errors_come_in_openai_shape_before_any_work(client, server):
    with pytest.raises(openai.NotFoundError) as found:
        client.chat.completions.create(model="no-such-model", messages=_messages(), max_tokens=4)
    assert found.value.code == "model_not_found" and "serves: demo" in found.value.message
    counters = dict(vars(server.engine.counters))
    long_text = "The harbour was quiet. " * 2000  # ~10,000 tokens: over the 8,192-token window
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="demo", messages=_messages(long_text + QUESTION), max_tokens=4)
    assert refused.value.code == "context_length_exceeded"
    assert "maximum context length is 8,192 tokens" in refused.value.message
    assert dict(vars(server.engine.counters)) == counters  # refused before anything ran
    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.create(model="demo", messages=_messages(), max_tokens=9000)
    assert "max_tokens asks for 9,000" in too_long.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="demo", messages=_messages(), temperature=7)
    assert bad.value.param == "temperature"
    with pytest.raises(openai.BadRequestError, match="start and end with a user message"):
        client.chat.completions.create(model="demo", messages=[{"role": "assistant", "content": "hi"}])
    response = httpx.post(server.url + "/chat/completions", content=b"{not json", timeout=30,
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]


def test_a_closed_stream_stops_decoding(client, server):
    messages = [{"role": "user", "content": "Count from 1 to 300, separated by commas: 1, 2, 3, 4,"}]
    decoded = server.engine.counters.tokens_decoded
    stream = client.chat.completions.create(model="demo", messages=messages, max_tokens=200, stream=True)
    pieces = [c.choices[0].delta.content for _, c in zip(range(6), stream)]
    stream.close()
    assert len(pieces) == 6  # it was answering
    # The next request waits its turn: once it is answered, the closed one has stopped.
    client.chat.completions.create(model="demo", messages=_messages(), max_tokens=1)
    assert server.engine.counters.tokens_decoded - decoded < 60  # not the 200 asked for


def test_omnibus_remote_backend_asks_this_server(server, tmp_path):
    """A second Omnibus process, `launch.py ask --backend openai`, against this one."""
    (tmp_path / "log.txt").write_text(DOCUMENT)
    env = dict(os.environ, OMNIBUS_NO_BOOTSTRAP="1")
    done = subprocess.run([sys.executable, str(ROOT / "launch.py"), "ask", str(tmp_path / "log.txt"), "-q",
                           QUESTION, "--backend", "openai", "--base-url", server.url, "--max-new-tokens", "24",
                           "--no-citation-prompt"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=400)
    assert done.returncode == 0, done.stderr
    assert CODE in done.stdout, done.stdout
    stats = [line for line in done.stderr.splitlines() if "prompt tokens" in line]
    cached = int(stats[0].split(" cached")[0].rsplit(", ", 1)[1].replace(",", ""))
    assert cached > 30, stats  # the load's warm-up request left the corpus cached for the question


def test_mcp_client_lists_the_tools_loads_files_and_asks(server, tmp_path, client):
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    (tmp_path / "log.txt").write_text(DOCUMENT)
    mcp_url = server.url[:-3] + "/mcp"

    async def session():
        async with streamable_http_client(mcp_url) as (read, write, _):
            async with ClientSession(read, write) as mcp:
                await mcp.initialize()
                names = sorted(t.name for t in (await mcp.list_tools()).tools)
                added = (await mcp.call_tool("add_files", {"paths": [str(tmp_path / "log.txt")]})).content[0].text
                loaded = (await mcp.call_tool("load", {})).content[0].text
                asked = await mcp.call_tool("ask", {"question": QUESTION, "max_tokens": 24})
                saved = await mcp.call_tool("list_corpora", {})
                return names, added, loaded, asked, saved

    names, added, loaded, asked, saved = asyncio.run(session())
    assert names == ["add_files", "ask", "list_corpora", "load"]
    assert "log.txt" in added and "1 documents" in added
    assert loaded.startswith("Loaded")
    assert not asked.isError and CODE in asked.structuredContent["answer"]
    assert asked.structuredContent["cached_tokens"] > 0
    corpora = saved.structuredContent["result"]
    assert [c["name"] for c in corpora] == ["log.txt"]
    # The corpus MCP loaded was saved: it is now a model id of its own, answered over without sending it.
    ident = corpora[0]["id"]
    assert ident in [m.id for m in client.models.list().data]
    reply = client.chat.completions.create(model=ident, messages=[{"role": "user", "content": QUESTION}],
                                           max_tokens=24)
    assert CODE in reply.choices[0].message.content
    assert reply.usage.prompt_tokens_details.cached_tokens >= corpora[0]["tokens"]  # the saved prefix, plus any turn the engine kept


def test_a_saved_corpus_reopens_from_disk_in_a_new_engine(server, demo_model):
    """The next day: a fresh engine on the same disk cache answers over the saved corpus without prefilling it."""
    model, tokenizer = demo_model
    engine = Engine(model, tokenizer, model_name="demo", store=server.engine.store)
    service = Service(engine)
    ident = service.models()[1]["id"]
    prompt = service.build_prompt(ident, None, [QUESTION], [])
    from app.protocol import Settings

    pieces = list(service.run(prompt, Settings(max_new_tokens=24)))
    assert CODE in "".join(pieces[:-1])
    assert engine.counters.corpus_tokens_prefilled == 0  # all of it came from the disk
    assert pieces[-1].cached_tokens >= service.models()[1]["corpus_tokens"]


def test_the_page_and_the_api_never_answer_over_each_others_documents(demo_model, tmp_path):
    """A page's question asked after an API request replaced its corpus in the model reloads it first."""
    from app.protocol import Settings
    from app.sharing.turnstile import SharedBackend, Turnstile
    from app.ui.handlers import Workbench
    from app.ui.session import Session

    model, tokenizer = demo_model
    engine, turnstile = Engine(model, tokenizer, model_name="demo"), Turnstile()
    workbench, session = Workbench(SharedBackend(engine, turnstile)), Session()
    (tmp_path / "page.txt").write_text(DOCUMENT)
    workbench.add_files(session, [tmp_path / "page.txt"])
    workbench.load(session, SYSTEM)
    service = Service(engine, turnstile)
    other = "The secret launch code is HERON-88.\n"
    api = list(service.run(service.build_prompt("demo", SYSTEM, [f"{other}\n\n{QUESTION}"], []),
                           Settings(max_new_tokens=24)))
    assert "HERON-88" in "".join(api[:-1])
    answer = list(workbench.answer(session, QUESTION, Settings(max_new_tokens=24)))[-1]
    assert CODE in answer and "HERON-88" not in answer


def test_unsupported_parameters_get_a_400_naming_them_through_the_sdk(client):
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}
    for extra, param in (({"tools": [tool], "tool_choice": "required"}, "tools"), ({"logprobs": True}, "logprobs"),
                         ({"logprobs": False, "top_logprobs": 3}, "top_logprobs")):
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model="demo", messages=_messages(), max_tokens=4, **extra)
        assert refused.value.param == param and refused.value.code == "unsupported_parameter"
        assert "not supported" in refused.value.message


def test_unknown_paths_answer_openai_shaped_json_saying_what_is_served(client, server):
    base = server.url[:-3]
    for method, path in (("POST", "/v1/completions"), ("POST", "/v1/embeddings"), ("POST", "/v1/responses"),
                         ("GET", "/chat/completions"), ("GET", "/")):
        response = httpx.request(method, base + path, json={"model": "demo", "input": "x"}, timeout=30)
        assert response.status_code == 404, (path, response.text)
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["code"] == "unknown_url"
        assert path in error["message"] and "POST /v1/chat/completions" in error["message"]
    wrong_method = httpx.get(server.url + "/chat/completions", timeout=30)
    assert wrong_method.status_code == 405 and "takes POST, not GET" in wrong_method.json()["error"]["message"]
    with pytest.raises(openai.NotFoundError) as missing:  # the SDK reads the message out of it
        client.embeddings.create(model="demo", input="x")
    assert "Omnibus serves" in missing.value.message


def test_a_json_schema_answer_parses_and_validates_through_the_sdk(client):
    import json

    import jsonschema

    schema = {"type": "object", "properties": {"code": {"type": "string"}, "found": {"type": "boolean"}},
              "required": ["code", "found"], "additionalProperties": False}
    reply = client.chat.completions.create(
        model="demo", messages=_messages(QUESTION + " Answer in JSON."), max_tokens=48,
        response_format={"type": "json_schema", "json_schema": {"name": "code", "schema": schema}})
    jsonschema.validate(json.loads(reply.choices[0].message.content), schema)
    anything = client.chat.completions.create(model="demo", messages=_messages(QUESTION + " Answer in JSON."),
                                              max_tokens=48, response_format={"type": "json_object"})
    assert isinstance(json.loads(anything.choices[0].message.content), dict)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="demo", messages=_messages(), response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strng"}}})
    assert refused.value.param == "response_format" and "strng" in refused.value.message
