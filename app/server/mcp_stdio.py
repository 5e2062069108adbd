"""`omnibus mcp` (and `python3 launch.py mcp`): the MCP tools over stdin and stdout, the way Claude Desktop, Claude
Code, Cursor and most MCP hosts start a server: as a command.

The same tools as `/mcp` (app.server.mcp_tools). The model loads in a background thread, so the host's handshake
and `list_corpora` are answered at once; `add_files`, `load` and `ask` wait for it. stdout carries the protocol and
nothing else: the process's file descriptor 1 is pointed at stderr before anything loads, so a library that prints
cannot break a message, and every log line, progress bar and warning goes to stderr.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import threading

log = logging.getLogger(__name__)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """`mcp`'s options; the backend's are read once into `args.settings` (app/settings.py)."""
    from app.settings import add_arguments, parse_arguments

    parser = argparse.ArgumentParser(prog="omnibus mcp",
                                     description="Serve the MCP tools over stdin/stdout, for an MCP host to start.")
    parser.add_argument("--files-root", metavar="DIR",
                        help="the only folder add_files may read (default: any path this user can read)")
    add_arguments(parser)
    return parse_arguments(parser, argv)


def protocol_stdout() -> io.TextIOWrapper:
    """The real stdout, kept for the protocol alone; file descriptor 1 (and sys.stdout) then point at stderr."""
    protocol = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return io.TextIOWrapper(protocol, encoding="utf-8", newline="\n")


def load_in_background(tools, settings) -> threading.Thread:
    """Open the local engine as `settings` say, in a thread; hand it to `tools` (or the reason it failed)."""

    def load() -> None:
        from app.backend import open_backend
        from app.errors import OmnibusError
        from app.server.service import Service

        try:
            engine = open_backend(settings)
        except OmnibusError as err:
            log.error("the model could not be loaded: %s", err)
            tools.failed(str(err))
            return
        except Exception as err:  # told to the host through every tool that waits, and logged with its cause
            log.exception("the model could not be loaded")
            tools.failed(f"{type(err).__name__}: {err}")
            return
        tools.serve_with(Service(engine))
        log.info("model %s loaded; MCP tools ready", engine.model_name)

    thread = threading.Thread(target=load, daemon=True, name="omnibus-mcp-model")
    thread.start()
    return thread


async def serve(tools, stdout: io.TextIOWrapper) -> None:
    """Speak MCP on stdin and `stdout` until the host closes stdin."""
    import anyio
    from mcp.server.stdio import stdio_server

    server = tools.server._mcp_server  # FastMCP's low-level server: its own run_stdio_async would use sys.stdout
    async with stdio_server(stdout=anyio.wrap_file(stdout)) as (read, write):
        await server.run(read, write, server.create_initialization_options())


def main(argv: list[str]) -> int:
    stdout = protocol_stdout()
    args = parse_args(argv)
    settings = args.settings
    if settings.backend != "local":
        print("error: omnibus mcp answers with this machine's model; --backend openai is for asking another server",
              file=sys.stderr)
        return 2
    import anyio

    from app.backend import open_store
    from app.server.mcp_tools import Tools

    tools = Tools(None, args.files_root, any_path=True, store=open_store(settings), model=settings.model)
    log.info("MCP over stdio; loading the model (%s) in the background", settings.model)
    load_in_background(tools, settings)
    anyio.run(serve, tools, stdout)
    return 0
