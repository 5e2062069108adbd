"""Which web page sent a request: the page's own origin, or another site's. The page (app/ui/page_policy.py)
and the API (app/server/request_guard.py) refuse the same requests by this one rule.
"""

from __future__ import annotations

from urllib.parse import urlsplit


def foreign_origin(headers) -> str | None:
    """The web page of another origin that sent this request (its `Origin`, or "another site"), else None."""
    origin = headers.get("origin")
    if origin is not None:
        parts = urlsplit(origin)
        if origin == "null" or parts.scheme not in ("http", "https") or \
                parts.netloc.lower() != headers.get("host", "").lower():
            return origin[:100]
    return "another site" if headers.get("sec-fetch-site") == "cross-site" else None
