"""Builders of real PDF and DOCX files for the ingest tests (pypdf writes the PDFs)."""

from __future__ import annotations

from pathlib import Path

from pypdf import PdfWriter
from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject


def _escape(line: str) -> str:
    return line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def make_pdf(path: Path, pages: list[str | None], user_password: str | None = None,
             owner_password: str = "owner") -> Path:
    """A real PDF with one page per item: text lines in Helvetica, or (None) a page that
    only draws a filled rectangle, i.e. has no text layer. Optionally RC4-encrypted."""
    writer = PdfWriter()
    font = writer._add_object(DictionaryObject({
        NameObject("/Type"): NameObject("/Font"), NameObject("/Subtype"): NameObject("/Type1"),
        NameObject("/BaseFont"): NameObject("/Helvetica"),
        NameObject("/Encoding"): NameObject("/WinAnsiEncoding")}))
    for content in pages:
        page = writer.add_blank_page(612, 792)
        page[NameObject("/Resources")] = DictionaryObject({
            NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})})
        if content is None:
            ops = b"0 0 1 rg 100 100 300 300 re f"
        else:
            lines = content.split("\n")
            body = " T* ".join(f"({_escape(line)}) Tj" for line in lines)
            ops = f"BT /F1 11 Tf 14 TL 72 740 Td {body} ET".encode("cp1252")
        stream = DecodedStreamObject()
        stream.set_data(ops)
        page[NameObject("/Contents")] = writer._add_object(stream)
    if user_password is not None:
        writer.encrypt(user_password=user_password, owner_password=owner_password, algorithm="RC4-128")
    with open(path, "wb") as handle:
        writer.write(handle)
    return path
