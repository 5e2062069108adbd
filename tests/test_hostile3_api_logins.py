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
        with pytest.raises(ValueError, match="own saved corpora or logins"):
            asyncio.run(tools.add_files([str(path)], Ctx()))
    notes = tmp_path / "notes.txt"
    notes.write_text("The harbour opens at six.\n")
    assert "1 documents" in asyncio.run(tools.add_files([str(notes)], Ctx()))
