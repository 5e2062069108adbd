"""Nothing a session sees, in words or in the work its load does, depends on what another session loaded
(issue 25, item 2). The attack of the issue: a session loads 1,000 tokens of junk, then guesses another
session's documents; a right guess and a wrong one must look the same. With the real demo model."""

from __future__ import annotations

import pytest

from app.ui import views
from app.ui.handlers import Workbench
from app.ui.session import Session
from test_ui_helpers import demo_backend

SECRET = "Board minutes. The merger with Halcyon Freight closes on 14 March at 41 dollars a share.\n"
WRONG = "Board minutes. The merger with Halcyon Freight closes on 2 June at 38 dollars a share.\n"


@pytest.fixture(scope="module")
def workbench():
    return Workbench(demo_backend())


def files(folder, **texts):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in texts.items():
        (folder / f"{name}.txt").write_text(text)
        paths.append(folder / f"{name}.txt")
    return paths


def read_tokens(workbench, session) -> tuple:
    """What a load says, and how many tokens it made the model read (the work, so the time, it takes)."""
    counters = workbench.backend.counters
    before = counters.corpus_tokens_prefilled
    cost = workbench.load_cost(session)
    stats = workbench.load(session)
    return stats.reused, views.load_done(stats), counters.corpus_tokens_prefilled - before, cost.cached, cost.to_read


def test_a_right_guess_looks_like_a_wrong_one(workbench, tmp_path):
    victim, attacker = Session(), Session()
    workbench.add_files(victim, files(tmp_path / "v", minutes=SECRET))
    workbench.add_files(attacker, files(tmp_path / "a", junk="lorem ipsum dolor " * 300))
    workbench.load(attacker)  # a big load of its own first (the round-2 cap used its size)
    workbench.load(victim)

    for name, text in (("right", SECRET), ("wrong", WRONG)):
        workbench.new_corpus(attacker)
        workbench.add_files(attacker, files(tmp_path / name, minutes=text))
        reused, words, read, cached, to_read = read_tokens(workbench, attacker)
        assert reused == 0 and cached == 0 and "already loaded" not in words and "are loaded" not in words
        assert read == to_read == workbench.backend.load_cost(attacker.corpus).tokens  # every token read again
        workbench.load(victim)  # the victim uses the model again before the next guess


def test_a_session_still_reuses_what_it_loaded_itself(workbench, tmp_path):
    session = Session()
    workbench.add_files(session, files(tmp_path / "s", minutes=SECRET))
    first = workbench.load(session)
    reused, words, read, cached, to_read = read_tokens(workbench, session)
    assert reused == first.tokens and read == 0 and to_read == 0 and "are loaded" in words


def test_with_a_disk_store_a_new_session_neither_restores_nor_estimates_from_others(workbench, tmp_path):
    from app.engine.engine import Engine
    from app.store.library import Store

    demo = workbench.backend
    engine = Engine(demo.model, demo.tokenizer, model_name="demo", store=Store(tmp_path / "cache"))
    bench = Workbench(engine)
    victim, attacker = Session(), Session()
    bench.add_files(victim, files(tmp_path / "v", minutes=SECRET))
    bench.load(victim)  # saved to the disk store as well
    engine.drop_cache()
    bench.add_files(attacker, files(tmp_path / "a", minutes=SECRET))
    cost = bench.load_cost(attacker)
    assert cost.cached == 0 and cost.from_disk == 0 and cost.to_read == cost.tokens
    stats = bench.load(attacker)
    assert stats.reused == 0 and stats.source == "prefill"
