"""Uploaded files belong to the browser session that uploaded them.

Gradio stores an upload at `<upload folder>/<sha256 of its bytes>/<name>` and, before a handler runs, lets
any path under that folder through, the folder itself included. So on its own a session could hand
`/add_files` the upload folder (and read every user's uploads), or the path of a file someone else
uploaded. Here:

- `UploadGate` (ASGI middleware) sees each answer of Gradio's `/gradio_api/upload` and hands the paths to
  `Uploads.issue`, which moves each file into a folder of its own with a random 128-bit name, readable by
  this user only, and answers with the new path. Nobody can guess it, and two users who upload the same
  bytes get two files.
- `Uploads.claim(owner, paths)` accepts only regular files (no folder, no link) that `issue` made and that
  no other session has claimed; the first session to use a path owns it. Anything else is refused with the
  same words, so a refusal says nothing about other sessions' files.
- `Uploads.release` deletes files: the app releases a session's files as soon as their text is in its
  corpus. An upload that no session ever used goes with Gradio's `delete_cache` (after an hour).
- The folder's total is bounded: `UploadGate` refuses (HTTP 413, with the numbers) an upload that would take the
  folder past `max_total_bytes`, or leave less than `DISK_SPARE_BYTES` free on its disk, before Gradio reads it;
  an upload must say its size (Content-Length: browsers and gradio_client do).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import stat
import threading
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse

from app.errors import OmnibusError

log = logging.getLogger(__name__)
DEFAULT_MAX_TOTAL_MB = 10_000  # the upload folder's total, all browsers together (--max-upload-total-mb)
DISK_SPARE_BYTES = 2**30  # an upload never leaves less than this free on the upload folder's disk


class NotYourUpload(OmnibusError):
    """A path given to the app that is not a file this browser uploaded."""


class Uploads:
    """The files uploaded to one running app, and which browser session owns each.

    `folder` is Gradio's upload folder; `served` is the set of paths Gradio's file route may serve (the
    Blocks' `upload_file_set`), kept in step as files move and go.
    """

    def __init__(self, folder, served: set | None = None, max_total_bytes: int = DEFAULT_MAX_TOTAL_MB * 2**20):
        self.folder = Path(folder).resolve()
        self.served = served if served is not None else set()
        self.max_total_bytes = max_total_bytes
        self._owner: dict[str, str | None] = {}  # issued path -> owning session (None: not claimed yet)
        self._lock = threading.Lock()
        self._incoming = 0  # bytes of uploads being received now (admitted, not on disk yet)

    def total_bytes(self) -> int:
        """What the upload folder holds now (every browser's uploads not yet read or expired)."""
        total = 0
        for root, _dirs, files in os.walk(self.folder):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(root, name)).st_size
        return total

    def admit(self, size: int | None) -> str | None:
        """Reserve room for an upload of `size` bytes (call `done(size)` after); None, or why it is refused."""
        if size is None:
            return "refused: an upload must say its size (Content-Length)"
        with self._lock:
            held = self.total_bytes() + self._incoming
            try:
                free = shutil.disk_usage(self.folder if self.folder.exists() else self.folder.parent).free
            except OSError:
                free = None
            if held + size > self.max_total_bytes:
                return (f"refused: this upload is {_mb(size)}, and the upload folder already holds {_mb(held)} of "
                        f"the {_mb(self.max_total_bytes)} it may hold (all browsers together). Try again once "
                        "the files uploaded so far are read (they are deleted then), or start Omnibus with a "
                        "larger --max-upload-total-mb.")
            if free is not None and free - size - self._incoming < DISK_SPARE_BYTES:
                return (f"refused: this upload is {_mb(size)}, and the disk of the upload folder has {_mb(free)} "
                        f"free (Omnibus keeps {_mb(DISK_SPARE_BYTES)} spare). Free some space and try again.")
            self._incoming += size
        return None

    def done(self, size: int) -> None:
        """The upload admitted with `size` has ended (stored or not)."""
        with self._lock:
            self._incoming = max(0, self._incoming - size)

    def issue(self, path: str) -> str:
        """Move one file Gradio just stored into a private folder of its own; return its new path."""
        source = Path(path)
        try:
            if not stat.S_ISREG(os.lstat(source).st_mode) or source.resolve().parent.parent != self.folder:
                return path
            home = self.folder / secrets.token_hex(16)
            home.mkdir(mode=0o700)
            target = home / source.name
            os.replace(source, target)
            os.chmod(target, 0o600)
        except OSError as err:  # not stored yet, or gone: leave it unissued (a claim will refuse it)
            log.warning("upload %s could not be moved to a private folder: %s", source.name, err)
            return path
        with self._lock:
            self._owner[str(target)] = None
            self.served.discard(path)
            self.served.add(str(target))
        with contextlib.suppress(OSError):
            source.parent.rmdir()  # Gradio's content-addressed folder, if nothing else is in it
        return str(target)

    def claim(self, owner: str, paths) -> list[str]:
        """The `paths` as this session's own files, claiming unclaimed ones; NotYourUpload for any other."""
        paths = [str(p) for p in paths or [] if p]
        refused = []
        with self._lock:
            for path in paths:
                holder = self._owner.get(path, "")
                if holder not in (None, owner) or not _regular_file(path):
                    refused.append(Path(path).name or path)
            if refused:
                raise NotYourUpload(f"{len(refused)} of the {len(paths)} files given are not files this browser "
                                    f"uploaded ({', '.join(refused[:3])}{' …' * (len(refused) > 3)}); "
                                    "upload them again")
            for path in paths:
                self._owner[path] = owner
        return paths

    def release(self, owner: str, paths=None) -> int:
        """Delete `paths` (default: every file `owner` holds) with their folders; returns how many went."""
        with self._lock:
            mine = [p for p, o in self._owner.items() if o == owner]
            gone = mine if paths is None else [p for p in map(str, paths) if p in mine]
            for path in gone:
                del self._owner[path]
                self.served.discard(path)
        for path in gone:
            shutil.rmtree(Path(path).parent, ignore_errors=True)
        return len(gone)


def _mb(size: int) -> str:
    return f"{size / 2**20:,.1f} MB"


def _regular_file(path: str) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


class UploadGate:
    """ASGI middleware: an upload that would take the upload folder past its cap is refused (413) before Gradio
    reads it; the paths in each answer of Gradio's upload route go through `Uploads.issue`."""

    def __init__(self, app, uploads: Uploads):
        self.app, self.uploads = app, uploads

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http" or scope.get("method") != "POST" or \
                not scope.get("path", "").endswith("/gradio_api/upload"):
            return await self.app(scope, receive, send)
        length = Headers(scope=scope).get("content-length", "")
        size = int(length) if length.isdigit() else None
        refusal = await run_in_threadpool(self.uploads.admit, size)  # walks the folder: off the event loop
        if refusal is not None:
            log.warning("upload %s", refusal)
            return await PlainTextResponse(refusal, status_code=413 if size is not None else 411)(scope, receive, send)
        try:
            return await self._issue(scope, receive, send)
        finally:
            self.uploads.done(size)

    async def _issue(self, scope, receive, send):
        start, body = {}, bytearray()

        async def hold(message):
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                body.extend(message.get("body", b""))
                if not message.get("more_body", False):
                    await send_rewritten()
            else:
                await send(message)

        async def send_rewritten():
            payload = bytes(body)
            if start.get("status") == 200:
                try:
                    paths = json.loads(payload)
                except ValueError:
                    paths = None
                if isinstance(paths, list) and all(isinstance(p, str) for p in paths):
                    payload = json.dumps([self.uploads.issue(p) for p in paths]).encode()
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(payload)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": payload, "more_body": False})

        return await self.app(scope, receive, hold)
