"""fp8 attention's CPU-checkable parts: the fp8 cache quantised per head, the choice of kernels and what it says,
the log-sum-exp merge and the query quantisation of app/engine/fa3_fp8.py, and the setting through the engine,
the planner and the CLI. (The kernels themselves: tests/test_gpu_attention_fp8.py, on a Hopper GPU.)"""

from __future__ import annotations

import pytest
import torch

from app import planner
from app.engine import attention_backend, fa3_fp8
from app.engine.kv_cache import FP8_MAX, HEAD_SCALE_HEADROOM, KVCache
from test_engine_helpers import tiny_llama

H, D = 2, 16


def cpu_cache(capacity: int = 256, storage: str = "fp8") -> KVCache:
    return KVCache([torch.device("cpu")], H, D, capacity, storage)


def write(cache: KVCache, k: torch.Tensor, v: torch.Tensor) -> None:
    cache.update(k, v, 0)
    cache.commit()


def test_a_per_head_sequence_keeps_its_first_chunks_scale_for_every_later_token():
    torch.manual_seed(0)
    cache = cpu_cache()
    cache.quantise_per_head(True)
    first = torch.randn(1, H, 64, D)
    write(cache, first, first * 0.5)
    layer = cache.layers[0]
    scale = layer.head_scales[0].float()
    expected = first.abs().amax(dim=(0, 2, 3)) * HEAD_SCALE_HEADROOM / FP8_MAX
    assert torch.allclose(scale, expected, rtol=1e-2)
    later = torch.randn(1, H, 32, D) * 2  # larger than the first chunk, within the headroom
    write(cache, later, later)
    assert (layer.key_scales[0, :, :96] == layer.head_scales[0][:, None]).all()  # every token: its head's scale
    assert cache.head_scaled and cache.per_head_sequence
    k, _ = layer.read(64, 96)
    assert float((k.float() - later).norm() / later.norm()) < 4e-2  # e4m3's rounding, nothing clipped
    assert torch.equal(layer.descales[0, 0], layer.head_scales[0].float())


def test_per_head_quantisation_clips_beyond_its_headroom_and_a_new_sequence_rescales():
    cache = cpu_cache()
    cache.quantise_per_head(True)
    ones = torch.ones(1, H, 8, D)
    write(cache, ones, ones)
    write(cache, ones * 10, ones * 10)  # 10x the first chunk: past the 4x headroom
    k, _ = cache.layers[0].read(8, 16)
    assert torch.allclose(k.float(), torch.full_like(k.float(), HEAD_SCALE_HEADROOM), rtol=1e-2)  # clipped
    cache.truncate(0)  # a new corpus: its first chunk sets new scales
    write(cache, ones * 10, ones * 10)
    k, _ = cache.layers[0].read(0, 8)
    assert torch.allclose(k.float(), torch.full_like(k.float(), 10.0), rtol=1e-2)


def test_adopt_recognises_how_a_loaded_sequence_was_quantised():
    torch.manual_seed(1)
    x = torch.randn(1, H, 40, D)
    per_token = cpu_cache()
    write(per_token, x, x)
    per_head = cpu_cache()
    per_head.quantise_per_head(True)
    write(per_head, x, x)
    for cache, expected in ((per_token, False), (per_head, True)):
        cache.layers[0].head_scaled = None  # forgotten, as in buffers filled from the disk
        cache.adopt(40)
        assert cache.head_scaled is expected


def test_the_choice_of_kernels_says_why_fp8_attention_does_not_run_here():
    cache = cpu_cache()
    assert attention_backend.choose(cache, "bf16") == attention_backend.AttentionBackend("sdpa", "sdpa")
    fp8 = attention_backend.choose(cache, "fp8")
    assert (fp8.prefill, fp8.decode) == ("sdpa", "sdpa") and "needs a Hopper GPU" in fp8.note
    assert fp8.describe() == "prefill SDPA, decode SDPA (bf16 attention: fp8 attention needs a Hopper GPU with the " \
                             "fa3-fwd package)"
    with pytest.raises(ValueError, match="attention must be one of bf16, fp8"):
        attention_backend.choose(cache, "fp4")
    err = RuntimeError("no kernel image for this device")
    backend = attention_backend.fall_back(cache, "prefill", err)
    assert cache.backend is backend and "fp8 prefill failed: RuntimeError: no kernel image" in backend.note
    assert attention_backend.assign(cache, "fp8") is backend  # kept: not tried again on every pass


def test_merge_of_two_key_sets_equals_attention_over_both():
    torch.manual_seed(2)
    q, k, v = torch.randn(1, 4, 8, D), torch.randn(1, 4, 30, D), torch.randn(1, 4, 30, D)

    def attend(keys, values):  # out [1, T, H, D], lse [1, H, T]
        scores = q @ keys.transpose(-1, -2)
        return (torch.softmax(scores, -1) @ values).transpose(1, 2), torch.logsumexp(scores, -1)

    whole, whole_lse = attend(k, v)
    a, a_lse = attend(k[:, :, :11], v[:, :, :11])
    b, b_lse = attend(k[:, :, 11:], v[:, :, 11:])
    merged, lse = fa3_fp8.merge(a, a_lse, b.to(torch.bfloat16), b_lse)
    assert torch.allclose(merged, whole, atol=2e-2) and torch.allclose(lse, whole_lse, atol=1e-5)
    exact, _ = fa3_fp8.merge(a, a_lse, b, b_lse)
    assert torch.allclose(exact, whole, atol=1e-5)


def test_query_quantised_with_one_scale_per_kv_head_group():
    torch.manual_seed(3)
    q = torch.randn(1, 5, 8, D)  # [B, T, Hq, D], 8 query heads over 2 KV heads
    q[:, :, 4:] *= 30  # the second group is much larger: it gets its own scale
    q8, descale = fa3_fp8.quantize_query(q, kv_heads=2)
    assert q8.dtype == torch.float8_e4m3fn and q8.shape == q.shape and descale.shape == (1, 2)
    back = q8.float() * descale.repeat_interleave(4, dim=1)[:, None, :, None]
    assert float((back - q).norm() / q.norm()) < 4e-2
    assert float((back[:, :, :4] - q[:, :, :4]).norm() / q[:, :, :4].norm()) < 4e-2  # the small group is kept


def test_engine_on_the_cpu_with_fp8_attention_runs_bf16_kernels_and_says_so(llama3_tokenizer):
    from app.engine.engine import Engine

    model = tiny_llama(vocab=len(llama3_tokenizer), hidden=32, heads=4, kv_heads=2, tie=True, window=4096)
    engine = Engine(model, llama3_tokenizer, attention="fp8", chunk_tokens=64)
    stats = engine.load_corpus(llama3_tokenizer("The ferry leaves at seven. " * 20, add_special_tokens=False)["input_ids"])
    assert stats.kv_dtype == "fp32" and "fp8 attention needs a Hopper GPU" in stats.attention
    answer = list(engine.ask("When does the ferry leave?"))[-1]
    assert answer.attention == stats.attention
    with pytest.raises(ValueError):
        Engine(model, llama3_tokenizer, attention="int4")


def test_planner_times_fp8_attention_and_its_decode_with_their_own_rates():
    shape = planner.ModelShape(32, 4096, 14_336, 32, 8, 128, 128_256, 2_097_152)
    bf16 = planner.estimate_prefill_seconds(shape, 1_000_000, "NVIDIA H200", attention_kernel="fa3")
    fp8 = planner.estimate_prefill_seconds(shape, 1_000_000, "NVIDIA H200", attention_kernel="fa3-fp8")
    _, attention_flops = shape.prefill_flops(1_000_000)
    assert fp8 < bf16 and bf16 - fp8 == pytest.approx(
        attention_flops / planner.FA3_ATTENTION["H200"] - attention_flops / planner.FA3_FP8_ATTENTION["H200"])
    weights, kv = 8 * 2**30, 70e9
    triton = planner.estimate_decode_tokens_per_s("NVIDIA H200", weights, kv, "fp8")
    fa3 = planner.estimate_decode_tokens_per_s("NVIDIA H200", weights, kv, "fp8", "fa3-fp8")
    assert fa3 > triton
    fp8_weights = planner.estimate_decode_tokens_per_s("NVIDIA H200", weights // 2, kv, "fp8", "fa3-fp8", "fp8")
    assert 1 / fp8_weights - 1 / fa3 == pytest.approx(planner.FP8_WEIGHTS_STEP_SECONDS - weights / 2 / 3.9e12)
    # "auto" KV: the kernel named goes with the fp8 plan, bf16 plans use FA3's bf16 rate
    one_h200 = planner.parse_gpus("1x141")
    assert one_h200[0].total_bytes == planner.H200_BYTES
    auto = planner.plan(shape, 1_500_000, one_h200, "auto", "fp8", attention_kernel="fa3-fp8")
    assert auto.kv_dtype == "fp8" and auto.fits


def test_plan_prints_the_largest_corpus_and_why_ultralong_2m_takes_fp8_weights(capsys):
    from app.cli import run_command

    code = run_command(["plan", "--tokens", "2000000", "--model", "ultralong-2m", "--gpus", "1x141",
                        "--attention", "fp8"])
    out = capsys.readouterr().out
    assert code == 0 and "largest corpus on this GPU: 2,0" in out and "(fp8 weights, fp8 KV)" in out
    assert "ultralong-2m: fp8 weights and fp8 KV" in out and "with bf16 weights" in out
    assert run_command(["plan", "--tokens", "900000", "--model", "ultralong-1m", "--gpus", "1x141"]) == 0
    assert "fp8 weights" not in capsys.readouterr().out  # the 1M window fits with bf16 weights


def test_settings_attention_control_sets_the_engine_and_a_server_keeps_its_own(tiny_llama, llama3_tokenizer):
    """The page's Settings hold one attention control; choosing fp8 sets the local engine's attention (for the
    documents loaded next); a backend that cannot take it keeps its own and the control shows that."""
    import gradio as gr

    from app.engine.engine import Engine
    from app.ui.app import build
    from app.ui.events import Events
    from app.ui.handlers import Workbench
    from app.ui.layout import Page

    engine = Engine(tiny_llama(window=3000), llama3_tokenizer, kv_dtype="fp32", model_name="tiny-llama")
    workbench = Workbench(engine)
    [radio] = [b for b in build(workbench).blocks.values() if isinstance(b, gr.Radio) and b.elem_id == "attention"]
    assert radio.value == "bf16" and [c[0] for c in radio.choices] == ["bf16", "fp8"]
    events = Events(workbench, Page())
    assert events.attention("fp8") == "fp8" and engine.attention == "fp8"

    class Server:  # a backend that keeps its own setting (as a remote server does)
        attention = "server"

        def set_attention(self, value):
            from app.errors import BackendError

            raise BackendError("the server chooses its own attention precision")

    workbench.backend = events.backend = Server()
    assert events.attention("fp8") == "server"


def test_auto_kv_plans_keep_the_attention_kernel_and_fp8_weights_keep_bf16_embeddings():
    """Two planner defects found on the way: "auto" KV dropped the attention kernel when it tried each dtype (the
    measured rates went in its place), and fp8 weights counted the embeddings and output head at 1 byte."""
    shape = planner.ModelShape(32, 4096, 14_336, 32, 8, 128, 128_256, 1_048_576)
    gpus = planner.parse_gpus("1x141")
    auto = planner.plan(shape, 200_000, gpus, "auto", attention_kernel="fa3")
    bf16 = planner.plan(shape, 200_000, gpus, "bf16", attention_kernel="fa3")
    assert auto.kv_dtype == "bf16" and auto.prefill_seconds == bf16.prefill_seconds
    fp8 = planner.plan(shape, 200_000, gpus, "fp8", "fp8")
    layers, embeddings = shape.layers * shape.layer_params(), 2 * shape.vocab * shape.hidden * 2
    assert fp8.devices[0].weights_gib * planner.GiB == pytest.approx(layers + embeddings)


def test_planned_rates_for_the_live_estimate_use_the_kernel_the_engine_runs():
    from app import calibration

    shape = planner.ModelShape(32, 4096, 14_336, 32, 8, 128, 128_256, 1_048_576)
    default = calibration.planned_rates(shape, "NVIDIA H200")
    fp8 = calibration.planned_rates(shape, "NVIDIA H200", attention_kernel="fa3-fp8")
    assert default.per_token == fp8.per_token
    assert default.per_token_depth / fp8.per_token_depth == pytest.approx(
        planner.FA3_FP8_ATTENTION["H200"] / planner.THROUGHPUT["H200"][1])
