"""The page's Content-Security-Policy: whatever a document, an answer or an imported conversation holds, the
browser fetches images, scripts, fonts, media and connections from the app's own origin only (and shows `data:`
and `blob:` images, which fetch nothing). `app.ui.markup` keeps remote images out of the chat; this header is
the wall behind it, for anything that slips through.

`SameOriginPosts` refuses what a page elsewhere may send without asking first (a form post, a multipart
upload): any POST whose `Origin` is not the app's own.

Gradio's page needs inline scripts (its config) and inline styles, so those stay allowed; no script may come
from elsewhere, and no page elsewhere may frame the app.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse

from app.sharing.origin import foreign_origin

POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self' 'unsafe-inline' 'unsafe-eval'",  # gradio's inline config and its compiled components
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data: blob:",
    "media-src 'self' data: blob:",
    "font-src 'self' data:",
    "connect-src 'self'",
    "worker-src 'self' blob:",
    "frame-src 'self'",
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'self'",
])


class ContentSecurityPolicy:
    """ASGI middleware: adds `POLICY` (and `X-Content-Type-Options: nosniff`) to every HTTP response."""

    def __init__(self, app, policy: str = POLICY):
        self.app, self.policy = app, policy.encode("latin-1")

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http":
            return await self.app(scope, receive, send)

        async def with_policy(message):
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", [])
                           if k.lower() not in (b"content-security-policy", b"x-content-type-options")]
                headers += [(b"content-security-policy", self.policy), (b"x-content-type-options", b"nosniff")]
                message = {**message, "headers": headers}
            await send(message)

        return await self.app(scope, receive, with_policy)


class SameOriginPosts:
    """ASGI middleware: refuses POSTs from web pages of another origin (403) before they reach Gradio, so no
    page elsewhere can upload files into its temporary folder or start work in the person's browser."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope.get("type") == "http" and scope.get("method") == "POST":
            origin = foreign_origin(Headers(scope=scope))
            if origin is not None:
                refusal = PlainTextResponse(f"refused: this request came from {origin}, not from this app's page",
                                            status_code=403)
                return await refusal(scope, receive, send)
        return await self.app(scope, receive, send)
