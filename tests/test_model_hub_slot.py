"""The app's model slot (app/backend.py `ModelSlot`): the model downloads and loads in the background while the
handlers already work, then answers; switching to another model (a local folder) needs no restart. Real parts: the
demo's GGUF file downloaded by huggingface_hub from the local hub, the real engine, the real handlers."""

from __future__ import annotations

import threading

from app.backend import ModelSlot, open_backend
from app.settings import BackendSettings
from app.ui.handlers import Workbench
from app.ui.session import Session
from test_model_hub import GGUF, REPO, hub, repo_folder  # noqa: F401  (fixtures)

FACT = "The ferry to Sandholm leaves at 06:40 every weekday."


def test_download_then_load_in_the_background_then_switch_to_a_folder(hub, repo_folder, tmp_path):  # noqa: F811
    states = []
    gate = threading.Event()  # the download waits until the test has seen the slot before it

    def opener(model, progress):
        gate.wait(60)
        return open_backend(BackendSettings(model=model, disk_cache=False), progress)

    slot = ModelSlot(opener, REPO, on_change=states.append)
    assert slot.state.phase == "loading" and slot.ready is None and slot.model_name == REPO
    gate.set()
    notes = tmp_path / "notes.txt"
    notes.write_text(f"Harbour notes.\n{FACT}\n")
    workbench, session = Workbench(slot), Session()
    while slot.state.phase == "downloading" or not any(s.download for s in states):
        slot._thread.join(0.1)  # until the download is over (the slot is loading, or ready)
    workbench.add_files(session, [notes])  # the demo's own tokenizer: waits while the model loads
    assert slot.wait(300).phase == "ready", slot.state
    phases = [s.phase for s in states]
    assert phases[0] == "loading" and phases[-1] == "ready"
    progress = [s.download for s in states if s.download is not None]
    assert progress[-1].finished and progress[-1].done == progress[-1].total > 90_000_000
    assert session.corpus.counter.tokenizer is slot.tokenizer

    workbench.load(session, slot.system_prompt)
    answer = "".join(p for p in workbench.answer(session, "When does the ferry to Sandholm leave?")
                     if isinstance(p, str))
    assert "6:40" in answer or "06:40" in answer, answer

    slot.switch(str(repo_folder))
    assert slot.wait(300).phase == "ready", slot.state
    assert slot.model_name == str(repo_folder) and slot.window == 8_192
    stats = workbench.load(session, slot.system_prompt)  # the new model reads the documents afresh
    assert stats.tokens > session.corpus.total_tokens


def test_a_model_that_cannot_be_had_fails_plainly_and_says_why(hub, monkeypatch):  # noqa: F811
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    slot = ModelSlot(lambda model, progress: open_backend(BackendSettings(model=model, disk_cache=False), progress),
                     "ultralong-1m")
    state = slot.wait(60)
    assert state.phase == "failed" and "omnibus pull ultralong-1m" in state.message
    assert slot.tokenizer is not None  # the UltraLong models count with the bundled Llama-3 tokenizer meanwhile
    assert slot.plan(1000).fits and slot.window == 1_048_576
    try:
        slot.ask("anything")
    except Exception as err:  # ModelLoading, the message the page shows
        assert "could not be opened" in str(err) and "Pick another model" in str(err)
    else:
        raise AssertionError("asking a failed model must raise")
    assert hub.requests == []
