"""Archives (.zip, .tar, .tar.gz/.tgz): members are read into memory, never written to disk.

Nothing is extracted to the file system, so a member named `../../etc/passwd` cannot land
anywhere; such names are still refused ("zip entry escapes the archive") so that display
paths stay inside the archive. Limits: entry count, per-member size, total uncompressed
size and per-member compression ratio (see `Limits`).
"""

from __future__ import annotations

import io
import posixpath
import tarfile
import zipfile
import zlib
from dataclasses import dataclass

from .document import Skipped
from .errors import FileRejected, human_size

RATIO_FLOOR_BYTES = 1_000_000  # small members may compress well without being a bomb


@dataclass(frozen=True)
class Member:
    """One regular file read from an archive: its path inside the archive and its bytes."""

    path: str
    data: bytes


def is_archive(name: str) -> bool:
    """True for the archive formats this module opens."""
    lower = name.lower()
    return lower.endswith((".zip", ".tar", ".tar.gz", ".tgz"))


def safe_member_path(name: str) -> str | None:
    """The member's normalised relative path, or None when it would escape the archive."""
    name = name.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return posixpath.join(*parts)


def read_archive(name: str, data: bytes, limits, skipped: list[Skipped]) -> list[Member]:
    """All acceptable regular-file members of one archive; refused members go to `skipped`.

    Raises FileRejected when the archive as a whole is unusable (corrupt, too many entries).
    """
    if name.lower().endswith(".zip"):
        return _read_zip(name, data, limits, skipped)
    return _read_tar(name, data, limits, skipped)


class _Budget:
    """Running checks shared by both archive formats."""

    def __init__(self, name: str, limits, skipped: list[Skipped]):
        self.name, self.limits, self.skipped = name, limits, skipped
        self.total = 0

    def admit(self, raw_name: str, size: int, packed: int | None) -> str | None:
        """The safe path when the member may be read, else None (and a Skipped is recorded)."""
        path = safe_member_path(raw_name)
        shown = f"{self.name}/{raw_name}"
        limits = self.limits
        if path is None:
            self.skipped.append(Skipped(shown, "zip entry escapes the archive"))
            return None
        shown = f"{self.name}/{path}"
        if size > limits.max_archive_member_bytes:
            self.skipped.append(Skipped(shown, f"over the {human_size(limits.max_archive_member_bytes)}"
                                               f" per-file cap ({human_size(size)})"))
            return None
        if packed is not None and size > RATIO_FLOOR_BYTES and size > packed * limits.max_compression_ratio:
            ratio = size / max(packed, 1)
            self.skipped.append(Skipped(shown, f"compression ratio {ratio:,.0f}:1 is over the "
                                               f"{limits.max_compression_ratio:,.0f}:1 cap (zip bomb?)"))
            return None
        if self.total + size > limits.max_archive_total_bytes:
            self.skipped.append(Skipped(shown, "archive's total uncompressed size is over the "
                                               f"{human_size(limits.max_archive_total_bytes)} cap"))
            return None
        self.total += size
        return path


def _read_zip(name: str, data: bytes, limits, skipped: list[Skipped]) -> list[Member]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError, zlib.error) as error:
        raise FileRejected(f"not a readable zip archive ({error})") from error
    if len(infos) > limits.max_archive_entries:
        raise FileRejected(f"has {len(infos):,} entries, over the {limits.max_archive_entries:,}-entry cap")
    budget, members = _Budget(name, limits, skipped), []
    for info in infos:
        if info.filename.endswith("/"):  # a folder (ZipInfo.is_dir() fails on an empty name)
            continue
        path = budget.admit(info.filename, info.file_size, info.compress_size)
        if path is None:
            continue
        if info.flag_bits & 0x1:
            skipped.append(Skipped(f"{name}/{path}", "needs a password"))
            continue
        try:
            with archive.open(info) as handle:
                content = handle.read(info.file_size + 1)  # never trust the declared size beyond +1
        except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError, zlib.error) as error:
            skipped.append(Skipped(f"{name}/{path}", f"cannot be read from the archive ({error})"))
            continue
        if len(content) > info.file_size:
            skipped.append(Skipped(f"{name}/{path}", "larger than its declared size (corrupt or hostile archive)"))
            continue
        members.append(Member(path, content))
    return members


def _read_tar(name: str, data: bytes, limits, skipped: list[Skipped]) -> list[Member]:
    try:
        archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
    except (tarfile.TarError, OSError, EOFError) as error:
        raise FileRejected(f"not a readable tar archive ({error})") from error
    budget, members, count = _Budget(name, limits, skipped), [], 0
    try:
        for info in archive:
            count += 1
            if count > limits.max_archive_entries:
                raise FileRejected(f"has more than {limits.max_archive_entries:,} entries (the cap)")
            if info.isdir():
                continue
            if not info.isfile():
                skipped.append(Skipped(f"{name}/{info.name}", "link or special file inside the archive (not followed)"))
                continue
            packed = len(data) if name.lower().endswith(("gz", "tgz")) else None
            path = budget.admit(info.name, info.size, packed)
            if path is None:
                continue
            handle = archive.extractfile(info)
            content = handle.read(info.size) if handle is not None else b""
            members.append(Member(path, content))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise FileRejected(f"not a readable tar archive ({error})") from error
    return members
