"""What every backend (the local engine, a remote server) and every front end (the CLI, the app) share.

The types here carry settings in and progress and statistics out, and `Backend` says what a front end may ask
of a backend; they import nothing heavy, so the UI and the remote backend start without torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Protocol, runtime_checkable

if TYPE_CHECKING:
    from app.planner import Plan


@dataclass(frozen=True)
class JsonFormat:
    """Answer in JSON: any JSON object (`schema` None), or a value that validates against the JSON schema."""

    schema: dict | None = None
    name: str = "answer"  # what the schema describes (OpenAI's json_schema.name)

    def response_format(self) -> dict:
        """This format as an OpenAI `response_format`."""
        if self.schema is None:
            return {"type": "json_object"}
        return {"type": "json_schema", "json_schema": {"name": self.name, "schema": self.schema, "strict": True}}


@dataclass
class Settings:
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 0.95
    seed: int | None = None
    repetition_guard: bool | None = None  # stop an answer that loops; None: the backend's default (on for the demo)
    json: JsonFormat | None = None  # decode under this JSON grammar (app.engine.grammar); None: free text


@dataclass
class PrefillProgress:
    done: int
    total: int
    tokens_per_s: float
    eta_s: float  # the one estimate of the time left: calibrated rate(depth), corrected by the chunks measured so far
    elapsed_s: float = 0.0
    estimated_total_s: float = 0.0  # elapsed_s + eta_s: what the whole load is now expected to take
    reused: int = 0  # tokens that were already cached when the load started


@dataclass
class LoadStats:
    tokens: int  # prompt prefix tokens (system prompt + corpus) now cached
    reused: int  # of which were already in the cache
    seconds: float
    tokens_per_s: float
    kv_dtype: str
    source: str = "prefill"  # where the prefix came from: "prefill", "memory", "disk", "disk+prefill", ...
    disk_seconds: float = 0.0  # reading it from the disk cache
    saved: object = None  # app.store.library.SaveResult of the save after a prefill (None: no disk cache or nothing new)
    estimated_s: float = 0.0  # what the estimate said before the run
    stop_requested: bool = False  # Cancel came, but the load finished before it could stop
    attention: str = ""  # the attention kernels that read this corpus's cache (and why not fp8, when asked for)

    @property
    def read_tokens(self) -> int:
        """Tokens this load ran through the model (or read from disk)."""
        return self.tokens - self.reused


@dataclass
class AnswerStats:
    prompt_tokens: int
    cached_tokens: int
    new_tokens: int
    ttft_s: float
    tokens_per_s: float
    finish_reason: str  # a key of FINISH_MESSAGES
    dropped_turns: int = 0
    reread_tokens: int = 0  # prompt tokens this answer ran through the model (the question, any uncached turns)
    reread_s: float = 0.0  # how long running them took (part of ttft_s)
    reused_tokens: int = 0  # tokens of earlier turns taken from the cache, not read again
    attention: str = ""  # the attention kernels this answer ran (local engine; "" from a server)


FINISH_MESSAGES = {
    "stop": "the model finished its answer",
    "length": "cut off at the answer-length limit (raise it in Settings)",
    "cancelled": "stopped by you",
    "repetition": "stopped: the model was repeating itself",
    "full": "stopped: the model's memory for this conversation is full (Clear chat makes room)",
    "cut": "the server's stream broke off",
}


@dataclass
class LoadCost:
    """What loading a corpus with given instructions would cost, worked out before anything runs."""

    tokens: int  # system prompt + corpus
    cached: int  # of which the model holds already
    from_disk: int  # of which a saved corpus on disk would supply
    to_read: int  # tokens the model has to read (prefill)
    estimated_s: float  # time to read them, from the rates measured on this machine
    documents_reread: bool  # the documents themselves are read again (not only the instructions or new files)
    range_s: tuple[float, float] | None = None  # (low, high) seconds when recent measurements of the speed disagree


@runtime_checkable
class Backend(Protocol):
    """What answers questions: `app.engine.engine.Engine` (this machine's GPUs or CPU) or `app.remote.RemoteEngine`
    (an OpenAI-compatible server). The CLI and the app use only what is listed here, never `getattr` probes."""

    name: str  # "local" or "openai"
    model_name: str
    window: int  # tokens the model accepts, corpus and question together (0: a server that does not say)
    reserve: int  # of those, kept after the corpus for questions and answers (`app.planner.question_reserve`)
    tokenizer: object  # counts tokens exactly as the model will see them
    system_prompt: str  # the instructions the next load starts from
    base_url: str  # where the corpus is sent: "" for the local engine
    store: object  # `app.store.library.Store` of corpora saved on disk, or None (remote, or --no-disk-cache)
    attention: str  # the attention precision: "bf16" or "fp8" (local engine), "server" (a remote server's own)
    counters: object  # what the model has run (`app.engine.engine.Counters`: corpus_loads, ...); None for a server

    def prompt_overhead(self, system_prompt: str | None = None) -> int:
        """Tokens that the system prompt and the chat template put before the documents."""
        ...

    def plan(self, tokens: int) -> "Plan":
        """Whether a prompt prefix (system prompt and corpus) of `tokens` fits, with the numbers."""
        ...

    def load(self, corpus, *, system_prompt: str | None = None, progress=None, cancel=None,
             reuse_limit: int | None = None, plan: "Plan | None" = None) -> LoadStats:
        """Make the corpus the cached prefix of every question (prefill it, or reopen it). `reuse_limit`: reuse
        at most this many cached or saved tokens (those the caller loaded itself; a remote server decides alone).
        `plan`: this backend's `plan` for it, made just before (it is then not made again)."""
        ...

    def ask(self, question: str, history=(), settings: Settings | None = None, cancel=None) -> Iterator:
        """Stream the answer: text pieces, then one AnswerStats."""
        ...

    def default_settings(self) -> Settings:
        """The answer settings this model starts from (the demo model answers shorter)."""
        ...

    def load_cost(self, corpus, system_prompt: str | None = None, reuse_limit: int | None = None) -> LoadCost | None:
        """What loading `corpus` with these instructions would cost now, or None when the backend cannot say."""
        ...

    def load_corpus(self, corpus_ids, *, system_prompt: str | None = None, progress=None, cancel=None,
                    label: str | None = None, sources=(), reuse_limit: int | None = None,
                    save: bool = True) -> LoadStats:
        """`load` for token ids (the API's prompts); `save=False` keeps them off the disk store."""
        ...

    def prompt_prefix(self, corpus_ids, system_prompt: str | None = None) -> list[int]:
        """System prompt and corpus as token ids, as the model sees them: the part every question shares."""
        ...

    def save_corpus(self, label: str | None = None):
        """Save the loaded corpus to the disk store (`SaveResult`), or None without a store."""
        ...

    def fingerprint(self, kv_dtype: str) -> dict | None:
        """What besides the token ids decides the cached keys and values (names saved corpora); None for a server."""
        ...

    def set_attention(self, attention: str) -> None:
        """Choose "bf16" or "fp8" attention for corpora loaded from now on (OmnibusError where it cannot apply)."""
        ...

    def drop_cache(self) -> None:
        """Forget the cached corpus and conversation (and free their memory)."""
        ...
