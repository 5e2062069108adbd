"""The CPU's measured prefill speed (app/calibration.py): the model of a pass, the fit, where it is kept."""

import json

import pytest

from app import calibration
from app.calibration import LiveEstimate, Rates, fit
from app.engine.engine import Engine
from app.store.library import Store
from test_engine_helpers import tiny_llama

RATES = Rates(per_token=2e-3, per_token_depth=4e-7, per_pass=0.03)


@pytest.mark.parametrize("start,end,chunk", [(0, 6000, 128), (1000, 5003, 96), (0, 17, 64)])
def test_closed_form_time_is_the_sum_of_its_passes(start, end, chunk):
    passes = [(min(chunk, end - d), d) for d in range(start, end, chunk)]
    assert RATES.seconds(end, start, chunk) == pytest.approx(sum(RATES.pass_seconds(n, d) for n, d in passes))


def test_deeper_passes_cost_more_and_chunks_shrink_to_stay_on_target():
    assert RATES.pass_seconds(64, 6000) > RATES.pass_seconds(64, 0)
    for depth in (0, 2000, 6000):
        tokens = RATES.chunk_tokens(depth)
        assert tokens % 16 == 0 and RATES.pass_seconds(tokens, depth) <= calibration.CHUNK_TARGET_S
        assert RATES.pass_seconds(tokens + 16, depth) > calibration.CHUNK_TARGET_S
    assert RATES.chunk_tokens(6000) < RATES.chunk_tokens(0)
    assert RATES.chunk_tokens(0, slowdown=3.0) < RATES.chunk_tokens(0)  # a busy machine: smaller chunks
    assert RATES.chunk_tokens(0, slowdown=1e-6) == calibration.MAX_CHUNK


def test_fit_recovers_the_rates_of_a_load_and_falls_back_to_scaling():
    passes = [(n, d, RATES.pass_seconds(n, d)) for n, d in [(128, 0), (112, 128), (96, 1500), (64, 3000),
                                                            (48, 4500), (32, 6000), (128, 700)]]
    got = fit(passes, Rates(1.0, 1.0, 1.0))
    assert (got.per_token, got.per_token_depth, got.per_pass) == pytest.approx(
        (RATES.per_token, RATES.per_token_depth, RATES.per_pass), rel=1e-6)
    few = fit(passes[:2], RATES.scaled(0.5))  # too little to separate the terms: the prior, scaled
    assert few.per_token == pytest.approx(RATES.per_token, rel=0.05)


def test_live_estimate_scales_by_how_the_chunks_ran_and_resists_one_noisy_chunk():
    live = LiveEstimate(RATES, prior_s=1.0)
    assert live.slowdown == 1.0 and live.remaining(0, 4000) == pytest.approx(RATES.seconds(4000))
    live.record(64, 0, 5.0 * RATES.pass_seconds(64, 0))  # one chunk five times slower than expected
    assert 1.0 < live.slowdown < 2.0 and live.recent_slowdown == pytest.approx(5.0)
    assert live.chunk_tokens(64) < RATES.chunk_tokens(64)  # the next chunk shrinks at once
    for depth in range(64, 64 * 80, 64):
        live.record(64, depth, 2.0 * RATES.pass_seconds(64, depth))  # then a machine at half the speed
    assert live.slowdown == pytest.approx(2.0, rel=0.05)
    done = 64 * 80
    assert live.remaining(done, 8000, 64) == pytest.approx(live.slowdown * RATES.seconds(8000, done, 64))


def test_calibration_is_measured_once_and_kept_beside_the_saved_corpora(llama3_tokenizer, tmp_path):
    model = tiny_llama("default", vocab=len(llama3_tokenizer), hidden=32, heads=4, kv_heads=2, tie=True, window=4096)
    store = Store(tmp_path / "cache")
    engine = Engine(model, llama3_tokenizer, kv_dtype="fp32", model_name="tiny-calibrated", store=store)
    plan = engine.plan(3000)
    kept = json.loads((tmp_path / "cache" / calibration.FILE_NAME).read_text())
    (key, record), = kept.items()
    assert key.startswith("tiny-calibrated|") and record["source"] == "calibration"
    rates = engine.rates()
    assert rates.per_token > 0 and plan.prefill_seconds == pytest.approx(rates.seconds(3000))
    assert store.entries() == []  # the file is not taken for a saved corpus

    again = Engine(model, llama3_tokenizer, kv_dtype="fp32", model_name="tiny-calibrated", store=store)
    assert again.rates() == rates  # read back, not measured again


def test_cpu_chunks_are_sized_from_the_measured_speed(llama3_tokenizer):
    model = tiny_llama("default", vocab=len(llama3_tokenizer), hidden=32, heads=4, kv_heads=2, tie=True, window=4096)
    engine = Engine(model, llama3_tokenizer, kv_dtype="fp32", model_name="tiny-chunks")
    assert engine.adaptive_chunks
    engine.rates()
    # Pretend a token takes 0.4 / 48.5 s: the first chunk is then the 48 tokens that take 0.4 s.
    engine.calibration.rates = Rates(per_token=calibration.CHUNK_TARGET_S / 48.5, per_token_depth=0.0, per_pass=0.0)
    seen = []
    ids = llama3_tokenizer("The ferry leaves at seven. " * 200, add_special_tokens=False)["input_ids"]
    stats = engine.load_corpus(ids, progress=seen.append)
    assert seen[0].done == 0 and seen[0].eta_s == pytest.approx(stats.estimated_s)
    assert seen[1].done == 48
    # Later chunks follow the speed measured so far (whatever this machine does now), in steps of 16.
    steps = [b.done - a.done for a, b in zip(seen, seen[1:])]
    assert all(n % 16 == 0 and n >= calibration.MIN_CHUNK for n in steps[:-1]) and seen[-1].done == stats.tokens
    assert all(p.estimated_total_s == pytest.approx(p.elapsed_s + p.eta_s) for p in seen)


def test_a_measurement_made_while_the_machine_was_busy_does_not_stick(tmp_path):
    kept = calibration.Calibration("demo|cpu", tmp_path)
    kept.update(RATES)
    assert kept.rates.reference_seconds() == pytest.approx(RATES.reference_seconds()) and not kept.rates.noisy
    kept.update(RATES.scaled(4.0))  # one load while four other programs ran
    busy = kept.rates.reference_seconds() / RATES.reference_seconds()
    assert 1.5 < busy < 3.0  # part of the way, not all of it
    assert kept.rates.noisy and kept.rates.low < 1.0 < kept.rates.high
    assert kept.rates.reference_seconds() * kept.rates.low == pytest.approx(RATES.reference_seconds(), rel=1e-6)
    for _ in range(2):
        kept.update(RATES)  # quiet again
    assert kept.rates.reference_seconds() / RATES.reference_seconds() < 1.25
    again = calibration.Calibration("demo|cpu", tmp_path)  # read back with its recent measurements
    assert again.rates == kept.rates and again.recent == kept.recent and len(again.recent) == 4


def test_a_load_estimate_follows_the_machine_within_a_few_chunks():
    # The rates say 4x slower than the machine now runs (a calibration made while it was busy).
    live = LiveEstimate(RATES.scaled(4.0))
    live.trust()
    total, done, depth = 6000, 0, 0
    for _ in range(4):
        chunk = live.chunk_tokens(depth)
        live.record(chunk, depth, RATES.pass_seconds(chunk, depth))
        done = depth = depth + chunk
    truth = RATES.seconds(total, done, chunk)
    assert live.remaining(done, total, chunk) == pytest.approx(truth, rel=0.25)


def test_decode_speed_is_one_pass_plus_the_measured_overhead_and_refits_from_answers():
    rates = Rates(per_token=2e-3, per_token_depth=4e-7, per_pass=0.03, per_decode=0.01)
    assert rates.decode_tokens_per_s(1000) == pytest.approx(1 / (rates.pass_seconds(1, 1000) + 0.01))
    kept = calibration.Calibration("decode-refit")
    kept.update(rates)
    kept.record_decode(0.1, 1000)  # the answer ran at 10 tokens/s
    assert kept.rates.per_decode == pytest.approx((0.01 + 0.1 - rates.pass_seconds(1, 1000)) / 2)


def test_the_demo_engine_plans_the_decode_speed_it_then_runs(demo_model):
    from app.engine.engine import Engine
    from app.protocol import AnswerStats, Settings

    model, tokenizer = demo_model
    engine = Engine(model, tokenizer, model_name="demo")
    ids = tokenizer("The ferry leaves at seven from the north pier. " * 60, add_special_tokens=False)["input_ids"]
    plan = engine.plan(len(engine.prompt_prefix(ids)))
    assert plan.decode_tokens_per_s == pytest.approx(engine.rates().decode_tokens_per_s(plan.tokens))
    engine.load_corpus(ids)
    stats = [p for p in engine.ask("When does the ferry leave?", settings=Settings(max_new_tokens=24))
             if isinstance(p, AnswerStats)][0]
    ratio = plan.decode_tokens_per_s / stats.tokens_per_s
    print(f"decode: planned {plan.decode_tokens_per_s:.1f} tokens/s, measured {stats.tokens_per_s:.1f} ({ratio:.2f}x)")
    assert 1 / 3 < ratio < 3  # a generous bound: the ±25% goal is for benchmarks on a quiet machine
