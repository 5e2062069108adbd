"""Who may use the app: credentials from --auth or --auth-file, or a random password when it is exposed.

Serving only on 127.0.0.1 needs no login. Sharing (--share) or serving on the network (--listen) does,
unless --no-auth says otherwise explicitly.
"""

from __future__ import annotations

import secrets
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
