"""Which attention kernels a cache is read with: chosen once per cache and setting, logged, named in the stats.

`choose(cache, attention)` looks at the cache (device, storage, how its fp8 values are scaled, sharding) and the
attention setting ("bf16" or "fp8") and returns an `AttentionBackend`; the engine keeps it on the cache
(`cache.backend`), and `app.engine.attention` dispatches on it instead of probing on every call. A kernel that
fails is logged with its cause, and that cache falls back (`fall_back`), which the next stats name too.
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


_fa3 = None  # FlashAttention-3's flash_attn_func, imported on first use; False where it cannot run


def fa3_kernel():
    """FlashAttention-3's `flash_attn_func` (package `fa3-fwd`) on a Hopper GPU, else None.

    OMNIBUS_FA3=0 turns it off (the FlexAttention / SDPA flash path then serves)."""
    global _fa3
    if _fa3 is None:
        _fa3 = False
        if os.environ.get("OMNIBUS_FA3", "1") == "1" and torch.cuda.is_available() \
                and torch.cuda.get_device_capability() == (9, 0):
            try:
                from fa3_fwd_interface import flash_attn_func

                _fa3 = flash_attn_func
            except Exception as err:  # not installed, or built for another torch/CUDA: the other path serves
                log.info("FlashAttention-3 unavailable (%s); using FlexAttention / SDPA flash", err)
    return _fa3 or None


@dataclass(frozen=True)
class AttentionBackend:
    """prefill: "fa3-fp8", "fa3", "flex" or "sdpa"; decode: "fa3-fp8", "triton" or "sdpa"; note: why not fp8;
    failed: an fp8 kernel failed on this cache, which keeps these kernels from then on."""

    prefill: str
    decode: str
    note: str = ""
    failed: bool = False

    def describe(self) -> str:
        """e.g. "prefill FlashAttention-3 fp8, decode FlashAttention-3 fp8"."""
        text = f"prefill {KERNEL_NAMES[self.prefill]}, decode {KERNEL_NAMES[self.decode]}"
        return f"{text} ({self.note})" if self.note else text


def check_setting(attention: str) -> str:
    if attention not in ATTENTION_SETTINGS:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION_SETTINGS)}, not {attention!r}")
    return attention


def _default(cache) -> AttentionBackend:
    """The bf16-attention kernels for this cache (fp8 values dequantised a block at a time)."""
    cuda = cache.device_type == "cuda"
    if not cuda:
        return AttentionBackend("sdpa", "sdpa")
    if cache.sharded:
        return AttentionBackend("flex", "sdpa")
    fa3 = fa3_kernel() is not None and cache.compute_dtype_name == "bf16"
    return AttentionBackend("fa3" if fa3 else "flex", "triton")


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
    return AttentionBackend("fa3-fp8", "fa3-fp8" if cache.length >= FA3_DECODE_MIN_TOKENS else base.decode)


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


def fall_back(cache, part: str, err: BaseException) -> AttentionBackend:
    """A kernel of `cache.backend` failed in `part` ("prefill" or "decode"): log the cause, and read this cache
    with the bf16-attention kernels from now on (the stats say so)."""
    base = _default(cache)
    note = f"fp8 {part} failed: {type(err).__name__}: {str(err)[:200]}"
    log.error("attention kernel %s failed on this cache (%s: %s); using %s", KERNEL_NAMES["fa3-fp8"],
              type(err).__name__, err, base.describe())
    cache.backend = AttentionBackend(base.prefill, base.decode, note, failed=True)
    return cache.backend
