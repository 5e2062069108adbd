"""Attention over the preallocated KV cache, registered with transformers as "omnibus".

A pass of T new tokens at sequence position L attends in two parts, merged exactly through their
log-sum-exp:
- its own T keys, causally (a square mask, handled by the kernel's `is_causal`);
- the L cached keys, all visible, so no mask at all. The query heads that share a KV head are folded
  into the query length ([B, H_kv, groups*T, D]), which gives native GQA without expanding K/V to every
  query head.

No q×kv mask is ever built. fp8 caches are dequantised one block of keys at a time, so memory per pass
stays bounded whatever the context length.
"""

from __future__ import annotations

import logging
import os

import torch
from transformers import AttentionInterface

log = logging.getLogger(__name__)

NAME = "omnibus"
FP8_BLOCK_TOKENS = 65_536  # keys dequantised at once when the cache is fp8
FEW_ROWS = 1024  # up to this many (query head x token) rows per KV head, the Triton split-K kernel is used


_flex = None  # compiled FlexAttention, built on first use; False once it failed here


def _flex_unmasked(q, k, v, scale: float):
    """FlexAttention without a mask (compiled once, dynamic key length): (out, lse) or None if unavailable."""
    global _flex
    if _flex is None and os.environ.get("OMNIBUS_FLEX", "1") == "1":
        try:
            from torch.nn.attention.flex_attention import flex_attention

            _flex = torch.compile(flex_attention, dynamic=True)
        except Exception as err:  # an old torch or no Triton: the flash path serves
            log.warning("FlexAttention unavailable (%s); using SDPA flash", err)
            _flex = False
    if not _flex:
        return None
    try:
        out, lse = _flex(q, k, v, scale=scale, return_lse=True)
    except Exception as err:
        log.warning("FlexAttention failed (%s); using SDPA flash from now on", err)
        _flex = False
        return None
    return out, lse


def _flash(q, k, v, causal: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention returning (out [B, H, Tq, D], logsumexp [B, H, Tq] fp32); q, k, v share head counts."""
    if q.is_cuda:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, False, scale=scale)[:2]
    else:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, scale=scale)
    return out, lse[..., : q.shape[2]]


def _merge(out_a, lse_a, out_b, lse_b):
    """Combine two softmax attentions over disjoint key sets (fp32 result)."""
    lse = torch.logaddexp(lse_a, lse_b)
    out = out_a.float() * torch.exp(lse_a - lse).unsqueeze(-1) + out_b.float() * torch.exp(lse_b - lse).unsqueeze(-1)
    return out, lse


def attend_cached(query, layer, length: int, scale: float, block: int | None = None):
    """Attention of query [B, Hq, T, D] over a layer's first `length` cached keys, all visible.

    Returns (out [B, Hq, T, D], lse [B, Hq, T]), or (None, None) when the cache is empty.
    """
    if length == 0:
        return None, None
    if hasattr(layer, "shards"):  # sequence-parallel: every shard's device works at once, merged here
        return _attend_shards(query, layer, length, scale)
    b, hq, t, d = query.shape
    hkv = layer.keys.shape[1]
    if query.is_cuda and (hq // hkv) * t <= FEW_ROWS:  # a question's few tokens: read the cache once, as stored
        from app.engine.decode_kernel import cached_attention

        # a fill kernel, not a host-to-device copy: nothing here waits for the GPU
        return cached_attention(query, layer, torch.full((1,), length, dtype=torch.int32, device=query.device), scale)
    grouped = query.reshape(b, hkv, (hq // hkv) * t, d)  # [B, H_kv, groups*T, D]
    # On GPUs the keys go in contiguous blocks to FlexAttention, which beats flash there (383 vs 337 TFLOP/s at
    # 256K on an H100) but not on strided views of the whole cache (177 vs 354): see BENCHMARKS.md. Copying a
    # bf16 block costs ~1% of the attention it feeds. On CPUs, bf16/fp32 views go to the flash kernel whole.
    use_flex = query.is_cuda and os.environ.get("OMNIBUS_FLEX", "1") == "1"
    block = block or (FP8_BLOCK_TOKENS if layer.fp8 or use_flex else length)
    out = lse = None
    for start in range(0, length, block):
        k, v = layer.read(start, min(start + block, length))
        if use_flex and not layer.fp8:
            k, v = k.contiguous(), v.contiguous()
        o, s = (use_flex and _flex_unmasked(grouped, k, v, scale)) or _flash(grouped, k, v, False, scale)
        out, lse = (o, s) if out is None else _merge(out, lse, o, s)
    return out.reshape(b, hq, t, d), lse.reshape(b, hq, t)


def _attend_shards(query, layer, length: int, scale: float):
    """Attention over a position-sharded layer: the query goes to each shard's device, the partial results
    (out, lse) come back and merge. Launches are asynchronous, so the devices compute concurrently."""
    parts = []
    for shard, lo, hi, _ in layer.spans(0, length):
        parts.append(attend_cached(query.to(shard.keys.device), shard, hi, scale))  # shards start at 0 locally
    out = lse = None
    for o, s in parts:
        o, s = o.to(query.device), s.to(query.device)
        out, lse = (o, s) if out is None else _merge(out, lse, o, s)
    return out, lse


def omnibus_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, kv_cache=None,
                      **kwargs):
    """transformers attention function: query [B, Hq, T, D]; key/value: this pass's [B, H_kv, T, D].

    Returns (attn_output [B, T, Hq, D], None).
    """
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if kv_cache is None:  # a plain forward with no cache: ordinary causal attention over its own tokens
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value, is_causal=query.shape[2] > 1,
                                                               scale=scale, enable_gqa=True)
        return out.transpose(1, 2).contiguous(), None
    length = kv_cache.length
    layer = kv_cache.layers[module.layer_idx]
    if query.shape[2] == 1:  # decode: the new key is already in the cache, so one pass over all of it
        if query.is_cuda and not kv_cache.sharded:
            from app.engine.decode_kernel import decode_attention

            out = decode_attention(query, layer, kv_cache.decode_slots[query.device][1], scale)
        else:
            out, _ = attend_cached(query, layer, length + 1, scale)
        return out.to(query.dtype).transpose(1, 2).contiguous(), None
    groups = query.shape[1] // key.shape[1]
    new_out, new_lse = _flash(
        query, key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1), True, scale
    )
    past_out, past_lse = attend_cached(query, layer, length, scale)
    if past_out is None:
        out = new_out
    else:
        out, _ = _merge(new_out, new_lse, past_out, past_lse)
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, omnibus_attention)
