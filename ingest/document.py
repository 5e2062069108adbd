"""The document model: what one run produces, independent of any file format."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Extracted:
    """What a format loader returns: the body text and, for paged formats, where each page lies.

    `page_spans` holds (page_no, start, end) offsets into `body`; `pages` is the page count.
    """

    kind: str
    body: str
    pages: int | None = None
    page_spans: tuple[tuple[int, int, int], ...] = ()


@dataclass(frozen=True)
class Document:
    """One file's part of the context.

    `text` is the exact slice of `Corpus.text` for this document, wrapper included, and
    `token_ids` its exact tokens. `page_spans` are (page_no, start, end) offsets into `text`
    covering each page's body (PDFs only). `first_line` is the 1-based line of `text` where
    the file's first line sits (the line after the opening tag); with line numbers on, line k
    of the file is prefixed `k|`. `is_tree` marks the directory listing put at the top of a
    codebase; its `source` is the folder name with a trailing slash.
    """

    index: int
    source: str
    kind: str  # "pdf", "docx", "text" or "code"
    pages: int | None
    tokens: int
    chars: int
    text: str
    token_ids: object = field(repr=False, compare=False)  # numpy int32 array
    page_spans: tuple[tuple[int, int, int], ...] = ()
    line_numbers: bool = False
    first_line: int = 2
    is_tree: bool = False
    root: str = ""

    def to_json(self) -> dict:
        """The per-document record of the `--json` schema."""
        return {"source": self.source, "kind": self.kind, "pages": self.pages,
                "tokens": self.tokens, "chars": self.chars}


@dataclass(frozen=True)
class Skipped:
    """A file (or pruned folder) that is not in the context, with a human reason.

    `defect` is True when the cause was a bug in this package rather than bad input.
    """

    source: str
    reason: str
    defect: bool = False

    def to_json(self) -> dict:
        return {"source": self.source, "reason": self.reason}


@dataclass(frozen=True)
class Progress:
    """A progress report passed to the `progress` callback of `build_corpus`."""

    files_done: int
    files_total: int
    tokens: int
    current: str
