"""The corpus: every document of a run in a fixed order, its exact text and exact tokens."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import numpy as np

from . import context, isolation
from .document import Document, Extracted, Progress, Skipped
from .errors import FileRejected, InputError
from .limits import Limits
from .tokens import TokenCounter
from .walk import walk

log = logging.getLogger(__name__)

TOKENIZE_BATCH_CHARS = 4_000_000


@dataclass
class Corpus:
    """All documents in context order. `text` is the exact context string and
    `total_tokens` its exact token count under the tokenizer it was built with."""

    documents: list[Document]
    skipped: list[Skipped]
    counter: TokenCounter = field(repr=False)
    line_numbers: bool = False
    _whole_ids: np.ndarray | None = field(default=None, repr=False)
    _text: str | None = field(default=None, repr=False)

    def __post_init__(self):
        if not self.counter.concatenates and self._whole_ids is None:
            self._whole_ids = self.counter.encode(self.text)

    @property
    def text(self) -> str:
        """The whole context: the documents' texts joined in order."""
        if self._text is None:
            self._text = "".join(doc.text for doc in self.documents)
        return self._text

    @property
    def total_tokens(self) -> int:
        """Exact token count of `text` (no BOS, special-token text kept as text)."""
        if self._whole_ids is not None:
            return int(len(self._whole_ids))
        return sum(doc.tokens for doc in self.documents)

    def token_ids(self) -> np.ndarray:
        """The ids of `text` as one int32 array, without re-tokenizing on the fast path."""
        if self._whole_ids is not None:
            return self._whole_ids
        if not self.documents:
            return np.zeros(0, dtype=np.int32)
        return np.concatenate([doc.token_ids for doc in self.documents])

    def to_json(self) -> dict:
        """The `ingest --json` record."""
        return {"total_tokens": self.total_tokens,
                "documents": [doc.to_json() for doc in self.documents],
                "skipped": [s.to_json() for s in self.skipped]}

    def without(self, sources: Iterable[str]) -> "Corpus":
        """A new corpus with these sources removed and the rest re-indexed.

        Documents before the first removed one keep their text and ids; directory trees are
        rebuilt from the files that remain under their folder (and dropped when none do).
        """
        gone = set(sources)
        kept = [d for d in self.documents if d.source not in gone]
        files_by_root: dict[str, list[str]] = {}
        for doc in kept:
            if not doc.is_tree and doc.root:
                files_by_root.setdefault(doc.root, []).append(doc.source)
        documents, to_encode = [], []
        for doc in kept:
            if doc.is_tree and doc.root not in files_by_root:
                continue
            position = len(documents) + 1
            body, spans = _unwrap(doc)
            if doc.is_tree:
                body = context.directory_tree(doc.root, files_by_root[doc.root])
            if position == doc.index and body == _unwrap(doc)[0]:
                documents.append(doc)
                continue
            text, spans = context.wrap(position, doc.source, doc.kind, doc.pages, body, spans)
            documents.append(replace(doc, index=position, text=text, page_spans=spans, chars=len(text)))
            to_encode.append(len(documents) - 1)
        for i, ids in zip(to_encode, self.counter.encode_many([documents[i].text for i in to_encode])):
            documents[i] = replace(documents[i], token_ids=ids, tokens=int(len(ids)))
        return Corpus(documents, list(self.skipped), self.counter, self.line_numbers)


def _unwrap(doc: Document) -> tuple[str, tuple]:
    """A document's body and page spans relative to that body."""
    head = doc.text.index("\n") + 1
    body = doc.text[head:len(doc.text) - len(context.FOOTER)]
    return body, tuple((p, s - head, e - head) for p, s, e in doc.page_spans)


def build_corpus(paths, tokenizer=None, line_numbers: bool = False,
                 progress: Callable[[Progress], None] | None = None,
                 limits: Limits | None = None, base: Corpus | None = None,
                 max_tokens: int | None = None) -> Corpus:
    """Load files, folders and archives into one corpus.

    Documents of this call are sorted by display path (a codebase's directory tree first)
    and appended after `base`'s documents, which stay first and unchanged. A file already
    in `base` is skipped. Bad files become `Skipped` entries; InputError is raised only
    for a path that does not exist. `progress` receives `Progress` reports.

    `max_tokens` (the model's window) bounds what one drop may cost: once the documents read so far hold
    more tokens than that (`base` included), every later file is skipped with that reason instead of read.
    The file that crosses the line is kept, so the planner can still say by how much the corpus is over.
    """
    limits = limits or Limits()
    if isinstance(paths, (str, bytes)) or hasattr(paths, "__fspath__"):
        paths = [paths]
    paths = list(paths)
    if not paths:
        raise InputError("nothing to ingest: give at least one file or folder")
    counter = TokenCounter(tokenizer)
    if base is not None and base.counter.tokenizer is not counter.tokenizer:
        base = _retokenized(base, counter)
    found = walk(paths, limits)
    skipped = list(base.skipped if base else []) + found.skipped
    known = {doc.source for doc in base.documents} if base else set()
    report = progress or (lambda _: None)
    total = len(found.entries)
    loaded: list[tuple[str, str, bool, Extracted]] = []
    budget = _TokenBudget(max_tokens, counter, base.total_tokens if base else 0)
    try:
        for done, entry in enumerate(found.entries, start=1):
            report(Progress(done - 1, total, 0, entry.source))
            if entry.source in known:
                skipped.append(Skipped(entry.source, "already in the corpus"))
                continue
            if budget.spent():
                skipped.append(Skipped(entry.source, budget.reason()))
                continue
            extracted = _load(entry, limits, skipped)
            if extracted is not None and not extracted.body.strip():
                skipped.append(Skipped(entry.source, "empty file" if extracted.kind != "docx" and
                                       extracted.kind != "pdf" else "no text in it"))
            elif extracted is not None:
                loaded.append((entry.source, entry.root, entry.in_tree, extracted))
                budget.add(extracted.body)
    finally:
        found.close()
    drafts = _drafts(loaded, line_numbers)
    first = len(base.documents) if base else 0
    failed_all: set[str] = set()
    while True:  # a text the tokenizer fails on is skipped, and the rest re-indexed (and re-listed) without it
        documents, failed = _tokenized(drafts, list(base.documents) if base else [], first, counter,
                                       lambda tokens, source: report(Progress(total, total, tokens, source)))
        if not failed:
            break
        skipped += [Skipped(source, reason) for source, reason in failed.items()]
        failed_all |= set(failed)
        loaded = [item for item in loaded if item[0] not in failed_all]
        drafts = [d for d in _drafts(loaded, line_numbers) if d.source not in failed_all]
    report(Progress(total, total, sum(d.tokens for d in documents), ""))
    return Corpus(documents, skipped, counter, line_numbers)


def _tokenized(drafts, documents: list[Document], first: int, counter: TokenCounter, report):
    """Wrap and tokenize `drafts` after `documents`, in batches; returns (documents, {source: reason})
    where the reasons name the drafts the tokenizer failed on."""
    tokens, failed = sum(d.tokens for d in documents), {}
    batch: list[tuple[int, str]] = []

    def flush():
        nonlocal tokens
        for (slot, _), ids in zip(batch, counter.try_encode_many([text for _, text in batch])):
            if isinstance(ids, str):
                failed[documents[slot].source] = ids
                continue
            documents[slot] = replace(documents[slot], token_ids=ids, tokens=int(len(ids)))
            tokens += len(ids)
        report(tokens, documents[batch[-1][0]].source)
        batch.clear()

    pending = 0
    for offset, draft in enumerate(drafts, start=1):
        index = first + offset
        text, spans = context.wrap(index, draft.source, draft.kind, draft.pages, draft.text, draft.page_spans)
        documents.append(replace(draft, index=index, text=text, page_spans=spans, chars=len(text)))
        batch.append((len(documents) - 1, text))
        pending += len(text)
        if pending >= TOKENIZE_BATCH_CHARS:
            flush()
            pending = 0
    if batch:
        flush()
    return documents, failed


class _TokenBudget:
    """Tokens read so far in one drop against `max_tokens`. A token is at least one UTF-8 byte, so bodies are
    only tokenized (exactly) once their bytes could be over the budget."""

    def __init__(self, max_tokens: int | None, counter: TokenCounter, start: int):
        self.max_tokens, self.counter = max_tokens, counter
        self.tokens, self.unknown_bytes, self.unknown = start, 0, []

    def add(self, body: str) -> None:
        if self.max_tokens is None:
            return
        self.unknown.append(body)
        self.unknown_bytes += len(body.encode("utf-8", "surrogatepass"))

    def spent(self) -> bool:
        if self.max_tokens is None or self.tokens + self.unknown_bytes <= self.max_tokens:
            return False
        for ids in self.counter.try_encode_many(self.unknown):
            self.tokens += len(ids) if not isinstance(ids, str) else 0
        self.unknown, self.unknown_bytes = [], 0
        return self.tokens > self.max_tokens

    def reason(self) -> str:
        return (f"not read: the files before it already hold more than the model's {self.max_tokens:,}-token "
                "window")


def _load(entry, limits: Limits, skipped: list[Skipped]) -> Extracted | None:
    """One file through its loader; any failure becomes a Skipped entry."""
    try:
        return isolation.extract(entry.source, entry.read(), limits)
    except FileRejected as error:
        skipped.append(Skipped(entry.source, error.reason))
    except OSError as error:
        skipped.append(Skipped(entry.source, f"cannot be read ({error.strerror or error})"))
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as error:  # noqa: BLE001 - a defect here or in a parser (a Rust panic is a
        # BaseException): never stop the run for one file
        log.exception("internal error while reading %s", entry.source)
        skipped.append(Skipped(entry.source, f"could not be read (internal error: {type(error).__name__}: {error})",
                               defect=True))
    return None


def _drafts(loaded, line_numbers: bool) -> list[Document]:
    """Unindexed documents (text = prepared body) in context order, directory trees included."""
    drafts, code_roots, files_by_root = [], set(), {}
    for source, root, in_tree, extracted in loaded:
        numbered = line_numbers and extracted.kind == "code"
        body, spans = context.prepare_body(extracted.body, extracted.page_spans, numbered)
        drafts.append(Document(index=0, source=source, kind=extracted.kind, pages=extracted.pages,
                               tokens=0, chars=0, text=body, token_ids=None, page_spans=spans,
                               line_numbers=numbered, root=root if in_tree else ""))
        if in_tree:
            files_by_root.setdefault(root, []).append(source)
            if extracted.kind == "code":
                code_roots.add(root)
    for root in code_roots:
        drafts.append(Document(index=0, source=root + "/", kind="text", pages=None, tokens=0, chars=0,
                               text=context.directory_tree(root, files_by_root[root]), token_ids=None,
                               is_tree=True, root=root))
    drafts.sort(key=lambda d: d.source.split("/"))
    return drafts


def _retokenized(base: Corpus, counter: TokenCounter) -> Corpus:
    ids = counter.encode_many([doc.text for doc in base.documents])
    documents = [replace(doc, token_ids=i, tokens=int(len(i))) for doc, i in zip(base.documents, ids)]
    return Corpus(documents, base.skipped, counter, base.line_numbers)
