"""Chunked prefill + decode through the KV cache and the "omnibus" attention equals one plain forward.

Tiny random Llama models (fp32, CPU), with the default, Llama-3.1 and YaRN RoPE. The reference is a single
transformers forward over the whole sequence with its own "sdpa" (or "eager") attention and no cache.

Tolerances (max absolute logit error; logits of these models reach about ±4):
- fp32 KV: 1e-4. Measured ~4e-6, the same as sdpa against eager.
- bf16 KV: 0.05. Measured ~0.02.
- fp8 KV:  0.5.  Measured ~0.3. Its top-1 agreement is measured on the real demo model (test_engine_fp8.py).
"""

import time

import pytest
import torch

from app.engine.engine import Engine
from app.protocol import Settings
from test_engine_helpers import cached_logits, forward_cached, full_logits, new_cache

PROMPT_TOKENS = 120
DECODE_STEPS = 6
TOLERANCE = {"fp32": 1e-4, "bf16": 0.05, "fp8": 0.5}


def _prompt(n: int, vocab: int, seed: int = 1) -> list[int]:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize("rope", ["default", "llama3", "yarn"])
def test_fp32_cache_matches_full_forward_at_every_chunk_size(tiny_llama, rope):
    model = tiny_llama(rope)
    prompt = _prompt(PROMPT_TOKENS, model.config.vocab_size)
    for chunk in (1, 7, 64, 1000):
        got, tokens = cached_logits(model, prompt, chunk, "fp32", decode=DECODE_STEPS)
        sequence = prompt + tokens[:-1]
        for attn in ("sdpa", "eager"):
            want = full_logits(model, sequence, attn)
            assert got.shape == want.shape
            error = (got - want).abs().max().item()
            assert error < TOLERANCE["fp32"], (rope, chunk, attn, error)
        # Greedy decoding through the cache picked exactly the reference's argmax at every step.
        assert tokens == want[PROMPT_TOKENS - 1:].argmax(-1).tolist()


@pytest.mark.parametrize("storage", ["bf16", "fp8"])
@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_low_precision_cache_stays_close_to_full_forward(tiny_llama, storage, chunk):
    model = tiny_llama("llama3")
    prompt = _prompt(PROMPT_TOKENS, model.config.vocab_size)
    reference, tokens = cached_logits(model, prompt, 1000, "fp32", decode=DECODE_STEPS)
    # Teacher-forced with the fp32 run's tokens, so both score the same sequence.
    got, _ = cached_logits(model, prompt, chunk, storage, decode=DECODE_STEPS, forced=tokens)
    want = full_logits(model, prompt + tokens[:-1])
    error = (got - want).abs().max().item()
    assert error < TOLERANCE[storage], (storage, chunk, error)
    assert (got - want).abs().mean() < TOLERANCE[storage] / 10
    assert (reference - want).abs().max() < TOLERANCE["fp32"]


def test_cache_rollback_then_new_tokens_match_full_forward(tiny_llama):
    """Truncating to a prefix and writing different tokens after it is exact (what follow-up questions do)."""
    model = tiny_llama("llama3")
    corpus, first, second = _prompt(150, 1000, 1), _prompt(20, 1000, 2), _prompt(30, 1000, 3)
    cache = new_cache(model, 300, "fp32")
    forward_cached(model, cache, corpus[:100])
    forward_cached(model, cache, corpus[100:])
    forward_cached(model, cache, first)
    cache.truncate(len(corpus))
    got = forward_cached(model, cache, second)
    want = full_logits(model, corpus + second)[len(corpus):]
    assert (got - want).abs().max() < TOLERANCE["fp32"]


def test_cache_grow_keeps_the_prefix_exact(tiny_llama):
    model = tiny_llama("yarn")
    ids = _prompt(120, 1000)
    cache = new_cache(model, 64, "fp32")
    forward_cached(model, cache, ids[:60])
    cache.grow(200)
    assert cache.version == 1 and cache.capacity == 200
    got = forward_cached(model, cache, ids[60:])
    assert (got - full_logits(model, ids)[60:]).abs().max() < TOLERANCE["fp32"]


def test_engine_greedy_answer_matches_plain_transformers_loop(tiny_llama, llama3_tokenizer):
    """Engine.load_corpus + Engine.ask (chunked, cached) writes the text that a no-cache argmax loop writes."""
    model = tiny_llama("llama3", vocab=len(llama3_tokenizer), hidden=32, heads=4, kv_heads=2, tie=True)
    corpus = llama3_tokenizer("The harbour master logs every ship that enters the bay. " * 12,
                              add_special_tokens=False)["input_ids"]
    question = "Which ship came in last?"
    new_tokens = 8
    texts = []
    for chunk in (5, 64, 4096):
        engine = Engine(model, llama3_tokenizer, kv_dtype="fp32", chunk_tokens=chunk)
        engine.load_corpus(corpus)
        pieces = list(engine.ask(question, settings=Settings(max_new_tokens=new_tokens)))
        texts.append("".join(p for p in pieces if isinstance(p, str)))
    ids = engine.prompt_prefix(corpus)
    from app.prompt import encode_prompt

    prompt = encode_prompt(llama3_tokenizer, corpus, question, system_prompt=engine.system_prompt)
    assert prompt.prefix == ids
    sequence, out = prompt.prefix + prompt.suffix, []
    for _ in range(new_tokens):
        token = int(full_logits(model, sequence, keep=1)[-1].argmax())
        if token in engine.stop_ids:
            break
        out.append(token)
        sequence.append(token)
    want = llama3_tokenizer.decode(out, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    assert want and texts == [want] * 3


def test_100k_context_last_positions_match_full_forward(tiny_llama):
    """≥ 100K tokens of context with Llama-3.1 RoPE: 16K-token chunks and two decode steps against one forward.

    One layer with one head of 8 dims keeps the ~5·10^9 attention scores of each run cheap on a CPU.
    """
    model = tiny_llama("llama3", layers=1, hidden=8, heads=1, kv_heads=1, intermediate=32, vocab=256,
                       window=131_072, init=0.2)
    total, decode, keep = 100_002, 2, 8
    ids = _prompt(total, 256)
    started = time.perf_counter()
    cache = new_cache(model, total, "fp32")
    rows = []
    for start in range(0, total - decode, 16_384):
        rows.append(forward_cached(model, cache, ids[start:min(start + 16_384, total - decode)], keep=keep))
    for token in ids[total - decode:]:
        rows.append(forward_cached(model, cache, [token], keep=1))
    got = torch.cat(rows)[-keep:]
    chunked_s = time.perf_counter() - started
    want = full_logits(model, ids, keep=keep)
    assert cache.length == total
    error = (got - want).abs().max().item()
    print(f"100K context: max |logit error| {error:.2e}; chunked run {chunked_s:.1f} s")
    assert error < TOLERANCE["fp32"]
