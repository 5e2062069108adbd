"""Errors meant for the person using the app. Each carries the numbers needed to act on it.

Anything else that escapes the engine is an internal defect, not a user error.
"""


class OmnibusError(Exception):
    """Base of every error the UI and CLI show to the user as it is."""


class ModelLoadError(OmnibusError):
    """The model or its tokenizer could not be loaded."""


class DoesNotFit(OmnibusError):
    """Something is longer than the room the model has for it (the API answers context_length_exceeded)."""


class CorpusTooLarge(DoesNotFit):
    """The corpus (plus room for questions) exceeds the model window or what the devices hold."""


class QuestionTooLong(DoesNotFit):
    """The question (with the earlier turns it must keep) exceeds the room left after the corpus."""


class MissingInput(OmnibusError):
    """Something to work on is not there yet: documents, a loaded corpus, a question."""


class NoCorpus(MissingInput):
    """There are no documents, or a question was asked before a corpus was (fully) loaded."""


class EmptyQuestion(MissingInput):
    """The question is empty, or there is no earlier question to ask again."""


class OutOfMemory(OmnibusError):
    """A device ran out of memory mid-run; the cached corpus is kept."""


class Cancelled(OmnibusError):
    """The user stopped a prefill or an answer; a stopped prefill says how far it got (`done` of `total` tokens)."""

    def __init__(self, message: str = "", done: int = 0, total: int = 0):
        super().__init__(message)
        self.done, self.total = done, total


class BackendError(OmnibusError):
    """A remote inference server failed or refused a request."""
