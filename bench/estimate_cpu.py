"""CPU goals of issues 17 and 28 with the demo model: load-time estimate against the actual time, Cancel and Stop
latency, the first word of the 4th question of a conversation against the 1st's, and how well the model of one
pass (app/calibration.py) predicts passes of other sizes and depths.

    .venv/bin/python bench/estimate_cpu.py --part estimate --sizes 200,1000,4000 --busy 1
    .venv/bin/python bench/estimate_cpu.py --part passes
    .venv/bin/python bench/estimate_cpu.py --part cancel
    .venv/bin/python bench/estimate_cpu.py --part conversation --corpus 4000 --answer 128

`--busy N` repeats the loads while N busy-loop processes compete for the cores (killed afterwards).
Prints one JSON object per measurement.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.engine.cpu_share import STALE_S  # noqa: E402
from app.engine.engine import Engine  # noqa: E402
from app.engine.models import load_model  # noqa: E402
from app.errors import Cancelled  # noqa: E402
from app.prompt import Turn  # noqa: E402
from app.protocol import Settings  # noqa: E402


def real_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def load_average() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def short(rates) -> dict:
    """The three costs of a pass (ms) and the decode overhead, for reading."""
    return {"per_pass_ms": round(rates.per_pass * 1e3, 2), "per_token_ms": round(rates.per_token * 1e3, 3),
            "per_1k_depth_ms": round(rates.per_token_depth * 1e6, 3), "per_decode_ms": round(rates.per_decode * 1e3, 2),
            "source": rates.source}


def measure_load(engine: Engine, ids: list[int], label: str) -> None:
    engine.drop_cache()
    before = engine.estimate_seconds(len(engine.prompt_prefix(ids)))
    reports = []
    started = time.perf_counter()
    stats = engine.load_corpus(ids, progress=lambda p: reports.append((time.perf_counter() - started, p)))
    actual = time.perf_counter() - started

    def corrected(fraction):  # the estimated total shown once `fraction` of the tokens were read
        for at, p in reports:
            if p.done >= fraction * p.total and p.tokens_per_s > 0:
                return round(p.estimated_total_s, 2), round(at, 2)
        return None, None

    first_at = reports[0][0] if reports else None
    planned_decode = engine.plan(stats.tokens).decode_tokens_per_s  # the plan line's decode rate (issue 28)
    answer = [p for p in engine.ask("Summarise the text above.", (), Settings(max_new_tokens=48))
              if not isinstance(p, str)][-1]
    chunks = [b.done - a.done for (_, a), (_, b) in zip(reports, reports[1:])]
    emit(part="estimate", machine=label, load_average=load_average(), threads=torch.get_num_threads(),
         tokens=stats.tokens, actual_s=round(actual, 2),
         estimate_before_s=round(before, 2), ratio_before=round(before / actual, 2),
         **{f"estimate_at_{int(f * 100)}pct": dict(zip(("total_s", "at_s"), corrected(f))) for f in (0.1, 0.25, 0.5)},
         ratio_at_25pct=round((corrected(0.25)[0] or 0) / actual, 2),
         decode_planned=round(planned_decode, 1), decode_measured=round(answer.tokens_per_s, 1),
         decode_ratio=round(planned_decode / answer.tokens_per_s, 2) if answer.tokens_per_s else None,
         first_progress_s=round(first_at, 3) if first_at is not None else None,
         chunks=f"{min(chunks)}-{max(chunks)} tokens" if chunks else "", longest_gap_s=round(max(
             b - a for (a, _), (b, _) in zip(reports, reports[1:])), 2) if len(reports) > 1 else None,
         rates_after=short(engine.rates()))


def burners(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def stop_burners(procs) -> None:
    for proc in procs:
        proc.kill()
        proc.wait()


def part_estimate(engine, ids, args) -> None:
    started = time.perf_counter()
    engine.rates()
    emit(part="calibration", seconds=round(time.perf_counter() - started, 3), load_average=load_average(),
         rates=short(engine.rates()))
    for size in args.sizes:
        measure_load(engine, ids[:size], "no busy-loop added (see load_average)")
    if args.busy:
        procs = burners(args.busy)
        time.sleep(STALE_S + 0.5)  # the machine is busy before the estimate, as when a person opens the app
        try:
            for size in args.sizes:
                measure_load(engine, ids[:size], f"busy ({args.busy} busy-loop process)")
        finally:
            stop_burners(procs)


def part_passes(engine, ids, args) -> None:
    """Passes of several sizes and depths, each timed `--trials` times in interleaved rounds (fastest and median
    kept), against what the calibrated rates predict: where the model of a pass holds and where it does not."""
    started = time.perf_counter()
    rates = engine.rates()
    emit(part="calibration", seconds=round(time.perf_counter() - started, 3), load_average=load_average(),
         rates=short(rates))
    shapes = [(1, 0), (16, 0), (32, 0), (64, 0), (128, 0), (256, 0), (512, 0), (32, 2048), (128, 2048),
              (64, 4096), (128, 4096)]
    times = {shape: [] for shape in shapes}
    for _ in range(args.trials):
        for n, d in shapes:
            times[(n, d)].append(engine.costs.timed_pass(n, d))
    for (n, d), measured in times.items():
        measured.sort()
        predicted = rates.pass_seconds(n, d)
        median = measured[len(measured) // 2]
        emit(part="pass", tokens=n, depth=d, fastest_s=round(measured[0], 4), median_s=round(median, 4),
             predicted_s=round(predicted, 4), ratio_fastest=round(predicted / measured[0], 2),
             ratio_median=round(predicted / median, 2), load_average=load_average())


def part_cancel(engine, ids, args) -> None:
    for trial in range(args.trials):
        engine.drop_cache()
        stop, outcome = threading.Event(), {}

        def run():
            try:
                engine.load_corpus(ids[:4000], cancel=stop)
                outcome["result"] = "finished"
            except Cancelled as err:
                outcome["result"] = str(err)
            outcome["at"] = time.perf_counter()

        thread = threading.Thread(target=run)
        thread.start()
        time.sleep(2.0 + trial * 0.7)
        pressed = time.perf_counter()
        stop.set()
        thread.join()
        emit(part="cancel-load", trial=trial, latency_s=round(outcome["at"] - pressed, 3), result=outcome["result"])
    engine.load_corpus(ids[:2000])
    for trial in range(args.trials):
        stop = threading.Event()
        stream = engine.ask("Explain the execution model in detail.", (), Settings(max_new_tokens=200), cancel=stop)
        pieces = 0
        pressed = None
        for piece in stream:
            pieces += 1
            if pieces == 5 + 3 * trial:
                pressed = time.perf_counter()
                stop.set()
        ended = time.perf_counter()
        emit(part="stop-answer", trial=trial, latency_s=round(ended - pressed, 3) if pressed else None,
             finish_reason=piece.finish_reason, new_tokens=piece.new_tokens)


def part_conversation(engine, ids, args) -> None:
    questions = ["What does the documentation say about exceptions?", "And about the with statement?",
                 "How are names bound?", "What is a code block?"]
    settings = Settings(max_new_tokens=args.answer, repetition_guard=False)  # full-length answers, every time
    for mode in ("kept in the cache", "rolled back to the corpus (before issue 17)"):
        engine.drop_cache()
        engine.load_corpus(ids[:args.corpus])
        history = []
        for i, question in enumerate(questions):
            if mode.startswith("rolled"):
                del engine.sequence.conversation_ids[:]
                engine.cache.truncate(len(engine.cached_ids))
            pieces = list(engine.ask(question, history, settings))
            stats = pieces.pop()
            history.append(Turn(question, "".join(pieces)))
            emit(part="conversation", mode=mode, question=i + 1, ttft_s=round(stats.ttft_s, 2),
                 reread_tokens=stats.reread_tokens, reused_tokens=stats.reused_tokens, new_tokens=stats.new_tokens,
                 prompt_tokens=stats.prompt_tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["estimate", "passes", "cancel", "conversation"], required=True)
    parser.add_argument("--sizes", default="3000,4500,6000", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--busy", type=int, default=0)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--corpus", type=int, default=4000)
    parser.add_argument("--answer", type=int, default=128)
    args = parser.parse_args()
    model, tokenizer = load_model("demo")
    engine = Engine(model, tokenizer, model_name="demo")
    ids = tokenizer(real_text(), add_special_tokens=False)["input_ids"]
    parts = {"estimate": part_estimate, "passes": part_passes, "cancel": part_cancel, "conversation": part_conversation}
    parts[args.part](engine, ids, args)


if __name__ == "__main__":
    main()
