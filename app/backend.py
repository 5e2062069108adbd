"""The one interface the UI and the CLI use, for the local engine and for remote servers alike."""

from __future__ import annotations

import logging
from typing import Iterator, Protocol

from app import plan as planner

log = logging.getLogger(__name__)


class Backend(Protocol):
    """What answers questions: `app.engine.Engine` (local GPU/CPU) or `app.remote.RemoteEngine` (a server)."""

    name: str  # "local" or "openai"
    model_name: str
    window: int  # tokens the model accepts, corpus and question together
    tokenizer: object  # counts tokens exactly as the model will see them

    def plan(self, tokens: int) -> planner.Plan: ...

    def load(self, corpus, *, system_prompt: str | None = None, progress=None, cancel=None): ...

    def ask(self, question: str, history=(), settings=None, cancel=None) -> Iterator: ...


def choose_model(requested: str) -> str:
    """Resolve "auto": the largest UltraLong variant whose window the GPUs can use, or the CPU demo model."""
    if requested != "auto":
        return requested
    devices = planner.local_devices()
    if devices[0].name == "cpu":
        return "demo"
    from app.models import llama31_8b_config

    shape = planner.ModelShape.from_config(llama31_8b_config(window=4_194_304))
    most = planner.plan(shape, 1, devices, "fp8").max_tokens
    if most > 2_097_152:
        return "ultralong-4m"
    return "ultralong-2m" if most > 1_048_576 else "ultralong-1m"


def open_backend(model: str = "auto", *, backend: str = "local", base_url: str | None = None,
                 api_key_env: str | None = None, served_model: str | None = None, kv_dtype: str = "auto",
                 chunk_tokens: int | None = None, random_weights: bool = False, weight_dtype: str = "bf16",
                 max_model_len: int | None = None, disk_cache: bool = False, cache_dir: str | None = None,
                 parallel: str = "sequence") -> Backend:
    """Load the local engine, or connect to an OpenAI-compatible server.

    disk_cache: save processed corpora under `cache_dir` (app/store.py) and reopen them instead of prefilling.
    parallel: with several GPUs, "sequence" splits every layer's KV cache by position over all of them (attention
    on every GPU at once; the default), "layers" splits the layers (one GPU busy at a time).
    """
    if backend == "openai":
        from app.remote import RemoteEngine

        return RemoteEngine(base_url, api_key_env=api_key_env, served_model=served_model, max_model_len=max_model_len)
    from app.engine import Engine
    from app.models import load_model

    name = choose_model(model)
    log.info("loading model %s", name)
    loaded, tokenizer = load_model(name, random_weights=random_weights, weight_dtype=weight_dtype, parallel=parallel)
    if tokenizer is None:  # random weights: the real Llama-3 tokenizer stands in
        from ingest import load_tokenizer

        tokenizer = load_tokenizer()
    store = None
    if disk_cache:
        from app.store import Store

        store = Store(cache_dir)
    return Engine(loaded, tokenizer, kv_dtype=kv_dtype, chunk_tokens=chunk_tokens, model_name=name, store=store,
                  parallel="auto" if parallel == "sequence" else "layers")
