"""The citation form: what the system prompt asks the model to write, and parsing it (also mid-stream).

The form (the system prompt asks for it; `CITATION_FORMAT` is that instruction)::

    [3, p. 47: "exact words"]          document 3 (the index in <document index="3">), PDF page 47
    [3, pp. 47-48: "exact words"]      a page range
    [3, line 120: "exact words"]       line 120 of a text or code file (`lines 120-125` for a range)
    [src/app.py:120: "exact words"]    the document named by its source, line 120 (`:120-125`)
    [report.pdf, p. 4: "exact words"]  the source with a page
    [3: "exact words"]                 no page or line: the whole document

A citation is `[`, a document (its index, optionally written `doc 3` or `#3`, or its source, or a unique
end of its source such as its file name), an optional locator (`, p. N`, `, pp. N-M`, `, page N`,
`, line N`, `, lines N-M`, or `:N` / `:N-M` right after a source), then `: "quote"]`. Curly quotes work
too. The quote ends at the first `"]`, stays on one line, and may hold other double quotes; an opening
that never closes is dropped without swallowing the next citation. A bare `[3, p. 47]` or
`[src/app.py:120]` (a locator, no quote) is a citation with nothing to check.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

VERIFIED, NEAR, NOT_FOUND, UNCHECKED = "verified", "near", "not found", "no quote"
NEAR_SCORE = 0.8
MAX_QUOTE = 1000
ELLIPSIS_GAP = 300

CITATION_FORMAT = (
    'Back each claim with a short exact quote from the documents, written right after the claim as '
    '[N, p. P: "exact words"] for page P of a PDF, [N, line L: "exact words"] for a line of a text or '
    'code file, or [N: "exact words"] otherwise, where N is the document\'s index. Copy the words exactly, '
    'at most about 25 of them, on one line.'
)

_REF_CHARS = r"[^\[\]\"“”\n]"
_SPACE = r"[ \t]{0,20}"  # never a newline: a citation lies on one line
_OPENING = rf"\[{_REF_CHARS}{{1,200}}?:{_SPACE}[\"“]"
CITATION = re.compile(
    rf"\[{_SPACE}(?P<ref>{_REF_CHARS}{{1,200}}?){_SPACE}"
    rf"(?::{_SPACE}[\"“](?P<quote>(?:(?![\"“”]{_SPACE}\])(?!{_OPENING})[^\n]){{1,{MAX_QUOTE}}})[\"”])?{_SPACE}\]")
LONGEST = 1 + 20 + 200 + 20 + 1 + 20 + 1 + MAX_QUOTE + 1 + 20 + 1  # characters a citation can span
_LOCATOR = re.compile(r"(?:,\s*|\s+)(?P<kind>pp?|pages?|ll?|lines?)\.?\s*(?P<a>\d{1,7})"
                      r"(?:\s*[-–—]\s*(?P<b>\d{1,7}))?$", re.IGNORECASE)
_COLON_LINES = re.compile(r":(?P<a>\d{1,7})(?:\s*[-–—]\s*(?P<b>\d{1,7}))?$")
_INDEX = re.compile(r"(?:doc(?:ument)?\.?\s*|#)?(?P<n>\d{1,7})", re.IGNORECASE)
_LINE_PREFIX = re.compile(r"(?m)^[ \t]*\d+\|[ ]?")
_ELLIPSIS = re.compile(r"\s*(?:\.\.\.|…|\[\.\.\.\]|\[…\])\s*")
_FOLD = str.maketrans({"“": '"', "”": '"', "„": '"', "‘": "'", "’": "'", "–": "-", "—": "-",
                       "\n": " ", "\t": " ", "\u00a0": " "})


@dataclass(frozen=True)
class Citation:
    """One citation as written in an answer; `start`/`end` are its offsets in the answer text.

    The document is `index` (as written) or `source`; `pages` or `lines` is an inclusive (first, last)
    range or None; `quote` is "" for a bare reference.
    """

    index: int | None
    source: str | None
    pages: tuple[int, int] | None
    lines: tuple[int, int] | None
    quote: str
    start: int = 0
    end: int = 0

    @property
    def where(self) -> str:
        """The reference without its quote: `3, p. 47` or `src/app.py:120`."""
        return format_citation(self, quote=False)[1:-1]


def _range(a: str, b: str | None) -> tuple[int, int]:
    first, last = int(a), int(b) if b else int(a)
    return (first, last) if last >= first else (last, first)


def _reference(ref: str, quoted: bool) -> tuple | None:
    """(index, source, pages, lines) from the text before the quote, or None if it is no citation."""
    ref = ref.strip()
    pages = lines = None
    if (m := _LOCATOR.search(ref)) and m.start() > 0:
        span = _range(m["a"], m["b"])
        pages, lines = (span, None) if m["kind"].lower().startswith("p") else (None, span)
        ref = ref[:m.start()].strip()
    elif (m := _COLON_LINES.search(ref)) and m.start() > 0:
        lines, ref = _range(m["a"], m["b"]), ref[:m.start()].strip()
    ref = ref.rstrip(",").strip()
    if not ref:
        return None
    if m := _INDEX.fullmatch(ref):
        index, source = int(m["n"]), None
    else:
        index, source = None, ref
    if not quoted and pages is None and lines is None:
        return None  # `[1]`, `x[0]`, `[a link]`: not a citation without a quote or a locator
    return index, source, pages, lines


def parse(text: str) -> list[Citation]:
    """Every citation in `text`, in order. Never raises; text that is not a citation is left alone."""
    found = []
    for m in CITATION.finditer(text):
        quote = m["quote"]
        ref = _reference(m["ref"], quote is not None)
        if ref is not None:
            found.append(Citation(*ref, quote=quote or "", start=m.start(), end=m.end()))
    return found


def format_citation(citation: Citation, quote: bool = True) -> str:
    """The canonical written form of `citation` (`parse` reads it back)."""
    by_index = citation.index is not None
    out = str(citation.index) if by_index else citation.source
    if citation.pages:
        a, b = citation.pages
        out += f", p. {a}" if a == b else f", pp. {a}-{b}"
    elif citation.lines:
        a, b = citation.lines
        span = str(a) if a == b else f"{a}-{b}"
        out += (f", line {span}" if a == b else f", lines {span}") if by_index else f":{span}"
    if quote and citation.quote:
        out += f': "{citation.quote}"'
    return f"[{out}]"


class CitationStream:
    """Citations found while an answer streams: `feed(piece)` returns the ones completed by that piece.

    A citation is handed out once no earlier `[` on the answer's last line could still open a longer
    one around it, so the citations fed out, followed by `finish()`, equal `parse(answer)`. Only the text
    after the last settled citation is scanned again.
    """

    def __init__(self):
        self.text = ""
        self.citations: list[Citation] = []
        self._from = 0

    def feed(self, piece: str) -> list[Citation]:
        self.text += piece
        segment = self.text[self._from:]
        matches = list(CITATION.finditer(segment))
        open_from = max(segment.rfind("\n") + 1, len(segment) - LONGEST)
        covered = [(m.start(), m.end()) for m in matches]
        pending = next((i for i in _brackets(segment, open_from) if not any(s <= i < e for s, e in covered)),
                       len(segment) + 1)
        settled = [m for m in matches if m.start() < pending]
        new = []
        for m in settled:
            quote = m["quote"]
            ref = _reference(m["ref"], quote is not None)
            if ref is not None:
                new.append(Citation(*ref, quote=quote or "", start=self._from + m.start(),
                                    end=self._from + m.end()))
        if settled:
            self._from += settled[-1].end()
        self.citations += new
        return new

    def finish(self) -> list[Citation]:
        """The citations the answer's end settles (call once the stream is over)."""
        new = [replace_offsets(c, self._from) for c in parse(self.text[self._from:])]
        self._from = len(self.text)
        self.citations += new
        return new


def _brackets(text: str, start: int):
    at = text.find("[", start)
    while at >= 0:
        yield at
        at = text.find("[", at + 1)


def replace_offsets(citation: Citation, shift: int) -> Citation:
    return Citation(citation.index, citation.source, citation.pages, citation.lines, citation.quote,
                    citation.start + shift, citation.end + shift)
