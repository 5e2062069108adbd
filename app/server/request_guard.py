"""What `/v1` and `/mcp` accept before they do any work: JSON bodies only, from no web page but the app's own,
and no bigger than the model's window can use, counted while the body is read (chunked bodies too).

Any web page the person visits can post to 127.0.0.1. A browser cannot send `Content-Type: application/json`
across origins without asking first (a CORS preflight, which this server never grants), and it always names the
page's origin in `Origin`; a page's form or `text/plain` post is therefore refused here, as is any request from
another origin. Programs (curl, the OpenAI SDK, MCP clients) send JSON and no Origin, and pass.
"""

from __future__ import annotations

from app.server.chat import ApiError
from app.sharing.origin import foreign_origin

MB = 2**20
BODY_BYTES_PER_TOKEN = 32  # far above real text (about 4 bytes a token, 6 for escaped non-Latin text)
LEAST_BODY_BYTES, MOST_BODY_BYTES = 4 * MB, 128 * MB
CHARS_PER_TOKEN_MOST = 128  # the longest token of the Llama-3 vocabulary is 128 characters


def body_limit(window: int) -> int:
    """The largest request body worth reading for a model with this window (bytes)."""
    return min(max(window * BODY_BYTES_PER_TOKEN, LEAST_BODY_BYTES), MOST_BODY_BYTES)


def chars_limit(window: int, longest_token: int = CHARS_PER_TOKEN_MOST) -> int:
    """Characters beyond which a text must be more tokens than the window holds (no tokenizing needed)."""
    return window * longest_token


def check_request(scope_headers, method: str) -> ApiError | None:
    """None when a request may go on; else why not: a web page of another origin, or a body that is not JSON."""
    if (origin := foreign_origin(scope_headers)) is not None:
        return ApiError(403, f"requests from web pages are refused, unless from this app's own page "
                             f"(this one came from {origin})", type="permission_error", code="forbidden")
    if method == "POST":
        kind = scope_headers.get("content-type", "").partition(";")[0].strip().lower()
        if kind != "application/json":
            return ApiError(415, f"the body must be JSON sent as 'Content-Type: application/json', not "
                                 f"'{kind[:60] or 'none'}'", code="unsupported_media_type")
    return None


def _too_big(limit: int) -> ApiError:
    return ApiError(413, f"the request body is over {limit / MB:,.0f} MB, more than this model's window can use",
                    code="request_too_large")


async def read_body(receive, headers, limit: int) -> bytes:
    """The request body from ASGI `receive`, refused (ApiError 413) as soon as it passes `limit` bytes."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_big(limit)
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ApiError(400, "the client went away before its body was read")
        body += message.get("body", b"")
        if len(body) > limit:
            raise _too_big(limit)
        if not message.get("more_body", False):
            return bytes(body)


def replay(body: bytes, receive):
    """An ASGI `receive` that hands `body` over once, then passes on what `receive` says (a disconnect)."""
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return replayed
