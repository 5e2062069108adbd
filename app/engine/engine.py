"""The local engine: prefill a corpus once, then answer every question from the cached prefix.

`load_corpus` runs the system prompt and corpus through the model in bounded chunks into a preallocated
KV cache. Whatever prefix is already cached is reused, so loading the same corpus again costs nothing,
an extended corpus costs only its new tokens, and a cancelled load resumes where it stopped.
`ask` prefills only the question (and earlier turns), streams the answer, then rolls the cache back to
the corpus.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import torch

from app import planner
from app.engine import attention
from app.engine.fp8_linear import Fp8Linear
from app.engine.generation import StreamDecoder, sample
from app.engine.kv_cache import KVCache
from app.errors import Cancelled, CorpusTooLarge, NoCorpus, OutOfMemory
from app.prompt import Turn, default_system_prompt, encode_prompt, fit_turns
from app.protocol import AnswerStats, LoadStats, PrefillProgress, Settings

log = logging.getLogger(__name__)


@dataclass
class Counters:
    """What the engine has run through the model since it started (tests assert on these)."""

    corpus_tokens_prefilled: int = 0
    question_tokens_prefilled: int = 0
    tokens_decoded: int = 0
    corpus_loads: int = 0


def _stop_ids(model, tokenizer) -> set[int]:
    ids = set()
    for source in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if source is not None:
            ids.update(source if isinstance(source, (list, tuple)) else [source])
    for token in ("<|eot_id|>", "<|im_end|>", "<|end_of_text|>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            ids.add(token_id)
    return ids


class Engine:
    """One model, one cached corpus, one question at a time."""

    name = "local"
    base_url = ""  # nothing leaves this machine

    def __init__(self, model, tokenizer, *, kv_dtype: str = "auto", chunk_tokens: int | None = None,
                 model_name: str = "", store=None, parallel: str = "auto", warm_up: bool = True):
        self.model, self.tokenizer = model, tokenizer
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
        self.stop_ids = _stop_ids(model, tokenizer)
        self.cache: KVCache | None = None
        self.cached_ids: list[int] = []  # the committed prefix (system prompt + corpus), token for token
        self.corpus_ids: list[int] = []  # the corpus alone, as loaded
        self.corpus_sources: list[str] = []  # its documents' sources, in order (names saved corpora)
        self.prefix_length = 0  # tokens of system prompt + corpus once fully loaded
        self.system_prompt = default_system_prompt(self.model_name)
        self.counters = Counters()
        self.use_cuda_graphs = True
        self._graph = None  # ((cache id, version), CUDAGraph, input ids, positions, logits): the decode step
        self._lock = threading.Lock()
        self.store = store  # app.store.library.Store: corpora saved on disk, reopened instead of prefilled (None: off)
        self.warm_up_seconds = self.warm_up() if self.on_gpu and warm_up else 0.0

    def warm_up(self, tokens: int = 4096) -> float:
        """Run a short prefill, question and decode step once on a scratch cache, so that kernel loading and
        compilation happen while the model loads, not in the first answer. Returns the seconds it took."""
        started = time.perf_counter()
        kept = self.cache, self.cached_ids, self._graph
        tokens = min(tokens, self.window // 4)
        try:
            self.cache, self.cached_ids, self._graph = None, [], None
            ids = [i % self.shape.vocab for i in range(1000, 1000 + tokens)]
            self._ensure_cache(tokens + 64, self.plan(tokens))
            self._forward(ids, want_logits=False)
            logits = self._forward(ids[:16], want_logits=True)  # a question's few rows
            self._decode(int(logits.argmax()))
            _synchronize(True)
        except (RuntimeError, ValueError, OutOfMemory) as err:  # best effort: the first answer then pays instead
            log.warning("warm-up skipped (%s)", err)
        finally:
            self.cache, self.cached_ids, self._graph = kept
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
        devices = self.devices()
        resident = [0] * len(devices)
        indexes = [d.index for d in devices]
        for p in list(self.model.parameters()) + list(self.model.buffers()):
            if p.device.index in indexes:
                resident[indexes.index(p.device.index)] += p.numel() * p.element_size()
        if not self.on_gpu:  # CPU memory: the weights are part of what is used, not of what is free
            resident = [0]
        for chunk in (self.chunk_tokens, self.chunk_tokens // 2, self.chunk_tokens // 4):  # smaller chunks, less workspace
            result = planner.plan(self.shape, tokens, devices, kv, self.weight_dtype, chunk, self.reserve,
                                  resident_weights=resident, mode=self.parallel,
                                  attention_kernel="fa3" if self.on_gpu and attention.fa3_kernel() else "default")
            if result.fits:
                break
        return result

    def prompt_prefix(self, corpus_ids, system_prompt: str | None = None) -> list[int]:
        """System prompt and corpus as the model sees them: the part every question shares."""
        system = self.system_prompt if system_prompt is None else system_prompt
        return encode_prompt(self.tokenizer, list(corpus_ids), "", system_prompt=system).prefix

    def prompt_overhead(self, system_prompt: str | None = None) -> int:
        """Tokens that the system prompt and the chat template put before the documents (exact)."""
        return len(self.prompt_prefix([], system_prompt))

    # -- running the model --
    def _forward(self, ids: list[int], want_logits: bool):
        """Run `ids` after the committed sequence and commit them. Returns last-position logits [V] or None."""
        cache = self.cache
        start = cache.length
        device = self.layer_devices[0]
        input_ids = torch.tensor([ids], device=device)
        positions = torch.arange(start, start + len(ids), device=device).unsqueeze(0)
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
        except torch.OutOfMemoryError as err:
            cache.truncate(start)
            torch.cuda.empty_cache()
            raise OutOfMemory(f"the GPU ran out of memory running {len(ids):,} tokens at position {start:,}; "
                              f"the cached corpus ({start:,} tokens) is kept. Try a smaller chunk "
                              f"(--chunk-tokens) or fp8 KV.") from err
        cache.commit()
        return logits

    def _decode(self, token: int) -> torch.Tensor:
        """One token through the model after the committed sequence; returns its logits [V].

        On a single GPU the step is captured once as a CUDA graph and replayed: the position lives in device
        tensors, so every step has the same shapes and addresses.
        """
        cache = self.cache
        if not self.on_gpu:
            return self._forward([token], want_logits=True)
        cache.set_decode_position(cache.length)
        if len(cache.decode_slots) != 1 or not self.use_cuda_graphs:  # several devices: no single graph
            return self._forward([token], want_logits=True)
        if self._graph is None or self._graph[0] != (id(cache), cache.version):
            self._capture_decode_graph()
        _, graph, ids, positions, logits = self._graph
        ids.fill_(token)
        positions.fill_(cache.length)
        graph.replay()
        cache.pending = 1
        cache.commit()
        return logits[0, -1]

    def _capture_decode_graph(self) -> None:
        cache, device = self.cache, self.layer_devices[0]
        ids = torch.zeros(1, 1, dtype=torch.long, device=device)
        positions = torch.full((1, 1), cache.length, dtype=torch.long, device=device)

        def step():
            return self.model(input_ids=ids, position_ids=positions, past_key_values=cache, kv_cache=cache,
                              use_cache=True, logits_to_keep=1).logits

        length = cache.length
        with torch.inference_mode():
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(2):  # warm-up: Triton compilation, cuBLAS handles
                    step()
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                logits = step()
        cache.truncate(length)  # the warm-up wrote only past the committed sequence
        self._graph = ((id(cache), cache.version), graph, ids, positions, logits)

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
        """Free the KV cache (and forget the cached corpus)."""
        self.cache, self.cached_ids, self._graph = None, [], None
        if self.on_gpu:
            torch.cuda.empty_cache()

    def load_corpus(self, corpus_ids, *, system_prompt: str | None = None, progress=None,
                    cancel: threading.Event | None = None, label: str | None = None, sources=()) -> LoadStats:
        """Prefill system prompt + corpus into the cache, reusing whatever prefix is already there.

        With a disk store, the longest saved prefix is loaded from disk first, checkpoints are saved during
        the prefill, and the result is saved after it (named `label`, else after its first `sources`).

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
            reused = _common_prefix(self.cached_ids, prefix)
            self._ensure_cache(len(prefix), plan)
            reused = min(reused, len(self.cached_ids))  # a reallocated cache starts empty
            self.corpus_ids, self.corpus_sources, self.prefix_length = corpus_ids, list(sources), len(prefix)
            self.cache.truncate(reused)
            self.cached_ids = prefix[:reused]
            self.counters.corpus_loads += 1
            store = self.store
            disk = store.restore(self, prefix, plan.kv_dtype, beyond=reused) \
                if store is not None and reused < len(prefix) else None
            if disk is not None and (disk.tokens or disk.clobbered):  # the cache's buffers now hold what it read
                self.cache.adopt(disk.tokens)
                self.cached_ids = prefix[:disk.tokens]
            reused = len(self.cached_ids)
            source = "disk" if disk and disk.tokens else ("memory" if reused else "prefill")
            checkpoint = store.checkpointer(self, label) if store is not None else None
            started = time.perf_counter()
            for start in range(reused, len(prefix), plan.chunk_tokens):
                if cancel is not None and cancel.is_set():
                    raise Cancelled(f"prefill stopped at {start:,} of {len(prefix):,} tokens; "
                                    "loading again resumes from there")
                chunk = prefix[start:start + plan.chunk_tokens]
                self._forward(chunk, want_logits=False)
                self.cached_ids.extend(chunk)
                self.counters.corpus_tokens_prefilled += len(chunk)
                if progress is not None:
                    _synchronize(self.on_gpu)
                    done, elapsed = start + len(chunk), time.perf_counter() - started
                    rate = (done - reused) / max(elapsed, 1e-9)
                    progress(PrefillProgress(done, len(prefix), rate, (len(prefix) - done) / max(rate, 1e-9)))
                if checkpoint is not None:
                    checkpoint.after_chunk()
            _synchronize(self.on_gpu)
            seconds = time.perf_counter() - started
            fresh = len(prefix) - reused
            saved = store.save(self, label=label) if store is not None and fresh else None
            source += "+prefill" if fresh and source != "prefill" else ""
            return LoadStats(len(prefix), reused, seconds, fresh / seconds if fresh else 0.0, plan.kv_dtype,
                             source, disk.seconds if disk else 0.0, saved)

    def load(self, corpus, *, system_prompt: str | None = None, progress=None, cancel=None) -> LoadStats:
        """Load an ingested corpus (`ingest.Corpus`, tokenized with this engine's tokenizer)."""
        return self.load_corpus(corpus.token_ids(), system_prompt=system_prompt, progress=progress, cancel=cancel,
                                sources=[document.source for document in corpus.documents])

    def ask(self, question: str, history=(), settings: Settings | None = None,
            cancel: threading.Event | None = None):
        """Stream an answer to `question` about the loaded corpus.

        Yields text pieces, then one AnswerStats. Earlier turns (`history`, a list of Turn) are kept while
        they fit, oldest dropped first. The cache is rolled back to the corpus afterwards, whatever happens.
        """
        settings = settings or Settings()
        with self._lock:
            if self.cache is None or not self.cached_ids or len(self.cached_ids) < self.prefix_length:
                raise NoCorpus("no corpus is loaded (or its loading was stopped): load it before asking")
            corpus_end = len(self.cached_ids)
            history, dropped, suffix = self._fit_turns(question, list(history), settings.max_new_tokens)
            started = time.perf_counter()
            generator = None
            if settings.seed is not None:
                generator = torch.Generator(device=self.layer_devices[-1]).manual_seed(settings.seed)
            decoder, reason = StreamDecoder(self.tokenizer), "length"
            first_token_at = None
            try:
                logits = None
                for start in range(0, len(suffix), self.chunk_tokens):
                    piece = suffix[start:start + self.chunk_tokens]
                    logits = self._forward(piece, want_logits=start + len(piece) == len(suffix))
                self.counters.question_tokens_prefilled += len(suffix)
                for _ in range(settings.max_new_tokens):
                    if cancel is not None and cancel.is_set():
                        reason = "cancelled"
                        break
                    token = sample(logits, settings.temperature, settings.top_p, generator)
                    if first_token_at is None:
                        first_token_at = time.perf_counter()
                    if token in self.stop_ids:
                        reason = "stop"
                        break
                    self.counters.tokens_decoded += 1
                    text = decoder.push(token)
                    if text:
                        yield text
                    if len(decoder.ids) == settings.max_new_tokens or self.cache.length >= self.cache.capacity:
                        break
                    logits = self._decode(token)
                tail = decoder.flush()
                if tail:
                    yield tail
            finally:
                self.cache.truncate(corpus_end)
            now = time.perf_counter()
            first = first_token_at or now
            decode_s = now - first
            n = len(decoder.ids)
            yield AnswerStats(corpus_end + len(suffix), corpus_end, n, first - started,
                              (n - 1) / decode_s if n > 1 and decode_s > 0 else 0.0, reason, dropped)

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
