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


def test_a_damaged_pdf_says_what_to_do_and_the_library_words_go_to_the_log_one_line_each(tmp_path, capfd, caplog):
    import logging

    from ingest import isolation

    if isolation._shared is not None:  # a fresh worker, whose stderr is this test's
        isolation._shared.close()
    good = make_pdf(tmp_path / "good.pdf", ["A readable page about harbours."]).read_bytes()
    (tmp_path / "cut.pdf").write_bytes(good[: len(good) // 2])
    caplog.set_level(logging.INFO, logger="ingest")
    corpus = build_corpus([tmp_path / "cut.pdf"], tokenizer=load_tokenizer())
    [skip] = corpus.skipped
    assert skip.reason == "damaged or incomplete PDF; re-export it (or save it as PDF again) and add the new file"
    logged = [r.getMessage() for r in caplog.records if r.name == "ingest.isolation"]
    assert any(m.startswith(f"{skip.source}: pypdf could not read it either: ") for m in logged), logged
    assert any("pypdf: " in m for m in logged), logged  # pypdf's own warnings ("EOF marker not found")
    bare = [line for line in capfd.readouterr().err.splitlines() if "EOF marker" in line and "ingest" not in line]
    assert not bare  # no bare library line on the terminal: only our log's own lines, if it is on


def test_an_empty_file_is_left_out_as_empty_not_listed_as_a_document(tmp_path):
    from test_hostile_helpers import make_docx

    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.md").write_text("\n   \n\t\n")
    make_docx(tmp_path / "nothing.docx", "")
    (tmp_path / "note.txt").write_text("The ferry leaves at seven.\n")
    corpus = build_corpus([tmp_path], tokenizer=load_tokenizer())
    assert [d.source.rsplit("/", 1)[-1] for d in corpus.documents] == ["note.txt"]
    reasons = {s.source.rsplit("/", 1)[-1]: s.reason for s in corpus.skipped}
    assert reasons == {"empty.txt": "empty file", "blank.md": "empty file", "nothing.docx": "no text in it"}
