"""The local engine: prefill a corpus once, then answer every question from the cached prefix.

Engine shape: `Engine` holds one model and one `Sequence` (app/engine/sequence.py: the KV cache and the token
ids it holds, reset in one place). `load_corpus` finds what is cached already, then `_prefill` runs the rest in
chunks. `ask` (app/engine/answer.py) fits the turns, prefills the prompt's uncached tail and decodes the answer
until a stop rule ends it. One pass of the model is app/engine/forward.py (`forward`, `decode_one_token`);
planning and cost estimates are app/engine/costs.py, which asks the planner; app/engine/attention_backend.py
chooses the attention kernels once per cache.

Whatever prefix is cached is reused: the same corpus again costs nothing, an extended corpus only its new
tokens, and a cancelled load resumes where it stopped. Each question and answer stay committed after the corpus,
so a follow-up costs only its own tokens; the cache rolls back only as far as a prompt differs, never below the
corpus. On the CPU, chunks are sized from the measured speed (about 0.4 s each), so Cancel acts within a second.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import torch

from app import calibration, planner
from app.engine import answer, attention_backend
from app.engine.costs import EngineCosts, prefix_key
from app.engine.cpu_share import CpuShare
from app.engine import forward as forward_pass
from app.engine.forward import Stopped, forward, install_cancel_hooks, synchronize
from app.engine.fp8_linear import Fp8Linear
from app.engine.generation import stop_ids
from app.engine.kv_cache import KVCache
from app.engine.sequence import Sequence, common_prefix
from app.errors import Cancelled, CorpusTooLarge
from app.prompt import SMALL_MODELS, default_system_prompt, encode_prompt
from app.protocol import LoadCost, LoadStats, PrefillProgress, Settings

DEMO_ANSWER_TOKENS = 256  # the small demo model's default answer cap (its long answers drift and loop)

log = logging.getLogger(__name__)


@dataclass
class Counters:
    """What the engine has run through the model since it started, and how often it planned (tests assert on these)."""

    corpus_tokens_prefilled: int = 0
    question_tokens_prefilled: int = 0
    tokens_decoded: int = 0
    corpus_loads: int = 0
    plans: int = 0  # fit plans made (`plan`)
    prefix_walks: int = 0  # token-by-token comparisons of a prefix with the cached one (an unchanged one needs none)


class Engine:
    """One model, one cached sequence (corpus, then conversation), one question at a time."""

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
        self.stop_ids = stop_ids(model, tokenizer)
        self.sequence = Sequence()
        self.costs = EngineCosts(self)
        self.cpu = None if self.on_gpu else CpuShare()  # torch's CPU threads, fitted to the cores left free
        self.system_prompt = default_system_prompt(self.model_name)
        self.counters = Counters()
        self.use_cuda_graphs = True
        self.lock = threading.RLock()  # re-entrant so that a load's own planning can calibrate
        self.store = store  # app.store.library.Store: corpora saved on disk, reopened instead of prefilled (None: off)
        if not self.on_gpu:  # a CPU pass checks Cancel between its layers: a slow chunk stops at once
            install_cancel_hooks(model)
        self.warm_up_seconds = forward_pass.warm_up(self) if self.on_gpu and warm_up else 0.0

    # -- what the sequence holds (read-only views; the sequence changes only through its own methods) --
    @property
    def cache(self) -> KVCache | None:
        return self.sequence.cache

    @property
    def cached_ids(self) -> list[int]:
        """The committed prefix (system prompt + corpus), token for token."""
        return self.sequence.prefix_ids

    @property
    def corpus_ids(self) -> list[int]:
        return self.sequence.corpus_ids

    @property
    def corpus_sources(self) -> list[str]:
        return self.sequence.corpus_sources

    @property
    def prefix_length(self) -> int:
        return self.sequence.prefix_length

    @property
    def conversation_tokens(self) -> int:
        """Tokens cached after the corpus: the last prompt's earlier turns, question and answer."""
        return len(self.sequence.conversation_ids)

    @property
    def calibration(self) -> calibration.Calibration | None:
        """The CPU's measured speed (made on first use; None until then and on GPUs)."""
        return self.costs.calibration

    # -- planning and cost (app/engine/costs.py) --
    def plan(self, tokens: int, kv_dtype: str | None = None) -> planner.Plan:
        """How `tokens` prefix tokens fit on this engine's devices, with the weights already loaded."""
        return self.costs.plan(tokens, kv_dtype)

    def rates(self, threads: int | None = None) -> calibration.Rates:
        """Prefill speed on these devices (measured on this machine for the CPU, at `threads` torch threads;
        None: those a load started now would run)."""
        return self.costs.rates(threads)

    def estimate_seconds(self, tokens: int, start: int = 0) -> float:
        """Seconds to prefill positions start..tokens on this machine."""
        return self.costs.estimate_seconds(tokens, start)

    def load_cost(self, corpus, system_prompt: str | None = None, reuse_limit: int | None = None) -> LoadCost:
        """What loading `corpus` with these instructions would cost, worked out before anything runs."""
        return self.costs.load_cost(corpus, system_prompt, reuse_limit)

    def save_corpus(self, label: str | None = None):
        """Save the loaded corpus to the disk store (`SaveResult`), or None without a store."""
        return self.store.save(self, label=label) if self.store is not None else None

    def fingerprint(self, kv_dtype: str) -> dict:
        """What besides the token ids decides the cached keys and values (app/store/cache_key.py)."""
        from app.store.cache_key import fingerprint

        return fingerprint(self, kv_dtype)

    def set_attention(self, attention: str) -> None:
        """Choose "bf16" or "fp8" attention: fp8 applies to corpora loaded from now on (their cache is quantised
        per head); a corpus already cached is read with the kernels its cache allows (the stats name them)."""
        self.attention = attention_backend.check_setting(attention)
        if self.sequence.cache is not None:
            attention_backend.assign(self.sequence.cache, self.attention)

    def default_settings(self) -> Settings:
        """Settings for this model: the demo answers up to 256 tokens (its long answers drift), others 512."""
        return Settings(max_new_tokens=DEMO_ANSWER_TOKENS if self.model_name in SMALL_MODELS else 512)

    def prompt_prefix(self, corpus_ids, system_prompt: str | None = None) -> list[int]:
        """System prompt and corpus as the model sees them: the part every question shares."""
        system = self.system_prompt if system_prompt is None else system_prompt
        return encode_prompt(self.tokenizer, list(corpus_ids), "", system_prompt=system).prefix

    def prompt_overhead(self, system_prompt: str | None = None) -> int:
        """Tokens that the system prompt and the chat template put before the documents (exact)."""
        return len(self.prompt_prefix([], system_prompt))

    # -- the cache --
    def ensure_cache(self, needed: int, plan: planner.Plan) -> None:
        """Have a cache of the planned storage that holds `needed` tokens, keeping the shared prefix if it can."""
        capacity = min(self.window, needed + self.reserve)
        cache = self.sequence.cache
        if cache is not None and (cache.storage != plan.kv_dtype or (cache.sharded and capacity > cache.capacity)):
            self.drop_cache()
        if self.sequence.cache is None:
            shards = None
            if self.parallel == "sequence":
                shards = [(torch.device("cuda", i), n) for i, n in enumerate(plan.shard_tokens)]
            self.sequence.cache = KVCache(self.layer_devices, self.shape.kv_heads, self.shape.head_dim, capacity,
                                          plan.kv_dtype, compute_dtype=self.dtype, shards=shards)
        elif capacity > self.sequence.cache.capacity:
            self.sequence.cache.grow(capacity)

    def drop_cache(self) -> None:
        """Free the KV cache (and forget the cached corpus and conversation)."""
        self.sequence.reset()
        if self.on_gpu:
            torch.cuda.empty_cache()

    # -- loading a corpus --
    def load_corpus(self, corpus_ids, *, system_prompt: str | None = None, progress=None,
                    cancel: threading.Event | None = None, label: str | None = None, sources=(),
                    reuse_limit: int | None = None, save: bool = True, plan: planner.Plan | None = None) -> LoadStats:
        """Prefill system prompt + corpus into the cache, reusing whatever prefix is already there.

        With a disk store, the longest saved prefix is loaded from disk first, checkpoints are saved during
        the prefill, and the result is saved after it (named `label`, else after its first `sources`).
        `reuse_limit`: reuse at most this many tokens from memory or disk (what the caller loaded itself; the
        rest is read again, so neither the stats nor the time tell what others loaded). `save=False`: neither
        read from nor write to the disk store (a chat client's messages stay in memory). `plan`: `plan` for this
        prefix, made just before by the caller (used when it is for as many tokens; else one is made).

        Raises CorpusTooLarge before running anything if the plan says it cannot fit, and Cancelled if
        `cancel` is set (what was prefilled so far stays cached and is reused by the next call).
        """
        with self.lock:
            sequence, system = self.sequence, self.system_prompt if system_prompt is None else system_prompt
            key = prefix_key(corpus_ids, system)
            corpus_ids = list(corpus_ids)
            prefix = self.prompt_prefix(corpus_ids, system)
            if plan is None or plan.provisional or plan.tokens != len(prefix):
                plan = self.plan(len(prefix))
            if not plan.fits:  # refused before anything changes: the corpus loaded before stays usable
                raise CorpusTooLarge(plan.reason + ". " + planner.fit_advice(plan, self.reserve))
            self.system_prompt = system
            reusable = prefix if reuse_limit is None else prefix[:reuse_limit]
            reused = self._keep_cached(prefix, reusable, key, plan)
            sequence.corpus_ids, sequence.corpus_sources = corpus_ids, list(sources)
            self.counters.corpus_loads += 1
            store = self.store if save else None
            disk = store.restore(self, reusable, plan.kv_dtype, beyond=reused) \
                if store is not None and reused < len(reusable) else None
            if disk is not None and (disk.tokens or disk.clobbered):  # the cache's buffers now hold what it read
                sequence.cache.adopt(disk.tokens)
                sequence.prefix_ids = prefix[:disk.tokens]
            reused = len(sequence.prefix_ids)
            attention_backend.assign(sequence.cache, self.attention)
            source = "disk" if disk and disk.tokens else ("memory" if reused else "prefill")
            checkpoint = store.checkpointer(self, label) if store is not None else None
            estimated, seconds = self._prefill(prefix, plan, progress, cancel, checkpoint)
            sequence.prefix_key = key
            attention_backend.assign(sequence.cache, self.attention)  # the kernels for the loaded length (decode)
            fresh = len(prefix) - reused
            saved = store.save(self, label=label) if store is not None and fresh else None
            source += "+prefill" if fresh and source != "prefill" else ""
            return LoadStats(len(prefix), reused, seconds, fresh / seconds if fresh else 0.0, plan.kv_dtype,
                             source, disk.seconds if disk else 0.0, saved, estimated_s=estimated,
                             stop_requested=cancel is not None and cancel.is_set(),
                             attention=sequence.cache.backend.describe())

    def _keep_cached(self, prefix: list[int], reusable: list[int], key: tuple, plan: planner.Plan) -> int:
        """Keep the part of `reusable` the cache holds already (all of it, with the conversation after it, for the
        loaded prefix again: recognised by its key without a token walk), in a cache that holds the plan.
        Returns the tokens kept."""
        sequence = self.sequence
        if sequence.loaded and sequence.prefix_key == key and len(reusable) == len(prefix):
            reused = len(prefix)
        else:
            self.counters.prefix_walks += 1
            reused = common_prefix(sequence.prefix_ids, reusable)
        same = reused == len(prefix) == len(sequence.prefix_ids)
        self.ensure_cache(len(prefix), plan)
        reused = min(reused, len(sequence.prefix_ids))  # a reallocated cache starts empty
        sequence.start_prefix(prefix, reused, keep_conversation=same and reused == len(prefix))
        sequence.prefix_length = len(prefix)
        if sequence.cache.length == 0:  # a new sequence: quantised per head for fp8 attention
            sequence.cache.quantise_per_head(self.attention == "fp8")
        return reused

    def _prefill(self, prefix: list[int], plan: planner.Plan, progress, cancel, checkpoint) -> tuple[float, float]:
        """Run the prefix's uncached tokens through the model in chunks, committing each, with progress and
        checkpoints after each. Returns (the one estimate of its seconds before the run, the seconds it took)."""
        sequence, total = self.sequence, len(prefix)
        start = reused = len(sequence.prefix_ids)
        threads = self.cpu.fit() if self.cpu is not None else None
        steady = True  # the same threads ran every chunk: the chunks measure one speed
        live = calibration.LiveEstimate(self.rates(threads))
        fixed = None if self.adaptive_chunks else plan.chunk_tokens
        estimated = live.remaining(reused, total, fixed)
        live.trust()
        started = time.perf_counter()
        if progress is not None and reused < total:  # shown before the first chunk has run
            progress(PrefillProgress(reused, total, 0.0, estimated, 0.0, estimated, reused))
        while start < total:
            if cancel is not None and cancel.is_set():
                raise _cancelled(start, total)
            chunk = prefix[start:start + self.costs.chunk_size(start, live, plan.chunk_tokens)]
            chunk_started = time.perf_counter()
            try:
                forward(self.model, sequence.cache, chunk, False, self.layer_devices[0], cancel)
            except Stopped:
                raise _cancelled(start, total) from None
            sequence.prefix_ids.extend(chunk)
            self.counters.corpus_tokens_prefilled += len(chunk)
            start += len(chunk)
            if progress is not None or not self.on_gpu:
                synchronize(self.on_gpu)
                now = time.perf_counter()
                live.record(len(chunk), start - len(chunk), now - chunk_started)
            if progress is not None:
                elapsed, eta = now - started, live.remaining(start, total, fixed)
                progress(PrefillProgress(start, total, (start - reused) / max(elapsed, 1e-9), eta,
                                         elapsed, elapsed + eta, reused))
            if checkpoint is not None:
                checkpoint.after_chunk()
            if self.cpu is not None and start < total:  # another program started or ended: follow the free cores
                steady = self.cpu.fit(wait=False) == threads and steady
        synchronize(self.on_gpu)
        seconds = time.perf_counter() - started
        if not self.on_gpu and seconds >= 1.0 and steady:  # this load's chunks are the newest measure of the speed
            self.calibration.update(calibration.fit(live.passes, live.rates))
        return estimated, seconds

    def load(self, corpus, *, system_prompt: str | None = None, progress=None, cancel=None,
             reuse_limit: int | None = None, plan: planner.Plan | None = None) -> LoadStats:
        """Load an ingested corpus (`ingest.Corpus`, tokenized with this engine's tokenizer)."""
        return self.load_corpus(corpus.token_ids(), system_prompt=system_prompt, progress=progress, cancel=cancel,
                                sources=[document.source for document in corpus.documents], reuse_limit=reuse_limit,
                                plan=plan)

    # -- answering (app/engine/answer.py) --
    def ask(self, question: str, history=(), settings: Settings | None = None,
            cancel: threading.Event | None = None):
        """Stream an answer to `question` about the loaded corpus: text pieces, then one AnswerStats.

        Earlier turns (`history`, a list of Turn) are kept while they fit, oldest dropped first. The prompt's
        turns and the answer stay in the cache after the corpus: the next question reuses the longest cached
        prefix of its own prompt and runs only the rest (AnswerStats.reread_tokens), so a follow-up costs only
        its own tokens. `cancel` is checked between prefill chunks and before every decoded token.
        """
        return answer.ask(self, question, history, settings or self.default_settings(), cancel)


def _cancelled(done: int, total: int) -> Cancelled:
    return Cancelled(f"stopped at {done:,} of {total:,} tokens; loading again resumes there", done=done, total=total)
