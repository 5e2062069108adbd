"""Errors meant for the user, kept apart from internal defects.

`FileRejected` means one input file cannot go into the context (bad input: it needs a
password, it is binary, it is too big, ...). The corpus builder turns it into a `Skipped`
entry and carries on. `InputError` means the request itself is unusable (a path that does
not exist, nothing to ingest); the caller shows it and stops. Any other exception escaping
a loader is a defect in this package: the builder still records the file as skipped (one
file never stops a run) but marks it `defect=True` and logs the traceback.
"""

from __future__ import annotations


class IngestError(Exception):
    """Base class of every error that is meant to be shown to the user."""


class FileRejected(IngestError):
    """One file cannot be ingested; `reason` says why in plain words."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class InputError(IngestError):
    """The paths given cannot be ingested at all (missing path, unsupported argument)."""


def human_size(n: float) -> str:
    """Format a byte count the way people read it: 512 B, 20 MB, 2.1 GB (decimal units). The one formatter of
    sizes: the ingest caps, and the app's downloads and disk checks, use it too."""
    if n < 1000:
        return f"{n:,.0f} B"
    value = float(n)
    for unit in ("KB", "MB", "GB", "TB"):
        value /= 1000
        if value < 1000 or unit == "TB":
            break
    text = f"{value:.1f}" if value < 10 else f"{value:.0f}"
    return f"{text.removesuffix('.0')} {unit}"
