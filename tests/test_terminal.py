"""The terminal where Omnibus runs: one line per event, each with its time and source; library progress bars and
warnings through the log; nothing said that is not so (issue 28)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR) [\w.]+: ")


def _python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**{k: v for k, v in os.environ.items() if not k.startswith("TQDM_")}, **env})


@pytest.mark.parametrize("tqdm_first", [False, True])
def test_library_progress_bars_are_off_and_warnings_are_one_logged_line(tqdm_first):
    done = _python(("from tqdm.auto import tqdm\n" if tqdm_first else "") + """
from app import logs
logs.configure("info")
from tqdm.auto import tqdm
for _ in tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."):
    pass
import warnings
warnings.warn("EOF marker not found\\nsecond line")
""")
    assert done.returncode == 0, done.stderr
    assert "de-quantizing" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and LINE.match(lines[0]) and "EOF marker not found | second line" in lines[0], lines


def test_user_errors_are_one_line_without_class_names_or_doubled_words(capsys):
    from app.errors import Cancelled, QuestionTooLong
    from app.ui.events import user_message

    assert user_message(Cancelled("stopped at 1,024 of 4,096 tokens; loading again resumes there", done=1024,
                                  total=4096)) == "Stopped at 1,024 of 4,096 tokens; loading again resumes there"
    assert user_message(QuestionTooLong("the question is 7 tokens")) == "The question is 7 tokens"
    said = capsys.readouterr().err.splitlines()
    assert said == ["omnibus: Stopped at 1,024 of 4,096 tokens; loading again resumes there",
                    "omnibus: The question is 7 tokens"]


def test_a_complete_environment_is_checked_not_said_to_be_installing(tmp_path, monkeypatch, capsys):
    import launch

    venv = tmp_path / "venv"
    venv.mkdir()
    monkeypatch.setattr(launch, "VENV", venv)  # no stamp yet: a first run...
    monkeypatch.setattr(launch, "PYTHON", Path(sys.executable))  # ...in an environment that holds everything
    monkeypatch.setattr(launch, "_nvidia_linux", lambda: False)
    monkeypatch.delenv("OMNIBUS_NO_BOOTSTRAP", raising=False)
    restarted = []
    monkeypatch.setattr(launch.os, "execv", lambda *args: restarted.append(args))
    launch.ensure_environment(dev=False)
    assert "installing" not in capsys.readouterr().err
    assert (venv / ".omnibus-run").read_text() == launch._stamp(False) and restarted
    assert launch._missing([ROOT / "requirements.txt"]) == []
    pins = tmp_path / "more.txt"
    pins.write_text("pytest==0.0.1  # a version that is not installed\n-r requirements.txt\n")
    assert launch._missing([pins]) == ["pytest==0.0.1"]


def test_how_to_log_in_is_printed_before_the_server_can_answer(monkeypatch, capsys):
    from app import backend
    from app.ui import app

    said_when_serving = []

    def start(args, backend_, access, api=None):  # the moment the server would begin to accept connections
        said_when_serving.append(capsys.readouterr().err)
        raise OSError("stopped here by the test")

    monkeypatch.setattr(app, "start", start)
    monkeypatch.setattr(backend, "open_in_background", lambda args, on_change=None: object())
    assert app.main(["--listen", "--port", "7999"]) == 1
    [said] = said_when_serving
    assert re.search(r"omnibus: Login required\. user: \S+  password: \S+", said), said
