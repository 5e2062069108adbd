"""Helpers for the engine tests: tiny random Llama models, and the two ways of running them that are compared.

- `full_logits`: one plain transformers forward over the whole sequence, no cache ("sdpa" or "eager").
- `cached_logits`: what the engine does: chunks of the prompt through `KVCache` and the "omnibus" attention,
  then one token at a time, every position's logits kept.

`ask` runs one question through a real `Engine` to the end.
"""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from app.engine import attention
from app.engine.kv_cache import KVCache
from app.protocol import AnswerStats

ROPES = {
    "default": {"rope_type": "default", "rope_theta": 10_000.0},
    # The Llama-3.1 scaling of app.engine.models.llama31_8b_config.
    "llama3": {"rope_type": "llama3", "rope_theta": 500_000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    "yarn": {"rope_type": "yarn", "rope_theta": 10_000.0, "factor": 4.0, "original_max_position_embeddings": 1024},
}


def tiny_llama(rope: str = "default", *, layers: int = 2, hidden: int = 64, heads: int = 8, kv_heads: int = 2,
               head_dim: int | None = None, intermediate: int = 128, vocab: int = 1000, window: int = 4096,
               seed: int = 0, init: float = 0.1, tie: bool = False) -> LlamaForCausalLM:
    """A random Llama in fp32 on the CPU with the "omnibus" attention.

    `init` is larger than transformers' 0.02 so attention is peaked rather than near uniform: then a wrong
    position, a lost key or a bad merge shows in the logits.
    """
    rope_parameters = dict(ROPES[rope])
    if "factor" in rope_parameters:  # a window consistent with the scaling, as real configs have
        window = max(window, int(rope_parameters["factor"] * rope_parameters["original_max_position_embeddings"]))
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         head_dim=head_dim or hidden // heads, max_position_embeddings=window,
                         rope_parameters=rope_parameters, initializer_range=init, tie_word_embeddings=tie,
                         bos_token_id=None, eos_token_id=None, pad_token_id=None)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.config._attn_implementation = attention.NAME
    return model


def full_logits(model, ids: list[int], attn: str = "sdpa", keep: int = 0) -> torch.Tensor:
    """Logits [T, V] (the last `keep` positions if keep) of one plain forward with transformers' own attention."""
    saved = model.config._attn_implementation
    model.config._attn_implementation = attn
    try:
        with torch.inference_mode():
            return model(input_ids=torch.tensor([ids]), use_cache=False, logits_to_keep=keep).logits[0]
    finally:
        model.config._attn_implementation = saved


def new_cache(model, capacity: int, storage: str) -> KVCache:
    config = model.config
    return KVCache(["cpu"] * config.num_hidden_layers, config.num_key_value_heads, config.head_dim, capacity,
                   storage, compute_dtype=torch.float32)


def forward_cached(model, cache: KVCache, ids: list[int], keep: int = 0) -> torch.Tensor:
    """Run `ids` after the cached sequence and commit them, as Engine._forward does. Returns logits [T or keep, V]."""
    start = cache.length
    positions = torch.arange(start, start + len(ids)).unsqueeze(0)
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([ids]), position_ids=positions, past_key_values=cache, kv_cache=cache,
                    use_cache=True, logits_to_keep=keep)
    cache.commit()
    return out.logits[0]


def cached_logits(model, prompt: list[int], chunk: int, storage: str = "fp32", decode: int = 0,
                  forced: list[int] | None = None) -> tuple[torch.Tensor, list[int]]:
    """Prefill `prompt` in chunks, then decode `decode` tokens greedily (or the `forced` ones, teacher-forced).

    Returns (logits [len(prompt) + decode - 1, V] for every position that predicts a token, decoded ids).
    """
    cache = new_cache(model, len(prompt) + decode, storage)
    rows = [forward_cached(model, cache, prompt[start:start + chunk]) for start in range(0, len(prompt), chunk)]
    tokens = []
    for step in range(decode):
        token = forced[step] if forced is not None else int(rows[-1][-1].argmax())
        tokens.append(token)
        if step < decode - 1:
            rows.append(forward_cached(model, cache, [token]))
    return torch.cat(rows), tokens


def ask(engine, question: str, history, settings, cancel=None) -> tuple[str, AnswerStats]:
    """`engine.ask` run to the end: (the answer's text, its AnswerStats). Asserts that the cache holds the corpus,
    then this prompt's turns and answer, all committed and nothing half-written."""
    pieces = list(engine.ask(question, history, settings, cancel=cancel))
    stats = pieces.pop()
    assert engine.cache.length == len(engine.cached_ids) + engine.conversation_tokens
    return "".join(pieces), stats
