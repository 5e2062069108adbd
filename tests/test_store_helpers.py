"""Shared by the disk-cache tests: tiny random Llama engines with the real Llama-3 tokenizer, and a corpus."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from app.engine import attention
from app.engine.engine import Engine
from app.engine.forward import forward
from app.protocol import Settings
from ingest import build_corpus, load_tokenizer

QUESTION = "Which document mentions the harbour?"


def tiny_engine(seed: int = 0, kv: str = "fp32", store=None, chunk_tokens: int = 64, layers: int = 2) -> Engine:
    """A random 2-layer Llama (GQA, 64 wide) whose weights depend only on `seed`, as after a restart."""
    tokenizer = load_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
                         tie_word_embeddings=True)
    config._attn_implementation = attention.NAME
    model = LlamaForCausalLM(config).eval()
    return Engine(model, tokenizer, kv_dtype=kv, chunk_tokens=chunk_tokens, model_name="tiny", store=store)


def make_corpus(folder: Path, names=("alpha.txt", "beta.md"), words: int = 60):
    """A real ingested corpus (`ingest.Corpus`) of small text files."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        (folder / name).write_text(f"File {name}. " + " ".join(f"harbour{i} line{j}" for j in range(words)) + "\n")
    return build_corpus([folder / n for n in names], tokenizer=load_tokenizer())


def corpus_ids(folder: Path, names=("alpha.txt", "beta.md"), words: int = 60) -> list[int]:
    """Token ids of `make_corpus` (wrapper tags included)."""
    return [int(t) for t in make_corpus(folder, names, words).token_ids()]


def next_logits(engine: Engine) -> torch.Tensor:
    """Logits [V] after the cached corpus and a question, leaving the cache as it was."""
    ids = engine.tokenizer(QUESTION, add_special_tokens=False)["input_ids"]
    length = engine.cache.length
    logits = forward(engine.model, engine.cache, ids, True, engine.layer_devices[0]).clone()
    engine.cache.truncate(length)
    return logits


def answer(engine: Engine, tokens: int = 4) -> str:
    return "".join(p for p in engine.ask(QUESTION, settings=Settings(max_new_tokens=tokens)) if isinstance(p, str))


def cached_kv(engine: Engine) -> list[torch.Tensor]:
    """Every layer's committed corpus keys and values (and fp8 scales), for exact comparisons (the
    conversation cached after the corpus is left out: it is never saved)."""
    n, out = len(engine.cached_ids), []
    for layer in engine.cache.layers:
        tensors = [layer.keys, layer.values] + ([layer.key_scales, layer.value_scales] if layer.fp8 else [])
        out += [t[:, :, :n].view(torch.uint8) if t.element_size() == 1 else t[:, :, :n] for t in tensors]
    return out
