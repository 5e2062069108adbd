"""Who may use the API and MCP: anyone on this computer when the server listens on 127.0.0.1 only and the app has
no logins; a key whenever it listens beyond it or the page has logins (`--api-key-env VAR`, or keys made at start
and printed once). With logins each key belongs to one login, whose saved corpora alone it sees. Wrong keys
count towards the same lock-out as the app's login (app.sharing.auth.LoginGuard), through a --share tunnel too."""

from __future__ import annotations

import hmac
import os
import secrets
from dataclasses import dataclass, field

from app.server.chat import ApiError
from app.sharing.auth import AuthError, LockedOut, LoginGuard

KEY_USER = "api-key"  # the one "user" the guard counts tries for: the key is its password
LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")


@dataclass
class KeyRule:
    """The key to require (None: none) and what to tell the person who started the server. With logins,
    `logins` maps each key to the login it belongs to (then `key` is None)."""

    key: str | None
    notice: str = ""
    logins: dict[str, str] = field(default_factory=dict)  # API key -> login

    @property
    def required(self) -> bool:
        return self.key is not None or bool(self.logins)


def _made_key() -> str:
    return "omnibus-" + secrets.token_urlsafe(24)


def decide_key(api_key_env: str | None, exposed: bool, logins=()) -> KeyRule:
    """With page `logins`: one key per login, made at start (the first login's is the one in `api_key_env`
    when given). Else a key from the environment variable `api_key_env`, else a fresh one when `exposed`,
    else none."""
    env_key = None
    if api_key_env:
        env_key = os.environ.get(api_key_env, "")
        if not env_key:
            raise AuthError(f"--api-key-env: the environment variable {api_key_env} is not set")
    logins = list(dict.fromkeys(logins))
    if logins:
        keys = {login: (env_key if env_key and n == 0 else _made_key()) for n, login in enumerate(logins)}
        lines = [f"  {login}: {key}" + (f" (from {api_key_env})" if key == env_key else "")
                 for login, key in keys.items()]
        return KeyRule(None, "API keys for /v1 and /mcp, one per login (each sees only that login's saved "
                             "corpora; new keys are made at each start):\n" + "\n".join(lines),
                       logins={key: login for login, key in keys.items()})
    if env_key:
        return KeyRule(env_key)
    if not exposed:
        return KeyRule(None)
    key = _made_key()
    return KeyRule(key, f"API key for /v1 and /mcp: {key}\n(a new key is made at each start; set your own "
                        "with --api-key-env VAR)")


def _key_of(headers) -> str:
    auth = headers.get("authorization", "")
    return auth[7:].strip() if auth[:7].lower() == "bearer " else headers.get("x-api-key", "")


class Gate:
    """Checks each request's key (`Authorization: Bearer KEY`, or `x-api-key`) in constant time, and says whose
    it is (`login`)."""

    def __init__(self, rule: KeyRule):
        self.keys = dict(rule.logins) if rule.logins else ({rule.key: ""} if rule.key else {})
        self.per_login = bool(rule.logins)
        self.guard = LoginGuard([]) if self.keys else None

    def _match(self, key: str) -> str | None:
        """The login of `key` ("" for the one key of a server without logins), or None; every key is compared."""
        found = None
        for known, login in self.keys.items():
            if hmac.compare_digest(key.encode(), known.encode()):
                found = login
        return found

    def login(self, headers) -> str | None:
        """Whose saved corpora this request may see: the login its key belongs to, or None (all of them) when
        the server has no logins. Call after `check` passed."""
        if not self.per_login:
            return None
        found = self._match(_key_of(headers))
        return found if found is not None else "\0no login"  # never a real login's name

    def check(self, headers) -> ApiError | None:
        """None when the request may go on, else the error to answer with."""
        if self.guard is None:
            # No key: only this computer can connect. A page elsewhere that points a name at 127.0.0.1
            # (DNS rebinding) still sends its own host name, so requests must name this computer.
            host = headers.get("host", "")
            host = host.partition("]")[0] + "]" if host.startswith("[") else host.partition(":")[0]
            if host and host not in LOCAL_HOSTS:
                return ApiError(403, f"this server answers only requests to 127.0.0.1 or localhost, not {host}",
                                type="permission_error", code="forbidden")
            return None
        key = _key_of(headers)
        if not key:
            return ApiError(401, "an API key is required: send it as 'Authorization: Bearer KEY'",
                            code="invalid_api_key")
        try:  # the login's lock-out: the address (or the tunnel) that keeps failing, never this computer itself
            if self.guard.attempt(KEY_USER, self._match(key) is not None, known=True):
                return None
        except LockedOut as err:
            minutes = max(1, -(-int(err.seconds) // 60))
            return ApiError(429, f"too many wrong API keys from your address: every try is refused for {minutes} "
                                 f"more minute{'s' * (minutes != 1)}", type="rate_limit_error", code="locked_out")
        return ApiError(401, "wrong API key", code="invalid_api_key")
