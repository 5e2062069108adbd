"""Adding files to a set of documents: ingest them after the documents already there and scan them for secrets.
The page's Workbench (app/ui/handlers.py) and MCP's add_files (app/server/mcp_tools.py) both call `add_files`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from app.errors import OmnibusError
from ingest import build_corpus
from ingest.secret_scan import scan_corpus

MAX_UPLOAD_FILES = 2000  # files accepted in one upload, unless --max-upload-files says otherwise


class TooManyFiles(OmnibusError):
    """One upload holds more files than the app accepts at once (`--max-upload-files`)."""


@dataclass
class Documents:
    """The files added so far (an ingest.Corpus, or None) and the likely secrets found in them (source -> what)."""

    corpus: object = None
    secrets: dict = field(default_factory=dict)


def add_files(documents, paths, backend, max_files: int = MAX_UPLOAD_FILES, progress=None):
    """Ingest `paths` (files, folders, archives) after `documents.corpus`, counted with `backend`'s tokenizer and
    capped at its window; sets `documents.corpus` and `.secrets` (a `Documents`, or the page's Session) and
    returns `documents`. `progress(files_done, files_total, current)` follows the files."""
    paths = [str(p) for p in paths or [] if p]
    if not paths:
        return documents
    if len(paths) > max_files:
        raise TooManyFiles(f"this upload holds {len(paths):,} files; at most {max_files:,} "
                           "are accepted at once (zip the folder, or add it in parts)")
    report = (lambda p: progress(p.files_done, p.files_total, p.current)) if progress else None
    documents.corpus = build_corpus(paths, tokenizer=backend.tokenizer, progress=report,
                                    base=documents.corpus, max_tokens=backend.window or None)
    documents.secrets = scan_corpus(documents.corpus)
    return documents
