"""FlashAttention-3 prefill path (app/engine/attention.py) against fp32 SDPA, on a Hopper GPU with `fa3-fwd`.

Skipped without CUDA or without the package; run on the GPU machine with `python -m pytest -m gpu`.
"""

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

HQ, HKV, D = 32, 8, 128


def _fa3_or_skip():
    from app.engine import attention, attention_backend

    attention_backend._fa3 = None
    if attention.fa3_kernel() is None:
        pytest.skip("FlashAttention-3 (fa3-fwd on a Hopper GPU) is not available here")
    return attention


def _reference(q, k, v, rows: int = 256):
    """fp32 SDPA, queries aligned to the end of the keys (bottom-right causal), GQA expanded. Run `rows` queries
    at a time, so that the fp32 scores of a 4K chunk over 300K keys fit an 80 GB GPU (whole, they need ~40 GB)."""
    from torch.nn.attention.bias import causal_lower_right

    t, s = q.shape[2], k.shape[2]
    out = []
    for i in range(0, t, rows):
        j = min(i + rows, t)
        keys = s - t + j  # query row r of the chunk sees keys up to s - t + r
        mask = causal_lower_right(j - i, keys)
        out.append(torch.nn.functional.scaled_dot_product_attention(
            q[:, :, i:j].float(), k[:, :, :keys].float(), v[:, :, :keys].float(), attn_mask=mask, enable_gqa=True))
    return torch.cat(out, dim=2).transpose(1, 2)  # [B, T, Hq, D]


@pytest.mark.parametrize("storage,bound", [("bf16", 1e-2), ("fp8", 6e-2)])
@pytest.mark.parametrize("past,t", [(0, 2048), (3000, 300), (70_000, 4096), (300_000, 1024)])
def test_fa3_prefill_chunk_matches_sdpa(storage, bound, past, t):
    attention = _fa3_or_skip()
    from app.engine.kv_cache import KVCache

    torch.manual_seed(past + t)
    q = torch.randn(1, HQ, t, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, HKV, past + t, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    k[:, :, :, 5] *= 8  # an outlier channel, as real keys have
    cache = KVCache([torch.device("cuda")], HKV, D, past + t + 16, storage)
    if past:
        cache.update(k[:, :, :past], v[:, :, :past], 0)
        cache.commit()
    cache.update(k[:, :, past:], v[:, :, past:], 0)  # the chunk's own keys, written before attention runs
    module = type("Layer", (), {"layer_idx": 0})()
    got, _ = attention.omnibus_attention(module, q, k[:, :, past:], v[:, :, past:], None, D**-0.5, kv_cache=cache)
    assert got.shape == (1, t, HQ, D) and torch.isfinite(got).all()
    ref = _reference(q, k, v)
    err = float((got.float() - ref).norm() / ref.norm())
    assert err < bound, f"relative error {err:.2e} against fp32 SDPA ({storage} cache, past {past}, chunk {t})"


def test_fa3_finds_one_planted_key_among_many():
    """A needle: one cached key whose score stands far above 200K others keeps nearly all the attention mass."""
    attention = _fa3_or_skip()
    from app.engine.kv_cache import KVCache

    torch.manual_seed(1)
    past, t = 200_000, 2048
    q = torch.randn(1, HQ, t, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, HKV, past + t, D, device="cuda", dtype=torch.bfloat16) * 0.1
    v = torch.zeros_like(k)
    needle = 123_457
    groups = HQ // HKV
    k[0, :, needle] = q[0, ::groups, 0] * 4  # aligned with query row 0 of each KV head's first query head
    v[0, :, needle] = 1.0
    for storage in ("bf16", "fp8"):
        cache = KVCache([torch.device("cuda")], HKV, D, past + t, storage)
        cache.update(k[:, :, :past], v[:, :, :past], 0)
        cache.commit()
        cache.update(k[:, :, past:], v[:, :, past:], 0)
        module = type("Layer", (), {"layer_idx": 0})()
        got, _ = attention.omnibus_attention(module, q, k[:, :, past:], v[:, :, past:], None, D**-0.5,
                                             kv_cache=cache)
        mass = got[0, 0, ::groups].float().mean()  # the value at the needle is 1, elsewhere 0: the mass kept
        ref = _reference(q, k, v)[0, 0, ::groups].float().mean()
        assert float(mass) > 0.9 and abs(float(mass - ref)) < 0.02, (storage, float(mass), float(ref))
