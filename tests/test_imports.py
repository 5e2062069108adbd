"""Imports point one way: only `app/engine/` imports torch and Triton at module level, so the app and the remote
backend start (and answer) without them; both backends give the `app.protocol.Backend` interface."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TORCH_FREE = ["app.protocol", "app.settings", "app.planner", "app.prompt", "app.models_catalog", "app.errors",
              "app.model_hub", "app.model_download", "app.backend",
              "app.remote", "app.cli", "app.ui.views", "app.ui.handlers", "app.ui.session", "app.ui.inputs",
              "app.sharing.auth", "app.ui.app", "app.ui.layout", "app.ui.events",
              "app.store.cache_key", "app.store.kv_files", "app.store.library", "app.citations.form",
              "app.citations.check", "ingest"]
HEAVY = ("torch", "triton")


def run_python(code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter from the repository root (tests/ on the path for its helpers)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={"PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", "PATH": "/usr/bin:/bin",
                                                "HOME": str(ROOT), "GRADIO_ANALYTICS_ENABLED": "False"})


def module_level_imports(path: Path) -> set[str]:
    """Top-level package names a module imports when it is first imported (not inside functions)."""
    names = set()
    for node in ast.parse(path.read_text()).body:  # statements at module level only
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_only_the_engine_package_imports_torch_or_triton_at_module_level():
    offenders = {}
    for path in sorted((ROOT / "app").rglob("*.py")) + sorted((ROOT / "ingest").rglob("*.py")):
        if (ROOT / "app" / "engine") in path.parents:
            continue
        heavy = module_level_imports(path) & set(HEAVY)
        if heavy:
            offenders[str(path.relative_to(ROOT))] = sorted(heavy)
    assert offenders == {}
    engine = module_level_imports(ROOT / "app" / "engine" / "engine.py")
    assert "torch" in engine  # the scan sees imports where they are


def test_the_app_the_cli_the_store_and_the_remote_backend_import_with_torch_blocked():
    result = run_python(f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        sys.modules["triton"] = None
        for module in {TORCH_FREE!r}:
            __import__(module)
        print("imported", len({TORCH_FREE!r}))
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["imported", str(len(TORCH_FREE))]


def test_importing_them_with_torch_installed_does_not_load_it():
    """Not even through a dependency (gradio, transformers' tokenizers): the app starts without torch's cost."""
    result = run_python(f"""
        import sys
        for module in {TORCH_FREE!r}:
            __import__(module)
        print(sorted({{m.split(".")[0] for m in sys.modules}} & {set(HEAVY)!r}))
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_the_app_and_the_remote_backend_build_and_answer_without_torch():
    """The whole remote path with torch blocked: connect, build the Gradio page, add a file, load, ask."""
    result = run_python("""
        import sys, tempfile, pathlib
        sys.modules["torch"] = None
        sys.modules["triton"] = None
        from app.protocol import Backend, Settings
        from app.remote import RemoteEngine
        from app.ui.app import build
        from app.ui.handlers import Workbench
        from app.ui.session import Session
        from remote_support.fake_server import (FakeServer, completion, delta, end_stream, send_event,
                                                send_json, start_stream)

        def chat(handler, body):
            if not body.get("stream"):
                return send_json(handler, 200, completion("x", 120))
            start_stream(handler)
            for word in ("The ", "code ", "is ", "4417."):
                send_event(handler, delta(word))
            send_event(handler, delta("", "stop"))
            send_event(handler, "[DONE]")
            end_stream(handler)

        with FakeServer(chat=chat) as server:
            engine = RemoteEngine(server.url)
            assert isinstance(engine, Backend)
            workbench = Workbench(engine)
            demo = build(workbench)
            folder = pathlib.Path(tempfile.mkdtemp())
            (folder / "notes.txt").write_text("The vault code is 4417.\\n")
            session = Session()
            workbench.add_files(session, [folder / "notes.txt"])
            answers = list(workbench.ask(session, "What is the vault code?", Settings(max_new_tokens=16)))
            print(type(demo).__name__, session.loaded_tokens, repr(answers[-1]))
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    blocks, loaded, answer = result.stdout.strip().splitlines()[-1].split(" ", 2)
    assert blocks == "Blocks" and int(loaded) > 0 and answer == "'The code is 4417.'"


def test_the_local_engine_is_a_backend(tiny_llama, llama3_tokenizer):
    from app.engine.engine import Engine
    from app.protocol import Backend

    engine = Engine(tiny_llama(), llama3_tokenizer, kv_dtype="fp32", model_name="tiny")
    assert isinstance(engine, Backend)
    assert (engine.base_url, engine.store) == ("", None)
    assert engine.prompt_overhead() == len(engine.prompt_prefix([])) > 0
