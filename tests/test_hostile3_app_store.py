"""In the app, `/v1`'s Service talks to a `ModelSlot`: an API conversation's messages must stay in memory, never
in the saved corpora that `/v1/models` lists (issue 25, item 7). Before, `Service._load` set `engine.store = None`,
which landed on the slot while the engine kept its store and saved the prompt. With the real demo model."""

from __future__ import annotations

from app.backend import ModelSlot
from app.engine.engine import Engine
from app.server.service import Service
from app.store.library import Store

SECRET_PROMPT = "My salary is 91,000 and my manager is Dana Reyes. Please keep this between us.\n"


def test_an_api_conversation_is_not_saved_to_disk_in_the_app(demo_model, tmp_path):
    model, tokenizer = demo_model
    store = Store(tmp_path / "cache")
    slot = ModelSlot(lambda name, progress: Engine(model, tokenizer, model_name="demo", store=store), "demo",
                     before_ready={"store": store})
    assert slot.wait(120).phase == "ready"
    service = Service(slot)  # as `app.server.serve.mount` builds it beside the page
    prompt = service.build_prompt("demo", None, [SECRET_PROMPT + "\n\nWho is my manager?"], [])
    assert not prompt.on_disk
    stats = service.load(prompt)
    assert stats.tokens > 0 and stats.saved is None
    assert store.entries() == []  # nothing of the conversation on disk
    assert [m["id"] for m in service.models()] == ["demo"]  # and nothing listed as a saved corpus
    assert slot.ready.store is store  # the engine keeps its store for the page's own corpora
