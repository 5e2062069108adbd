"""torch's CPU threads fitted to the cores other programs leave free (app/engine/cpu_share.py).

Beside one busy program on a 2-core machine, two OpenMP threads wait for each other on every operation: a demo
load ran 15.8 s with two threads and 4.0 s with one (2026-12-05). These tests start real busy-loop processes."""

import subprocess
import sys
import time

import pytest
import torch

from app.engine.cpu_share import CpuShare
from app.engine.engine import Engine
from test_engine_helpers import tiny_llama

share = CpuShare()
needs_cores = pytest.mark.skipif(share.fixed or len(share.cores) < 2 or share.max_threads < 2,
                                 reason="needs 2+ cores, /proc and torch threads not fixed by OMP_NUM_THREADS")


@pytest.fixture
def busy_programs():
    """Busy-loop processes on all but one of this process's cores, stopped afterwards."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in share.cores[1:]]
    time.sleep(0.5)  # running, not starting
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()


@needs_cores
def test_others_use_is_seen_and_leaves_one_thread(busy_programs):
    fresh = CpuShare()
    others = fresh.others_cores()
    assert others >= len(busy_programs) * 0.7  # each busy loop holds most of a core
    assert fresh.threads_now() == 1


def test_this_process_own_work_is_not_counted_as_others():
    fresh = CpuShare()
    fresh.others_cores()
    started = time.monotonic()
    while time.monotonic() - started < 0.4:  # this process keeps one core busy
        pass
    assert fresh.others_cores(wait=False) < 0.6 or fresh.fixed


@needs_cores
def test_a_load_beside_a_busy_program_runs_one_thread_and_uses_that_speed(llama3_tokenizer, busy_programs):
    model = tiny_llama("default", vocab=len(llama3_tokenizer), hidden=32, heads=4, kv_heads=2, tie=True, window=4096)
    engine = Engine(model, llama3_tokenizer, kv_dtype="fp32", model_name="tiny-threads")
    seen = []
    model.model.layers[0].register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    ids = llama3_tokenizer("The ferry leaves at seven. " * 100, add_special_tokens=False)["input_ids"]
    running = torch.get_num_threads()
    try:
        plan = engine.plan(len(engine.prompt_prefix(ids)))
        assert set(engine.costs.calibrations) == {1}  # the estimate is the one-thread speed, measured at one
        assert plan.prefill_seconds == pytest.approx(engine.costs.calibrations[1].rates.seconds(plan.tokens))
        seen.clear()
        engine.load_corpus(ids, plan=plan)
        assert seen and set(seen) == {1}
    finally:
        torch.set_num_threads(running)
