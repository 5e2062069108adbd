"""Turn the paths a user gave into a flat list of files to load.

Folders are walked with default ignores and `.gitignore` rules at every level (pruned
folders are reported once as skipped). Archives given directly are listed here and their
members read one at a time when loaded (`archive.py`); an archive found inside a folder is
reported, not opened. Only regular files are read (a FIFO or `/dev/zero` named on the command
line would never end), and never more than the per-file cap. Every entry gets
a display path relative to the dropped root, starting with the root's own name:
`myrepo/src/app.py`, `book.pdf`, `bundle.zip/docs/a.md`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from .archive import Archive, is_archive, open_archive
from .document import Skipped
from .errors import FileRejected, InputError, human_size
from .ignore import MAX_GITIGNORE_BYTES, GitIgnores, TooManyRules, default_reason


@dataclass(frozen=True)
class FoundFile:
    """One file to load. `read()` returns its bytes; `root` is the display name of the dropped
    path it came from, and `in_tree` is True when that root is a folder or an archive."""

    source: str
    root: str
    in_tree: bool
    read: Callable[[], bytes]


@dataclass
class Walk:
    """The result of walking: entries to load and things left out."""

    entries: list[FoundFile]
    skipped: list[Skipped]
    archives: list[Archive] = field(default_factory=list)

    def close(self) -> None:
        """Close the archives the entries read from."""
        for archive in self.archives:
            archive.close()


def walk(paths, limits) -> Walk:
    """Expand files, folders and archives into entries. Raises InputError for a missing path."""
    result = Walk([], [])
    roots_seen: dict[str, Path] = {}
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise InputError(f"no such file or folder: {raw}")
        real = path.resolve()
        root = _root_name(real, roots_seen)
        if root is None:
            result.skipped.append(Skipped(str(raw), "given twice"))
            continue
        roots_seen[root] = real
        if real.is_dir():
            _walk_folder(real, root, limits, result)
        elif is_archive(real.name):
            _open_archive(real, root, limits, result)
        else:
            _add_file(real, root, root, False, limits, result)
    result.entries = [replace(e, source=display_name(e.source), root=display_name(e.root)) for e in result.entries]
    result.skipped = [replace(s, source=display_name(s.source)) for s in result.skipped]
    return result


_CONTROLS = {c: f"\\x{c:02x}" for c in range(32) if chr(c) not in "\t\n"} | {0x7F: "\\x7f"}


def display_name(path: str) -> str:
    """A display path that is valid UTF-8 and holds no terminal controls: bytes that are not UTF-8
    (kept by Python as lone surrogates) and C0 controls other than tab and newline become `\\xNN`."""
    if path.isascii() and path.isprintable():
        return path
    try:
        raw = path.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that no file-system byte produced
        raw = path.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace").translate(_CONTROLS)


def _root_name(real: Path, roots_seen: dict[str, Path]) -> str | None:
    """A display name for a dropped path, unique within the run; None when it is a repeat."""
    name = real.name or str(real).strip("/").replace("/", "_") or "root"
    if real in roots_seen.values():
        return None
    candidate, n = name, 1
    while candidate in roots_seen:
        n += 1
        candidate = f"{name} ({n})"
    return candidate


def _special_reason(mode: int) -> str | None:
    """Why a file of this `st_mode` is not read, or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    what = "a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) \
        else "a socket" if stat.S_ISSOCK(mode) else "a special file"
    return f"not a regular file ({what}; not read)"


def _stat_reason(info: os.stat_result, cap: int, over_cap: str) -> str | None:
    """Why a file with this `stat` is not read (not a regular file, or larger than `cap`: `over_cap` and its
    size), or None."""
    reason = _special_reason(info.st_mode)
    if reason is None and info.st_size > cap:
        reason = f"{over_cap} ({human_size(info.st_size)})"
    return reason


def read_regular(path: Path, limit: int) -> bytes:
    """The bytes of a regular file, at most `limit` + 1 of them. Opened without blocking, and checked after
    opening, so a file swapped for a FIFO or a device in between is refused instead of read for ever."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        reason = _special_reason(os.fstat(fd).st_mode)
        if reason:
            raise FileRejected(reason)
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise FileRejected(f"over the {human_size(limit)} per-file cap (it grew while being read)")
    return data


def _add_file(path: Path, source: str, root: str, in_tree: bool, limits, result: Walk) -> None:
    if len(result.entries) >= limits.max_files:
        result.skipped.append(Skipped(source, f"over the {limits.max_files:,}-file cap for one run"))
        return
    try:
        info = path.stat()
    except OSError as error:
        result.skipped.append(Skipped(source, f"cannot be read ({error.strerror})"))
        return
    reason = _stat_reason(info, limits.max_file_bytes, f"over the {human_size(limits.max_file_bytes)} per-file cap")
    if reason:
        result.skipped.append(Skipped(source, reason))
        return
    result.entries.append(FoundFile(source, root, in_tree, lambda: read_regular(path, limits.max_file_bytes)))


def _walk_folder(top: Path, root: str, limits, result: Walk) -> None:
    ignores = GitIgnores()
    stack = [(top, "")]
    while stack:
        folder, rel = stack.pop()
        try:
            children = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as error:
            result.skipped.append(Skipped(f"{root}/{rel}", f"cannot be listed ({error.strerror})"))
            continue
        names = frozenset(c.name for c in children)
        if ".gitignore" in names:
            try:
                ignores.add(rel, (folder / ".gitignore").read_text(encoding="utf-8", errors="replace"))
            except OSError:
                pass
            except TooManyRules as error:
                result.skipped.append(Skipped(f"{root}/{rel}/.gitignore" if rel else f"{root}/.gitignore", str(error)))
        subfolders = []
        for child in children:
            child_rel = f"{rel}/{child.name}" if rel else child.name
            shown = f"{root}/{child_rel}"
            is_dir = child.is_dir(follow_symlinks=False)
            if is_dir:
                reason = _folder_reason(child, ignores, child_rel)
                if reason:
                    result.skipped.append(Skipped(shown + "/", reason))
                else:
                    subfolders.append((Path(child.path), child_rel))
                continue
            if child.is_symlink():
                reason = _link_reason(Path(child.path), top)
                if reason:
                    result.skipped.append(Skipped(shown + ("/" if reason.startswith("link to a folder") else ""),
                                                  reason))
                    continue
            if child.name == ".gitignore":
                continue
            if not child.is_file():
                result.skipped.append(Skipped(shown, "not a regular file (a FIFO, device or socket; not read)"))
                continue
            reason = default_reason(child.name, False)
            if reason is None and ignores.ignored(child_rel, False):
                reason = "ignored by .gitignore"
            if reason:
                result.skipped.append(Skipped(shown, reason))
            elif is_archive(child.name):
                result.skipped.append(Skipped(shown, "archive inside a folder (drop it on its own to read it)"))
            else:
                _add_file(Path(child.path), shown, root, True, limits, result)
        stack.extend(reversed(subfolders))


def _link_reason(link: Path, top: Path) -> str | None:
    """Why a symbolic link inside a dropped folder is not read, or None for a link to a file inside it."""
    try:
        target = link.resolve(strict=True)
    except (OSError, RuntimeError):
        return "broken or looping link (not followed)"
    if target.is_dir():
        return "link to a folder (not followed)"
    if not target.is_relative_to(top):
        return "link to a file outside the dropped folder (not followed)"
    return None


def _folder_reason(entry: os.DirEntry, ignores: GitIgnores, rel: str) -> str | None:
    markers = frozenset({"pyvenv.cfg"}) if os.path.exists(os.path.join(entry.path, "pyvenv.cfg")) \
        else frozenset()
    reason = default_reason(entry.name, True, markers)
    if reason is None and ignores.ignored(rel, True):
        reason = "ignored by .gitignore"
    return reason


def _open_archive(path: Path, root: str, limits, result: Walk) -> None:
    reason = _stat_reason(path.stat(), limits.max_archive_total_bytes,
                          f"archive over the {human_size(limits.max_archive_total_bytes)} cap")
    if reason:
        result.skipped.append(Skipped(root, reason))
        return
    try:
        archive = open_archive(root, path, limits, result.skipped)
    except FileRejected as error:
        result.skipped.append(Skipped(root, error.reason))
        return
    result.archives.append(archive)
    ignores = GitIgnores()
    for member in archive.members:
        if member.path.rpartition("/")[2] != ".gitignore":
            continue
        shown = f"{root}/{member.path}"
        try:
            if member.size > MAX_GITIGNORE_BYTES:
                raise TooManyRules(f".gitignore over the {MAX_GITIGNORE_BYTES:,}-character cap (its rules are not used)")
            ignores.add(member.path.rpartition("/")[0], member.read().decode("utf-8", errors="replace"))
        except TooManyRules as error:
            result.skipped.append(Skipped(shown, str(error)))
        except FileRejected as error:
            result.skipped.append(Skipped(shown, error.reason))
    for member in archive.members:  # archive order: a tar is then read back in one forward pass
        shown = f"{root}/{member.path}"
        reason = _member_reason(member.path, ignores)
        if reason:
            result.skipped.append(Skipped(shown, reason))
        elif member.path.rpartition("/")[2] == ".gitignore":
            continue
        elif is_archive(member.path):
            result.skipped.append(Skipped(shown, "archive inside an archive (not opened)"))
        elif len(result.entries) >= limits.max_files:
            result.skipped.append(Skipped(shown, f"over the {limits.max_files:,}-file cap for one run"))
        else:
            result.entries.append(FoundFile(shown, root, True, member.read))


def _member_reason(path: str, ignores: GitIgnores) -> str | None:
    parts = path.split("/")
    for depth, name in enumerate(parts[:-1], start=1):
        reason = default_reason(name, True)
        if reason is None and ignores.ignored("/".join(parts[:depth]), True):
            reason = "ignored by .gitignore"
        if reason:
            return reason
    reason = default_reason(parts[-1], False)
    if reason is None and ignores.ignored(path, False):
        reason = "ignored by .gitignore"
    return reason
