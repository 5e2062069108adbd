"""A saved entry on disk: its folder and its `meta.json`, read and checked against the fields `Store.save` writes.

`read_meta` opens only a regular file of at most MAX_META_BYTES and refuses any field of the wrong type
(`BadMeta`), so a folder that another program or a damaged disk left behind is skipped, never used.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from app.store.cache_key import FORMAT


class BadMeta(ValueError):
    """A `meta.json` that is not one this program wrote: the entry is skipped (with a warning), never used."""


MAX_META_BYTES = 4 * 2**20  # a real meta.json is a few KB


def read_meta(folder: Path) -> dict:
    """The checked contents of `folder/meta.json`; BadMeta says what is wrong with it.

    Only a regular file is read (a FIFO, device or link is refused without blocking), at most
    MAX_META_BYTES of it; NaN and Infinity are refused, and so is every field of the wrong type.
    """
    path = folder / "meta.json"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError as err:
        raise BadMeta(f"meta.json cannot be opened ({err.strerror or err})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise BadMeta("meta.json is not a regular file")
        if info.st_size > MAX_META_BYTES:
            raise BadMeta(f"meta.json is {info.st_size:,} bytes (at most {MAX_META_BYTES:,})")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(MAX_META_BYTES + 1)
    except OSError as err:
        raise BadMeta(f"meta.json cannot be read ({err.strerror or err})") from None
    finally:
        os.close(fd)
    try:
        meta = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise BadMeta(f"meta.json is not valid JSON ({str(err)[:80]})") from None
    return check_meta(meta)


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number")


def is_count(value) -> bool:
    """Whether `value` is a whole number >= 0 (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _time(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1e11  # before 5138


_FIELDS = {  # field -> (check, what it must be); `format` and `tokens` are required, the rest when present
    "kind": (lambda v: v in ("corpus", "checkpoint"), '"corpus" or "checkpoint"'),
    "name": (lambda v: isinstance(v, str), "text"),
    "documents": (is_count, "a count"), "tokens": (is_count, "a count"), "bytes": (is_count, "a count"),
    "created": (_time, "a time in seconds"), "last_used": (_time, "a time in seconds"),
    "fingerprint": (lambda v: isinstance(v, dict), "an object"),
    "fingerprint_hash": (lambda v: isinstance(v, str), "text"), "prefix_sha256": (lambda v: isinstance(v, str), "text"),
    "files": (lambda v: isinstance(v, list) and all(isinstance(f, dict) and is_count(f.get("bytes")) for f in v),
              "a list of files with their sizes"),
}


def check_meta(meta) -> dict:
    """`meta` if it has the shape `save` writes (the fields the library reads, each of its type); else BadMeta."""
    if not isinstance(meta, dict):
        raise BadMeta(f"meta.json holds {type(meta).__name__}, not an object")
    if meta.get("format") != FORMAT or isinstance(meta.get("format"), bool):
        raise BadMeta(f"format {str(meta.get('format'))[:20]!r}, not {FORMAT}")
    if "tokens" not in meta:
        raise BadMeta("no token count")
    for key, (ok, what) in _FIELDS.items():
        if key in meta and not ok(meta[key]):
            raise BadMeta(f"{key} is {str(meta[key])[:40]!r}, not {what}")
    return meta


@dataclass
class Entry:
    """One saved prefix, as listed in the library."""

    path: Path
    meta: dict

    @property
    def id(self) -> str:
        return self.path.name

    name = property(lambda self: self.meta.get("name", ""))
    documents = property(lambda self: self.meta.get("documents", 0))
    tokens = property(lambda self: self.meta["tokens"])
    bytes = property(lambda self: self.meta.get("bytes", 0))
    kind = property(lambda self: self.meta.get("kind", "corpus"))  # "corpus" or "checkpoint"
    last_used = property(lambda self: self.meta.get("last_used", 0.0))

    def to_json(self) -> dict:
        fp = self.meta.get("fingerprint", {})
        return {"id": self.id, "name": self.name, "kind": self.kind, "documents": self.documents,
                "tokens": self.tokens, "bytes": self.bytes, "model": fp.get("model"), "kv_dtype": fp.get("kv_dtype"),
                "created": self.meta.get("created"), "last_used": self.last_used, "path": str(self.path)}
