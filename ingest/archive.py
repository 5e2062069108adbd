"""Archives (.zip, .tar, .tar.gz/.tgz, .tar.bz2, .tar.xz): members are read one at a time, never written to disk.

Nothing is extracted to the file system, so a member named `../../etc/passwd` cannot land anywhere; such
names are still refused ("zip entry escapes the archive") so that display paths stay inside the archive.

Memory stays bounded by one member, whatever the archive holds:
- `open_archive` lists the members and decides which may be read (entry count, per-member size, total size,
  per-member compression ratio, see `Limits`); a member's bytes are read only when its `Member.read()` is
  called, and nothing keeps them afterwards.
- A zip's end-of-central-directory record is checked before the directory is parsed, so a 2M-entry
  directory is refused from its first 22 bytes instead of after building 2M `ZipInfo`s.
- A tar is streamed. The compression is found from the bytes, not the name (a `.tar` may hold bz2), and
  the compressed bytes each member took are counted as it streams, so the ratio is the member's own.
  Header fields (GNU long names, pax records) over `MAX_HEADER_BYTES` refuse the archive before tarfile
  reads them. Members are read back in archive order by one forward pass.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import posixpath
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .document import Skipped
from .errors import FileRejected, human_size
from .names import archive_format

RATIO_FLOOR_BYTES = 1_000_000  # small members may compress well without being a bomb
MAX_HEADER_BYTES = 8_192        # a GNU long name or a pax header block; real ones are a few hundred bytes
ZIP_DIRECTORY_BYTES_PER_ENTRY = 1_024  # central directory bytes allowed per permitted entry
_READ_ERRORS = (zipfile.BadZipFile, tarfile.TarError, OSError, ValueError, NotImplementedError, EOFError,
                zlib.error, lzma.LZMAError)


@dataclass(frozen=True)
class Member:
    """One regular file of an archive: its path inside the archive and a way to read its bytes (once needed)."""

    path: str
    size: int
    read: Callable[[], bytes]


def is_archive(name: str) -> bool:
    """True for the archive formats this module opens."""
    return archive_format(name) is not None


def safe_member_path(name: str) -> str | None:
    """The member's normalised relative path, or None when it would escape the archive."""
    name = name.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return posixpath.join(*parts)


class Archive:
    """An open archive: its acceptable members, and the file handles they read from (`close()` them)."""

    def __init__(self, members: list[Member], closers: list[Callable[[], None]]):
        self.members = members
        self._closers = closers

    def close(self) -> None:
        for close in self._closers:
            close()
        self._closers = []


def open_archive(name: str, path: Path, limits, skipped: list[Skipped]) -> Archive:
    """The members of the archive at `path` (shown as `name`) that may be read; refused ones go to `skipped`.

    Raises FileRejected when the archive as a whole is unusable (corrupt, too many entries, hostile headers).
    """
    if archive_format(name) == "zip":
        return _open_zip(name, path, limits, skipped)
    return _open_tar(name, path, limits, skipped)


class _Budget:
    """Running checks shared by both archive formats."""

    def __init__(self, name: str, limits, skipped: list[Skipped]):
        self.name, self.limits, self.skipped = name, limits, skipped
        self.total = 0

    def admit(self, raw_name: str, size: int, packed: int | None) -> str | None:
        """The safe path when the member may be read, else None (and a Skipped is recorded)."""
        path = safe_member_path(raw_name)
        limits = self.limits
        if path is None:
            self.skipped.append(Skipped(f"{self.name}/{raw_name}", "zip entry escapes the archive"))
            return None
        shown = f"{self.name}/{path}"
        if size > limits.max_archive_member_bytes:
            self.skipped.append(Skipped(shown, f"over the {human_size(limits.max_archive_member_bytes)}"
                                               f" per-file cap ({human_size(size)})"))
            return None
        if packed is not None and self.bomb(shown, size, packed):
            return None
        if self.total + size > limits.max_archive_total_bytes:
            self.skipped.append(Skipped(shown, "archive's total uncompressed size is over the "
                                               f"{human_size(limits.max_archive_total_bytes)} cap"))
            return None
        self.total += size
        return path

    def bomb(self, shown: str, size: int, packed: int) -> bool:
        """True (and a Skipped recorded) when `size` bytes came from `packed` compressed bytes past the ratio cap."""
        if size > RATIO_FLOOR_BYTES and size > packed * self.limits.max_compression_ratio:
            ratio = size / max(packed, 1)
            self.skipped.append(Skipped(shown, f"compression ratio {ratio:,.0f}:1 is over the "
                                               f"{self.limits.max_compression_ratio:,.0f}:1 cap (zip bomb?)"))
            return True
        return False


# -- zip --
def zip_directory_size(handle) -> tuple[int, int]:
    """(entries, central directory bytes) from a zip's end records (zip64 too), read from the file's tail.

    Raises FileRejected when there is no end record."""
    handle.seek(0, 2)
    length = handle.tell()
    handle.seek(max(0, length - 65_557))  # the record (22 bytes) plus the longest comment
    tail = handle.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        raise FileRejected("not a readable zip archive (no end-of-directory record)")
    _, _, _, _, entries, size, _, _ = struct.unpack("<4s4H2LH", tail[at:at + 22])
    locator = at - 20
    if locator >= 0 and tail[locator:locator + 4] == b"PK\x06\x07":
        (offset,) = struct.unpack("<Q", tail[locator + 8:locator + 16])
        handle.seek(offset)
        record = handle.read(56)
        if len(record) == 56 and record[:4] == b"PK\x06\x06":
            entries, size = struct.unpack("<QQ", record[32:48])
    return entries, size


def _open_zip(name: str, path: Path, limits, skipped: list[Skipped]) -> Archive:
    handle = open(path, "rb")
    try:
        entries, directory = zip_directory_size(handle)
        if entries > limits.max_archive_entries:
            raise FileRejected(f"has {entries:,} entries, over the {limits.max_archive_entries:,}-entry cap")
        if directory > limits.max_archive_entries * ZIP_DIRECTORY_BYTES_PER_ENTRY:
            raise FileRejected(f"its central directory is {human_size(directory)}, over the "
                               f"{human_size(limits.max_archive_entries * ZIP_DIRECTORY_BYTES_PER_ENTRY)} cap")
        handle.seek(0)
        try:
            archive = zipfile.ZipFile(handle)
            infos = archive.infolist()
        except _READ_ERRORS as error:
            raise FileRejected(f"not a readable zip archive ({error})") from error
        if len(infos) > limits.max_archive_entries:
            raise FileRejected(f"has {len(infos):,} entries, over the {limits.max_archive_entries:,}-entry cap")
        if not infos:
            raise FileRejected("empty archive (no files in it)")
    except BaseException:
        handle.close()
        raise
    budget, members = _Budget(name, limits, skipped), []
    for info in infos:
        if info.filename.endswith("/"):  # a folder (ZipInfo.is_dir() fails on an empty name)
            continue
        member_path = budget.admit(info.filename, info.file_size, info.compress_size)
        if member_path is None:
            continue
        if info.flag_bits & 0x1:
            skipped.append(Skipped(f"{name}/{member_path}", "needs a password"))
            continue
        members.append(Member(member_path, info.file_size, lambda info=info: _read_zip_member(archive, info)))
    return Archive(members, [archive.close, handle.close])


def _read_zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    try:
        with archive.open(info) as handle:
            content = handle.read(info.file_size + 1)  # never trust the declared size beyond +1
    except _READ_ERRORS as error:
        raise FileRejected(f"cannot be read from the archive ({error})") from error
    if len(content) > info.file_size:
        raise FileRejected("larger than its declared size (corrupt or hostile archive)")
    return content


# -- tar --
class _HeaderTooLong(tarfile.TarError):
    pass


class _CappedTarInfo(tarfile.TarInfo):
    """A TarInfo that refuses long-name and pax header blocks over MAX_HEADER_BYTES before tarfile reads them."""

    def _proc_member(self, tarfile_):
        if self.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                         tarfile.SOLARIS_XHDTYPE) and self.size > MAX_HEADER_BYTES:
            raise _HeaderTooLong(f"a tar header field of {human_size(self.size)} is over the "
                                 f"{human_size(MAX_HEADER_BYTES)} cap (hostile archive?)")
        return super()._proc_member(tarfile_)


class _Counted:
    """A raw file that counts the bytes read from it (the compressed bytes a stream has consumed)."""

    def __init__(self, handle):
        self.handle, self.count = handle, 0

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.count += len(data)
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        pass


_MAGIC = ((b"\x1f\x8b", "gz"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"))


def _stream(path: Path):
    """(open handle, byte counter, decompressed stream, compressed?) for a tar file, by its first bytes."""
    handle = open(path, "rb")
    head = handle.read(6)
    handle.seek(0)
    raw = _Counted(handle)
    kind = next((kind for magic, kind in _MAGIC if head.startswith(magic)), None)
    if kind == "gz":
        stream = gzip.GzipFile(fileobj=raw, mode="rb")
    elif kind == "bz2":
        stream = bz2.BZ2File(raw, mode="rb")
    elif kind == "xz":
        stream = lzma.LZMAFile(raw, mode="rb")
    else:
        stream = raw
    return handle, raw, stream, kind is not None


def _open_tar(name: str, path: Path, limits, skipped: list[Skipped]) -> Archive:
    """List a tar in one streaming pass; members are read back by a second pass (`_TarCursor`)."""
    handle, raw, stream, compressed = _stream(path)
    budget, entries = _Budget(name, limits, skipped), 0
    admitted: dict[int, tuple[str, int]] = {}  # position in the stream -> (path, size)
    pending = None  # (compressed bytes read when the last admitted member started, its position)
    try:
        archive = tarfile.open(fileobj=stream, mode="r|", tarinfo=_CappedTarInfo)
        while True:
            info = archive.next()
            archive.members.clear()  # streaming mode would keep every header
            if pending is not None:  # the member before this header is done: the bytes it took are known
                start, at = pending
                member_path, size = admitted[at]
                if budget.bomb(f"{name}/{member_path}", size, raw.count - start):
                    del admitted[at]
                    budget.total -= size
                pending = None
            if info is None:
                break
            entries += 1
            if entries > limits.max_archive_entries:
                raise FileRejected(f"has more than {limits.max_archive_entries:,} entries (the cap)")
            if info.isdir():
                continue
            if not info.isfile():
                skipped.append(Skipped(f"{name}/{info.name}", "link or special file inside the archive (not followed)"))
                continue
            if budget.total + info.size > limits.max_archive_total_bytes:
                skipped.append(Skipped(f"{name}/{info.name}", "archive's total uncompressed size is over the "
                                                              f"{human_size(limits.max_archive_total_bytes)} cap"))
                break  # reading on would only decompress what is refused
            member_path = budget.admit(info.name, info.size, None)
            if member_path is None:
                continue
            admitted[entries - 1] = (member_path, info.size)
            if compressed:
                pending = (raw.count, entries - 1)
    except _HeaderTooLong as error:
        raise FileRejected(str(error)) from None
    except _READ_ERRORS as error:
        if entries == 0:
            raise FileRejected(f"not a readable tar archive ({error})") from error
        skipped.append(Skipped(name, f"damaged after {entries:,} entries; the entries before were kept ({error})"))
    finally:
        handle.close()
    if entries == 0:
        raise FileRejected("empty archive (no files in it)")
    cursor = _TarCursor(path)
    members = [Member(member_path, size, lambda at=at, size=size: cursor.read(at, size))
               for at, (member_path, size) in admitted.items()]
    return Archive(members, [cursor.close])


class _TarCursor:
    """Reads members of one tar by their position in the stream, going forward; going back restarts it."""

    def __init__(self, path: Path):
        self.path = path
        self.handle = self.archive = None
        self.position = -1

    def read(self, ordinal: int, size: int) -> bytes:
        if self.archive is None or ordinal <= self.position:
            self.close()
            self.handle, _, stream, _ = _stream(self.path)
            self.archive = tarfile.open(fileobj=stream, mode="r|", tarinfo=_CappedTarInfo)
            self.position = -1
        try:
            while self.position < ordinal:
                info = self.archive.next()
                self.archive.members.clear()  # streaming mode would keep every header
                self.position += 1
                if info is None:
                    raise FileRejected("cannot be read from the archive (it ended early)")
            data = self.archive.extractfile(info)
            return data.read(size) if data is not None else b""
        except _HeaderTooLong as error:
            raise FileRejected(str(error)) from None
        except _READ_ERRORS as error:
            self.close()
            raise FileRejected(f"cannot be read from the archive ({error})") from error

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
        self.handle = self.archive = None
