"""The engine on CUDA with tiny random Llamas: the decode step replayed as a CUDA graph gives the same greedy tokens
as running it eagerly, and a KV cache split by position over two GPUs gives the logits of one cache on one GPU.
Marked `gpu`; skipped without CUDA (the two-GPU test below two GPUs). Run them on the GPU machine."""

from __future__ import annotations

import pytest
import torch

from app.protocol import Settings

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

# head_dim 64: the Triton kernel wants a power of two of at least 16
SHAPE = dict(layers=2, hidden=256, heads=4, kv_heads=2, head_dim=64, intermediate=512, window=8192)


def corpus_ids(tokenizer, sentences: int = 120) -> list[int]:
    text = "".join(f"Line {i}: the harbour master counts {i * 7} boats before the tide turns.\n"
                   for i in range(sentences))
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def greedy(engine, question: str, tokens: int = 48) -> tuple[str, object]:
    pieces = list(engine.ask(question, settings=Settings(max_new_tokens=tokens, temperature=0.0)))
    return "".join(pieces[:-1]), pieces[-1]


@pytest.mark.parametrize("kv", ["bf16", "fp8"])
def test_graph_replayed_decode_gives_the_same_greedy_tokens_as_eager_decode(kv, tiny_llama, llama3_tokenizer):
    from app.engine.engine import Engine

    model = tiny_llama(vocab=len(llama3_tokenizer), **SHAPE).to("cuda", torch.bfloat16)
    engine = Engine(model, llama3_tokenizer, kv_dtype=kv, model_name="tiny", parallel="layers")
    assert engine.on_gpu and engine.parallel == "layers"
    engine.load_corpus(corpus_ids(llama3_tokenizer))
    corpus_end = engine.cache.length

    engine.use_cuda_graphs = False
    eager_text, eager = greedy(engine, "How many boats are counted?")
    kept = corpus_end + engine.conversation_tokens  # the corpus, then the exchange kept for a follow-up
    assert engine.sequence.graph is None and engine.conversation_tokens > 0 and engine.cache.length == kept
    engine.use_cuda_graphs = True
    graph_text, graphed = greedy(engine, "How many boats are counted?")
    captured = engine.sequence.graph
    assert captured is not None and engine.cache.length == kept  # the same exchange, kept the same way
    again_text, _ = greedy(engine, "How many boats are counted?")
    assert engine.sequence.graph is captured  # the second answer replays the graph captured by the first

    assert eager.new_tokens == graphed.new_tokens > 1  # a random model rarely stops early; this one did not
    assert graph_text == eager_text == again_text
    assert (graphed.finish_reason, graphed.prompt_tokens) == (eager.finish_reason, eager.prompt_tokens)


def run(model, ids: torch.Tensor, cache, chunk: int, forced: list[int] | None = None):
    """Chunked prefill, then three decode steps (greedy, or the `forced` tokens); every position's logits [T, V]
    in fp32 and the decoded tokens."""
    outs, tokens = [], []
    with torch.inference_mode():
        for start in range(0, ids.shape[1], chunk):
            piece = ids[:, start:start + chunk]
            positions = torch.arange(start, start + piece.shape[1], device=ids.device).unsqueeze(0)
            outs.append(model(input_ids=piece, position_ids=positions, past_key_values=cache, kv_cache=cache,
                              use_cache=True).logits.float())
            cache.commit()
        for step in range(3):
            token = forced[step] if forced else int(outs[-1][0, -1].argmax())
            tokens.append(token)
            cache.set_decode_position(cache.length)  # the device-side slots a one-token pass reads
            positions = torch.tensor([[cache.length]], device=ids.device)
            outs.append(model(input_ids=torch.tensor([[token]], device=ids.device), position_ids=positions,
                              past_key_values=cache, kv_cache=cache, use_cache=True).logits.float())
            cache.commit()
    return torch.cat(outs, dim=1)[0], tokens


@pytest.mark.parametrize("second", [
    pytest.param(0, id="two-shards-one-gpu"),  # the same split and merge, both shards on GPU 0
    pytest.param(1, id="two-gpus", marks=pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")),
])
@pytest.mark.parametrize("storage,bound", [("bf16", 2e-2), ("fp8", 5e-2)])
def test_position_shards_give_the_logits_of_one_cache(storage, bound, second, tiny_llama):
    from app.engine.kv_cache import KVCache

    model = tiny_llama(vocab=1000, **SHAPE).to("cuda:0", torch.bfloat16)
    config = model.config
    gpu0, gpu1 = torch.device("cuda", 0), torch.device("cuda", second)
    layers = [gpu0] * config.num_hidden_layers
    ids = torch.randint(0, 1000, (1, 3000), generator=torch.Generator().manual_seed(0)).to(gpu0)
    one = KVCache(layers, config.num_key_value_heads, config.head_dim, 3100, storage, torch.bfloat16)
    split = KVCache(layers, config.num_key_value_heads, config.head_dim, 0, storage, torch.bfloat16,
                    shards=[(gpu0, 1400), (gpu1, 1700)])  # the corpus runs over into the second shard
    assert split.sharded and split.capacity == 3100 and split.decode_slots == {}
    single, tokens = run(model, ids, one, chunk=1024)
    sharded, _ = run(model, ids, split, chunk=1024, forced=tokens)  # the same inputs, step for step
    assert split.length == one.length == 3003
    assert [s.keys.device for s in split.layers[0].shards] == [gpu0, gpu1]
    error = ((sharded - single).norm() / single.norm()).item()
    assert error < bound
    agree = (sharded.argmax(-1) == single.argmax(-1)).float().mean().item()
    assert agree > 0.9  # the top token at nearly every position (near ties in bf16 may flip a few)
