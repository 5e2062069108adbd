"""One pass of the model after the committed sequence: a chunk of tokens, or one decoded token.

`forward` runs token ids through the model into the KV cache and commits them; `decode_one_token` runs one
token, replayed as a CUDA graph on a single GPU. On the CPU a pass checks Cancel between its layers (`Stopped`).
`warm_up` runs each kind of pass once on a scratch sequence while the model loads.
"""

from __future__ import annotations

import logging
import threading
import time

import torch

from app.engine import attention_backend
from app.engine.decode_graph import DecodeGraph
from app.engine.sequence import Sequence
from app.errors import OutOfMemory

log = logging.getLogger(__name__)


class Stopped(Exception):
    """A pass was stopped between two layers because its cancel event was set (CPU); nothing was committed."""


def _check_cancel(module, args) -> None:
    """Forward pre-hook on each decoder layer (CPU): stop the pass when the engine's cancel event is set."""
    event = getattr(module, "omnibus_cancel", None)
    if event is not None and event.is_set():
        raise Stopped()


def install_cancel_hooks(model) -> None:
    """Let a CPU pass stop between two layers (once per model)."""
    if not getattr(model, "omnibus_cancel_hooks", False):
        for layer in model.model.layers:
            layer.register_forward_pre_hook(_check_cancel)
        model.omnibus_cancel_hooks = True


def forward(model, cache, ids: list[int], want_logits: bool, device: torch.device,
            cancel: threading.Event | None = None):
    """Run `ids` after the cache's committed tokens and commit them. Returns last-position logits [V] or None.

    On the CPU, `cancel` is checked between layers: a set event raises Stopped with nothing committed.
    """
    start = cache.length
    on_cpu = device.type == "cpu"
    input_ids = torch.tensor([ids], device=device)  # [1, T]
    positions = torch.arange(start, start + len(ids), device=device).unsqueeze(0)  # [1, T]
    if on_cpu:
        for layer in model.model.layers:
            layer.omnibus_cancel = cancel
    try:
        with torch.inference_mode():
            if want_logits:
                out = model(input_ids=input_ids, position_ids=positions, past_key_values=cache,
                            kv_cache=cache, use_cache=True, logits_to_keep=1)
                logits = out.logits[0, -1]
            else:
                model.model(input_ids=input_ids, position_ids=positions, past_key_values=cache,
                            kv_cache=cache, use_cache=True)
                logits = None
    except Stopped:
        cache.truncate(start)
        raise
    except torch.OutOfMemoryError as err:
        cache.truncate(start)
        torch.cuda.empty_cache()
        raise OutOfMemory(f"the GPU ran out of memory running {len(ids):,} tokens at position {start:,}; "
                          f"the cached corpus ({start:,} tokens) is kept. Try a smaller chunk "
                          f"(--chunk-tokens) or fp8 KV.") from err
    finally:
        if on_cpu:
            for layer in model.model.layers:
                layer.omnibus_cancel = None
    cache.commit()
    return logits


def decode_one_token(model, sequence: Sequence, token: int, device: torch.device, use_graphs: bool,
                     cancel: threading.Event | None = None) -> torch.Tensor:
    """One token through the model after the committed sequence; returns its logits [V].

    On a single GPU the step is captured once as a CUDA graph (kept on the sequence) and replayed: the position
    lives in device tensors, so every step has the same shapes and addresses.
    """
    cache = sequence.cache
    if device.type != "cuda":
        return forward(model, cache, [token], want_logits=True, device=device, cancel=cancel)
    cache.set_decode_position(cache.length)
    if len(cache.decode_slots) != 1 or not use_graphs:  # several devices: no single graph
        return forward(model, cache, [token], want_logits=True, device=device)
    if sequence.graph is None or not sequence.graph.captured_for(cache):
        sequence.graph = DecodeGraph(model, cache, device)
    return sequence.graph.replay(cache, token)


def synchronize(on_gpu: bool) -> None:
    """Wait for the GPU, so that a clock read after it measures the work."""
    if on_gpu:
        torch.cuda.synchronize()


def warm_up(engine, tokens: int = 4096) -> float:
    """Run a short prefill, question and decode step once on a scratch sequence of `engine`, so that kernel
    loading and compilation happen while the model loads, not in the first answer. Returns the seconds it took."""
    started = time.perf_counter()
    kept, engine.sequence = engine.sequence, Sequence()
    tokens, device, model = min(tokens, engine.window // 4), engine.layer_devices[0], engine.model
    try:
        ids = [i % engine.shape.vocab for i in range(1000, 1000 + tokens)]
        engine.ensure_cache(tokens + 64, engine.plan(tokens))
        cache = engine.sequence.cache
        cache.quantise_per_head(engine.attention == "fp8")
        attention_backend.assign(cache, engine.attention)
        forward(model, cache, ids[:tokens // 2], False, device)
        forward(model, cache, ids[tokens // 2:], False, device)  # a chunk after cached keys: the merges compile
        logits = forward(model, cache, ids[:16], True, device)  # a question's few rows
        decode_one_token(model, engine.sequence, int(logits.argmax()), device, engine.use_cuda_graphs)
        synchronize(True)
    except (RuntimeError, ValueError, OutOfMemory) as err:  # best effort: the first answer then pays instead
        log.warning("warm-up skipped (%s)", err)
    finally:
        engine.sequence = kept
        torch.cuda.empty_cache()
    return time.perf_counter() - started
