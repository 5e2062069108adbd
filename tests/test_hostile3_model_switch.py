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
