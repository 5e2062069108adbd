"""Which attention kernels a cache is read with: chosen once per cache and setting, logged, named in the stats.

`choose(cache, attention)` looks at the cache (device, storage, compute dtype, head size, how its fp8 values are
scaled, sharding), the attention setting ("bf16" or "fp8") and the switches OMNIBUS_FA3 / OMNIBUS_FLEX (read
here, when the choice is made, never per call), and returns an `AttentionBackend`: the kernels of a prefill chunk,
of its cached keys and of a decode step. The engine keeps it on the cache (`cache.backend`), and
`app.engine.attention` dispatches on it instead of probing on every call. A kernel that fails is logged with its
cause, and that cache falls back to the next kernel (`fall_back`), which the next stats name too; nothing is
switched off for the rest of the process.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from app import planner

log = logging.getLogger(__name__)

ATTENTION_SETTINGS = ("bf16", "fp8")
# Decode through FA3's fp8 kernel from this many cached tokens (the planner's rule): one layer's step on an H200
# took 0.31 ms at 131K (Triton 0.14 ms), 0.73 ms at 1M (Triton 0.99), 1.44 ms at 2M (Triton 1.95); BENCHMARKS.md.
FA3_DECODE_MIN_TOKENS = planner.FA3_DECODE_MIN_TOKENS
KERNEL_NAMES = {
    "fa3-fp8": "FlashAttention-3 fp8",
    "fa3": "FlashAttention-3 bf16",
    "flex": "FlexAttention/SDPA flash",
    "sdpa": "SDPA",
    "triton": "Triton split-K",
}


_fa3 = None  # FlashAttention-3's flash_attn_func, imported once; False where it cannot run (not installed, no Hopper)


def fa3_kernel():
    """FlashAttention-3's `flash_attn_func` (package `fa3-fwd`) on a Hopper GPU, else None (imported once).

    OMNIBUS_FA3=0 turns it off for the caches chosen from then on (the FlexAttention / SDPA flash path serves)."""
    global _fa3
    if os.environ.get("OMNIBUS_FA3", "1") != "1":
        return None
    if _fa3 is None:
        _fa3 = False
        if torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0):
            try:
                from fa3_fwd_interface import flash_attn_func

                _fa3 = flash_attn_func
            except Exception as err:  # not installed, or built for another torch/CUDA: the other path serves
                log.info("FlashAttention-3 unavailable (%s); using FlexAttention / SDPA flash", err)
    return _fa3 or None


def flex_enabled() -> bool:
    """Whether FlexAttention may read cached keys on GPUs (OMNIBUS_FLEX=0: SDPA flash instead)."""
    return os.environ.get("OMNIBUS_FLEX", "1") == "1"


@dataclass(frozen=True)
class AttentionBackend:
    """prefill: "fa3-fp8", "fa3", "flex" or "sdpa"; decode: "fa3-fp8", "triton" or "sdpa"; cached: the kernel of a
    prefill chunk's cached keys where they are read apart from its own ("fa3", "flex" or "sdpa": SDPA flash); note:
    why not fp8, or what failed; failed: a kernel failed on this cache, which keeps these kernels from then on."""

    prefill: str
    decode: str
    note: str = ""
    failed: bool = False
    cached: str = "sdpa"

    def describe(self) -> str:
        """e.g. "prefill FlashAttention-3 fp8, decode FlashAttention-3 fp8"."""
        text = f"prefill {KERNEL_NAMES[self.prefill]}, decode {KERNEL_NAMES[self.decode]}"
        if self.cached != {"fa3": "fa3", "flex": "flex", "sdpa": "sdpa"}.get(self.prefill, self.cached):
            text += f", cached keys {KERNEL_NAMES[self.cached]}"  # a sharded cache's shards
        return f"{text} ({self.note})" if self.note else text


def check_setting(attention: str) -> str:
    if attention not in ATTENTION_SETTINGS:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION_SETTINGS)}, not {attention!r}")
    return attention


def _bf16_kernels(cuda: bool, bf16: bool, head_dim: int, sharded: bool, flex: bool = True) -> AttentionBackend:
    """The bf16-attention kernels for a cache on these terms (fp8 values dequantised a block at a time). `flex`:
    False once FlexAttention failed on the cache."""
    if not cuda:
        return AttentionBackend("sdpa", "sdpa")
    fa3 = fa3_kernel() is not None and bf16 and head_dim in (64, 128, 256)
    cached = "fa3" if fa3 else ("flex" if flex and flex_enabled() else "sdpa")
    if sharded:  # the chunk's own keys by SDPA flash; each shard's cached keys by `cached`, merged
        return AttentionBackend("flex" if cached == "flex" else "sdpa", "sdpa", cached=cached)
    return AttentionBackend(cached, "triton", cached=cached)


def _default(cache, flex: bool = True) -> AttentionBackend:
    """The bf16-attention kernels for this cache."""
    return _bf16_kernels(cache.device_type == "cuda", cache.compute_dtype_name == "bf16", cache.head_dim,
                         cache.sharded, flex)


def for_layer(query: torch.Tensor, layer) -> AttentionBackend:
    """The bf16-attention kernels for a query [B, Hq, T, D] over one layer's cache, chosen now (a direct call of
    `app.engine.attention.attend_cached` without its cache's backend: benchmarks, kernel tests)."""
    return _bf16_kernels(query.is_cuda, query.dtype == torch.bfloat16, query.shape[-1], hasattr(layer, "shards"))


def choose(cache, attention: str = "bf16") -> AttentionBackend:
    """The kernels for `cache` under the `attention` setting; fp8 needs FA3, an fp8 cache quantised per head.
    Decode over fewer than FA3_DECODE_MIN_TOKENS cached tokens stays with the Triton kernel, faster there."""
    base = _default(cache)
    if check_setting(attention) == "bf16":
        return base
    why = ""
    if cache.device_type != "cuda" or fa3_kernel() is None:
        why = "fp8 attention needs a Hopper GPU with the fa3-fwd package"
    elif cache.storage != "fp8":
        why = f"fp8 attention reads an fp8 KV cache; this one is {cache.storage} (--kv-dtype fp8)"
    elif cache.sharded:
        why = "fp8 attention runs on one GPU's cache; this one is split over several"
    elif not cache.per_head_sequence:
        why = "this cache was quantised per token (saved or loaded before fp8 attention was chosen)"
    elif cache.head_dim not in (64, 128, 256):
        why = f"FlashAttention-3 takes head sizes 64, 128 or 256, not {cache.head_dim}"
    if why:
        return AttentionBackend(base.prefill, base.decode, "bf16 attention: " + why)
    return AttentionBackend("fa3-fp8", "fa3-fp8" if cache.length >= FA3_DECODE_MIN_TOKENS else base.decode,
                            cached=base.cached)


def assign(cache, attention: str) -> AttentionBackend:
    """Choose the kernels for `cache`, keep them on it, and log the choice when it changes. A cache whose fp8
    kernel failed keeps the fallback (`fall_back`) rather than trying it again on every pass."""
    if cache.backend is not None and cache.backend.failed:
        return cache.backend
    backend = choose(cache, attention)
    if backend != cache.backend:
        log.info("attention: %s", backend.describe())
    cache.backend = backend
    return backend


def fall_back(cache, part: str, err: BaseException, kernel: str = "fa3-fp8") -> AttentionBackend:
    """`kernel` ("fa3-fp8" or "flex") failed on `cache` in `part` ("prefill" or "decode"): log the cause, and read
    this cache without it from now on (the stats say so): the bf16-attention kernels after an fp8 failure, SDPA
    flash after a FlexAttention one."""
    base = _default(cache, flex=kernel != "flex")
    what = "fp8" if kernel == "fa3-fp8" else "FlexAttention"
    note = f"{what} {part} failed: {type(err).__name__}: {str(err)[:200]}"
    log.error("attention kernel %s failed on this cache (%s: %s); using %s", KERNEL_NAMES[kernel],
              type(err).__name__, err, base.describe())
    cache.backend = AttentionBackend(base.prefill, base.decode, note, failed=True, cached=base.cached)
    return cache.backend
