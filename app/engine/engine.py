"""The local engine: prefill a corpus once, then answer every question from the cached prefix.

`load_corpus` runs the system prompt and corpus through the model in bounded chunks into a preallocated
KV cache. Whatever prefix is already cached is reused, so loading the same corpus again costs nothing,
an extended corpus costs only its new tokens, and a cancelled load resumes where it stopped.
`ask` keeps the conversation in the cache too: each question and answer stay committed after the corpus,
and the next question reuses the longest cached token prefix of its prompt, so a follow-up costs only its
own tokens. The cache rolls back only as far as a prompt differs (Regenerate, Clear, an edit, a dropped
turn), never below the corpus.

On the CPU, prefill chunks are sized from the speed measured on this machine (app/calibration.py) so that
each takes about 0.4 s: progress, Cancel and Stop then act within a second.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import torch

from app import calibration, planner
from app.engine import attention, attention_backend, grammar
from app.engine.decode_graph import DecodeGraph
from app.engine.fp8_linear import Fp8Linear
from app.engine.generation import RepetitionGuard, StreamDecoder, sample, stop_ids
from app.engine.kv_cache import KVCache
from app.errors import Cancelled, CorpusTooLarge, NoCorpus, OutOfMemory
from app.prompt import SMALL_MODELS, Turn, default_system_prompt, encode_prompt, fit_turns
from app.protocol import AnswerStats, LoadCost, LoadStats, PrefillProgress, Settings

DEMO_ANSWER_TOKENS = 256  # the small demo model's default answer cap (its long answers drift and loop)

log = logging.getLogger(__name__)


@dataclass
class Counters:
    """What the engine has run through the model since it started (tests assert on these)."""

    corpus_tokens_prefilled: int = 0
    question_tokens_prefilled: int = 0
    tokens_decoded: int = 0
    corpus_loads: int = 0


class _Stopped(Exception):
    """A pass was stopped between two layers because its cancel event was set (CPU); nothing was committed."""


def _check_cancel(module, args) -> None:
    """Forward pre-hook on each decoder layer (CPU): stop the pass when the engine's cancel event is set."""
    event = getattr(module, "omnibus_cancel", None)
    if event is not None and event.is_set():
        raise _Stopped()


class Engine:
    """One model, one cached corpus, one question at a time."""

    name = "local"
    base_url = ""  # nothing leaves this machine

    def __init__(self, model, tokenizer, *, kv_dtype: str = "auto", chunk_tokens: int | None = None,
                 model_name: str = "", store=None, parallel: str = "auto", warm_up: bool = True,
                 attention: str = "bf16"):
        """attention: "bf16" (default) or "fp8": FlashAttention-3's fp8 kernels read an fp8 KV cache quantised per
        head in prefill and decode (Hopper with fa3-fwd; elsewhere the bf16 kernels serve, and the stats say so)."""
        self.model, self.tokenizer = model, tokenizer
        self.attention = attention_backend.check_setting(attention)
        self.model_name = model_name or getattr(model.config, "_name_or_path", "model")
        self.shape = planner.ModelShape.from_config(model.config)
        self.window = self.shape.window
        self.reserve = planner.question_reserve(self.window)
        self.kv_dtype_setting = kv_dtype
        self.dtype = model.model.embed_tokens.weight.dtype  # the compute dtype
        self.weight_dtype = "fp8" if any(isinstance(m, Fp8Linear) for m in model.modules()) else \
            {torch.float32: "fp32", torch.bfloat16: "bf16"}.get(self.dtype, "bf16")
        self.layer_devices = [layer.self_attn.o_proj.weight.device for layer in model.model.layers]
        self.on_gpu = self.layer_devices[0].type == "cuda"
        # Several GPUs and the whole model on one: split every layer's KV cache by position over all of them,
        # so attention (nearly all the work at long context) runs on every GPU at once.
        one_device = len(set(self.layer_devices)) == 1
        if parallel == "auto":
            parallel = "sequence" if self.on_gpu and one_device and torch.cuda.device_count() > 1 else "layers"
        self.parallel = parallel
        self.chunk_tokens = chunk_tokens or (16_384 if self.on_gpu else 2048)
        # CPU without a chosen chunk size: each chunk sized from the measured speed (about 0.4 s a chunk).
        self.adaptive_chunks = chunk_tokens is None and not self.on_gpu
        self.calibration: calibration.Calibration | None = None  # the CPU's measured speed, made on first use
        self.stop_ids = stop_ids(model, tokenizer)
        self.cache: KVCache | None = None
        self.cached_ids: list[int] = []  # the committed prefix (system prompt + corpus), token for token
        self.corpus_ids: list[int] = []  # the corpus alone, as loaded
        self.corpus_sources: list[str] = []  # its documents' sources, in order (names saved corpora)
        self.conversation_ids: list[int] = []  # committed after the corpus: the last prompt's turns and answer
        self.prefix_length = 0  # tokens of system prompt + corpus once fully loaded
        self.system_prompt = default_system_prompt(self.model_name)
        self.counters = Counters()
        self.use_cuda_graphs = True
        self._graph: DecodeGraph | None = None  # the decode step, captured on the first token it runs
        self._lock = threading.RLock()  # re-entrant so that a load's own planning can calibrate
        self.store = store  # app.store.library.Store: corpora saved on disk, reopened instead of prefilled (None: off)
        # CPU: a pass checks Cancel between its layers, so even a slow chunk on a busy machine stops at once.
        if not self.on_gpu and not getattr(model, "omnibus_cancel_hooks", False):
            for layer in model.model.layers:
                layer.register_forward_pre_hook(_check_cancel)
            model.omnibus_cancel_hooks = True
        self.warm_up_seconds = self.warm_up() if self.on_gpu and warm_up else 0.0

    def warm_up(self, tokens: int = 4096) -> float:
        """Run a short prefill, question and decode step once on a scratch cache, so that kernel loading and
        compilation happen while the model loads, not in the first answer. Returns the seconds it took."""
        started = time.perf_counter()
        kept = self.cache, self.cached_ids, self.conversation_ids, self._graph
        tokens = min(tokens, self.window // 4)
        try:
            self.cache, self.cached_ids, self.conversation_ids, self._graph = None, [], [], None
            ids = [i % self.shape.vocab for i in range(1000, 1000 + tokens)]
            self._ensure_cache(tokens + 64, self.plan(tokens))
            self.cache.quantise_per_head(self.attention == "fp8")
            attention_backend.assign(self.cache, self.attention)
            self._forward(ids[:tokens // 2], want_logits=False)
            self._forward(ids[tokens // 2:], want_logits=False)  # a chunk after cached keys: the merges compile
            logits = self._forward(ids[:16], want_logits=True)  # a question's few rows
            self._decode(int(logits.argmax()))
            _synchronize(True)
        except (RuntimeError, ValueError, OutOfMemory) as err:  # best effort: the first answer then pays instead
            log.warning("warm-up skipped (%s)", err)
        finally:
            self.cache, self.cached_ids, self.conversation_ids, self._graph = kept
            torch.cuda.empty_cache()
        return time.perf_counter() - started

    # -- planning --
    def devices(self) -> list[planner.Device]:
        if not self.on_gpu:
            return planner.local_devices()
        held = self.cache.nbytes() if self.cache is not None else 0
        out = []
        indexes = range(torch.cuda.device_count()) if self.parallel == "sequence" else \
            sorted({d.index for d in self.layer_devices})
        for device in indexes:
            free, total = torch.cuda.mem_get_info(device)
            share = held // len(indexes) if self.parallel == "sequence" else \
                held * sum(d.index == device for d in self.layer_devices) // len(self.layer_devices)
            out.append(planner.Device(torch.cuda.get_device_name(device), total, free + share, device))
        return out

    def plan(self, tokens: int, kv_dtype: str | None = None) -> planner.Plan:
        """How `tokens` corpus tokens fit on this engine's devices, with the weights already loaded."""
        kv = kv_dtype or self.kv_dtype_setting
        if kv == "auto" and not self.on_gpu:
            kv = "fp32" if self.dtype == torch.float32 else "bf16"
        if kv == "auto" and self.attention == "fp8":  # fp8 attention reads an fp8 cache
            kv = "fp8"
        devices = self.devices()
        resident = [0] * len(devices)
        indexes = [d.index for d in devices]
        for p in list(self.model.parameters()) + list(self.model.buffers()):
            if p.device.index in indexes:
                resident[indexes.index(p.device.index)] += p.numel() * p.element_size()
        if not self.on_gpu:  # CPU memory: the weights are part of what is used, not of what is free
            resident = [0]
        measured = self.rates() if not self.on_gpu else None
        for chunk in (self.chunk_tokens, self.chunk_tokens // 2, self.chunk_tokens // 4):  # smaller chunks, less workspace
            result = planner.plan(self.shape, tokens, devices, kv, self.weight_dtype, chunk, self.reserve,
                                  resident_weights=resident, mode=self.parallel, measured=measured,
                                  attention_kernel=self.attention_kernel(kv))
            if result.fits:
                break
        return result

    def attention_kernel(self, kv_dtype: str = "fp8") -> str:
        """The prefill attention the planner times: "fa3-fp8", "fa3" (FlashAttention-3 bf16) or "default"."""
        if not self.on_gpu or attention.fa3_kernel() is None:
            return "default"
        return "fa3-fp8" if self.attention == "fp8" and kv_dtype == "fp8" and self.parallel != "sequence" else "fa3"

    def set_attention(self, attention: str) -> None:
        """Choose "bf16" or "fp8" attention: fp8 applies to corpora loaded from now on (their cache is quantised
        per head); a corpus already cached is read with the kernels its cache allows (the stats name them)."""
        self.attention = attention_backend.check_setting(attention)
        if self.cache is not None:
            attention_backend.assign(self.cache, self.attention)

    # -- speed (app/calibration.py) --
    def rates(self) -> calibration.Rates:
        """Prefill speed on these devices. CPU: measured on this machine the first time (a few hundred ms),
        then refitted after every load; while another thread's load holds the engine, the planner's constants.
        GPUs: the planner's measured FLOP/s constants."""
        if self.on_gpu:
            spread = torch.cuda.device_count() if self.parallel == "sequence" else 1
            return calibration.planned_rates(self.shape, torch.cuda.get_device_name(self.layer_devices[0]), spread,
                                             attention_kernel=self.attention_kernel(self.kv_dtype_setting
                                                                                    if self.cache is None
                                                                                    else self.cache.storage))
        if self.calibration is None:
            key = calibration.machine_key(self.model_name, str(self.dtype))
            self.calibration = calibration.Calibration(key, self.store.root if self.store is not None else None)
        if self.calibration.rates is None:
            if not self._lock.acquire(blocking=False):  # re-entrant: the thread running a load gets in
                return calibration.planned_rates(self.shape, "cpu")
            try:
                if self.calibration.rates is None:
                    self.calibration.update(calibration.measure(self._timed_pass, depth=min(2048, self.window // 4)))
            finally:
                self._lock.release()
        return self.calibration.rates

    def _timed_pass(self, tokens: int, depth: int, decode: bool = False) -> float:
        """Seconds of one prefill pass of `tokens` after `depth` cached tokens, on a scratch cache of zeros
        (`decode`: with the LM head and a sampled token, as a decode step)."""
        scratch = KVCache(self.layer_devices, self.shape.kv_heads, self.shape.head_dim, depth + tokens,
                          "fp32" if self.dtype == torch.float32 else "bf16", compute_dtype=self.dtype)
        for layer in scratch.layers:
            layer.keys.zero_()
            layer.values.zero_()
        scratch.length = depth
        ids = torch.zeros(1, tokens, dtype=torch.long, device=self.layer_devices[0])
        positions = torch.arange(depth, depth + tokens, device=self.layer_devices[0]).unsqueeze(0)
        started = time.perf_counter()
        with torch.inference_mode():
            if decode:
                out = self.model(input_ids=ids, position_ids=positions, past_key_values=scratch, kv_cache=scratch,
                                 use_cache=True, logits_to_keep=1)
                sample(out.logits[0, -1], 0.0, 1.0)
            else:
                self.model.model(input_ids=ids, position_ids=positions, past_key_values=scratch, kv_cache=scratch,
                                 use_cache=True)
        return time.perf_counter() - started

    def estimate_seconds(self, tokens: int, start: int = 0) -> float:
        """Seconds to prefill positions start..tokens on this machine (CPU: the calibrated, refitted rates)."""
        return self.rates().seconds(tokens, start, None if self.adaptive_chunks else self.chunk_tokens)

    def _chunk(self, depth: int, live: calibration.LiveEstimate | None, planned: int) -> int:
        """The next prefill chunk: `planned` (GPUs, or a chosen --chunk-tokens), else sized from the live speed."""
        if not self.adaptive_chunks or live is None:
            return planned
        return live.chunk_tokens(depth)

    def default_settings(self) -> Settings:
        """Settings for this model: the demo answers up to 256 tokens (its long answers drift), others 512."""
        return Settings(max_new_tokens=DEMO_ANSWER_TOKENS if self.model_name in SMALL_MODELS else 512)

    def load_cost(self, corpus, system_prompt: str | None = None, reuse_limit: int | None = None) -> LoadCost:
        """What loading `corpus` (an ingest.Corpus or its token ids) with these instructions would cost, worked
        out before anything runs: how much is cached, what must be read again and how long that takes.
        `reuse_limit`: as for `load_corpus`."""
        corpus_ids = list(corpus.token_ids()) if hasattr(corpus, "token_ids") else list(corpus)
        prefix = self.prompt_prefix(corpus_ids, system_prompt)
        reusable = prefix if reuse_limit is None else prefix[:reuse_limit]
        cached = _common_prefix(self.cached_ids, reusable)
        from_disk = self._saved_prefix(reusable, beyond=cached) if reusable else 0
        start = max(cached, from_disk)
        head = len(prefix) - len(corpus_ids)  # where the documents start (after the system prompt and template)
        documents_reread = start < len(prefix) and start < head + len(self.corpus_ids) and bool(self.corpus_ids)
        seconds = self.estimate_seconds(len(prefix), start) if start < len(prefix) else 0.0
        rates = self.rates()
        return LoadCost(len(prefix), cached, max(from_disk - cached, 0), len(prefix) - start, seconds,
                        documents_reread, (seconds * rates.low, seconds * rates.high) if rates.noisy else None)

    def _saved_prefix(self, prefix: list[int], beyond: int) -> int:
        """Tokens of `prefix` a saved corpus on disk would supply (0: none, or no disk cache)."""
        if self.store is None or self.cache is not None and self.cache.sharded:
            return 0
        from app.store.cache_key import fingerprint, fingerprint_hash, ids_hash
        import numpy as np

        kv = self.cache.storage if self.cache is not None else self.plan(len(prefix)).kv_dtype
        fp_hash, array = fingerprint_hash(fingerprint(self, kv)), np.asarray(prefix, dtype="<i4")
        best = 0
        for entry in self.store.entries():
            if entry.meta.get("fingerprint_hash") == fp_hash and max(beyond, best) < entry.tokens <= len(prefix) \
                    and entry.meta.get("prefix_sha256") == ids_hash(array[:entry.tokens]):
                best = entry.tokens
        return best

    def prompt_prefix(self, corpus_ids, system_prompt: str | None = None) -> list[int]:
        """System prompt and corpus as the model sees them: the part every question shares."""
        system = self.system_prompt if system_prompt is None else system_prompt
        return encode_prompt(self.tokenizer, list(corpus_ids), "", system_prompt=system).prefix

    def prompt_overhead(self, system_prompt: str | None = None) -> int:
        """Tokens that the system prompt and the chat template put before the documents (exact)."""
        return len(self.prompt_prefix([], system_prompt))

    # -- running the model --
    def _forward(self, ids: list[int], want_logits: bool, cancel: threading.Event | None = None):
        """Run `ids` after the committed sequence and commit them. Returns last-position logits [V] or None.

        On the CPU, `cancel` is checked between layers: a set event raises _Stopped with nothing committed.
        """
        cache = self.cache
        start = cache.length
        device = self.layer_devices[0]
        input_ids = torch.tensor([ids], device=device)
        positions = torch.arange(start, start + len(ids), device=device).unsqueeze(0)
        if not self.on_gpu:
            for layer in self.model.model.layers:
                layer.omnibus_cancel = cancel
        try:
            with torch.inference_mode():
                if want_logits:
                    out = self.model(input_ids=input_ids, position_ids=positions, past_key_values=cache,
                                     kv_cache=cache, use_cache=True, logits_to_keep=1)
                    logits = out.logits[0, -1]
                else:
                    self.model.model(input_ids=input_ids, position_ids=positions, past_key_values=cache,
                                     kv_cache=cache, use_cache=True)
                    logits = None
        except _Stopped:
            cache.truncate(start)
            raise
        except torch.OutOfMemoryError as err:
            cache.truncate(start)
            torch.cuda.empty_cache()
            raise OutOfMemory(f"the GPU ran out of memory running {len(ids):,} tokens at position {start:,}; "
                              f"the cached corpus ({start:,} tokens) is kept. Try a smaller chunk "
                              f"(--chunk-tokens) or fp8 KV.") from err
        finally:
            if not self.on_gpu:
                for layer in self.model.model.layers:
                    layer.omnibus_cancel = None
        cache.commit()
        return logits

    def _decode(self, token: int, cancel: threading.Event | None = None) -> torch.Tensor:
        """One token through the model after the committed sequence; returns its logits [V].

        On a single GPU the step is captured once as a CUDA graph and replayed: the position lives in device
        tensors, so every step has the same shapes and addresses.
        """
        cache = self.cache
        if not self.on_gpu:
            return self._forward([token], want_logits=True, cancel=cancel)
        cache.set_decode_position(cache.length)
        if len(cache.decode_slots) != 1 or not self.use_cuda_graphs:  # several devices: no single graph
            return self._forward([token], want_logits=True)
        if self._graph is None or not self._graph.captured_for(cache):
            self._graph = DecodeGraph(self.model, cache, self.layer_devices[0])
        return self._graph.replay(cache, token)

    def _ensure_cache(self, needed: int, plan: planner.Plan) -> None:
        """Have a cache of the planned storage that holds `needed` tokens, keeping the shared prefix if it can."""
        capacity = min(self.window, needed + self.reserve)
        kv_dtype = plan.kv_dtype
        if self.cache is not None and (self.cache.storage != kv_dtype
                                       or (self.cache.sharded and capacity > self.cache.capacity)):
            self.drop_cache()
        if self.cache is None:
            shards = None
            if self.parallel == "sequence":
                shards = [(torch.device("cuda", i), n) for i, n in enumerate(plan.shard_tokens)]
            self.cache = KVCache(self.layer_devices, self.shape.kv_heads, self.shape.head_dim, capacity, kv_dtype,
                                 compute_dtype=self.dtype, shards=shards)
        elif capacity > self.cache.capacity:
            self.cache.grow(capacity)

    def drop_cache(self) -> None:
        """Free the KV cache (and forget the cached corpus and conversation)."""
        self.cache, self.cached_ids, self.conversation_ids, self._graph = None, [], [], None
        if self.on_gpu:
            torch.cuda.empty_cache()

    def load_corpus(self, corpus_ids, *, system_prompt: str | None = None, progress=None,
                    cancel: threading.Event | None = None, label: str | None = None, sources=(),
                    reuse_limit: int | None = None, save: bool = True) -> LoadStats:
        """Prefill system prompt + corpus into the cache, reusing whatever prefix is already there.

        With a disk store, the longest saved prefix is loaded from disk first, checkpoints are saved during
        the prefill, and the result is saved after it (named `label`, else after its first `sources`).
        `reuse_limit`: reuse at most this many tokens from memory or disk (what the caller loaded itself; the
        rest is read again, so neither the stats nor the time tell what others loaded). `save=False`: neither
        read from nor write to the disk store (a chat client's messages stay in memory).

        Raises CorpusTooLarge before running anything if the plan says it cannot fit, and Cancelled if
        `cancel` is set (what was prefilled so far stays cached and is reused by the next call).
        """
        with self._lock:
            corpus_ids = list(corpus_ids)
            prefix = self.prompt_prefix(corpus_ids, system_prompt)
            plan = self.plan(len(prefix))
            if not plan.fits:  # refused before anything changes: the corpus loaded before stays usable
                raise CorpusTooLarge(plan.reason + ". " + planner.fit_advice(plan, self.reserve))
            if system_prompt is not None:
                self.system_prompt = system_prompt
            reusable = prefix if reuse_limit is None else prefix[:reuse_limit]
            reused = _common_prefix(self.cached_ids, reusable)
            same = reused == len(prefix) == len(self.cached_ids)
            self._ensure_cache(len(prefix), plan)
            reused = min(reused, len(self.cached_ids))  # a reallocated cache starts empty
            if not (same and reused == len(prefix)):
                self.conversation_ids = []  # the same corpus keeps its conversation cached after it
            self.corpus_ids, self.corpus_sources, self.prefix_length = corpus_ids, list(sources), len(prefix)
            self.cache.truncate(reused + len(self.conversation_ids))
            if self.cache.length == 0:  # a new sequence: quantised per head for fp8 attention
                self.cache.quantise_per_head(self.attention == "fp8")
            self.cached_ids = prefix[:reused]
            self.counters.corpus_loads += 1
            store = self.store if save else None
            disk = store.restore(self, reusable, plan.kv_dtype, beyond=reused) \
                if store is not None and reused < len(reusable) else None
            if disk is not None and (disk.tokens or disk.clobbered):  # the cache's buffers now hold what it read
                self.cache.adopt(disk.tokens)
                self.cached_ids = prefix[:disk.tokens]
            reused = len(self.cached_ids)
            attention_backend.assign(self.cache, self.attention)
            source = "disk" if disk and disk.tokens else ("memory" if reused else "prefill")
            checkpoint = store.checkpointer(self, label) if store is not None else None
            # The one estimate: the measured rates, scaled by how the recent chunks ran (app/calibration.py).
            live = calibration.LiveEstimate(self.rates())
            fixed = None if self.adaptive_chunks else plan.chunk_tokens
            estimated = live.remaining(reused, len(prefix), fixed)
            live.trust()
            started = time.perf_counter()
            if progress is not None and reused < len(prefix):  # shown before the first chunk has run
                progress(PrefillProgress(reused, len(prefix), 0.0, estimated, 0.0, estimated, reused))
            start = reused
            while start < len(prefix):
                if cancel is not None and cancel.is_set():
                    raise Cancelled(f"stopped at {start:,} of {len(prefix):,} tokens; loading again resumes there",
                                    done=start, total=len(prefix))
                chunk = prefix[start:start + self._chunk(start, live, plan.chunk_tokens)]
                chunk_started = time.perf_counter()
                try:
                    self._forward(chunk, want_logits=False, cancel=cancel)
                except _Stopped:
                    raise Cancelled(f"stopped at {start:,} of {len(prefix):,} tokens; loading again resumes there",
                                    done=start, total=len(prefix)) from None
                self.cached_ids.extend(chunk)
                self.counters.corpus_tokens_prefilled += len(chunk)
                start += len(chunk)
                if progress is not None or not self.on_gpu:
                    _synchronize(self.on_gpu)
                    now = time.perf_counter()
                    live.record(len(chunk), start - len(chunk), now - chunk_started)
                if progress is not None:
                    elapsed, eta = now - started, live.remaining(start, len(prefix), fixed)
                    progress(PrefillProgress(start, len(prefix), (start - reused) / max(elapsed, 1e-9), eta,
                                             elapsed, elapsed + eta, reused))
                if checkpoint is not None:
                    checkpoint.after_chunk()
            _synchronize(self.on_gpu)
            seconds = time.perf_counter() - started
            attention_backend.assign(self.cache, self.attention)  # the kernels for the loaded length (decode)
            fresh = len(prefix) - reused
            if not self.on_gpu and seconds >= 1.0:  # this load's chunks are the newest measure of the speed
                self.calibration.update(calibration.fit(live.passes, live.rates))
            saved = store.save(self, label=label) if store is not None and fresh else None
            source += "+prefill" if fresh and source != "prefill" else ""
            return LoadStats(len(prefix), reused, seconds, fresh / seconds if fresh else 0.0, plan.kv_dtype,
                             source, disk.seconds if disk else 0.0, saved, estimated_s=estimated,
                             stop_requested=cancel is not None and cancel.is_set(),
                             attention=self.cache.backend.describe())

    def load(self, corpus, *, system_prompt: str | None = None, progress=None, cancel=None,
             reuse_limit: int | None = None) -> LoadStats:
        """Load an ingested corpus (`ingest.Corpus`, tokenized with this engine's tokenizer)."""
        return self.load_corpus(corpus.token_ids(), system_prompt=system_prompt, progress=progress, cancel=cancel,
                                sources=[document.source for document in corpus.documents], reuse_limit=reuse_limit)

    def ask(self, question: str, history=(), settings: Settings | None = None,
            cancel: threading.Event | None = None):
        """Stream an answer to `question` about the loaded corpus.

        Yields text pieces, then one AnswerStats. Earlier turns (`history`, a list of Turn) are kept while
        they fit, oldest dropped first. The prompt's turns and the answer stay in the cache after the corpus:
        the next question reuses the longest cached prefix of its own prompt and runs only the rest
        (AnswerStats.reread_tokens), so a follow-up costs only its own tokens. `cancel` is checked between
        prefill chunks and before every decoded token.
        """
        settings = settings or self.default_settings()
        json_constraint = grammar.constraint(self.tokenizer, settings, self.stop_ids)
        guard = settings.repetition_guard if settings.repetition_guard is not None else \
            self.model_name in SMALL_MODELS and json_constraint is None  # JSON rows repeat their keys
        with self._lock:
            if self.cache is None or not self.cached_ids or len(self.cached_ids) < self.prefix_length:
                raise NoCorpus("no corpus is loaded (or its loading was stopped): load it before asking")
            corpus_end = len(self.cached_ids)
            attention_backend.assign(self.cache, self.attention)
            history, dropped, suffix = self._fit_turns(question, list(history), settings.max_new_tokens)
            started = time.perf_counter()
            # Reuse what the cache holds of this prompt; at least the last token runs again, for its logits.
            reused = min(_common_prefix(self.conversation_ids, suffix), len(suffix) - 1)
            del self.conversation_ids[reused:]
            self.cache.truncate(corpus_end + reused)
            generator = None
            if settings.seed is not None:
                generator = torch.Generator(device=self.layer_devices[-1]).manual_seed(settings.seed)
            decoder, reason = StreamDecoder(self.tokenizer), "length"
            repeats = RepetitionGuard() if guard else None
            first_token_at, reread_s = None, 0.0
            live = calibration.LiveEstimate(self.rates()) if self.adaptive_chunks else None
            try:
                logits, position = None, reused
                while position < len(suffix):
                    if cancel is not None and cancel.is_set():
                        reason = "cancelled"
                        break
                    chunk_started = time.perf_counter()
                    piece = suffix[position:position + self._chunk(corpus_end + position, live, self.chunk_tokens)]
                    try:
                        logits = self._forward(piece, want_logits=position + len(piece) == len(suffix), cancel=cancel)
                    except _Stopped:
                        reason = "cancelled"
                        break
                    self.conversation_ids.extend(piece)
                    self.counters.question_tokens_prefilled += len(piece)
                    if live is not None:
                        live.record(len(piece), corpus_end + position, time.perf_counter() - chunk_started)
                    position += len(piece)
                reread_s = time.perf_counter() - started
                for _ in range(settings.max_new_tokens if position == len(suffix) else 0):
                    if cancel is not None and cancel.is_set():
                        reason = "cancelled"
                        break
                    if json_constraint is not None:
                        logits = json_constraint.restrict(logits)
                    token = sample(logits, settings.temperature, settings.top_p, generator)
                    if json_constraint is not None:
                        json_constraint.take(token)
                    if first_token_at is None:
                        first_token_at = time.perf_counter()
                    if token in self.stop_ids:
                        reason = "stop"
                        break
                    self.counters.tokens_decoded += 1
                    text = decoder.push(token)
                    if text:
                        yield text
                    if len(decoder.ids) == settings.max_new_tokens:
                        break
                    if repeats is not None and repeats.push(token):
                        reason = "repetition"
                        break
                    if self.cache.length >= self.cache.capacity:
                        reason = "full"
                        break
                    try:
                        logits = self._decode(token, cancel)
                    except _Stopped:
                        reason = "cancelled"
                        break
                    self.conversation_ids.append(token)
                if json_constraint is not None and reason == "stop" and json_constraint.cut_short:
                    reason = json_constraint.cut_short  # the JSON was closed early, whole
                tail = decoder.flush()
                if tail:
                    yield tail
            finally:
                # Whatever ran and was committed stays: the prompt's turns and the answer so far.
                self.cache.truncate(corpus_end + len(self.conversation_ids))
            now = time.perf_counter()
            first = first_token_at or now
            decode_s = now - first
            n = len(decoder.ids)
            if not self.on_gpu and n > 4 and decode_s > 0 and self.calibration is not None:
                self.calibration.record_decode(decode_s / (n - 1), corpus_end + len(suffix))
            yield AnswerStats(corpus_end + len(suffix), corpus_end + reused, n, first - started,
                              (n - 1) / decode_s if n > 1 and decode_s > 0 else 0.0, reason, dropped,
                              reread_tokens=position - reused, reread_s=reread_s, reused_tokens=reused,
                              attention=self.cache.backend.describe())

    @property
    def conversation_tokens(self) -> int:
        """Tokens cached after the corpus: the last prompt's earlier turns, question and answer."""
        return len(self.conversation_ids)

    def _fit_turns(self, question: str, history: list[Turn], max_new_tokens: int):
        """Encode the question after as many recent turns as the cache has room for."""
        room = self.cache.capacity - len(self.cached_ids)

        def measure(kept):
            # The corpus slot is left empty: only the few template tokens around it are compared, not the
            # whole corpus, so a question at 1M tokens costs no million-element list work.
            ids = encode_prompt(self.tokenizer, (), question, kept, self.system_prompt)
            head = len(ids.prefix)
            if head + len(self.corpus_ids) != len(self.cached_ids) or ids.prefix != self.cached_ids[:head]:
                raise RuntimeError("the prompt prefix does not match the cached corpus")  # an internal defect
            return len(ids.suffix), ids.suffix

        kept, dropped, suffix = fit_turns(history, room, max_new_tokens, measure)
        if kept is None:
            raise CorpusTooLarge(f"the question is {len(suffix):,} tokens; only {room:,} are left after the "
                                 f"corpus in the {self.cache.capacity:,}-token cache")
        return kept, dropped, suffix


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _synchronize(on_gpu: bool) -> None:
    if on_gpu:
        torch.cuda.synchronize()
