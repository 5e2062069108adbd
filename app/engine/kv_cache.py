"""A preallocated KV cache for one long sequence: the corpus prefix, then one question at a time.

Each layer's buffers are allocated once, on that layer's device, and never grow by concatenation.
Storage is bf16, or fp8 (e4m3) with one bf16 scale per token and KV head. An fp8 sequence can instead be
quantised with one scale per KV head (`per_head`, set before its first chunk): its scale is fixed from that first
chunk with room to spare, every later token uses it, and the per-token scale rows all hold it, so every reader
of the per-token scales still works while FlashAttention-3's fp8 kernels read the cache as it is (their
descales are per KV head).

A forward pass writes its keys and values at `length` through `update`; `commit` makes them part of the
sequence afterwards. A pass that fails or is cancelled before `commit` leaves the committed sequence as it
was, and `truncate` rolls the sequence back to any shorter length (the corpus, after an answer).
"""

from __future__ import annotations

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
STORAGE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp8": FP8}  # fp32: exactness tests on CPU


def quantize_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(head, token) symmetric fp8 quantisation. x: [B, H, T, D] -> (values [B, H, T, D], scales [B, H, T])."""
    amax = x.abs().amax(dim=-1).float().clamp(min=1e-8)
    scale = (amax / FP8_MAX).to(torch.bfloat16)  # rounded first, so dequantising uses exactly this scale
    values = (x.float() / scale.float().unsqueeze(-1)).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return values, scale


HEAD_SCALE_HEADROOM = 4.0  # a per-head scale holds values up to 4x the first chunk's largest before they clip


def head_scale(x: torch.Tensor) -> torch.Tensor:
    """One bf16 scale per KV head for x [1, H, T, D]: the largest |x| maps to 448 / HEAD_SCALE_HEADROOM."""
    amax = x.abs().amax(dim=(0, 2, 3)).float().clamp(min=1e-8)
    return (amax * HEAD_SCALE_HEADROOM / FP8_MAX).to(torch.bfloat16)  # [H]


def quantize_fp8_per_head(x: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [1, H, T, D] with one bf16 scale per head [H] -> (values [1, H, T, D], per-token scales [1, H, T])."""
    values = (x.float() / scale.float()[None, :, None, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return values, scale[None, :, None].expand(x.shape[:3]).contiguous()


def dequantize_fp8(values: torch.Tensor, scale: torch.Tensor, dtype=torch.bfloat16) -> torch.Tensor:
    """Inverse of `quantize_fp8`: values [B, H, T, D], scale [B, H, T] -> [B, H, T, D] in `dtype`.

    e4m3 -> bf16 is exact, so the product is rounded once, without an fp32 copy of the block.
    """
    return values.to(dtype) * scale.to(dtype).unsqueeze(-1)


class LayerKV:
    """One layer's key and value storage, [1, H_kv, capacity, D], plus fp8 scales [1, H_kv, capacity]."""

    def __init__(self, kv_heads: int, head_dim: int, capacity: int, storage: str, device, compute_dtype):
        dtype = STORAGE_DTYPES[storage]
        # zeros, not empty: FA3's fp8 decode loads whole tiles past the sequence's end and masks their scores, so
        # a NaN bit pattern left there in V (0 x NaN) would poison the output
        self.keys = torch.zeros(1, kv_heads, capacity, head_dim, dtype=dtype, device=device)
        self.values = torch.zeros_like(self.keys)
        self.fp8 = storage == "fp8"
        if self.fp8:
            self.key_scales = torch.empty(1, kv_heads, capacity, dtype=torch.bfloat16, device=device)
            self.value_scales = torch.empty_like(self.key_scales)
            # per-head quantisation: the scales of K and V [2, H] (bf16) and as FA3 descales [2, 1, H] (fp32),
            # allocated once so that a captured decode step keeps reading the current ones
            self.head_scales = torch.ones(2, kv_heads, dtype=torch.bfloat16, device=device)
            self.descales = torch.ones(2, 1, kv_heads, dtype=torch.float32, device=device)
        self.per_head = False  # quantise the next sequence (written from position 0) with one scale per head
        self.head_scaled = False  # the stored sequence is quantised per head (FA3 fp8 reads it directly)
        self.compute_dtype = compute_dtype

    def _set_head_scales(self, key_scale: torch.Tensor, value_scale: torch.Tensor) -> None:
        self.head_scales[0].copy_(key_scale)
        self.head_scales[1].copy_(value_scale)
        self.descales.copy_(self.head_scales.float().unsqueeze(1))
        self.head_scaled = True

    def _quantize(self, k: torch.Tensor, v: torch.Tensor):
        if self.head_scaled:
            return quantize_fp8_per_head(k, self.head_scales[0]), quantize_fp8_per_head(v, self.head_scales[1])
        return quantize_fp8(k), quantize_fp8(v)

    def write(self, start: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store k, v ([1, H_kv, T, D]) at positions start..start+T."""
        end = start + k.shape[2]
        if self.fp8:
            if start == 0:  # a new sequence: its first chunk fixes the per-head scales
                self.head_scaled = False
                if self.per_head:
                    self._set_head_scales(head_scale(k), head_scale(v))
            (kq, ks), (vq, vs) = self._quantize(k, v)
            self.keys[:, :, start:end], self.key_scales[:, :, start:end] = kq, ks
            self.values[:, :, start:end], self.value_scales[:, :, start:end] = vq, vs
        else:
            self.keys[:, :, start:end] = k
            self.values[:, :, start:end] = v

    def write_at(self, position: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store one token's k, v ([1, H_kv, 1, D]) at a position held in a device tensor (CUDA-graph safe)."""
        if self.fp8:  # index_copy_ has no fp8 kernel: move the bytes as uint8
            (kq, ks), (vq, vs) = self._quantize(k, v)
            self.keys.view(torch.uint8).index_copy_(2, position, kq.view(torch.uint8))
            self.values.view(torch.uint8).index_copy_(2, position, vq.view(torch.uint8))
            self.key_scales.index_copy_(2, position, ks)
            self.value_scales.index_copy_(2, position, vs)
        else:
            self.keys.index_copy_(2, position, k.to(self.keys.dtype))
            self.values.index_copy_(2, position, v.to(self.values.dtype))

    def read(self, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of positions start..end in the compute dtype (views when storage matches it)."""
        if not self.fp8:
            k, v = self.keys[:, :, start:end], self.values[:, :, start:end]
            return k.to(self.compute_dtype), v.to(self.compute_dtype)  # no copy when the dtypes match
        return (
            dequantize_fp8(self.keys[:, :, start:end], self.key_scales[:, :, start:end], self.compute_dtype),
            dequantize_fp8(self.values[:, :, start:end], self.value_scales[:, :, start:end], self.compute_dtype),
        )

    def copy_prefix(self, other: "LayerKV", length: int) -> None:
        """Copy the first `length` positions of `other` (same storage) into this layer."""
        self.keys[:, :, :length] = other.keys[:, :, :length]
        self.values[:, :, :length] = other.values[:, :, :length]
        if self.fp8:
            self.key_scales[:, :, :length] = other.key_scales[:, :, :length]
            self.value_scales[:, :, :length] = other.value_scales[:, :, :length]
            self.head_scales.copy_(other.head_scales)
            self.descales.copy_(other.descales)
        self.per_head, self.head_scaled = other.per_head, other.head_scaled

    def adopt_scales(self, length: int) -> None:
        """The first `length` positions were filled from outside (a disk load): quantised per head if every
        token's scale equals its head's first, which is how a per-head sequence is stored."""
        self.head_scaled = False
        if self.fp8 and length:
            k, v = self.key_scales[0, :, :length], self.value_scales[0, :, :length]
            if bool((k == k[:, :1]).all()) and bool((v == v[:, :1]).all()):
                self._set_head_scales(k[:, 0], v[:, 0])

    def nbytes(self) -> int:
        tensors = [self.keys, self.values] + ([self.key_scales, self.value_scales] if self.fp8 else [])
        return sum(t.numel() * t.element_size() for t in tensors)


class ShardedLayerKV:
    """One layer's cache split by position over several devices: shard i holds tokens starts[i]..starts[i+1].

    Used for sequence parallelism: every GPU holds a share of every layer's tokens, and attention runs on all
    of them at once (see app/engine/attention.py), so both the memory and the attention work are spread.
    """

    def __init__(self, kv_heads: int, head_dim: int, capacities: list[int], storage: str, devices, compute_dtype):
        self.shards = [LayerKV(kv_heads, head_dim, c, storage, d, compute_dtype) for c, d in zip(capacities, devices)]
        self.starts = [sum(capacities[:i]) for i in range(len(capacities))]
        self.fp8 = storage == "fp8"
        self.kv_heads = kv_heads  # no `keys` of its own: each shard's are in `shards[i].keys`

    def spans(self, start: int, end: int):
        """(shard, local start, local end, global offset) for each shard that holds part of start..end."""
        for shard, first in zip(self.shards, self.starts):
            lo, hi = max(start, first), min(end, first + shard.keys.shape[2])
            if lo < hi:
                yield shard, lo - first, hi - first, lo - start

    def write(self, start: int, k: torch.Tensor, v: torch.Tensor) -> None:
        for shard, lo, hi, offset in self.spans(start, start + k.shape[2]):
            n = hi - lo
            device = shard.keys.device
            shard.write(lo, k[:, :, offset:offset + n].to(device), v[:, :, offset:offset + n].to(device))

    def nbytes(self) -> int:
        return sum(shard.nbytes() for shard in self.shards)


class KVCache:
    """The whole model's KV cache for one sequence of up to `capacity` tokens.

    It is passed to the model as `past_key_values` (transformers calls `update` from every attention layer)
    and to the attention function as `kv_cache`, which reads the committed prefix from it.
    """

    def __init__(self, layer_devices, kv_heads: int, head_dim: int, capacity: int, storage: str = "bf16",
                 compute_dtype=torch.bfloat16, shards: list[tuple[object, int]] | None = None):
        """shards: [(device, tokens), ...] splits every layer by position over these devices (sequence
        parallelism); `capacity` is then their sum. Without it, each layer lives whole on its layer's device."""
        if storage not in STORAGE_DTYPES:
            raise ValueError(f"KV storage must be one of {sorted(STORAGE_DTYPES)}, not {storage!r}")
        self.storage = storage
        self.kv_heads, self.head_dim, self.compute_dtype = kv_heads, head_dim, compute_dtype
        self.sharded = shards is not None and len(shards) > 1
        if self.sharded:
            devices, capacities = zip(*shards)
            self.capacity = sum(capacities)
            self.layers = [ShardedLayerKV(kv_heads, head_dim, list(capacities), storage, devices, compute_dtype)
                           for _ in layer_devices]
        else:
            self.capacity = capacity
            self.layers = [LayerKV(kv_heads, head_dim, capacity, storage, d, compute_dtype) for d in layer_devices]
        self.version = 0  # bumped when buffers move (grow), so captured CUDA graphs know they are stale
        self.backend = None  # app.engine.attention_backend.AttentionBackend: the kernels that read this cache
        self.length = 0  # committed tokens
        self.pending = 0  # tokens written by the pass in flight, not yet committed
        # On GPUs a decode step reads its position from device tensors, so its shapes never change and it
        # can be replayed as a CUDA graph: per device, (write position int64 [1], keys to attend int32 [1]).
        devices = set() if self.sharded else {layer.keys.device for layer in self.layers if layer.keys.is_cuda}
        self.decode_slots = {d: (torch.zeros(1, dtype=torch.long, device=d), torch.ones(1, dtype=torch.int32, device=d))
                             for d in devices}

    # -- the transformers Cache protocol, as far as the Llama forward uses it --
    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        """Write this pass's keys/values ([1, H_kv, T, D]) after the committed prefix; return them unchanged."""
        t = key_states.shape[2]
        if self.length + t > self.capacity:
            raise ValueError(f"KV cache holds {self.capacity:,} tokens; {self.length + t:,} were asked for")
        layer = self.layers[layer_idx]
        if t == 1 and key_states.is_cuda and not self.sharded:
            layer.write_at(self.decode_slots[key_states.device][0], key_states, value_states)
        else:
            layer.write(self.length, key_states, value_states)
        self.pending = t
        return key_states, value_states

    def set_decode_position(self, position: int) -> None:
        """Point the device-side decode slots at `position` (call before each one-token pass on GPUs)."""
        for slot, length in self.decode_slots.values():
            slot.fill_(position)
            length.fill_(position + 1)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    # -- sequence bookkeeping --
    def commit(self) -> None:
        """Make the last pass's tokens part of the sequence."""
        self.length += self.pending
        self.pending = 0

    def truncate(self, length: int) -> None:
        """Roll the sequence back to its first `length` tokens (the stored values stay, unused)."""
        if not 0 <= length <= self.length + self.pending:
            raise ValueError(f"cannot truncate a {self.length}-token cache to {length}")
        self.length, self.pending = length, 0

    def adopt(self, length: int) -> None:
        """The buffers' first `length` positions were filled from outside (a disk load): make them the sequence."""
        if not 0 <= length <= self.capacity:
            raise ValueError(f"a {self.capacity:,}-token cache cannot hold {length:,} loaded tokens")
        self.length, self.pending = length, 0
        for layer in self.layers:
            if not self.sharded:
                layer.adopt_scales(length)

    def quantise_per_head(self, per_head: bool) -> None:
        """How the next sequence written from position 0 is quantised (fp8 storage): one scale per KV head, or
        one per token and head. A sequence already stored keeps its own. (Sequence-sharded caches: per token.)"""
        for layer in self.layers:
            if not self.sharded:
                layer.per_head = per_head and self.storage == "fp8"

    @property
    def device_type(self) -> str:
        first = self.layers[0].shards[0] if self.sharded else self.layers[0]
        return first.keys.device.type

    @property
    def compute_dtype_name(self) -> str:
        return {torch.bfloat16: "bf16", torch.float32: "fp32"}.get(self.compute_dtype, str(self.compute_dtype))

    @property
    def per_head_sequence(self) -> bool:
        """The sequence is fp8 quantised per KV head, or is empty and will be (`quantise_per_head`)."""
        if self.sharded or self.storage != "fp8":
            return False
        if self.length + self.pending == 0:
            return all(layer.per_head for layer in self.layers)
        return self.head_scaled

    @property
    def head_scaled(self) -> bool:
        """Every layer's stored sequence is fp8 quantised per KV head (what FA3's fp8 kernels read directly)."""
        return not self.sharded and self.storage == "fp8" and all(layer.head_scaled for layer in self.layers)

    def grow(self, capacity: int) -> None:
        """Reallocate for `capacity` tokens, keeping the committed prefix (one layer at a time)."""
        if capacity <= self.capacity:
            return
        if self.sharded:
            raise ValueError("a sequence-sharded cache is sized once; reload the corpus to resize it")
        for i, old in enumerate(self.layers):
            new = LayerKV(self.kv_heads, self.head_dim, capacity, self.storage, old.keys.device, self.compute_dtype)
            new.copy_prefix(old, self.length)
            self.layers[i] = new
            del old
        self.capacity = capacity
        self.version += 1

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)
