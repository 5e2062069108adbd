import docx
from docx.enum.section import WD_SECTION

from ingest import build_corpus, load_tokenizer


def _body(path):
    [doc] = build_corpus([path], tokenizer=load_tokenizer()).documents
    assert doc.kind == "docx" and doc.pages is None
    return doc.text


def test_order_tables_merged_and_nested(tmp_path):
    d = docx.Document()
    d.add_paragraph("Intro paragraph.")
    table = d.add_table(rows=3, cols=3)
    table.cell(0, 0).merge(table.cell(0, 1)).text = "Wide header"
    table.cell(0, 2).text = "Right"
    table.cell(1, 0).merge(table.cell(2, 0)).text = "Tall"
    table.cell(1, 1).text = "b1"
    table.cell(1, 2).text = "c1"
    table.cell(2, 1).text = "b2"
    inner = table.cell(2, 2).add_table(rows=1, cols=2)
    inner.cell(0, 0).text = "n1"
    inner.cell(0, 1).text = "n2"
    d.add_paragraph("Closing paragraph.")
    d.save(tmp_path / "t.docx")
    text = _body(tmp_path / "t.docx")
    assert text.count("Wide header") == 1 and text.count("Tall") == 1
    assert "[table]\n| Wide header |  | Right |\n| Tall | b1 | c1 |\n|  | b2 | [table: n1 | n2] |\n[/table]" in text
    assert text.index("Intro paragraph.") < text.index("[table]") < text.index("[table: n1 | n2]") \
        < text.index("Closing paragraph.")


def test_headers_and_footers_once_per_section(tmp_path):
    d = docx.Document()
    first = d.sections[0]
    first.header.paragraphs[0].text = "Header A"
    first.footer.paragraphs[0].text = "Footer A"
    for i in range(3):
        d.add_paragraph(f"Section one body {i}.")
    d.add_section(WD_SECTION.NEW_PAGE)  # linked to previous: header A is not repeated
    d.add_paragraph("Section two body.")
    third = d.add_section(WD_SECTION.NEW_PAGE)
    third.header.is_linked_to_previous = False
    third.header.paragraphs[0].text = "Header C"
    d.add_paragraph("Section three body.")
    d.save(tmp_path / "h.docx")
    text = _body(tmp_path / "h.docx")
    assert text.count("Header A") == 1 and text.count("Footer A") == 1 and text.count("Header C") == 1
    assert text.index("Header A") < text.index("Section one body 0.") < text.index("Footer A") \
        < text.index("Section two body.") < text.index("Header C") < text.index("Section three body.")


def test_comments_are_included(tmp_path):
    d = docx.Document()
    paragraph = d.add_paragraph("Commented text.")
    d.add_comment(paragraph.runs[0], text="Check this figure.", author="Ana")
    d.save(tmp_path / "c.docx")
    assert "[comments]\n- Ana: Check this figure.\n[/comments]" in _body(tmp_path / "c.docx")


def test_not_a_docx_is_skipped(tmp_path):
    (tmp_path / "fake.docx").write_bytes(b"PK\x03\x04 not a zip at all")
    corpus = build_corpus([tmp_path / "fake.docx"], tokenizer=load_tokenizer())
    assert corpus.documents == [] and corpus.skipped[0].reason.startswith("not a readable DOCX")
