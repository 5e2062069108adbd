"""End to end with the real demo model and the citation prompt on: it answers the planted fact, and the citations in
its answer go through the parser, the checker, the chips, the passage view and the CLI listing that ship.

The 135M model does not write citations itself (measured: it answers "The secret launch code is PELICAN-42."
with none), so the tests add citations built from the real ingested documents to its real answer, and
assert what each of them checks out as: a citation-free answer cannot pass.
"""

from __future__ import annotations

import pytest

from app import cli
from app.ui import views
from app.citations.check import CITATION_FORMAT, NEAR, NOT_FOUND, VERIFIED, CitationStream, parse
from app.protocol import AnswerStats, Settings
from app.prompt import DEFAULT_SYSTEM_PROMPT, system_prompt
from app.ui.handlers import Workbench
from app.ui.session import Session
from test_ui_helpers import FACT, QUESTION, demo_backend, make_documents

def test_the_citation_prompt_is_on_by_default_and_can_be_turned_off():
    assert CITATION_FORMAT in DEFAULT_SYSTEM_PROMPT == system_prompt()
    assert CITATION_FORMAT not in system_prompt(citations=False)
    assert system_prompt(citations=False) in DEFAULT_SYSTEM_PROMPT


@pytest.fixture(scope="module")
def answered(tmp_path_factory):
    """The demo model's answer to the planted-fact question over a real PDF, DOCX and code file, citation
    prompt on. The model's cache is dropped afterwards, so other modules' first load still prefills."""
    workbench = Workbench(demo_backend())
    session = Session()
    folder = tmp_path_factory.mktemp("cite-demo") / "docs"
    documents = make_documents(folder)
    (folder / "launch.py").write_text('def launch_code():\n    return "PELICAN-42"\n')
    workbench.add_files(session, [*documents, folder / "launch.py"])
    workbench.load(session, DEFAULT_SYSTEM_PROMPT)
    pieces = list(workbench.backend.ask(QUESTION, (), Settings(max_new_tokens=80)))
    workbench.load(session, DEFAULT_SYSTEM_PROMPT)
    list(workbench.answer(session, QUESTION, Settings(max_new_tokens=80)))
    yield workbench, session, pieces
    workbench.backend.drop_cache()


def test_the_demo_model_answers_the_planted_fact_with_the_citation_prompt_on(answered):
    workbench, session, pieces = answered
    assert isinstance(pieces[-1], AnswerStats) and pieces[-1].new_tokens > 0
    assert FACT in session.exchanges[-1].answer
    assert workbench.backend.system_prompt == DEFAULT_SYSTEM_PROMPT  # the load really asked for citations


def citations_from_the_documents(corpus) -> tuple[str, list[str]]:
    """Citations of the real ingested documents, in every form the prompt asks for, and what each should be."""
    by_source = {d.source: d for d in corpus.documents}
    pdf, word, code = by_source["harbour-report.pdf"], by_source["security-notes.docx"], by_source["launch.py"]
    [(_, start, end)] = [span for span in pdf.page_spans if span[0] == 2]
    keeper = next(line for line in pdf.text[start:end].splitlines() if "lighthouse keeper" in line)
    fact = next(line for line in word.text.splitlines() if FACT in line)
    code_lines = code.text.splitlines()[code.first_line - 1:]  # the file's own lines, after the wrapper tag
    number = next(n for n, line in enumerate(code_lines, start=1) if FACT in line)
    cited = [(f'[{word.index}: "{fact}"]', VERIFIED),
             (f'[{pdf.index}, p. 2: "{keeper}"]', VERIFIED),
             (f'[{pdf.index}, p. 1: "{keeper}"]', NEAR),  # the right words, on another page
             (f'[launch.py:{number}: "{code_lines[number - 1].strip()}"]', VERIFIED),
             (f'[{word.index}: "The harbour office was closed all winter by the ice."]', NOT_FOUND)]  # invented
    return " ".join(c for c, _ in cited), [status for _, status in cited]


def test_citations_in_the_answer_are_parsed_checked_and_shown_on_the_shipped_path(answered):
    workbench, session, pieces = answered
    model_text = [p for p in pieces if not isinstance(p, AnswerStats)]
    assert "".join(model_text) == session.exchanges[-1].answer  # same settings, greedy: the same answer twice
    written, expected = citations_from_the_documents(session.corpus)
    session.exchanges[-1].answer += " " + written  # as if the model had gone on to cite
    answer = session.exchanges[-1].answer
    stream = CitationStream()  # the answer as it streams, the citations cut at awkward places
    pieces = model_text + [" " + written[:7], written[7:40], written[40:41], written[41:]]
    streamed = [c for piece in pieces for c in stream.feed(piece)] + stream.finish()
    assert streamed == parse(answer) and len(streamed) == len(expected)

    checks = workbench.citations(session)
    assert [c.status for c in checks] == expected
    chips = views.citation_chips(checks)
    assert chips.count("data-cite=") == 5 and "Sources (3 of 5 quotes found" in chips
    assert "harbour-report.pdf · p. 2" in chips and "launch.py · line 2" in chips
    shown_check, shown = workbench.cited_passage(session, 1)  # the PDF page, with the quote marked
    assert shown_check == checks[1] and shown.title.startswith("harbour-report.pdf")
    assert "<mark>The lighthouse keeper is Ada Brightwater." in views.cited_passage(shown_check, shown)
    assert workbench.cited_passage(session, len(checks)) == (None, None)
    listing = cli.citation_list(checks)
    assert listing.startswith("\nCitations (3 of 5 verified):") and listing.count("\n  ") == 5
    assert "✗" in listing.splitlines()[-1] and "not found" in listing.splitlines()[-1]


def test_ask_cli_prints_the_answer_and_its_citation_list(tmp_path, monkeypatch, capsys):
    import app.backend
    from app.citations.check import Verifier
    from ingest import build_corpus

    backend = demo_backend()
    documents = make_documents(tmp_path / "docs")
    corpus = build_corpus(documents, tokenizer=backend.tokenizer)
    word = next(d for d in corpus.documents if d.source == "security-notes.docx")
    fact = next(line for line in word.text.splitlines() if FACT in line)
    written = f' [{word.index}: "{fact}"] [{word.index}: "The harbour office was closed all winter by the ice."]'
    real_ask = backend.ask

    def ask_then_cite(*args, **kwargs):  # the model's real answer, then citations as if it had gone on to cite
        for piece in real_ask(*args, **kwargs):
            if isinstance(piece, AnswerStats):
                yield written
            yield piece

    monkeypatch.setattr(app.backend, "open_backend", lambda *args, **kwargs: backend)
    monkeypatch.setitem(vars(backend), "ask", ask_then_cite)  # this instance only; the undo removes it again
    try:
        code = cli.main(["ask", *map(str, documents), "-q", QUESTION, "--model", "demo", "--max-new-tokens", "40",
                         "--no-disk-cache", "--citations"])
    finally:
        backend.drop_cache()  # other modules' first load of these documents must still prefill
    out = capsys.readouterr().out
    assert code == 0
    answer = out.split(f"## {QUESTION}\n\n", 1)[1].split("\nCitations", 1)[0]
    assert FACT in answer and answer.rstrip("\n").endswith(written)
    checks = Verifier(corpus).check_all(parse(answer.strip()))
    assert [c.status for c in checks] == [VERIFIED, NOT_FOUND]  # a citation-free answer cannot pass
    listing = out[out.index("\nCitations"):].rstrip("\n")
    assert listing == cli.citation_list(checks) and listing.startswith("\nCitations (1 of 2 verified):")
