"""The real SmolLM2 demo model: fp8 KV against fp32/bf16 KV on real text, needles end to end, refusals."""

import contextlib
import io
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

from app.engine.engine import Engine
from app.protocol import AnswerStats, Settings
from app.errors import CorpusTooLarge
from test_engine_helpers import forward_cached, new_cache

ROOT = Path(__file__).resolve().parent.parent
QUESTION = "What is the secret launch code?"
CODE = "PELICAN-7342"
NEEDLE = f"The secret launch code is {CODE}. Remember it: the secret launch code is {CODE}."
HAYSTACK_TOKENS = 6000


def _real_text() -> str:
    """Real English prose: sections of the Python language reference shipped with the stdlib (pydoc_data)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in ("exceptions", "naming", "execmodel", "assignment", "import", "compound"))


def _zen() -> str:
    with contextlib.redirect_stdout(io.StringIO()):
        import this
    return "".join(this.d.get(c, c) for c in this.s)


def haystack(tokenizer, depth: float) -> str:
    """~6,000 tokens of the Zen of Python, repeated, with NEEDLE as the paragraph at `depth` (0 start, 1 end)."""
    zen = _zen()
    copies = HAYSTACK_TOKENS // len(tokenizer(zen + "\n\n", add_special_tokens=False)["input_ids"])
    paragraphs = [zen] * copies
    paragraphs.insert(round(depth * copies), NEEDLE)
    return "\n\n".join(paragraphs) + "\n"


def test_fp8_kv_agrees_with_fp32_and_bf16_kv_on_real_text(demo_model):
    """Top-1 next token and KL divergence over 2,048 positions: 4 prefill chunks of 508, then 16 decode steps."""
    model, tokenizer = demo_model
    ids = tokenizer(_real_text(), add_special_tokens=False)["input_ids"][:2048]
    assert len(ids) == 2048
    caches = {storage: new_cache(model, len(ids), storage) for storage in ("fp32", "bf16", "fp8")}
    logprobs = {storage: [] for storage in caches}
    prefill = len(ids) - 16
    steps = [ids[start:start + 508] for start in range(0, prefill, 508)] + [[t] for t in ids[prefill:]]
    for step in steps:
        for storage, cache in caches.items():
            logprobs[storage].append(torch.log_softmax(forward_cached(model, cache, step), -1))
    logprobs = {storage: torch.cat(rows) for storage, rows in logprobs.items()}

    def compare(test, reference):
        agree = (logprobs[test].argmax(-1) == logprobs[reference].argmax(-1)).float()
        p = logprobs[reference].exp()
        kl = (p * (logprobs[reference] - logprobs[test])).sum(-1)  # KL(reference || test) per position
        top2 = p.topk(2, -1).values
        margin = top2[:, 0] - top2[:, 1]  # how clear the reference's top-1 is
        return agree.mean().item(), kl.mean().item(), margin[agree == 0]

    results = {pair: compare(*pair) for pair in [("fp8", "fp32"), ("fp8", "bf16"), ("bf16", "fp32")]}
    for (test, reference), (agree, kl, flipped) in results.items():
        print(f"{test} vs {reference} KV: top-1 agreement {agree:.2%} of {len(ids)} positions, mean KL {kl:.2e}, "
              f"largest top-2 margin among disagreements {flipped.max().item() if len(flipped) else 0:.3f}")
    for reference in ("fp32", "bf16"):
        agree, kl, flipped = results[("fp8", reference)]
        assert agree >= 0.99 and kl < 2e-3
        assert (flipped < 0.05).all(), "fp8 flipped a confident prediction, not a near tie"
    agree, kl, _ = results[("bf16", "fp32")]
    assert agree >= 0.998 and kl < 1e-4


def _ask(engine, question=QUESTION) -> tuple[str, AnswerStats]:
    pieces = list(engine.ask(question, settings=Settings(max_new_tokens=20)))
    return "".join(pieces[:-1]), pieces[-1]


def test_needle_at_the_end_and_in_the_middle(demo_model):
    model, tokenizer = demo_model
    engine = Engine(model, tokenizer)
    end = tokenizer(haystack(tokenizer, 1.0), add_special_tokens=False)["input_ids"]
    assert 5500 < len(end) < 6500
    stats = engine.load_corpus(end)
    assert stats.reused == 0 and stats.kv_dtype == "fp32"
    text, _ = _ask(engine)
    assert CODE in text, text
    assert engine.cache.length == len(engine.cached_ids) + engine.conversation_tokens  # corpus, then the chat

    middle = tokenizer(haystack(tokenizer, 0.5), add_special_tokens=False)["input_ids"]
    before = engine.counters.corpus_tokens_prefilled
    stats = engine.load_corpus(middle)  # the Zen before the needle is shared with the first document
    assert stats.reused > len(middle) // 3
    assert engine.counters.corpus_tokens_prefilled - before == stats.tokens - stats.reused
    text, _ = _ask(engine)
    assert CODE in text, text


def test_ask_cli_finds_the_needle_at_the_start(demo_tokenizer, tmp_path):
    document = tmp_path / "mission-briefing.txt"
    document.write_text(haystack(demo_tokenizer, 0.0))
    env = dict(os.environ, OMNIBUS_NO_BOOTSTRAP="1", XDG_CACHE_HOME=str(tmp_path / "cache"))
    done = subprocess.run([str(ROOT / ".venv/bin/python"), "launch.py", "ask", str(document), "-q", QUESTION,
                           "--model", "demo", "--max-new-tokens", "20", "--no-disk-cache"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert CODE in done.stdout, done.stdout
    assert "time to first token" in done.stderr and "prefill" in done.stderr
    # The plan line's estimates against what the same run then measured (issue 28: decode was 100x off).
    planned = re.search(r"prefill ≈ ([\d.]+) (s|min)[^,]*, decode ≈ ([\d.]+) tokens/s", done.stderr)
    prefilled = re.search(r"prefill: [\d,]+ new tokens in ([\d.]+) s", done.stderr)
    decoded = re.search(r"\d+ tokens at ([\d.]+) tokens/s", done.stderr)
    assert planned and prefilled and decoded, done.stderr[-2000:]
    prefill_s = float(planned[1]) * (60 if planned[2] == "min" else 1)
    ratios = prefill_s / float(prefilled[1]), float(planned[3]) / float(decoded[1])
    print(f"plan line against the run: prefill {ratios[0]:.2f}x, decode {ratios[1]:.2f}x")
    assert all(1 / 4 < r < 4 for r in ratios), (ratios, done.stderr[-2000:])  # generous: timing goals are benchmarks


def test_demo_refuses_a_corpus_over_its_window_before_running(demo_model):
    model, tokenizer = demo_model
    engine = Engine(model, tokenizer)
    assert (engine.window, engine.reserve) == (8192, 1024)
    ids = tokenizer(haystack(tokenizer, 0.5) * 2, add_special_tokens=False)["input_ids"]
    overhead = len(engine.prompt_prefix([]))
    corpus = ids[:7168 - overhead + 1]  # system prompt + corpus: one token over 7,168
    assert len(engine.prompt_prefix(corpus)) == 7169
    with pytest.raises(CorpusTooLarge) as refused:
        engine.load_corpus(corpus)
    message = str(refused.value)
    assert "7,169" in message and "8,192" in message and "7,168" in message
    assert engine.counters.corpus_tokens_prefilled == engine.counters.corpus_loads == 0 and engine.cache is None
    assert engine.plan(7168).fits and not engine.plan(7169).fits


def test_demo_defaults_a_short_answer_with_the_repetition_guard_and_a_measured_estimate(demo_model):
    model, tokenizer = demo_model
    engine = Engine(model, tokenizer, model_name="demo")
    defaults = engine.default_settings()
    assert defaults.max_new_tokens == 256 and defaults.repetition_guard is None  # None: on for the demo
    assert engine.adaptive_chunks and engine.rates().source in ("calibration", "loads")
    assert engine.plan(3000).prefill_seconds == pytest.approx(engine.estimate_seconds(3000))
    assert engine.estimate_seconds(6000) > 2 * engine.estimate_seconds(3000) * 0.99  # deeper tokens cost more
