"""One sequence's state: what the KV cache holds, token for token, and where its parts begin and end.

The cache holds the committed prefix (system prompt + corpus, `prefix_ids`), then the conversation committed
after it (the last prompt's turns and answer, `conversation_ids`). Everything that changes them goes through
this object, so the cache and the token lists cannot drift apart: `reset` forgets all of it in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from app.engine.kv_cache import KVCache


@dataclass
class Sequence:
    """The cached tokens of the one sequence an engine holds, and the cache that holds them."""

    cache: KVCache | None = None
    prefix_ids: list[int] = field(default_factory=list)  # committed system prompt + corpus, token for token
    corpus_ids: list[int] = field(default_factory=list)  # the corpus alone, as loaded
    corpus_sources: list[str] = field(default_factory=list)  # its documents' sources, in order (names saved corpora)
    conversation_ids: list[int] = field(default_factory=list)  # committed after the prefix
    prefix_length: int = 0  # tokens of system prompt + corpus once fully loaded
    prefix_key: tuple | None = None  # (corpus ids object, system prompt) of the loaded prefix: recognised in O(1)
    graph: object = None  # app.engine.decode_graph.DecodeGraph: the decode step captured for this cache

    def reset(self) -> None:
        """Forget everything: the cache, the prefix, the conversation and the captured decode step."""
        self.cache, self.prefix_ids, self.conversation_ids, self.graph = None, [], [], None
        self.prefix_key = None

    @property
    def loaded(self) -> bool:
        """A whole prefix is cached (not a cancelled load's part of one)."""
        return self.cache is not None and bool(self.prefix_ids) and len(self.prefix_ids) >= self.prefix_length

    def start_prefix(self, prefix: list[int], reused: int, keep_conversation: bool) -> None:
        """A load of `prefix` begins with its first `reused` tokens cached: roll the cache back to them (and the
        conversation after them when the prefix is the same)."""
        if not keep_conversation:
            self.conversation_ids = []
        self.cache.truncate(reused + len(self.conversation_ids))
        self.prefix_ids = prefix[:reused]
        self.prefix_key = None

    def start_answer(self, suffix: list[int]) -> int:
        """Keep the cached part of the conversation that `suffix` (the prompt after the prefix) begins with; at
        least its last token runs again, for its logits. Returns the tokens reused."""
        reused = min(common_prefix(self.conversation_ids, suffix), len(suffix) - 1)
        del self.conversation_ids[reused:]
        self.cache.truncate(len(self.prefix_ids) + reused)
        return reused

    def keep_committed(self) -> None:
        """Roll the cache back to what the token lists say was committed (after a stop or a failure)."""
        self.cache.truncate(len(self.prefix_ids) + len(self.conversation_ids))


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens `a` and `b` share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
