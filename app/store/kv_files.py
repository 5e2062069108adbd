"""The on-disk layout of one layer's cache: keys [H_kv, T, D], values [H_kv, T, D], then for fp8 the key and
value scales [H_kv, T], streamed between the device and the file in blocks through a pinned staging buffer,
with a blake2b checksum of every byte."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

BLOCK_BYTES = 64 * 2**20  # bytes moved between the device and the disk at once, per worker


class CorruptEntry(Exception):
    """A saved entry whose files do not match its meta.json (truncated, damaged or from another version)."""


def _segments(layer, tokens: int):
    """(tensor view, rows) pieces of one layer's first `tokens` positions, in file order, each ≤ BLOCK_BYTES."""
    tensors = [layer.keys, layer.values] + ([layer.key_scales, layer.value_scales] if layer.fp8 else [])
    for tensor in tensors:  # keys/values [1, H, C, D]; scales [1, H, C]
        row_bytes = tensor.element_size() * (tensor.shape[3] if tensor.dim() == 4 else 1)
        step = max(1, BLOCK_BYTES // row_bytes)
        for head in range(tensor.shape[1]):
            for start in range(0, tokens, step):
                yield tensor[0, head, start:min(start + step, tokens)]  # contiguous [rows, D] or [rows]


def layer_bytes(layer, tokens: int) -> int:
    per_token = 2 * layer.keys.shape[1] * layer.keys.shape[3] * layer.keys.element_size()
    if layer.fp8:
        per_token += 2 * layer.key_scales.shape[1] * layer.key_scales.element_size()
    return per_token * tokens


def _staging(device):
    """A uint8 buffer of BLOCK_BYTES on the host, pinned when the layer lives on a GPU."""
    import torch  # the store handles the engine's tensors; it is imported only with them

    return torch.empty(BLOCK_BYTES, dtype=torch.uint8, pin_memory=device.type == "cuda")


def write_layer(layer, tokens: int, path: Path) -> dict:
    staging = _staging(layer.keys.device)
    digest, size = hashlib.blake2b(digest_size=16), 0
    with open(path, "wb") as handle:
        for piece in _segments(layer, tokens):
            n = piece.numel() * piece.element_size()
            staging[:n].view(piece.dtype).view(piece.shape).copy_(piece)
            chunk = memoryview(staging[:n].numpy())
            digest.update(chunk)
            handle.write(chunk)
            size += n
        handle.flush()
        os.fsync(handle.fileno())
    return {"name": path.name, "bytes": size, "blake2b": digest.hexdigest()}


def read_layer(layer, tokens: int, path: Path, expected: dict) -> None:
    staging = _staging(layer.keys.device)
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        for piece in _segments(layer, tokens):
            n = piece.numel() * piece.element_size()
            chunk = memoryview(staging[:n].numpy())
            if handle.readinto(chunk) != n:
                raise CorruptEntry(f"{path.name} ended early")
            digest.update(chunk)
            piece.copy_(staging[:n].view(piece.dtype).view(piece.shape))
    if digest.hexdigest() != expected["blake2b"]:
        raise CorruptEntry(f"{path.name} fails its checksum")


def layer_name(i: int) -> str:
    return f"layer_{i:03d}.kv"
