"""The split-K decode kernel's launch settings, swept on one GPU: time per call and HBM bandwidth for one token's
(and a 61-token question's) attention over one layer of a deep cache, each setting checked against the default.

    python3 bench/decode_kernel_sweep.py --depth 1048576 --storage fp8
"""

from __future__ import annotations

import argparse
import itertools
import json

import torch

from app.engine import decode_kernel
from app.engine.kv_cache import LayerKV

KV_HEADS, GROUPS, HEAD_DIM = 8, 4, 128  # Llama-3.1-8B


def random_layer(depth: int, storage: str) -> LayerKV:
    layer = LayerKV(KV_HEADS, HEAD_DIM, depth, storage, torch.device("cuda"), torch.bfloat16)
    for start in range(0, depth, 65_536):  # in pieces: the fp32 source of a whole 1M layer would not be small
        n = min(65_536, depth - start)
        k = torch.randn(1, KV_HEADS, n, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
        layer.write(start, k, torch.randn_like(k))
    return layer


def time_call(query, layer, length, repeats: int = 30) -> float:
    for _ in range(3):
        decode_kernel.cached_attention(query, layer, length, HEAD_DIM ** -0.5)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        decode_kernel.cached_attention(query, layer, length, HEAD_DIM ** -0.5)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats / 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--depth", type=int, default=1_048_576)
    parser.add_argument("--storage", default="fp8", choices=["fp8", "bf16"])
    parser.add_argument("--out", default="")
    parser.add_argument("--reference", action="store_true", help="also the error against fp32 attention (32 GiB at 1M)")
    parser.add_argument("--default-only", action="store_true", help="time the settings in decode_kernel.py alone")
    args = parser.parse_args()
    layer = random_layer(args.depth, args.storage)
    length = torch.full((1,), args.depth, dtype=torch.int32, device="cuda")
    layer_bytes = layer.nbytes()
    queries = {t: torch.randn(1, KV_HEADS * GROUPS, t, HEAD_DIM, device="cuda", dtype=torch.bfloat16) for t in (1, 61)}
    default = (decode_kernel.SPLITS, decode_kernel.BLOCK_N, decode_kernel.NUM_WARPS, decode_kernel.NUM_STAGES)
    want = {t: decode_kernel.cached_attention(q, layer, length, HEAD_DIM ** -0.5)[0].float() for t, q in queries.items()}
    if args.reference:
        k, v = layer.read(0, args.depth)  # as stored, in bf16; the reference runs in fp32
        k, v = (x.float().repeat_interleave(GROUPS, dim=1) for x in (k, v))
        q = queries[1].float()
        reference = torch.softmax(q @ k.transpose(-1, -2) * HEAD_DIM ** -0.5, dim=-1) @ v
        del k, v
        print("default vs fp32 attention, one token:", ((want[1] - reference).norm() / reference.norm()).item())
    rows = []
    settings = [default] if args.default_only else itertools.product((64, 128, 256), (64, 128, 256), (4, 8), (2, 3, 4))
    for splits, block_n, warps, stages in settings:
        decode_kernel.SPLITS, decode_kernel.BLOCK_N = splits, block_n
        decode_kernel.NUM_WARPS, decode_kernel.NUM_STAGES = warps, stages
        row = {"splits": splits, "block_n": block_n, "warps": warps, "stages": stages}
        try:
            for t, q in queries.items():
                got = decode_kernel.cached_attention(q, layer, length, HEAD_DIM ** -0.5)[0].float()
                row[f"error_{t}"] = ((got - want[t]).norm() / want[t].norm()).item()
                seconds = time_call(q, layer, length)
                row[f"ms_{t}"] = seconds * 1000
                row[f"tb_per_s_{t}"] = layer_bytes / seconds / 1e12
        except Exception as err:  # a setting that does not fit the shared memory
            row["failed"] = str(err).splitlines()[0][:120]
        rows.append(row)
        print(json.dumps(row), flush=True)
    decode_kernel.SPLITS, decode_kernel.BLOCK_N, decode_kernel.NUM_WARPS, decode_kernel.NUM_STAGES = default
    best = min((r for r in rows if "ms_1" in r and r["error_1"] < 1e-2), key=lambda r: r["ms_1"])
    print("default", json.dumps(next(r for r in rows if (r["splits"], r["block_n"], r["warps"], r["stages"]) == default)))
    print("best", json.dumps(best))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "depth": args.depth, "storage": args.storage,
                       "layer_bytes": layer_bytes, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
