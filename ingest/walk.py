"""Turn the paths a user gave into a flat list of files to load.

Folders are walked with default ignores and `.gitignore` rules at every level (pruned
folders are reported once as skipped). Archives given directly are opened in memory
(`archive.py`); an archive found inside a folder is reported, not opened. Every entry gets
a display path relative to the dropped root, starting with the root's own name:
`myrepo/src/app.py`, `book.pdf`, `bundle.zip/docs/a.md`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from .archive import is_archive, read_archive
from .document import Skipped
from .errors import FileRejected, InputError, human_size
from .ignore import GitIgnores, TooManyRules, default_reason


@dataclass(frozen=True)
class Entry:
    """One file to load. `read()` returns its bytes; `root` is the display name of the dropped
    path it came from, and `in_tree` is True when that root is a folder or an archive."""

    source: str
    root: str
    in_tree: bool
    read: Callable[[], bytes]


@dataclass
class Walk:
    """The result of walking: entries to load and things left out."""

    entries: list[Entry]
    skipped: list[Skipped]


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


def _add_file(path: Path, source: str, root: str, in_tree: bool, limits, result: Walk) -> None:
    if len(result.entries) >= limits.max_files:
        result.skipped.append(Skipped(source, f"over the {limits.max_files:,}-file cap for one run"))
        return
    try:
        size = path.stat().st_size
    except OSError as error:
        result.skipped.append(Skipped(source, f"cannot be read ({error.strerror})"))
        return
    if size > limits.max_file_bytes:
        result.skipped.append(Skipped(source, f"over the {human_size(limits.max_file_bytes)} per-file cap"
                                              f" ({human_size(size)})"))
        return
    result.entries.append(Entry(source, root, in_tree, path.read_bytes))


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
            if child.name == ".gitignore" or not child.is_file():
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
    size = path.stat().st_size
    if size > limits.max_archive_total_bytes:
        result.skipped.append(Skipped(root, f"archive over the {human_size(limits.max_archive_total_bytes)}"
                                            f" cap ({human_size(size)})"))
        return
    try:
        members = read_archive(root, path.read_bytes(), limits, result.skipped)
    except FileRejected as error:
        result.skipped.append(Skipped(root, error.reason))
        return
    ignores = GitIgnores()
    for member in members:
        if member.path == ".gitignore" or member.path.endswith("/.gitignore"):
            try:
                ignores.add(member.path.rpartition("/")[0], member.data.decode("utf-8", errors="replace"))
            except TooManyRules as error:
                result.skipped.append(Skipped(f"{root}/{member.path}", str(error)))
    for member in sorted(members, key=lambda m: m.path):
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
            result.entries.append(Entry(shown, root, True, lambda data=member.data: data))


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
