"""Corpus reuse, cancel and rollback in `Engine`, asserted on the engine's own counters.

A tiny random Llama with the real Llama-3 tokenizer (vocab 128,256) makes every prefill cheap; its answers
are noise, but greedy noise is deterministic, so "the same answer" is a strict check of the cache state.
"""

import threading

import pytest

from app.engine.engine import Engine
from app.protocol import AnswerStats, Settings
from app.errors import Cancelled, CorpusTooLarge, NoCorpus, QuestionTooLong
from app.prompt import Turn, encode_prompt
from ingest import build_corpus
from test_engine_helpers import ask, tiny_llama

SHORT = Settings(max_new_tokens=12)
CORPUS_TEXT = (
    "The harbour of Vell opens at dawn. Fishing boats leave before the ferry, and the ferry leaves at seven. "
    "The lighthouse keeper, Ada Quill, writes the weather in a green ledger every hour. In winter the north "
    "pier closes when the swell passes three metres, and the boats moor at the south quay instead. "
) * 4


@pytest.fixture(scope="module")
def model(llama3_tokenizer):
    """Window 4,096, so the engine keeps 512 tokens after the corpus for questions and history."""
    return tiny_llama("default", vocab=len(llama3_tokenizer), hidden=32, heads=4, kv_heads=2, tie=True, window=4096)


@pytest.fixture
def engine(model, llama3_tokenizer):
    return Engine(model, llama3_tokenizer, kv_dtype="fp32", chunk_tokens=64)


@pytest.fixture
def corpus_ids(llama3_tokenizer):
    return llama3_tokenizer(CORPUS_TEXT, add_special_tokens=False)["input_ids"]


def answer(engine, question, history=(), settings=SHORT, cancel=None) -> tuple[str, AnswerStats]:
    text, stats = ask(engine, question, history, settings, cancel)
    assert isinstance(stats, AnswerStats)
    return text, stats


def fresh_answer(model, tokenizer, corpus_ids, question, history=()) -> str:
    engine = Engine(model, tokenizer, kv_dtype="fp32", chunk_tokens=4096)
    engine.load_corpus(corpus_ids)
    return answer(engine, question, history)[0]


def test_follow_up_question_does_not_prefill_the_corpus_again(engine, corpus_ids, model, llama3_tokenizer):
    with pytest.raises(NoCorpus):
        next(engine.ask("Too early?"))
    stats = engine.load_corpus(corpus_ids)
    prefix = engine.prompt_prefix(corpus_ids)
    assert (stats.tokens, stats.reused) == (len(prefix), 0)
    assert engine.counters.corpus_tokens_prefilled == len(prefix) and engine.counters.corpus_loads == 1
    assert engine.cached_ids == prefix and engine.cache.length == len(prefix)

    first_text, first = answer(engine, "When does the ferry leave?")
    suffix = encode_prompt(llama3_tokenizer, corpus_ids, "When does the ferry leave?",
                           system_prompt=engine.system_prompt).suffix
    assert (first.cached_tokens, first.prompt_tokens) == (len(prefix), len(prefix) + len(suffix))
    assert engine.counters.question_tokens_prefilled == len(suffix)
    assert engine.counters.tokens_decoded == first.new_tokens > 0

    second_text, second = answer(engine, "Who keeps the lighthouse?")
    assert engine.counters.corpus_tokens_prefilled == len(prefix)  # not one corpus token again
    assert engine.counters.corpus_loads == 1 and second.cached_tokens == len(prefix) + second.reused_tokens
    assert second.reused_tokens + second.reread_tokens == second.prompt_tokens - len(prefix)
    # After rolling back to where the prompts differ, the follow-up is answered exactly as by an engine that
    # never saw the first question.
    assert second_text == fresh_answer(model, llama3_tokenizer, corpus_ids, "Who keeps the lighthouse?")
    assert answer(engine, "When does the ferry leave?")[0] == first_text


def test_reloading_the_same_corpus_costs_no_tokens(engine, corpus_ids):
    engine.load_corpus(corpus_ids)
    before = engine.counters.corpus_tokens_prefilled
    stats = engine.load_corpus(list(corpus_ids))
    assert stats.reused == stats.tokens == before
    assert engine.counters.corpus_tokens_prefilled == before and engine.counters.corpus_loads == 2


def test_extended_corpus_prefills_only_the_new_tokens(engine, model, llama3_tokenizer, tmp_path):
    (tmp_path / "a-harbour.txt").write_text(CORPUS_TEXT)
    base = build_corpus([tmp_path / "a-harbour.txt"], tokenizer=llama3_tokenizer).token_ids()
    engine.load_corpus(base)
    before = engine.counters.corpus_tokens_prefilled
    (tmp_path / "b-pier.txt").write_text("The north pier was rebuilt in 1987 with granite from Tollan.\n")
    extended = build_corpus([tmp_path / "a-harbour.txt", tmp_path / "b-pier.txt"],
                            tokenizer=llama3_tokenizer).token_ids()
    shared = next((i for i, (x, y) in enumerate(zip(base, extended)) if x != y), len(base))
    stats = engine.load_corpus(extended)
    new = engine.counters.corpus_tokens_prefilled - before
    assert new == len(extended) - shared and stats.reused == before - (len(base) - shared)
    assert new < len(extended) - len(base) + 16, "adding a file changed the start of the corpus"
    assert answer(engine, "When was the pier rebuilt?")[0] == \
        fresh_answer(model, llama3_tokenizer, extended, "When was the pier rebuilt?")


def test_cancelled_load_raises_and_the_next_load_resumes(engine, corpus_ids, model, llama3_tokenizer):
    stop = threading.Event()
    seen = []

    def progress(p):
        seen.append(p.done)
        if p.done >= 128:
            stop.set()

    with pytest.raises(Cancelled, match="128"):
        engine.load_corpus(corpus_ids, progress=progress, cancel=stop)
    assert seen == [0, 64, 128] and engine.counters.corpus_tokens_prefilled == 128  # the first before any chunk
    assert engine.cache.length == len(engine.cached_ids) == 128
    with pytest.raises(NoCorpus):
        next(engine.ask("Anything?"))
    stats = engine.load_corpus(corpus_ids)
    prefix = engine.prompt_prefix(corpus_ids)
    assert stats.reused == 128 and stats.tokens == len(prefix)
    assert engine.counters.corpus_tokens_prefilled == len(prefix)  # nothing prefilled twice
    assert answer(engine, "Who keeps the ledger?")[0] == \
        fresh_answer(model, llama3_tokenizer, corpus_ids, "Who keeps the ledger?")


def test_load_cancelled_near_its_end_is_no_corpus_not_an_internal_error(engine, corpus_ids):
    stop = threading.Event()
    prefix = engine.prompt_prefix(corpus_ids)
    # Stop at the first chunk boundary past len(corpus_ids) but short of the whole prefix.
    boundary = -(-len(corpus_ids) // 64) * 64
    assert len(corpus_ids) <= boundary < len(prefix)
    with pytest.raises(Cancelled):
        engine.load_corpus(corpus_ids, progress=lambda p: p.done >= boundary and stop.set(), cancel=stop)
    with pytest.raises(NoCorpus):
        next(engine.ask("Anything?"))


def test_cancelled_answer_keeps_the_corpus_and_the_next_answer_is_unchanged(engine, corpus_ids):
    engine.load_corpus(corpus_ids)
    long = Settings(max_new_tokens=24)
    reference, _ = answer(engine, "Describe the harbour.", settings=long)
    prefilled = engine.counters.corpus_tokens_prefilled

    stop = threading.Event()
    pieces = []
    for piece in engine.ask("Describe the harbour.", settings=long, cancel=stop):
        pieces.append(piece)
        if len(pieces) == 3:
            stop.set()
    stats = pieces.pop()
    assert stats.finish_reason == "cancelled" and stats.new_tokens == 3
    assert reference.startswith("".join(pieces))
    assert engine.cache.length == len(engine.cached_ids) + engine.conversation_tokens
    # The question and the first two answer tokens: Stop came before the third one ran through the model.
    assert engine.conversation_tokens == stats.prompt_tokens - len(engine.cached_ids) + 2

    # A consumer that simply stops reading (the UI's stop button) keeps only what was committed.
    stream = engine.ask("Describe the harbour.", settings=long)
    next(stream)
    stream.close()
    assert engine.cache.length == len(engine.cached_ids) + engine.conversation_tokens
    assert engine.conversation_tokens == stats.prompt_tokens - len(engine.cached_ids)  # the question, no answer

    assert answer(engine, "Describe the harbour.", settings=long)[0] == reference
    assert engine.counters.corpus_tokens_prefilled == prefilled


def test_history_is_dropped_oldest_first_when_it_does_not_fit(engine, corpus_ids, llama3_tokenizer):
    engine.load_corpus(corpus_ids)
    room = engine.cache.capacity - len(engine.cached_ids)
    history = [Turn(f"Question {i} about the harbour, the ferry and the pier?",
                    f"Answer {i}: " + "the ledger says the swell was high and the boats stayed in. " * 8)
               for i in range(8)]
    question = "And today?"

    def suffix(turns):
        return encode_prompt(llama3_tokenizer, corpus_ids, question, turns, engine.system_prompt).suffix

    expected = next(d for d in range(len(history) + 1)
                    if len(suffix(history[d:])) + min(SHORT.max_new_tokens, 64) <= room)
    assert 0 < expected < len(history), "the history should overflow the cache, but not by all of it"
    text, stats = answer(engine, question, history)
    assert stats.dropped_turns == expected
    assert stats.prompt_tokens == len(engine.cached_ids) + len(suffix(history[expected:]))
    # Dropping the oldest turns gives exactly the answer to the newest ones alone.
    kept_text, kept = answer(engine, question, history[expected:])
    assert kept.dropped_turns == 0 and kept_text == text
    # A history that fits is kept whole.
    assert answer(engine, question, history[-1:])[1].dropped_turns == 0


def test_question_too_long_for_the_cache_is_refused_and_the_corpus_kept(engine, corpus_ids):
    engine.load_corpus(corpus_ids)
    before = (engine.cache.length, engine.counters.question_tokens_prefilled)
    with pytest.raises(QuestionTooLong, match="tokens"):
        next(engine.ask("Why? " * 2000))
    assert (engine.cache.length, engine.counters.question_tokens_prefilled) == before
    assert answer(engine, "Who keeps the ledger?")[1].finish_reason in ("length", "stop")


def test_corpus_over_the_window_is_refused_before_running(engine, corpus_ids, llama3_tokenizer):
    too_big = (corpus_ids * 40)[:engine.window]
    with pytest.raises(CorpusTooLarge) as refused:
        engine.load_corpus(too_big)
    assert f"{engine.window:,}" in str(refused.value)
    assert engine.counters.corpus_tokens_prefilled == 0 and engine.counters.corpus_loads == 0
    assert engine.cache is None


def test_refused_corpus_leaves_the_loaded_one_usable(engine, corpus_ids):
    engine.load_corpus(corpus_ids)
    with pytest.raises(CorpusTooLarge):
        engine.load_corpus((corpus_ids * 40)[:engine.window])
    assert engine.cache.length == len(engine.cached_ids) == len(engine.prompt_prefix(corpus_ids))
    answer(engine, "Who keeps the ledger?")
