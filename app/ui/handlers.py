"""What the app's buttons do, in plain Python: add and remove files, load the corpus, ask, export.

Nothing here imports gradio, so the tests call these directly with the real demo model. `app.ui.app` wires
them to the page and turns `OmnibusError`s into messages. One `Workbench` holds the one backend that every
browser shares; each browser has its own `Session` (its corpus, its conversation, its Stop button).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from app.citations.check import Verifier, parse, passage
from app.protocol import AnswerStats, Settings
from app.errors import Cancelled, CorpusTooLarge, NoCorpus, OmnibusError
from app.planner import fit_advice
from ingest.secret_scan import scan_corpus
from app.prompt import DEFAULT_SYSTEM_PROMPT, Turn
from ingest import build_corpus


@dataclass
class Exchange:
    """One question, its answer and how it was produced."""

    question: str
    answer: str
    stats: AnswerStats | None = None


class Session:
    """One browser's corpus and conversation. `cancel` stops whatever this browser is running.

    A plain class, not a dataclass: Gradio would try to serialise a dataclass state into the page.
    """

    def __init__(self):
        self.corpus = None  # ingest.Corpus, or None before the first file
        self.secrets: dict = {}  # source -> [ingest.secret_scan.Finding]: likely secrets in this corpus
        self.exchanges: list[Exchange] = []
        self.loaded_tokens = 0  # corpus tokens this session last loaded into the model (0: not loaded)
        self.prefix_tokens = 0  # prompt prefix tokens of this session's last load (what it may hear was reused)
        self.cancel = threading.Event()
        self.verifier = None  # app.citations.check.Verifier of this corpus, built when an answer is first checked

    def __deepcopy__(self, memo):
        # Gradio deep-copies a state's starting value for each new browser; a fresh session is that copy.
        return Session()

    @property
    def sources(self) -> list[str]:
        return [doc.source for doc in self.corpus.documents] if self.corpus else []

    @property
    def is_loaded(self) -> bool:
        return self.corpus is not None and self.loaded_tokens == self.corpus.total_tokens > 0


class TooManyFiles(OmnibusError):
    """One upload holds more files than the app accepts at once (`--max-upload-files`)."""


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


class Workbench:
    """The handlers, bound to one backend (`app.backend.open_backend`).

    `max_upload_files` caps the files of one upload (a folder counts each file).
    """

    def __init__(self, backend, max_upload_files: int = 2000):
        self.backend = backend
        self.max_upload_files = max_upload_files

    # -- the corpus --
    def add_files(self, session: Session, paths, progress=None) -> Session:
        """Ingest `paths` (files, folders, archives) after the session's current documents."""
        paths = [str(p) for p in paths or [] if p]
        if not paths:
            return session
        if len(paths) > self.max_upload_files:
            raise TooManyFiles(f"this upload holds {len(paths):,} files; at most {self.max_upload_files:,} "
                               "are accepted at once (zip the folder, or add it in parts)")
        report = (lambda p: progress(p.files_done, p.files_total, p.current)) if progress else None
        session.corpus = build_corpus(paths, tokenizer=self.backend.tokenizer, progress=report,
                                      base=session.corpus, max_tokens=self.backend.window or None)
        session.secrets = scan_corpus(session.corpus)
        return session

    def remove_files(self, session: Session, sources) -> Session:
        """Drop documents by their source name; an emptied corpus becomes no corpus."""
        if session.corpus is not None and sources:
            session.corpus = session.corpus.without(sources)
            if not session.corpus.documents:
                session.corpus = None
        session.secrets = {s: f for s, f in session.secrets.items() if s in set(session.sources)}
        return session

    def exclude_secrets(self, session: Session) -> list[str]:
        """Remove every document with a likely secret; returns the sources removed."""
        gone = list(session.secrets)
        self.remove_files(session, gone)
        return gone

    def new_corpus(self, session: Session) -> Session:
        """Forget this session's documents and conversation (the model's cache is left for reuse)."""
        session.corpus, session.exchanges, session.loaded_tokens = None, [], 0
        session.secrets = {}
        return session

    def plan(self, session: Session, system_prompt: str = DEFAULT_SYSTEM_PROMPT):
        """The planner's verdict on this corpus (plus the instructions), or None with no corpus."""
        if session.corpus is None:
            return None
        return self.backend.plan(session.corpus.total_tokens + self.prompt_overhead(system_prompt))

    def prompt_overhead(self, system_prompt: str) -> int:
        """Tokens the system prompt and chat template put before the documents (exact for the local engine)."""
        return self.backend.prompt_overhead(system_prompt or DEFAULT_SYSTEM_PROMPT)

    # -- the model --
    def load(self, session: Session, system_prompt: str = DEFAULT_SYSTEM_PROMPT, progress=None):
        """Prefill this session's corpus. Raises NoCorpus, CorpusTooLarge (before running) or Cancelled.

        Cheap when the model already holds it; resumes a stopped load; an extended corpus costs only its
        new tokens. `progress` receives `PrefillProgress` reports. Returns `LoadStats`.
        """
        if session.corpus is None or not session.corpus.documents:
            raise NoCorpus("there are no documents yet: add some files first")
        plan = self.plan(session, system_prompt)
        if not plan.fits:  # the same check the backend makes, before anything runs
            raise CorpusTooLarge(f"{plan.reason}. {fit_advice(plan, self.backend.reserve)}")
        session.cancel = threading.Event()
        session.loaded_tokens = 0
        own = session.prefix_tokens

        def report(p):  # a stopped load still counts as this session's own, as far as it got
            session.prefix_tokens = max(session.prefix_tokens, p.done)
            if progress is not None:
                progress(p)

        stats = self.backend.load(session.corpus, system_prompt=system_prompt or DEFAULT_SYSTEM_PROMPT,
                                  progress=report, cancel=session.cancel)
        session.loaded_tokens = session.corpus.total_tokens
        session.prefix_tokens = stats.tokens
        # The model's cache is shared: tokens it already held may come from another browser's documents.
        # Say only what this session itself loaded before, so "already loaded" tells nothing about others.
        if stats.reused > own:
            stats = dataclasses.replace(stats, reused=own)
        return stats

    def check_question(self, session: Session, question: str, system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> str:
        """The question, stripped, if it fits beside this session's documents; else NoCorpus/CorpusTooLarge.

        Called before any model work, so a question that cannot fit costs nothing (and blocks no one).
        """
        question = (question or "").strip()
        if not question:
            raise NoCorpus("type a question first")
        if len(question) > MAX_QUESTION_CHARS:
            raise CorpusTooLarge(f"the question is {len(question):,} characters; at most {MAX_QUESTION_CHARS:,} "
                                 "are accepted (add long text as a document instead)")
        window = self.backend.window or 0
        if window and session.corpus is not None:
            tokens = len(self.backend.tokenizer.encode(question, add_special_tokens=False))
            room = window - session.corpus.total_tokens - self.prompt_overhead(system_prompt)
            if tokens > room:
                raise CorpusTooLarge(f"the question is {tokens:,} tokens; beside the documents "
                                     f"({session.corpus.total_tokens:,} tokens) only {max(room, 0):,} are left in "
                                     f"the model's {window:,}-token window")
        return question

    def ask(self, session: Session, question: str, settings: Settings | None = None,
            system_prompt: str = DEFAULT_SYSTEM_PROMPT, progress=None):
        """Load (a no-op when the model already holds this corpus), then stream `answer`.

        Another browser may have loaded its own corpus since; then this one is loaded again, reported
        through `progress`.
        """
        question = self.check_question(session, question, system_prompt)
        self.load(session, system_prompt, progress)
        yield from self.answer(session, question, settings)

    def answer(self, session: Session, question: str, settings: Settings | None = None, replace_last: bool = False):
        """Stream the answer to `question` after the session's earlier exchanges (the corpus must be loaded).

        Yields the answer so far after each piece. The finished `Exchange`, with its `AnswerStats`, is
        appended to `session.exchanges` (with `replace_last`, it replaces the last one), also when the answer
        is stopped or the page goes away. An answer that fails leaves the conversation as it was, so a
        refused question is not sent again with every later one.
        """
        question = question.strip()
        earlier = session.exchanges[:-1] if replace_last else session.exchanges
        history = [Turn(e.question, e.answer) for e in earlier]
        exchange = Exchange(question, "")
        failed = True
        try:
            pieces = self.backend.ask(question, history, settings or Settings(), cancel=session.cancel)
            try:
                for piece in pieces:
                    if isinstance(piece, AnswerStats):
                        exchange.stats = piece
                    else:
                        exchange.answer += piece
                        yield exchange.answer
                failed = False
            except (GeneratorExit, Cancelled):  # stopped, or the page went away: what was said is kept
                failed = False
                raise
            finally:
                close = getattr(pieces, "close", None)
                if close is not None:
                    close()  # rolls the model's cache back to the corpus even if the page went away
        finally:
            if not failed:
                session.exchanges[:] = [*earlier, exchange]
        yield exchange.answer

    def regenerate(self, session: Session, settings: Settings | None = None,
                   system_prompt: str = DEFAULT_SYSTEM_PROMPT, progress=None):
        """Ask the last question again, replacing its answer."""
        if not session.exchanges:
            raise NoCorpus("there is no answer to regenerate yet")
        self.load(session, system_prompt, progress)
        yield from self.answer(session, session.exchanges[-1].question, settings, replace_last=True)

    def stop(self, session: Session) -> None:
        """Stop this session's load or answer at the next token or chunk."""
        session.cancel.set()

    def clear_chat(self, session: Session) -> Session:
        """Forget the conversation; the documents stay loaded."""
        session.exchanges = []
        return session

    # -- saved corpora (app/store/library.py) --
    def saved_corpora(self) -> list:
        """The corpora saved on disk (most recently used first); none for a remote backend or --no-disk-cache."""
        store = self.backend.store
        return [e for e in store.entries() if e.kind == "corpus"] if store is not None else []

    def remove_saved(self, ids) -> int:
        """Delete saved corpora by id; returns how many were removed."""
        store = self.backend.store
        if store is None:
            return 0
        for ident in ids or []:
            store.remove(ident)
        return len(ids or [])

    # -- citations --
    def citations(self, session: Session, exchange: int = -1):
        """The citations of an answer (the last by default), each checked against the session's corpus.

        None when there is no answer; a list of `app.citations.check.Check` otherwise.
        """
        if not session.exchanges or session.corpus is None:
            return None
        if session.verifier is None or session.verifier.corpus is not session.corpus:
            session.verifier = Verifier(session.corpus)
        return session.verifier.check_all(parse(session.exchanges[exchange].answer))

    def cited_passage(self, session: Session, number: int):
        """(check, passage) for citation `number` of the last answer: the page or lines, quote marked."""
        checks = self.citations(session) or []
        if not 0 <= number < len(checks):
            return None, None
        return checks[number], passage(session.verifier, checks[number])

    # -- export --
    def conversation(self, session: Session) -> dict:
        """The conversation as one JSON-ready record: model, documents, exchanges with their timings."""
        documents = [doc.to_json() for doc in session.corpus.documents] if session.corpus else []
        exchanges = []
        for e in session.exchanges:
            record = {"question": e.question, "answer": e.answer}
            if e.stats is not None:
                record["stats"] = {"time_to_first_token_s": round(e.stats.ttft_s, 3),
                                   "tokens_per_s": round(e.stats.tokens_per_s, 1),
                                   "new_tokens": e.stats.new_tokens, "finish_reason": e.stats.finish_reason}
            exchanges.append(record)
        return {"model": self.backend.model_name, "exported": time.strftime("%Y-%m-%d %H:%M:%S"),
                "documents": documents, "exchanges": exchanges}

    def export(self, session: Session, folder: Path, kind: str) -> Path:
        """Write the conversation as Markdown ("md") or JSON ("json") into `folder`; return the file."""
        record = self.conversation(session)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = folder / f"omnibus-conversation.{kind}"
        text = json.dumps(record, indent=2, ensure_ascii=False) + "\n" if kind == "json" else markdown(record)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # readable by this user only
        os.fchmod(fd, 0o600)
        with open(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        return path


def markdown(record: dict) -> str:
    """A conversation record (`Workbench.conversation`) as a Markdown document."""
    lines = ["# Omnibus conversation", "", f"Model: {record['model']}  ", f"Exported: {record['exported']}", ""]
    if record["documents"]:
        lines += ["## Documents", ""]
        lines += [f"- {d['source']} ({d['kind']}, {d['tokens']:,} tokens)" for d in record["documents"]]
        lines.append("")
    for e in record["exchanges"]:
        lines += [f"## Q: {e['question']}", "", e["answer"].strip(), ""]
        if "stats" in e:
            s = e["stats"]
            lines += [f"*First word after {s['time_to_first_token_s']:.2f} s; {s['new_tokens']} tokens at "
                      f"{s['tokens_per_s']:.1f} tokens/s.*", ""]
    return "\n".join(lines)
