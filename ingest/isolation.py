"""Parsers that can hang or exhaust memory (PDF, DOCX) run in a worker process.

One child process (`python -c "...serve()"`) is started on first use and reused for every file after it, so the
cost is one interpreter start per process, not per file. It talks to the parent over a
`multiprocessing.connection` (a Unix socket, or a named pipe on Windows, with a random key), whose
`poll(timeout)` works on every system; being a plain interpreter, it never re-runs the caller's main module. Where the system has an address-space limit (`resource.RLIMIT_AS`: Linux, and the BSDs;
not Windows, and macOS does not enforce it) the child caps itself before it imports any parser. The parent waits
for each answer at most `Limits.parse_timeout_s`. A file that runs past the clock is killed with the worker
(`Popen.kill`: SIGKILL, or TerminateProcess on Windows); a worker that dies (out of memory, a crash in native
code) takes only its file with it. Both become a `FileRejected`, i.e. a skipped file with a reason, and the next
file gets a fresh worker. A worker whose parent dies sees its pipe close and exits.

A DOCX is a zip: before python-docx reads it, the worker checks its members against the
archive limits (total size, compression ratio), so a zip bomb is refused by name instead of
filling the memory cap.
"""

from __future__ import annotations

import atexit
import logging
import os
import subprocess
import sys
import threading
import time
import zlib
from multiprocessing.connection import Client, Listener
from pathlib import Path

from . import formats
from .document import Extracted
from .errors import FileRejected, human_size

log = logging.getLogger(__name__)

ISOLATED = frozenset({"pdf", "docx"})
START_TIMEOUT_S = 60.0
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[1])


def extension(name: str) -> str:
    """The lower-case extension of the last path component ('' when it has none)."""
    last = name.rpartition("/")[2]
    return last.rpartition(".")[2].lower() if "." in last else ""


def extract(name: str, data: bytes, limits) -> Extracted:
    """`formats.extract`, with PDF and DOCX run in the shared worker under its clock and memory cap."""
    if extension(name) not in ISOLATED:
        return formats.extract(name, data, limits)
    with _shared_lock:
        global _shared
        if _shared is None or _shared.memory_bytes != limits.parse_memory_bytes:
            if _shared is not None:
                _shared.close()
            _shared = ParserWorker(limits.parse_memory_bytes)
        return _shared.run(name, data, limits)


def memory_cap_supported() -> bool:
    """True where the worker can cap its own address space (Linux; macOS accepts the call but does not enforce it)."""
    try:
        import resource  # noqa: F401
    except ImportError:
        return False
    return sys.platform.startswith("linux") or "bsd" in sys.platform


class _Child:
    """The worker process and its connection (`poll`, `kill`, `wait` as `subprocess.Popen`, which it wraps)."""

    def __init__(self, memory_bytes: int):
        key = os.urandom(32)
        listener = Listener(authkey=key)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_PARENT, env.get("PYTHONPATH")]))
        address = listener.address if isinstance(listener.address, str) else repr(listener.address)
        self.popen = subprocess.Popen(
            [sys.executable, "-c", "from ingest.isolation import serve; serve()", address, str(memory_bytes)],
            stdin=subprocess.PIPE, env=env, start_new_session=os.name != "nt")
        self.pid = self.popen.pid
        self.popen.stdin.write(key.hex().encode() + b"\n")  # the key goes by pipe, not by command line
        self.popen.stdin.close()
        accepted: list = []
        waiter = threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True)
        waiter.start()
        waiter.join(START_TIMEOUT_S)
        listener.close()
        if not accepted:
            self.kill()
            raise TimeoutError("the parser worker did not connect")
        self.connection = accepted[0]

    def poll(self) -> int | None:
        return self.popen.poll()

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError from None

    def close(self) -> None:
        if getattr(self, "connection", None) is not None:
            self.connection.close()


class ParserWorker:
    """One child process that runs loaders under an address-space cap; restarted after a kill."""

    def __init__(self, memory_bytes: int):
        self.memory_bytes = memory_bytes
        self.process: _Child | None = None
        self.starts = 0  # how many children this worker has started (tests, benchmarks)

    def run(self, name: str, data: bytes, limits) -> Extracted:
        """Load one file in the child. Raises FileRejected for bad input, a timeout or a dead worker."""
        self._ensure_started()
        deadline = time.monotonic() + limits.parse_timeout_s  # sending the file counts against its clock
        try:
            self.process.connection.send((name, data, limits))
            status, value, notes = _receive(self.process.connection, max(deadline - time.monotonic(), 0.0))
        except TimeoutError:
            self.close()
            raise FileRejected(f"the parser took longer than {limits.parse_timeout_s:g} s "
                               "(stopped; the file may be damaged or hostile)") from None
        except (EOFError, OSError):
            code = self._reap()
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            raise FileRejected(f"the parser crashed or ran past its {human_size(self.memory_bytes)} memory cap "
                               f"({how}; the file may be damaged or hostile)") from None
        for note in notes:  # what the parsers logged (pypdf's "EOF marker not found"): one line each, in our log
            log.info("%s: %s", name, note)
        if status == "ok":
            return value
        if status == "rejected":
            raise FileRejected(value)
        raise RuntimeError(f"internal error in the parser worker: {value}")

    def _ensure_started(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        if self.process is not None:
            self._reap()
        self.starts += 1
        try:  # the file's clock starts once the child has imported its parsers
            self.process = _Child(self.memory_bytes)
            _receive(self.process.connection, START_TIMEOUT_S)
        except (TimeoutError, EOFError, OSError) as error:
            self.close()
            raise RuntimeError(f"the parser worker did not start ({type(error).__name__})") from error

    def _reap(self) -> int | None:
        process, self.process = self.process, None
        if process is None:
            return None
        try:
            return process.wait(timeout=5)
        except TimeoutError:
            process.kill()
            return process.wait()
        finally:
            process.close()

    def close(self) -> None:
        """Kill the child (if any); the next `run` starts a fresh one."""
        process, self.process = self.process, None
        if process is None:
            return
        process.kill()
        process.wait()
        process.close()


def _receive(connection, timeout_s: float):
    """The child's next message, waiting at most `timeout_s` (TimeoutError); EOFError when the child is gone."""
    if not connection.poll(timeout_s):
        raise TimeoutError
    return connection.recv()


_shared: ParserWorker | None = None
_shared_lock = threading.Lock()


@atexit.register
def _stop_shared() -> None:
    if _shared is not None:
        _shared.close()


# -- the child --
def serve() -> None:
    """The worker's main loop: cap the address space, connect, then answer one request after another."""
    address, memory = sys.argv[1], int(sys.argv[2])
    key = bytes.fromhex(sys.stdin.readline().strip())
    if memory_cap_supported():
        import resource

        try:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        except (ValueError, OSError):
            pass
    os.dup2(2, 1)  # anything a native library prints goes to stderr
    notes = _Notes()  # what the parsers log goes back to the parent with each answer, never to stderr
    logging.getLogger().addHandler(notes)
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("ingest").setLevel(logging.INFO)
    import docx  # noqa: F401  (imported before the first file's clock starts)
    import pypdf  # noqa: F401

    import ast

    connection = Client(address if not address.startswith("(") else ast.literal_eval(address), authkey=key)
    connection.send(("ready", None, []))
    while True:
        try:
            name, data, limits = connection.recv()
        except (EOFError, OSError):
            return
        try:
            result = ("ok", _load(name, data, limits))
        except FileRejected as error:
            result = ("rejected", error.reason)
        except MemoryError:
            result = ("rejected", f"needs more than the {human_size(memory)} memory cap for parsing")
        except Exception as error:  # a defect: reported to the parent, which records it as one
            result = ("error", f"{type(error).__name__}: {error}")
        del data
        try:
            connection.send((*result, notes.take()))
        except (EOFError, OSError):
            return


class _Notes(logging.Handler):
    """The child's log records of one file, as `logger: message` lines for the parent to log."""

    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = " | ".join(line for line in record.getMessage().splitlines() if line.strip())
        library = "" if record.name.startswith("ingest") else record.name.split(".")[0] + ": "
        self.lines.append(f"{library}{text}"[:500])

    def take(self) -> list[str]:
        lines, self.lines = self.lines[:20], []
        return lines


def _load(name: str, data: bytes, limits) -> Extracted:
    if extension(name) != "docx":
        return formats.extract(name, data, limits)
    from lxml.etree import XMLSyntaxError

    check_docx_zip(data, limits)
    try:
        return formats.extract(name, data, limits)
    except XMLSyntaxError as error:  # also what libxml2 raises for an entity bomb (billion laughs)
        raise FileRejected(f"not a readable DOCX (broken XML: {error})") from error
    except (zlib.error, EOFError, NotImplementedError) as error:  # damaged zip data (bench/fuzz_loaders.py)
        raise FileRejected(f"not a readable DOCX (damaged zip data: {error})") from error


def check_docx_zip(data: bytes, limits) -> None:
    """Refuse a DOCX whose zip members would unpack past the archive limits (a zip bomb)."""
    import io
    import zipfile

    from .archive import RATIO_FLOOR_BYTES

    try:
        infos = zipfile.ZipFile(io.BytesIO(data)).infolist()
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError) as error:
        raise FileRejected(f"not a readable DOCX (not a zip: {error})") from error
    if len(infos) > limits.max_archive_entries:
        raise FileRejected(f"not a readable DOCX ({len(infos):,} zip entries, over the "
                           f"{limits.max_archive_entries:,}-entry cap)")
    total = 0
    for info in infos:
        total += info.file_size
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > RATIO_FLOOR_BYTES and ratio > limits.max_compression_ratio:
            raise FileRejected(f"DOCX part {info.filename} has compression ratio {ratio:,.0f}:1, over the "
                               f"{limits.max_compression_ratio:,.0f}:1 cap (zip bomb?)")
        if total > limits.max_archive_total_bytes:
            raise FileRejected(f"DOCX unpacks to more than the {human_size(limits.max_archive_total_bytes)} cap "
                               "(zip bomb?)")
