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
# The tests' llama.cpp server (llama-cpp-python, source only on PyPI) is compiled for a portable x86-64 baseline
# (AVX2, FMA, F16C), never for the build machine's own CPU: llama.cpp's AMX matrix path crashes on some Sapphire
# Rapids machines. pip keys the wheels it builds by the source alone, not by these flags, so `test` builds this
# wheel into a folder of its own named by the pin and the flags (LLAMA_CPP_WHEELS), and installs it from there.
LLAMA_CPP = "llama-cpp-python"
LLAMA_CPP_FLAGS = " ".join([
    "-DGGML_NATIVE=OFF", "-DGGML_BACKEND_DL=OFF", "-DGGML_CPU_ALL_VARIANTS=OFF",
    *(f"-DGGML_{isa}=ON" for isa in ("SSE42", "AVX", "AVX2", "FMA", "F16C", "BMI2")),
    *(f"-DGGML_{isa}=OFF" for isa in ("AVX_VNNI", "AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16",
                                      "AMX_TILE", "AMX_INT8", "AMX_BF16")),
    "-DLLAVA_BUILD=OFF",  # the multimodal library: the text-only server never loads it
])
LLAMA_CPP_MARKER = ".omnibus-llama-cpp"  # in .venv: the key of the build installed there
LLAMA_CPP_WHEELS = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "omnibus" / "wheels"


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
    if dev:
        digest.update(LLAMA_CPP_FLAGS.encode())
    return digest.hexdigest()


def _llama_cpp_requirement() -> str:
    """requirements-dev.txt's pin of llama-cpp-python, without extras: "llama-cpp-python==0.3.36"."""
    for line in (ROOT / "requirements-dev.txt").read_text().splitlines():
        name, _, version = line.split("#")[0].strip().partition("==")
        if name.split("[")[0].strip().lower() == LLAMA_CPP:
            return f"{LLAMA_CPP}=={version.strip()}"
    raise SystemExit(f"omnibus: requirements-dev.txt has no {LLAMA_CPP}==VERSION line")


def _llama_cpp_key() -> str:
    """What the tests' llama.cpp build depends on: the pin, the platform and the flags, as a short hash."""
    import platform

    key = f"{_llama_cpp_requirement()} {sys.platform} {platform.machine()} {LLAMA_CPP_FLAGS}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _installed_llama_cpp() -> str:
    """The key of the llama.cpp build installed in .venv by `install_llama_cpp` ("" if none was)."""
    marker = VENV / LLAMA_CPP_MARKER
    return marker.read_text().strip() if marker.exists() else ""


def install_llama_cpp(pip: list[str]) -> Path:
    """Compile llama-cpp-python with LLAMA_CPP_FLAGS (once per pin, platform and flags) and install that wheel."""
    requirement, key = _llama_cpp_requirement(), _llama_cpp_key()
    folder = LLAMA_CPP_WHEELS / key
    if not list(folder.glob("*.whl")):
        print(f"omnibus: compiling {requirement} for the tests' server (once; about 8 CPU-minutes)", file=sys.stderr)
        building = folder.with_name(folder.name + f".building-{os.getpid()}")
        subprocess.check_call([str(PYTHON), "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
                               "--no-deps", "--no-cache-dir", "--no-binary", LLAMA_CPP, "-w", str(building),
                               requirement], env=dict(os.environ, CMAKE_ARGS=LLAMA_CPP_FLAGS))
        building.replace(folder)
    wheel = sorted(folder.glob("*.whl"))[-1]
    subprocess.check_call(pip + ["--no-deps", "--force-reinstall", str(wheel)], stdout=sys.stderr)
    (VENV / LLAMA_CPP_MARKER).write_text(key)
    return wheel


def _pins(path: Path) -> list[str]:
    """The `name==version` lines of a requirements file (comments, extras and `-r` lines left out)."""
    pins = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line and not line.startswith("-"):
            name, _, pinned = line.partition("==")
            pins.append(f"{name.split('[')[0].strip()}=={pinned.strip()}")
    return pins


_CHECK = """import sys, importlib.metadata as m
for spec in sys.argv[1:]:
    name, version = spec.split("==")
    try:
        ok = m.version(name).split("+")[0] == version  # 2.13.0+cpu is 2.13.0
    except m.PackageNotFoundError:
        ok = False
    if not ok:
        print(spec)
"""


def _missing(paths: list[Path]) -> list[str]:
    """The pins of `paths` that .venv does not hold at that version (all of them if the check cannot run)."""
    pins = [pin for path in paths for pin in _pins(path)]
    try:
        done = subprocess.run([str(PYTHON), "-c", _CHECK, *pins], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return pins
    return done.stdout.split() if done.returncode == 0 else pins


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
        missing = _missing(_requirements(dev) + ([GPU_EXTRAS] if _nvidia_linux() else []))
        llama_ready = not dev or _installed_llama_cpp() == _llama_cpp_key()
        if missing or not llama_ready:  # said only when something is installed; a complete one is only checked
            names = ", ".join(m.split("==")[0] for m in missing[:4]) + (" and more" if len(missing) > 4 else "")
            print(f"omnibus: installing {len(missing) or 1} requirement(s): {names or LLAMA_CPP} "
                  "(first run only; a few minutes)", file=sys.stderr)
            pip = [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
            if not llama_ready:  # before the requirements, which it then satisfies: pip would build its own, natively
                install_llama_cpp(pip)
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
