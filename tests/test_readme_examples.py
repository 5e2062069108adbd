"""The README's client examples run as written against a real server over the demo model: the openai SDK one, and
the MCP ones with the `mcp` package a person has (1.30, pinned here, and 2.3, what `pip install mcp` gives today,
installed apart with `pip --target`). Only the placeholders change: the port, the book's path, the corpus id and
the command that starts Omnibus."""

from types import SimpleNamespace
import ast
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from app.engine.engine import Engine
from app.server.access import KeyRule
from app.server.serve import app as server_app
from app.store.library import Store
from serving import serving_in_thread

ROOT = Path(__file__).resolve().parent.parent
BOOK = "Call me Ishmael. I am the narrator of this story, and I sailed on the Pequod with Captain Ahab.\n"
MCP2 = "2.3.0"


def readme_example(*needles: str) -> str:
    """The README's Python block that contains every one of `needles`."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)
    found = [b for b in blocks if all(n in b for n in needles)]
    assert len(found) == 1, f"{len(found)} README examples contain {needles}"
    return found[0]


@pytest.fixture(scope="module")
def server(demo_model, tmp_path_factory):
    model, tokenizer = demo_model
    engine = Engine(model, tokenizer, model_name="demo", store=Store(tmp_path_factory.mktemp("cache")))
    with serving_in_thread(server_app(engine, KeyRule(None))) as base:
        yield SimpleNamespace(engine=engine, base=base)


@pytest.fixture(scope="module")
def mcp2() -> Path:
    """A folder holding `mcp` 2.3 and its dependencies, to put first on PYTHONPATH (kept between runs)."""
    target = Path(tempfile.gettempdir()) / f"omnibus-test-mcp-{MCP2}"
    if not (target / "mcp" / "__init__.py").exists():
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                               "--target", str(target), f"mcp=={MCP2}"], capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            pytest.skip(f"mcp {MCP2} could not be installed apart: {done.stderr.strip()[-300:]}")
    return target


@pytest.fixture(scope="module")
def book(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("books") / "book.txt"
    path.write_text(BOOK)
    return path


def run_example(code: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMNIBUS_NO_BOOTSTRAP="1")
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900,
                          cwd=tempfile.gettempdir())  # not the checkout: the examples import only the clients
    assert done.returncode == 0, f"the example failed:\n{code}\n{done.stderr[-3000:]}"
    return done


def mcp_version(pythonpath: Path | None) -> str:
    code = "import importlib.metadata as m; print(m.version('mcp'))"
    return run_example(code, pythonpath).stdout.strip()


@pytest.mark.parametrize("with_mcp2", [False, True], ids=["mcp-1.30", "mcp-2.3"])
def test_the_mcp_http_example_runs_as_written(server, book, with_mcp2, request):
    path = request.getfixturevalue("mcp2") if with_mcp2 else None
    assert mcp_version(path) == (MCP2 if with_mcp2 else "1.30.0")
    code = readme_example("streamable_http_client").replace("http://127.0.0.1:8000", server.base)
    code = code.replace("/home/me/book.pdf", str(book))
    done = run_example(code, path)
    assert done.stdout.strip(), done.stderr  # the answer was printed


def test_the_openai_example_runs_as_written(server, book):
    from app.server.service import Service

    saved = Service(server.engine).models()[1:]
    if not saved:  # the MCP example saves the book; this test may run alone
        test_the_mcp_http_example_runs_as_written(server, book, False, None)
        saved = Service(server.engine).models()[1:]
    code = readme_example("from openai import OpenAI").replace("http://127.0.0.1:8000", server.base)
    code = code.replace("omnibus/3fa9c1e2", saved[0]["id"])
    done = run_example(code)
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("['demo', 'omnibus/")  # the models, the loaded one first
    assert isinstance(ast.literal_eval(lines[-1]), list)  # the characters, parsed from the JSON answer


def test_the_mcp_stdio_example_runs_as_written_with_mcp_2(book, mcp2, tmp_path):
    command = (f'command={sys.executable!r}, args=["-m", "app.cli", "mcp", "--model", "demo"], cwd={str(ROOT)!r}, '
               f'env={json.dumps({"OMNIBUS_NO_BOOTSTRAP": "1", "XDG_CACHE_HOME": str(tmp_path)})}')
    code = readme_example("stdio_client").replace('command="omnibus", args=["mcp"]', command)
    code = code.replace("/home/me/book.pdf", str(book))
    done = run_example(code, mcp2)
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "['list_corpora', 'add_files', 'load', 'ask']"
    assert isinstance(ast.literal_eval(lines[-1])["narrator"], str)  # the JSON answer, parsed
