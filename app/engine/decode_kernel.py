"""Split-K flash-decoding on the GPU: a few query tokens against the whole cache, bf16 or fp8, in Triton.

It reads fp8 keys and values directly (the per-token scales are applied to the [groups, block] score and
probability tiles, never to whole K/V tiles), and takes the cache length from a device tensor, so a decode
step has fixed shapes and can be captured in a CUDA graph.

Pass 1 gives each (KV head, split, row block) program a contiguous range of keys and writes a partial
output and its log-sum-exp; pass 2 merges the splits. The rows of a KV head are its query heads times its
query tokens, processed together, so each key is read once for all of them (native GQA). Used for decode
(one token) and for a question's tokens against the cached corpus (no mask is needed there).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

SPLITS = 64  # key ranges per KV head: 8 heads x 64 splits = 512 programs, several waves on 132 SMs
BLOCK_N = 64
NUM_WARPS, NUM_STAGES = 4, 3  # Triton's defaults; bench/decode_kernel_sweep.py times the others (BENCHMARKS.md)
LOG2E = 1.4426950408889634


@triton.jit
def _partial(Q, K, V, KS, VS, Length, Out, Lse, qk_scale,
             stride_qh, stride_kh, stride_kn, stride_sh, R, R_PAD,
             BLOCK_G: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr,
             SPLITS: tl.constexpr, FP8: tl.constexpr):
    h = tl.program_id(0)
    split = tl.program_id(1)
    row0 = tl.program_id(2) * BLOCK_G
    length = tl.load(Length)
    per_split = tl.cdiv(tl.cdiv(length, SPLITS), BLOCK_N) * BLOCK_N
    start = split * per_split
    end = tl.minimum(start + per_split, length)

    offs_g = row0 + tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, D)
    offs_n = tl.arange(0, BLOCK_N)
    q = tl.load(Q + h * stride_qh + offs_g[:, None] * D + offs_d[None, :], mask=offs_g[:, None] < R, other=0.0)
    m = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, D], tl.float32)
    k_base = K + h * stride_kh
    v_base = V + h * stride_kh
    for n0 in range(start, end, BLOCK_N):
        n = n0 + offs_n
        valid = n < end
        k = tl.load(k_base + n[:, None] * stride_kn + offs_d[None, :], mask=valid[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k.to(tl.bfloat16)))  # [BLOCK_G, BLOCK_N]
        if FP8:
            s = s * tl.load(KS + h * stride_sh + n, mask=valid, other=0.0).to(tl.float32)[None, :]
        s = tl.where(valid[None, :], s * qk_scale, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(s - m_new[:, None])
        l = l * alpha + tl.sum(p, 1)
        v = tl.load(v_base + n[:, None] * stride_kn + offs_d[None, :], mask=valid[:, None], other=0.0)
        if FP8:
            p = p * tl.load(VS + h * stride_sh + n, mask=valid, other=0.0).to(tl.float32)[None, :]
        acc = acc * alpha[:, None] + tl.dot(p.to(tl.bfloat16), v.to(tl.bfloat16))
        m = m_new

    row = (h * SPLITS + split) * R_PAD + offs_g
    safe_l = tl.where(l > 0, l, 1.0)
    tl.store(Out + row[:, None] * D + offs_d[None, :], acc / safe_l[:, None])
    tl.store(Lse + row, tl.where(l > 0, m + tl.log2(safe_l), float("-inf")))


@triton.jit
def _reduce(Out, Lse, Final, FinalLse, R, R_PAD, D: tl.constexpr, SPLITS: tl.constexpr):
    h = tl.program_id(0)
    r = tl.program_id(1)
    offs_s = tl.arange(0, SPLITS)
    offs_d = tl.arange(0, D)
    rows = (h * SPLITS + offs_s) * R_PAD + r
    lse = tl.load(Lse + rows)
    top = tl.max(lse, 0)
    w = tl.where(lse > float("-inf"), tl.exp2(lse - top), 0.0)
    parts = tl.load(Out + rows[:, None] * D + offs_d[None, :])
    total = tl.sum(w, 0)
    result = tl.sum(parts * w[:, None], 0) / total
    tl.store(Final + (h * R + r) * D + offs_d, result.to(Final.dtype.element_ty))
    tl.store(FinalLse + h * R + r, (top + tl.log2(total)) * 0.6931471805599453)  # natural log


def cached_attention(query: torch.Tensor, layer, length: torch.Tensor, scale: float):
    """query [1, Hq, T, D] against the first `length` (int32 device tensor [1]) keys of `layer`, all visible.

    Returns (out [1, Hq, T, D] in the query dtype, lse [1, Hq, T] fp32, natural log).
    """
    _, hq, t, d = query.shape
    hkv = layer.keys.shape[1]
    rows = (hq // hkv) * t
    block_g = min(64, max(16, triton.next_power_of_2(rows)))  # tl.dot needs at least 16 rows
    row_blocks = triton.cdiv(rows, block_g)
    rows_padded = row_blocks * block_g
    q = query.reshape(hkv, rows, d).contiguous()  # row = group * T + token
    partial = torch.empty(hkv * SPLITS * rows_padded, d, device=query.device, dtype=torch.float32)
    lse = torch.empty(hkv * SPLITS * rows_padded, device=query.device, dtype=torch.float32)
    out = torch.empty(hkv, rows, d, device=query.device, dtype=query.dtype)
    out_lse = torch.empty(hkv, rows, device=query.device, dtype=torch.float32)
    keys, values = layer.keys[0], layer.values[0]  # [H_kv, capacity, D]
    scales_k = layer.key_scales[0] if layer.fp8 else keys
    scales_v = layer.value_scales[0] if layer.fp8 else values
    with torch.cuda.device(query.device):  # Triton launches on the current device: make it the tensors' one
        _partial[(hkv, SPLITS, row_blocks)](
            q, keys, values, scales_k, scales_v, length, partial, lse, scale * LOG2E,
            q.stride(0), keys.stride(0), keys.stride(1), scales_k.stride(0) if layer.fp8 else 0, rows, rows_padded,
            BLOCK_G=block_g, D=d, BLOCK_N=BLOCK_N, SPLITS=SPLITS, FP8=layer.fp8,
            num_warps=NUM_WARPS, num_stages=NUM_STAGES,
        )
        _reduce[(hkv, rows)](partial, lse, out, out_lse, rows, rows_padded, D=d, SPLITS=SPLITS)
    return out.view(1, hq, t, d), out_lse.view(1, hq, t)


def decode_attention(query: torch.Tensor, layer, length: torch.Tensor, scale: float) -> torch.Tensor:
    """One token's attention over the cache (CUDA-graph safe: the length is a device tensor)."""
    return cached_attention(query, layer, length, scale)[0]
