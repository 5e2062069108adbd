"""A small Hugging Face hub on 127.0.0.1 for the download tests: real files, the hub's URL layout and headers.

It answers what huggingface_hub 1.x asks for when it downloads a repository:
- `GET /api/models/{owner}/{name}/revision/{rev}`: the repository's commit sha and its files;
- `GET /api/models/{owner}/{name}/tree/{rev}?recursive=true`: every file with size, git blob id and, for large
  files, the LFS sha256;
- `HEAD` and `GET /{owner}/{name}/resolve/{rev}/{path}`: the bytes, with `X-Repo-Commit`, `ETag` (the LFS sha256,
  or the git blob id), `Content-Length` and `Range` support (206 and `Content-Range`).
Unknown repositories get 404 with `X-Error-Code: RepoNotFound`, as on the hub. Every request is recorded.
`dropping` ({file: n}) cuts the next n GETs of a file after `drop_after` bytes (a broken connection); GETs of a
file named in `failing` answer 500 for as long as it is there; every other GET gets the whole file.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"
LFS_FROM_BYTES = 1_000_000  # files this big are served as LFS files (sha256 ETag), as the hub does for weights


class LocalHub:
    """`with LocalHub({"owner/name": folder}) as hub:` serves those folders at `hub.url`."""

    def __init__(self, repos: dict[str, Path]):
        self.repos = {repo: self._index(Path(folder)) for repo, folder in repos.items()}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.dropping: dict[str, int] = {}
        self.failing: set[str] = set()
        self.drop_after = 25_000_000  # more than huggingface_hub's 10 MB read chunk, so part of it reaches the disk
        self._lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub._answer(self, body=False)

            def do_GET(self):
                hub._answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "LocalHub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def _index(folder: Path) -> dict[str, dict]:
        files = {}
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            data = path.read_bytes()
            blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
            entry = {"path": str(path.relative_to(folder)), "file": path, "size": len(data), "oid": blob}
            if len(data) >= LFS_FROM_BYTES:
                entry["sha256"] = hashlib.sha256(data).hexdigest()
            files[entry["path"]] = entry
        return files

    def gets(self, filename: str) -> list[str | None]:
        """The Range headers of the GETs of one file, in order (None: the whole file)."""
        return [r for m, p, r in self.requests if m == "GET" and p.endswith("/" + filename)]

    # -- answering --
    def _answer(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlparse(handler.path).path)
        with self._lock:
            self.requests.append((handler.command, path, handler.headers.get("Range")))
        api = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(revision|tree)/([^/]+)(/.*)?", path)
        resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        repo = (api or resolve).group(1) if (api or resolve) else None
        if repo not in self.repos:
            return self._send(handler, 404, b'{"error":"Repository not found"}', body,
                              {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found",
                               "Content-Type": "application/json"})
        files = self.repos[repo]
        if api and api.group(2) == "revision":
            info = {"id": repo, "modelId": repo, "sha": COMMIT, "private": False, "gated": False,
                    "siblings": [{"rfilename": name} for name in files]}
            return self._json(handler, info, body)
        if api:
            tree = []
            for name, entry in files.items():
                item = {"type": "file", "oid": entry["oid"], "size": entry["size"], "path": name}
                if "sha256" in entry:
                    item["lfs"] = {"oid": entry["sha256"], "size": entry["size"], "pointerSize": 134}
                tree.append(item)
            return self._json(handler, tree, body)
        entry = files.get(resolve.group(3))
        if entry is None:
            return self._send(handler, 404, b"{}", body, {"X-Error-Code": "EntryNotFound"})
        self._file(handler, entry, body)

    def _json(self, handler, value, body: bool) -> None:
        self._send(handler, 200, json.dumps(value).encode(), body, {"Content-Type": "application/json"})

    @staticmethod
    def _send(handler, status: int, payload: bytes, body: bool, headers: dict) -> None:
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        if body:
            handler.wfile.write(payload)

    def _file(self, handler, entry: dict, body: bool) -> None:
        with self._lock:
            drop = body and self.dropping.get(entry["path"], 0) > 0
            if drop:
                self.dropping[entry["path"]] -= 1
        if body and entry["path"] in self.failing:
            return self._send(handler, 500, b'{"error":"try again later"}', body, {})
        size = entry["size"]
        start = 0
        wanted = re.fullmatch(r"bytes=(\d+)-", handler.headers.get("Range") or "")
        if wanted:
            start = int(wanted.group(1))
        etag = entry.get("sha256", entry["oid"])
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        if "sha256" in entry:
            headers["X-Linked-Etag"] = f'"{etag}"'
            headers["X-Linked-Size"] = str(size)
        handler.send_response(206 if wanted else 200)
        for key, value in headers.items():
            handler.send_header(key, value)
        if wanted:
            handler.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        handler.send_header("Content-Length", str(size - start))
        handler.end_headers()
        if not body:
            return
        with open(entry["file"], "rb") as source:
            source.seek(start)
            left = min(self.drop_after, size - start) if drop else size - start
            while left > 0:
                chunk = source.read(min(left, 1 << 20))
                handler.wfile.write(chunk)
                left -= len(chunk)
        if drop:  # a broken connection: the client got fewer bytes than Content-Length said
            handler.wfile.flush()
            handler.close_connection = True
            handler.connection.shutdown(2)
