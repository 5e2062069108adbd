"""The on-disk layout of one layer's cache, and the pipelined copies between it and the devices.

A layer file holds keys [H_kv, T, D], values [H_kv, T, D], then for fp8 the key and value scales [H_kv, T]; T is
the entry's token count. The layout does not depend on how the cache is split over GPUs: a sequence-sharded
layer writes each shard's token range at its own offsets, straight from its own GPU, and a cache split any
other way (or not at all) reads the same file back.

The file is moved in segments of at most BLOCK_BYTES that never cross a shard boundary. Each segment's xxh3-128
checksum is kept in meta.json and checked as the segment arrives, so a damaged byte anywhere is caught. Copies
between the device and the pinned staging buffers are asynchronous, on a stream of their own: while one segment
is being hashed and written (or read and hashed), the next one is already on its way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import xxhash

BLOCK_BYTES = 64 * 2**20  # one segment: bytes moved between the device and the disk at once, per worker
RING = 2  # pinned staging buffers per worker: one in flight on the device, one on the disk side


class CorruptEntry(Exception):
    """A saved entry whose files do not match its meta.json (truncated, damaged or from another version)."""


@dataclass(frozen=True)
class Segment:
    tensor: int  # 0 keys, 1 values, 2 key scales, 3 value scales
    head: int
    start: int  # first token (position in the whole sequence)
    rows: int
    offset: int  # in the file
    nbytes: int


def parts(layer) -> list[tuple[object, int]]:
    """(single-device LayerKV, first position it holds) for a layer, sharded or not."""
    if hasattr(layer, "shards"):
        return list(zip(layer.shards, layer.starts))
    return [(layer, 0)]


def _tensors(part) -> list:
    return [part.keys, part.values] + ([part.key_scales, part.value_scales] if part.fp8 else [])


def _row_bytes(tensor) -> int:
    return tensor.element_size() * (tensor.shape[3] if tensor.dim() == 4 else 1)


def segments(layer, tokens: int) -> list[Segment]:
    """The segments of a layer's first `tokens` positions, in file order, cut at BLOCK_BYTES and shard edges."""
    pieces, offset = parts(layer), 0
    out = []
    for index, tensor in enumerate(_tensors(pieces[0][0])):
        row = _row_bytes(tensor)
        step = max(1, BLOCK_BYTES // row)
        for head in range(tensor.shape[1]):
            for part, first in pieces:
                end = min(first + part.keys.shape[2], tokens)
                for start in range(first, end, step):
                    rows = min(step, end - start)
                    out.append(Segment(index, head, start, rows, offset + (head * tokens + start) * row, rows * row))
        offset += tensor.shape[1] * tokens * row
    return out


def layer_bytes(layer, tokens: int) -> int:
    first = parts(layer)[0][0]
    return sum(t.shape[1] * _row_bytes(t) for t in _tensors(first)) * tokens


def _views(layer, segment: Segment):
    """(device tensor view, rows in the segment it covers) for each part of `layer` holding some of `segment`."""
    for part, first in parts(layer):
        lo = max(segment.start, first)
        hi = min(segment.start + segment.rows, first + part.keys.shape[2])
        if lo < hi:
            tensor = _tensors(part)[segment.tensor]
            yield tensor[0, segment.head, lo - first:hi - first], lo - segment.start, hi - segment.start


class _Staging:
    """A ring of pinned host buffers, a copy stream per device, and an event per buffer (plain buffers on a CPU)."""

    def __init__(self, device):
        import torch  # the store handles the engine's tensors; it is imported only with them

        self.cuda = device.type == "cuda"
        self.buffers = [torch.empty(BLOCK_BYTES, dtype=torch.uint8, pin_memory=self.cuda) for _ in range(RING)]
        self.events = [[] for _ in range(RING)]
        self.streams: dict = {}

    def copy(self, slot: int, dst, src) -> None:
        """dst.copy_(src), asynchronously on the device's copy stream; `wait(slot)` before the buffer is reused."""
        import torch

        device_side = dst if dst.is_cuda else src
        if not device_side.is_cuda:
            dst.copy_(src)
            return
        device = device_side.device
        stream = self.streams.get(device)
        if stream is None:
            stream = self.streams[device] = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))  # whatever wrote the cache is done first
        with torch.cuda.stream(stream):
            dst.copy_(src, non_blocking=True)
            event = torch.cuda.Event()
            event.record(stream)
        self.events[slot].append(event)

    def wait(self, slot: int) -> None:
        for event in self.events[slot]:
            event.synchronize()
        self.events[slot].clear()

    def drain(self) -> None:
        for slot in range(RING):
            self.wait(slot)


def _tiles(layer, tokens: int, plan: list[Segment]) -> bool:
    """Whether `plan` covers this layer's file layout exactly, each segment where the layout puts it."""
    tensors = _tensors(parts(layer)[0][0])
    bases, base = [], 0
    for tensor in tensors:
        bases.append(base)
        base += tensor.shape[1] * tokens * _row_bytes(tensor)
    covered = 0
    for s in plan:
        if not (0 <= s.tensor < len(tensors) and 0 <= s.head < tensors[s.tensor].shape[1] and s.rows > 0
                and 0 <= s.start and s.start + s.rows <= tokens):
            return False
        row = _row_bytes(tensors[s.tensor])
        if s.nbytes != s.rows * row or s.nbytes > BLOCK_BYTES or \
                s.offset != bases[s.tensor] + (s.head * tokens + s.start) * row:
            return False
        covered += s.nbytes
    return covered == base and len({s.offset for s in plan}) == len(plan)


def _staging_device(layer):
    return parts(layer)[0][0].keys.device


def write_layer(layer, tokens: int, path: Path) -> dict:
    """Write a layer's first `tokens` positions to `path` (mode 0600); returns its meta.json record."""
    plan = segments(layer, tokens)
    staging = _Staging(_staging_device(layer))
    digests = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, layer_bytes(layer, tokens))

        def stage(i: int) -> None:
            segment, slot = plan[i], i % RING
            staging.wait(slot)
            for view, lo, hi in _views(layer, segment):
                shape = (hi - lo,) + tuple(view.shape[1:])
                row = segment.nbytes // segment.rows
                host = staging.buffers[slot][lo * row:hi * row].view(view.dtype).view(shape)
                staging.copy(slot, host, view)

        if plan:
            stage(0)
        for i, segment in enumerate(plan):
            if i + 1 < len(plan):
                stage(i + 1)  # the next segment comes off the device while this one is hashed and written
            slot = i % RING
            staging.wait(slot)
            data = memoryview(staging.buffers[slot][:segment.nbytes].numpy())
            digests.append(xxhash.xxh3_128_hexdigest(data))
            if os.pwrite(fd, data, segment.offset) != segment.nbytes:
                raise OSError(f"short write to {path.name}")
        os.fsync(fd)
    finally:
        os.close(fd)
    return {"name": path.name, "bytes": layer_bytes(layer, tokens), "xxh3_128": digests,
            "segments": [[s.tensor, s.head, s.start, s.rows, s.offset, s.nbytes] for s in plan]}


def read_layer(layer, tokens: int, path: Path, expected: dict) -> None:
    """Read a layer file written by `write_layer` (with any shard split) into `layer`, checking every segment."""
    try:
        plan = [Segment(*map(int, s)) for s in expected["segments"]]
        digests = list(expected["xxh3_128"])
    except (KeyError, TypeError, ValueError) as err:
        raise CorruptEntry(f"{path.name}: no segment list in meta.json ({err})") from None
    if len(digests) != len(plan) or not _tiles(layer, tokens, plan):
        raise CorruptEntry(f"{path.name}: its segment list does not describe a {tokens:,}-token layer")
    staging = _Staging(_staging_device(layer))
    fd = os.open(path, os.O_RDONLY)
    try:
        for i, segment in enumerate(plan):
            slot = i % RING
            staging.wait(slot)  # the copy that last used this buffer is done
            data = memoryview(staging.buffers[slot][:segment.nbytes].numpy())
            if os.preadv(fd, [data], segment.offset) != segment.nbytes:
                raise CorruptEntry(f"{path.name} ended early")
            if xxhash.xxh3_128_hexdigest(data) != digests[i]:
                raise CorruptEntry(f"{path.name} fails its checksum at byte {segment.offset:,}")
            row = segment.nbytes // segment.rows
            for view, lo, hi in _views(layer, segment):
                host = staging.buffers[slot][lo * row:hi * row].view(view.dtype).view((hi - lo,) + tuple(view.shape[1:]))
                staging.copy(slot, view, host)  # on its way to the device while the next segment is read
        staging.drain()
    finally:
        os.close(fd)


def layer_name(i: int) -> str:
    return f"layer_{i:03d}.kv"
