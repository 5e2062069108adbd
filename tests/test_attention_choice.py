"""The attention kernels are chosen once per cache and settings (issue 27, item 3), on the CPU: the bf16 paths
(FlashAttention-3, FlexAttention, SDPA flash) like the fp8 ones, OMNIBUS_FA3 / OMNIBUS_FLEX read when the choice is
made, the stats naming the kernels, and a failing kernel logged with its cause and switched off for its cache only.
The GPU facts are stand-ins here (a cache that says it is on CUDA, a stand-in FA3 function); the kernels
themselves run in tests/test_gpu_*.py.
"""

import logging
from dataclasses import dataclass

import pytest
import torch

from app.engine import attention, attention_backend
from app.engine.merge import merge


@dataclass
class GpuCache:
    """What `attention_backend.choose` reads of a KV cache, for a cache on a GPU."""

    compute_dtype_name: str = "bf16"
    head_dim: int = 128
    sharded: bool = False
    storage: str = "bf16"
    per_head_sequence: bool = False
    length: int = 0
    device_type: str = "cuda"
    backend: object = None


@pytest.fixture
def fa3_installed(monkeypatch):
    monkeypatch.setattr(attention_backend, "_fa3", lambda *args, **kwargs: None)  # the import already made
    monkeypatch.setenv("OMNIBUS_FA3", "1")
    monkeypatch.setenv("OMNIBUS_FLEX", "1")


def test_bf16_kernels_are_chosen_from_the_cache_and_the_switches(fa3_installed, monkeypatch):
    choose = attention_backend.choose
    fa3 = choose(GpuCache())
    assert (fa3.prefill, fa3.cached, fa3.decode) == ("fa3", "fa3", "triton")
    assert fa3.describe() == "prefill FlashAttention-3 bf16, decode Triton split-K"
    assert choose(GpuCache(head_dim=96)).prefill == "flex"  # FlashAttention-3 takes 64, 128 or 256
    assert choose(GpuCache(compute_dtype_name="fp32")).prefill == "flex"
    sharded = choose(GpuCache(sharded=True))  # each shard's cached keys by FlashAttention-3, its own by flash
    assert (sharded.prefill, sharded.cached, sharded.decode) == ("sdpa", "fa3", "sdpa")
    assert sharded.describe() == "prefill SDPA, decode SDPA, cached keys FlashAttention-3 bf16"
    monkeypatch.setenv("OMNIBUS_FA3", "0")  # read when a choice is made
    assert choose(GpuCache()).describe() == "prefill FlexAttention/SDPA flash, decode Triton split-K"
    monkeypatch.setenv("OMNIBUS_FLEX", "0")
    assert choose(GpuCache()) == attention_backend.AttentionBackend("sdpa", "triton", cached="sdpa")
    assert choose(GpuCache(device_type="cpu")) == attention_backend.AttentionBackend("sdpa", "sdpa")


def test_a_backend_kept_on_its_cache_does_not_follow_a_later_switch(fa3_installed, monkeypatch):
    cache = GpuCache()
    assert attention_backend.assign(cache, "bf16").prefill == "fa3"
    monkeypatch.setenv("OMNIBUS_FA3", "0")
    assert cache.backend.prefill == "fa3"  # what the passes dispatch on: changed only by the next choice
    assert attention_backend.assign(cache, "bf16").prefill == "flex"


def test_a_failing_flex_kernel_is_logged_with_its_cause_and_left_for_that_cache_only(fa3_installed, monkeypatch,
                                                                                       caplog):
    monkeypatch.setenv("OMNIBUS_FA3", "0")
    broken, other = GpuCache(), GpuCache()
    attention_backend.assign(broken, "bf16")
    with caplog.at_level(logging.ERROR, logger="app.engine.attention_backend"):
        backend = attention_backend.fall_back(broken, "prefill", RuntimeError("no kernel image"), kernel="flex")
    assert (backend.prefill, backend.cached, backend.failed) == ("sdpa", "sdpa", True)
    assert "FlexAttention prefill failed: RuntimeError: no kernel image" in backend.describe()
    assert "no kernel image" in caplog.text and "FlexAttention" in caplog.text
    assert attention_backend.assign(broken, "bf16") is backend  # kept: not tried again on every pass
    assert attention_backend.assign(other, "bf16").cached == "flex"  # nothing is switched off for the process


def test_a_flex_failure_is_raised_with_its_cause_not_remembered_in_the_module(monkeypatch):
    def failing(*args, **kwargs):
        raise RuntimeError("out of shared memory")

    monkeypatch.setattr(attention, "_flex", failing)
    q = torch.zeros(1, 1, 4, 8)
    with pytest.raises(attention.FlexFailed, match="RuntimeError: out of shared memory") as failed:
        attention._flex_unmasked(q, q, q, 1.0)
    assert isinstance(failed.value.__cause__, RuntimeError)
    assert attention._flex is failing  # before: set to False, FlexAttention off for the rest of the process


def test_one_merge_serves_both_layouts():
    torch.manual_seed(3)
    out_a, out_b = torch.randn(2, 4, 5, 8), torch.randn(2, 4, 5, 8)  # [B, H, T, D]
    lse_a, lse_b = torch.randn(2, 4, 5), torch.randn(2, 4, 5)  # [B, H, T]
    heads_first, lse = merge(out_a, lse_a, out_b, lse_b)
    tokens_first, lse_t = merge(out_a.transpose(1, 2), lse_a, out_b.transpose(1, 2), lse_b, layout="bthd")
    assert torch.equal(heads_first.transpose(1, 2), tokens_first) and torch.equal(lse, lse_t)
    weights = torch.softmax(torch.stack([lse_a, lse_b]), dim=0).unsqueeze(-1)
    assert torch.allclose(heads_first, weights[0] * out_a + weights[1] * out_b, atol=1e-6)
