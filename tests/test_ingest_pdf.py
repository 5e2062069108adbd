from ingest import build_corpus, load_tokenizer
from ingest.pdf import assemble
from test_ingest_helpers import make_pdf


def test_pages_markers_and_spans(tmp_path):
    make_pdf(tmp_path / "book.pdf", ["Chapter one begins here.", None, "Third page text.\nSecond line."])
    corpus = build_corpus([tmp_path / "book.pdf"], tokenizer=load_tokenizer())
    [doc] = corpus.documents
    assert (doc.source, doc.kind, doc.pages) == ("book.pdf", "pdf", 3)
    assert doc.text.startswith('<document index="1" source="book.pdf" kind="pdf" pages="3">\n[page 1]\n')
    assert "[page 2: no text layer]\n[page 3]\n" in doc.text
    assert doc.text.index("Chapter one") < doc.text.index("Third page") < doc.text.index("Second line")
    spans = {p: doc.text[s:e] for p, s, e in doc.page_spans}
    assert spans[1] == "Chapter one begins here."
    assert spans[2] == ""
    assert spans[3].split() == ["Third", "page", "text.", "Second", "line."]


def test_empty_password_is_read(tmp_path):
    make_pdf(tmp_path / "open.pdf", ["Readable though encrypted."], user_password="")
    corpus = build_corpus([tmp_path / "open.pdf"], tokenizer=load_tokenizer())
    assert "Readable though encrypted." in corpus.text
    assert corpus.skipped == []


def test_user_password_is_skipped(tmp_path):
    make_pdf(tmp_path / "locked.pdf", ["Secret."], user_password="hunter2")
    make_pdf(tmp_path / "fine.pdf", ["Fine."])
    corpus = build_corpus([tmp_path], tokenizer=load_tokenizer())
    assert [d.source for d in corpus.documents] == [f"{tmp_path.name}/fine.pdf"]
    [skip] = corpus.skipped
    assert skip.source.endswith("locked.pdf") and skip.reason == "needs a password" and not skip.defect


def test_ligatures_and_nul_are_cleaned():
    extracted = assemble(["e\ufb03cient \ufb01sh\x00 and \ufb00", "   "])
    assert extracted.body == "[page 1]\nefficient fish and ff\n[page 2: no text layer]\n"


def test_corrupt_pdf_is_skipped_not_fatal(tmp_path):
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4\n this is not really a pdf")
    (tmp_path / "note.txt").write_text("still here\n")
    corpus = build_corpus([tmp_path], tokenizer=load_tokenizer())
    assert "still here" in corpus.text
    [skip] = corpus.skipped
    assert skip.source.endswith("broken.pdf") and not skip.defect
