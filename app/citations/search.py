"""Finding a quote in a document's folded text, in time that grows linearly with the document.

Normalised: the quote is cut at its ellipses into folded fragments (`_fragments`), found in order by plain
substring search on a copy of the text with each whitespace run squeezed to one space (`Squeezed`,
`_find_normalised`), never by a pattern built from the quote. Fuzzy: difflib on a few short windows placed where
the quote's rarest words occur (`_fuzzy`). `check.Verifier` decides where to look and what a match means.
"""

from __future__ import annotations

import difflib
import re

import numpy as np

from app.citations.form import ELLIPSIS_GAP, MAX_QUOTE, _ELLIPSIS, _FOLD


MAX_FRAGMENTS = 16  # a quote cut by more ellipses than this is not matched as normalised (fuzzy still runs)


class Squeezed:
    """A folded text with every run of whitespace as one space, and where each of its characters came from.

    `text[i]` is `folded[origin[i]]` (a run's space maps to the run's first character), so a match found by
    plain substring search here maps back to the view's offsets.
    """

    def __init__(self, folded: str):
        codes = np.frombuffer(folded.encode("utf-32-le", "surrogatepass"), dtype="<u4")  # [N]
        space = np.isin(codes, _WHITESPACE)
        keep = ~(space & np.concatenate(([False], space[:-1])))[:len(codes)]  # a run's first character stays
        self.origin = np.flatnonzero(keep).astype(np.int64)  # [len(text)]
        self.text = np.where(space, np.uint32(32), codes)[keep].astype("<u4").tobytes().decode(
            "utf-32-le", "surrogatepass")

    def index(self, offset: int) -> int:
        """The squeezed offset of view offset `offset` (inside a whitespace run: the character after it)."""
        return int(np.searchsorted(self.origin, offset, side="left"))

    def view_span(self, start: int, end: int) -> tuple[int, int]:
        return int(self.origin[start]), int(self.origin[end - 1]) + 1


_WHITESPACE = np.array([ord(c) for c in map(chr, range(0x3001)) if c.isspace()], dtype="<u4")


def _fold_fragment(text: str) -> str:
    """A quote fragment folded as `DocumentView.folded` folds the document, whitespace runs as one space."""
    lower = text.lower()
    if len(lower) != len(text):
        lower = "".join(c if len(c.lower()) != 1 else c.lower() for c in text)
    return " ".join(lower.translate(_FOLD).split())


def _fragments(quote: str) -> list[str] | None:
    """The quote's pieces between ellipses, folded; None if there is nothing to search for."""
    parts = [f for f in (_fold_fragment(p) for p in _ELLIPSIS.split(quote)) if f]
    return parts if 0 < len(parts) <= MAX_FRAGMENTS else None


def _find_normalised(squeezed: Squeezed, fragments: list[str], lo: int, hi: int) -> tuple[int, int] | None:
    r"""The leftmost match in squeezed.text[lo:hi] of the fragments in order, each next one starting at most
    ELLIPSIS_GAP characters after the end of the one before (whitespace runs count as one): (start, end).

    It finds what a lazy regex `f1[\s\S]{0,GAP}?f2...` would, by substring search alone. `first(k, p)` is
    the first start at or after p from which fragments k.. all match; it only ever moves forward, and a
    start that fails jumps to the last place that could reach the next fragment's first feasible start,
    so each fragment's search passes over the text once.
    """
    text, last = squeezed.text, len(fragments) - 1
    memo: list[tuple[int, int | None]] = [(-1, None)] * len(fragments)  # (asked from, answer) per fragment

    def first(k: int, p: int) -> int | None:
        asked, answer = memo[k]
        if 0 <= asked <= p and (answer is None or p <= answer):
            return answer  # nothing between `asked` and `answer` was feasible
        asked, fragment, found = p, fragments[k], None
        while (s := text.find(fragment, p, hi)) >= 0:
            if k == last:
                found = s
                break
            end = s + len(fragment)
            t = first(k + 1, end)
            if t is None:
                break  # no later start of fragment k can succeed either
            if t <= end + ELLIPSIS_GAP:
                found = s
                break
            p = t - ELLIPSIS_GAP - len(fragment)  # > s: no start before this one reaches t
        memo[k] = (asked, found)
        return found

    start = first(0, lo)
    if start is None:
        return None
    end = start
    for k, fragment in enumerate(fragments):  # walk the chain again, each fragment at its first feasible start
        at = start if k == 0 else first(k, end)
        end = at + len(fragment)
    return start, end


def _fold(quote: str) -> str:
    return " ".join(_ELLIPSIS.sub(" ", quote).lower().translate(_FOLD).split())


def _fuzzy(folded: str, quote: str, lo: int, hi: int) -> tuple[float, int, int]:
    """Best difflib match of the folded `quote` in folded[lo:hi]: (score, start, end).

    A short region is one window. In a long one, windows are placed where the quote's rarest words
    occur, so the work does not grow with the document.
    """
    quote = quote[:MAX_QUOTE]
    if not quote or hi <= lo:
        return 0.0, -1, -1
    slack = len(quote) // 3 + 8
    if hi - lo <= 3 * len(quote) + 200:
        windows = [(lo, hi)]
    else:
        words = sorted({w for w in re.findall(r"\w{4,}", quote)} or set(quote.split()), key=len, reverse=True)[:12]
        counted = sorted((c, w) for w in words if (c := folded.count(w, lo, hi)))
        starts = set()
        for _, word in counted[:4]:
            offset, at = quote.find(word), lo
            for _ in range(16):
                at = folded.find(word, at, hi)
                if at < 0:
                    break
                starts.add(max(lo, at - offset) // max(slack, 1))
                at += len(word)
        windows = [(max(lo, b * slack - slack), min(hi, b * slack + len(quote) + 2 * slack))
                   for b in sorted(starts)[:48]]
    best = (0.0, -1, -1)
    for w_lo, w_hi in windows:
        score, start, end = _align(quote, folded, w_lo, w_hi)
        if score > best[0]:
            best = (score, start, end)
    return best


def _align(quote: str, folded: str, lo: int, hi: int) -> tuple[float, int, int]:
    """Where in folded[lo:hi] the quote best lines up, and difflib's ratio there."""
    window = folded[lo:hi]
    matcher = difflib.SequenceMatcher(None, quote, window, autojunk=False)
    blocks = [b for b in matcher.get_matching_blocks() if b.size >= 3] or \
        [b for b in matcher.get_matching_blocks() if b.size]
    if not blocks:
        return 0.0, -1, -1
    start = max(0, blocks[0].b - blocks[0].a)
    end = min(len(window), blocks[-1].b + blocks[-1].size + (len(quote) - blocks[-1].a - blocks[-1].size))
    start = blocks[0].b if blocks[0].b - start > 8 else start
    piece = " ".join(window[start:end].split())
    score = difflib.SequenceMatcher(None, quote, piece, autojunk=False).ratio()
    return score, lo + start, lo + end
