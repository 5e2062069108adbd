"""Who may use the app: credentials from --auth or --auth-file, or a random password when it is exposed.

Serving only on 127.0.0.1 needs no login. Sharing (--share) or serving on the network (--listen) does,
unless --no-auth says otherwise explicitly.

`LoginGuard` is what Gradio calls to check a login: it compares in constant time and, after
`max_failures` failed tries for one user name or from one address within `window_s`, refuses every try for
that name or address (the right password included) until the window has passed. Gradio hands the check only
the user name and password; `ClientAddress` (ASGI middleware) makes the caller's address available to it.
"""

from __future__ import annotations

import contextvars
import hmac
import re
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

DEFAULT_USER = "omnibus"


class AuthError(ValueError):
    """Credentials given on the command line or in a file are malformed."""


@dataclass
class Access:
    """What `launch` needs: the credentials (None: open) and what to tell the person who started it."""

    credentials: list[tuple[str, str]] | None
    notice: str = ""


def parse_pair(text: str, where: str = "--auth") -> tuple[str, str]:
    """'user:password' -> (user, password). The password may contain ':'."""
    user, sep, password = text.strip().partition(":")
    if not sep or not user or not password:
        raise AuthError(f"{where}: expected user:password, got {text.strip()[:40]!r}")
    return user, password


def read_auth_file(path: str) -> list[tuple[str, str]]:
    """One user:password per line; blank lines and lines starting with # are ignored."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise AuthError(f"--auth-file: cannot read {path}: {err.strerror or err}") from err
    pairs = [parse_pair(line, f"{path} line {n}") for n, line in enumerate(lines, 1)
             if line.strip() and not line.lstrip().startswith("#")]
    if not pairs:
        raise AuthError(f"--auth-file: {path} holds no user:password line")
    return pairs


def decide(*, auth: str | None, auth_file: str | None, no_auth: bool, exposed: bool) -> Access:
    """The login rule. `exposed` is True when serving beyond this computer (--share or --listen)."""
    if no_auth and (auth or auth_file):
        raise AuthError("--no-auth cannot be combined with --auth or --auth-file")
    pairs = ([parse_pair(auth)] if auth else []) + (read_auth_file(auth_file) if auth_file else [])
    if pairs:
        return Access(pairs)
    if no_auth:
        notice = ("WARNING: --no-auth: anyone who can reach this address can use the app and read your "
                  "documents." if exposed else "")
        return Access(None, notice)
    if not exposed:
        return Access(None)
    password = secrets.token_urlsafe(12)
    return Access([(DEFAULT_USER, password)],
                  f"Login required. user: {DEFAULT_USER}  password: {password}\n"
                  "(a new password is made at each start; set your own with --auth user:password "
                  "or --auth-file FILE)")


MAX_TRACKED = 10_000  # addresses and names with recent failures kept before stale ones are purged
_client_address: contextvars.ContextVar[str] = contextvars.ContextVar("client_address", default="")


class ClientAddress:
    """ASGI middleware: remembers the address of the client of each HTTP request for `LoginGuard`."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope.get("type") == "http":
            client = scope.get("client") or ("", 0)
            token = _client_address.set(str(client[0]))
            try:
                return await self.app(scope, receive, send)
            finally:
                _client_address.reset(token)
        return await self.app(scope, receive, send)


_LOCAL_HOST = re.compile(r"(?:localhost|127\.0\.0\.1|\[::1\])(?::\d{1,5})?")


def local_host(host: str) -> bool:
    """True for a Host header that names this computer: localhost, 127.0.0.1 or [::1], with any port."""
    return _LOCAL_HOST.fullmatch(host.strip().lower()) is not None


class LocalHostOnly:
    """ASGI middleware for an app served on 127.0.0.1 with no login: refuses any request whose Host header
    is not a local name. A web page elsewhere can point its own name at 127.0.0.1 (DNS rebinding) and so
    reach the app from the user's browser; it cannot make the browser send `Host: 127.0.0.1`."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope.get("type") in ("http", "websocket"):
            host = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"host"), "")
            if not local_host(host):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                body = (f"Omnibus serves this computer only (open http://127.0.0.1/ and its port); "
                        f"Host {host[:100]!r} refused.\n").encode()
                await send({"type": "http.response.start", "status": 403,
                            "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        return await self.app(scope, receive, send)


class LoginGuard:
    """A login check (Gradio's callable `auth`) that locks out a user name or an address after repeated failures."""

    def __init__(self, credentials: list[tuple[str, str]], max_failures: int = 5, window_s: float = 300.0,
                 clock=time.monotonic):
        self.passwords = dict(credentials)
        self.max_failures, self.window_s, self.clock = max_failures, window_s, clock
        self.failures: dict[str, deque] = {}
        self.refused = 0  # tries refused because of a lock-out (tests, logs)
        self._lock = threading.Lock()

    def __call__(self, username: str, password: str) -> bool:
        # Only real user names are counted (no password opens an unknown one, and counting them would let
        # anyone grow this table); loopback is not an address of its own (a share link's tunnel arrives there).
        address = _client_address.get()
        keys = ([f"user:{username}"] if username in self.passwords else []) + \
            ([f"addr:{address}"] if address and not _is_loopback(address) else [])
        now = self.clock()
        with self._lock:
            if len(self.failures) > MAX_TRACKED:
                for key in list(self.failures):
                    self._recent(key, now)
            if any(self._recent(key, now) >= self.max_failures for key in keys):
                self.refused += 1
                return False
            expected = self.passwords.get(username)
            ok = expected is not None and hmac.compare_digest(password.encode(), expected.encode())
            if not ok:
                for key in keys:
                    self.failures.setdefault(key, deque()).append(now)
            return ok

    def locked_out(self, username: str = "", address: str = "") -> bool:
        """True while this user name (or address) may not log in."""
        now = self.clock()
        with self._lock:
            return any(self._recent(k, now) >= self.max_failures
                       for k in ([f"user:{username}"] if username else []) + ([f"addr:{address}"] if address else []))

    def _recent(self, key: str, now: float) -> int:
        times = self.failures.get(key)
        if not times:
            return 0
        while times and now - times[0] > self.window_s:
            times.popleft()
        if not times:
            del self.failures[key]
            return 0
        return len(times)


def _is_loopback(address: str) -> bool:
    return address in ("127.0.0.1", "::1", "localhost") or address.startswith("127.")
