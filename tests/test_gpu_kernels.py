"""The GPU attention kernels against plain fp32 attention: the Triton split-K kernel (decode and a question's few
rows, `app.engine.decode_kernel`) and the FlexAttention cached-part path (`app.engine.attention.attend_cached`),
over fp32, bf16 and fp8 caches. Marked `gpu`; skipped without CUDA (run them on the GPU machine).

Each kernel is compared twice: with the keys and values as the cache stores them (the kernel's own error:
bf16 queries and products), and with the original fp32 ones (adding what the storage rounds away).
"""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

KV_HEADS, GROUPS, HEAD_DIM = 2, 4, 128  # 8 query heads sharing 2 KV heads (GQA), the UltraLong head size
# Relative error bounds (Frobenius norm of the difference over the reference's). On these inputs an fp32
# emulation of the kernels' roundings gives 0.0025 against the stored values; storing in bf16 costs 0.004 and
# in fp8 0.045-0.067 against the originals (CPU, 2026-12-01). The bounds leave room above those.
KERNEL_BOUND = 1e-2  # against the stored values: bf16 probabilities and products
STORAGE_BOUND = {"fp32": 1.5e-2, "bf16": 1.5e-2, "fp8": 1e-1}  # against the original fp32 keys and values


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).norm() / want.float().norm()).item()


def filled_layer(storage: str, length: int, capacity: int, seed: int = 0):
    """A cache layer on the GPU whose first `length` positions hold random keys/values; the positions after it
    hold huge values that must never be read. Returns (layer, original keys, original values) [1, H_kv, L, D]."""
    from app.engine.kv_cache import LayerKV

    generator = torch.Generator(device="cuda").manual_seed(seed)
    keys = torch.randn(1, KV_HEADS, capacity, HEAD_DIM, device="cuda", generator=generator)
    values = torch.randn(1, KV_HEADS, capacity, HEAD_DIM, device="cuda", generator=generator)
    keys[:, :, length:] = 400.0
    values[:, :, length:] = 400.0
    layer = LayerKV(KV_HEADS, HEAD_DIM, capacity, storage, torch.device("cuda"), torch.bfloat16)
    layer.write(0, keys, values)
    return layer, keys[:, :, :length], values[:, :, :length]


def stored(layer, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `length` keys and values exactly as the layer holds them, in fp32."""
    if layer.fp8:
        return (layer.keys[:, :, :length].float() * layer.key_scales[:, :, :length].float().unsqueeze(-1),
                layer.values[:, :, :length].float() * layer.value_scales[:, :, :length].float().unsqueeze(-1))
    return layer.keys[:, :, :length].float(), layer.values[:, :, :length].float()


def reference(query, keys, values, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Naive fp32 attention, every key visible: (out [1, Hq, T, D], logsumexp [1, Hq, T], natural log)."""
    k = keys.float().repeat_interleave(GROUPS, dim=1)  # query head h reads KV head h // GROUPS
    v = values.float().repeat_interleave(GROUPS, dim=1)
    scores = query.float() @ k.transpose(-1, -2) * scale  # [1, Hq, T, L]
    return torch.softmax(scores, dim=-1) @ v, torch.logsumexp(scores, dim=-1)


def random_query(tokens: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator(device="cuda").manual_seed(seed)
    # scaled up so that attention is peaked, not near uniform: a wrong key then shows in the output
    query = 2 * torch.randn(1, KV_HEADS * GROUPS, tokens, HEAD_DIM, device="cuda", generator=generator)
    return query.to(torch.bfloat16)


@pytest.mark.parametrize("storage", ["fp32", "bf16", "fp8"])
@pytest.mark.parametrize("tokens,length", [(1, 5000), (1, 100), (16, 5000), (200, 3001)],
                         ids=["decode", "decode-short", "question", "question-many-row-blocks"])
def test_triton_split_k_kernel_matches_fp32_attention(storage, tokens, length):
    """Decode (1 token) and a question's tokens against the cache; lengths that fill neither a key block nor
    every split, and keys past the length that would swamp the result if read."""
    from app.engine.decode_kernel import cached_attention

    layer, keys, values = filled_layer(storage, length, capacity=length + 300)
    query = random_query(tokens)
    scale = HEAD_DIM ** -0.5
    out, lse = cached_attention(query, layer, torch.full((1,), length, dtype=torch.int32, device="cuda"), scale)
    torch.cuda.synchronize()
    assert out.shape == query.shape and out.dtype == query.dtype and lse.shape == query.shape[:3]
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()  # empty splits weigh nothing
    want, want_lse = reference(query, *stored(layer, length), scale)
    assert relative_error(out, want) < KERNEL_BOUND
    assert (lse - want_lse).abs().max().item() < 5e-2
    original, _ = reference(query, keys, values, scale)
    assert relative_error(out, original) < STORAGE_BOUND[storage]


@pytest.mark.parametrize("storage", ["fp32", "bf16", "fp8"])
def test_decode_kernel_reads_its_length_from_the_device(storage):
    """The CUDA-graph form: the length lives in a device tensor, so one launch serves every step."""
    from app.engine.decode_kernel import decode_attention

    layer, _, _ = filled_layer(storage, 2000, capacity=2100)
    query = random_query(1)
    length = torch.full((1,), 1000, dtype=torch.int32, device="cuda")
    scale = HEAD_DIM ** -0.5
    first = decode_attention(query, layer, length, scale).clone()
    length.fill_(2000)  # a later step: same tensor, same shapes, more keys
    second = decode_attention(query, layer, length, scale)
    for got, n in ((first, 1000), (second, 2000)):
        want, _ = reference(query, *stored(layer, n), scale)
        assert relative_error(got, want) < KERNEL_BOUND
    assert relative_error(first, second) > 5 * KERNEL_BOUND  # the extra keys really were read


@pytest.mark.parametrize("storage", ["fp32", "bf16", "fp8"])
def test_flex_attention_cached_part_matches_fp32_attention(storage, monkeypatch):
    """A prefill chunk's rows (more than the Triton kernel takes) against the cache, in blocks merged by their
    log-sum-exp, through FlexAttention (bf16/fp32 storage) or the fp8 block path; and the SDPA flash path."""
    from app.engine import attention, attention_backend

    length, tokens = 3000, 512  # 4 groups x 512 tokens = 2,048 rows per KV head: over FEW_ROWS
    assert GROUPS * tokens > attention.FEW_ROWS
    layer, keys, values = filled_layer(storage, length, capacity=length + 200)
    query = random_query(tokens)
    scale = HEAD_DIM ** -0.5
    monkeypatch.setenv("OMNIBUS_FLEX", "1")
    monkeypatch.setenv("OMNIBUS_FA3", "0")  # FlashAttention-3, where installed, would take these rows first
    monkeypatch.setattr(attention_backend, "_fa3", None)
    out, lse = attention.attend_cached(query, layer, length, scale, block=1024)  # 1024 + 1024 + 952 keys
    torch.cuda.synchronize()
    assert attention._flex, "FlexAttention did not compile or fell back to SDPA (see the log)"
    want, want_lse = reference(query, *stored(layer, length), scale)
    assert out.shape == query.shape and lse.shape == query.shape[:3]
    assert relative_error(out, want) < KERNEL_BOUND
    assert (lse - want_lse).abs().max().item() < 5e-2
    original, _ = reference(query, keys, values, scale)
    assert relative_error(out, original) < STORAGE_BOUND[storage]

    monkeypatch.setenv("OMNIBUS_FLEX", "0")  # the SDPA flash path the engine falls back to
    flash, flash_lse = attention.attend_cached(query, layer, length, scale, block=1024)
    assert relative_error(flash, want) < KERNEL_BOUND
    assert relative_error(out, flash) < KERNEL_BOUND
    assert (flash_lse - lse).abs().max().item() < 5e-2
