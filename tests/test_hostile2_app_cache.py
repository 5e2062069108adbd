"""Garbage in the cache folder (issue 13, item 8): a meta.json that is not ours is skipped with a warning and never
breaks `cache list`, a load from disk or `cache prune`; prune touches only what it recognises; `cache rm ""` and
`--max-gb nan` are refused with a message. Real saved entries of a tiny random Llama, real files, a real FIFO."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from app import cli
from app.store.library import Store
from test_store_helpers import corpus_ids, tiny_engine

GARBAGE = {
    "list": "[]", "string": '"x"', "null": "null", "number": "3", "nan-tokens": None, "string-date": None,
    "bool-tokens": None, "negative-bytes": None, "deep": "[" * 200_000 + "]" * 200_000, "not-utf8": b"\xff\xfe{",
    "huge": None, "files-garbage": None, "inf-date": None,
}


def _meta_like(real: dict, case: str):
    meta = dict(real)
    if case == "nan-tokens":
        return json.dumps(meta).replace(f'"tokens": {meta["tokens"]}', '"tokens": NaN')
    if case == "inf-date":
        return json.dumps(meta).replace(f'"last_used": {meta["last_used"]}', '"last_used": Infinity')
    changes = {"string-date": {"last_used": "yesterday"}, "bool-tokens": {"tokens": True},
               "negative-bytes": {"bytes": -5}, "files-garbage": {"files": [1, 2]},
               "huge": {"name": "x" * (5 * 2**20)}}[case]
    return json.dumps({**meta, **changes})


@pytest.fixture
def littered(tmp_path):
    """One real saved corpus, beside folders of every kind of garbage, a FIFO meta.json, a link, other programs'
    temporary folders and one half-written folder of ours whose writer is gone."""
    ids = corpus_ids(tmp_path / "docs")
    store = Store(tmp_path / "cache")
    engine = tiny_engine(store=store)
    engine.load_corpus(ids)
    [real] = store.entries()
    for n, (case, text) in enumerate(GARBAGE.items()):
        folder = store.root / f"{n:02d}{case}"
        folder.mkdir()
        shutil.copy(real.path / "layer_000.kv", folder / "layer_000.kv")
        text = _meta_like(real.meta, case) if text is None else text
        (folder / "meta.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    (store.root / "fifo").mkdir()
    os.mkfifo(store.root / "fifo" / "meta.json")
    (store.root / "link-to-meta").mkdir()
    (store.root / "link-to-meta" / "meta.json").symlink_to(real.path / "meta.json")
    (store.root / "link-to-entry").symlink_to(real.path, target_is_directory=True)
    for name in (".tmp-build", ".tmp-other-123-cache", ".tmp-1-2-3"):
        (store.root / name).mkdir()
        (store.root / name / "keep.txt").write_text("another program's work\n")
    dead = subprocess.Popen(["true"])
    dead.wait()
    ours = store.root / f".tmp-{real.id}-{dead.pid}-abc123"
    ours.mkdir()
    return store, real, ids, ours


def test_garbage_metadata_never_breaks_list_load_or_prune(littered, capsys, caplog):
    store, real, ids, ours = littered
    assert [e.id for e in store.entries()] == [real.id]  # the FIFO did not hang it; nothing crashed
    for case in GARBAGE:
        assert f"{case} (" in caplog.text  # each skipped with a warning that says why
    assert "not a regular file" in caplog.text
    assert cli.main(["cache", "list", "--cache-dir", str(store.root)]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1].startswith("1 saved corpora") and real.id[:12] in out
    assert cli.main(["cache", "list", "--json", "--cache-dir", str(store.root)]) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == [real.id]

    engine = tiny_engine(store=Store(store.root))  # as `ask` or the app after a restart: reopens from disk
    stats = engine.load_corpus(ids)
    assert stats.source == "disk" and engine.counters.corpus_tokens_prefilled == 0

    assert cli.main(["cache", "prune", "--max-gb", "0", "--cache-dir", str(store.root)]) == 0
    assert not real.path.exists() and not ours.exists()
    left = sorted(p.name for p in store.root.iterdir())
    assert ".tmp-build" in left and ".tmp-other-123-cache" in left and ".tmp-1-2-3" in left
    assert all((store.root / n / "keep.txt").exists() for n in (".tmp-build", ".tmp-other-123-cache"))
    assert "00list" in left and "fifo" in left and "link-to-entry" in left  # not ours: left alone


def test_rm_of_an_empty_id_is_refused(littered, capsys):
    store, real, _, _ = littered
    assert cli.main(["cache", "rm", "", "--cache-dir", str(store.root)]) == 1
    assert "give the id" in capsys.readouterr().err
    assert cli.main(["cache", "rm", " ", "--cache-dir", str(store.root)]) == 1
    assert [e.id for e in store.entries()] == [real.id]


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "lots"])
def test_max_gb_must_be_a_size(value, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.main(["cache", "prune", "--max-gb", value, "--cache-dir", str(tmp_path)])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "--max-gb" in err and "size in GB" in err and "Traceback" not in err
