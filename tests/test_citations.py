"""Citations (`app.citations.check`): the parser on written forms and arbitrary text, and the checks of quotes
against real ingested PDFs (built here with pypdf) and code, across page breaks and near misses."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.citations.check import (NEAR, NOT_FOUND, UNCHECKED, VERIFIED, Citation, CitationStream, Verifier,
                           format_citation, parse, passage)
from app.cli import citation_list
from ingest import build_corpus
from test_ingest_helpers import make_pdf

PAGES = [
    "Harbour report, spring.\nShipping volumes rose by a fifth and two new cranes arrived.\n"
    "The harbour master wrote each vessel's name in the ledger and",
    "closed it before noon on every working day.\nStaff.\nThe lighthouse keeper is Ada Brightwater.\n"
    "She lights the lamp at dusk.",
    "Repairs.\nThe north pier was rebuilt with granite from Penrith.\nThe storm of March did no damage.",
]
CODE = (
    "import os\n"
    "\n"
    "\n"
    "def launch(port: int) -> int:\n"
    '    """Start the server on `port`."""\n'
    '    print("listening on", port)\n'
    "    return serve(os.environ.get(\"HOST\", \"127.0.0.1\"), port)\n"
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, llama3_tokenizer):
    """docs/report.pdf (3 pages) and docs/src/server.py, code numbered: 1 the tree, 2 report.pdf, 3 server.py."""
    root = tmp_path_factory.mktemp("cite") / "docs"
    (root / "src").mkdir(parents=True)
    make_pdf(root / "report.pdf", PAGES)
    (root / "src" / "server.py").write_text(CODE)
    built = build_corpus([root], tokenizer=llama3_tokenizer, line_numbers=True)
    assert [(d.index, d.source) for d in built.documents] == [
        (1, "docs/"), (2, "docs/report.pdf"), (3, "docs/src/server.py")]
    return built


def only(text: str) -> Citation:
    [citation] = parse(text)
    return citation


# -- parsing --

@pytest.mark.parametrize("written, index, source, pages, lines, quote", [
    ('[3, p. 47: "exact words"]', 3, None, (47, 47), None, "exact words"),
    ('[3, pp. 47-48: "words"]', 3, None, (47, 48), None, "words"),
    ('[3, page 47: "words"]', 3, None, (47, 47), None, "words"),
    ('[doc 3, p.47: "words"]', 3, None, (47, 47), None, "words"),
    ('[#3, line 120: "x = 1"]', 3, None, None, (120, 120), "x = 1"),
    ('[3, lines 120–125: "x"]', 3, None, None, (120, 125), "x"),
    ('[src/app.py:120: "def f():"]', None, "src/app.py", None, (120, 120), "def f():"),
    ('[src/app.py:120-125: "a"]', None, "src/app.py", None, (120, 125), "a"),
    ('[report.pdf, p. 4: "a"]', None, "report.pdf", (4, 4), None, "a"),
    ('[My Notes 2024.docx: "a"]', None, "My Notes 2024.docx", None, None, "a"),
    ('[3: "words"]', 3, None, None, None, "words"),
    ("[3: “curly quotes”]", 3, None, None, None, "curly quotes"),
    ('[3, p. 9: "print("hi") [0]"]', 3, None, (9, 9), None, 'print("hi") [0]'),
    ("[3, p. 47]", 3, None, (47, 47), None, ""),
    ("[src/app.py:120]", None, "src/app.py", None, (120, 120), ""),
    ('[ 3 , p. 5 : "spaced" ]', 3, None, (5, 5), None, "spaced"),
])
def test_each_written_form_parses(written, index, source, pages, lines, quote):
    citation = only(f"A claim {written}. More.")
    assert (citation.index, citation.source, citation.pages, citation.lines, citation.quote) == \
        (index, source, pages, lines, quote)
    assert f"A claim {written}. More."[citation.start:citation.end] == written


@pytest.mark.parametrize("text", [
    "a list [1] and x[0] and [a link](https://x.y) and [TODO] and [p. 4]",
    '[3, p. 4: "never closed',
    '[3, p. 4: "runs over\na line"]',
    "[]", '[: "x"]', "[[[[", '"]"]"]',
])
def test_what_is_not_a_citation(text):
    assert parse(text) == []


def test_an_unclosed_quote_does_not_swallow_the_next_citation():
    cited = parse('One [2, p. 1: "never closed and then [2, p. 3: "The storm of March"] two [3: "b"].')
    assert [(c.pages, c.quote) for c in cited] == [((3, 3), "The storm of March"), (None, "b")]


def test_canonical_form_round_trips():
    for written in ('[3, p. 47: "a b"]', '[3, pp. 4-5: "q"]', '[3, line 7: "q"]', '[3, lines 7-9: "q"]',
                    '[src/a.py:7: "q"]', '[src/a.py:7-9: "q"]', '[a.pdf, p. 2: "q"]', '[3: "q"]', "[3, p. 4]"):
        assert format_citation(only(written)) == written


sources = st.from_regex(r"[a-z][a-z0-9_\-]{0,8}(/[a-z0-9_\-]{1,8}){0,2}\.[a-z]{1,4}", fullmatch=True)
quotes = st.text(st.characters(blacklist_characters='"“”[]\n\r', blacklist_categories=("Cs",)),
                 min_size=1, max_size=60)
spans = st.tuples(st.integers(1, 9999), st.integers(0, 20)).map(lambda t: (t[0], t[0] + t[1]))


@st.composite
def citations(draw):
    by_index = draw(st.booleans())
    index, source = (draw(st.integers(1, 99999)), None) if by_index else (None, draw(sources))
    place = draw(st.sampled_from(["page", "line", "none"]))
    pages = draw(spans) if place == "page" else None
    lines = draw(spans) if place == "line" else None
    return Citation(index, source, pages, lines, draw(quotes))


prose = st.text(st.characters(blacklist_characters="[]", blacklist_categories=("Cs",)), max_size=80)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(prose, citations()), max_size=5), prose)
def test_well_formed_citations_round_trip_through_any_prose(pairs, tail):
    text, expected = "", []
    for before, citation in pairs:
        text += before + " "
        written = format_citation(citation)
        expected.append((citation.index, citation.source, citation.pages, citation.lines, citation.quote,
                         len(text), len(text) + len(written)))
        text += written + " "
    text += tail
    assert [(c.index, c.source, c.pages, c.lines, c.quote, c.start, c.end) for c in parse(text)] == expected


bracketty = st.text(st.sampled_from(list('[]":“”,.p-: 0123456789ab\n')) | st.characters(), max_size=400)


@settings(max_examples=200, deadline=None)
@given(bracketty, st.lists(st.integers(1, 40), max_size=30))
def test_parser_never_crashes_and_streaming_agrees_with_the_whole(text, cuts):
    found = parse(text)
    for citation in found:
        assert 0 <= citation.start < citation.end <= len(text)
        assert parse(text[citation.start:citation.end]) == [citation.__class__(
            citation.index, citation.source, citation.pages, citation.lines, citation.quote, 0,
            citation.end - citation.start)]
    stream, at = CitationStream(), 0
    streamed = []
    for cut in cuts:
        streamed += stream.feed(text[at:at + cut])
        at += cut
    streamed += stream.feed(text[at:])
    streamed += stream.finish()
    assert streamed == found


def test_stream_hands_out_a_citation_as_soon_as_nothing_can_change_it():
    stream = CitationStream()
    assert stream.feed('Ada keeps the light [2, p. 2: "The lighthouse') == []
    [done] = stream.feed(' keeper"]. Next')
    assert done.quote == "The lighthouse keeper"
    assert stream.feed(' [2, p. 1: "a [') == []
    assert stream.finish() == [] and len(stream.citations) == 1


# -- verification on a real PDF and real code --

def check(corpus, written):
    return Verifier(corpus).check(only(written))


@pytest.mark.parametrize("written, how", [
    ('[2, p. 2: "The lighthouse keeper is Ada Brightwater."]', "exact"),
    ('[2, p. 2: "the LIGHTHOUSE keeper   is ada brightwater"]', "normalised"),
    ('[2, p. 2: "The lighthouse keeper … lights the lamp at dusk"]', "normalised"),
    ('[report.pdf, p. 3: "rebuilt with granite from Penrith"]', "exact"),
    ('[docs/report.pdf, pp. 2-3: "Repairs."]', "exact"),
])
def test_quotes_on_the_cited_page_verify(corpus, written, how):
    result = check(corpus, written)
    assert (result.status, result.how, result.score, result.document) == (VERIFIED, how, 1.0, 2)
    assert result.pages[0] in range(only(written).pages[0], only(written).pages[1] + 1)


@pytest.mark.parametrize("page", [1, 2])
def test_a_quote_across_a_page_break_verifies_from_either_page(corpus, page):
    written = f'[2, p. {page}: "wrote each vessel\'s name in the ledger and closed it before noon"]'
    result = check(corpus, written)
    assert (result.status, result.pages) == (VERIFIED, (1, 2))
    shown = passage(Verifier(corpus), result)
    assert shown.title == "docs/report.pdf · pp. 1-2"
    assert [shown.text[a:b] for a, b in shown.highlights] == [
        "wrote each vessel's name in the ledger and", "closed it before noon"]
    assert shown.text.startswith("[page 1]\nHarbour report") and "[page 2]\nclosed it" in shown.text


def test_the_highlight_is_the_quote_in_the_document_text(corpus):
    result = check(corpus, '[2, p. 3: "The storm of March did no damage"]')
    document = corpus.documents[1]
    assert document.text[result.start:result.end] == "The storm of March did no damage"
    shown = passage(Verifier(corpus), result)
    assert (shown.title, shown.first_line) == ("docs/report.pdf · p. 3", None)
    assert [shown.text[a:b] for a, b in shown.highlights] == ["The storm of March did no damage"]


def test_wrong_page_is_near_with_the_real_page(corpus):
    neighbour = check(corpus, '[2, p. 1: "The lighthouse keeper is Ada Brightwater"]')
    assert (neighbour.status, neighbour.how, neighbour.pages, neighbour.note) == (NEAR, "exact", (2, 2),
                                                                                 "found on p. 2")
    far = check(corpus, '[2, p. 3: "Shipping volumes rose by a fifth"]')
    assert (far.status, far.pages, far.note) == (NEAR, (1, 1), "found on p. 1")


def test_near_misses_score_between_the_threshold_and_one(corpus):
    result = check(corpus, '[2, p. 2: "The lighthouse keeper is Ada Brightwater, who lights the lamp at dawn"]')
    assert (result.status, result.how, result.pages) == (NEAR, "fuzzy", (2, 2))
    assert 0.8 <= result.score < 1
    assert "Ada Brightwater" in corpus.documents[1].text[result.start:result.end]
    typo = check(corpus, '[2, p. 3: "The north peir was rebuilt with granit from Penrith"]')
    assert (typo.status, typo.how) == (NEAR, "fuzzy") and typo.score > 0.9


def test_made_up_quotes_and_documents_are_not_found(corpus):
    made_up = check(corpus, '[2, p. 2: "The harbour will close for the winter season"]')
    assert made_up.status == NOT_FOUND and made_up.score < 0.8 and made_up.start == -1
    assert "p. 2 and its neighbours" in made_up.note
    assert passage(Verifier(corpus), made_up).title == "docs/report.pdf · p. 2"  # the cited page, nothing marked
    assert check(corpus, '[7, p. 2: "The lighthouse keeper"]').note == "no document 7 in the corpus"
    assert check(corpus, '[nowhere.pdf: "x"]').status == NOT_FOUND
    assert check(corpus, "[2, p. 2]").status == UNCHECKED


def test_code_lines_verify_with_or_without_the_line_number_prefix(corpus):
    plain = check(corpus, '[src/server.py:6: "print("listening on", port)"]')
    assert (plain.status, plain.how, plain.lines, plain.document) == (VERIFIED, "exact", (6, 6), 3)
    prefixed = check(corpus, '[3, line 4: "   4| def launch(port: int) -> int:"]')
    assert (prefixed.status, prefixed.lines) == (VERIFIED, (4, 4))
    spanning = check(corpus, '[3, lines 4-5: "def launch(port: int) -> int: """Start the server"]')
    assert (spanning.status, spanning.how, spanning.lines) == (VERIFIED, "normalised", (4, 5))
    shown = passage(Verifier(corpus), spanning, context_lines=1)
    assert (shown.title, shown.first_line) == ("docs/src/server.py · lines 4-5", 3)
    assert shown.text.split("\n")[1] == "def launch(port: int) -> int:"  # no line-number prefixes shown
    assert [shown.text[a:b] for a, b in shown.highlights] == ['def launch(port: int) -> int:\n    """Start the server']
    off_by_two = check(corpus, '[3, line 8: "return serve("]')
    assert (off_by_two.status, off_by_two.lines) == (VERIFIED, (7, 7))
    elsewhere = check(corpus, '[3, line 1: "return serve("]')
    assert (elsewhere.status, elsewhere.note) == (NEAR, "found at line 7")


def test_code_without_line_numbers_counts_the_file_lines(tmp_path, llama3_tokenizer):
    (tmp_path / "server.py").write_text(CODE)
    (tmp_path / "notes.txt").write_text("First line.\nThe second line says hello.\n")
    corpus = build_corpus([tmp_path / "server.py", tmp_path / "notes.txt"], tokenizer=llama3_tokenizer)
    verifier = Verifier(corpus)
    result = verifier.check(only('[server.py:6: "print("listening on", port)"]'))
    assert (result.status, result.lines) == (VERIFIED, (6, 6))
    assert verifier.check(only('[notes.txt, line 2: "says hello"]')).lines == (2, 2)


def test_cli_list_marks_each_status(corpus):
    answer = ('Ada [2, p. 2: "The lighthouse keeper is Ada Brightwater"]; pier [2, p. 3: "The north peir was '
              'rebuilt with granit"]; winter [2, p. 2: "closed for the winter"]; bare [2, p. 1].')
    listing = citation_list(Verifier(corpus).check_all(parse(answer)))
    assert listing.splitlines()[1] == "Citations (1 of 4 verified):"
    assert '1. ✓ 2, p. 2 (docs/report.pdf) "The lighthouse keeper is Ada Brightwater": verified (exact)' in listing
    assert "2. ≈ 2, p. 3" in listing and "near (fuzzy, 9" in listing
    assert "3. ✗ 2, p. 2" in listing and "not found" in listing
    assert "4. · 2, p. 1 (docs/report.pdf): no quote" in listing


# -- hostile quotes: the normalised match is substring search, never a pattern built from the quote --

def _regex_reference(text: str, quote: str):
    """The pattern the checker used to build (kept here only as the reference): whitespace runs, case, each
    ellipsis a gap of up to 300 characters. Run only on short texts, where its backtracking stays small."""
    import re

    parts = [p for p in re.split(r"\s*(?:\.\.\.|…)\s*", quote) if p.strip()]
    pattern = r"[\s\S]{0,300}?".join(r"\s+".join(re.escape(w) for w in p.split()) for p in parts)
    m = re.search(pattern, text, re.IGNORECASE)
    return (m.start(), m.end()) if m else None


words = st.sampled_from(["ada", "keeps", "the", "light", "Light", "lamp", "at", "dusk", "x" * 40, "y" * 90])


@settings(max_examples=300, deadline=None)
@given(st.lists(words, min_size=1, max_size=30), st.lists(st.lists(words, min_size=1, max_size=3), min_size=1,
                                                          max_size=4))
def test_the_normalised_match_finds_what_the_old_pattern_found(document_words, quote_parts):
    from app.citations.search import Squeezed, _find_normalised, _fragments

    text = " ".join(document_words)  # single spaces: a gap counts the same in both
    quote = " … ".join(" ".join(part) for part in quote_parts)
    squeezed = Squeezed(text.lower())
    fragments = _fragments(quote)
    assert _find_normalised(squeezed, fragments, 0, len(squeezed.text)) == _regex_reference(text, quote)


def test_a_quote_with_ellipses_over_repeated_words_does_not_freeze_the_checker(tmp_path, llama3_tokenizer):
    """The attack: 40 KB of repeated words, a quote of common words cut by four ellipses and ending in a word
    the document lacks. The old pattern backtracked for minutes while holding the GIL (every request of the
    server stalled); substring search answers at once. The thread's generous limit only guards against a hang."""
    import threading

    (tmp_path / "repeated.txt").write_text(("the harbour light " * 2300)[:40_000] + "\n")
    corpus = build_corpus([tmp_path / "repeated.txt"], tokenizer=llama3_tokenizer)
    results = []
    quotes = ['[1: "light … light … light … light … zebra"]', '[1: "light … harbour … the … light"]',
              '[1, line 1: "' + "light … " * 15 + 'zebra"]']
    worker = threading.Thread(target=lambda: results.extend(Verifier(corpus).check(only(q)) for q in quotes),
                              daemon=True)
    worker.start()
    worker.join(120)
    assert not worker.is_alive(), "the citation checker is stuck on a hostile quote"
    assert [r.status for r in results] == [NOT_FOUND, VERIFIED, NOT_FOUND]
    assert results[1].how == "normalised" and results[1].start >= 0
