"""Waiting for a server that a test started (the app, llama.cpp) to answer on localhost, and stopping it."""

from __future__ import annotations

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
