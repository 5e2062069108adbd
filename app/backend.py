"""Opening a backend: the local engine or a remote server, chosen by the command-line options.

Both give the `app.protocol.Backend` interface that the UI and the CLI use.
"""

from __future__ import annotations

import argparse
import logging

from app import planner
from app.models_catalog import REGISTRY, ULTRALONG_NAMES
from app.protocol import Backend

log = logging.getLogger(__name__)


def choose_model(requested: str) -> str:
    """Resolve "auto": the largest UltraLong variant whose window the GPUs can use, or the CPU demo model."""
    if requested != "auto":
        return requested
    devices = planner.local_devices()
    if devices[0].name == "cpu":
        return "demo"
    from app.engine.models import llama31_8b_config

    largest = REGISTRY[ULTRALONG_NAMES[-1]]
    shape = planner.ModelShape.from_config(llama31_8b_config(window=largest.window))
    most = planner.plan(shape, 1, devices, "fp8").max_tokens
    chosen = ULTRALONG_NAMES[0]
    for shorter, name in zip(ULTRALONG_NAMES, ULTRALONG_NAMES[1:]):
        if most > REGISTRY[shorter].window:  # the GPUs hold more than the shorter window: the longer one is usable
            chosen = name
    return chosen


def open_backend(model: str = "auto", *, backend: str = "local", base_url: str | None = None,
                 api_key_env: str | None = None, served_model: str | None = None, kv_dtype: str = "auto",
                 chunk_tokens: int | None = None, random_weights: bool = False, weight_dtype: str = "bf16",
                 max_model_len: int | None = None, disk_cache: bool = False, cache_dir: str | None = None,
                 parallel: str = "sequence") -> Backend:
    """Load the local engine, or connect to an OpenAI-compatible server.

    disk_cache: save processed corpora under `cache_dir` (app/store/library.py) and reopen them instead of prefilling.
    parallel: with several GPUs, "sequence" splits every layer's KV cache by position over all of them (attention
    on every GPU at once; the default), "layers" splits the layers (one GPU busy at a time).
    """
    if backend == "openai":
        from app.remote import RemoteEngine

        return RemoteEngine(base_url, api_key_env=api_key_env, served_model=served_model, max_model_len=max_model_len)
    from app.engine.engine import Engine
    from app.engine.models import load_model

    name = choose_model(model)
    log.info("loading model %s", name)
    loaded, tokenizer = load_model(name, random_weights=random_weights, weight_dtype=weight_dtype, parallel=parallel)
    if tokenizer is None:  # random weights: the real Llama-3 tokenizer stands in
        from ingest import load_tokenizer

        tokenizer = load_tokenizer()
    store = None
    if disk_cache:
        from app.store.library import Store

        store = Store(cache_dir)
    return Engine(loaded, tokenizer, kv_dtype=kv_dtype, chunk_tokens=chunk_tokens, model_name=name, store=store,
                  parallel="auto" if parallel == "sequence" else "layers")


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that choose and configure the backend, shared by `ask` and the app."""
    parser.add_argument("--model", default="auto",
                        help="auto, ultralong-1m|2m|4m, demo, or any Hugging Face id or local folder (default: auto)")
    parser.add_argument("--kv-dtype", default="auto", choices=["auto", "bf16", "fp8", "fp32"])
    parser.add_argument("--chunk-tokens", type=int, default=None, help="prefill chunk size (default 16,384 on GPUs)")
    parser.add_argument("--backend", default="local", choices=["local", "openai"],
                        help="local: this machine's GPUs/CPU; openai: a vLLM/SGLang/llama.cpp server")
    parser.add_argument("--base-url", help="the server's OpenAI API root, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key-env", help="name of the environment variable that holds the server's API key")
    parser.add_argument("--served-model", help="the model name the server expects (default: the first it lists)")
    parser.add_argument("--weight-dtype", default="bf16", choices=["bf16", "fp8"],
                        help="fp8 halves the weights' memory (needed for a 1M-token corpus on one 80 GB GPU)")
    parser.add_argument("--max-model-len", type=int, help="the server's context length, if it does not report one")
    parser.add_argument("--parallel", default="sequence", choices=["sequence", "layers"],
                        help="several GPUs: split every layer's KV by position so attention runs on all of them "
                             "at once (default), or split the layers (one GPU busy at a time)")
    parser.add_argument("--cache-dir", help="where processed corpora are saved (default: ~/.cache/omnibus)")
    parser.add_argument("--no-disk-cache", action="store_true", help="neither reopen nor save corpora on disk")
    parser.add_argument("--random-weights", action="store_true", help=argparse.SUPPRESS)  # benchmarks only


def open_from_arguments(args: argparse.Namespace) -> Backend:
    """`open_backend` with the options `add_backend_arguments` defined (the CLI and the app use both)."""
    return open_backend(args.model, backend=args.backend, base_url=args.base_url, api_key_env=args.api_key_env,
                        served_model=args.served_model, kv_dtype=args.kv_dtype, chunk_tokens=args.chunk_tokens,
                        random_weights=args.random_weights, weight_dtype=args.weight_dtype,
                        max_model_len=args.max_model_len, disk_cache=not args.no_disk_cache,
                        cache_dir=args.cache_dir, parallel=args.parallel)
