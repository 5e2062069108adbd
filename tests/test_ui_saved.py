"""The app's saved-corpora panel: what was loaded is listed from the disk library and can be removed there."""

import pytest

from app.ui import views
from app.store.library import Store
from app.ui.handlers import Session, Workbench
from test_ui_helpers import demo_backend, make_documents


@pytest.fixture
def workbench(tmp_path):
    engine = demo_backend()
    engine.drop_cache()
    engine.store = Store(tmp_path / "library")
    yield Workbench(engine)
    engine.store = None
    engine.drop_cache()


def test_a_loaded_corpus_is_listed_reopened_from_disk_and_removable(workbench, tmp_path):
    assert workbench.saved_corpora() == []
    session = Session()
    workbench.add_files(session, make_documents(tmp_path / "docs"))
    first = workbench.load(session)
    entries = workbench.saved_corpora()
    assert [e.tokens for e in entries] == [first.tokens]
    assert "harbour-report.pdf" in entries[0].name and entries[0].documents == 2
    row = views.saved_rows(entries)[0]
    assert row[1] == 2 and row[2] == f"{first.tokens:,}" and row[3].endswith(" GB")
    assert views.saved_choices(entries) == [(f"{entries[0].name} ({first.tokens:,} tokens)", entries[0].id)]

    workbench.backend.drop_cache()  # as after a restart: nothing in memory
    again = workbench.load(session)
    assert again.source == "disk" and again.reused == first.tokens

    assert workbench.remove_saved([entries[0].id]) == 1
    assert workbench.saved_corpora() == []


def test_no_library_without_a_disk_cache(tmp_path):
    engine = demo_backend()
    assert getattr(engine, "store", None) is None
    assert Workbench(engine).saved_corpora() == [] and Workbench(engine).remove_saved(["x"]) == 0
