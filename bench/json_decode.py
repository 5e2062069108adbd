"""What JSON answers cost in decoding: tokens/s of the same engine answering free text and answering under a JSON
schema's grammar (app/engine/grammar.py: llguidance's token mask at every step), alternated in one process.

    python bench/json_decode.py                                   # the CPU demo model (SmolLM2-135M)
    python bench/json_decode.py --model ultralong-1m --random-weights --context 32768   # one GPU, random 8B

Each answer decodes exactly --tokens tokens: the free one with no end-of-answer token, the JSON one under a schema
of one long string field (so it cannot end early). Prints the median tokens/s of each and their ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from app.engine.engine import Engine  # noqa: E402
from app.engine.models import load_model  # noqa: E402
from app.protocol import AnswerStats, JsonFormat, Settings  # noqa: E402

LONG_TEXT = {"type": "object", "properties": {"notes": {"type": "string", "minLength": 100000}},
             "required": ["notes"], "additionalProperties": False}
QUESTION = "Write down everything the documents say about the harbour."


def run(engine: Engine, fmt: JsonFormat | None, tokens: int) -> tuple[float, int]:
    """(tokens/s, tokens) of one answer. Free text runs with no end-of-answer token, so it runs its full length;
    the JSON answer cannot end before its 100,000-character string (its last CLOSING_RESERVE steps try to)."""
    stops = engine.stop_ids
    if fmt is None:
        engine.stop_ids = set()
    try:
        settings = Settings(max_new_tokens=tokens, repetition_guard=False, json=fmt)
        stats = [p for p in engine.ask(QUESTION, (), settings) if isinstance(p, AnswerStats)][0]
    finally:
        engine.stop_ids = stops
    return stats.tokens_per_s, stats.new_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--context", type=int, default=2000, help="corpus tokens before the question")
    parser.add_argument("--tokens", type=int, default=96, help="tokens per answer")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.random_weights:
        from bench.engine import llama3_tokenizer

        model, _ = load_model(args.model, random_weights=True)
        tokenizer = llama3_tokenizer()
    else:
        model, tokenizer = load_model(args.model)
    engine = Engine(model, tokenizer, model_name=args.model)
    text = "The harbour was quiet that morning; the boats came in one by one. " * (args.context // 14 + 1)
    engine.load_corpus(tokenizer.encode(text, add_special_tokens=False)[:args.context])
    fmt = JsonFormat(LONG_TEXT, "notes")
    run(engine, None, 8), run(engine, fmt, 8)  # warm-up: first-call allocations, the grammar's tokenizer
    free, constrained = [], []
    for _ in range(args.repeats):
        free.append(run(engine, None, args.tokens))
        constrained.append(run(engine, fmt, args.tokens))
        print(f"free {free[-1][0]:.2f} tokens/s ({free[-1][1]} tokens); "
              f"JSON {constrained[-1][0]:.2f} tokens/s ({constrained[-1][1]} tokens)", flush=True)
    f, c = statistics.median(r for r, _ in free), statistics.median(r for r, _ in constrained)
    print(f"model {args.model}{' (random weights)' if args.random_weights else ''}, context {args.context:,}, "
          f"vocab {len(tokenizer):,}, {args.repeats} answers each of ~{free[0][1]} / {constrained[0][1]} tokens",
          flush=True)
    print(f"free text {f:.2f} tokens/s; JSON schema {c:.2f} tokens/s; JSON/free time per token {f / c:.3f}", flush=True)


if __name__ == "__main__":
    main()
