"""Conversations saved with their corpus, one folder per login, and the JSON they are exported and imported as.

A record lives next to the saved KV caches (`app.store.library.Store.root`):

    .conversations/<owner>/<record id>/corpus.json        the documents, text and all (written at each load)
    .conversations/<owner>/<record id>/conversation.json  instructions, exchanges, a summary for the panel

`<owner>` is the login (a hash of it, so any name is a safe folder name), or `local` without logins: each login
lists and removes only its own records. The KV cache itself stays in the shared library (the same documents
give the same cache); removing a record removes its cache only when no other record uses it.
No gradio here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

from ingest import context
from ingest.corpus import Corpus
from ingest.document import Document, Skipped
from ingest.tokens import TokenCounter

RECORDS = ".conversations"  # a dot folder: the KV library (app.store) skips it
FORMAT = 1
MAX_IMPORT_BYTES = 5 * 2**20  # an imported conversation file (a few books of text, with its exchanges)
MAX_IMPORT_EXCHANGES = 2_000


class BadRecord(ValueError):
    """A saved or imported conversation that cannot be read back."""


@dataclass
class Record:
    """One saved conversation as listed in the panel (from its conversation.json)."""

    path: Path
    meta: dict = field(repr=False)

    id = property(lambda self: self.path.name)
    sources = property(lambda self: self.meta.get("sources", []))
    tokens = property(lambda self: self.meta.get("tokens", 0))
    exchanges = property(lambda self: len(self.meta.get("exchanges", [])))
    instructions = property(lambda self: self.meta.get("instructions", ""))
    updated = property(lambda self: self.meta.get("updated", 0.0))
    kv_id = property(lambda self: self.meta.get("kv_id"))

    @property
    def first_question(self) -> str:
        """The conversation's first question ("" before any): what tells two conversations over the same
        documents apart."""
        for exchange in self.meta.get("exchanges", []):
            if isinstance(exchange, dict) and str(exchange.get("question", "")).strip():
                return str(exchange["question"])
        return ""


def owner_folder(owner: str) -> str:
    """A folder name for a login: readable start, hash end (so names never collide or escape)."""
    if not owner:
        return "local"
    readable = re.sub(r"[^A-Za-z0-9_-]", "", owner)[:24]
    return f"{readable}-{hashlib.sha256(owner.encode()).hexdigest()[:16]}"


def _write_json(path: Path, data: dict) -> None:
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    temp.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    os.replace(temp, path)


# -- the corpus as JSON --

def corpus_record(corpus) -> dict:
    """Everything needed to rebuild `corpus` exactly (token ids are recomputed from the text)."""
    documents = [{"index": d.index, "source": d.source, "kind": d.kind, "pages": d.pages, "text": d.text,
                  "page_spans": [list(s) for s in d.page_spans], "line_numbers": d.line_numbers,
                  "first_line": d.first_line, "is_tree": d.is_tree, "root": d.root} for d in corpus.documents]
    return {"line_numbers": corpus.line_numbers, "documents": documents,
            "skipped": [{"source": s.source, "reason": s.reason} for s in corpus.skipped]}


def corpus_from_record(record: dict, tokenizer) -> Corpus:
    """Rebuild a corpus from `corpus_record` output, counting its tokens with `tokenizer`.

    Each document must be a well-formed wrapper around escaped content, so an edited or hostile file can
    never open or close a document of its own; anything else raises BadRecord.
    """
    try:
        documents = []
        for position, d in enumerate(record["documents"], start=1):
            source, kind, pages, text = str(d["source"]), str(d["kind"]), d.get("pages"), d["text"]
            if not isinstance(text, str) or (pages is not None and not isinstance(pages, int)):
                raise BadRecord(f"document {position} has no text")
            head = context.header(position, source, kind, pages)
            body = text[len(head):len(text) - len(context.FOOTER)]
            if not (text.startswith(head) and text.endswith(context.FOOTER)) or context.escape_content(body) != body:
                raise BadRecord(f"document {position} ({source}) is not as Omnibus wrote it")
            spans = tuple((int(p), int(s), int(e)) for p, s, e in d.get("page_spans", []))
            if any(not len(head) <= s <= e <= len(text) for _, s, e in spans):
                raise BadRecord(f"document {position} ({source}) has pages outside its text")
            documents.append(Document(index=position, source=source, kind=kind, pages=pages, tokens=0,
                                      chars=len(text), text=text, token_ids=None, page_spans=spans,
                                      line_numbers=bool(d.get("line_numbers")), first_line=int(d.get("first_line", 2)),
                                      is_tree=bool(d.get("is_tree")), root=str(d.get("root", ""))))
        skipped = [Skipped(str(s["source"]), str(s["reason"])) for s in record.get("skipped", [])]
    except (KeyError, TypeError, ValueError) as err:
        if isinstance(err, BadRecord):
            raise
        raise BadRecord(f"the documents cannot be read ({type(err).__name__}: {err})") from err
    if not documents:
        raise BadRecord("it holds no documents")
    counter = TokenCounter(tokenizer)
    ids = counter.encode_many([d.text for d in documents])
    documents = [replace(d, token_ids=i, tokens=int(len(i))) for d, i in zip(documents, ids)]
    return Corpus(documents, skipped, counter, bool(record.get("line_numbers")))


def read_import(path) -> dict:
    """An exported conversation read back from `path`, refused with the numbers before any work when the file
    or its exchanges are more than an import takes (`MAX_IMPORT_BYTES`, `MAX_IMPORT_EXCHANGES`)."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_IMPORT_BYTES:
        raise BadRecord(f"the file is {size / 2**20:,.1f} MB; at most {MAX_IMPORT_BYTES / 2**20:,.0f} MB can be "
                        "imported (add large documents as files instead)")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise BadRecord("its JSON is nested too deeply") from None
    if not isinstance(record, dict) or "corpus" not in record:
        raise BadRecord("it is not a conversation exported as JSON by Omnibus")
    exchanges = record.get("exchanges")
    if isinstance(exchanges, list) and len(exchanges) > MAX_IMPORT_EXCHANGES:
        raise BadRecord(f"it holds {len(exchanges):,} exchanges; at most {MAX_IMPORT_EXCHANGES:,} can be imported")
    return record


def exchanges_from_record(record: dict) -> list[tuple[str, str]]:
    """(question, answer) pairs of a conversation record or export."""
    try:
        return [(str(e["question"]), str(e["answer"])) for e in record.get("exchanges", [])]
    except (KeyError, TypeError) as err:
        raise BadRecord(f"the exchanges cannot be read ({type(err).__name__}: {err})") from err


# -- the records on disk --

class Library:
    """The saved conversations under `root` (`Store.root / conversations`), by owner."""

    def __init__(self, root):
        self.root = Path(root) / RECORDS

    def folder(self, owner: str) -> Path:
        return self.root / owner_folder(owner)

    def records(self, owner: str) -> list[Record]:
        """This owner's records, most recently updated first (unreadable ones are skipped)."""
        out = []
        folder = self.folder(owner)
        if not folder.is_dir():
            return out
        for path in folder.iterdir():
            if path.name.startswith("."):
                continue
            try:
                meta = json.loads((path / "conversation.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if meta.get("format") == FORMAT:
                out.append(Record(path, meta))
        return sorted(out, key=lambda r: r.updated, reverse=True)

    def find(self, owner: str, record_id: str) -> Record:
        for record in self.records(owner):
            if record.id == record_id:
                return record
        raise BadRecord("that saved conversation is gone (removed in another window?)")

    def save(self, owner: str, record_id: str, *, corpus=None, conversation: dict) -> Record:
        """Write the conversation (and the corpus, when given) of one record."""
        path = self.folder(owner) / record_id
        path.mkdir(parents=True, exist_ok=True)
        if corpus is not None:
            _write_json(path / "corpus.json", corpus_record(corpus))
        meta = {"format": FORMAT, **conversation, "updated": time.time()}
        meta.setdefault("created", meta["updated"])
        _write_json(path / "conversation.json", meta)
        return Record(path, meta)

    def read_corpus(self, record: Record, tokenizer) -> Corpus:
        try:
            data = json.loads((record.path / "corpus.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise BadRecord(f"its documents cannot be read ({err})") from err
        return corpus_from_record(data, tokenizer)

    def kv_in_use(self, kv_id: str, besides: Path) -> bool:
        """Whether any record (of any owner) other than `besides` uses this saved KV cache."""
        for meta_file in self.root.glob("*/*/conversation.json"):
            if meta_file.parent == besides:
                continue
            try:
                if json.loads(meta_file.read_text(encoding="utf-8")).get("kv_id") == kv_id:
                    return True
            except (OSError, ValueError):
                continue
        return False

    def remove(self, record: Record) -> None:
        shutil.rmtree(record.path, ignore_errors=True)
