"""A failed question leaves the conversation as it was, a question that cannot fit is refused before any model
work, every numeric setting is checked, and nothing says what another session loaded (issue 13, items 5 and 9).
With the real demo model, and through the running app for what the page shows."""

from __future__ import annotations

import math
import os
import stat

import pytest

from app.errors import QuestionTooLong
from app.protocol import Settings
from app.ui import views
from app.ui.inputs import InvalidSetting, settings_from
from app.ui.handlers import Workbench
from app.ui.session import Session
from test_ui_helpers import QUESTION, demo_backend, make_documents

SHORT = Settings(max_new_tokens=8)


@pytest.fixture(scope="module")
def workbench():
    return Workbench(demo_backend())


@pytest.fixture
def loaded(workbench, tmp_path):
    session = Session()
    workbench.add_files(session, make_documents(tmp_path / "docs"))
    workbench.load(session)
    return session


def test_a_failed_answer_leaves_the_history_as_it_was(workbench, loaded):
    list(workbench.answer(loaded, QUESTION, SHORT))
    before = [(e.question, e.answer) for e in loaded.exchanges]
    too_long = "harbour " * 9000  # more tokens than the demo model's 8,192-token window holds
    with pytest.raises(QuestionTooLong):
        list(workbench.answer(loaded, too_long, SHORT))
    assert [(e.question, e.answer) for e in loaded.exchanges] == before  # not appended, nothing resent later
    list(workbench.answer(loaded, "Who is the lighthouse keeper?", SHORT))
    assert [e.question for e in loaded.exchanges] == [QUESTION, "Who is the lighthouse keeper?"]


def test_an_over_long_question_is_refused_before_any_model_work(workbench, tmp_path):
    engine = workbench.backend
    engine.drop_cache()
    session = Session()
    workbench.add_files(session, make_documents(tmp_path / "docs"))
    prefilled = engine.counters.corpus_tokens_prefilled
    for question, words in (("x" * 10_000_000, "characters"), ("harbour " * 9000, "tokens")):
        with pytest.raises(QuestionTooLong, match=words):
            list(workbench.ask(session, question, SHORT))
        assert engine.counters.corpus_tokens_prefilled == prefilled and not session.is_loaded
        assert session.exchanges == []


@pytest.mark.parametrize("length, temperature, top_p, words", [
    (512, 1e-300, 0.95, "temperature"), (512, math.nan, 0.95, "finite"), (512, -0.5, 0.95, "temperature"),
    (512, 9.0, 0.95, "temperature"), (512, 0.7, 0.0, "top-p"), (512, 0.7, 1.5, "top-p"), (0, 0, 0.95, "longest"),
    (10.5, 0, 0.95, "whole number"), (10**12, 0, 0.95, "longest"), ("lots", 0, 0.95, "number"),
    (None, 0, 0.95, "number"), (512, "inf", 0.95, "finite")])
def test_every_numeric_setting_is_checked_with_a_message(length, temperature, top_p, words):
    with pytest.raises(InvalidSetting, match=words):
        settings_from(length, temperature, top_p, most_tokens=8192)


def test_good_settings_pass():
    assert settings_from(512.0, 0, most_tokens=8192) == Settings(512, 0.0, 0.95)
    assert settings_from(16, 0.7, 1.0) == Settings(16, 0.7, 1.0)


def test_already_loaded_counts_only_what_this_session_loaded(workbench, tmp_path):
    workbench.backend.drop_cache()
    documents = make_documents(tmp_path / "docs")
    (tmp_path / "extra.txt").write_text("The tide tables are pinned by the door.\n")
    first, second = Session(), Session()
    workbench.add_files(first, documents)
    workbench.load(first)
    workbench.add_files(second, [*documents, tmp_path / "extra.txt"])  # starts with the first one's corpus
    stats = workbench.load(second)
    assert stats.reused == 0 and "already loaded" not in views.load_done(stats)
    workbench.add_files(first, [tmp_path / "extra.txt"])  # another load came since: all is read again
    again = workbench.load(first)
    assert again.reused == 0 and "already loaded" not in views.load_done(again)
    (tmp_path / "more.txt").write_text("The ferry leaves at noon.\n")
    workbench.add_files(first, [tmp_path / "more.txt"])  # its own load just before may be reported
    own = workbench.load(first)
    assert 0 < own.reused < own.tokens and "already loaded" in views.load_done(own)


def test_exports_are_readable_by_the_user_only(workbench, loaded, tmp_path):
    list(workbench.answer(loaded, QUESTION, SHORT))
    for kind in ("md", "json"):
        path = workbench.export(loaded, tmp_path / "exports", kind)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "exports").st_mode) == 0o700
