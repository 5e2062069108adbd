"""PDF loader: pypdfium2 (fast, best text quality) with pypdf as the fallback.

Each page becomes a `[page N]` marker line followed by its text; a page without any text
gives `[page N: no text layer]`. Ligatures U+FB00–FB06 are expanded and control characters
(NUL included) dropped. A file that opens with the empty password is read; one that needs a
real password is rejected with that reason.

Invisible text (text render mode 3: drawn nowhere) is left out of a page, and the page says how much
(`[invisible text left out: N characters]`), since no reader sees it and it is a place to hide instructions.
On a page that also shows an image it is kept: that is how scans carry their OCR text layer.
"""

from __future__ import annotations

import io
import logging
import unicodedata

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_raw

from .document import Extracted
from .errors import FileRejected
from .text import clean

log = logging.getLogger(__name__)

DAMAGED = "damaged or incomplete PDF; re-export it (or save it as PDF again) and add the new file"
_LIGATURES = {cp: unicodedata.normalize("NFKC", chr(cp)) for cp in range(0xFB00, 0xFB07)}


def page_marker(page_no: int, has_text: bool) -> str:
    """The marker line that starts page `page_no` (1-based) in the context."""
    return f"[page {page_no}]" if has_text else f"[page {page_no}: no text layer]"


def extract(name: str, data: bytes, limits) -> Extracted:
    """Load one PDF: pypdfium2 first; pypdf when pdfium cannot parse the file."""
    try:
        pages = _pages_pdfium(data, limits)
    except FileRejected:
        raise
    except pdfium.PdfiumError as error:
        log.info("pdfium could not read %s (%s); trying pypdf", name, error)
        pages = _pages_pypdf(data, limits)
    return assemble(pages)


def assemble(pages: list[str]) -> Extracted:
    """Join page texts with markers; record where each page's text lies in the body."""
    parts, spans, offset = [], [], 0
    for page_no, raw_text in enumerate(pages, start=1):
        text = clean(raw_text.translate(_LIGATURES)).strip("\n")
        marker = page_marker(page_no, bool(text.strip())) + "\n"
        parts.append(marker)
        offset += len(marker)
        if text.strip():
            body = text + "\n"
            parts.append(body)
            spans.append((page_no, offset, offset + len(text)))
            offset += len(body)
        else:
            spans.append((page_no, offset, offset))
    return Extracted(kind="pdf", body="".join(parts), pages=len(pages), page_spans=tuple(spans))


def _pages_pdfium(data: bytes, limits) -> list[str]:
    try:
        document = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as error:
        if _pdfium_last_error() == pdfium_raw.FPDF_ERR_PASSWORD:
            raise FileRejected("needs a password") from error
        raise
    try:
        count = len(document)
        if count > limits.max_pdf_pages:
            raise FileRejected(f"has {count:,} pages, over the {limits.max_pdf_pages:,}-page cap")
        texts = []
        for index in range(count):
            page = document[index]
            textpage = page.get_textpage()
            texts.append(_visible_text(page, textpage))
            textpage.close()
            page.close()
        return texts
    finally:
        document.close()


def _visible_text(page, textpage) -> str:
    """The page's text without invisible characters (render mode 3), unless the page shows an image (OCR)."""
    invisible = image = False
    for obj in page.get_objects():
        if obj.type == pdfium_raw.FPDF_PAGEOBJ_IMAGE:
            image = True
        elif obj.type == pdfium_raw.FPDF_PAGEOBJ_TEXT and \
                pdfium_raw.FPDFTextObj_GetTextRenderMode(obj.raw) == pdfium_raw.FPDF_TEXTRENDERMODE_INVISIBLE:
            invisible = True
    if not invisible or image:
        return textpage.get_text_range()
    pieces, hidden, start, count = [], 0, None, textpage.count_chars()
    for i in range(count + 1):
        obj = pdfium_raw.FPDFText_GetTextObject(textpage.raw, i) if i < count else None
        gone = bool(obj) and pdfium_raw.FPDFTextObj_GetTextRenderMode(obj) == pdfium_raw.FPDF_TEXTRENDERMODE_INVISIBLE
        if i < count and not gone:
            start = i if start is None else start
            continue
        if start is not None:
            pieces.append(textpage.get_text_range(start, i - start))
            start = None
        hidden += gone
    text = "".join(pieces)
    return f"{text}\n[invisible text left out: {hidden:,} characters]" if hidden else text


def _pdfium_last_error() -> int:
    return pdfium_raw.FPDF_GetLastError()


def _pages_pypdf(data: bytes, limits) -> list[str]:
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise FileRejected("needs a password")
        count = len(reader.pages)
        if count > limits.max_pdf_pages:
            raise FileRejected(f"has {count:,} pages, over the {limits.max_pdf_pages:,}-page cap")
        return [page.extract_text() or "" for page in reader.pages]
    except FileRejected:
        raise
    except Exception as error:  # noqa: BLE001
        # pypdf runs only on files pdfium could not parse; its errors on them (PyPdfError, and internal ones such
        # as AttributeError, AssertionError, zlib.error found by bench/fuzz_loaders.py) are damaged input, not
        # defects here. The person is told what to do; the library's words go to the log.
        log.info("pypdf could not read it either: %s: %s", type(error).__name__, error)
        if isinstance(error, RecursionError) or "cycl" in str(error).lower():
            raise FileRejected(DAMAGED.replace("PDF;", "PDF (its parts refer to each other in a cyclic loop);", 1)) \
                from error
        raise FileRejected(DAMAGED) from error
