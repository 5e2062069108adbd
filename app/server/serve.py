"""`python3 launch.py serve`: the OpenAI-compatible API and the MCP tools without the page; and `mount`, which
puts them beside the app's page on the same port (`python3 launch.py`).

Both answer with the local engine and share its one queue with the page, so a question asked in the browser
and one sent by another tool never run at once and never answer over each other's documents.
"""

from __future__ import annotations

import argparse
import sys

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from app.errors import OmnibusError
from app.server.access import Gate, KeyRule, decide_key
from app.server.mcp_tools import McpEndpoint, Tools
from app.server.openai_api import OpenAIApi, error_response, not_served
from app.server.service import Service
from app.sharing.turnstile import SharedBackend, Turnstile
from app.sharing.auth import AuthError, ClientAddress

DEFAULT_PORT = 8000


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def routes(engine, rule: KeyRule, turnstile: Turnstile | None = None, files_root: str | None = None,
           exposed: bool = False, private=()) -> list:
    """`/v1/...` and `/mcp` over `engine`, behind `rule`'s key. MCP's add_files reads only under `files_root`;
    without one, any path when not `exposed`, and none when it is; never the `private` files (the logins)."""
    service, gate = Service(engine, turnstile), Gate(rule)
    tools = Tools(service, files_root, any_path=not exposed, private=[*private, *app_secrets()])
    return OpenAIApi(service, gate).routes() + [Route("/mcp", McpEndpoint(tools, gate))]


def app_secrets() -> list[str]:
    """What MCP's add_files never reads, wherever --files-root points: the Hugging Face folder (its token)."""
    from huggingface_hub import constants

    return [constants.HF_HOME]


def shared(backend):
    """The backend the app's page should use when the API runs beside it (a remote backend: as it is)."""
    return SharedBackend(backend, Turnstile()) if backend.name == "local" else backend


def api_exposed(args) -> bool:
    """Whether the API beside the page needs a key: when the page is reachable beyond this computer, and when
    it has logins (else any local program would read every login's saved corpora through /v1)."""
    logins = bool(getattr(args, "auth", None) or getattr(args, "auth_file", None)) and not args.no_auth
    return bool(args.listen or args.share or logins)


def mount(demo, backend, args, logins=(), uploads: str | None = None) -> None:
    """Serve `/v1` and `/mcp` from the app's own server, over the page's engine (a `shared` backend). With page
    `logins`, each gets a key of its own; MCP never reads the `uploads` folder (other browsers' files)."""
    if not isinstance(backend, SharedBackend):
        return  # a remote backend: its server is the API
    exposed = api_exposed(args) or bool(logins)
    rule = decide_key(args.settings.api_key_env, exposed=exposed, logins=logins)
    private = [p for p in (getattr(args, "auth_file", None), uploads) if p]
    for route in reversed(routes(backend.engine, rule, backend.turnstile, getattr(args, "files_root", None),
                                 exposed=exposed, private=private)):
        demo.app.router.routes.insert(0, route)  # before the page's catch-all routes
    _say(f"omnibus: OpenAI API at http://127.0.0.1:{args.port}/v1 and MCP at http://127.0.0.1:{args.port}/mcp")
    if rule.notice:
        _say("omnibus: " + rule.notice)


def app(engine, rule: KeyRule, files_root: str | None = None, exposed: bool = False) -> Starlette:
    """The server of `serve`: the API and MCP alone."""
    async def elsewhere(request, exc):  # paths outside /v1 and /mcp: the same JSON answer as under /v1
        return error_response(not_served(request.method, request.url.path))

    return Starlette(routes=routes(engine, rule, files_root=files_root, exposed=exposed),
                     middleware=[Middleware(ClientAddress)], exception_handlers={404: elsewhere, 405: elsewhere})


def parse_args(argv: list[str]) -> argparse.Namespace:
    """`serve`'s options; the backend's are read once into `args.settings` (app/settings.py)."""
    from app.settings import add_arguments, parse_arguments

    parser = argparse.ArgumentParser(prog="launch.py serve",
                                     description="Serve the OpenAI-compatible API (/v1) and MCP (/mcp), no page.")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    parser.add_argument("--listen", action="store_true",
                        help="serve on the local network (an API key is then required)")
    parser.add_argument("--files-root", metavar="DIR",
                        help="the folder MCP's add_files may read (default: any path; with --listen: none)")
    add_arguments(parser)  # its --api-key-env names the variable holding the key clients must send
    return parse_arguments(parser, argv)


def main(argv: list[str]) -> int:
    """Load the model, print the addresses (and a made key), serve until Ctrl+C."""
    import uvicorn

    from app.backend import open_backend

    args = parse_args(argv)
    settings = args.settings
    if settings.backend != "local":
        _say("error: serve answers with this machine's model; --backend openai is for asking another server")
        return 2
    try:
        rule = decide_key(settings.api_key_env, exposed=args.listen)
    except AuthError as err:
        _say(f"error: {err}")
        return 2
    _say(f"omnibus: loading the model ({settings.model}); this can take a while…")
    try:
        engine = open_backend(settings)
    except OmnibusError as err:
        _say(f"error: {err}")
        return 1
    host = "0.0.0.0" if args.listen else "127.0.0.1"
    server = uvicorn.Server(uvicorn.Config(app(engine, rule, args.files_root, args.listen), host=host, port=args.port,
                                           log_level="warning", timeout_graceful_shutdown=2))
    _say(f"omnibus: model {engine.model_name}; OpenAI API at http://127.0.0.1:{args.port}/v1, "
         f"MCP at http://127.0.0.1:{args.port}/mcp" + (" (and on your network)" if args.listen else ""))
    if rule.notice:
        _say("omnibus: " + rule.notice)
    server.run()
    return 0
