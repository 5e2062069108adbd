"""Answering a question about the loaded corpus: fit the turns, prefill the prompt's tail, decode the answer.

`ask` reads top to bottom: the turns that fit (`fit_question`), the cached part of the prompt kept
(`Sequence.start_answer`), the rest run after the corpus (`prefill_question`), then the answer sampled token
by token until a stop rule ends it (`decode`), and one AnswerStats. The engine's sequence is the only state
these functions change, and only through its own methods and committed token lists.
"""

from __future__ import annotations

import time

import torch

from app import calibration
from app.engine import attention_backend, grammar
from app.engine.forward import Stopped, decode_one_token, forward
from app.engine.generation import RepetitionGuard, StreamDecoder, sample
from app.engine.kv_cache import KVCache
from app.errors import NoCorpus
from app.prompt import SMALL_MODELS, Turn, encode_prompt, fit_turns
from app.protocol import AnswerStats, Settings


def ask(engine, question: str, history, settings: Settings, cancel):
    """Stream the answer to `question` on `engine` (app.engine.engine.Engine): text pieces, then AnswerStats."""
    constraint = grammar.constraint(engine.tokenizer, settings, engine.stop_ids)
    guard = settings.repetition_guard if settings.repetition_guard is not None else \
        engine.model_name in SMALL_MODELS and constraint is None  # JSON rows repeat their keys
    with engine.lock:
        sequence = engine.sequence
        if not sequence.loaded:
            raise NoCorpus("no corpus is loaded (or its loading was stopped): load it before asking")
        corpus_end = len(sequence.prefix_ids)
        attention_backend.assign(sequence.cache, engine.attention)
        if engine.cpu is not None:  # as many threads as cores are free
            engine.cpu.fit(wait=False)
        history, dropped, suffix = fit_question(engine, question, list(history), settings.max_new_tokens)
        started = time.perf_counter()
        reused = sequence.start_answer(suffix)  # what the cache holds of this prompt
        ids, reason, first_token_at = [], "cancelled", None
        try:
            logits, position = prefill_question(engine, suffix, reused, cancel)
            reread_s = time.perf_counter() - started
            if position == len(suffix):
                ids, reason, first_token_at = yield from decode(engine, logits, settings, constraint, guard, cancel)
        finally:
            sequence.keep_committed()  # what ran and was committed stays: the turns and the answer so far
        now = time.perf_counter()
        first = first_token_at or now
        decode_s, n = now - first, len(ids)
        if not engine.on_gpu and n > 4 and decode_s > 0 and engine.calibration is not None:
            engine.calibration.record_decode(decode_s / (n - 1), corpus_end + len(suffix))
        yield AnswerStats(corpus_end + len(suffix), corpus_end + reused, n, first - started,
                          (n - 1) / decode_s if n > 1 and decode_s > 0 else 0.0, reason, dropped,
                          reread_tokens=position - reused, reread_s=reread_s, reused_tokens=reused,
                          attention=sequence.cache.backend.describe())


def prefill_question(engine, suffix: list[int], position: int, cancel) -> tuple[torch.Tensor | None, int]:
    """Run the prompt's uncached tail (earlier turns, question) in chunks after the corpus, committing each.
    Returns the last position's logits and how far it got (short of the end: Cancel stopped it)."""
    sequence, logits = engine.sequence, None
    corpus_end = len(sequence.prefix_ids)
    live = calibration.LiveEstimate(engine.rates(torch.get_num_threads())) if engine.adaptive_chunks else None
    while position < len(suffix):
        if cancel is not None and cancel.is_set():
            break
        chunk_started = time.perf_counter()
        piece = suffix[position:position + engine.costs.chunk_size(corpus_end + position, live, engine.chunk_tokens)]
        last = position + len(piece) == len(suffix)
        try:
            logits = forward(engine.model, sequence.cache, piece, last, engine.layer_devices[0], cancel)
        except Stopped:
            break
        sequence.conversation_ids.extend(piece)
        engine.counters.question_tokens_prefilled += len(piece)
        if live is not None:
            live.record(len(piece), corpus_end + position, time.perf_counter() - chunk_started)
        position += len(piece)
    return logits, position


def decode(engine, logits: torch.Tensor, settings: Settings, constraint, guard: bool, cancel):
    """Sample the answer token by token, stream its text and commit each token, until a stop rule ends it.
    Yields text pieces; returns (answer token ids, finish reason, time of the first token)."""
    sequence, device = engine.sequence, engine.layer_devices[0]
    generator = None if settings.seed is None else \
        torch.Generator(device=engine.layer_devices[-1]).manual_seed(settings.seed)
    decoder, repeats = StreamDecoder(engine.tokenizer), RepetitionGuard() if guard else None
    reason, first_token_at = "length", None
    for _ in range(settings.max_new_tokens):
        if cancel is not None and cancel.is_set():
            reason = "cancelled"
            break
        token = sample(logits if constraint is None else constraint.restrict(logits),
                       settings.temperature, settings.top_p, generator)
        if constraint is not None:
            constraint.take(token)
        first_token_at = first_token_at or time.perf_counter()
        if token in engine.stop_ids:  # a JSON answer closed early, whole, says so
            reason = constraint.cut_short if constraint is not None and constraint.cut_short else "stop"
            break
        engine.counters.tokens_decoded += 1
        text = decoder.push(token)
        if text:
            yield text
        stop = stop_rule(decoder, settings, repeats, token, sequence.cache)
        if stop:
            reason = stop
            break
        try:
            logits = decode_one_token(engine.model, sequence, token, device, engine.use_cuda_graphs, cancel)
        except Stopped:
            reason = "cancelled"
            break
        sequence.conversation_ids.append(token)
    tail = decoder.flush()
    if tail:
        yield tail
    return decoder.ids, reason, first_token_at


def stop_rule(decoder: StreamDecoder, settings: Settings, repeats: RepetitionGuard | None, token: int,
              cache: KVCache) -> str:
    """Why the answer ends after this token ("" when it goes on): its length, a loop, or a full cache."""
    if len(decoder.ids) == settings.max_new_tokens:
        return "length"
    if repeats is not None and repeats.push(token):
        return "repetition"
    if cache.length >= cache.capacity:
        return "full"
    return ""


def fit_question(engine, question: str, history: list[Turn], max_new_tokens: int):
    """Encode the question after as many recent turns as the cache has room for: (kept, dropped, suffix ids)."""
    sequence = engine.sequence
    room = sequence.cache.capacity - len(sequence.prefix_ids)

    def measure(kept):
        # The corpus slot is left empty: only the few template tokens around it are compared, not the
        # whole corpus, so a question at 1M tokens costs no million-element list work.
        ids = encode_prompt(engine.tokenizer, (), question, kept, engine.system_prompt)
        head = len(ids.prefix)
        if head + len(sequence.corpus_ids) != len(sequence.prefix_ids) or ids.prefix != sequence.prefix_ids[:head]:
            raise RuntimeError("the prompt prefix does not match the cached corpus")  # an internal defect
        return len(ids.suffix), ids.suffix

    return fit_turns(history, room, max_new_tokens, measure, f"the {sequence.cache.capacity:,}-token cache")
