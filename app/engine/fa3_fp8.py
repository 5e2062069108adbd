"""fp8 attention through FlashAttention-3 (`fa3-fwd`, Hopper), read straight from an fp8 cache quantised per head.

The cache's keys and values are passed to the kernel as they are stored (views, no dequantised copy); their one
scale per KV head goes in as the kernel's descale. The query is quantised here, with one scale per KV head's
group of query heads.

Prefill: a chunk of T queries attends to its own keys causally, then to the cached keys in segments of at most
SEGMENT_TOKENS, merged through their log-sum-exp in fp32. Short segments bound how many products one fp8
accumulation sums: vLLM saw upstream FA3's fp8 path lose needles on a real Llama-3.1-8B at 128K until its fork
accumulated in two levels, so no single call here sums more than 16K keys.

Decode: one token through `flash_attn_with_kvcache` with split-KV (the splits merged by FA3 in fp32); the
cache length comes from a device tensor, so the step can be captured in a CUDA graph.
"""

from __future__ import annotations

import logging

import torch

from app.engine.kv_cache import FP8, FP8_MAX
from app.engine.merge import merge as merge_attention

log = logging.getLogger(__name__)

SEGMENT_TOKENS = 16_384  # cached keys per fp8 kernel call in prefill
DECODE_SPLITS = 16  # key ranges per KV head in a decode step (FA3 merges them)


def _interface():
    from fa3_fwd_interface import flash_attn_func, flash_attn_with_kvcache

    return flash_attn_func, flash_attn_with_kvcache


def quantize_query(q: torch.Tensor, kv_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """q [B, T, Hq, D] -> (fp8 [B, T, Hq, D] contiguous, descale [B, H_kv] fp32): one scale per KV head's group."""
    b, t, hq, d = q.shape
    grouped = q.unflatten(2, (kv_heads, hq // kv_heads)).float()  # [B, T, H_kv, groups, D]
    descale = grouped.abs().amax(dim=(1, 3, 4)).clamp(min=1e-8) / FP8_MAX  # [B, H_kv]
    q8 = (grouped / descale[:, None, :, None, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q8.flatten(2, 3).contiguous(), descale.contiguous()


def merge(acc: torch.Tensor, acc_lse: torch.Tensor, out: torch.Tensor, lse: torch.Tensor):
    """Combine two softmax attentions over disjoint keys: acc [B, T, H, D] fp32 and out [B, T, H, D] (any float
    dtype), with their log-sum-exps [B, H, T]. Returns (fp32 out, lse): `app.engine.merge`, in this layout."""
    return merge_attention(acc, acc_lse, out, lse, layout="bthd")


_merge_fused = None  # `merge` compiled into one kernel on first use; False where compiling failed


def _merge(acc, acc_lse, out, lse):
    global _merge_fused
    if _merge_fused is None:
        _merge_fused = torch.compile(merge, dynamic=True)
    if _merge_fused is not False:
        try:
            return _merge_fused(acc, acc_lse, out, lse)
        except Exception as err:  # no Triton/inductor here: the same arithmetic, unfused
            log.warning("compiling the fp8 attention merge failed (%s: %s); merging unfused, ~5%% slower",
                        type(err).__name__, err)
            _merge_fused = False
    return merge(acc, acc_lse, out, lse)


def prefill(query: torch.Tensor, layer, length: int, scale: float) -> torch.Tensor:
    """A prefill chunk's attention over an fp8 layer quantised per head: out [B, T, Hq, D] in the query dtype.

    query [B, Hq, T, D]; the chunk's own keys are already in the cache at `length`..`length + T`.
    """
    flash_attn_func, _ = _interface()
    t = query.shape[2]
    q8, q_descale = quantize_query(query.transpose(1, 2), layer.keys.shape[1])
    keys, values = layer.keys.transpose(1, 2), layer.values.transpose(1, 2)  # [1, capacity, H_kv, D] views
    k_descale, v_descale = layer.descales[0], layer.descales[1]  # [1, H_kv]

    def attend(lo: int, hi: int, causal: bool):
        return flash_attn_func(q8, keys[:, lo:hi], values[:, lo:hi], softmax_scale=scale, causal=causal,
                               q_descale=q_descale, k_descale=k_descale, v_descale=v_descale,
                               return_attn_probs=True)

    out, lse = attend(length, length + t, True)  # its own keys, causally (bottom-right aligned)
    if not length:
        return out.to(query.dtype)
    acc = out.float()
    for lo in range(0, length, SEGMENT_TOKENS):
        o, s = attend(lo, min(lo + SEGMENT_TOKENS, length), False)
        acc, lse = _merge(acc, lse, o, s)
    return acc.to(query.dtype)


def decode(query: torch.Tensor, layer, length: torch.Tensor, scale: float, splits: int = DECODE_SPLITS):
    """One token's attention over an fp8 layer quantised per head: query [1, Hq, 1, D], `length` the keys to
    attend (int32 device tensor [1], the new one included). Returns [1, 1, Hq, D] in the query dtype."""
    _, flash_attn_with_kvcache = _interface()
    q8, q_descale = quantize_query(query.transpose(1, 2), layer.keys.shape[1])
    out = flash_attn_with_kvcache(q8, layer.keys.transpose(1, 2), layer.values.transpose(1, 2),
                                  cache_seqlens=length, q_descale=q_descale, k_descale=layer.descales[0],
                                  v_descale=layer.descales[1], softmax_scale=scale, num_splits=splits,
                                  pack_gqa=True)
    return out.to(query.dtype)
