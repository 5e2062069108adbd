"""One request at a time on the model, served in arrival order, shared by the app, the API and MCP.

The engine locks each of its calls, but a question is two calls (load the corpus, then ask), and another
client's load must not slip in between. `Turnstile` is the one queue for the model; `SharedBackend` is the
backend the app's handlers use when the API runs in the same process: each of its calls waits its turn,
and a question whose corpus was replaced by another client's in the meantime loads it again first.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque

from app.errors import Cancelled
from app.protocol import LoadCost, Settings


class Turnstile:
    """A FIFO lock: holders are served in the order they asked; a waiter may give up its place."""

    def __init__(self):
        self._cond = threading.Condition()
        self._queue: deque[object] = deque()  # tickets; the first one holds the model

    @property
    def waiting(self) -> int:
        """Tickets behind the current holder."""
        with self._cond:
            return max(len(self._queue) - 1, 0)

    def acquire(self, cancel: threading.Event | None = None) -> object:
        """Wait for this caller's turn; returns the ticket to `release`. Raises Cancelled if `cancel` is set first."""
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            while self._queue[0] is not ticket:
                if cancel is not None and cancel.is_set():
                    self._queue.remove(ticket)
                    self._cond.notify_all()
                    raise Cancelled("the request was cancelled while it waited for the model")
                self._cond.wait(0.05 if cancel is not None else None)
        return ticket

    def release(self, ticket: object) -> None:
        with self._cond:
            if self._queue and self._queue[0] is ticket:
                self._queue.popleft()
                self._cond.notify_all()

    @contextlib.contextmanager
    def turn(self, cancel: threading.Event | None = None):
        """`with turnstile.turn(): ...` runs the block when every earlier caller is done."""
        ticket = self.acquire(cancel)
        try:
            yield
        finally:
            self.release(ticket)


class SharedBackend:
    """The local engine as the app's handlers see it when other clients share it: every load and answer takes
    its turn, and an answer first reloads the app's corpus if another client loaded its own since."""

    def __init__(self, engine, turnstile: Turnstile):
        self.engine, self.turnstile = engine, turnstile
        self._last_load = None  # (corpus, system_prompt, engine.counters.corpus_loads right after it)

    # -- what the engine says, read without waiting a turn --
    name = property(lambda self: self.engine.name)
    model_name = property(lambda self: self.engine.model_name)
    window = property(lambda self: self.engine.window)
    reserve = property(lambda self: self.engine.reserve)
    tokenizer = property(lambda self: self.engine.tokenizer)
    system_prompt = property(lambda self: self.engine.system_prompt)
    base_url = property(lambda self: self.engine.base_url)
    store = property(lambda self: self.engine.store)
    attention = property(lambda self: self.engine.attention)
    counters = property(lambda self: self.engine.counters)

    def prompt_overhead(self, system_prompt: str | None = None) -> int:
        return self.engine.prompt_overhead(system_prompt)

    def prompt_prefix(self, corpus_ids, system_prompt: str | None = None) -> list[int]:
        return self.engine.prompt_prefix(corpus_ids, system_prompt)

    def plan(self, tokens: int):
        return self.engine.plan(tokens)

    def fingerprint(self, kv_dtype: str) -> dict | None:
        return self.engine.fingerprint(kv_dtype)

    def set_attention(self, attention: str) -> None:
        self.engine.set_attention(attention)

    # -- what changes the model: in turn --
    def load_corpus(self, corpus_ids, *, cancel=None, **options):
        with self.turnstile.turn(cancel):
            return self.engine.load_corpus(corpus_ids, cancel=cancel, **options)

    def save_corpus(self, label: str | None = None):
        with self.turnstile.turn():
            return self.engine.save_corpus(label)

    def drop_cache(self) -> None:
        with self.turnstile.turn():
            self.engine.drop_cache()

    def default_settings(self) -> Settings:
        """The engine's."""
        return self.engine.default_settings()

    def load_cost(self, corpus, system_prompt: str | None = None, reuse_limit: int | None = None) -> LoadCost | None:
        """The engine's estimate, without waiting a turn (it only reads what is cached)."""
        return self.engine.load_cost(corpus, system_prompt, reuse_limit)

    def load(self, corpus, *, system_prompt: str | None = None, progress=None, cancel=None, reuse_limit=None,
             plan=None):
        with self.turnstile.turn(cancel):
            return self._load(corpus, system_prompt, progress, cancel, reuse_limit, plan)

    def _load(self, corpus, system_prompt, progress, cancel, reuse_limit=None, plan=None):
        stats = self.engine.load(corpus, system_prompt=system_prompt, progress=progress, cancel=cancel,
                                 reuse_limit=reuse_limit, plan=plan)
        self._last_load = (corpus, system_prompt, self.engine.counters.corpus_loads)
        return stats

    def ask(self, question: str, history=(), settings=None, cancel=None):
        ticket = self.turnstile.acquire(cancel)
        try:
            last = self._last_load
            if last is not None and last[2] != self.engine.counters.corpus_loads:  # another client's corpus
                self._load(last[0], last[1], None, cancel, reuse_limit=0)  # read again: others' cache is theirs
            yield from self.engine.ask(question, history, settings, cancel)
        finally:
            self.turnstile.release(ticket)
