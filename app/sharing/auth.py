"""Who may use the app: credentials from --auth or --auth-file, or a random password when it is exposed.

Serving only on 127.0.0.1 needs no login. Sharing (--share) or serving on the network (--listen) does,
unless --no-auth says otherwise explicitly.

`LoginGuard` is what Gradio calls to check a login: it compares in constant time and, after
`max_failures` failed tries within `window_s` from one address (for one user name, or for any), refuses
that address's tries (the right password included) until the window has passed, and says so with the
minutes left. Gradio hands the check only the user name and password; `ClientAddress` (ASGI middleware)
makes the caller's address available to it. `LocalHostOnly` keeps pages elsewhere away from a no-login app.
"""

from __future__ import annotations

import contextvars
import hmac
import math
import re
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from fastapi import HTTPException

DEFAULT_USER = "omnibus"


class AuthError(ValueError):
    """Credentials given on the command line or in a file are malformed."""


@dataclass
class Access:
    """What `launch` needs: the credentials (None: open) and what to tell the person who started it."""

    credentials: list[tuple[str, str]] | None
    notice: str = ""
    generated: bool = False  # the login is the random one made at start (user DEFAULT_USER)


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
                  "or --auth-file FILE)", generated=True)


MAX_TRACKED = 10_000  # addresses and names with recent failures kept before stale ones are purged
_client_address: contextvars.ContextVar[str] = contextvars.ContextVar("client_address", default="")
# How a request reached the app: "direct", or "forwarded" (a --share tunnel or a proxy passed it on: from loopback
# naming another host, or with X-Forwarded-For), "" when unknown (a check made outside an HTTP request).
_client_route: contextvars.ContextVar[str] = contextvars.ContextVar("client_route", default="")
FORWARDED_HEADERS = (b"x-forwarded-for", b"forwarded", b"x-real-ip", b"x-forwarded-host")


def route_of(headers: list[tuple[bytes, bytes]], address: str) -> str:
    """"forwarded" for a request that a --share tunnel or a proxy passed on, else "direct". Gradio's share tunnel
    (frpc) connects from loopback but keeps the public Host (`*.gradio.live`), and its server may add
    X-Forwarded-For (which uvicorn then takes as the client's address, whatever the client wrote there): a
    stranger cannot make a tunnelled request look like the owner's at http://127.0.0.1:PORT/."""
    if any(k in FORWARDED_HEADERS for k, _ in headers):
        return "forwarded"
    host = next((v.decode("latin-1") for k, v in headers if k == b"host"), "")
    return "forwarded" if _is_loopback(address) and not local_host(host) else "direct"


class ClientAddress:
    """ASGI middleware: remembers the address of the client of each HTTP request, and whether it was forwarded to
    the app (`route_of`), for `LoginGuard`."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope.get("type") == "http":
            client = scope.get("client") or ("", 0)
            token = _client_address.set(str(client[0]))
            route = _client_route.set(route_of(scope.get("headers", []), str(client[0])))
            try:
                return await self.app(scope, receive, send)
            finally:
                _client_route.reset(route)
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


# Gradio's login form shows "Incorrect credentials" for HTTP 400 and nothing for other answers; a lock-out
# answers 429 with its minutes left, and this script (added to the page by `LoginNotice`) shows that answer.
LOGIN_SCRIPT = b"""<script>(() => { const fetch0 = window.fetch; window.fetch = async (...args) => {
  const response = await fetch0(...args); const url = String(args[0] && args[0].url || args[0]);
  if (response.status === 429 && /\\/login$/.test(url)) { response.clone().json().then((body) => {
    let note = document.getElementById('omnibus-lockout');
    if (!note) { note = document.createElement('div'); note.id = 'omnibus-lockout'; note.role = 'alert';
      note.style.cssText = 'margin:1em auto;max-width:480px;padding:.6em;border-left:4px solid #c62828;' +
        'background:#ffebee;color:#000'; document.body.prepend(note); }
    note.textContent = body.detail; }); }
  return response; }; })();</script>"""


class LoginNotice:
    """ASGI middleware: adds LOGIN_SCRIPT to the app's HTML pages (the login page is one of them)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http" or scope.get("method") != "GET":
            return await self.app(scope, receive, send)
        start, body = {}, bytearray()

        async def hold(message):
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers", []))
                if not headers.get(b"content-type", b"").startswith(b"text/html") or b"content-encoding" in headers:
                    start["pass"] = True
                    return await send(message)
                start.update(message)
            elif message["type"] == "http.response.body" and not start.get("pass"):
                body.extend(message.get("body", b""))
                if not message.get("more_body", False):
                    page = bytes(body).replace(b"</head>", LOGIN_SCRIPT + b"</head>", 1)
                    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                    await send({**start, "headers": headers + [(b"content-length", str(len(page)).encode())]})
                    await send({"type": "http.response.body", "body": page})
            else:
                await send(message)

        return await self.app(scope, receive, hold)


class LockedOut(HTTPException):
    """A login try refused because of a lock-out, `seconds` before it ends: HTTP 429 with that message (Gradio's
    login route lets it through to the caller)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        minutes = max(1, math.ceil(seconds / 60))
        super().__init__(429, f"Too many wrong passwords from your address: logins are locked for {minutes} "
                              f"more minute{'s' * (minutes != 1)}. The password itself may be right.")


class LoginGuard:
    """A login check (Gradio's callable `auth`) that locks out, after repeated failures, the address that failed:
    for one user name, or for every name once that address has failed `max_failures` times.

    The owner on this computer (a loopback address, addressed to this computer and not forwarded: see
    `route_of`) is never locked out, so a stranger's guesses cannot keep the owner out. Tries that a --share
    tunnel (or a local proxy) forwarded also arrive from loopback; those are limited by user name, apart from
    the owner's own. With `tunnel=True`, a loopback try whose route is unknown counts as forwarded. A refused
    try raises `LockedOut` (Gradio's login route passes it on as the message), and each lock-out is logged on
    one line through `say`.
    """

    def __init__(self, credentials: list[tuple[str, str]], max_failures: int = 5, window_s: float = 300.0,
                 clock=time.monotonic, tunnel: bool = False, say=None):
        self.passwords = dict(credentials)
        self.max_failures, self.window_s, self.clock = max_failures, window_s, clock
        self.tunnel, self.say = tunnel, say or (lambda line: None)
        self.failures: dict[str, deque] = {}
        self.refused = 0  # tries refused because of a lock-out (tests, logs)
        self._lock = threading.Lock()

    def _keys(self, username: str, address: str, route: str = "", known: bool | None = None) -> list[str]:
        # Only real user names are counted (no password opens an unknown one, and counting them would let
        # anyone grow this table).
        known = username in self.passwords if known is None else known
        loopback = not address or _is_loopback(address)
        forwarded = route == "forwarded" or (route == "" and self.tunnel and loopback)
        if loopback and not forwarded:
            return []  # the owner at this computer
        # Through a tunnel or proxy, the name is limited whatever address the request claims to come from.
        keys = [f"user:{username}"] if known and forwarded else []
        if not loopback:
            keys += ([f"addr:{address}|user:{username}"] if known else []) + [f"addr:{address}"]
        return keys

    def __call__(self, username: str, password: str) -> bool:
        expected = self.passwords.get(username)
        ok = expected is not None and hmac.compare_digest(password.encode(), expected.encode())
        return self.attempt(username, ok)

    def attempt(self, username: str, ok: bool, known: bool | None = None) -> bool:
        """Count one try of `username` from the current caller whose check gave `ok`: raises `LockedOut` while
        that caller is locked out (even when `ok`), else returns `ok`. `known`: whether to track this name
        (default: it is one of the logins)."""
        address = _client_address.get()
        keys = self._keys(username, address, _client_route.get(), known)
        now = self.clock()
        with self._lock:
            if len(self.failures) > MAX_TRACKED:
                for key in list(self.failures):
                    self._recent(key, now)
            locked = [k for k in keys if self._recent(k, now) >= self.max_failures]
            if locked:
                self.refused += 1
                raise LockedOut(max(self.failures[k][0] + self.window_s - now for k in locked))
            if not ok:
                for key in keys:
                    self.failures.setdefault(key, deque()).append(now)
                newly = [k for k in keys if len(self.failures[k]) == self.max_failures]
                if newly:  # one line per lock-out, naming the address and user
                    who = newly[0].replace("addr:", "address ").replace("|user:", ", user ").replace("user:", "user ")
                    self.say(f"omnibus: {self.max_failures} wrong passwords in {self.window_s / 60:.0f} "
                             f"minutes: logins for {who} are locked for {self.window_s / 60:.0f} minutes")
            return ok

    def locked_out(self, username: str = "", address: str = "", route: str = "") -> bool:
        """True while this user name, from this address (and route, for loopback), may not log in."""
        now = self.clock()
        with self._lock:
            return any(self._recent(k, now) >= self.max_failures for k in self._keys(username, address, route))

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
