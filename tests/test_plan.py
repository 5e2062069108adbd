"""The memory planner's arithmetic (app/planner.py) on the Llama-3.1-8B shape, and `launch.py plan`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app import planner
from app.cli import main as cli_main
from app.engine.models import llama31_8b_config

ROOT = Path(__file__).resolve().parent.parent
KiB, GiB = 1024, 1024**3
MILLION = 1_048_576


def shape_8b(window: int = 4_194_304) -> planner.ModelShape:
    return planner.ModelShape.from_config(llama31_8b_config(window))


def test_8b_shape_from_config():
    shape = shape_8b(1_048_576)
    assert (shape.layers, shape.hidden, shape.q_heads, shape.kv_heads, shape.head_dim) == (32, 4096, 32, 8, 128)
    assert shape.window == 1_048_576 and shape.vocab == 128_256 and not shape.tied_embeddings


def test_kv_bytes_per_token_for_8b():
    shape = shape_8b()
    bf16 = shape.layers * shape.kv_bytes_per_token_layer("bf16")
    fp8 = shape.layers * shape.kv_bytes_per_token_layer("fp8")
    assert bf16 == 128 * KiB
    # 64 KiB of e4m3 values plus one bf16 scale per token, KV head and K/V: 32 layers x 8 heads x 2 x 2 bytes.
    assert fp8 == 64 * KiB + 32 * 8 * 2 * 2
    assert shape.layers * shape.kv_bytes_per_token_layer("fp32") == 256 * KiB


def test_weights_of_8b():
    shape = shape_8b()
    assert shape.params() == pytest.approx(8.03e9, rel=0.01)  # Llama-3.1-8B: 8,030,261,248 parameters
    assert shape.params() * 2 / GiB == pytest.approx(15.0, abs=0.1)
    plans = planner.plan(shape, 1000, planner.parse_gpus("1x80"), "bf16").devices
    assert sum(d.weights_gib for d in plans) == pytest.approx(shape.params() * 2 / GiB, rel=1e-6)


def test_one_million_tokens_fp8_needs_more_than_one_80gib_gpu():
    shape = shape_8b()
    one = planner.plan(shape, MILLION, planner.parse_gpus("1x80"), "fp8")
    assert not one.fits and one.max_tokens < MILLION
    # 1M tokens of fp8 KV alone are 65 GiB; with 15 GiB of weights that is the whole card.
    assert one.devices[0].kv_gib + one.devices[0].weights_gib > 80
    assert f"{MILLION:,}" in one.reason and f"{one.max_tokens:,}" in one.reason and "fp8" in one.reason
    four = planner.plan(shape, MILLION, planner.parse_gpus("4x80"), "fp8")
    assert four.fits and four.max_tokens >= MILLION and four.reason == ""
    assert planner.plan(shape, MILLION, planner.parse_gpus("4x80"), "auto").kv_dtype == "bf16"  # bf16 fits there
    assert planner.plan(shape, 600_000, planner.parse_gpus("1x80"), "auto").kv_dtype == "fp8"  # bf16 would not


def test_max_tokens_is_the_exact_boundary():
    shape = shape_8b()
    for gpus in ("1x80", "2x80", "1x141"):
        for kv in ("bf16", "fp8"):
            devices = planner.parse_gpus(gpus)
            most = planner.plan(shape, 100_000, devices, kv).max_tokens
            assert planner.plan(shape, most, devices, kv).fits
            assert not planner.plan(shape, most + 1, devices, kv).fits
    bf16 = planner.plan(shape, 100_000, planner.parse_gpus("1x80"), "bf16").max_tokens
    fp8 = planner.plan(shape, 100_000, planner.parse_gpus("1x80"), "fp8").max_tokens
    assert 1.9 < fp8 / bf16 < 2.0


def test_max_tokens_does_not_depend_on_the_corpus_planned():
    shape, devices = shape_8b(), planner.parse_gpus("1x80")
    small = planner.plan(shape, 1_000, devices, "bf16")
    assert small.fits
    assert planner.plan(shape, small.max_tokens, devices, "bf16").fits


def test_corpus_over_the_window_is_refused_with_numbers():
    shape = shape_8b(window=1_048_576)
    tokens = 1_048_576 - planner.QUESTION_RESERVE_TOKENS + 1
    result = planner.plan(shape, tokens, planner.parse_gpus("8x141"), "fp8")
    assert not result.fits and result.max_tokens == 1_048_576 - planner.QUESTION_RESERVE_TOKENS
    assert f"{tokens:,}" in result.reason and "1,048,576" in result.reason and "window" in result.reason
    assert planner.plan(shape, tokens - 1, planner.parse_gpus("8x141"), "fp8").fits


@pytest.mark.parametrize("gpus", [1, 2, 3, 4, 5, 8])
def test_layer_split(gpus):
    split = planner.split_layers(32, gpus)
    assert len(split) == gpus and sum(split) == 32 and max(split) - min(split) <= 1
    assert split == sorted(split, reverse=True)  # the first devices take the remainder
    result = planner.plan(shape_8b(), 100_000, planner.parse_gpus(f"{gpus}x80"), "bf16")
    assert [d.layers for d in result.devices] == split


def test_weights_split_with_embeddings_on_first_and_last_device():
    shape = shape_8b()
    devices = planner.plan(shape, 1000, planner.parse_gpus("4x80"), "bf16").devices
    embed = shape.vocab * shape.hidden * 2 / GiB
    layer = shape.layer_params() * 2 / GiB
    assert [d.weights_gib for d in devices] == pytest.approx([8 * layer + embed, 8 * layer, 8 * layer, 8 * layer + embed])


def test_parse_gpus():
    [h100] = planner.parse_gpus("1x80")
    assert h100.total_bytes == h100.free_bytes == 80 * GiB and "H100" in h100.name
    assert [d.name for d in planner.parse_gpus("2x141")] == ["H200 (planned)"] * 2


def test_format_seconds():
    assert planner.format_seconds(12.34) == "12.3 s"
    assert planner.format_seconds(600) == "10.0 min"
    assert planner.format_seconds(7200) == "2.0 h"


def test_prefill_time_grows_with_tokens_and_attention_is_quadratic():
    shape = shape_8b()
    linear_a, attention_a = shape.prefill_flops(100_000)
    linear_b, attention_b = shape.prefill_flops(200_000)
    assert attention_b == pytest.approx(4 * attention_a)
    assert linear_b == pytest.approx(2 * linear_a, rel=1e-3)
    assert shape.prefill_flops(200_000, start=100_000)[1] == pytest.approx(attention_b - attention_a)
    assert planner.estimate_prefill_seconds(shape, 200_000, "H100") > planner.estimate_prefill_seconds(shape, 100_000, "H100")


PLAN_KEYS = {"tokens", "kv_dtype", "weight_dtype", "fits", "max_tokens", "window", "prefill_seconds",
             "decode_tokens_per_s", "devices", "reason"}
DEVICE_KEYS = {"name", "layers", "weights_gib", "kv_gib", "workspace_gib", "free_gib"}


def test_launch_plan_json_schema():
    env = dict(os.environ, OMNIBUS_NO_BOOTSTRAP="1")
    done = subprocess.run([sys.executable, "launch.py", "plan", "--tokens", "1048576", "--gpus", "4x80", "--json",
                           "--parallel", "layers"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert PLAN_KEYS <= set(result)
    assert (result["tokens"], result["fits"], result["kv_dtype"], result["window"]) == (MILLION, True, "bf16", 4_194_304)
    assert result["max_tokens"] >= MILLION and result["prefill_seconds"] > 0 and result["decode_tokens_per_s"] > 0
    assert len(result["devices"]) == 4 and all(set(d) >= DEVICE_KEYS for d in result["devices"])
    assert [d["layers"] for d in result["devices"]] == [8, 8, 8, 8]
    assert all(isinstance(d["kv_gib"], float) and d["kv_gib"] > 0 for d in result["devices"])


def test_plan_cli_refusal_exit_code_and_text(capsys):
    code = cli_main(["plan", "--tokens", str(MILLION), "--gpus", "1x80", "--kv-dtype", "fp8", "--weight-dtype", "bf16"])
    out = capsys.readouterr().out
    assert code == 1
    assert "does NOT fit" in out and f"{MILLION:,}" in out and "H100 (planned): 32 layers" in out
    assert cli_main(["plan", "--tokens", "100000", "--gpus", "1x80", "--model", "ultralong-1m"]) == 0
    assert " fits " in capsys.readouterr().out
