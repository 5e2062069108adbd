"""Changing the model is the owner's alone, and the API waits it out politely (issue 25, item 5): another login,
or a client through the network or the --share tunnel, cannot switch; an API request during a switch gets a 503
with Retry-After, not a bare 500 (`AttributeError: model`). With the real demo model."""

from __future__ import annotations

import threading

import gradio as gr
import pytest
from starlette.requests import Request

from app.backend import ModelLoading, ModelSlot
from app.engine.engine import Engine
from app.server.openai_api import api_error, error_response
from app.server.service import Service
from app.ui.model_picker import Owner


def request(client: str, user: str | None = None) -> gr.Request:
    scope = {"type": "http", "method": "POST", "path": "/", "headers": [], "client": (client, 50000)}
    return gr.Request(Request(scope), username=user)


def test_only_the_owner_may_switch():
    alone = Owner()  # no --admin: the person at this computer, with no login
    assert alone.allows(request("127.0.0.1"))
    assert not alone.allows(request("192.168.1.20"))  # --listen: someone on the network
    assert not alone.allows(request("127.0.0.1", "alice"))  # a login on this computer is not the owner
    assert not Owner(loopback_trusted=False).allows(request("127.0.0.1"))  # --share: the tunnel comes from loopback
    admin = Owner("root-admin")
    assert admin.allows(request("10.0.0.7", "root-admin"))
    assert not admin.allows(request("127.0.0.1", "alice")) and not admin.allows(request("127.0.0.1"))


def test_an_api_request_during_a_switch_gets_a_503_with_retry_after(demo_model):
    model, tokenizer = demo_model
    gate = threading.Event()

    def opener(name, progress):
        if name == "second":
            gate.wait(60)  # the second model takes its time to open
        return Engine(model, tokenizer, model_name=name)

    slot = ModelSlot(opener, "first")
    assert slot.wait(60).phase == "ready"
    service = Service(slot)
    prompt = service.build_prompt("first", None, ["The harbour opens at six.\n\nWhen?"], [])
    slot.switch("second")
    try:
        with pytest.raises(ModelLoading) as loading:
            service.load(prompt)
        response = error_response(api_error(loading.value))
        assert response.status_code == 503 and response.headers["retry-after"] == "10"
    finally:
        gate.set()
    assert slot.wait(60).phase == "ready"
    assert service.load(prompt).tokens > 0


def test_other_logins_see_the_model_read_only_and_are_told_who_may_switch():
    from app.ui.model_picker import controls

    def shown(owner, req):
        choice, button, note = controls(owner, req)
        return choice["interactive"], button["interactive"], note["visible"], note["value"]

    assert shown(Owner(), request("127.0.0.1")) == (True, True, False, "")
    choice, button, visible, note = shown(Owner(), request("127.0.0.1", "alice"))
    assert (choice, button, visible) == (False, False, True)
    assert "read-only" in note and "the person who started Omnibus, at this computer" in note
    assert shown(Owner("root-admin"), request("10.0.0.7", "root-admin"))[:2] == (True, True)
    assert "the login root-admin" in shown(Owner("root-admin"), request("127.0.0.1", "bob"))[3]


def test_through_the_share_tunnel_loopback_is_not_the_owner_but_the_owner_at_this_computer_is():
    def with_headers(client, headers):
        scope = {"type": "http", "method": "POST", "path": "/", "client": (client, 50000),
                 "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}
        return gr.Request(Request(scope))

    shared = Owner(loopback_trusted=False)  # --share
    assert shared.allows(with_headers("127.0.0.1", {"host": "127.0.0.1:7860"}))
    assert not shared.allows(with_headers("127.0.0.1", {"host": "f00d.gradio.live"}))
    assert not shared.allows(with_headers("127.0.0.1", {"host": "127.0.0.1:7860", "x-forwarded-for": "127.0.0.1"}))


def test_a_path_that_is_not_a_model_folder_reads_the_same_whether_it_exists_or_not(tmp_path):
    from app import model_hub

    secrets = tmp_path / "dot-ssh"
    secrets.mkdir()
    (secrets / "id_ed25519").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o000)
    said = {}
    for path in (secrets, tmp_path / "nope", locked, secrets / "id_ed25519"):
        for look in (model_hub.card, model_hub.repo_id):
            with pytest.raises(model_hub.ModelNotAvailable) as refused:
                look(str(path))
            said.setdefault(look.__name__, set()).add(str(refused.value).replace(str(path), "PATH"))
    assert len(said["card"]) == 1 and said["card"] == said["repo_id"]
    assert "neither a model Omnibus knows" in said["card"].pop()
    model = tmp_path / "my-model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    assert model_hub.repo_id(str(model)) is None  # a real model folder is still a folder
