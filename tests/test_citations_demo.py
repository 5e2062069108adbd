"""End to end with the real demo model and the citation prompt on: the pipeline runs and the parser copes with
whatever the 135M model writes (it may not cite well; nothing here depends on what it says)."""

from __future__ import annotations

import pytest

from app import cli
from app.ui import views
from app.citations.check import CITATION_FORMAT, NEAR, NOT_FOUND, UNCHECKED, VERIFIED, CitationStream, parse
from app.protocol import AnswerStats, Settings
from app.prompt import DEFAULT_SYSTEM_PROMPT, system_prompt
from app.ui.handlers import Session, Workbench
from test_ui_helpers import QUESTION, demo_backend, make_documents

STATUSES = {VERIFIED, NEAR, NOT_FOUND, UNCHECKED}


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


def test_the_answer_streams_through_the_parser_and_every_citation_gets_a_status(answered):
    workbench, session, pieces = answered
    text_pieces = [p for p in pieces if not isinstance(p, AnswerStats)]
    answer = "".join(text_pieces)
    assert answer == session.exchanges[-1].answer  # same settings, greedy: the same answer twice
    stream = CitationStream()
    streamed = [c for piece in text_pieces for c in stream.feed(piece)] + stream.finish()
    assert streamed == parse(answer)
    checks = workbench.citations(session)
    assert len(checks) == len(streamed) and {c.status for c in checks} <= STATUSES
    chips = views.citation_chips(checks)
    assert ("data-cite" in chips) == bool(checks) and ("No citations" in chips) == (not checks)
    for number, check in enumerate(checks):
        shown_check, shown = workbench.cited_passage(session, number)
        assert shown_check == check
        assert views.cited_passage(shown_check, shown).startswith("<div class='passage'>")
    assert workbench.cited_passage(session, len(checks)) == (None, None)


def test_ask_cli_prints_the_citation_list(tmp_path, monkeypatch, capsys):
    import app.backend

    monkeypatch.setattr(app.backend, "open_backend", lambda *args, **kwargs: demo_backend())
    documents = make_documents(tmp_path / "docs")
    try:
        code = cli.main(["ask", *map(str, documents), "-q", QUESTION, "--model", "demo", "--max-new-tokens", "40",
                         "--no-disk-cache", "--citations"])
    finally:
        demo_backend().drop_cache()  # other modules' first load of these documents must still prefill
    out = capsys.readouterr().out
    assert code == 0
    answer = out.split(f"## {QUESTION}\n\n", 1)[1].split("\nCitations", 1)[0]
    listing = out[out.index("\nCitations"):]
    assert listing.startswith("\nCitations: none") or listing.count("\n  ") == len(parse(answer))
