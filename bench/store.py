"""GPU benchmark: saving the KV cache to disk and loading it back, against the prefill it replaces.

The cache is filled in place at a synthetic depth (bench/engine.py's `fill_synthetic`, random 8B weights),
saved through app.store.library, evicted from the page cache, and loaded back into the preallocated cache.

    python bench/store.py --depths bf16:262144,fp8:262144,fp8:1048576 --project --out store.json

--depths     kv:D,... cache depths to save and load
--disk-gb    the disk's own sequential write/read speed, measured first with a plain file of this size
--cache-dir  where entries are written (default: a fresh folder under $TMPDIR); each is removed afterwards
--project    also time prefill chunks at D/4, D/2 and D and project the full prefill, for the ratio
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from app.engine.engine import Engine  # noqa: E402
from app.engine.models import load_model  # noqa: E402
from app.store.library import Store  # noqa: E402
from bench.engine import fill_synthetic, llama3_tokenizer, log, project, synthetic, write_results  # noqa: E402

GB = 1e9


def evict(entry) -> None:
    """Drop the entry's files from the page cache, so the load reads the disk (clean pages, no root needed)."""
    for path in entry.path.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def disk_speed(root: str, gb: float) -> dict:
    """The disk's own speed in this run: a plain sequential write (fsync'd) and read of one file of `gb` GB,
    with 64 MiB requests, cold (evicted from the page cache) and warm."""
    path, block = os.path.join(root, "disk-speed.bin"), 64 * 2**20
    data = os.urandom(block)
    blocks = max(1, int(gb * 1e9 / block))
    started = time.perf_counter()
    with open(path, "wb") as handle:
        for _ in range(blocks):
            handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    write_s = time.perf_counter() - started
    buffer, out = bytearray(block), {"gb": blocks * block / GB, "write_gb_per_s": blocks * block / GB / write_s}
    for label in ("read_cold", "read_warm"):
        if label == "read_cold":
            fd = os.open(path, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
        started = time.perf_counter()
        with open(path, "rb", buffering=0) as handle:
            while handle.readinto(buffer):
                pass
        out[label + "_gb_per_s"] = blocks * block / GB / (time.perf_counter() - started)
    os.unlink(path)
    log("disk", out)
    return out


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def sample(engine: Engine) -> list[torch.Tensor]:
    """A few slices of the cache, to check that what was loaded is what was saved."""
    n, out = engine.cache.length, []
    for layer in (engine.cache.layers[0], engine.cache.layers[-1]):
        for t in (layer.keys, layer.values):
            out.append(t[0, :, [0, n // 2, n - 1]].view(torch.uint8).clone() if t.element_size() == 1
                       else t[0, :, [0, n // 2, n - 1]].clone())
    return out


def save_and_load(engine: Engine, store: Store, depth: int, kv: str) -> dict:
    fill_synthetic(engine, depth, kv)
    prefix, before = list(engine.cached_ids), sample(engine)
    sync()
    saved = store.save(engine, description=("synthetic", 0))
    if not saved.ok:
        return {"depth": depth, "kv": kv, "error": saved.message}
    row = {"depth": len(prefix), "kv": kv, "gb": saved.bytes / GB, "save_s": saved.seconds,
           "save_gb_per_s": saved.bytes / GB / saved.seconds}
    for label, cold in (("load_cold", True), ("load_warm", False)):
        if cold:
            evict(saved.entry)
        engine.cache.truncate(0)
        engine.sequence.prefix_ids = []
        sync()
        started = time.perf_counter()
        restored = store.restore(engine, prefix, kv)
        seconds = time.perf_counter() - started
        assert restored.tokens == len(prefix), restored
        engine.cache.adopt(restored.tokens)
        engine.sequence.prefix_ids = prefix
        assert all(torch.equal(a, b) for a, b in zip(before, sample(engine))), "loaded cache differs"
        row[label + "_s"] = seconds
        row[label + "_gb_per_s"] = saved.bytes / GB / seconds
    store.remove(saved.entry)
    return row


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--depths", default="bf16:262144,fp8:262144")
    parser.add_argument("--cache-dir", default="")
    parser.add_argument("--project", action="store_true")
    parser.add_argument("--chunk-tokens", type=int, default=16_384)
    parser.add_argument("--disk-gb", type=float, default=8.0, help="size of the plain read/write test (0: none)")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    root = args.cache_dir or tempfile.mkdtemp(prefix="omnibus-store-bench-")
    store = Store(root)
    results = {"device": torch.cuda.get_device_name(0), "cache_dir": root, "cpus": os.cpu_count(),
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": []}
    if args.disk_gb:
        results["disk"] = disk_speed(root, args.disk_gb)
    model, _ = load_model("ultralong-1m", random_weights=True)
    engine = Engine(model, llama3_tokenizer(), chunk_tokens=args.chunk_tokens, model_name="random-8B")
    engine.stop_ids = set()
    try:
        for item in filter(None, args.depths.split(",")):
            kv, depth = item.split(":")
            row = save_and_load(engine, store, int(depth), kv)
            if args.project and "error" not in row:
                chunks = [synthetic(engine, d, kv, decode_tokens=2, chunk_repeats=1)
                          for d in (int(depth) // 4, int(depth) // 2, int(depth))]
                row["prefill_projected_s"] = project(chunks, args.chunk_tokens, int(depth))
                if row["prefill_projected_s"]:
                    row["prefill_over_cold_load"] = row["prefill_projected_s"] / row["load_cold_s"]
            log("store", row)
            results["rows"].append(row)
    finally:
        if not args.cache_dir:
            shutil.rmtree(root, ignore_errors=True)
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
