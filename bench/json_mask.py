"""The per-token cost of a JSON-schema token mask, llguidance against xgrammar, over the real Llama-3 vocabulary
(128,256 tokens) and the demo model's (49,152).

A valid answer to a small extraction schema is tokenized; then, token by token, each library computes the mask of
allowed next tokens and takes the token. Reported: the grammar's build time and the median and 90th-percentile
time of one step (mask + take), in microseconds. Run one library per process so their imports do not mix:

    python bench/json_mask.py llguidance
    python bench/json_mask.py xgrammar        # needs xgrammar and apache-tvm-ffi importable
    python bench/json_mask.py omnibus         # Omnibus's whole added step: mask, applied to the logits, take
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SCHEMA = {"type": "object", "properties": {
    "people": {"type": "array", "items": {"type": "object", "properties": {
        "name": {"type": "string"}, "role": {"type": "string"}, "year": {"type": "integer"}},
        "required": ["name", "role", "year"], "additionalProperties": False}},
    "summary": {"type": "string"}}, "required": ["people", "summary"], "additionalProperties": False}
ANSWER = {"people": [{"name": "Ada Lovelace", "role": "mathematician", "year": 1843},
                     {"name": "Charles Babbage", "role": "engineer", "year": 1837},
                     {"name": "Luigi Menabrea", "role": "author of the memoir", "year": 1842}],
          "summary": "The notes on the Analytical Engine describe the first published algorithm for a machine."}


def tokenizers():
    from app.engine.models import load_model
    from ingest import load_tokenizer

    yield "Llama-3 (128,256)", load_tokenizer()
    yield "SmolLM2 demo (49,152)", load_model("demo")[1]


def run_llguidance(tokenizer, ids):
    import llguidance
    import llguidance.hf
    import llguidance.torch

    started = time.perf_counter()
    lltok = llguidance.hf.from_tokenizer(tokenizer)
    tok_s = time.perf_counter() - started
    started = time.perf_counter()
    grammar = llguidance.LLMatcher.grammar_from_json_schema(SCHEMA, defaults={"whitespace_flexible": False})
    matcher = llguidance.LLMatcher(lltok, grammar)
    build_s = time.perf_counter() - started
    mask = llguidance.torch.allocate_token_bitmask(1, lltok.vocab_size)
    steps = []
    for token in ids:
        started = time.perf_counter()
        llguidance.torch.fill_next_token_bitmask(matcher, mask)
        assert matcher.consume_token(token), matcher.get_error()
        steps.append(time.perf_counter() - started)
    assert matcher.is_accepting(), "the answer did not complete the grammar"
    return tok_s, build_s, steps


def run_xgrammar(tokenizer, ids):
    import xgrammar

    started = time.perf_counter()
    info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer))
    compiler = xgrammar.GrammarCompiler(info)
    tok_s = time.perf_counter() - started
    started = time.perf_counter()
    compiled = compiler.compile_json_schema(json.dumps(SCHEMA), any_whitespace=False, separators=(",", ":"))
    matcher = xgrammar.GrammarMatcher(compiled)
    build_s = time.perf_counter() - started
    mask = xgrammar.allocate_token_bitmask(1, info.vocab_size)
    steps = []
    for token in ids:
        started = time.perf_counter()
        matcher.fill_next_token_bitmask(mask)
        assert matcher.accept_token(token)
        steps.append(time.perf_counter() - started)
    assert matcher.is_completed(), "the answer did not complete the grammar"
    return tok_s, build_s, steps


def run_omnibus(tokenizer, ids):
    """The whole step Omnibus adds to decoding (app.engine.grammar): llguidance's mask, unpacked and applied to
    float32 logits [V] on the CPU, then the token taken."""
    import torch

    from app.engine.grammar import JsonConstraint
    from app.protocol import JsonFormat

    started = time.perf_counter()
    constraint = JsonConstraint(tokenizer, JsonFormat(SCHEMA), {tokenizer.convert_tokens_to_ids(t) for t in ("<|eot_id|>", "<|im_end|>") if t in tokenizer.get_vocab()}, budget=10_000)
    build_s = time.perf_counter() - started
    logits = torch.randn(len(tokenizer))
    steps = []
    for token in ids:
        started = time.perf_counter()
        constraint.restrict(logits)
        constraint.take(token)
        steps.append(time.perf_counter() - started)
    return 0.0, build_s, steps


def main(library: str) -> None:
    run = {"llguidance": run_llguidance, "xgrammar": run_xgrammar, "omnibus": run_omnibus}[library]
    text = json.dumps(ANSWER, separators=(",", ":"))
    for name, tokenizer in tokenizers():
        ids = tokenizer.encode(text, add_special_tokens=False)
        run(tokenizer, ids)  # warm-up (caches, first-call allocations)
        tok_s, build_s, steps = run(tokenizer, ids)
        steps_us = sorted(s * 1e6 for s in steps)
        print(f"{library:10} {name:22} tokenizer {tok_s * 1e3:7.1f} ms  grammar {build_s * 1e3:7.1f} ms  "
              f"{len(ids)} steps: median {statistics.median(steps_us):7.1f} us  "
              f"p90 {steps_us[int(len(steps_us) * 0.9)]:7.1f} us  max {steps_us[-1]:8.1f} us  "
              f"mean {statistics.mean(steps_us):7.1f} us", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "llguidance")
