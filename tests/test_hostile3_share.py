"""Through a --share tunnel (issue 25, low): strangers' failed logins never lock out the owner at this computer,
and API-key guesses through the tunnel are limited too. The tunnel (frpc) connects from loopback, like the
owner, but keeps the public Host name and its server adds X-Forwarded-For; the owner's own requests name
127.0.0.1 or localhost. Checked over real HTTP, through the app's own middleware."""

from __future__ import annotations

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from app.server.access import KeyRule
from app.server.serve import app as server_app
from app.sharing.auth import ClientAddress, LockedOut, LoginGuard
from serving import serving_in_thread

TUNNEL = {"host": "f00d1234.gradio.live"}


def spoofed(n: int) -> dict:
    """A tunnelled request that claims a new address each time (uvicorn takes X-Forwarded-For from loopback)."""
    return {**TUNNEL, "x-forwarded-for": f"203.0.113.{n}"}


def test_strangers_through_the_tunnel_never_lock_out_the_owner_at_this_computer():
    guard = LoginGuard([("owner", "right-password")], max_failures=5, tunnel=True)

    async def login(request):
        try:
            ok = guard(request.query_params["user"], request.query_params["password"])
        except LockedOut as err:
            return PlainTextResponse(err.detail, status_code=429)
        return PlainTextResponse("ok" if ok else "wrong", status_code=200 if ok else 400)

    page = Starlette(routes=[Route("/login", login)], middleware=[Middleware(ClientAddress)])
    with serving_in_thread(page) as base:
        def attempt(password, headers=None):
            return httpx.get(f"{base}/login", params={"user": "owner", "password": password}, headers=headers,
                             timeout=30).status_code

        assert [attempt(f"guess{i}", spoofed(i)) for i in range(5)] == [400] * 5
        assert attempt("right-password", TUNNEL) == 429  # the tunnel is locked out for this name
        assert attempt("right-password", spoofed(99)) == 429  # whatever address it claims
        assert attempt("right-password") == 200  # the owner, at http://127.0.0.1:PORT/, still logs in
        assert attempt("right-password", {"host": "localhost"}) == 200
        assert [attempt("wrong") for _ in range(8)] == [400] * 8  # the owner's own typos never lock anyone out
        assert attempt("right-password") == 200


def test_api_key_guesses_through_the_tunnel_are_limited_and_the_owner_keeps_access(demo_model):
    from app.engine.engine import Engine

    model, tokenizer = demo_model
    engine = Engine(model, tokenizer, model_name="demo")
    with serving_in_thread(server_app(engine, KeyRule("right-key"), exposed=True)) as base:
        def models(key, headers=None):
            return httpx.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {key}", **(headers or {})},
                             timeout=30).status_code

        assert [models(f"guess{i}", spoofed(i)) for i in range(5)] == [401] * 5
        # guesses through the tunnel are rate-limited, whatever address they claim
        assert models("right-key", TUNNEL) == 429 and models("right-key", spoofed(99)) == 429
        assert models("right-key") == 200  # the owner at this computer is not locked out
