"""Every backend gives the whole `Backend` protocol explicitly, and no proxy forwards attributes (issue 27, item 1):
the model slot and the shared backend answer each member themselves, so a write cannot land on the proxy and leave
a stale shadow, and a member asked while no model is ready says so (ModelLoading: the API's 503)."""

from pathlib import Path

import pytest

from app.backend import ModelLoading, ModelSlot
from app.engine.engine import Engine
from app.protocol import Backend
from app.sharing.turnstile import SharedBackend, Turnstile
from test_engine_cache import CORPUS_TEXT
from test_engine_helpers import tiny_llama

ROOT = Path(__file__).resolve().parent.parent


def test_no_proxy_in_the_app_forwards_attributes():
    forwarding = [str(p.relative_to(ROOT)) for p in (ROOT / "app").rglob("*.py") if "def __getattr__" in p.read_text()]
    assert forwarding == []


def test_the_slot_and_the_shared_backend_give_the_protocol_and_keep_no_shadow(llama3_tokenizer):
    model = tiny_llama("default", vocab=len(llama3_tokenizer), hidden=32, heads=4, kv_heads=2, tie=True, window=4096)
    engine = Engine(model, llama3_tokenizer, kv_dtype="fp32", chunk_tokens=256, model_name="tiny")
    slot = ModelSlot(lambda name, progress: engine, "tiny")
    assert slot.wait(30).phase == "ready"
    shared = SharedBackend(slot, Turnstile())
    ids = llama3_tokenizer(CORPUS_TEXT, add_special_tokens=False)["input_ids"]
    for backend in (engine, slot, shared):
        assert isinstance(backend, Backend)
        assert backend.prompt_prefix(ids) == engine.prompt_prefix(ids)
        assert backend.counters is engine.counters and backend.attention == "bf16" and backend.store is None
    stats = shared.load_corpus(ids, save=False)
    assert stats.tokens == len(engine.prompt_prefix(ids)) and engine.counters.corpus_loads == 1
    with pytest.raises(AttributeError):
        slot.store = object()  # before: it landed on the slot, and the engine kept its own store
    assert slot.store is None and engine.store is None


def test_a_slot_with_no_model_ready_says_so_for_what_needs_one():
    def fails(name, progress):
        raise RuntimeError("no such model on disk")

    slot = ModelSlot(fails, "missing-model", before_ready={"attention": "fp8"})
    assert slot.wait(30).phase == "failed"
    assert slot.attention == "fp8" and slot.store is None and slot.base_url == ""  # known before a model is
    for member in (lambda: slot.counters, lambda: slot.prompt_prefix([1, 2]), lambda: slot.load_corpus([1, 2]),
                   lambda: slot.save_corpus(), lambda: slot.set_attention("bf16")):
        with pytest.raises(ModelLoading, match="could not be opened"):
            member()
