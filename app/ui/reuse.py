"""Which cached tokens a browser session may reuse: only those it loaded itself, or those of its login's saved
corpora. Every browser shares one model and one cache; if a session could reuse whatever happens to be cached,
"203 tokens were already loaded" (or a load that ends at once) would tell it what another session loaded.

So a session's load reuses at most `OwnPrefix.limit` tokens and reads the rest again: the words it sees and the
time its load takes depend only on what it did itself (and on its own login's saved corpora). What stays
visible is only that the model was used by someone meanwhile (its own documents are then read again).
"""

from __future__ import annotations

import numpy as np

from app.errors import OmnibusError


def common_length(a: np.ndarray, b: np.ndarray) -> int:
    """How many leading ids `a` and `b` share."""
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


class Claim:
    """Prompt-prefix tokens of one corpus read with one set of instructions."""

    def __init__(self, system_prompt: str | None, corpus, tokens: int):
        self.system_prompt, self.tokens = system_prompt, tokens
        self.corpus_ids = np.asarray(corpus.token_ids(), dtype=np.int64)

    def shared(self, backend, corpus_ids: np.ndarray, system_prompt: str) -> int:
        """Tokens at the start of the new prefix that this claim covers."""
        if system_prompt != self.system_prompt or not self.tokens:
            return 0
        return min(self.tokens, backend.prompt_overhead(system_prompt) + common_length(self.corpus_ids, corpus_ids))


class OwnPrefix:
    """What one session may reuse: what its own last load put in the cache (while no other load came since:
    the model's load count is unchanged), and the saved corpus of its own login it opened."""

    def __init__(self):
        self.loaded: Claim | None = None
        self.loads_after: int | None = None  # the model's load count right after that load
        self.saved: Claim | None = None

    def limit(self, backend, corpus, system_prompt: str) -> int:
        """Tokens of this corpus's prompt prefix that the session may reuse from the model's memory or disk."""
        ids = np.asarray(corpus.token_ids(), dtype=np.int64)
        own = 0
        if self.loaded is not None and self.loads_after == _loads(backend):
            own = self.loaded.shared(backend, ids, system_prompt)
        return max(own, self.saved.shared(backend, ids, system_prompt) if self.saved is not None else 0)

    def record(self, backend, corpus, system_prompt: str, tokens: int) -> None:
        """The session's own load of `corpus` got `tokens` prompt-prefix tokens into the cache."""
        self.loaded, self.loads_after = Claim(system_prompt, corpus, tokens), _loads(backend)

    def opened(self, corpus, system_prompt: str | None, tokens: int) -> None:
        """A saved corpus of this session's own login was put into it: its first `tokens` may come from disk."""
        self.loaded, self.loads_after = None, None
        self.saved = Claim(system_prompt, corpus, tokens)

    def forget(self) -> None:
        self.__init__()


def _loads(backend) -> int | None:
    """The model's count of corpus loads (None for a remote server, whose cache is its own)."""
    try:
        counters = backend.counters
    except OmnibusError:  # a model still opening
        return None
    return counters.corpus_loads if counters is not None else None  # None: a remote server
