"""Parsers that can hang or exhaust memory (PDF, DOCX) run in a worker process.

One child process (`python -c "...serve()"`) is started on first use and reused for every
file after it, so the cost is one interpreter start per process, not per file. The child
caps its own address space (`RLIMIT_AS`) before it imports any parser; the parent waits for
each answer at most `Limits.parse_timeout_s`. A file that runs past the clock is killed with
the worker; a worker that dies (out of memory, a crash in native code) takes only its file
with it. Both become a `FileRejected`, i.e. a skipped file with a reason, and the next file
gets a fresh worker.

Messages are pickled frames (8-byte length, then the pickle) on the child's stdin and on a
private copy of its stdout; the child points its own fd 1 at stderr so that nothing a native
library prints can corrupt a frame.

A DOCX is a zip: before python-docx reads it, the worker checks its members against the
archive limits (total size, compression ratio), so a zip bomb is refused by name instead of
filling the memory cap.
"""

from __future__ import annotations

import atexit
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

from . import formats
from .document import Extracted
from .errors import FileRejected, human_size

ISOLATED = frozenset({"pdf", "docx"})
START_TIMEOUT_S = 60.0
_HEADER = struct.Struct(">Q")
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


class ParserWorker:
    """One child process that runs loaders under an address-space cap; restarted after a kill."""

    def __init__(self, memory_bytes: int):
        self.memory_bytes = memory_bytes
        self.process: subprocess.Popen | None = None
        self.starts = 0  # how many children this worker has started (tests, benchmarks)

    def run(self, name: str, data: bytes, limits) -> Extracted:
        """Load one file in the child. Raises FileRejected for bad input, a timeout or a dead worker."""
        self._ensure_started()
        deadline = time.monotonic() + limits.parse_timeout_s
        try:
            _write_frame(self.process.stdin, (name, data, limits))
            status, value = _read_frame(self.process.stdout.fileno(), deadline)
        except TimeoutError:
            self.close()
            raise FileRejected(f"the parser took longer than {limits.parse_timeout_s:g} s "
                               "(stopped; the file may be damaged or hostile)") from None
        except (EOFError, BrokenPipeError, OSError):
            code = self._reap()
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            raise FileRejected(f"the parser crashed or ran past its {human_size(self.memory_bytes)} memory cap "
                               f"({how}; the file may be damaged or hostile)") from None
        if status == "ok":
            return value
        if status == "rejected":
            raise FileRejected(value)
        raise RuntimeError(f"internal error in the parser worker: {value}")

    def _ensure_started(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_PARENT, env.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from ingest.isolation import serve; serve()", str(self.memory_bytes)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, start_new_session=True)
        self.starts += 1
        try:  # the file's clock starts once the child has imported its parsers
            _read_frame(self.process.stdout.fileno(), time.monotonic() + START_TIMEOUT_S)
        except (TimeoutError, EOFError, OSError) as error:
            self.close()
            raise RuntimeError(f"the parser worker did not start ({type(error).__name__})") from error

    def _reap(self) -> int | None:
        process, self.process = self.process, None
        if process is None:
            return None
        try:
            return process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()
        finally:
            _close_pipes(process)

    def close(self) -> None:
        """Kill the child (if any); the next `run` starts a fresh one."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait()
        _close_pipes(process)


def _close_pipes(process: subprocess.Popen) -> None:
    for pipe in (process.stdin, process.stdout):
        try:
            pipe.close()
        except OSError:
            pass


_shared: ParserWorker | None = None
_shared_lock = threading.Lock()


@atexit.register
def _stop_shared() -> None:
    if _shared is not None:
        _shared.close()


# -- framing --
def _write_frame(pipe, message) -> None:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    pipe.write(_HEADER.pack(len(payload)) + payload)
    pipe.flush()


def _read_exact(fd: int, size: int, deadline: float | None) -> bytes:
    chunks, left = [], size
    while left:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_frame(fd: int, deadline: float | None):
    (size,) = _HEADER.unpack(_read_exact(fd, _HEADER.size, deadline))
    return pickle.loads(_read_exact(fd, size, deadline))


# -- the child --
def serve() -> None:
    """The worker's main loop: cap the address space, then answer one request after another."""
    memory = int(sys.argv[1])
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    except (ImportError, ValueError, OSError):
        pass
    reply = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything a native library prints goes to stderr, never into a frame
    import docx  # noqa: F401  (imported before the first file's clock starts)
    import pypdf  # noqa: F401

    _write_frame(reply, ("ready", None))
    requests = sys.stdin.buffer.fileno()
    while True:
        try:
            name, data, limits = _read_frame(requests, None)
        except EOFError:
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
        _write_frame(reply, result)


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
