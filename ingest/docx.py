"""DOCX loader (python-docx).

Body paragraphs and tables come in document order; nested tables are rendered inside
their cell as `[table: a | b ; c | d]`. A merged cell's text appears once (the cells it
covers are left empty). Each section's own headers and footers appear once, at the start
and end of that section; a header linked to the previous section is not repeated.
Comments are appended at the end. Footnotes and endnotes are not read.

Table rows are written as `| a | b |` lines between `[table]` and `[/table]`.
"""

from __future__ import annotations

import io
import zipfile

from .document import Extracted
from .errors import FileRejected
from .text import clean


def extract(name: str, data: bytes, limits) -> Extracted:
    """Load one .docx file."""
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        document = docx.Document(io.BytesIO(data))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError) as error:
        raise FileRejected(f"not a readable DOCX ({type(error).__name__}: {error})") from error
    lines: list[str] = []
    sections = list(document.sections)
    section_no = 0
    _emit_part(lines, sections, section_no, "header")
    for block in document.iter_inner_content():
        _emit_block(lines, block)
        if _ends_section(block) and section_no + 1 < len(sections):
            _emit_part(lines, sections, section_no, "footer")
            section_no += 1
            _emit_part(lines, sections, section_no, "header")
    _emit_part(lines, sections, section_no, "footer")
    _emit_comments(lines, document)
    return Extracted(kind="docx", body=clean("\n".join(lines) + "\n" if lines else ""))


def _ends_section(block) -> bool:
    p_pr = getattr(getattr(block, "_p", None), "pPr", None)
    return p_pr is not None and p_pr.sectPr is not None


def _emit_part(lines: list[str], sections, index: int, which: str) -> None:
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
        for block in part.iter_inner_content():
            _emit_block(body, block)
        text = "\n".join(body).strip()
        if text:
            lines.append(f"[{label}{which}, section {index + 1}]")
            lines.append(text)
            lines.append(f"[/{which}]")


def _emit_block(lines: list[str], block) -> None:
    from docx.table import Table

    if isinstance(block, Table):
        lines.append("[table]")
        lines.extend("| " + " | ".join(row) + " |" for row in _table_rows(block))
        lines.append("[/table]")
    else:
        lines.append(block.text)


def _table_rows(table) -> list[list[str]]:
    """Cell texts row by row; a merged cell's text is kept in its first position only."""
    seen: dict[int, object] = {}  # id → element; holding the element keeps its id unique
    rows = []
    for row in table.rows:
        cells = []
        for cell in row.cells:
            key = id(cell._tc)
            if key in seen:
                cells.append("")
                continue
            seen[key] = cell._tc
            cells.append(_cell_text(cell))
        rows.append(cells)
    return rows


def _cell_text(cell) -> str:
    from docx.table import Table

    parts = []
    for block in cell.iter_inner_content():
        if isinstance(block, Table):
            rows = " ; ".join(" | ".join(row) for row in _table_rows(block))
            parts.append(f"[table: {rows}]")
        elif block.text:
            parts.append(block.text.replace("\n", " ").replace("|", "\\|"))
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
