"""The model behind the API and MCP: a conversation becomes the engine's prompt (system prompt and corpus first,
earlier turns next, the question last), is checked against the window before any work, and runs in its turn.

Two kinds of model id: the loaded model's own name answers over the request's messages as they are; the
corpus is the first user message up to its last blank line (Omnibus's own remote backend sends exactly that),
so a client that sends the same long document again reuses its cached tokens. `omnibus/ID` answers over a
saved corpus (app.server.corpora): the server puts it in front of the messages and reopens it from disk.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from app.errors import OmnibusError
from app.prompt import Turn, encode_prompt
from app.protocol import AnswerStats, Settings
from app.server.corpora import SavedCorpus, catalog, model_id, open_saved
from app.sharing.turnstile import Turnstile
from ingest import TokenCounter

CORPUS_BREAK = "\n\n"  # between the corpus and the first question (app.prompt.corpus_message)


class ContextTooLong(OmnibusError):
    """The messages (and the answer asked for) do not fit the model's window."""


class UnknownModel(OmnibusError):
    """The request names a model id that this server does not serve."""


@dataclass
class Prompt:
    """One request, as the engine will run it; `tokens` counts the whole prompt."""

    model: str
    system_prompt: str
    corpus_ids: list[int]
    history: list[Turn]
    question: str
    tokens: int
    saved: SavedCorpus | None = None
    on_disk: bool = False  # reopen the prefix from the disk cache and save it there (else: memory only)
    sources: tuple = ()  # the documents' sources, in order (they name the saved corpus)


@dataclass
class Usage:
    """What one answer cost: tokens in, of which were already cached, and tokens out."""

    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" or "length"
    ttft_s: float


class Service:
    """Answers conversations with the local engine, one at a time through `turnstile` (shared with the app)."""

    def __init__(self, engine, turnstile: Turnstile | None = None):
        self.engine = engine
        self.turnstile = turnstile or Turnstile()
        self.counter = TokenCounter(engine.tokenizer)
        self.started = int(time.time())
        self._texts: OrderedDict[str, list[int]] = OrderedDict()  # sha256 of a corpus text -> its ids
        self._texts_lock = threading.Lock()

    # -- what is served --
    def models(self) -> list[dict]:
        """The loaded model first, then one id per saved corpus (OpenAI's model objects, plus our fields)."""
        window = self.engine.window
        out = [{"id": self.engine.model_name, "object": "model", "created": self.started, "owned_by": "omnibus",
                "max_model_len": window, "attention": self.engine.attention}]
        for entry in catalog(self.engine):
            out.append({"id": model_id(entry), "object": "model", "created": int(entry.meta.get("created", 0)),
                        "owned_by": "omnibus", "name": entry.name, "documents": entry.documents,
                        "corpus_tokens": entry.tokens, "max_model_len": window})
        return out

    # -- building and checking a prompt --
    def build_prompt(self, model: str, system: str | None, users: list[str], assistants: list[str]) -> Prompt:
        """The prompt for user messages `users` and the answers between them; `system` is the client's own."""
        engine, saved = self.engine, None
        if model == engine.model_name:
            corpus_text, sep, first = users[0].rpartition(CORPUS_BREAK)
            if not sep:  # no blank line: the whole message is the prefix to cache
                corpus_text, first = users[0], ""
            questions = [first, *users[1:]]
            system_prompt, corpus_ids = system or "", self._ids(corpus_text)
        else:
            saved = open_saved(engine, model)
            if saved is None:
                names = ", ".join(m["id"] for m in self.models())
                raise UnknownModel(f"the model '{model}' does not exist; this server serves: {names}")
            questions = list(users)
            if system:  # the corpus's own system prompt stays first (it is what was cached)
                questions[0] = f"{system}{CORPUS_BREAK}{questions[0]}"
            system_prompt, corpus_ids = saved.system_prompt, saved.corpus_ids
        return self.prompt(model, system_prompt, corpus_ids, questions, assistants, saved)

    def prompt(self, model: str, system_prompt: str, corpus_ids, questions: list[str], answers: list[str],
               saved: SavedCorpus | None = None, on_disk: bool = False, sources=()) -> Prompt:
        """The prompt that asks `questions[-1]` after the earlier questions and their `answers`."""
        history = [Turn(q, a) for q, a in zip(questions[:-1], answers)]
        prefix = len(self.engine.prompt_prefix(corpus_ids, system_prompt))
        suffix = len(encode_prompt(self.engine.tokenizer, (), questions[-1], history, system_prompt).suffix)
        return Prompt(model, system_prompt, list(corpus_ids), history, questions[-1], prefix + suffix, saved,
                      on_disk=on_disk or saved is not None, sources=tuple(sources))

    def check_window(self, prompt: Prompt, max_tokens: int | None) -> int:
        """The answer's token budget; raises ContextTooLong, with the numbers, when the prompt cannot fit."""
        window = self.engine.window
        if prompt.tokens >= window:
            raise ContextTooLong(f"this model's maximum context length is {window:,} tokens; the messages are "
                                 f"{prompt.tokens:,} tokens. Shorten them or leave some documents out.")
        if max_tokens is not None and prompt.tokens + max_tokens > window:
            raise ContextTooLong(f"this model's maximum context length is {window:,} tokens; the messages are "
                                 f"{prompt.tokens:,} tokens and max_tokens asks for {max_tokens:,} more "
                                 f"({prompt.tokens + max_tokens:,} in all)")
        return max_tokens if max_tokens is not None else window - prompt.tokens

    def _ids(self, text: str) -> list[int]:
        """Token ids of a corpus text; the last few are kept, as clients send the same document again."""
        key = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        with self._texts_lock:
            if key in self._texts:
                self._texts.move_to_end(key)
                return self._texts[key]
        ids = self.counter.encode(text).tolist() if text else []
        with self._texts_lock:
            self._texts[key] = ids
            while len(self._texts) > 4:
                self._texts.popitem(last=False)
        return ids

    # -- running --
    def run(self, prompt: Prompt, settings: Settings, cancel: threading.Event | None = None, stops=()):
        """Wait for the model, load the prompt's prefix (reusing what is cached), stream the answer.

        Yields text pieces, then one Usage. A `stops` string ends the answer before it (it is not sent).
        """
        cancel = cancel or threading.Event()
        stops = [s for s in stops if s]
        keep = max((len(s) - 1 for s in stops), default=0)  # held back: the start of a stop string
        with self.turnstile.turn(cancel):
            load = self._load(prompt, cancel)
            held, stopped, stats = "", False, None
            for piece in self.engine.ask(prompt.question, prompt.history, settings, cancel):
                if isinstance(piece, AnswerStats):
                    stats = piece
                    continue
                if stopped:
                    continue
                held += piece
                at = min((i for i in (held.find(s) for s in stops) if i >= 0), default=-1)
                if at >= 0:
                    held, stopped = held[:at], True
                    cancel.set()  # the engine stops at the next token and rolls back
                if len(held) > keep or stopped:
                    cut = len(held) if stopped else len(held) - keep
                    if held[:cut]:
                        yield held[:cut]
                    held = held[cut:]
            if held:
                yield held
        reason = "stop" if stopped or stats.finish_reason != "length" else "length"
        cached = load.reused + max(stats.cached_tokens - load.tokens, 0)  # the prefix, plus turns the engine kept
        yield Usage(stats.prompt_tokens, cached, stats.new_tokens, reason, stats.ttft_s)

    def load(self, prompt: Prompt, cancel: threading.Event | None = None):
        """Wait for the model and load the prompt's prefix only (LoadStats)."""
        with self.turnstile.turn(cancel):
            return self._load(prompt, cancel)

    def _load(self, prompt: Prompt, cancel: threading.Event | None):
        """Prefill the prompt's prefix. Only `on_disk` prompts use the disk cache: a chat client's messages
        stay in memory, so it does not fill the disk with every conversation."""
        engine = self.engine
        store = engine.store
        stats = engine.load_corpus(prompt.corpus_ids, system_prompt=prompt.system_prompt, cancel=cancel,
                                   sources=prompt.sources, save=prompt.on_disk)
        if prompt.on_disk and store is not None and stats.source == "memory":
            stats.saved = engine.save_corpus()  # cached by a request that was not saved ("exists" if it was)
        return stats
