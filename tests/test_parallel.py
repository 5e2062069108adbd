"""Sequence parallelism: a KV cache split by position over several shards gives the same logits as one cache.

On GPUs each shard lives on its own device and they compute at once; here all shards are on the CPU, which
checks the arithmetic (placement, spans, the log-sum-exp merge), not the concurrency.
"""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import app.engine.attention  # noqa: F401  (registers the "omnibus" attention)
from app import planner
from app.engine.kv_cache import KVCache


def _tiny_llama():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=500, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=4096)
    model = LlamaForCausalLM(config).eval()
    model.config._attn_implementation = "omnibus"
    return model


def _run(model, ids, cache, chunk):
    """Chunked prefill, then three greedy decode steps; returns every position's logits."""
    outs = []
    with torch.inference_mode():
        for start in range(0, ids.shape[1], chunk):
            piece = ids[:, start:start + chunk]
            positions = torch.arange(start, start + piece.shape[1]).unsqueeze(0)
            outs.append(model(piece, position_ids=positions, past_key_values=cache, kv_cache=cache).logits)
            cache.commit()
        for _ in range(3):
            token = outs[-1][:, -1:].argmax(-1)
            positions = torch.tensor([[cache.length]])
            outs.append(model(token, position_ids=positions, past_key_values=cache, kv_cache=cache).logits)
            cache.commit()
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("storage,tolerance", [("fp32", 1e-4), ("fp8", 5e-2)])
@pytest.mark.parametrize("chunk", [16, 100])
def test_sharded_cache_matches_a_single_cache(storage, tolerance, chunk):
    model = _tiny_llama()
    ids = torch.randint(0, 500, (1, 300))
    devices = [torch.device("cpu")] * 2
    single = _run(model, ids, KVCache(devices, 2, 8, 320, storage, torch.float32), chunk)
    shards = [(torch.device("cpu"), 70), (torch.device("cpu"), 130), (torch.device("cpu"), 120)]
    sharded_cache = KVCache(devices, 2, 8, 0, storage, torch.float32, shards=shards)
    assert sharded_cache.sharded and sharded_cache.capacity == 320
    sharded = _run(model, ids, sharded_cache, chunk)
    assert (sharded - single).abs().max().item() < tolerance
    assert torch.equal(sharded[0, -4:].argmax(-1), single[0, -4:].argmax(-1))


def test_sharded_cache_refuses_to_overflow_and_to_grow():
    cache = KVCache([torch.device("cpu")], 2, 8, 0, "fp32", torch.float32,
                    shards=[(torch.device("cpu"), 8), (torch.device("cpu"), 8)])
    with pytest.raises(ValueError):
        cache.update(torch.zeros(1, 2, 17, 8), torch.zeros(1, 2, 17, 8), 0)
    with pytest.raises(ValueError):
        cache.grow(64)


def test_sequence_parallel_plan_spreads_the_cache_over_every_gpu():
    shape = planner.ModelShape.from_config(__import__("app.engine.models", fromlist=["x"]).llama31_8b_config(4_194_304))
    gpus = planner.parse_gpus("4x80")
    layers = planner.plan(shape, 4_186_112, gpus, "fp8", "bf16")
    sequence = planner.plan(shape, 4_186_112, gpus, "fp8", "bf16", mode="sequence")
    assert layers.fits and sequence.fits
    assert sequence.mode == "sequence" and len(sequence.shard_tokens) == 4
    assert sum(sequence.shard_tokens) >= 4_186_112 + planner.QUESTION_RESERVE_TOKENS
    # GPU 0 also holds the weights, so it takes the smallest share of the tokens
    assert sequence.shard_tokens[0] == min(sequence.shard_tokens)
    # attention is spread over all four GPUs, so the projected prefill is much shorter than the layer split's
    assert sequence.prefill_seconds < layers.prefill_seconds / 3


def test_layer_split_device_map_matches_the_planner_and_places_each_layers_cache():
    from app.engine.models import layer_device_map

    mapping = layer_device_map(32, [0, 1, 2, 3])
    per_device = [sum(1 for k, v in mapping.items() if k.startswith("model.layers.") and v == d) for d in range(4)]
    assert per_device == planner.split_layers(32, 4) == [8, 8, 8, 8]
    assert mapping["model.embed_tokens"] == 0 and mapping["lm_head"] == mapping["model.norm"] == 3
    # uneven: 30 layers over 4 GPUs -> 8, 8, 7, 7, in order
    uneven = layer_device_map(30, [0, 1, 2, 3])
    assert [uneven[f"model.layers.{i}"] for i in range(30)] == [0] * 8 + [1] * 8 + [2] * 7 + [3] * 7
    # the cache follows the layers: each layer's buffers are allocated where that layer lives (meta: no memory)
    devices = [torch.device("meta")] * 30
    cache = KVCache(devices, 8, 128, 1_000_000, "fp8", torch.bfloat16)
    assert all(layer.keys.device.type == "meta" and layer.keys.shape == (1, 8, 1_000_000, 128) for layer in cache.layers)
    plan = planner.plan(planner.ModelShape(30, 4096, 14336, 32, 8, 128, 128256, 1_048_576), 100_000,
                        planner.parse_gpus("4x80"), "fp8", mode="layers")
    assert [d.layers for d in plan.devices] == [8, 8, 7, 7]
