"""Token sampling, the tokens that end an answer, and UTF-8-safe incremental detokenization for streamed answers."""

from __future__ import annotations

import torch


def sample(logits: torch.Tensor, temperature: float, top_p: float, generator=None) -> int:
    """Next token from logits [V]: greedy at temperature 0, else nucleus sampling."""
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < top_p  # always keeps the most likely token
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


def stop_ids(model, tokenizer) -> set[int]:
    """The token ids that end an answer: the model's and tokenizer's end-of-sequence ids, and the chat templates'
    end-of-turn tokens this tokenizer has."""
    ids = set()
    for source in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if source is not None:
            ids.update(source if isinstance(source, (list, tuple)) else [source])
    for token in ("<|eot_id|>", "<|im_end|>", "<|end_of_text|>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            ids.add(token_id)
    return ids


class StreamDecoder:
    """Turns a growing list of token ids into text pieces, never splitting a UTF-8 character.

    It re-decodes only a short window of recent ids: text is emitted once the window decodes without a
    trailing replacement character, so multi-byte characters spread over several tokens come out whole.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0  # start of the window that gives context to the decoder
        self.read_offset = 0  # ids before this have been emitted

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token: int) -> str:
        """Add one token; return the newly complete text (possibly empty)."""
        self.ids.append(token)
        before = self._decode(self.ids[self.prefix_offset:self.read_offset])
        after = self._decode(self.ids[self.prefix_offset:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return after[len(before):]
        return ""

    def flush(self) -> str:
        """Whatever is left at the end (an incomplete character shows as U+FFFD)."""
        before = self._decode(self.ids[self.prefix_offset:self.read_offset])
        after = self._decode(self.ids[self.prefix_offset:])
        self.prefix_offset = self.read_offset = len(self.ids)
        return after[len(before):]

    def text(self) -> str:
        return self._decode(self.ids)


class RepetitionGuard:
    """Says when an answer has fallen into a loop: one n-gram of `n` tokens `repeats` times in the last `window`.

    Small models repeat a phrase with a counter in it ("version 1.2.2 … 1.2.3 …"); the words around the
    counter still repeat exactly, so an 8-token n-gram seen three times catches the loop a few cycles in,
    while ordinary prose almost never repeats 8 tokens three times within 256.
    """

    def __init__(self, n: int = 8, repeats: int = 3, window: int = 256):
        self.n, self.repeats, self.window = n, repeats, window
        self.ids: list[int] = []
        self.seen: dict[tuple[int, ...], list[int]] = {}  # n-gram -> where it ended

    def push(self, token: int) -> bool:
        """Add one generated token; True when the answer is looping."""
        self.ids.append(token)
        if len(self.ids) < self.n:
            return False
        end = len(self.ids)
        ends = self.seen.setdefault(tuple(self.ids[-self.n:]), [])
        ends[:] = [e for e in ends if end - e < self.window]
        ends.append(end)
        return len(ends) >= self.repeats
