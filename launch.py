#!/usr/bin/env python3
"""Omnibus from a clone: `python3 launch.py` starts the app, `python3 launch.py test` runs the tests.

Every other command is the `omnibus` command's (app/cli.py): `python3 launch.py --help` lists them, at once and
before anything is installed. Only Python 3.11+ is assumed: the first run makes a virtual environment in .venv,
installs the exact versions of requirements.txt (and, for `test`, requirements-dev.txt), then the packages of
requirements-nodeps.txt without their dependencies, and restarts itself inside it.
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
NO_DEPS = ROOT / "requirements-nodeps.txt"
GPU_EXTRAS = ROOT / "requirements-gpu.txt"  # on Linux x86-64 with an NVIDIA GPU only


def _nvidia_linux() -> bool:
    """Linux on x86-64 with an NVIDIA driver: where the prebuilt FlashAttention-3 wheel can run."""
    import platform
    import shutil

    return sys.platform == "linux" and platform.machine() == "x86_64" and shutil.which("nvidia-smi") is not None


def _requirements(dev: bool) -> list[Path]:
    return [ROOT / "requirements.txt"] + ([ROOT / "requirements-dev.txt"] if dev else []) + [NO_DEPS]


def _stamp(dev: bool) -> str:
    digest = hashlib.sha256()
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
        subprocess.check_call([sys.executable, "-m", "venv", str(VENV)], stdout=sys.stderr)
    if not (stamp_file.exists() and stamp_file.read_text() == _stamp(dev)):
        print("omnibus: installing requirements (first run only; a few minutes)", file=sys.stderr)
        pip = [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        # pip's output goes to stderr: stdout is the protocol's alone under `launch.py mcp`
        subprocess.check_call(pip + ["-r", str(_requirements(dev)[-2])], stdout=sys.stderr)
        subprocess.check_call(pip + ["--no-deps", "-r", str(NO_DEPS)], stdout=sys.stderr)
        if _nvidia_linux():  # the optional GPU kernels: a failure only means the slower attention path serves
            if subprocess.call(pip + ["--no-deps", "-r", str(GPU_EXTRAS)], stdout=sys.stderr) != 0:
                print("omnibus: FlashAttention-3 (fa3-fwd) did not install; using FlexAttention", file=sys.stderr)
        stamp_file.write_text(_stamp(dev))
    if not inside:
        os.execv(str(PYTHON), [str(PYTHON), str(Path(__file__).resolve()), *sys.argv[1:]])


def main(argv: list[str]) -> int:
    if sys.version_info < (3, 11):
        print(f"omnibus needs Python 3.11 or newer (this is {sys.version.split()[0]})", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    from app import cli  # the standard library only, until a command runs

    if argv[:1] in (["-h"], ["--help"], ["help"], ["--version"], ["-V"]) or (
            argv and not argv[0].startswith("-") and argv[0] not in (*cli.COMMANDS, "test")):
        return cli.main(argv, prog="launch.py")  # help, the version, or an unknown command: nothing to install
    ensure_environment(dev=argv[:1] == ["test"])
    if argv[:1] == ["test"]:
        import pytest

        os.chdir(ROOT)
        return pytest.main(["-q", "-rs", *argv[1:]])
    return cli.main(argv, prog="launch.py")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
