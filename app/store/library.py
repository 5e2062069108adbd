"""Processed corpora on disk: the KV cache of a prompt prefix, saved once and reopened in seconds.

An entry is one folder under the cache directory (`$XDG_CACHE_HOME/omnibus`, else `~/.cache/omnibus`):

    meta.json        what the entry is valid for (the model fingerprint and a hash of the exact prefix token ids),
                     its name, size and dates, and each file's size, segments and their xxh3-128 checksums
    layer_000.kv     one file per layer: keys [H_kv, T, D], values [H_kv, T, D], then for fp8 caches the
    ...              key and value scales [H_kv, T] (bf16); T is the entry's token count
    ids.bin          the prefix token ids (int32), so a client can name the corpus (app/server) without its files

`entry.py` reads and checks meta.json; this module saves, lists, restores and prunes the entries.

Layers stream between the device and the disk in blocks of at most BLOCK_BYTES, never as a second copy of
the cache. An entry is written in a temporary folder and renamed into place, so a crash mid-write never
leaves one that looks valid; a file whose size or checksum is wrong is discarded (with a warning) and the
corpus is prefilled instead.

A saved prefix of a longer prompt is reused too: reopening loads the longest saved prefix and prefills only
the rest. That one mechanism gives both "extend a corpus" and "resume a prefill from its last checkpoint":
checkpoints are entries of a prefix, written during a long prefill; only the newest is kept.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.store.cache_key import FORMAT, fingerprint, fingerprint_hash, ids_hash, sha
from app.store.entry import BadMeta, Entry, is_count, read_meta
from app.errors import OmnibusError
from app.model_hub import free_bytes  # tests replace it here to simulate a full disk
from app.store.kv_files import CorruptEntry, layer_bytes, layer_name, parts, read_layer, write_layer

log = logging.getLogger(__name__)

RESERVE_BYTES = 256 * 2**20  # left free on the disk after a save
WORKERS = 8  # layers written or read at once (file I/O and device copies release the GIL; xxh3 is ~30 GB/s)
GB = 1e9
IDS_FILE = "ids.bin"  # the prefix token ids (little-endian int32), for clients that name a saved corpus


class CacheEntryNotFound(OmnibusError):
    """`cache rm ID` named no saved corpus (or more than one)."""


TEMP_NAME = re.compile(r"\.tmp-[0-9a-f]{20}-(?P<pid>\d{1,10})-[0-9a-f]{6}")  # what `save` writes into


def default_dir() -> Path:
    """The cache folder: $XDG_CACHE_HOME/omnibus, else ~/.cache/omnibus."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "omnibus"


@dataclass
class SaveResult:
    """What became of a save: "saved", "exists" (already on disk), "skipped" (too little disk) or "failed"."""

    status: str
    message: str = ""
    entry: Entry | None = None
    seconds: float = 0.0
    bytes: int = 0

    @property
    def ok(self) -> bool:
        return self.status in ("saved", "exists")


@dataclass
class RestoreResult:
    """What a restore loaded: `tokens` prefix tokens from `entry` (0: nothing usable on disk)."""

    tokens: int = 0
    seconds: float = 0.0
    bytes: int = 0
    entry: Entry | None = None
    discarded: list[str] = field(default_factory=list)  # one message per bad entry removed
    clobbered: bool = False  # a bad entry was partly copied in: the cache's earlier contents are gone


def _describe(sources) -> tuple[str, int]:
    """A library name from the corpus's first document sources, and the document count ("" with none known)."""
    sources = list(sources)
    name = ", ".join(sources[:3]) + (f" and {len(sources) - 3} more" if len(sources) > 3 else "")
    return name, len(sources)


def _write_json(path: Path, data: dict) -> None:
    temp = path.with_name(path.name + f".{uuid.uuid4().hex[:8]}.tmp")
    with open(temp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


class Store:
    """The library of saved corpora in one folder: save, restore, list, remove, prune.

    max_bytes: after each save, least recently used entries go until the library fits (None: no cap).
    checkpoint_tokens / checkpoint_seconds: during a prefill, save a checkpoint every so many new tokens or
    seconds of prefill, whichever comes first (None: never by that measure).
    """

    def __init__(self, root=None, *, max_bytes: int | None = None, checkpoint_tokens: int | None = None,
                 checkpoint_seconds: float | None = 600.0, min_tokens: int = 1):
        self.root = Path(root) if root else default_dir()
        self.max_bytes = max_bytes
        self.checkpoint_tokens, self.checkpoint_seconds = checkpoint_tokens, checkpoint_seconds
        self.min_tokens = min_tokens

    # -- the library --
    def entries(self) -> list[Entry]:
        """Every readable entry, most recently used first (unreadable folders are skipped with a warning)."""
        out = []
        try:
            folders = sorted(d.name for d in os.scandir(self.root) if not d.name.startswith(".")
                             and d.is_dir(follow_symlinks=False))  # a link is no entry of ours
        except OSError:
            return out
        for name in folders:
            path = self.root / name
            try:
                meta = read_meta(path)
            except BadMeta as err:
                log.warning("disk cache: ignoring %s (%s)", path, err)
                continue
            out.append(Entry(path, meta))
        return sorted(out, key=lambda e: e.last_used, reverse=True)

    def find(self, ident: str) -> Entry:
        """The entry whose id starts with `ident` (which may not be empty)."""
        if not isinstance(ident, str) or not ident.strip():
            raise CacheEntryNotFound("give the id of a saved corpus (or a unique start of one); "
                                     "`cache list` shows them")
        found = [e for e in self.entries() if e.id.startswith(ident)]
        if len(found) != 1:
            raise CacheEntryNotFound(f"{len(found)} saved corpora in {self.root} have an id starting with "
                                     f"{ident!r}; `cache list` shows them")
        return found[0]

    def remove(self, entry: Entry | str) -> Entry:
        """Delete an entry (or the one whose id starts with the given text)."""
        entry = self.find(entry) if isinstance(entry, str) else entry
        shutil.rmtree(entry.path, ignore_errors=True)
        return entry

    def total_bytes(self) -> int:
        return sum(e.bytes for e in self.entries())

    def prune(self, max_bytes: int, keep: tuple[str, ...] = ()) -> list[Entry]:
        """Remove least recently used entries until the library holds at most `max_bytes`; returns them.

        Only entries with a valid meta.json, and half-written folders named as `save` names them, are touched.
        """
        if not is_count(max_bytes):
            raise ValueError(f"max_bytes must be a whole number of bytes >= 0, not {max_bytes!r}")
        self._clean_temp()
        entries, removed = self.entries(), []
        total = sum(e.bytes for e in entries)
        for entry in reversed(entries):  # oldest use first
            if total <= max_bytes:
                break
            if entry.id in keep:
                continue
            self.remove(entry)
            removed.append(entry)
            total -= entry.bytes
        return removed

    def _clean_temp(self) -> None:
        """Remove half-written folders of ours (named as `save` names them) whose writer process is gone."""
        try:
            temps = [d.name for d in os.scandir(self.root) if d.is_dir(follow_symlinks=False)]
        except OSError:
            return
        for name in temps:
            m = TEMP_NAME.fullmatch(name)
            if m and not _pid_alive(int(m["pid"])):
                shutil.rmtree(self.root / name, ignore_errors=True)

    # -- saving --
    def save(self, engine, *, kind: str = "corpus", label: str | None = None,
             description: tuple[str, int] | None = None) -> SaveResult:
        """Write the engine's committed prefix (engine.cached_ids) as an entry. Never raises: a full disk or a
        failed write gives a SaveResult that says why, and leaves nothing half-written behind."""
        started = time.perf_counter()
        cache, ids = engine.cache, list(engine.cached_ids)
        tokens = len(ids)
        if cache is None or tokens < self.min_tokens or cache.length < tokens:
            return SaveResult("skipped", f"nothing to save ({tokens:,} tokens cached)")
        fp = fingerprint(engine, cache.storage)
        fp_hash, prefix_hash = fingerprint_hash(fp), ids_hash(ids)
        entry_id = sha((fp_hash + prefix_hash).encode())[:20]
        final = self.root / entry_id
        existing = self._load_entry(final)
        if existing is not None:
            self._touch(existing)
            return SaveResult("exists", "already in the disk cache", existing, time.perf_counter() - started)
        if final.exists():  # a broken entry under this key (unreadable meta.json): replace it
            shutil.rmtree(final, ignore_errors=True)
        need = sum(layer_bytes(layer, tokens) for layer in cache.layers)
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)  # saved corpora are readable by you only
            free = free_bytes(self.root)
        except OSError as err:
            return SaveResult("failed", f"not saved to the disk cache: {self.root} is not usable ({err})")
        if free < need + RESERVE_BYTES:
            message = (f"not saved to the disk cache: it needs {need / GB:,.2f} GB and {self.root} has "
                       f"{free / GB:,.2f} GB free (keeping {RESERVE_BYTES / GB:.2f} GB spare); free some space "
                       f"or run `cache prune`")
            log.warning(message)
            return SaveResult("skipped", message)
        name, documents = description or _describe(engine.corpus_sources)
        temp = self.root / f".tmp-{entry_id}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        try:
            temp.mkdir(mode=0o700)
            meter = _Rate("saving the corpus to disk", need)
            with ThreadPoolExecutor(min(WORKERS, len(cache.layers))) as pool:
                files = list(pool.map(lambda i: meter.done(write_layer(cache.layers[i], tokens, temp / layer_name(i)),
                                                           layer_bytes(cache.layers[i], tokens)),
                                      range(len(cache.layers))))
            (temp / IDS_FILE).write_bytes(np.asarray(ids, dtype="<i4").tobytes())  # checked by prefix_sha256
            now = time.time()
            meta = {"format": FORMAT, "kind": kind, "name": label or name, "documents": documents,
                    "tokens": tokens, "bytes": sum(f["bytes"] for f in files), "created": now, "last_used": now,
                    "fingerprint_hash": fp_hash, "prefix_sha256": prefix_hash, "fingerprint": fp, "files": files}
            _write_json(temp / "meta.json", meta)
            _fsync_dir(temp)
            os.replace(temp, final)
            _fsync_dir(self.root)
        except Exception as err:  # a failed save must never cost the prefill that was just done
            shutil.rmtree(temp, ignore_errors=True)
            if isinstance(err, OSError) and err.errno in (errno.EEXIST, errno.ENOTEMPTY) and final.exists():
                entry = self._load_entry(final)  # another process saved the same prefix first
                return SaveResult("exists", "already in the disk cache", entry, time.perf_counter() - started)
            full = isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)
            message = f"not saved to the disk cache: {'the disk is full' if full else err}"
            log.warning(message, exc_info=not isinstance(err, OSError))
            return SaveResult("failed", message)
        entry = Entry(final, meta)
        self._drop_superseded_checkpoints(fp_hash, ids, keep=entry_id)
        if self.max_bytes is not None:
            self.prune(self.max_bytes, keep=(entry_id,))
        seconds = time.perf_counter() - started
        return SaveResult("saved", f"saved {tokens:,} tokens ({meta['bytes'] / GB:,.2f} GB) to the disk cache in "
                                   f"{seconds:.1f} s", entry, seconds, meta["bytes"])

    def _drop_superseded_checkpoints(self, fp_hash: str, ids, keep: str) -> None:
        """Checkpoints of a prefix of `ids` are superseded by the entry just saved."""
        array = np.asarray(ids, dtype="<i4")
        for entry in self.entries():
            if (entry.kind == "checkpoint" and entry.id != keep and entry.meta.get("fingerprint_hash") == fp_hash
                    and entry.tokens <= len(array) and entry.meta.get("prefix_sha256") == ids_hash(array[:entry.tokens])):
                self.remove(entry)

    def checkpointer(self, engine, label: str | None = None) -> "Checkpointer":
        """Call its `after_chunk()` after each prefill chunk; it saves a checkpoint when one is due."""
        return Checkpointer(self, engine, label)

    # -- restoring --
    def restore(self, engine, prefix: list[int], kv_dtype: str, *, beyond: int = 0) -> RestoreResult:
        """Copy the longest saved prefix of `prefix` that is longer than `beyond` tokens into engine.cache's buffers.

        The cache must already hold len(prefix) tokens. The result says how many tokens were loaded (the engine
        then makes them its committed prefix), or that a bad entry was partly copied in (`clobbered`: the cache's
        earlier contents are gone). Bad entries are removed.
        """
        started, result = time.perf_counter(), RestoreResult()
        fp_hash = fingerprint_hash(fingerprint(engine, kv_dtype))
        array = np.asarray(prefix, dtype="<i4")
        candidates = [e for e in self.entries() if e.meta.get("fingerprint_hash") == fp_hash
                      and beyond < e.tokens <= len(prefix) and e.tokens >= self.min_tokens]
        for entry in sorted(candidates, key=lambda e: e.tokens, reverse=True):
            copied = False
            if entry.meta.get("prefix_sha256") != ids_hash(array[:entry.tokens]):
                continue
            try:
                self._check(engine.cache, entry)
                copied = True  # from here on the layers may hold part of the entry
                self._read(engine.cache, entry)
            except (CorruptEntry, OSError, KeyError, ValueError, TypeError, RuntimeError) as err:
                message = f"disk cache entry {entry.id} ({entry.name}) is damaged and was removed: {err}"
                log.warning(message)
                result.discarded.append(message)
                self.remove(entry)
                if copied:
                    result.clobbered, beyond = True, 0
                continue
            self._touch(entry)
            result.tokens, result.bytes, result.entry = entry.tokens, entry.bytes, entry
            break
        result.seconds = time.perf_counter() - started
        return result

    def _check(self, cache, entry: Entry) -> None:
        """Cheap checks (layer count, storage, sizes) before anything in the cache is overwritten."""
        files, tokens = entry.meta["files"], entry.tokens
        if len(files) != len(cache.layers) or entry.meta["fingerprint"]["kv_dtype"] != cache.storage:
            raise CorruptEntry(f"{len(files)} layer files for a {len(cache.layers)}-layer {cache.storage} cache")
        if tokens > cache.capacity:
            raise CorruptEntry(f"{tokens:,} tokens do not fit a {cache.capacity:,}-token cache")
        for i, layer in enumerate(cache.layers):
            path = entry.path / layer_name(i)
            size = path.stat().st_size if path.is_file() else -1
            if files[i]["bytes"] != layer_bytes(layer, tokens) or size != files[i]["bytes"]:
                raise CorruptEntry(f"{path.name} has {max(size, 0):,} bytes, not {layer_bytes(layer, tokens):,}")

    def _read(self, cache, entry: Entry) -> None:
        files, tokens = entry.meta["files"], entry.tokens
        meter = _Rate(f"reading saved corpus {entry.id[:8]}", entry.bytes)
        with ThreadPoolExecutor(min(WORKERS, len(cache.layers))) as pool:
            for _ in pool.map(lambda i: meter.done(read_layer(cache.layers[i], tokens, entry.path / layer_name(i),
                                                              files[i]), files[i]["bytes"]),
                              range(len(cache.layers))):
                pass
        for device in {part.keys.device for layer in cache.layers for part, _ in parts(layer) if part.keys.is_cuda}:
            import torch  # only with a cache on a GPU: the store itself starts without torch

            torch.cuda.synchronize(device)

    def _load_entry(self, path: Path) -> Entry | None:
        try:
            return Entry(path, read_meta(path))
        except BadMeta:
            return None

    def _touch(self, entry: Entry) -> None:
        entry.meta["last_used"] = time.time()
        try:
            _write_json(entry.path / "meta.json", entry.meta)
        except OSError as err:
            log.warning("disk cache: could not update %s (%s)", entry.path, err)


class _Rate:
    """Progress of a save or a load, as GB done, GB/s and time left: one log line every few seconds."""

    def __init__(self, what: str, total: int, every_s: float = 3.0):
        self.what, self.total, self.every_s = what, max(total, 1), every_s
        self.bytes, self.started = 0, time.perf_counter()
        self.last = self.started
        self._lock = threading.Lock()

    def done(self, result, nbytes: int):
        """Count one finished layer file of `nbytes`; returns `result` unchanged."""
        with self._lock:
            self.bytes += nbytes
            now = time.perf_counter()
            if now - self.last >= self.every_s and self.bytes < self.total:
                self.last = now
                rate = self.bytes / max(now - self.started, 1e-9)
                log.info("%s: %.1f of %.1f GB, %.2f GB/s, %.0f s left", self.what, self.bytes / GB,
                         self.total / GB, rate / GB, (self.total - self.bytes) / rate)
        return result


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Checkpointer:
    """Saves the prefill's progress every `store.checkpoint_tokens` new tokens or `checkpoint_seconds`."""

    def __init__(self, store: Store, engine, label: str | None):
        self.store, self.engine, self.label = store, engine, label
        self.description = None
        self.last_tokens, self.last_time = len(engine.cached_ids), time.perf_counter()
        self.results: list[SaveResult] = []

    def after_chunk(self) -> None:
        store, done = self.store, len(self.engine.cached_ids)
        due = (store.checkpoint_tokens is not None and done - self.last_tokens >= store.checkpoint_tokens) or \
              (store.checkpoint_seconds is not None and time.perf_counter() - self.last_time >= store.checkpoint_seconds)
        if not due:
            return
        if self.description is None:
            self.description = _describe(self.engine.corpus_sources)
        self.results.append(store.save(self.engine, kind="checkpoint", label=self.label, description=self.description))
        self.last_tokens, self.last_time = done, time.perf_counter()
