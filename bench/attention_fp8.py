"""fp8 attention on one GPU: the kernels alone, and what it does to a random 8B model's logits.

    python bench/attention_fp8.py --depths 131072,1048576,2097152 --logits 131072 --out fp8.json

--depths   one layer's fp8 cache (quantised per head) at each depth: a 16,384-token prefill chunk through the fp8
           path (FA3 fp8, 16K-key segments merged) against the bf16 path over the same cache (FA3 bf16 on
           dequantised blocks); one decode token through FA3's fp8 `flash_attn_with_kvcache` at several split
           counts against the Triton kernel, with relative errors against exact fp32
--logits   the Llama-3.1-8B architecture with random bf16 weights: a corpus of N random tokens, then 512 question
           tokens; their logits with (fp8 KV per head, fp8 attention) and (fp8 KV, bf16 attention) against
           (bf16 KV, bf16 attention): top-1 agreement and mean KL
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import triton

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from app.engine import attention, attention_backend, fa3_fp8  # noqa: E402
from app.engine.decode_kernel import decode_attention  # noqa: E402
from app.engine.kv_cache import KVCache  # noqa: E402

HQ, HKV, D = 32, 8, 128
CHUNK = 16_384


def bench(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


def filled_layer(depth: int, extra: int):
    """A one-layer fp8 cache quantised per head with `depth` random tokens (first chunk 16K, then 128K blocks)."""
    cache = KVCache([torch.device("cuda")], HKV, D, depth + extra, "fp8")
    cache.quantise_per_head(True)
    lo = 0
    while lo < depth:
        hi = min(depth, lo + (CHUNK if lo == 0 else 131_072))
        k = torch.randn(1, HKV, hi - lo, D, device="cuda", dtype=torch.bfloat16)
        k[:, :, :, 5] *= 8
        cache.update(k, torch.randn_like(k), 0)
        cache.commit()
        lo = hi
    return cache


def exact_decode(q, layer, length: int):
    """fp32 attention of one query [1, Hq, 1, D] over the cache's dequantised keys (what the kernels read)."""
    groups = HQ // HKV
    qf = q.float().reshape(HKV, groups, D) * D**-0.5
    out = torch.zeros(HKV, groups, D, device="cuda")
    m = torch.full((HKV, groups, 1), float("-inf"), device="cuda")
    total = torch.zeros(HKV, groups, 1, device="cuda")
    for lo in range(0, length, 262_144):
        k, v = layer.read(lo, min(length, lo + 262_144))
        s = qf @ k[0].float().transpose(1, 2)
        new_m = torch.maximum(m, s.amax(-1, keepdim=True))
        p, alpha = torch.exp(s - new_m), torch.exp(m - new_m)
        total, out, m = total * alpha + p.sum(-1, keepdim=True), out * alpha + p @ v[0].float(), new_m
    return (out / total).reshape(1, 1, HQ, D)


def kernels(depth: int) -> dict:
    torch.manual_seed(depth)
    cache = filled_layer(depth, CHUNK + 16)
    layer = cache.layers[0]
    row = {"depth": depth}
    q = torch.randn(1, HQ, CHUNK, D, device="cuda", dtype=torch.bfloat16)
    k_new = torch.randn(1, HKV, CHUNK, D, device="cuda", dtype=torch.bfloat16)
    cache.update(k_new, k_new, 0)  # the chunk's own keys, as transformers' update() leaves them
    flops = 4.0 * CHUNK * (depth + CHUNK / 2) * HQ * D
    scale = D**-0.5
    fp8_out = fa3_fp8.prefill(q, layer, depth, scale)
    bf16_out = attention._fa3_prefill(q, k_new, k_new, layer, depth, scale)
    row["prefill_fp8_vs_bf16_path_rel"] = float((fp8_out.float() - bf16_out.float()).norm() / bf16_out.float().norm())
    ms = bench(lambda: fa3_fp8.prefill(q, layer, depth, scale))
    row["prefill_fp8_ms"], row["prefill_fp8_tflops"] = ms, flops / ms / 1e9
    ms = bench(lambda: attention._fa3_prefill(q, k_new, k_new, layer, depth, scale))
    row["prefill_bf16_ms"], row["prefill_bf16_tflops"] = ms, flops / ms / 1e9
    cache.truncate(depth)
    del q, k_new, fp8_out, bf16_out
    q1 = torch.randn(1, HQ, 1, D, device="cuda", dtype=torch.bfloat16)
    length = torch.tensor([depth], dtype=torch.int32, device="cuda")
    want = exact_decode(q1, layer, depth)
    kv_bytes = 2 * depth * HKV * D
    for splits in (16, 32, 64, 128):
        got = fa3_fp8.decode(q1, layer, length, scale, splits)
        row[f"decode_fa3_s{splits}_rel"] = float((got.float() - want).norm() / want.norm())
        ms = bench(lambda: fa3_fp8.decode(q1, layer, length, scale, splits))
        row[f"decode_fa3_s{splits}_ms"], row[f"decode_fa3_s{splits}_tbs"] = ms, kv_bytes / ms / 1e9
    got = decode_attention(q1, layer, length, scale).transpose(1, 2)
    row["decode_triton_rel"] = float((got.float() - want).norm() / want.norm())
    ms = bench(lambda: decode_attention(q1, layer, length, scale))
    row["decode_triton_ms"], row["decode_triton_tbs"] = ms, kv_bytes / ms / 1e9
    print("kernels", json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    del cache, layer
    torch.cuda.empty_cache()
    return row


def _question_logits(model, ids: list[int], question: list[int], kv: str, setting: str):
    """Prefill `ids` in 16K chunks into a fresh cache, then the question: its logits [Tq, V] fp32 and the kernels."""
    config = model.config
    cache = KVCache([torch.device("cuda")] * config.num_hidden_layers, config.num_key_value_heads,
                    config.head_dim, len(ids) + len(question) + 16, kv)
    cache.quantise_per_head(setting == "fp8")
    attention_backend.assign(cache, setting)

    def run(part: list[int], keep: int):
        tokens = torch.tensor([part], device="cuda")
        positions = torch.arange(cache.length, cache.length + len(part), device="cuda").unsqueeze(0)
        with torch.inference_mode():
            out = model(input_ids=tokens, position_ids=positions, past_key_values=cache, kv_cache=cache,
                        use_cache=True, logits_to_keep=keep)
        cache.commit()
        return out.logits[0]

    for lo in range(0, len(ids), CHUNK):
        run(ids[lo:lo + CHUNK], 1)
    logits = run(question, len(question)).float()
    backend = cache.backend.describe()
    del cache
    torch.cuda.empty_cache()
    return logits, backend


def logits_agreement(model, tokens: int, question_tokens: int = 512, seed: int = 0) -> dict:
    """Top-1 agreement and mean KL(reference || variant) of the question's logits, reference bf16 KV + bf16
    attention; variants fp8 KV with bf16 attention and fp8 KV (per head) with fp8 attention."""
    generator = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    ids = torch.randint(1000, vocab - 1000, (tokens,), generator=generator).tolist()
    question = torch.randint(1000, vocab - 1000, (question_tokens,), generator=generator).tolist()
    reference, _ = _question_logits(model, ids, question, "bf16", "bf16")
    ref_log = torch.log_softmax(reference, -1)
    rows = {"tokens": tokens, "question_tokens": question_tokens}
    for name, kv, setting in (("fp8kv_bf16attn", "fp8", "bf16"), ("fp8kv_fp8attn", "fp8", "fp8")):
        logits, kernels_used = _question_logits(model, ids, question, kv, setting)
        log = torch.log_softmax(logits, -1)
        rows[name] = {"top1_agreement": float((logits.argmax(-1) == reference.argmax(-1)).float().mean()),
                      "kl_mean": float((ref_log.exp() * (ref_log - log)).sum(-1).mean()),
                      "kl_max": float((ref_log.exp() * (ref_log - log)).sum(-1).max()),
                      "attention": kernels_used}
        del logits, log
        torch.cuda.empty_cache()
    print("logits", json.dumps(rows), flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--depths", default="131072,1048576")
    parser.add_argument("--logits", default="", help="corpus lengths for the random-8B logits comparison")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    results = {"device": torch.cuda.get_device_name(0), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "kernels": [kernels(int(d)) for d in filter(None, args.depths.split(","))]}
    if args.logits:
        from app.engine.models import load_model

        model, _ = load_model("ultralong-1m", random_weights=True)
        results["logits"] = [logits_agreement(model, int(n)) for n in args.logits.split(",")]
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
