"""The library of saved corpora (list, rm, prune by last use) and `launch.py ask|cache` with the real demo model."""

from __future__ import annotations

import json
import time

import pytest

from app import cli
from app.store.library import CacheEntryNotFound, Store
from test_store_helpers import corpus_ids, make_corpus, tiny_engine


@pytest.fixture
def library(tmp_path):
    """Three saved corpora, used oldest to newest: alpha, beta, gamma."""
    store = Store(tmp_path / "cache")
    engine = tiny_engine(store=store)
    for name in ("alpha.txt", "beta.txt", "gamma.txt"):
        engine.drop_cache()
        engine.load(make_corpus(tmp_path / name, names=(name,), words=20))
        time.sleep(0.01)
    return store


def test_list_shows_name_documents_tokens_size_and_last_use(library, capsys):
    assert [e.name for e in library.entries()] == ["gamma.txt", "beta.txt", "alpha.txt"]
    assert cli.main(["cache", "list", "--cache-dir", str(library.root)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["ID", "DOCS", "TOKENS", "SIZE", "LAST", "USED", "MODEL", "KV", "NAME"]
    assert out[1].endswith("gamma.txt") and " tiny " in out[1] and out[-1].startswith("3 saved corpora")
    assert cli.main(["cache", "list", "--json", "--cache-dir", str(library.root)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["documents"], r["kv_dtype"]) for r in rows] == \
        [("gamma.txt", 1, "fp32"), ("beta.txt", 1, "fp32"), ("alpha.txt", 1, "fp32")]
    assert all(r["tokens"] > 0 and r["bytes"] > 0 for r in rows)


def test_rm_by_id_prefix(library, capsys):
    beta = library.entries()[1]
    assert cli.main(["cache", "rm", beta.id[:8], "--cache-dir", str(library.root)]) == 0
    assert "beta.txt" in capsys.readouterr().err
    assert [e.name for e in library.entries()] == ["gamma.txt", "alpha.txt"]
    assert cli.main(["cache", "rm", "zzz", "--cache-dir", str(library.root)]) == 1
    assert "0 saved corpora" in capsys.readouterr().err
    with pytest.raises(CacheEntryNotFound):
        library.find("")  # ambiguous


def test_prune_evicts_least_recently_used_first(library, capsys):
    size = library.entries()[0].bytes
    library.restore(tiny_engine(), [], "fp32")  # restoring nothing touches nothing
    alpha = library.entries()[-1]
    engine = tiny_engine(store=library)
    engine.load_corpus(corpus_ids(library.root.parent / "alpha.txt", names=("alpha.txt",), words=20))
    assert engine.counters.corpus_tokens_prefilled == 0 and library.entries()[0].id == alpha.id  # now newest
    max_gb = 2.5 * size / 1e9
    assert cli.main(["cache", "prune", "--max-gb", str(max_gb), "--cache-dir", str(library.root)]) == 0
    assert "1 removed" in capsys.readouterr().err
    assert [e.name for e in library.entries()] == ["alpha.txt", "gamma.txt"]  # beta was used least recently


def test_size_cap_applies_after_each_save(tmp_path):
    store = Store(tmp_path / "cache")
    engine = tiny_engine(store=store)
    first = engine.load(make_corpus(tmp_path / "a", names=("a.txt",), words=20)).saved
    capped = Store(tmp_path / "cache", max_bytes=first.bytes + 10)
    engine.store = capped
    engine.load(make_corpus(tmp_path / "b", names=("b.txt",), words=20))
    assert [e.name for e in capped.entries()] == ["b.txt"]


@pytest.fixture
def demo(monkeypatch):
    from test_ui_helpers import demo_backend

    engine = demo_backend()

    def open_backend(settings, download_progress=None):  # the loaded demo model, with the real store
        engine.store = Store(settings.cache_dir) if settings.disk_cache else None
        return engine

    monkeypatch.setattr("app.backend.open_backend", open_backend)
    engine.drop_cache()
    yield engine
    engine.store = None
    engine.drop_cache()


def test_ask_saves_then_reopens_from_disk_with_the_same_answer(demo, tmp_path, capsys):
    from test_ui_helpers import FACT, QUESTION, make_documents

    documents = [str(p) for p in make_documents(tmp_path / "docs")]
    command = ["ask", *documents, "-q", QUESTION, "--max-new-tokens", "24", "--cache-dir", str(tmp_path / "cache")]
    assert cli.main(command) == 0
    first = capsys.readouterr()
    assert "from memory" in first.err and "saved" in first.err and "disk cache:" not in first.err
    assert FACT in first.out

    demo.drop_cache()  # as after a restart
    assert cli.main(command) == 0
    second = capsys.readouterr()
    assert "disk cache:" in second.err and "prefill: 0 new tokens" in second.err
    assert second.out == first.out
    assert demo.counters.corpus_tokens_prefilled > 0

    demo.drop_cache()
    assert cli.main(command + ["--no-disk-cache", "--max-new-tokens", "1"]) == 0
    assert "disk cache:" not in capsys.readouterr().err

    assert cli.main(["cache", "list", "--cache-dir", str(tmp_path / "cache")]) == 0
    listing = capsys.readouterr().out
    assert "harbour-report.pdf, security-notes.docx" in listing and " demo " in listing
