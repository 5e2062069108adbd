"""File names: the one place that reads a file's extension and says which archive format a name is.

Every loader, the walker and the parser worker ask `extension()` instead of splitting names themselves.
"""

from __future__ import annotations

# compound suffixes first: "a.tar.gz" is a tar archive, not a gzip file
ARCHIVE_SUFFIXES = ((".tar.gz", "tar"), (".tgz", "tar"), (".tar.bz2", "tar"), (".tbz2", "tar"),
                    (".tar.xz", "tar"), (".txz", "tar"), (".tar", "tar"), (".zip", "zip"))


def base_name(name: str) -> str:
    """The last '/'-separated component of a display path."""
    return name.rpartition("/")[2]


def extension(name: str) -> str:
    """The lower-case extension of the last path component, without the dot ('' when it has none)."""
    last = base_name(name)
    return last.rpartition(".")[2].lower() if "." in last else ""


def archive_format(name: str) -> str | None:
    """'zip' or 'tar' for the archive names this package opens, else None."""
    lower = base_name(name).lower()
    return next((fmt for suffix, fmt in ARCHIVE_SUFFIXES if lower.endswith(suffix)), None)
