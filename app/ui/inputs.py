"""What a page or an API call sends, checked before any model work: the answer settings and the question's length.

Each check raises `InvalidSetting` with words that say what is wrong and what is allowed.
"""

from __future__ import annotations

import math

from dataclasses import dataclass

from app.errors import EmptyQuestion, OmnibusError, QuestionTooLong
from app.protocol import Settings


class InvalidSetting(OmnibusError):
    """A setting (answer length, temperature, top-p) outside what the model can use."""


MAX_QUESTION_CHARS = 200_000  # a question longer than this is refused before it is even tokenized
MIN_TEMPERATURE = 0.01  # below this (and above 0) the logits overflow when divided by it
MAX_TEMPERATURE = 2.0


def _number(value, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise InvalidSetting(f"{name} must be a number, not {str(value)[:40]!r}") from None
    if not math.isfinite(number):
        raise InvalidSetting(f"{name} must be a finite number, not {number}")
    return number


def settings_from(max_new_tokens, temperature, top_p=0.95, seed=None, most_tokens: int | None = None) -> Settings:
    """Settings from what the page (or an API call) sent, each checked; InvalidSetting says what is wrong.

    `most_tokens` caps the answer length (the model's window).
    """
    length = _number(max_new_tokens, "the longest answer")
    if length != int(length) or not 1 <= length <= (most_tokens or 2**31):
        raise InvalidSetting(f"the longest answer must be a whole number of tokens from 1 to "
                             f"{most_tokens or 2**31:,}, not {max_new_tokens}")
    heat = _number(temperature, "the temperature")
    if heat != 0 and not MIN_TEMPERATURE <= heat <= MAX_TEMPERATURE:
        raise InvalidSetting(f"the temperature must be 0 (always the same answer) or from {MIN_TEMPERATURE} to "
                             f"{MAX_TEMPERATURE}, not {temperature}")
    nucleus = _number(top_p, "top-p")
    if not 0 < nucleus <= 1:
        raise InvalidSetting(f"top-p must be above 0 and at most 1, not {top_p}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise InvalidSetting(f"the seed must be a whole number from 0 to 2**63 - 1, not {str(seed)[:40]!r}")
    return Settings(int(length), heat, nucleus, seed)


@dataclass(frozen=True)
class CheckedQuestion:
    """A question `Workbench.checked` found fits, with the fit plan it made (None: no window to check against)."""

    text: str
    plan: object = None  # app.planner.Plan


def question_text(question: str) -> str:
    """The question, stripped; EmptyQuestion or QuestionTooLong (in characters, before any tokenizing)."""
    question = (question or "").strip()
    if not question:
        raise EmptyQuestion("type a question first")
    if len(question) > MAX_QUESTION_CHARS:
        raise QuestionTooLong(f"the question is {len(question):,} characters; at most {MAX_QUESTION_CHARS:,} "
                              "are accepted. Shorten it, or add the text as a file")
    return question


def check_room(question: str, tokenizer, window: int, corpus_tokens: int, overhead: int) -> None:
    """QuestionTooLong when the question's tokens do not fit beside the documents in the model's window."""
    tokens = len(tokenizer.encode(question, add_special_tokens=False))
    room = window - corpus_tokens - overhead
    if tokens > room:
        raise QuestionTooLong(f"the question is {tokens:,} tokens; beside the documents ({corpus_tokens:,} tokens) "
                              f"only {max(room, 0):,} are left in the model's {window:,}-token window. Shorten it, "
                              "or add the text as a file")
