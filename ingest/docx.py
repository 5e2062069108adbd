"""DOCX loader (python-docx for the package, our own walk of the body XML).

Body paragraphs and tables come in document order, and so does what python-docx's `iter_inner_content`
and `Paragraph.text` leave out: content controls (`w:sdt`: tables of contents, cover pages, form fields),
tracked insertions (`w:ins`, `w:moveTo`; deletions are left out), smart tags, simple fields (their shown
result), customXml, text boxes (as `[text box]` lines after their paragraph; the VML fallback copy of the same
box is not read twice) and altChunk parts (embedded HTML or plain text). Nested tables are rendered inside
their cell as `[table: a | b ; c | d]`. A merged cell's text appears once (the cells it covers are left
empty). Each section's own headers and footers appear once, at the start and end of that section; a header
linked to the previous section is not repeated. Comments are appended at the end. Footnotes and endnotes are
not read.

Hidden text (`w:vanish` on a run) is left out, since no reader sees it, and the document ends with
`[hidden text left out: N characters]` so that nothing disappears silently. White text is read like any
other: shading or a dark page can make it visible, and the XML cannot tell.

Table rows are written as `| a | b |` lines between `[table]` and `[/table]`.
"""

from __future__ import annotations

import html.parser
import io
import zipfile

from .document import Extracted
from .errors import FileRejected
from .text import clean

W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
MC = "{http://schemas.openxmlformats.org/markup-compatibility/2006}"
R_ID = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}id"
_INLINE_CONTAINERS = {W + n for n in ("ins", "moveTo", "hyperlink", "smartTag", "fldSimple", "customXml", "dir",
                                      "bdo", "sdtContent")}
_BLOCK_CONTAINERS = {W + n for n in ("customXml", "sdtContent")}
_TEXT = {W + "t": None, W + "tab": "\t", W + "br": "\n", W + "cr": "\n", W + "noBreakHyphen": "-",
         W + "softHyphen": ""}
_OFF = {"0", "false", "off"}


class _Walk:
    """State of one document's walk: the part (for altChunk targets) and how much hidden text was left out."""

    def __init__(self, part):
        self.part = part
        self.hidden_chars = 0


def extract(name: str, data: bytes, limits) -> Extracted:
    """Load one .docx file."""
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        document = docx.Document(io.BytesIO(data))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError) as error:
        raise FileRejected(f"not a readable DOCX ({type(error).__name__}: {error})") from error
    walk = _Walk(document.part)
    lines: list[str] = []
    sections = list(document.sections)
    section_no = 0
    _emit_part(lines, sections, section_no, "header", walk)
    for kind, element in _flat_blocks(document.element.body):
        _emit_block(lines, kind, element, walk)
        if kind == "p" and _ends_section(element) and section_no + 1 < len(sections):
            _emit_part(lines, sections, section_no, "footer", walk)
            section_no += 1
            _emit_part(lines, sections, section_no, "header", walk)
    _emit_part(lines, sections, section_no, "footer", walk)
    _emit_comments(lines, document)
    if walk.hidden_chars:
        lines.append(f"[hidden text left out: {walk.hidden_chars:,} characters]")
    return Extracted(kind="docx", body=clean("\n".join(lines) + "\n" if lines else ""))


def _flat_blocks(container):
    """(kind, element) for each paragraph ('p'), table ('tbl') and altChunk ('altChunk') in document order,
    looking inside content controls, customXml and markup-compatibility choices."""
    for child in container.iterchildren():
        tag = child.tag
        if tag == W + "p":
            yield "p", child
        elif tag == W + "tbl":
            yield "tbl", child
        elif tag == W + "altChunk":
            yield "altChunk", child
        elif tag == W + "sdt":
            content = child.find(W + "sdtContent")
            if content is not None:
                yield from _flat_blocks(content)
        elif tag in _BLOCK_CONTAINERS or tag == W + "ins":
            yield from _flat_blocks(child)
        elif tag == MC + "AlternateContent":
            choice = child.find(MC + "Choice")
            if choice is not None:
                yield from _flat_blocks(choice)


def _ends_section(p) -> bool:
    p_pr = p.find(W + "pPr")
    return p_pr is not None and p_pr.find(W + "sectPr") is not None


def _emit_part(lines: list[str], sections, index: int, which: str, walk: _Walk) -> None:
    """Write section `index`'s headers (or footers) unless they are inherited from the previous one."""
    section = sections[index]
    variants = [("", getattr(section, which))]
    if section.different_first_page_header_footer:
        variants.append(("first page ", getattr(section, f"first_page_{which}")))
    variants.append(("even page ", getattr(section, f"even_page_{which}")))
    for label, part in variants:
        if part.is_linked_to_previous:
            continue
        body: list[str] = []
        own = _Walk(part.part)  # altChunks of a header belong to the header's part
        for kind, element in _flat_blocks(part._element):
            _emit_block(body, kind, element, own)
        walk.hidden_chars += own.hidden_chars
        text = "\n".join(body).strip()
        if text:
            lines.append(f"[{label}{which}, section {index + 1}]")
            lines.append(text)
            lines.append(f"[/{which}]")


def _emit_block(lines: list[str], kind: str, element, walk: _Walk) -> None:
    if kind == "tbl":
        lines.append("[table]")
        lines.extend("| " + " | ".join(row) + " |" for row in _table_rows(element, walk))
        lines.append("[/table]")
    elif kind == "altChunk":
        lines.extend(_alt_chunk(element, walk))
    else:
        text, boxes = _paragraph(element, walk)
        lines.append(text)
        for box in boxes:
            box_lines: list[str] = []
            for box_kind, box_element in _flat_blocks(box):
                _emit_block(box_lines, box_kind, box_element, walk)
            lines.extend(f"[text box] {line}" for line in box_lines if line.strip())


def _paragraph(p, walk: _Walk) -> tuple[str, list]:
    """The visible text of one paragraph, and the text boxes (`w:txbxContent`) anchored in it."""
    out, boxes = [], []
    _inline(p, out, boxes, walk)
    return "".join(out), boxes


def _inline(element, out: list[str], boxes: list, walk: _Walk) -> None:
    for child in element.iterchildren():
        tag = child.tag
        if tag == W + "r":
            if _hidden(child):
                walk.hidden_chars += sum(len(t.text or "") for t in child.iter(W + "t"))
                continue
            for piece in child.iterchildren():
                if piece.tag in _TEXT:
                    out.append(piece.text or "" if _TEXT[piece.tag] is None else _TEXT[piece.tag])
                elif piece.tag in (W + "drawing", W + "pict", MC + "AlternateContent"):
                    boxes.extend(_text_boxes(piece))
        elif tag == W + "sdt":
            content = child.find(W + "sdtContent")
            if content is not None:
                _inline(content, out, boxes, walk)
        elif tag in _INLINE_CONTAINERS:
            _inline(child, out, boxes, walk)
        elif tag == MC + "AlternateContent":
            choice = child.find(MC + "Choice")
            if choice is not None:
                _inline(choice, out, boxes, walk)


def _text_boxes(element) -> list:
    """`w:txbxContent` elements under a drawing, outside markup-compatibility fallbacks (the same box again)."""
    found = []
    for box in element.iter(W + "txbxContent"):
        parent, fallback = box.getparent(), False
        while parent is not None and parent is not element:
            if parent.tag == MC + "Fallback" or parent.tag == W + "txbxContent":
                fallback = True  # a VML copy, or a box inside a box (read with its outer box)
                break
            parent = parent.getparent()
        if not fallback and element.tag != MC + "Fallback":
            found.append(box)
    return found


def _hidden(run) -> bool:
    r_pr = run.find(W + "rPr")
    if r_pr is None:
        return False
    vanish = r_pr.find(W + "vanish")
    return vanish is not None and vanish.get(W + "val", "true").lower() not in _OFF


class _HtmlText(html.parser.HTMLParser):
    """Visible text of an HTML altChunk: tags dropped, scripts and styles left out, blocks on their own lines."""

    BLOCKS = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts, self.skip = [], 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style", "head", "title"):
            self.skip += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style", "head", "title"):
            self.skip = max(0, self.skip - 1)
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.skip:
            self.parts.append(data)


def _alt_chunk(element, walk: _Walk) -> list[str]:
    """The lines of an altChunk (a part imported whole into the document): HTML and plain text are read."""
    try:
        part = walk.part.related_parts[element.get(R_ID)]
    except (KeyError, AttributeError):
        return ["[embedded part missing]"]
    kind, blob = part.content_type, part.blob
    if kind in ("text/html", "application/xhtml+xml", "text/plain"):
        text = blob.decode("utf-8", errors="replace")
        if kind != "text/plain":
            parser = _HtmlText()
            parser.feed(text)
            parser.close()
            text = "".join(parser.parts)
        return [line.strip() for line in text.splitlines() if line.strip()]
    return [f"[embedded part of type {kind} not read]"]


def _table_rows(tbl, walk: _Walk) -> list[list[str]]:
    """Cell texts row by row; a merged cell's text is kept in its first position only."""
    from docx.table import Table

    seen: dict[int, object] = {}  # id → element; holding the element keeps its id unique
    rows = []
    for row in Table(tbl, None).rows:
        cells = []
        for cell in row.cells:
            key = id(cell._tc)
            if key in seen:
                cells.append("")
                continue
            seen[key] = cell._tc
            cells.append(_cell_text(cell._tc, walk))
        rows.append(cells)
    return rows


def _cell_text(tc, walk: _Walk) -> str:
    parts = []
    for kind, element in _flat_blocks(tc):
        if kind == "tbl":
            rows = " ; ".join(" | ".join(row) for row in _table_rows(element, walk))
            parts.append(f"[table: {rows}]")
        else:
            lines: list[str] = []
            _emit_block(lines, kind, element, walk)
            parts.extend(line.replace("\n", " ").replace("|", "\\|") for line in lines if line)
    return " ".join(parts)


def _emit_comments(lines: list[str], document) -> None:
    try:
        comments = list(document.comments)
    except (AttributeError, KeyError):
        return
    entries = [(c.author or "unknown", c.text.strip()) for c in comments if c.text.strip()]
    if entries:
        lines.append("[comments]")
        lines.extend(f"- {author}: {text}" for author, text in entries)
        lines.append("[/comments]")
