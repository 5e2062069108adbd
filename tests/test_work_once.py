"""Work done once on a question's path (issue 27, item 4), asserted on counters: a question is checked once and
the fit plan made once between the page and the model, and a corpus the model holds already is recognised by
its key, with no walk over its tokens, when it is loaded or costed again.

A tiny random Llama with the real Llama-3 tokenizer; the answers are noise, the counts are exact.
"""

import pytest

from app.engine.engine import Engine
from app.protocol import Settings
from app.ui.handlers import CheckedQuestion, Workbench
from app.ui.session import Session
from test_engine_cache import CORPUS_TEXT
from test_engine_helpers import tiny_llama

SHORT = Settings(max_new_tokens=4)


@pytest.fixture
def workbench(llama3_tokenizer, tmp_path):
    model = tiny_llama("default", vocab=len(llama3_tokenizer), hidden=32, heads=4, kv_heads=2, tie=True, window=4096)
    return Workbench(Engine(model, llama3_tokenizer, kv_dtype="fp32", chunk_tokens=256))


@pytest.fixture
def session(workbench, tmp_path):
    document = tmp_path / "harbour.txt"
    document.write_text(CORPUS_TEXT)
    return workbench.add_files(Session(), [document])


def test_a_question_is_checked_once_and_planned_once_on_its_way_to_the_model(workbench, session):
    engine = workbench.backend
    list(workbench.ask(session, "Who keeps the ledger?", SHORT))  # the first load
    plans, checks = engine.counters.plans, workbench.questions_checked
    checked = workbench.checked(session, "  When does the ferry leave?  ")  # as the page does, before streaming
    assert checked == CheckedQuestion("When does the ferry leave?", checked.plan) and checked.plan.fits
    list(workbench.ask(session, checked, SHORT))
    assert workbench.questions_checked - checks == 1  # before: once by the page, once more by Workbench.ask
    assert engine.counters.plans - plans == 1  # before: the check, the handler's load and the engine's load
    assert session.exchanges[-1].question == "When does the ferry leave?"


def test_an_unchanged_corpus_is_recognised_without_walking_its_tokens(workbench, session):
    engine = workbench.backend
    first = engine.load(session.corpus)
    walks = engine.counters.prefix_walks
    again = engine.load(session.corpus)
    cost = engine.load_cost(session.corpus)
    assert (again.reused, again.tokens) == (first.tokens, first.tokens) and again.source == "memory"
    assert (cost.cached, cost.to_read) == (first.tokens, 0)
    assert engine.counters.prefix_walks == walks  # before: both walked the whole cached prefix in Python
    other = engine.load_cost(session.corpus, system_prompt="Answer in French.")
    assert other.to_read > 0 and engine.counters.prefix_walks == walks + 1  # other instructions: compared
