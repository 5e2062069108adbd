"""Answers in JSON, held to a schema while they are decoded.

llguidance turns a JSON schema into a grammar and, at each decode step, into the set of tokens that may come next;
every other token's logit becomes -inf before sampling. So the answer always parses and matches the schema. Near the
end of its token budget, or once it loops, the answer is steered to close (JsonConstraint); only a budget too small
to close in leaves it cut. The grammar asks for compact JSON (no runs of spaces or newlines a small model could loop
in), and the end-of-answer tokens are allowed only once the value is complete.
"""

from __future__ import annotations

import threading
import weakref

import llguidance
import numpy as np

from app.errors import OmnibusError
from app.engine.generation import RepetitionGuard
from app.protocol import JsonFormat, Settings

OPTIONS = {"whitespace_flexible": False}  # llguidance's JSON options: compact output, "," and ":" as separators
ANY_OBJECT = {"type": "object"}  # OpenAI's json_object: any JSON object

_tokenizers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # HF tokenizer -> llguidance.LLTokenizer
_biases: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # HF tokenizer -> closing bias [V]
_tokenizers_lock = threading.Lock()
CLOSING_RESERVE = 32  # the last tokens of an answer's budget, kept for closing its JSON
CLOSING_WEIGHT = 1e4  # added to (or taken from) a logit while closing: larger than any logit gap


class SchemaError(OmnibusError):
    """A JSON schema that cannot be used: not a JSON object, or a keyword the grammar cannot carry out."""


def grammar(fmt: JsonFormat) -> str:
    """The llguidance grammar for `fmt`; raises SchemaError saying what is wrong with the schema."""
    schema = ANY_OBJECT if fmt.schema is None else fmt.schema
    if not isinstance(schema, dict):
        raise SchemaError(f"a JSON schema must be a JSON object, not {type(schema).__name__}")
    try:
        text = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=OPTIONS)
    except (ValueError, TypeError) as err:
        raise SchemaError(f"the JSON schema cannot be read: {err}") from err
    failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(text)
    if failed:
        raise SchemaError(f"the JSON schema cannot be used for constrained decoding: {messages[0]}")
    return text


def _lltokenizer(tokenizer, stop_ids) -> llguidance.LLTokenizer:
    """llguidance's view of a Hugging Face fast tokenizer (built once per tokenizer: ~1.5 s for 128,256 tokens)."""
    with _tokenizers_lock:
        found = _tokenizers.get(tokenizer)
        if found is None:
            backend = tokenizer.backend_tokenizer.to_str()  # the Rust tokenizer, added tokens included
            found = llguidance.LLTokenizer(backend, n_vocab=len(tokenizer), eos_token=sorted(stop_ids) or None)
            _tokenizers[tokenizer] = found
        return found


def _closing_bias(tokenizer, stop_ids) -> tuple[np.ndarray, np.ndarray]:
    """Two per-token [V] preferences for closing an answer. Outside a string: +1 for tokens that only close (`"`,
    `]`, `}`, the end of the answer), -1 for tokens that open or continue (`,`, `{`, `[`). Inside a string, where
    brackets are only text: +1 for the closing quote (alone, or followed by closers only). Built once per tokenizer."""
    with _tokenizers_lock:
        found = _biases.get(tokenizer)
    if found is not None:
        return found
    lltokenizer = _lltokenizer(tokenizer, stop_ids)
    outside = np.zeros(lltokenizer.vocab_size, dtype=np.float32)
    inside = np.zeros(lltokenizer.vocab_size, dtype=np.float32)
    for token in range(lltokenizer.vocab_size):
        raw = lltokenizer.decode_bytes([token])
        text = raw.strip()
        if any(c in text for c in b",{["):
            outside[token] = -1
        elif text and not text.strip(b'"]}'):
            outside[token] = 1
        if raw.startswith(b'"') and not raw[1:].strip().strip(b'"]}'):
            inside[token] = 1
    outside[sorted(t for t in stop_ids if t < outside.size)] = 1
    with _tokenizers_lock:
        _biases[tokenizer] = outside, inside
    return outside, inside


class JsonConstraint:
    """One answer's grammar state: `restrict` the logits before each sample, then `take` the sampled token.

    An answer must end whole. So when only `reserve` tokens of its budget are left, or it starts to loop (a small
    model listing the same row again and again), the constraint closes it: among the tokens the grammar allows,
    those that close a string, array or object come first, and those that open or continue one come last.
    `cut_short` then says why ("length" or "repetition").
    """

    def __init__(self, tokenizer, fmt: JsonFormat, stop_ids, budget: int):
        lltokenizer = _lltokenizer(tokenizer, stop_ids)
        self.matcher = llguidance.LLMatcher(lltokenizer, grammar(fmt), log_level=0)
        if self.matcher.is_error():
            raise SchemaError(f"the JSON schema cannot be used: {self.matcher.get_error()}")
        self.tokenizer, self.stop_ids, self.lltokenizer = tokenizer, stop_ids, lltokenizer
        self.vocab = lltokenizer.vocab_size
        self.words = np.zeros((self.vocab + 31) // 32, dtype=np.int32)  # the allowed tokens, one bit each
        self.budget, self.reserve, self.taken = budget, min(CLOSING_RESERVE, budget // 4), 0
        self.loops = RepetitionGuard(n=16, repeats=3, window=512)  # whole rows repeated, not shared keys
        self.cut_short: str | None = None
        self.in_string = self.escaped = False

    def restrict(self, logits):
        """`logits` [V] (a torch tensor) with every token the grammar does not allow next at -inf (a new tensor)."""
        import torch  # here, not at the top: checking a schema (`grammar`) needs no torch

        self.matcher.unsafe_compute_mask_ptr(self.words.ctypes.data, self.words.nbytes)
        allowed = np.unpackbits(self.words.view(np.uint8), bitorder="little")  # [W * 32], one byte per token
        size = logits.shape[-1]
        if allowed.size < size:  # the model's vocabulary is padded beyond the tokenizer's: never those
            allowed = np.concatenate([allowed, np.zeros(size - allowed.size, np.uint8)])
        if self.cut_short is None and self.taken >= self.budget - self.reserve:
            self.cut_short = "length"
        if self.cut_short is None:
            if logits.device.type == "cpu" and logits.dtype == torch.float32:  # numpy: no thread pool to wake
                values = logits.numpy().copy()
                values[allowed[:size] == 0] = -np.inf
                return torch.from_numpy(values)
            allowed = torch.from_numpy(allowed[:size]).to(logits.device, non_blocking=True)
            return logits.masked_fill(allowed == 0, float("-inf"))
        preference = _closing_bias(self.tokenizer, self.stop_ids)[1 if self.in_string else 0]
        bias = np.where(allowed[:self.vocab] > 0, preference * CLOSING_WEIGHT, -np.inf).astype(np.float32)
        if bias.size < size:
            bias = np.concatenate([bias, np.full(size - bias.size, -np.inf, np.float32)])
        return logits + torch.from_numpy(bias[:size]).to(logits.device, logits.dtype)

    def take(self, token: int) -> None:
        """Advance the grammar past the sampled token."""
        if not self.matcher.consume_token(token):
            raise OmnibusError(f"the JSON grammar refused token {token}: {self.matcher.get_error()}")
        self.taken += 1
        self._scan(self.lltokenizer.decode_bytes([token]))
        if self.loops.push(token) and self.cut_short is None:
            self.cut_short = "repetition"

    def _scan(self, text: bytes) -> None:
        """Follow whether the answer is inside a JSON string (where brackets are text)."""
        for byte in text:
            if self.escaped:
                self.escaped = False
            elif self.in_string and byte == 0x5C:  # backslash
                self.escaped = True
            elif byte == 0x22:  # quote
                self.in_string = not self.in_string

    @property
    def complete(self) -> bool:
        """The JSON value is whole: nothing more may follow but the end of the answer."""
        return self.matcher.is_accepting()


def constraint(tokenizer, settings: Settings, stop_ids) -> JsonConstraint | None:
    """The constraint for one answer with `settings` (its `json` format and token budget), or None for free text."""
    if settings.json is None:
        return None
    return JsonConstraint(tokenizer, settings.json, stop_ids, settings.max_new_tokens)

