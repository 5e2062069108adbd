"""Checking each citation's quote against the corpus (the form itself is in app/citations/form.py).

Checking a quote searches only the cited document, place by place:

1. the cited page(s) or lines: exact, then normalised (case, runs of whitespace, curly quotes and
   dashes, `...` as a gap of up to 300 characters, line-number prefixes in the quote): **verified**;
   the normalised match is plain substring search on a folded copy of the text, fragment by fragment,
   never a pattern built from the quote, so its time grows linearly with the document (`Squeezed`);
2. the neighbouring page on each side (two lines each side for line citations), so a quote that runs
   over a page break verifies; a match that lies wholly on a neighbour is **near** ("on p. 48");
3. the whole document, exact or normalised: **near**, with where it really is;
4. fuzzy (difflib on windows found from the quote's rarest words, so only a few short windows are
   compared, however long the document): **near** when the score is at least `NEAR_SCORE`;
5. else **not found** (with the best score seen).
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

from app.citations.form import (  # noqa: F401  (re-exported: callers import the form from here too)
    VERIFIED, NEAR, NOT_FOUND, UNCHECKED, NEAR_SCORE, CITATION_FORMAT, Citation, CitationStream, format_citation,
    parse, _LINE_PREFIX, _FOLD,
)
from app.citations.search import Squeezed, _find_normalised, _fold, _fragments, _fuzzy

# -- verification --

@dataclass(frozen=True)
class Check:
    """What checking one citation found.

    `status`: verified, near, not found, or "no quote" (a bare reference). `how`: exact, normalised,
    fuzzy, or "" (nothing). `score`: 1.0 for exact and normalised, difflib's ratio for fuzzy. `document`
    is the corpus index of the cited document (None if none matches). `start`/`end` is the matched span
    in that document's `text` (-1 when nothing matched); `pages`/`lines` is where it lies.
    """

    citation: Citation
    status: str
    how: str = ""
    score: float = 0.0
    document: int | None = None
    source: str = ""
    start: int = -1
    end: int = -1
    pages: tuple[int, int] | None = None
    lines: tuple[int, int] | None = None
    note: str = ""


class DocumentView:
    """A document's own text for searching: no wrapper tag, no `[page N]` markers, no line-number prefixes.

    `text` is the document's segments (pages, or numbered lines, or the whole body) joined by newlines;
    `to_document` maps an offset back into `Document.text`.
    """

    def __init__(self, document):
        text = document.text
        body_start = text.index("\n") + 1
        body_end = max(body_start, len(text) - len("</document>\n"))
        self.paged = bool(document.page_spans)
        if self.paged:
            segments = [(s, e) for _, s, e in document.page_spans]
            self.page_numbers = [p for p, _, _ in document.page_spans]
        elif document.line_numbers:
            segments, at = [], body_start
            for m in _LINE_PREFIX.finditer(text, body_start, body_end):
                end = text.find("\n", m.end(), body_end)
                end = body_end if end < 0 else end
                segments.append((m.end(), end))
                at = end
            segments = segments or [(body_start, at)]
            self.page_numbers = []
        else:
            body_end -= text[body_start:body_end].endswith("\n")
            segments, self.page_numbers = [(body_start, body_end)], []
        self.text = "\n".join(text[s:e] for s, e in segments)
        self.starts, self.origins, at = [], [], 0
        for s, e in segments:
            self.starts.append(at)
            self.origins.append(s)
            at += e - s + 1
        lower = self.text.lower()
        self.folded = (lower if len(lower) == len(self.text) else
                       "".join(c if len(c.lower()) != 1 else c.lower() for c in self.text)).translate(_FOLD)
        self._newlines: list[int] | None = None
        self._squeezed: Squeezed | None = None

    @property
    def squeezed(self) -> "Squeezed":
        """The folded text with each whitespace run as one space (built the first time a quote needs it)."""
        if self._squeezed is None:
            self._squeezed = Squeezed(self.folded)
        return self._squeezed

    def to_document(self, offset: int) -> int:
        i = max(bisect.bisect_right(self.starts, offset) - 1, 0)
        return self.origins[i] + offset - self.starts[i]

    def from_document(self, offset: int) -> int:
        i = max(bisect.bisect_right(self.origins, offset) - 1, 0)
        return self.starts[i] + max(offset - self.origins[i], 0)

    def page_span(self, first: int, last: int) -> tuple[int, int] | None:
        """View offsets covering pages first..last (clamped to the document); None if none exist."""
        numbers = self.page_numbers
        lo, hi = bisect.bisect_left(numbers, first), bisect.bisect_right(numbers, last) - 1
        if lo > hi:
            return None
        end = self.starts[hi + 1] - 1 if hi + 1 < len(self.starts) else len(self.text)
        return self.starts[lo], end

    def pages_at(self, start: int, end: int) -> tuple[int, int]:
        first = bisect.bisect_right(self.starts, start) - 1
        last = bisect.bisect_right(self.starts, max(start, end - 1)) - 1
        return self.page_numbers[max(first, 0)], self.page_numbers[max(last, 0)]

    def _line_starts(self) -> list[int]:
        if self._newlines is None:
            self._newlines = [0] + [m.end() for m in re.finditer("\n", self.text)]
        return self._newlines

    def line_span(self, first: int, last: int) -> tuple[int, int] | None:
        starts = self._line_starts()
        first, last = max(first, 1), min(last, len(starts))
        if first > last:
            return None
        return starts[first - 1], (starts[last] - 1 if last < len(starts) else len(self.text))

    def lines_at(self, start: int, end: int) -> tuple[int, int]:
        starts = self._line_starts()
        return bisect.bisect_right(starts, start), bisect.bisect_right(starts, max(start, end - 1))


class Verifier:
    """Checks citations against one corpus (`ingest.Corpus` or a list of `Document`s).

    Each document's search view is built the first time it is cited and kept.
    """

    def __init__(self, corpus):
        self.corpus = corpus
        self.documents = list(getattr(corpus, "documents", corpus))
        self._views: dict[int, DocumentView] = {}

    def view(self, document) -> DocumentView:
        if document.index not in self._views:
            self._views[document.index] = DocumentView(document)
        return self._views[document.index]

    def document(self, citation: Citation):
        """The cited document: by index, by exact source, then by a unique end of the source."""
        if citation.index is not None:
            return next((d for d in self.documents if d.index == citation.index), None)
        name = citation.source.strip().strip("`'").lstrip("./")
        exact = [d for d in self.documents if d.source == name]
        if exact:
            return exact[0]
        ends = [d for d in self.documents if d.source.endswith("/" + name) or d.source.endswith(name)]
        return ends[0] if len(ends) == 1 else None

    def check_all(self, citations) -> list[Check]:
        return [self.check(c) for c in citations]

    def check(self, citation: Citation) -> Check:
        """Verify one citation's quote against the cited document, page or lines."""
        document = self.document(citation)
        if document is None:
            return Check(citation, NOT_FOUND, note=f"no document {citation.where.split(',')[0]} in the corpus")
        base = dict(document=document.index, source=document.source)
        view = self.view(document)
        cited, nearby = self._regions(view, citation)
        if not citation.quote.strip():
            return Check(citation, UNCHECKED, **base)
        quote = _LINE_PREFIX.sub("", citation.quote) if document.line_numbers else citation.quote
        quote = quote.strip()
        fragments = _fragments(quote)
        whole = (0, len(view.text))
        for region, overlap_needed in ((cited, False), (nearby, True), (whole, True)):
            if region is None:
                continue
            found = self._literal(view, quote, fragments, region)
            if found:
                (start, end), how = found
                if not overlap_needed or _overlaps((start, end), cited or whole):
                    return self._found(citation, view, VERIFIED, how, 1.0, start, end, base)
                return self._found(citation, view, NEAR, how, 1.0, start, end, base, elsewhere=True)
        best = (0.0, -1, -1)
        for region in (nearby or whole, whole):
            score, start, end = _fuzzy(view.folded, _fold(quote), *region)
            if score > best[0]:
                best = (score, start, end)
            if best[0] >= NEAR_SCORE:
                break
        score, start, end = best
        if score >= NEAR_SCORE:
            return self._found(citation, view, NEAR, "fuzzy", score, start, end, base,
                               elsewhere=not _overlaps((start, end), cited or whole))
        return Check(citation, NOT_FOUND, score=round(score, 3),
                     note=f"nothing close in {self._describe(document, citation)} (best {score:.0%})", **base)

    @staticmethod
    def _regions(view: DocumentView, citation: Citation):
        if citation.pages and view.paged:
            a, b = citation.pages
            return view.page_span(a, b), view.page_span(a - 1, b + 1)
        if citation.lines and not view.paged:
            a, b = citation.lines
            return view.line_span(a, b), view.line_span(a - 2, b + 2)
        return None, None

    @staticmethod
    def _literal(view: DocumentView, quote: str, fragments, region):
        lo, hi = region
        at = view.text.find(quote, lo, hi) if quote else -1
        if at >= 0:
            return (at, at + len(quote)), "exact"
        if not fragments:
            return None
        squeezed = view.squeezed
        found = _find_normalised(squeezed, fragments, squeezed.index(lo), squeezed.index(hi))
        if found is None:
            return None
        return squeezed.view_span(*found), "normalised"

    def _found(self, citation, view, status, how, score, start, end, base, elsewhere=False) -> Check:
        pages = view.pages_at(start, end) if view.paged else None
        lines = None if view.paged else view.lines_at(start, end)
        note = ""
        if elsewhere:
            note = ("found on " + _pages_text(pages)) if pages else ("found at " + _lines_text(lines))
        elif how == "fuzzy":
            note = f"close but not exact ({score:.0%})"
        doc_start = view.to_document(start)
        doc_end = view.to_document(end - 1) + 1 if end > start else doc_start
        return Check(citation, status, how, round(score, 3), start=doc_start, end=doc_end,
                     pages=pages, lines=lines, note=note, **base)

    @staticmethod
    def _describe(document, citation: Citation) -> str:
        if citation.pages and document.page_spans:
            return f"{document.source} ({_pages_text(citation.pages)} and its neighbours, then the whole file)"
        if citation.lines:
            return f"{document.source} ({_lines_text(citation.lines)}, then the whole file)"
        return document.source


def _overlaps(span, region) -> bool:
    return span[0] < region[1] and span[1] > region[0] or span[0] == span[1] == region[0]


def _pages_text(pages) -> str:
    a, b = pages
    return f"p. {a}" if a == b else f"pp. {a}-{b}"


def _lines_text(lines) -> str:
    a, b = lines
    return f"line {a}" if a == b else f"lines {a}-{b}"


@dataclass(frozen=True)
class Passage:
    """What to show for one citation: the page(s) or lines it points at, with the quote's place marked.

    `highlights` are (start, end) offsets into `text`. `first_line` numbers the first line shown (text and
    code); it is None for PDF pages, whose text starts each page with a `[page N]` line.
    """

    title: str
    text: str
    highlights: tuple[tuple[int, int], ...] = ()
    first_line: int | None = None


def passage(verifier: Verifier, check: Check, context_lines: int = 6) -> Passage | None:
    """The cited page(s) (PDFs) or lines with `context_lines` around them, the matched quote highlighted."""
    document = next((d for d in verifier.documents if d.index == check.document), None)
    if document is None:
        return None
    view = verifier.view(document)
    span = (view.from_document(check.start), view.from_document(check.end - 1) + 1) if check.end > check.start \
        else None
    if view.paged:
        first, last = check.pages or check.citation.pages or (view.page_numbers[0],) * 2
        first, last = max(first, view.page_numbers[0]), min(last, view.page_numbers[-1])
        if first > last:
            first = last = view.page_numbers[-1]
        parts, highlights, at = [], [], 0
        for number in range(first, last + 1):
            lo, hi = view.page_span(number, number) or (0, 0)
            head = f"[page {number}]\n"
            if span and span[0] < hi and span[1] > lo:
                s, e = max(span[0], lo), min(span[1], hi)
                highlights.append((at + len(head) + s - lo, at + len(head) + e - lo))
            parts.append(head + view.text[lo:hi] + "\n")
            at += len(parts[-1])
        return Passage(f"{document.source} · {_pages_text((first, last))}", "".join(parts).rstrip("\n"),
                       tuple(highlights))
    total = len(view._line_starts())
    first, last = check.lines or check.citation.lines or (1, min(total, 2 * context_lines))
    first, last = max(1, min(first, total)), max(1, min(last, total))
    show_first, show_last = max(1, first - context_lines), min(total, last + context_lines)
    lo, hi = view.line_span(show_first, show_last)
    highlights = ((max(span[0], lo) - lo, min(span[1], hi) - lo),) if span and span[0] < hi and span[1] > lo else ()
    return Passage(f"{document.source} · {_lines_text((first, last))}", view.text[lo:hi], highlights, show_first)
