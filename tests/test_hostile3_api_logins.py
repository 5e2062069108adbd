"""A login protects the API too, and MCP never reads the app's own files (issue 25, item 4, in part): with logins
and no --listen, `/v1` and `/mcp` need the printed key; `add_files` refuses the saved corpora, conversations and
the --auth-file, also through a folder that holds them. With the real demo model's engine and store."""

from __future__ import annotations

import asyncio

import pytest

from app.engine.engine import Engine
from app.server.mcp_tools import Tools
from app.server.serve import api_exposed
from app.server.service import Service
from app.store.library import Store
from app.ui.app import parse_args


def test_logins_make_the_api_need_a_key():
    assert not api_exposed(parse_args([]))  # this computer only, no logins: no key, as before
    assert api_exposed(parse_args(["--auth", "alice:correct-horse"]))
    assert api_exposed(parse_args(["--auth-file", "/tmp/users.txt"]))
    assert api_exposed(parse_args(["--listen"])) and api_exposed(parse_args(["--share"]))


class Ctx:
    """An MCP request context as add_files uses it: one client session."""

    def __init__(self):
        self.session = type("ClientSession", (), {})()


@pytest.fixture
def tools(demo_model, tmp_path):
    model, tokenizer = demo_model
    store = Store(tmp_path / "cache")
    record = store.root / ".conversations" / "alice-0123" / "r1"
    record.mkdir(parents=True)
    (record / "corpus.json").write_text('{"documents": [{"text": "alice private notes"}]}')
    users = tmp_path / "home" / "users.txt"
    users.parent.mkdir()
    users.write_text("alice:correct-horse\n")
    service = Service(Engine(model, tokenizer, model_name="demo", store=store))
    return Tools(service, any_path=True, private=[users]), record / "corpus.json", users


def test_add_files_refuses_the_apps_own_files(tools, tmp_path):
    tools, corpus_json, users = tools
    for path in (corpus_json, corpus_json.parent.parent.parent, users, users.parent):
        with pytest.raises(ValueError, match="own saved corpora, logins or credentials"):
            asyncio.run(tools.add_files([str(path)], Ctx()))
    notes = tmp_path / "notes.txt"
    notes.write_text("The harbour opens at six.\n")
    assert "1 documents" in asyncio.run(tools.add_files([str(notes)], Ctx()))


# -- each API key belongs to one login (issue 25, item 4, the rest) --

def _saved(engine, text: str) -> str:
    """A corpus loaded and saved on disk by the real engine; its full entry id."""
    ids = engine.tokenizer(text, add_special_tokens=False)["input_ids"]
    stats = engine.load_corpus(ids, system_prompt="Answer from the documents.", sources=[text[:10]])
    return stats.saved.entry.id


@pytest.fixture
def two_logins(demo_model, tmp_path):
    """An engine with two saved corpora on disk, one in alice's saved conversations and one in bob's."""
    from app.sharing.saved import Library

    model, tokenizer = demo_model
    engine = Engine(model, tokenizer, model_name="demo", store=Store(tmp_path / "cache"))
    alice_kv = _saved(engine, "Alice's ledger: the vault code is 1234.\n")
    bob_kv = _saved(engine, "Bob's diary: the boat leaves at dawn.\n")
    library = Library(engine.store.root)
    for login, kv in (("alice", alice_kv), ("bob", bob_kv)):
        library.save(login, "r1", conversation={"kv_id": kv, "sources": [login], "exchanges": []})
    return engine, alice_kv, bob_kv


def test_each_key_lists_and_asks_over_its_own_logins_corpora_only(two_logins):
    import httpx

    from app.server.access import decide_key
    from app.server.serve import app as server_app
    from serving import serving_in_thread

    engine, alice_kv, bob_kv = two_logins
    rule = decide_key(None, exposed=True, logins=["alice", "bob"])
    keys = {login: key for key, login in rule.logins.items()}
    assert set(keys) == {"alice", "bob"} and keys["alice"] != keys["bob"]
    assert keys["alice"] in rule.notice and keys["bob"] in rule.notice and "alice:" in rule.notice
    alice_id, bob_id = "omnibus/" + alice_kv[:8], "omnibus/" + bob_kv[:8]
    with serving_in_thread(server_app(engine, rule, exposed=True)) as base:
        def call(login, method, path, **kw):
            return httpx.request(method, base + path, headers={"Authorization": f"Bearer {keys[login]}"},
                                 timeout=120, **kw)

        listed = {login: [m["id"] for m in call(login, "GET", "/v1/models").json()["data"]]
                  for login in ("alice", "bob")}
        assert listed == {"alice": ["demo", alice_id], "bob": ["demo", bob_id]}
        assert call("alice", "GET", f"/v1/models/{bob_id}").status_code == 404
        question = {"messages": [{"role": "user", "content": "What is the code?"}], "max_tokens": 4}
        refused = call("alice", "POST", "/v1/chat/completions", json={"model": bob_id, **question})
        assert refused.status_code == 404  # not listed, and not told apart from a corpus that does not exist
        assert bob_id not in refused.json()["error"]["message"].partition("serves:")[2]
        unknown = call("alice", "POST", "/v1/chat/completions", json={"model": "omnibus/ffffffff", **question})
        assert unknown.status_code == 404
        assert refused.json()["error"]["message"].replace(bob_id, "X") == \
            unknown.json()["error"]["message"].replace("omnibus/ffffffff", "X")
        answered = call("alice", "POST", "/v1/chat/completions", json={"model": alice_id, **question})
        assert answered.status_code == 200, answered.text
        assert httpx.get(base + "/v1/models", timeout=30).status_code == 401  # no key: nothing


def test_with_one_login_the_key_from_the_environment_is_that_logins(monkeypatch):
    from app.server.access import Gate, decide_key

    monkeypatch.setenv("OMNIBUS_TEST_KEY", "s3cret-key")
    rule = decide_key("OMNIBUS_TEST_KEY", exposed=True, logins=["alice", "bob"])
    gate = Gate(rule)
    assert gate.check({"authorization": "Bearer s3cret-key"}) is None
    assert gate.login({"authorization": "Bearer s3cret-key"}) == "alice"
    bob = next(key for key, login in rule.logins.items() if login == "bob")
    assert gate.login({"x-api-key": bob}) == "bob"
    assert Gate(decide_key(None, exposed=True)).login({}) is None  # no logins: every saved corpus


class HttpCtx:
    """An MCP tool call's context over HTTP: its client session and the HTTP request that carried it."""

    def __init__(self, key: str, session=None):
        from starlette.requests import Request

        self.session = session or type("ClientSession", (), {})()
        scope = {"type": "http", "method": "POST", "path": "/mcp",
                 "headers": [(b"authorization", f"Bearer {key}".encode())]}
        self.request_context = type("RequestContext", (), {"request": Request(scope)})()


def test_mcp_lists_loads_and_saves_under_the_keys_login(two_logins, tmp_path):
    from app.server.access import Gate, decide_key
    from app.sharing.saved import Library

    engine, alice_kv, bob_kv = two_logins
    rule = decide_key(None, exposed=True, logins=["alice", "bob"])
    keys = {login: key for key, login in rule.logins.items()}
    folder = tmp_path / "shared-docs"
    folder.mkdir()
    (folder / "memo.txt").write_text("The lighthouse keeper is called Ines.\n")
    tools = Tools(Service(engine), files_root=str(folder), any_path=False)
    tools.login_of = Gate(rule).login  # as McpEndpoint wires it
    assert [c["id"] for c in asyncio.run(tools.list_corpora(HttpCtx(keys["alice"])))] == ["omnibus/" + alice_kv[:8]]
    with pytest.raises(ValueError, match="no saved corpus"):
        asyncio.run(tools.load(HttpCtx(keys["alice"]), corpus="omnibus/" + bob_kv[:8]))
    ctx = HttpCtx(keys["bob"])
    asyncio.run(tools.add_files([str(folder / "memo.txt")], ctx))
    asyncio.run(tools.load(ctx))
    records = Library(engine.store.root).records("bob")
    assert len(records) == 2 and not Library(engine.store.root).records("")  # under bob, not `local`
    listed = [c["id"] for c in asyncio.run(tools.list_corpora(HttpCtx(keys["bob"])))]
    assert len(listed) == 2 and "omnibus/" + bob_kv[:8] in listed
    assert len(asyncio.run(tools.list_corpora(HttpCtx(keys["alice"])))) == 1
    with pytest.raises(ValueError, match="another API key"):  # bob's session with alice's key
        asyncio.run(tools.ask("Who keeps the lighthouse?", HttpCtx(keys["alice"], ctx.session), max_tokens=2))


def test_mcp_add_files_reads_only_under_files_root_and_never_the_hugging_face_token(demo_model, tmp_path,
                                                                                     monkeypatch):
    from app.server.access import decide_key
    from app.server.serve import routes

    hf_home = tmp_path / "hf"
    hf_home.mkdir()
    (hf_home / "token").write_text("hf_secret\n")
    monkeypatch.setattr("huggingface_hub.constants.HF_HOME", str(hf_home))
    model, tokenizer = demo_model
    engine = Engine(model, tokenizer, model_name="demo", store=Store(tmp_path / "cache"))
    rule = decide_key(None, exposed=True, logins=["alice"])

    def mcp_tools(files_root=None):
        return next(r for r in routes(engine, rule, files_root=files_root, exposed=True) if r.path == "/mcp").app.tools

    notes = tmp_path / "notes.txt"
    notes.write_text("The harbour opens at six.\n")
    with pytest.raises(ValueError, match="no --files-root"):  # logins and no --files-root: nothing is read
        asyncio.run(mcp_tools().add_files([str(notes)], Ctx()))
    rooted = mcp_tools(str(tmp_path))
    assert "1 documents" in asyncio.run(rooted.add_files([str(notes)], Ctx()))
    with pytest.raises(ValueError, match="outside"):
        asyncio.run(rooted.add_files(["/etc/hostname"], Ctx()))
    for path in (hf_home / "token", hf_home):  # inside --files-root, but the hub's token is never read
        with pytest.raises(ValueError, match="credentials"):
            asyncio.run(rooted.add_files([str(path)], Ctx()))


def test_the_app_with_logins_prints_one_key_per_login_and_each_sees_its_own_saved_corpora(tmp_path, capfd):
    """The app as `launch.py --auth-file FILE` starts it (in this process): a key per login, printed at start."""
    import re

    import httpx

    from app.ui.app import start
    from app.sharing.auth import Access
    from app.sharing.saved import Library
    from serving import free_port
    from test_ui_helpers import demo_backend

    port = free_port()
    backend = demo_backend()
    backend.store = Store(tmp_path / "cache")  # saved corpora in a folder of this test's own
    args = parse_args(["--port", str(port)])
    from app.server import serve

    demo = start(args, backend, Access([("alice", "pw-a"), ("bob", "pw-b")]), api=serve)
    try:
        printed = capfd.readouterr().err
        keys = dict(re.findall(r"^\s+(alice|bob): (omnibus-\S+)", printed, re.M))
        assert set(keys) == {"alice", "bob"} and keys["alice"] != keys["bob"]
        base = f"http://127.0.0.1:{port}"
        kv = _saved(backend, "Alice's ledger: the vault code is 1234.\n")  # the page's load, in effect
        Library(tmp_path / "cache").save("alice", "r1", conversation={"kv_id": kv, "exchanges": []})

        def listed(key):
            return [m["id"] for m in httpx.get(base + "/v1/models", headers={"Authorization": f"Bearer {key}"},
                                               timeout=60).json()["data"]][1:]

        assert listed(keys["alice"]) == ["omnibus/" + kv[:8]] and listed(keys["bob"]) == []
        assert httpx.get(base + "/v1/models", timeout=60).status_code == 401
    finally:
        demo.close()
