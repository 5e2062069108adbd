"""The disk cache with real parts: tiny random Llama engines, the real Llama-3 tokenizer, real ingested files."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch

from app.store import library as store_module
from app.errors import Cancelled
from app.store.library import Store
from test_store_helpers import answer, cached_kv, corpus_ids, make_corpus, next_logits, tiny_engine


def stored(folder):
    """What the cache folder holds besides the measured speed (app/calibration.py keeps it there too)."""
    return [path for path in folder.iterdir() if path.name != "calibration.json"]


def same_kv(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(cached_kv(a), cached_kv(b), strict=True))


@pytest.mark.parametrize("kv", ["fp32", "fp8"])
def test_reopen_after_restart_loads_from_disk_with_identical_logits_and_answer(tmp_path, kv):
    ids = corpus_ids(tmp_path / "docs")
    first = tiny_engine(kv=kv, store=Store(tmp_path / "cache"))
    stats = first.load(make_corpus(tmp_path / "docs"))  # named from the corpus's sources
    assert stats.source == "prefill" and stats.saved.status == "saved"
    [entry] = Store(tmp_path / "cache").entries()
    assert (entry.name, entry.documents, entry.tokens) == ("alpha.txt, beta.md", 2, stats.tokens)
    assert entry.bytes == sum(f.stat().st_size for f in entry.path.glob("layer_*.kv"))

    again = tiny_engine(kv=kv, store=Store(tmp_path / "cache"))  # a new process: same weights, empty cache
    reopened = again.load_corpus(ids)
    assert (reopened.source, reopened.reused, reopened.tokens) == ("disk", stats.tokens, stats.tokens)
    assert again.counters.corpus_tokens_prefilled == 0 and reopened.saved is None
    assert reopened.disk_seconds > 0
    assert again.cached_ids == first.cached_ids and same_kv(first, again)
    assert torch.equal(next_logits(first), next_logits(again))
    assert answer(first) == answer(again)


def test_loading_what_is_already_in_memory_touches_no_disk(tmp_path):
    ids = corpus_ids(tmp_path / "docs")
    engine = tiny_engine(store=Store(tmp_path / "cache"))
    engine.load_corpus(ids)
    stats = engine.load_corpus(ids)
    assert (stats.source, stats.saved, stats.disk_seconds) == ("memory", None, 0.0)


@pytest.mark.parametrize("damage", ["flip", "truncate", "missing", "meta"])
def test_damaged_entry_is_discarded_and_rebuilt(tmp_path, damage, caplog):
    ids = corpus_ids(tmp_path / "docs")
    reference = tiny_engine(store=Store(tmp_path / "cache"))
    reference.load_corpus(ids)
    [entry] = Store(tmp_path / "cache").entries()
    layer = entry.path / "layer_001.kv"
    if damage == "flip":
        data = bytearray(layer.read_bytes())
        data[len(data) // 2] ^= 0x40
        layer.write_bytes(bytes(data))
    elif damage == "truncate":
        layer.write_bytes(layer.read_bytes()[:-100])
    elif damage == "missing":
        layer.unlink()
    else:
        (entry.path / "meta.json").write_text("{not json")

    engine = tiny_engine(store=Store(tmp_path / "cache"))
    stats = engine.load_corpus(ids)
    assert stats.source == "prefill" and engine.counters.corpus_tokens_prefilled == stats.tokens
    assert same_kv(reference, engine) and answer(reference) == answer(engine)
    if damage != "meta":
        assert "damaged and was removed" in caplog.text
    assert stats.saved.status == "saved"  # rebuilt and saved again
    fresh = tiny_engine(store=Store(tmp_path / "cache"))
    assert fresh.load_corpus(ids).source == "disk" and same_kv(reference, fresh)


def test_checksum_failure_after_a_partial_copy_leaves_a_consistent_cache(tmp_path, caplog):
    ids = corpus_ids(tmp_path / "docs")
    tiny_engine(store=Store(tmp_path / "cache")).load_corpus(ids)
    [entry] = Store(tmp_path / "cache").entries()
    entry.meta["files"][1]["xxh3_128"][-1] = "0" * 32  # the sizes are right; only the checksum catches it
    store_module._write_json(entry.path / "meta.json", entry.meta)
    engine = tiny_engine(store=Store(tmp_path / "cache"))
    engine.load_corpus(ids[:40])  # something in memory that the bad copy overwrites
    stats = engine.load_corpus(ids)
    assert "fails its checksum" in caplog.text
    assert stats.source == "prefill" and stats.reused == 0
    assert same_kv(_loaded(tiny_engine(), ids), engine)


def _loaded(engine, ids):
    engine.load_corpus(ids)
    return engine


@pytest.mark.parametrize("change", ["model", "kv", "system", "corpus"])
def test_a_changed_model_dtype_prompt_or_corpus_never_reuses_a_stale_entry(tmp_path, change):
    ids = corpus_ids(tmp_path / "docs")
    tiny_engine(store=Store(tmp_path / "cache")).load_corpus(ids)
    engine = tiny_engine(seed=1 if change == "model" else 0, kv="fp8" if change == "kv" else "fp32",
                         store=Store(tmp_path / "cache"))
    if change == "corpus":
        ids = ids[:50] + [ids[50] + 1] + ids[51:]
    stats = engine.load_corpus(ids, system_prompt="Answer briefly." if change == "system" else None)
    assert stats.source == "prefill" and engine.counters.corpus_tokens_prefilled == stats.tokens
    assert len(Store(tmp_path / "cache").entries()) == 2


def test_extending_a_saved_corpus_prefills_only_the_new_tokens(tmp_path):
    names = ("alpha.txt", "beta.md", "gamma.txt")
    old = corpus_ids(tmp_path / "docs", names[:2])
    new = corpus_ids(tmp_path / "docs", names)
    assert new[:len(old)] == old  # new files go after the old ones
    first = tiny_engine(store=Store(tmp_path / "cache"))
    old_tokens = first.load_corpus(old).tokens

    engine = tiny_engine(store=Store(tmp_path / "cache"))
    stats = engine.load(make_corpus(tmp_path / "docs", names))
    assert stats.source == "disk+prefill" and stats.reused == old_tokens
    assert engine.counters.corpus_tokens_prefilled == stats.tokens - old_tokens
    reference = _loaded(tiny_engine(), new)
    assert torch.allclose(next_logits(reference), next_logits(engine), atol=1e-5)  # chunk edges moved
    assert answer(reference) == answer(engine)
    entries = Store(tmp_path / "cache").entries()
    assert sorted(e.tokens for e in entries) == [old_tokens, stats.tokens]  # the shorter corpus stays usable
    assert entries[0].name == "alpha.txt, beta.md, gamma.txt" and entries[0].documents == 3


def test_a_cancelled_prefill_resumes_from_its_newest_checkpoint(tmp_path):
    ids = corpus_ids(tmp_path / "docs", words=80)
    store = Store(tmp_path / "cache", checkpoint_tokens=64)
    engine = tiny_engine(store=store, chunk_tokens=32)
    stop = threading.Event()
    with pytest.raises(Cancelled):
        engine.load_corpus(ids, cancel=stop, progress=lambda p: p.done >= 160 and stop.set())
    [checkpoint] = store.entries()  # the 64-token one was superseded
    assert (checkpoint.kind, checkpoint.tokens) == ("checkpoint", 128)

    restarted = tiny_engine(store=Store(tmp_path / "cache", checkpoint_tokens=64), chunk_tokens=32)
    stats = restarted.load_corpus(ids)
    assert stats.source == "disk+prefill" and stats.reused == 128
    assert restarted.counters.corpus_tokens_prefilled == stats.tokens - 128
    uninterrupted = _loaded(tiny_engine(chunk_tokens=32), ids)
    assert same_kv(uninterrupted, restarted)
    assert torch.equal(next_logits(uninterrupted), next_logits(restarted))
    [entry] = store.entries()  # the finished corpus replaces its checkpoint
    assert entry.kind == "corpus" and entry.tokens == stats.tokens


def test_too_little_disk_space_skips_the_save_with_a_message(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "free_bytes", lambda path: 10_000_000)
    engine = tiny_engine(store=Store(tmp_path / "cache"))
    stats = engine.load_corpus(corpus_ids(tmp_path / "docs"))
    assert stats.saved.status == "skipped" and not stats.saved.ok
    assert "GB free" in stats.saved.message and "cache prune" in stats.saved.message
    assert Store(tmp_path / "cache").entries() == [] and not stored(tmp_path / "cache")
    assert answer(engine)  # the prefilled corpus is still usable


def test_a_write_that_fails_midway_leaves_nothing_behind(tmp_path, monkeypatch):
    real = store_module.write_layer

    def full_disk(layer, tokens, path):
        real(layer, tokens, path)
        if path.name == "layer_001.kv":
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_module, "write_layer", full_disk)
    engine = tiny_engine(store=Store(tmp_path / "cache"))
    stats = engine.load_corpus(corpus_ids(tmp_path / "docs"))
    assert stats.saved.status == "failed" and "disk is full" in stats.saved.message
    assert not stored(tmp_path / "cache")


CRASH = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from app.store import library as store_module
    from app.store.library import Store
    from test_store_helpers import corpus_ids, tiny_engine

    real = store_module.write_layer

    def write_then_die(layer, tokens, path):
        real(layer, tokens, path)
        os.kill(os.getpid(), signal.SIGKILL)

    store_module.write_layer = write_then_die
    tmp = Path(sys.argv[1])
    tiny_engine(store=Store(tmp / "cache")).load_corpus(corpus_ids(tmp / "docs"))
""")


def test_a_writer_killed_mid_save_never_leaves_an_entry_that_loads(tmp_path):
    tests = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests.parent), str(tests)])}
    done = subprocess.run([sys.executable, "-c", CRASH, str(tmp_path)], env=env, capture_output=True, timeout=120)
    assert done.returncode == -9, done.stderr.decode()[-2000:]
    [leftover] = stored(tmp_path / "cache")
    assert leftover.name.startswith(".tmp-") and any(leftover.glob("layer_*.kv"))

    store = Store(tmp_path / "cache")
    assert store.entries() == []
    engine = tiny_engine(store=store)
    stats = engine.load_corpus(corpus_ids(tmp_path / "docs"))
    assert stats.source == "prefill" and stats.saved.status == "saved"
    store.prune(max_bytes=10**12)  # also clears folders of writers that are gone
    assert [p.name for p in stored(tmp_path / "cache")] == [stats.saved.entry.id]
