"""Conversations stay in the KV cache: a follow-up runs only its own tokens, and the answer is exact.

Exactness is checked against a fresh engine given the same full prompt (corpus, earlier turns, question), for
a tiny random Llama in fp32 and for the real SmolLM2 demo model. Costs are asserted on the engine's counters.
"""

import threading

import pytest

from app.engine.engine import Engine
from app.errors import Cancelled
from app.prompt import Turn, encode_prompt
from app.protocol import AnswerStats, Settings
from test_engine_helpers import ask, tiny_llama

SHORT = Settings(max_new_tokens=16)
CORPUS_TEXT = (
    "The harbour of Vell opens at dawn. Fishing boats leave before the ferry, and the ferry leaves at seven. "
    "The lighthouse keeper, Ada Quill, writes the weather in a green ledger every hour. "
) * 5
QUESTIONS = ["When does the ferry leave?", "Who keeps the ledger?", "What colour is it?", "And the boats?"]


@pytest.fixture(scope="module")
def model(llama3_tokenizer):
    return tiny_llama("default", vocab=len(llama3_tokenizer), hidden=32, heads=4, kv_heads=2, tie=True, window=4096)


@pytest.fixture
def corpus_ids(llama3_tokenizer):
    return llama3_tokenizer(CORPUS_TEXT, add_special_tokens=False)["input_ids"]


def answer(engine, question, history=(), settings=SHORT, cancel=None) -> tuple[str, AnswerStats]:
    return ask(engine, question, history, settings, cancel)


def fresh(model, tokenizer, corpus_ids, question, history=(), settings=SHORT, **kw) -> str:
    """The answer of an engine that has seen nothing but this one full prompt."""
    engine = Engine(model, tokenizer, kv_dtype="fp32", chunk_tokens=4096, **kw)
    engine.load_corpus(corpus_ids)
    return answer(engine, question, history, settings)[0]


def suffix(engine, tokenizer, question, history=()) -> list[int]:
    return encode_prompt(tokenizer, (), question, list(history), engine.system_prompt).suffix


def converse(engine, questions, settings=SHORT):
    """Ask each question after the earlier exchanges, as the app does; returns [(history, text, stats)]."""
    history, out = [], []
    for question in questions:
        text, stats = answer(engine, question, history, settings)
        out.append((list(history), text, stats))
        history.append(Turn(question, text))
    return out


def test_follow_ups_cost_only_their_own_tokens_and_match_a_fresh_engine(model, llama3_tokenizer, corpus_ids):
    engine = Engine(model, llama3_tokenizer, kv_dtype="fp32", chunk_tokens=64)
    engine.load_corpus(corpus_ids)
    corpus_end = len(engine.cached_ids)
    turns = converse(engine, QUESTIONS)
    assert engine.counters.corpus_tokens_prefilled == corpus_end  # the corpus was read once
    for i, (history, text, stats) in enumerate(turns):
        full = suffix(engine, llama3_tokenizer, QUESTIONS[i], history)
        assert stats.prompt_tokens == corpus_end + len(full)
        assert stats.reused_tokens + stats.reread_tokens == len(full)
        assert stats.cached_tokens == corpus_end + stats.reused_tokens
        if i:
            # Everything up to this turn was cached: what runs is the new question, the template around it
            # and at most the previous answer's last tokens (never run: sampled last, or retokenized apart).
            previous = suffix(engine, llama3_tokenizer, QUESTIONS[i - 1], turns[i - 1][0])
            assert stats.reused_tokens >= len(previous)
            assert stats.reread_tokens <= len(full) - len(previous)
        assert text == fresh(model, llama3_tokenizer, corpus_ids, QUESTIONS[i], history)
    reread = sum(stats.reread_tokens for _, _, stats in turns)
    assert engine.counters.question_tokens_prefilled == reread


def test_regenerate_clear_and_edit_roll_back_only_as_far_as_needed(model, llama3_tokenizer, corpus_ids):
    engine = Engine(model, llama3_tokenizer, kv_dtype="fp32", chunk_tokens=64)
    engine.load_corpus(corpus_ids)
    turns = converse(engine, QUESTIONS[:3])
    history, text, _ = turns[-1]

    again, stats = answer(engine, QUESTIONS[2], history)  # Regenerate: the same prompt
    assert again == text and stats.reread_tokens == 1  # only the last prompt token runs again, for its logits

    cleared, stats = answer(engine, QUESTIONS[1])  # Clear chat: no history
    assert stats.reused_tokens < 4 and cleared == fresh(model, llama3_tokenizer, corpus_ids, QUESTIONS[1])

    edited = [history[0], Turn(history[1].question, "It is kept by the harbour master.")]
    converse(engine, QUESTIONS[:3])  # the whole conversation again, then an edit of its last answer
    before = engine.counters.question_tokens_prefilled
    text, stats = answer(engine, QUESTIONS[2], edited)
    full = suffix(engine, llama3_tokenizer, QUESTIONS[2], edited)
    untouched = suffix(engine, llama3_tokenizer, history[1].question, history[:1])
    assert stats.reused_tokens >= len(untouched)  # the first exchange and the second question stayed cached
    assert engine.counters.question_tokens_prefilled - before == stats.reread_tokens == len(full) - stats.reused_tokens
    assert text == fresh(model, llama3_tokenizer, corpus_ids, QUESTIONS[2], edited)


def test_reloading_the_same_corpus_keeps_the_conversation_and_a_new_one_drops_it(model, llama3_tokenizer,
                                                                                 corpus_ids):
    engine = Engine(model, llama3_tokenizer, kv_dtype="fp32", chunk_tokens=64)
    engine.load_corpus(corpus_ids)
    (history, first, _), = converse(engine, QUESTIONS[:1])
    kept = engine.conversation_tokens
    assert kept > 0
    stats = engine.load_corpus(corpus_ids)  # what the app does before every question
    assert stats.reused == stats.tokens and engine.conversation_tokens == kept
    text, follow = answer(engine, QUESTIONS[1], [Turn(QUESTIONS[0], first)])
    assert follow.reused_tokens >= len(suffix(engine, llama3_tokenizer, QUESTIONS[0]))  # the first turn stayed

    engine.load_corpus(corpus_ids + corpus_ids[:40])  # a file added: the corpus grows, the turns go
    assert engine.conversation_tokens == 0
    assert engine.cache.length == len(engine.cached_ids)


def test_stop_during_the_question_prefill_keeps_what_ran(model, llama3_tokenizer, corpus_ids):
    engine = Engine(model, llama3_tokenizer, kv_dtype="fp32", chunk_tokens=16)
    engine.load_corpus(corpus_ids)
    history = [Turn(f"Question {i} about the ferry?", "The ledger says the ferry left at seven. " * 3)
               for i in range(3)]
    stop = threading.Event()
    stop.set()
    text, stats = answer(engine, "And today?", history, cancel=stop)
    assert (text, stats.finish_reason, stats.new_tokens, stats.reread_tokens) == ("", "cancelled", 0, 0)
    stop = threading.Event()
    pieces = engine.ask("And today?", history, SHORT, cancel=stop)
    stop.set()  # set before the generator starts: its first check is before the first chunk
    assert list(pieces)[-1].finish_reason == "cancelled"
    text, stats = answer(engine, "And today?", history)
    assert text == fresh(model, llama3_tokenizer, corpus_ids, "And today?", history)


def test_cancelled_load_says_how_far_it_got_and_a_late_cancel_says_it_finished(model, llama3_tokenizer,
                                                                               corpus_ids):
    engine = Engine(model, llama3_tokenizer, kv_dtype="fp32", chunk_tokens=64)
    stop = threading.Event()
    total = len(engine.prompt_prefix(corpus_ids))
    with pytest.raises(Cancelled, match=f"stopped at 128 of {total:,} tokens; loading again resumes there") as err:
        engine.load_corpus(corpus_ids, cancel=stop, progress=lambda p: p.done >= 128 and stop.set())
    assert (err.value.done, err.value.total) == (128, total)

    late = threading.Event()
    stats = engine.load_corpus(corpus_ids, cancel=late, progress=lambda p: p.done == p.total and late.set())
    assert stats.stop_requested and stats.reused == 128 and stats.tokens == total
    assert not engine.load_corpus(corpus_ids, cancel=threading.Event()).stop_requested


def test_load_cost_says_when_new_instructions_read_the_documents_again(model, llama3_tokenizer, corpus_ids):
    engine = Engine(model, llama3_tokenizer, kv_dtype="fp32", chunk_tokens=64)
    engine.load_corpus(corpus_ids)
    tokens = len(engine.cached_ids)
    same = engine.load_cost(corpus_ids)
    assert (same.tokens, same.cached, same.to_read, same.documents_reread, same.estimated_s) == \
        (tokens, tokens, 0, False, 0.0)

    added = engine.load_cost(corpus_ids + corpus_ids[:50])  # a new file after the old ones
    assert (added.to_read, added.documents_reread) == (50, False) and added.estimated_s > 0

    instructions = "Answer in French. " + engine.system_prompt
    changed = engine.load_cost(corpus_ids, instructions)
    prefix = engine.prompt_prefix(corpus_ids, instructions)
    assert changed.documents_reread and changed.tokens == len(prefix)
    assert changed.to_read == len(prefix) - changed.cached > len(corpus_ids)
    assert changed.estimated_s == pytest.approx(engine.estimate_seconds(len(prefix), changed.cached))
    stats = engine.load_corpus(corpus_ids, system_prompt=instructions)
    assert stats.read_tokens == changed.to_read and stats.reused == changed.cached


def test_demo_model_conversation_is_exact_and_reads_each_turn_once(demo_model):
    model, tokenizer = demo_model
    text = "The keeper of the Vell lighthouse is Ada Quill. The ferry leaves at seven every morning. " * 6
    corpus_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    engine = Engine(model, tokenizer, kv_dtype="fp32", chunk_tokens=256, model_name="demo")
    engine.load_corpus(corpus_ids)
    settings = Settings(max_new_tokens=24)
    questions = ["Who keeps the lighthouse?", "When does the ferry leave?", "Say it again."]
    turns = converse(engine, questions, settings)
    for i, (history, answer_text, stats) in enumerate(turns):
        question = questions[i]
        if i:  # the previous prompt and most of its answer came from the cache
            previous = suffix(engine, tokenizer, questions[i - 1], turns[i - 1][0])
            assert stats.reused_tokens > len(previous)
        assert answer_text == fresh(model, tokenizer, corpus_ids, question, history, settings, model_name="demo")


def _set_during_layer(model, index: int, event: threading.Event):
    """A hook that sets `event` while layer `index` runs: the pass is then mid-way when Cancel comes."""
    return model.model.layers[index].register_forward_hook(lambda *_: event.set())


def test_cancel_stops_a_pass_between_its_layers_and_commits_nothing_of_it(model, llama3_tokenizer, corpus_ids):
    engine = Engine(model, llama3_tokenizer, kv_dtype="fp32", chunk_tokens=64)
    stop = threading.Event()
    hook = None

    def progress(p):
        nonlocal hook
        if p.done == 128 and hook is None:
            hook = _set_during_layer(model, 0, stop)  # the next chunk is stopped after its first layer

    try:
        with pytest.raises(Cancelled) as err:
            engine.load_corpus(corpus_ids, cancel=stop, progress=progress)
    finally:
        hook.remove()
    assert err.value.done == 128 and engine.cache.length == len(engine.cached_ids) == 128
    assert engine.counters.corpus_tokens_prefilled == 128
    engine.load_corpus(corpus_ids)
    reference = fresh(model, llama3_tokenizer, corpus_ids, QUESTIONS[0])

    stop = threading.Event()
    pieces = []
    stream = engine.ask(QUESTIONS[0], (), SHORT, cancel=stop)
    for piece in stream:
        pieces.append(piece)
        if len(pieces) == 2:
            hook = _set_during_layer(model, 0, stop)  # Stop lands inside the next decode step
    hook.remove()
    stats = pieces.pop()
    assert stats.finish_reason == "cancelled" and stats.new_tokens == 2
    assert reference.startswith("".join(pieces))
    assert engine.cache.length == len(engine.cached_ids) + engine.conversation_tokens
    assert answer(engine, QUESTIONS[0])[0] == reference
