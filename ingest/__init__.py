"""Ingestion: any pile of files becomes one exact, tokenized context.

    from ingest import build_corpus, load_tokenizer
    corpus = build_corpus(["myrepo", "book.pdf"], tokenizer=load_tokenizer())
    corpus.text, corpus.total_tokens, corpus.token_ids()

See `ingest.context` for the context format and `ingest.tokens` for exact counting.
"""

from .corpus import Corpus, build_corpus
from .document import Document, Progress, Skipped
from .errors import FileRejected, IngestError, InputError
from .limits import Limits
from .tokens import TokenCounter, load_tokenizer

__all__ = ["Corpus", "Document", "FileRejected", "IngestError", "InputError", "Limits", "Progress",
           "Skipped", "TokenCounter", "build_corpus", "load_tokenizer"]
