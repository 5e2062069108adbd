"""Sequence-split caches on disk: a cache split by position over several shards (emulated on the CPU) saves
each shard's range into the one shard-independent layout, and reopens on any split, or none, unchanged."""

from __future__ import annotations

import pytest
import torch

from app.engine.kv_cache import KVCache
from app.store.kv_files import parts
from app.store.library import Store
from test_store_helpers import corpus_ids, next_logits, tiny_engine


def split_cache(engine, split: list[int], kv: str):
    """Give the engine an empty cache split over shards of these sizes (all on the CPU here)."""
    engine.sequence.cache = KVCache(engine.layer_devices, engine.shape.kv_heads, engine.shape.head_dim, 0, kv,
                           compute_dtype=engine.dtype, shards=[(torch.device("cpu"), n) for n in split])
    return engine


def gathered(engine) -> list[torch.Tensor]:
    """Every layer's committed keys, values (and fp8 scales) as raw bytes, joined across shards."""
    n, out = engine.cache.length, []
    for layer in engine.cache.layers:
        pieces = [part for part, _ in parts(layer)]
        names = ["keys", "values"] + (["key_scales", "value_scales"] if pieces[0].fp8 else [])
        for name in names:
            whole = torch.cat([getattr(p, name) for p in pieces], dim=2)[:, :, :n]
            out.append(whole.contiguous().view(torch.uint8))
    return out


@pytest.mark.parametrize("kv,tolerance", [("fp32", 1e-4), ("fp8", 5e-2)])
def test_a_sharded_cache_saves_and_reopens_on_any_split(tmp_path, kv, tolerance):
    ids = corpus_ids(tmp_path / "docs")
    reference = tiny_engine(kv=kv)
    reference.load_corpus(ids)
    expected = next_logits(reference)

    writer = split_cache(tiny_engine(kv=kv, store=Store(tmp_path / "cache")), [100, 150, 1100], kv)
    stats = writer.load_corpus(ids)
    assert writer.cache.sharded and stats.saved.status == "saved", stats.saved
    assert (next_logits(writer) - expected).abs().max().item() < tolerance
    saved = gathered(writer)

    for split in (None, [300, 1050], [50, 50, 50, 1200]):
        engine = tiny_engine(kv=kv, store=Store(tmp_path / "cache"))
        if split:
            split_cache(engine, split, kv)
        reopened = engine.load_corpus(ids)
        assert (reopened.source, reopened.tokens) == ("disk", stats.tokens), split
        assert engine.counters.corpus_tokens_prefilled == 0
        assert all(torch.equal(a, b) for a, b in zip(gathered(engine), saved, strict=True)), split
        assert (next_logits(engine) - expected).abs().max().item() < tolerance, split


def test_a_damaged_byte_anywhere_is_caught(tmp_path, caplog):
    """Flip one byte at each of many places in every layer file: every damaged entry is refused and rebuilt."""
    ids = corpus_ids(tmp_path / "docs")
    first = tiny_engine(kv="fp8", store=Store(tmp_path / "cache"))
    first.load_corpus(ids)
    [entry] = Store(tmp_path / "cache").entries()
    files = sorted(entry.path.glob("layer_*.kv"))
    size = files[0].stat().st_size
    generator = torch.Generator().manual_seed(0)
    for trial in range(6):
        path = files[trial % len(files)]
        offset = int(torch.randint(0, size, (1,), generator=generator))
        data = bytearray(path.read_bytes())
        data[offset] ^= 1 << (trial % 8)
        path.write_bytes(bytes(data))
        engine = tiny_engine(kv="fp8", store=Store(tmp_path / "cache"))
        stats = engine.load_corpus(ids)
        assert stats.source == "prefill", (trial, offset)  # refused, prefilled, and saved whole again
        assert f"fails its checksum" in caplog.text
        caplog.clear()
        [entry] = Store(tmp_path / "cache").entries()
        files = sorted(entry.path.glob("layer_*.kv"))
