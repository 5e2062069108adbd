"""Opening a backend: the local engine or a remote server, as the settings say (`app.settings.BackendSettings`).

Both give the `app.protocol.Backend` interface that the UI and the CLI use.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from typing import Callable, Iterator

from app import planner
from app.errors import ModelLoadError
from app.models_catalog import REGISTRY, ULTRALONG_NAMES
from app.protocol import Backend, LoadCost, LoadStats, Settings
from app.settings import BackendSettings

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


def open_backend(settings: BackendSettings, download_progress=None) -> Backend:
    """Load the local engine, or connect to an OpenAI-compatible server, as `settings` say (app/settings.py).

    The local model comes from `app.model_download.locate`: a folder or installed package as it is, a Hugging Face
    model from the cache, downloaded first when it is missing (`download_progress` gets
    `model_download.DownloadProgress`). With `settings.disk_cache`, processed corpora are saved under
    `settings.cache_dir` (app/store/library.py) and reopened instead of prefilled. `settings.parallel`: with several
    GPUs, "sequence" splits every layer's KV cache by position over all of them (attention on every GPU at once),
    "layers" splits the layers (one GPU busy at a time). `settings.weight_dtype` "auto": bf16, or fp8 where bf16
    weights would leave no room for the model's window (`fit_weights`).
    """
    if settings.backend == "openai":
        from app.remote import RemoteEngine

        return RemoteEngine(settings.base_url, api_key_env=settings.api_key_env, served_model=settings.served_model,
                            max_model_len=settings.max_model_len)
    from app import model_download
    from app.engine.engine import Engine
    from app.engine.models import ModelSpec, load_model

    name = choose_model(settings.model)
    spec = name
    if not settings.random_weights:  # random weights read at most a config.json: nothing to download
        located = model_download.locate(name, progress=download_progress)
        spec = ModelSpec(name, located.folder, located.gguf_file)
    log.info("loading model %s", name)
    weight_dtype = settings.weight_dtype
    if weight_dtype == "auto":
        weight_dtype, why = fit_weights(name)
        if why:
            log.warning("%s", why)
    loaded, tokenizer = load_model(spec, random_weights=settings.random_weights, weight_dtype=weight_dtype,
                                   parallel=settings.parallel)
    if tokenizer is None:  # random weights: the real Llama-3 tokenizer stands in
        from ingest import load_tokenizer

        tokenizer = load_tokenizer()
    return Engine(loaded, tokenizer, kv_dtype=settings.kv_dtype, chunk_tokens=settings.chunk_tokens, model_name=name,
                  store=open_store(settings), parallel="auto" if settings.parallel == "sequence" else "layers",
                  attention=settings.attention)


def open_store(settings: BackendSettings):
    """The saved corpora these settings use (`app.store.library.Store` under `settings.cache_dir`), or None when
    `settings.disk_cache` is off."""
    if not settings.disk_cache:
        return None
    from app.store.library import Store

    return Store(settings.cache_dir)


def fit_weights(name: str, devices: list[planner.Device] | None = None) -> tuple[str, str]:
    """The weight dtype for model `name` on these GPUs: bf16, unless only fp8 weights leave room for the model's
    whole window (with fp8 KV). Returns (dtype, the sentence that says why fp8, or "")."""
    spec = REGISTRY.get(name)
    devices = devices or planner.local_devices()
    if spec is None or devices[0].name == "cpu":
        return "bf16", ""
    from app.engine.models import llama31_8b_config

    shape = planner.ModelShape.from_config(llama31_8b_config(window=spec.window))
    want = spec.window - planner.question_reserve(spec.window)
    bf16 = planner.plan(shape, want, devices, "fp8", "bf16", mode="sequence")
    if bf16.fits:
        return "bf16", ""
    fp8 = planner.plan(shape, want, devices, "fp8", "fp8", mode="sequence")
    return "fp8", (f"{name}: fp8 weights and fp8 KV, so that more of its {spec.window:,}-token window fits: "
                   f"{fp8.max_tokens:,} corpus tokens on {len(devices)} GPU(s), against {bf16.max_tokens:,} "
                   f"with bf16 weights (--weight-dtype bf16 keeps them)")


@dataclass(frozen=True)
class SlotState:
    """Where the app's model stands: "downloading", "loading", "ready" or "failed", with the numbers."""

    phase: str
    model: str
    message: str = ""
    download: object = None  # app.model_download.DownloadProgress while downloading


class ModelLoading(ModelLoadError):
    """A question or a load came while the model is still downloading or loading (or failed to)."""


class ModelSlot:
    """The backend the app holds. It opens its model in a background thread, so the page serves at once, and
    opens another when asked (`switch`), without a restart. Until a model is ready, `load` and `ask` raise
    ModelLoading with what is happening; adding files and planning work meanwhile (counted with the bundled
    Llama-3 tokenizer and the known window, then again with the model's own once it is there).

    `opener(model, download_progress)` returns a ready Backend (`open_backend` with the app's settings).
    """

    def __init__(self, opener: Callable[[str, Callable], Backend], model: str,
                 on_change: Callable[[SlotState], None] | None = None, before_ready: dict | None = None):
        self._opener = opener
        # attributes known before the model is ready
        self._before_ready = {"store": None, "attention": "bf16", **(before_ready or {})}
        self._on_change = on_change or (lambda state: None)
        self._lock = threading.Lock()
        self._current: Backend | None = None
        self._generation = 0
        self._thread: threading.Thread | None = None
        self.state = SlotState("loading", model)
        self.switch(model)

    # -- choosing the model --
    def switch(self, model: str) -> SlotState:
        """Close the model open now (its memory is needed) and open `model` in the background."""
        with self._lock:
            if self.state.phase in ("downloading", "loading") and self._thread is not None:
                raise ModelLoading(f"{self.state.model} is still {self.state.phase}; wait until it is ready")
            self._close_current()
            self._generation += 1
            generation = self._generation
            self._set(SlotState("loading", model, f"opening {model}"))
            self._thread = threading.Thread(target=self._open, args=(model, generation), daemon=True,
                                            name=f"open-{model}")
        self._thread.start()
        return self.state

    def _close_current(self) -> None:
        if self._current is None:
            return
        self._current = None
        import gc
        import sys

        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def wait(self, timeout: float | None = None) -> SlotState:
        """Block until the model being opened is ready or failed (tests, the CLI)."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.state

    def _open(self, model: str, generation: int) -> None:
        from ingest.errors import human_size

        def progress(p) -> None:
            if p.finished:
                self._set(SlotState("loading", model, f"downloaded {human_size(p.total)}", p))
            else:
                self._set(SlotState("downloading", model, p.describe(), p))

        try:
            backend = self._opener(model, progress)
        except Exception as err:  # shown on the page as it is; the model open before stays in use
            log.warning("could not open %s: %s", model, err, exc_info=not isinstance(err, ModelLoadError))
            self._set(SlotState("failed", model, str(err)))
            return
        with self._lock:
            if generation != self._generation:
                return
            self._current = backend
        self._set(SlotState("ready", model, f"{backend.model_name} is ready"))

    def _set(self, state: SlotState) -> None:
        self.state = state
        if state.phase != "downloading":
            log.info("model %s: %s%s", state.model, state.phase, f" ({state.message})" if state.message else "")
        self._on_change(state)

    @property
    def ready(self) -> Backend | None:
        """The backend that answers now, or None before the first model is ready."""
        return self._current

    def _need(self, wait: bool = True) -> Backend:
        """The ready backend. While the model loads from disk (seconds to minutes) `wait` blocks until it is ready;
        while it downloads, or when it failed, ModelLoading says so."""
        while self._current is None and wait and self.state.phase == "loading" and self._thread.is_alive():
            self._thread.join(0.2)
        if self._current is None:
            state = self.state
            if state.phase == "failed":
                raise ModelLoading(f"the model {state.model} could not be opened: {state.message}. Pick another "
                                   "model (Model, at the top of the page), or fix this and pick it again")
            raise ModelLoading(f"the model {state.model} is still downloading ({state.message}); this works once "
                               "it is ready")
        return self._current

    # -- the Backend protocol --
    @property
    def name(self) -> str:
        return self._current.name if self._current else "local"

    @property
    def model_name(self) -> str:
        return self._current.model_name if self._current else self.state.model

    @property
    def window(self) -> int:
        if self._current is not None:
            return self._current.window
        known = REGISTRY.get(self.state.model)
        return known.window if known else 8_192

    @property
    def tokenizer(self):
        """The model's own; before it is ready, the bundled Llama-3 tokenizer for the UltraLong models (the same
        vocabulary), and for any other model the wait until it is ready (its counts would differ)."""
        if self._current is None and self.state.model.startswith("ultralong-"):
            from ingest import load_tokenizer

            return load_tokenizer()
        return self._need(wait=True).tokenizer

    @property
    def system_prompt(self) -> str:
        if self._current is not None:
            return self._current.system_prompt
        from app.prompt import default_system_prompt

        return default_system_prompt(self.state.model)

    def plan(self, tokens: int) -> planner.Plan:
        if self._current is not None:
            return self._current.plan(tokens)
        window = self.window
        reason = "" if tokens <= window else f"{tokens:,} tokens are more than the model's {window:,}-token window"
        return planner.Plan(tokens, "auto", "bf16", tokens <= window, window, window, 0.0, 0.0, reason=reason,
                            provisional=True)

    def load(self, corpus, **kwargs):
        backend = self._need()
        if getattr(corpus, "counter", None) is not None and corpus.counter.tokenizer is not backend.tokenizer:
            from ingest.corpus import _retokenized  # counted before this model was ready: count again
            from ingest.tokens import TokenCounter

            corpus = _retokenized(corpus, TokenCounter(backend.tokenizer))
        return backend.load(corpus, **kwargs)

    def ask(self, question: str, history=(), settings=None, cancel=None) -> Iterator:
        return self._need().ask(question, history, settings, cancel=cancel)

    def default_settings(self) -> Settings:
        """The current model's; the defaults before one is ready."""
        current = self._current
        return current.default_settings() if current is not None else Settings()

    def load_cost(self, corpus, system_prompt: str | None = None, reuse_limit: int | None = None) -> LoadCost | None:
        """The current model's estimate; None before one is ready."""
        current = self._current
        return current.load_cost(corpus, system_prompt, reuse_limit) if current is not None else None

    # What only a ready model can do: while none is (a switch under way, a failed open), ModelLoading says so
    # at once (the API answers 503 with Retry-After), not a bare 500.
    @property
    def reserve(self) -> int:
        current = self._current
        return current.reserve if current is not None else planner.question_reserve(self.window)

    @property
    def base_url(self) -> str:
        current = self._current
        return current.base_url if current is not None else ""

    @property
    def store(self):
        """The current model's disk store; before one is ready, the one it will open with."""
        current = self._current
        return current.store if current is not None else self._before_ready["store"]

    @property
    def attention(self) -> str:
        current = self._current
        return current.attention if current is not None else self._before_ready["attention"]

    @property
    def counters(self):
        return self._need(wait=False).counters

    def prompt_overhead(self, system_prompt: str | None = None) -> int:
        return self._need(wait=False).prompt_overhead(system_prompt)

    def prompt_prefix(self, corpus_ids, system_prompt: str | None = None) -> list[int]:
        return self._need(wait=False).prompt_prefix(corpus_ids, system_prompt)

    def load_corpus(self, corpus_ids, **options) -> LoadStats:
        return self._need(wait=False).load_corpus(corpus_ids, **options)

    def save_corpus(self, label: str | None = None):
        return self._need(wait=False).save_corpus(label)

    def fingerprint(self, kv_dtype: str) -> dict | None:
        return self._need(wait=False).fingerprint(kv_dtype)

    def set_attention(self, attention: str) -> None:
        self._need(wait=False).set_attention(attention)

    def drop_cache(self) -> None:
        current = self._current
        if current is not None:
            current.drop_cache()


def open_in_background(settings: BackendSettings, on_change=None) -> ModelSlot:
    """The app's model: `settings.model` opened in the background (downloaded first when needed); the model picker
    opens others with the same settings."""
    before = {"store": open_store(settings), "attention": settings.attention}
    return ModelSlot(lambda model, progress: open_backend(replace(settings, model=model), progress),
                     choose_model(settings.model), on_change, before)
