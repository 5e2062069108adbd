"""One small interface over the format loaders.

Every loader module exposes `extract(name, data, limits) -> Extracted` and raises
`FileRejected` for input it cannot use. `extract` here picks the loader by extension.
"""

from __future__ import annotations

from . import docx, pdf, text
from .document import Extracted
from .names import extension

LOADERS = {"pdf": pdf.extract, "docx": docx.extract}


def extract(name: str, data: bytes, limits) -> Extracted:
    """Load one file's bytes with the loader for its extension (text/code by default)."""
    return LOADERS.get(extension(name), text.extract)(name, data, limits)
