"""What a load would cost on this engine's devices, worked out before anything runs.

`EngineCosts` asks the planner (app/planner.py, pure arithmetic) with what only the engine knows: the devices
and their free memory, the weights already resident, the kernels the attention will use and the speed measured
on this machine (app/calibration.py). The engine asks it for `plan`, `rates`, `estimate_seconds` and
`load_cost`; it never changes the engine's sequence.
"""

from __future__ import annotations

import logging
import time

import torch

from app import calibration, planner
from app.engine import attention_backend
from app.engine.generation import sample
from app.engine.kv_cache import KVCache
from app.engine.sequence import common_prefix
from app.protocol import LoadCost

log = logging.getLogger(__name__)


class EngineCosts:
    """Planning and cost estimates for one engine (its model, devices, settings and sequence)."""

    def __init__(self, engine):
        self.engine = engine
        self.calibrations: dict[int, calibration.Calibration] = {}  # the CPU's measured speed, per thread count

    @property
    def calibration(self) -> calibration.Calibration | None:
        """The measured speed at the threads torch runs now (None until first used, and on GPUs)."""
        return self.calibrations.get(torch.get_num_threads())

    def devices(self) -> list[planner.Device]:
        """The devices the engine runs on, with free memory counting what its own cache holds now."""
        engine = self.engine
        if not engine.on_gpu:
            return planner.local_devices()
        cache = engine.sequence.cache
        held = cache.nbytes() if cache is not None else 0
        out = []
        sequence_parallel = engine.parallel == "sequence"
        indexes = range(torch.cuda.device_count()) if sequence_parallel else \
            sorted({d.index for d in engine.layer_devices})
        for device in indexes:
            free, total = torch.cuda.mem_get_info(device)
            share = held // len(indexes) if sequence_parallel else \
                held * sum(d.index == device for d in engine.layer_devices) // len(engine.layer_devices)
            out.append(planner.Device(torch.cuda.get_device_name(device), total, free + share, device))
        return out

    def plan(self, tokens: int, kv_dtype: str | None = None) -> planner.Plan:
        """How `tokens` prefix tokens fit on the engine's devices, with the weights already loaded."""
        engine = self.engine
        kv = kv_dtype or engine.kv_dtype_setting
        if kv == "auto" and not engine.on_gpu:
            kv = "fp32" if engine.dtype == torch.float32 else "bf16"
        if kv == "auto" and engine.attention == "fp8":  # fp8 attention reads an fp8 cache
            kv = "fp8"
        engine.counters.plans += 1
        devices = self.devices()
        resident = [0] * len(devices)
        indexes = [d.index for d in devices]
        for p in list(engine.model.parameters()) + list(engine.model.buffers()):
            if p.device.index in indexes:
                resident[indexes.index(p.device.index)] += p.numel() * p.element_size()
        if not engine.on_gpu:  # CPU memory: the weights are part of what is used, not of what is free
            resident = [0]
        measured = self.rates() if not engine.on_gpu else None
        chunk = engine.chunk_tokens
        for chunk in (chunk, chunk // 2, chunk // 4):  # smaller chunks, less workspace
            result = planner.plan(engine.shape, tokens, devices, kv, engine.weight_dtype, chunk, engine.reserve,
                                  resident_weights=resident, mode=engine.parallel, measured=measured,
                                  attention_kernel=self.attention_kernel(kv))
            if result.fits:
                break
        return result

    def attention_kernel(self, kv_dtype: str = "fp8") -> str:
        """The prefill attention the planner times: "fa3-fp8", "fa3" (FlashAttention-3 bf16) or "default"."""
        engine = self.engine
        if not engine.on_gpu or attention_backend.fa3_kernel() is None:
            return "default"
        fp8 = engine.attention == "fp8" and kv_dtype == "fp8" and engine.parallel != "sequence"
        return "fa3-fp8" if fp8 else "fa3"

    def rates(self, threads: int | None = None) -> calibration.Rates:
        """Prefill speed on these devices. CPU: at `threads` torch threads (None: as many as a load started now
        would run, app/engine/cpu_share.py), measured on this machine the first time each thread count is used
        (a few seconds), then refitted after every load; while another thread's load holds the engine, the
        planner's constants. GPUs: the planner's measured FLOP/s constants."""
        engine = self.engine
        if engine.on_gpu:
            spread = torch.cuda.device_count() if engine.parallel == "sequence" else 1
            cache = engine.sequence.cache
            kv = engine.kv_dtype_setting if cache is None else cache.storage
            return calibration.planned_rates(engine.shape, torch.cuda.get_device_name(engine.layer_devices[0]),
                                             spread, attention_kernel=self.attention_kernel(kv))
        threads = threads or engine.cpu.threads_now()
        kept = self.calibrations.get(threads)
        if kept is None:
            key = calibration.machine_key(engine.model_name, str(engine.dtype), threads)
            store = engine.store
            kept = self.calibrations[threads] = calibration.Calibration(key, store.root if store is not None else None)
        if kept.rates is None:
            if not engine.lock.acquire(blocking=False):  # re-entrant: the thread running a load gets in
                return calibration.planned_rates(engine.shape, "cpu")
            running = torch.get_num_threads()
            try:
                if kept.rates is None:
                    torch.set_num_threads(threads)
                    depth = min(2048, engine.window // 4)
                    kept.update(calibration.measure(self.timed_pass, depth=depth))
            finally:
                torch.set_num_threads(running)
                engine.lock.release()
        return kept.rates

    def timed_pass(self, tokens: int, depth: int, decode: bool = False) -> float:
        """Seconds of one prefill pass of `tokens` after `depth` cached tokens, on a scratch cache of zeros
        (`decode`: with the LM head and a sampled token, as a decode step). The pass reads one ordinary text
        token over and over, never a control token (id 0 is the demo model's end-of-text)."""
        engine = self.engine
        shape, device = engine.shape, engine.layer_devices[0]
        scratch = KVCache(engine.layer_devices, shape.kv_heads, shape.head_dim, depth + tokens,
                          "fp32" if engine.dtype == torch.float32 else "bf16", compute_dtype=engine.dtype)
        for layer in scratch.layers:
            layer.keys.zero_()
            layer.values.zero_()
        scratch.length = depth
        plain = engine.tokenizer("a", add_special_tokens=False)["input_ids"]
        ids = torch.full((1, tokens), plain[0] if plain else 0, dtype=torch.long, device=device)
        positions = torch.arange(depth, depth + tokens, device=device).unsqueeze(0)
        started = time.perf_counter()
        with torch.inference_mode():
            if decode:
                out = engine.model(input_ids=ids, position_ids=positions, past_key_values=scratch,
                                   kv_cache=scratch, use_cache=True, logits_to_keep=1)
                sample(out.logits[0, -1], 0.0, 1.0)
            else:
                engine.model.model(input_ids=ids, position_ids=positions, past_key_values=scratch,
                                   kv_cache=scratch, use_cache=True)
        return time.perf_counter() - started

    def estimate_seconds(self, tokens: int, start: int = 0) -> float:
        """Seconds to prefill positions start..tokens on this machine (CPU: the calibrated, refitted rates)."""
        engine = self.engine
        return self.rates().seconds(tokens, start, None if engine.adaptive_chunks else engine.chunk_tokens)

    def chunk_size(self, depth: int, live: calibration.LiveEstimate | None, planned: int) -> int:
        """The next prefill chunk: `planned` (GPUs, or a chosen --chunk-tokens), else sized from the live speed."""
        if not self.engine.adaptive_chunks or live is None:
            return planned
        return live.chunk_tokens(depth)

    def load_cost(self, corpus, system_prompt: str | None = None, reuse_limit: int | None = None) -> LoadCost:
        """What loading `corpus` (an ingest.Corpus or its token ids) with these instructions would cost: how much
        is cached, what must be read again and how long that takes. The loaded corpus is recognised by its key
        (a digest of its ids and the instructions), without walking the cached tokens."""
        engine, sequence = self.engine, self.engine.sequence
        corpus_ids = corpus.token_ids() if hasattr(corpus, "token_ids") else corpus
        system = engine.system_prompt if system_prompt is None else system_prompt
        tokens = engine.prompt_overhead(system) + len(corpus_ids)
        limit = tokens if reuse_limit is None else min(reuse_limit, tokens)
        if sequence.loaded and sequence.prefix_key == prefix_key(corpus_ids, system):
            cached, from_disk = min(len(sequence.prefix_ids), limit), 0  # the same corpus and instructions
        else:
            prefix = engine.prompt_prefix(corpus_ids, system)
            reusable = prefix[:limit]
            engine.counters.prefix_walks += 1
            cached = common_prefix(sequence.prefix_ids, reusable)
            from_disk = self.saved_prefix(reusable, beyond=cached) if reusable else 0
        start = max(cached, from_disk)
        head = tokens - len(corpus_ids)  # where the documents start (after the system prompt and template)
        loaded = sequence.corpus_ids
        documents_reread = start < tokens and start < head + len(loaded) and len(loaded) > 0
        seconds = self.estimate_seconds(tokens, start) if start < tokens else 0.0
        rates = self.rates()
        return LoadCost(tokens, cached, max(from_disk - cached, 0), tokens - start, seconds,
                        documents_reread, (seconds * rates.low, seconds * rates.high) if rates.noisy else None)

    def saved_prefix(self, prefix: list[int], beyond: int) -> int:
        """Tokens of `prefix` a saved corpus on disk would supply (0: none, or no disk cache)."""
        engine, cache = self.engine, self.engine.sequence.cache
        if engine.store is None or cache is not None and cache.sharded:
            return 0
        from app.store.cache_key import fingerprint, fingerprint_hash, ids_hash
        import numpy as np

        kv = cache.storage if cache is not None else self.plan(len(prefix)).kv_dtype
        fp_hash, array = fingerprint_hash(fingerprint(engine, kv)), np.asarray(prefix, dtype="<i4")
        best = 0
        for entry in engine.store.entries():
            if entry.meta.get("fingerprint_hash") == fp_hash and max(beyond, best) < entry.tokens <= len(prefix) \
                    and entry.meta.get("prefix_sha256") == ids_hash(array[:entry.tokens]):
                best = entry.tokens
        return best


def prefix_key(corpus_ids, system_prompt: str) -> tuple:
    """What identifies a prompt prefix: a digest of the corpus ids (hashed in C, no Python walk) and the
    instructions. Kept on the sequence after a load, so an unchanged corpus is recognised in O(1) after it."""
    import hashlib

    import numpy as np

    array = np.ascontiguousarray(np.asarray(corpus_ids, dtype="<i4"))
    return len(array), hashlib.blake2b(array.tobytes(), digest_size=16).digest(), system_prompt
