"""Who may use the API and MCP: anyone on this computer when the server listens on 127.0.0.1 only; a key
whenever it listens beyond it (`--api-key-env VAR`, or one made at start and printed once). Wrong keys count
towards the same lock-out as the app's login (app.sharing.auth.LoginGuard)."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass

from app.server.chat import ApiError
from app.sharing.auth import AuthError, LockedOut, LoginGuard

KEY_USER = "api-key"  # the one "user" the guard knows: the key is its password
LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")


@dataclass
class KeyRule:
    """The key to require (None: none) and what to tell the person who started the server."""

    key: str | None
    notice: str = ""


def decide_key(api_key_env: str | None, exposed: bool) -> KeyRule:
    """A key from the environment variable `api_key_env`, else a fresh one when `exposed`, else none."""
    if api_key_env:
        key = os.environ.get(api_key_env, "")
        if not key:
            raise AuthError(f"--api-key-env: the environment variable {api_key_env} is not set")
        return KeyRule(key)
    if not exposed:
        return KeyRule(None)
    key = "omnibus-" + secrets.token_urlsafe(24)
    return KeyRule(key, f"API key for /v1 and /mcp: {key}\n(a new key is made at each start; set your own "
                        "with --api-key-env VAR)")


class Gate:
    """Checks each request's key (`Authorization: Bearer KEY`, or `x-api-key`) in constant time."""

    def __init__(self, rule: KeyRule):
        self.guard = LoginGuard([(KEY_USER, rule.key)]) if rule.key else None

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
        auth = headers.get("authorization", "")
        key = auth[7:].strip() if auth[:7].lower() == "bearer " else headers.get("x-api-key", "")
        if not key:
            return ApiError(401, "an API key is required: send it as 'Authorization: Bearer KEY'",
                            code="invalid_api_key")
        try:  # the login's lock-out: the address that keeps failing, never this computer itself
            if self.guard(KEY_USER, key):
                return None
        except LockedOut as err:
            minutes = max(1, -(-int(err.seconds) // 60))
            return ApiError(429, f"too many wrong API keys from your address: every try is refused for {minutes} "
                                 f"more minute{'s' * (minutes != 1)}", type="rate_limit_error", code="locked_out")
        return ApiError(401, "wrong API key", code="invalid_api_key")
