"""Attention over the preallocated KV cache, registered with transformers as "omnibus".

A pass of T new tokens at sequence position L attends in two parts, merged exactly through their
log-sum-exp:
- its own T keys, causally (a square mask, handled by the kernel's `is_causal`);
- the L cached keys, all visible, so no mask at all. The query heads that share a KV head are folded
  into the query length ([B, H_kv, groups*T, D]), which gives native GQA without expanding K/V to every
  query head.

No q×kv mask is ever built. fp8 caches are dequantised one block of keys at a time, so memory per pass
stays bounded whatever the context length.

On Hopper GPUs with the optional `fa3-fwd` package (FlashAttention-3's forward kernel), a prefill chunk over a
bf16 cache is ONE kernel call: the chunk's keys are already in the cache, so its queries attend to
cache[0 : L+T] with FlashAttention-3's bottom-right-aligned causal mask and native GQA — no merge, no copy.
Over an fp8 cache the chunk's own keys (exact bf16) and the dequantised cached blocks go to the same kernel and
merge by log-sum-exp. Without the package (or off Hopper) the FlexAttention / SDPA flash path serves.

With fp8 attention chosen (`app.engine.attention_backend`, kept on the cache as `cache.backend`), prefill chunks
and decode steps over an fp8 cache quantised per head run FlashAttention-3's fp8 kernels (`app.engine.fa3_fp8`);
a failure there is logged with its cause and the cache falls back to the kernels above.
"""

from __future__ import annotations

import logging

import torch
from transformers import AttentionInterface

from app.engine import attention_backend, fa3_fp8
from app.engine.attention_backend import fa3_kernel  # noqa: F401 (the engine and benchmarks ask it here)
from app.engine.merge import merge

log = logging.getLogger(__name__)

NAME = "omnibus"
FP8_BLOCK_TOKENS = 65_536  # keys dequantised at once when the cache is fp8
FEW_ROWS = 1024  # up to this many (query head x token) rows per KV head, the Triton split-K kernel is used
FA3_FP8_BLOCK_TOKENS = 131_072  # fp8 keys dequantised at once for FlashAttention-3 (32 MiB a KV head, K and V)


_flex = None  # FlexAttention compiled once (dynamic key length); False where this torch cannot build it


class FlexFailed(Exception):
    """FlexAttention raised on a cache (the cause is chained): the caller falls back for that cache and logs it."""


def _flex_unmasked(q, k, v, scale: float):
    """FlexAttention without a mask: (out, lse), or None where it cannot be built (an old torch, no Triton).
    Raises FlexFailed when the kernel itself fails."""
    global _flex
    if _flex is None:
        try:
            from torch.nn.attention.flex_attention import flex_attention

            _flex = torch.compile(flex_attention, dynamic=True)
        except Exception as err:  # a capability, not a failure of one call: the flash path serves
            log.warning("FlexAttention unavailable (%s: %s); using SDPA flash", type(err).__name__, err)
            _flex = False
    if not _flex:
        return None
    try:
        out, lse = _flex(q, k, v, scale=scale, return_lse=True)
    except torch.OutOfMemoryError:
        raise
    except Exception as err:
        raise FlexFailed(f"{type(err).__name__}: {err}") from err
    return out, lse


def _fa3_attend(q, k, v, causal: bool, scale: float):
    """q [B, T, Hq, D], k/v [B, S, H_kv, D] (any strides, last dim contiguous) -> out [B, T, Hq, D], lse [B, Hq, T]."""
    out, lse = fa3_kernel()(q, k, v, softmax_scale=scale, causal=causal, return_attn_probs=True)
    return out, lse


def _fa3_cached(query, layer, length: int, scale: float):
    """query [B, Hq, T, D] over one device's layer, its first `length` keys all visible, through FlashAttention-3.

    Returns (out [B, T, Hq, D], lse [B, Hq, T]); fp8 keys are dequantised a block at a time."""
    q = query.transpose(1, 2)  # [B, T, Hq, D], a view
    block = FA3_FP8_BLOCK_TOKENS if layer.fp8 else length
    out = lse = None
    for start in range(0, length, block):
        k, v = layer.read(start, min(start + block, length))  # [B, H_kv, n, D]: views of a bf16 cache
        o, s = _fa3_attend(q, k.transpose(1, 2), v.transpose(1, 2), False, scale)
        out, lse = (o, s) if out is None else merge(out, lse, o, s, layout="bthd")
    return out, lse


def _fa3_prefill(query, key, value, layer, length: int, scale: float) -> torch.Tensor:
    """A prefill chunk through FlashAttention-3: out [B, T, Hq, D] in the query's dtype.

    query [B, Hq, T, D]; key/value: the chunk's own [B, H_kv, T, D], already written to the cache at `length`.
    """
    q = query.transpose(1, 2)  # [B, T, Hq, D], a view
    if not layer.fp8:  # the cache holds past and chunk: one causal call, aligned bottom-right
        end = length + query.shape[2]
        k = layer.keys[:, :, :end].transpose(1, 2)  # [B, L+T, H_kv, D], a view of the cache
        v = layer.values[:, :, :end].transpose(1, 2)
        return fa3_kernel()(q, k, v, softmax_scale=scale, causal=True)
    out, lse = _fa3_attend(q, key.transpose(1, 2), value.transpose(1, 2), True, scale)  # exact bf16 keys
    if length:
        past_out, past_lse = _fa3_cached(query, layer, length, scale)
        out, lse = merge(out, lse, past_out, past_lse, layout="bthd")
    return out.to(query.dtype)

def _flash(q, k, v, causal: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention returning (out [B, H, Tq, D], logsumexp [B, H, Tq] fp32); q, k, v share head counts."""
    if q.is_cuda:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, False, scale=scale)[:2]
    else:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, scale=scale)
    return out, lse[..., : q.shape[2]]


def attend_cached(query, layer, length: int, scale: float, block: int | None = None, backend=None):
    """Attention of query [B, Hq, T, D] over a layer's first `length` cached keys, all visible, with the cached-key
    kernel of `backend` (its cache's `AttentionBackend`; None: chosen now for this query and layer).

    Returns (out [B, Hq, T, D], lse [B, Hq, T]), or (None, None) when the cache is empty.
    """
    if length == 0:
        return None, None
    backend = backend or attention_backend.for_layer(query, layer)
    if hasattr(layer, "shards"):  # sequence-parallel: every shard's device works at once, merged here
        return _attend_shards(query, layer, length, scale, backend)
    b, hq, t, d = query.shape
    hkv = layer.keys.shape[1]
    if query.is_cuda and (hq // hkv) * t <= FEW_ROWS:  # a question's few tokens: read the cache once, as stored
        from app.engine.decode_kernel import cached_attention

        # a fill kernel, not a host-to-device copy: nothing here waits for the GPU
        return cached_attention(query, layer, torch.full((1,), length, dtype=torch.int32, device=query.device), scale)
    if backend.cached == "fa3":
        out, lse = _fa3_cached(query, layer, length, scale)
        return out.transpose(1, 2), lse
    grouped = query.reshape(b, hkv, (hq // hkv) * t, d)  # [B, H_kv, groups*T, D]
    # On GPUs the keys go in contiguous blocks to FlexAttention, which beats flash there (383 vs 337 TFLOP/s at
    # 256K on an H100) but not on strided views of the whole cache (177 vs 354): see BENCHMARKS.md. Copying a
    # bf16 block costs ~1% of the attention it feeds. On CPUs, bf16/fp32 views go to the flash kernel whole.
    use_flex = query.is_cuda and backend.cached == "flex"
    block = block or (FP8_BLOCK_TOKENS if layer.fp8 or use_flex else length)
    out = lse = None
    for start in range(0, length, block):
        k, v = layer.read(start, min(start + block, length))
        if use_flex and not layer.fp8:
            k, v = k.contiguous(), v.contiguous()
        o, s = (use_flex and _flex_unmasked(grouped, k, v, scale)) or _flash(grouped, k, v, False, scale)
        out, lse = (o, s) if out is None else merge(out, lse, o, s)
    return out.reshape(b, hq, t, d), lse.reshape(b, hq, t)


def _attend_shards(query, layer, length: int, scale: float, backend):
    """Attention over a position-sharded layer: the query goes to each shard's device, the partial results
    (out, lse) come back and merge. Launches are asynchronous, so the devices compute concurrently."""
    parts = []
    for shard, lo, hi, _ in layer.spans(0, length):
        parts.append(attend_cached(query.to(shard.keys.device), shard, hi, scale, backend=backend))  # from 0 locally
    out = lse = None
    for o, s in parts:
        o, s = o.to(query.device), s.to(query.device)
        out, lse = (o, s) if out is None else merge(out, lse, o, s)
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
    backend = kv_cache.backend or attention_backend.assign(kv_cache, "bf16")
    fp8_rows = (query.shape[1] // key.shape[1]) * query.shape[2] > FEW_ROWS
    if backend.decode == "fa3-fp8" and query.shape[2] == 1 or backend.prefill == "fa3-fp8" and fp8_rows:
        try:
            if query.shape[2] == 1:
                return fa3_fp8.decode(query, layer, kv_cache.decode_slots[query.device][1], scale), None
            return fa3_fp8.prefill(query, layer, length, scale), None
        except torch.OutOfMemoryError:
            raise
        except Exception as err:  # logged with its cause; this cache is read with the bf16 kernels from now on
            attention_backend.fall_back(kv_cache, "decode" if query.shape[2] == 1 else "prefill", err)
    if query.shape[2] == 1:  # decode: the new key is already in the cache, so one pass over all of it
        if query.is_cuda and not kv_cache.sharded:
            from app.engine.decode_kernel import decode_attention

            out = decode_attention(query, layer, kv_cache.decode_slots[query.device][1], scale)
        else:
            out, _ = _attend_cached_or_fall_back(query, layer, length + 1, scale, kv_cache, "decode")
        return out.to(query.dtype).transpose(1, 2).contiguous(), None
    if backend.prefill == "fa3" and (query.shape[1] // key.shape[1]) * query.shape[2] > FEW_ROWS:
        return _fa3_prefill(query, key, value, layer, length, scale), None
    groups = query.shape[1] // key.shape[1]
    new_out, new_lse = _flash(
        query, key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1), True, scale
    )
    past_out, past_lse = _attend_cached_or_fall_back(query, layer, length, scale, kv_cache, "prefill")
    if past_out is None:
        out = new_out
    else:
        out, _ = merge(new_out, new_lse, past_out, past_lse)
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


def _attend_cached_or_fall_back(query, layer, length: int, scale: float, kv_cache, part: str):
    """`attend_cached` with the cache's kernels; when FlexAttention fails, the cause is logged and this cache is
    read with SDPA flash from then on (`attention_backend.fall_back`)."""
    try:
        return attend_cached(query, layer, length, scale, backend=kv_cache.backend)
    except FlexFailed as err:
        backend = attention_backend.fall_back(kv_cache, part, err.__cause__ or err, kernel="flex")
        return attend_cached(query, layer, length, scale, backend=backend)


AttentionInterface.register(NAME, omnibus_attention)
