"""Waiting for a server that a test started (the app, llama.cpp) to answer on localhost, and stopping it."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from pathlib import Path

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(process, url: str, seconds: float, what: str, log_path=None, poll: float = 0.5) -> None:
    """Return once `url` answers 200. Fail (AssertionError, with the end of the log) if `process` exits first or
    `seconds` pass; the process is left for the caller to stop."""
    tail = (lambda: "\n" + Path(log_path).read_text(errors="replace")[-3000:]) if log_path else (lambda: "")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{what} exited ({process.returncode}){tail()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(poll)
    raise AssertionError(f"{what} did not serve within {seconds:.0f} s{tail()}")


def stop_process(process, seconds: float = 20) -> None:
    """Ask `process` to end (SIGTERM); kill it if it is still running after `seconds`."""
    process.terminate()
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()


@contextlib.contextmanager
def serving_in_thread(asgi_app):
    """Run `asgi_app` (the API and MCP of `serve`) with uvicorn on a free localhost port in a thread; yields
    its base URL ("http://127.0.0.1:PORT") and stops the server after."""
    import threading

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(asgi_app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextlib.contextmanager
def demo_app(tmp_path, seconds: float = 240):
    """`launch.py --model demo` on a free localhost port (saved corpora under `tmp_path`); yields its URL and the
    path of its log, and stops it after."""
    import os
    import sys

    port, log_path = free_port(), tmp_path / "app.log"
    root = Path(__file__).resolve().parent.parent
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "launch.py", "--model", "demo", "--port", str(port),
                                    "--cache-dir", str(tmp_path / "saved")], cwd=root, stdout=log,
                                   stderr=subprocess.STDOUT, env={**os.environ, "OMNIBUS_NO_BOOTSTRAP": "1"})
        url = f"http://127.0.0.1:{port}/"
        try:
            wait_until_serving(process, url, seconds, "the app", log_path, poll=1)
            yield url, log_path
        finally:
            stop_process(process)
