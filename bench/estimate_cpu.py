"""CPU goals of issue 17 with the demo model: load-time estimate against the actual time, Cancel and Stop
latency, and the first word of the 4th question of a conversation against the 1st's.

    .venv/bin/python bench/estimate_cpu.py --part estimate --sizes 3000,4500,6000 --busy 1
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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
    emit(part="estimate", machine=label, tokens=stats.tokens, actual_s=round(actual, 2),
         estimate_before_s=round(before, 2), ratio_before=round(before / actual, 2),
         **{f"estimate_at_{int(f * 100)}pct": dict(zip(("total_s", "at_s"), corrected(f))) for f in (0.1, 0.25, 0.5)},
         ratio_at_25pct=round((corrected(0.25)[0] or 0) / actual, 2),
         decode_planned=round(planned_decode, 1), decode_measured=round(answer.tokens_per_s, 1),
         decode_ratio=round(planned_decode / answer.tokens_per_s, 2) if answer.tokens_per_s else None,
         first_progress_s=round(first_at, 3) if first_at is not None else None,
         chunks=f"{min(chunks)}-{max(chunks)} tokens" if chunks else "", longest_gap_s=round(max(
             b - a for (a, _), (b, _) in zip(reports, reports[1:])), 2) if len(reports) > 1 else None)


def burners(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def stop_burners(procs) -> None:
    for proc in procs:
        proc.kill()
        proc.wait()


def part_estimate(engine, ids, args) -> None:
    started = time.perf_counter()
    engine.rates()
    emit(part="calibration", seconds=round(time.perf_counter() - started, 3), rates=vars(engine.rates()))
    for size in args.sizes:
        measure_load(engine, ids[:size], "quiet")
    if args.busy:
        procs = burners(args.busy)
        try:
            for size in args.sizes:
                measure_load(engine, ids[:size], f"busy ({args.busy} busy-loop process)")
        finally:
            stop_burners(procs)


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
    parser.add_argument("--part", choices=["estimate", "cancel", "conversation"], required=True)
    parser.add_argument("--sizes", default="3000,4500,6000", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--busy", type=int, default=0)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--corpus", type=int, default=4000)
    parser.add_argument("--answer", type=int, default=128)
    args = parser.parse_args()
    model, tokenizer = load_model("demo")
    engine = Engine(model, tokenizer, model_name="demo")
    ids = tokenizer(real_text(), add_special_tokens=False)["input_ids"]
    {"estimate": part_estimate, "cancel": part_cancel, "conversation": part_conversation}[args.part](engine, ids, args)


if __name__ == "__main__":
    main()
