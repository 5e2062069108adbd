"""What every backend (the local engine, a remote server) and every front end (the CLI, the app) share.

The types here carry settings in and progress and statistics out; they import nothing heavy, so the UI and
the remote backend start without torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Settings:
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 0.95
    seed: int | None = None


@dataclass
class PrefillProgress:
    done: int
    total: int
    tokens_per_s: float
    eta_s: float


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


@dataclass
class AnswerStats:
    prompt_tokens: int
    cached_tokens: int
    new_tokens: int
    ttft_s: float
    tokens_per_s: float
    finish_reason: str  # "stop", "length", "cancelled"
    dropped_turns: int = 0
