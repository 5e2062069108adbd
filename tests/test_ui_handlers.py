"""The app's handlers (`app.ui.handlers`) and what the page says (`app.ui.views`), with the real demo model."""

import json

import pytest

from app.ui import views
from app.protocol import Settings
from app.errors import Cancelled, CorpusTooLarge, EmptyQuestion, NoCorpus, QuestionTooLong
from app.ui.handlers import Workbench
from app.ui.session import Session
from test_ui_helpers import FACT, QUESTION, demo_backend, make_documents

SHORT = Settings(max_new_tokens=40)


@pytest.fixture(scope="module")
def workbench():
    return Workbench(demo_backend())


@pytest.fixture
def documents(tmp_path):
    return make_documents(tmp_path / "docs")


def test_corpus_panel_lists_documents_skips_and_meter(workbench, documents, tmp_path):
    session = Session()
    (tmp_path / "docs" / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    reports = []
    workbench.add_files(session, [*documents, tmp_path / "docs" / "photo.png"],
                        progress=lambda done, total, current: reports.append((done, total)))
    assert reports and reports[-1][0] == reports[-1][1]
    rows = views.document_rows(session.corpus)
    assert [r[1:4] for r in rows] == [["harbour-report.pdf", "PDF", 2], ["security-notes.docx", "Word", ""]]
    assert sum(int(r[4].replace(",", "")) for r in rows) == session.corpus.total_tokens
    [[source, reason]] = views.skipped_rows(session.corpus)
    assert source == "photo.png" and reason
    meter = views.context_meter(workbench.backend, workbench.plan(session))
    assert "8,192" in meter and "Loading will take about" in meter and "too much" not in meter
    assert not session.is_loaded

    workbench.remove_files(session, ["harbour-report.pdf"])
    assert session.sources == ["security-notes.docx"]
    assert views.document_rows(session.corpus)[0][0] == 1  # re-indexed
    workbench.new_corpus(session)
    assert session.corpus is None and views.document_rows(None) == []


def test_added_files_go_after_the_loaded_ones(workbench, documents, tmp_path):
    session = Session()
    workbench.add_files(session, documents[:1])
    extra = tmp_path / "zz-notes.txt"
    extra.write_text("Tide tables are posted on the harbour office door.\n")
    workbench.add_files(session, [extra, documents[0]])
    assert session.sources == ["harbour-report.pdf", "zz-notes.txt"]
    assert ["harbour-report.pdf", "already in the corpus"] in views.skipped_rows(session.corpus)


def test_load_ask_follow_up_regenerate_clear_export(workbench, documents, tmp_path):
    engine = workbench.backend
    session = Session()
    workbench.add_files(session, documents)
    progress = []
    stats = workbench.load(session, progress=progress.append)
    assert session.is_loaded and stats.tokens > session.corpus.total_tokens
    assert progress[-1].done == progress[-1].total == stats.tokens
    assert "Ready" in views.load_done(stats)

    prefilled = engine.counters.corpus_tokens_prefilled
    answer = list(workbench.ask(session, QUESTION, SHORT))[-1]
    assert FACT in answer
    [exchange] = session.exchanges
    assert exchange.answer == answer and exchange.stats.ttft_s > 0
    assert "First word after" in views.answer_line(exchange.stats)

    list(workbench.ask(session, "Where is the code kept?", SHORT))
    assert engine.counters.corpus_tokens_prefilled == prefilled  # follow-ups reuse the cached corpus
    assert len(session.exchanges) == 2

    list(workbench.regenerate(session, SHORT))
    assert [e.question for e in session.exchanges] == [QUESTION, "Where is the code kept?"]

    markdown = workbench.export(session, tmp_path / "out", "md").read_text()
    assert f"## Q: {QUESTION}" in markdown and FACT in markdown and "security-notes.docx" in markdown
    record = json.loads(workbench.export(session, tmp_path / "out", "json").read_text())
    assert record["model"] == "demo" and len(record["exchanges"]) == 2
    assert record["exchanges"][0]["stats"]["time_to_first_token_s"] > 0
    assert [d["source"] for d in record["documents"]] == session.sources

    workbench.clear_chat(session)
    assert session.exchanges == [] and session.is_loaded
    assert engine.counters.corpus_tokens_prefilled == prefilled


def test_stop_ends_the_answer_and_keeps_the_corpus(workbench, documents):
    session = Session()
    workbench.add_files(session, documents)
    answers = workbench.ask(session, "Describe every document in detail.", Settings(max_new_tokens=200))
    next(answers)
    workbench.stop(session)
    list(answers)
    assert session.exchanges[-1].stats.finish_reason == "cancelled"
    assert "stopped by you" in views.answer_line(session.exchanges[-1].stats)
    assert FACT in list(workbench.ask(session, QUESTION, SHORT))[-1]  # the next question works


def test_each_session_gets_its_own_corpus_back(workbench, documents, tmp_path):
    mine, theirs = Session(), Session()
    workbench.add_files(mine, documents)
    other = tmp_path / "other.txt"
    other.write_text("The ferry leaves at noon.\n")
    workbench.add_files(theirs, [other])
    workbench.load(mine)
    workbench.load(theirs)  # another browser replaced the model's corpus
    assert FACT in list(workbench.ask(mine, QUESTION, SHORT))[-1]
    assert workbench.backend.corpus_ids == list(mine.corpus.token_ids())
    assert theirs.exchanges == []


def test_a_corpus_too_large_is_refused_before_running(workbench, tmp_path):
    big = tmp_path / "big.txt"
    big.write_text("The harbour master counts the boats in the bay every morning. " * 900)
    session = Session()
    workbench.add_files(session, [big])
    plan = workbench.plan(session)
    assert not plan.fits
    meter = views.context_meter(workbench.backend, plan)
    assert "too much to load" in meter and "remove files to get under" in meter
    before = workbench.backend.counters.corpus_tokens_prefilled
    with pytest.raises(CorpusTooLarge, match="window") as refused:
        workbench.load(session)
    advice = str(refused.value)  # the advice fits a CPU machine: a GPU, not a 4M-token model for 11K tokens
    assert "NVIDIA GPU" in advice and "ultralong-1m" in advice and "ultralong-4m" not in advice and "fp8" not in advice
    assert workbench.backend.counters.corpus_tokens_prefilled == before
    assert not session.is_loaded


def test_cancelled_load_resumes_where_it_stopped(workbench, tmp_path):
    text = tmp_path / "log.txt"
    text.write_text("".join(f"Day {i}: the lamp was lit at dusk and the sea was calm.\n" for i in range(170)))
    session = Session()
    workbench.add_files(session, [text])
    assert 2048 < session.corpus.total_tokens < 3500  # several CPU chunks
    read = []

    def stop_after_first_chunk(p):
        if p.done > getattr(p, "reused", 0):  # a chunk has run (the first report may come before any)
            read.append(p.done)
            workbench.stop(session)

    with pytest.raises(Cancelled, match="resumes") as stopped:
        workbench.load(session, progress=stop_after_first_chunk)
    assert not session.is_loaded
    said = views.load_stopped(stopped.value)
    assert said.startswith("**Loading stopped") and f"{read[0]:,}" in said and "resumes" in said
    stats = workbench.load(session)
    assert stats.reused >= read[0] and session.is_loaded


def test_asking_without_documents_says_what_to_do(workbench):
    with pytest.raises(NoCorpus, match="add some files"):
        list(workbench.ask(Session(), QUESTION))
    with pytest.raises(EmptyQuestion, match="regenerate"):
        list(workbench.regenerate(Session()))


def shown_markdown(page) -> list[str]:
    """The text of every Markdown block on a built page, as Gradio will send it to the browser."""
    import gradio as gr

    return [block.value for block in page.blocks.values() if isinstance(block, gr.Markdown) and block.value]


def test_demo_banner_on_the_page_says_how_to_run_the_real_model(workbench):
    from app.models_catalog import resolve
    from app.ui.app import build

    engine = workbench.backend
    assert (engine.name, engine.model_name, engine.window) == ("local", "demo", resolve("demo").window)
    [banner] = [text for text in shown_markdown(build(workbench)) if "demo model" in text]
    assert banner == views.banner(engine)  # the page shows what views renders from the engine's state
    assert f"reads at most {engine.window:,} tokens" in banner  # 8,192: the model's own window, not a literal
    assert "--model ultralong-1m" in banner and "NVIDIA GPU" in banner


def test_banner_names_the_model_where_it_runs_and_its_window(tiny_llama, llama3_tokenizer):
    """Any other backend's banner is built from its own name, place and window."""
    from app.engine.engine import Engine
    from app.remote import RemoteEngine
    from app.ui.app import build
    from remote_support.fake_server import FakeServer

    local = Engine(tiny_llama(window=3000), llama3_tokenizer, kv_dtype="fp32", model_name="tiny-llama")
    [banner] = [text for text in shown_markdown(build(Workbench(local))) if text.startswith("**Model:**")]
    assert banner == "**Model:** tiny-llama on this computer, reads up to 3,000 tokens at once."
    local.model_name = "demo"  # the demo's warning reads its window from the backend too, not the catalog's 8,192
    assert "reads at most 3,000 tokens" in views.banner(local)
    with FakeServer(models=[{"id": "served-model", "max_model_len": 131_072}]) as server:
        remote = RemoteEngine(server.url, tokenizer=llama3_tokenizer)
        assert views.banner(remote) == ("**Model:** served-model on a remote server, reads up to 131,072 tokens "
                                        "at once.")


def test_regenerate_keeps_the_last_exchange_until_the_new_answer_is_done(workbench, documents, tmp_path):
    session = Session()
    workbench.add_files(session, documents)
    list(workbench.ask(session, QUESTION, SHORT))
    first = session.exchanges[-1]
    answers = workbench.regenerate(session, Settings(max_new_tokens=40, temperature=1.0, seed=7))
    next(answers)  # the new answer has begun
    meanwhile = json.loads(workbench.export(session, tmp_path / "meanwhile", "json").read_text())
    assert [e["answer"] for e in meanwhile["exchanges"]] == [first.answer]
    list(answers)
    assert len(session.exchanges) == 1 and session.exchanges[0] is not first
    assert session.exchanges[0].question == QUESTION


def test_an_answer_stopped_before_its_first_word_leaves_nothing_behind(workbench, documents):
    session = Session()
    workbench.add_files(session, documents)
    workbench.load(session)
    answers = workbench.answer(session, QUESTION, SHORT)
    workbench.stop(session)
    assert [text for text in answers if text] == []
    assert session.exchanges == [] and not session.busy


def test_cancel_after_the_load_finished_is_said(workbench, tmp_path):
    text = tmp_path / "log.txt"
    text.write_text("".join(f"Evening {i}: the ferry came in late.\n" for i in range(30)))
    session = Session()
    workbench.add_files(session, [text])

    def stop_at_the_end(p):
        if p.done == p.total:
            workbench.stop(session)

    stats = workbench.load(session, progress=stop_at_the_end)
    assert session.is_loaded and stats.stop_requested
    assert "finished before it could stop" in views.load_finished_first(stats)


def test_a_reloaded_page_gets_its_own_session_back_and_no_one_elses(workbench, documents):
    mine = workbench.keep(Session(), "ada")
    workbench.add_files(mine, documents)
    assert workbench.resume(mine.id, "ada") is mine
    assert workbench.resume(mine.id, "bob") is None and workbench.resume(mine.id, "") is None
    assert workbench.resume("not-a-session", "ada") is None
    assert workbench.keep(Session()).id != mine.id


def test_new_instructions_are_warned_about_and_the_timing_line_counts_the_re_read(workbench, documents):
    session = Session()
    workbench.add_files(session, documents)
    workbench.load(session)
    other = "Answer in one short sentence."
    assert not workbench.instructions_changed(session, session.system_prompt)
    assert workbench.instructions_changed(session, other)
    plan = workbench.plan(session, other)
    warning = views.instructions_warning(workbench.load_cost(session, other), plan.tokens,
                                         views.estimate_words(plan, workbench.load_cost(session, other)))
    assert "read again" in warning and "tokens" in warning
    list(workbench.ask(session, QUESTION, SHORT, system_prompt=other))
    exchange = session.exchanges[-1]
    assert exchange.reload is not None and exchange.reload.tokens > exchange.reload.reused
    line = views.answer_line(exchange.stats, exchange.reload)
    assert "read again first" in line and "reused from memory" not in line
    list(workbench.ask(session, "Where is the code kept?", SHORT, system_prompt=other))
    assert session.exchanges[-1].reload is None  # the follow-up read nothing again
    assert "reused from memory" in views.answer_line(session.exchanges[-1].stats)


def test_left_out_spreadsheets_and_demo_citations_say_what_to_do(workbench, tmp_path):
    import zipfile

    sheet = tmp_path / "budget.xlsx"
    with zipfile.ZipFile(sheet, "w") as z:  # what a spreadsheet is: a zip of XML parts
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("xl/workbook.xml", "<workbook/>")
    binary = tmp_path / "old.xls"
    binary.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(range(256)) * 4)
    note = tmp_path / "note.txt"
    note.write_text("The harbour opens at six.\n")
    session = Session()
    workbench.add_files(session, [note, binary, sheet])
    reasons = dict(views.skipped_rows(session.corpus))
    assert "save it as CSV" in reasons["old.xls"] and "save it as CSV" in reasons["budget.xlsx"]
    chips = views.citation_chips([], asked=False, demo=True)
    assert "demo model is not asked" in chips and "No citations in this answer" not in chips


def test_the_markdown_export_says_how_each_answer_ended_and_is_named_after_the_documents(workbench, documents,
                                                                                      tmp_path):
    from app.protocol import AnswerStats
    from app.ui.export import export_name
    from app.ui.session import Exchange

    session = Session()
    workbench.add_files(session, documents)
    stopped = AnswerStats(200, 180, 12, 0.4, 9.5, "cancelled", 0)
    session.exchanges = [Exchange(QUESTION, f"The code is {FACT}", stats=stopped)]
    path = workbench.export(session, tmp_path / "out", "md")
    assert "stopped by you" in path.read_text()
    assert path.name == f"{export_name(session.sources)}.md"
    assert export_name(session.sources, "2026-12-04") == "omnibus-harbour-report-and-1-more-2026-12-04"
    assert export_name(["src/pkg/__init__.py"], "2026-12-04") == "omnibus-__init__-2026-12-04"


def test_refusals_name_the_documents_or_say_what_to_do_with_a_long_question(workbench, documents, tmp_path):
    session = Session()
    workbench.add_files(session, documents)
    with pytest.raises(QuestionTooLong, match="Shorten it, or add the text as a file"):
        workbench.check_question(session, "harbour tides " * 5000)
    big = tmp_path / "almanac.txt"
    big.write_text("The tide tables of the harbour, hour by hour, for the whole year. " * 900)
    workbench.add_files(session, [big])
    assert not workbench.plan(session).fits
    with pytest.raises(CorpusTooLarge) as refused:  # the documents are the problem, not the 7-token question
        workbench.check_question(session, "Who keeps the lighthouse?")
    message = str(refused.value)
    assert message.startswith("the corpus is") and "almanac.txt" in message and "remove files" in message
    meter = views.context_meter(workbench.backend, workbench.plan(session), session.corpus.total_tokens,
                                refusal=workbench.too_large(session, workbench.plan(session)))
    assert "almanac.txt" in meter and "`" not in meter  # rendered, not raw Markdown


def test_the_timing_line_gives_the_real_reason_the_documents_were_read(workbench, documents, tmp_path):
    workbench.backend.drop_cache()  # nothing in the model yet
    session = Session()
    workbench.add_files(session, documents)
    list(workbench.ask(session, QUESTION, SHORT))  # asked without pressing Load
    line = views.answer_line(session.exchanges[-1].stats, session.exchanges[-1].reload,
                             why=session.exchanges[-1].reload_why)
    assert "they had not been loaded yet" in line and "another conversation" not in line
    extra = tmp_path / "zz-tides.txt"
    extra.write_text("High tide is at noon.\n")
    workbench.add_files(session, [extra])
    list(workbench.ask(session, "When is high tide?", SHORT))
    assert session.exchanges[-1].reload_why == "files were added or removed since the last load"
    assert "instructions changed" not in views.answer_line(session.exchanges[-1].stats,
                                                            session.exchanges[-1].reload,
                                                            why=session.exchanges[-1].reload_why)
