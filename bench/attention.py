"""Attention kernels on one GPU: prefill chunk against L cached keys, and one decode token, bf16 and fp8.

    python bench/attention.py --depths 262144,1048576
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import triton

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from app.engine import attention, attention_backend  # noqa: E402
from app.engine.attention import omnibus_attention  # noqa: E402
from app.engine.decode_kernel import cached_attention  # noqa: E402
from app.engine.kv_cache import KVCache  # noqa: E402

HQ, HKV, D = 32, 8, 128


def bench(fn) -> float:
    return triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--depths", default="262144,1048576")
    parser.add_argument("--chunks", default="16384")
    args = parser.parse_args()
    torch.manual_seed(0)
    module = type("M", (), {"layer_idx": 0})()
    scale = D**-0.5
    for depth, t in [(d, c) for c in map(int, args.chunks.split(",")) for d in map(int, args.depths.split(","))]:
        for storage in ("bf16", "fp8"):
            cache = KVCache([torch.device("cuda", 0)], HKV, D, depth + t, storage)
            layer = cache.layers[0]
            for start in range(0, depth + t, 65536):  # fill in blocks to bound temporaries
                n = min(65536, depth + t - start)
                layer.write(start, torch.randn(1, HKV, n, D, device="cuda", dtype=torch.bfloat16),
                            torch.randn(1, HKV, n, D, device="cuda", dtype=torch.bfloat16))
            cache.length = depth
            q = torch.randn(1, HQ, t, D, device="cuda", dtype=torch.bfloat16)
            k_new = torch.randn(1, HKV, t, D, device="cuda", dtype=torch.bfloat16)
            flops = 4.0 * t * (depth + t / 2) * HQ * D
            cache.pending = t
            layer.write(depth, k_new, k_new)  # the chunk's own keys, as transformers' update() leaves them
            for kernel in ("fa3", "flex/flash"):
                attention_backend._fa3 = None if kernel == "fa3" else False
                cache.backend = None  # chosen again, with this kernel, on the next call
                if kernel == "fa3" and attention.fa3_kernel() is None:
                    print("  FlashAttention-3 not available here", flush=True)
                    continue
                ms = bench(lambda: omnibus_attention(module, q, k_new, k_new, None, scale, kv_cache=cache))
                print(f"prefill chunk {t} at depth {depth:,} {storage}, {kernel}: {ms:.1f} ms, "
                      f"{flops / ms / 1e9:.0f} TFLOP/s", flush=True)
            attention_backend._fa3 = None
            if storage == "bf16":
                grouped = q.reshape(1, HKV, (HQ // HKV) * t, D)
                k_past, v_past = layer.keys[:, :, :depth], layer.values[:, :, :depth]
                past_flops = 4.0 * t * depth * HQ * D
                flash = attention._flash(grouped, k_past, v_past, False, scale)
                flex = attention._flex_unmasked(grouped, k_past, v_past, scale)
                if flex is not None:
                    err = float((flex[0].float() - flash[0].float()).norm() / flash[0].float().norm())
                    lse_err = float((flex[1] - flash[1]).abs().max())
                    ms_flex = bench(lambda: attention._flex_unmasked(grouped, k_past, v_past, scale))
                    print(f"  past part, FlexAttention: {ms_flex:.1f} ms, {past_flops / ms_flex / 1e9:.0f} TFLOP/s "
                          f"(vs flash: rel err {err:.1e}, max lse diff {lse_err:.1e})")
                ms_past = bench(lambda: attention._flash(grouped, k_past, v_past, False, scale))
                print(f"  past part, SDPA flash: {ms_past:.1f} ms, {past_flops / ms_past / 1e9:.0f} TFLOP/s")
                k_all, v_all = layer.keys[:, :, : depth + t], layer.values[:, :, : depth + t]
                from torch.nn.attention.bias import causal_lower_right

                mask = causal_lower_right(t, depth + t)
                ms_sdpa = bench(lambda: torch.nn.functional.scaled_dot_product_attention(
                    q, k_all, v_all, attn_mask=mask, enable_gqa=True))
                print(f"  SDPA causal_lower_right + enable_gqa: {ms_sdpa:.1f} ms, {flops / ms_sdpa / 1e9:.0f} TFLOP/s")
            k_all, v_all = layer.read(0, depth)  # what a cast-the-whole-cache path (the yardstick's) reads
            for t_q in (1, 64):
                q1 = torch.randn(1, HQ, t_q, D, device="cuda", dtype=torch.bfloat16)
                length = torch.tensor([depth], dtype=torch.int32, device="cuda")
                ref = torch.nn.functional.scaled_dot_product_attention(q1, k_all, v_all, scale=scale, enable_gqa=True)
                got = cached_attention(q1, layer, length, scale)[0]
                err = float((got.float() - ref.float()).norm() / ref.float().norm())
                ms_tri = bench(lambda: cached_attention(q1, layer, length, scale))
                if storage == "fp8":
                    ms_ref = bench(lambda: torch.nn.functional.scaled_dot_product_attention(
                        q1, *layer.read(0, depth), scale=scale, enable_gqa=True))
                else:
                    ms_ref = bench(lambda: torch.nn.functional.scaled_dot_product_attention(
                        q1, k_all, v_all, scale=scale, enable_gqa=True))
                kv_bytes = 2 * depth * HKV * D * (1 if storage == "fp8" else 2)
                print(f"{t_q} query token(s) at depth {depth:,} {storage}: triton {ms_tri:.3f} ms "
                      f"({kv_bytes / ms_tri / 1e9:.2f} TB/s), SDPA{' after casting the cache' if storage == 'fp8' else ''}"
                      f" {ms_ref:.3f} ms, rel err {err:.2e}", flush=True)
            del k_all, v_all
            del cache, layer, q, k_new
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
