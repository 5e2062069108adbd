"""Property tests (hypothesis): the context format's escaping holds for any text, and the citation parser never
raises and reads back what it writes."""

import html
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest import context
from ingest.pdf import assemble
from ingest.walk import display_name

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Text that leans towards what can break the format: tags, case variants, entities, newlines, odd code points.
PIECES = st.sampled_from(["<document", "</document", "<DOCUMENT", "</Document>", "<", ">", "&lt;", "&", '"',
                          "\n", "\r\n", "\x00", "\x1b", "\ufffd", "\ud800", "é", "🎉", "[page 2]", "document", " "])
HOSTILE_TEXT = st.lists(st.one_of(PIECES, st.text(max_size=8)), max_size=40).map("".join)
TAG = re.compile(r"</?document", re.IGNORECASE)


@FAST
@given(HOSTILE_TEXT)
def test_content_can_never_open_or_close_a_wrapper(text):
    escaped = context.escape_content(text)
    assert not TAG.search(escaped)
    assert TAG.sub(lambda m: "&lt;" + m.group()[1:], text) == escaped  # only the tags' `<` changed


@FAST
@given(HOSTILE_TEXT, st.integers(1, 10**6), st.sampled_from(["pdf", "docx", "text", "code"]),
       st.one_of(st.none(), st.integers(1, 10**4)))
def test_a_wrapped_document_has_exactly_one_opening_and_one_closing_tag(body, index, kind, pages):
    prepared, _ = context.prepare_body(body, (), line_numbers=False)
    text, _ = context.wrap(index, body[:30] or "x", kind, pages, prepared, ())
    assert len(TAG.findall(text)) == 2
    assert text.startswith(f'<document index="{index}" source="') and text.endswith("\n</document>\n")


@FAST
@given(HOSTILE_TEXT)
def test_attribute_values_round_trip_and_cannot_end_the_tag(value):
    escaped = context.escape_attr(value)
    assert not set('"<>\n') & set(escaped)
    assert html.unescape(escaped) == value.replace("\n", " ")


@FAST
@given(st.lists(HOSTILE_TEXT, min_size=1, max_size=6))
def test_page_spans_point_at_each_page_after_escaping(pages):
    extracted = assemble(pages)
    body, spans = context.prepare_body(extracted.body, extracted.page_spans, line_numbers=False)
    assert [p for p, _, _ in spans] == list(range(1, len(pages) + 1))
    for (page_no, start, end), (_, raw_start, raw_end) in zip(spans, extracted.page_spans):
        assert body[start:end] == context.escape_content(extracted.body[raw_start:raw_end])
        marker = body.rfind("[page ", 0, start + 1)
        assert body[marker:].startswith(f"[page {page_no}")


@FAST
@given(HOSTILE_TEXT)
def test_numbered_lines_keep_every_line(text):
    text = text.replace("\r", "")
    numbered = context.number_lines(text)
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    assert numbered.count("\n") == len(lines)
    assert [line.split("| ", 1)[-1] if "| " in line else "" for line in numbered.split("\n")[:-1]] == lines


@FAST
@given(st.text(max_size=60))
def test_display_names_are_utf8_without_terminal_controls(name):
    shown = display_name(name)
    shown.encode("utf-8")
    assert not any(ord(c) < 32 and c not in "\t\n" or ord(c) == 127 for c in shown)


try:
    from app.citations.check import Citation, format_citation, parse
except ImportError:  # citations not in this tree
    parse = None

QUOTE = st.text(st.characters(blacklist_characters='"“”[]\n\r', blacklist_categories=("Cs", "Cc")),
                min_size=1, max_size=80).filter(lambda q: q.strip() == q and q)
SOURCE = st.from_regex(r"[a-z]{1,8}(/[a-z]{1,8}){0,2}\.(py|md|txt)", fullmatch=True)


@st.composite
def citations(draw):
    by_index = draw(st.booleans())
    index, source = (draw(st.integers(1, 5000)), None) if by_index else (None, draw(SOURCE))
    place = draw(st.sampled_from(["pages", "lines", "none"]))
    a = draw(st.integers(1, 9999))
    b = draw(st.integers(a, a + 50))
    pages = (a, b) if place == "pages" else None
    lines = (a, b) if place == "lines" else None
    return Citation(index, source, pages, lines, draw(QUOTE))


if parse is not None:
    @FAST
    @given(st.text(max_size=300))
    def test_the_citation_parser_never_raises_on_any_text(text):
        for citation in parse(text):
            assert 0 <= citation.start < citation.end <= len(text)

    @FAST
    @given(st.lists(citations(), min_size=1, max_size=4), st.text(alphabet="ab .,\n", max_size=20))
    def test_written_citations_are_read_back_as_written(cited, filler):
        answer = filler.join(format_citation(c) for c in cited) + filler
        back = parse(answer)
        assert [(c.index, c.source, c.pages, c.lines, c.quote) for c in back] == \
            [(c.index, c.source, c.pages, c.lines, c.quote) for c in cited]
