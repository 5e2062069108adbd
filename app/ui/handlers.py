"""What the app's buttons do, in plain Python: add and remove files, load the corpus, ask, export.

Nothing here imports gradio, so the tests call these directly with the real demo model. `app.ui.events` calls
them from the page and turns `OmnibusError`s into messages. One `Workbench` holds the one backend that every
browser shares; each browser has its own `Session` (its corpus, its conversation, its Stop button).
"""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

from app.citations.check import Verifier, parse, passage
from app.protocol import AnswerStats, Settings
from app.errors import Cancelled, CorpusTooLarge, EmptyQuestion, NoCorpus, OmnibusError
from app.planner import fit_advice
from ingest.secret_scan import scan_corpus
from app.prompt import DEFAULT_SYSTEM_PROMPT, Turn
from app.ui.inputs import CheckedQuestion, check_room, question_text
from app.ui.session import Exchange, KeptSessions, Session
from app.sharing.saved import (BadRecord, Library, corpus_from_record, exchanges_from_record,
                          read_import)
from app.ui import export
from app.ui.views import instructions_tag
from app.sharing.documents import MAX_UPLOAD_FILES, add_files



class BadRecordError(OmnibusError):
    """A saved or imported conversation could not be opened."""


class Workbench:
    """The handlers, bound to one backend (`app.backend.open_backend`).

    `max_upload_files` caps the files of one upload (a folder counts each file).
    """

    def __init__(self, backend, max_upload_files: int = MAX_UPLOAD_FILES):
        self.backend = backend
        self.max_upload_files = max_upload_files
        self.sessions = KeptSessions()  # for page reloads
        self.questions_checked = 0  # `checked` runs (a question is checked once on its way to the model)

    # -- sessions that survive a page reload (app/ui/session.py) --
    def keep(self, session: Session, owner: str = "") -> Session:
        """Remember `session` for `owner` so that `resume` can hand it back after a reload."""
        return self.sessions.keep(session, owner)

    def resume(self, session_id: str | None, owner: str = "") -> Session | None:
        """The kept session with this id, if it belongs to `owner`."""
        return self.sessions.resume(session_id, owner)

    def default_settings(self) -> Settings:
        """The backend's answer settings (the demo model answers shorter)."""
        return self.backend.default_settings()

    # -- the corpus --
    def add_files(self, session: Session, paths, progress=None) -> Session:
        """Ingest `paths` (files, folders, archives) after the session's current documents."""
        return add_files(session, paths, self.backend, self.max_upload_files, progress)

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
        """Forget this session's documents and conversation (the model's cache is left for reuse).

        What was saved stays in Saved corpora; the next load starts a new saved conversation.
        """
        session.corpus, session.exchanges, session.loaded_tokens = None, [], 0
        session.secrets, session.last_load, session.kv_id = {}, None, None
        session.record_id = uuid.uuid4().hex
        return session

    def load_cost(self, session: Session, system_prompt: str = DEFAULT_SYSTEM_PROMPT):
        """What loading this corpus with these instructions would cost now (`LoadCost`), or None when the
        backend cannot say (a remote server) or there is no corpus."""
        if session.corpus is None:
            return None
        system_prompt = system_prompt or DEFAULT_SYSTEM_PROMPT
        return self.backend.load_cost(session.corpus, system_prompt,
                                      session.own.limit(self.backend, session.corpus, system_prompt))

    def instructions_changed(self, session: Session, system_prompt: str) -> bool:
        """Whether the session's loaded corpus was read with other instructions than these."""
        return session.system_prompt is not None and session.corpus is not None and \
            (system_prompt or DEFAULT_SYSTEM_PROMPT) != session.system_prompt

    def plan(self, session: Session, system_prompt: str = DEFAULT_SYSTEM_PROMPT):
        """The planner's verdict on this corpus (plus the instructions), or None with no corpus."""
        if session.corpus is None:
            return None
        return self.backend.plan(session.corpus.total_tokens + self.prompt_overhead(system_prompt))

    def prompt_overhead(self, system_prompt: str) -> int:
        """Tokens the system prompt and chat template put before the documents (exact for the local engine)."""
        return self.backend.prompt_overhead(system_prompt or DEFAULT_SYSTEM_PROMPT)

    # -- the model --
    def load(self, session: Session, system_prompt: str = DEFAULT_SYSTEM_PROMPT, progress=None, plan=None):
        """Prefill this session's corpus. Raises NoCorpus, CorpusTooLarge (before running) or Cancelled.

        Cheap when the model already holds it; resumes a stopped load; an extended corpus costs only its
        new tokens. `progress` receives `PrefillProgress` reports. `plan`: the fit plan made for it just now
        (the backend then plans no more). Returns `LoadStats`.
        """
        if session.corpus is None or not session.corpus.documents:
            raise NoCorpus("there are no documents yet: add some files first")
        plan = plan or self.plan(session, system_prompt)
        if not plan.fits:  # the same check the backend makes, before anything runs
            raise CorpusTooLarge(self.too_large(session, plan))
        session.cancel = threading.Event()
        session.load_why = self.load_reason(session, system_prompt)
        session.loaded_tokens = 0
        system_prompt = system_prompt or DEFAULT_SYSTEM_PROMPT
        # The model's cache is shared: reuse only what this session loaded itself (app/ui/reuse.py), so that
        # neither "already loaded" nor the time the load takes tells anything about other sessions.
        corpus, limit = session.corpus, session.own.limit(self.backend, session.corpus, system_prompt)
        reached = limit

        def report(p):  # a stopped load still counts as this session's own, as far as it got
            nonlocal reached
            session.prefix_tokens = max(session.prefix_tokens, p.done)
            reached = max(reached, p.done)
            if progress is not None:
                progress(p)

        session.busy = "load"
        try:
            stats = self.backend.load(corpus, system_prompt=system_prompt, progress=report, cancel=session.cancel,
                                      reuse_limit=limit, plan=plan)
        except Cancelled as err:
            session.own.record(self.backend, corpus, system_prompt, max(reached, err.done))
            raise
        except BaseException:
            session.own.forget()  # what the cache holds now is unknown: read it all again next time
            raise
        finally:
            session.busy = ""
        session.own.record(self.backend, corpus, system_prompt, stats.tokens)
        if session.cancel.is_set() and not stats.stop_requested:
            stats.stop_requested = True  # Cancel came, but the load finished first
        session.loaded_tokens = session.corpus.total_tokens
        session.prefix_tokens = stats.tokens
        session.system_prompt, session.last_load = system_prompt, stats
        self.save_conversation(session, with_corpus=True, stats=stats)
        return stats

    def too_large(self, session: Session, plan, most: int = 3) -> str:
        """Why these documents cannot be loaded and what to remove: the one wording (page, pop-up, API)."""
        overhead = self.prompt_overhead(session.system_prompt or DEFAULT_SYSTEM_PROMPT)
        largest = sorted(session.corpus.documents, key=lambda d: d.tokens, reverse=True)[:most]
        names = ", ".join(f"{d.source} ({d.tokens:,} tokens)" for d in largest)
        return (f"{plan.reason}. {fit_advice(plan, self.backend.reserve, overhead)} The largest documents: "
                f"{names}")

    def load_reason(self, session: Session, system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> str:
        """Why loading this session now has documents to read, in a few words (said with the answer's timing)."""
        if session.system_prompt is None:
            return "they had not been loaded yet"
        if (system_prompt or DEFAULT_SYSTEM_PROMPT) != session.system_prompt:
            return "the instructions changed"
        if session.corpus is not None and session.loaded_tokens != session.corpus.total_tokens:
            return "files were added or removed since the last load"
        return "another conversation used the model meanwhile"

    def check_question(self, session: Session, question: str, system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> str:
        """The question, stripped, if it fits beside this session's documents; else EmptyQuestion,
        QuestionTooLong, or CorpusTooLarge when the documents themselves do not fit.

        Called before any model work, so a question that cannot fit costs nothing (and blocks no one).
        """
        return self.checked(session, question, system_prompt).text

    def checked(self, session: Session, question: str, system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> CheckedQuestion:
        """`check_question`, keeping the fit plan it made: `ask` takes the result and checks and plans no more."""
        self.questions_checked += 1
        question, plan = question_text(question), None
        window = self.backend.window or 0
        if window and session.corpus is not None:
            plan = self.plan(session, system_prompt)
            if not plan.fits:  # the documents themselves do not fit: say so, not that the question is too long
                raise CorpusTooLarge(self.too_large(session, plan))
            check_room(question, self.backend.tokenizer, window, session.corpus.total_tokens,
                       self.prompt_overhead(system_prompt))
        return CheckedQuestion(question, plan)

    def ask(self, session: Session, question: str | CheckedQuestion, settings: Settings | None = None,
            system_prompt: str = DEFAULT_SYSTEM_PROMPT, progress=None):
        """Load (a no-op when the model already holds this corpus), then stream `answer`.

        `question`: as typed, or as `checked` returned it (then it is neither checked nor planned again).
        Another browser may have loaded its own corpus since; then this one is loaded again, reported
        through `progress`.
        """
        if not isinstance(question, CheckedQuestion):
            question = self.checked(session, question, system_prompt)
        stats = self.load(session, system_prompt, progress, plan=question.plan)
        yield from self.answer(session, question.text, settings, reload=stats)

    def answer(self, session: Session, question: str, settings: Settings | None = None, *,
               replace_last: bool = False, reload=None):
        """Stream the answer to `question` after the session's earlier exchanges (the corpus must be loaded).

        Yields the answer so far after each piece. The finished `Exchange`, with its `AnswerStats`, is
        appended to `session.exchanges` (or replaces the last one: `replace_last`), also when the answer is
        stopped or the page goes away; an answer stopped before its first word is not kept, and
        an answer that fails leaves the conversation as it was (a refused question is not sent again). `reload`: the
        `LoadStats` of the load just before, shown with the answer when it read documents again.
        """
        question = question.strip()
        earlier = session.exchanges[:-1] if replace_last else session.exchanges
        history = [Turn(e.question, e.answer) for e in earlier]
        read_again = reload is not None and reload.tokens > reload.reused
        exchange = Exchange(question, "", reload=reload if read_again else None,
                            reload_why=session.load_why if read_again else "")
        session.busy, session.partial = "answer", (question, "")
        failed = True
        pieces = self.backend.ask(question, history, settings or Settings(), cancel=session.cancel)
        try:
            for piece in pieces:
                if isinstance(piece, AnswerStats):
                    exchange.stats = piece
                else:
                    exchange.answer += piece
                    session.partial = (question, exchange.answer)
                    yield exchange.answer
            failed = False
        except (GeneratorExit, Cancelled):  # stopped, or the page went away: what was said is kept
            failed = False
            raise
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()  # ends the model's run (and frees its lock) even if the page went away
            finished = exchange.stats is not None and exchange.stats.finish_reason != "cancelled"
            exchange.stop_late = finished and session.cancel.is_set()
            if exchange.answer.strip() and not failed:
                if replace_last and session.exchanges and session.exchanges[-1].question == question:
                    session.exchanges[-1] = exchange
                else:
                    session.exchanges.append(exchange)
            session.busy, session.partial = "", None
            self.save_conversation(session)
        yield exchange.answer

    def regenerate(self, session: Session, settings: Settings | None = None,
                   system_prompt: str = DEFAULT_SYSTEM_PROMPT, progress=None):
        """Ask the last question again, replacing its answer."""
        if not session.exchanges:
            raise EmptyQuestion("there is no answer to regenerate yet")
        last = session.exchanges[-1]  # kept until the new answer is done (an export meanwhile still has it)
        stats = self.load(session, system_prompt, progress)
        yield from self.answer(session, last.question, settings, replace_last=True, reload=stats)

    def stop(self, session: Session) -> None:
        """Stop this session's load or answer at the next token or chunk."""
        session.cancel.set()

    def clear_chat(self, session: Session) -> Session:
        """Start a new conversation about the same documents (they stay loaded). The cleared one stays in the
        saved corpora as it was; the new one is saved there from its first answer."""
        if session.exchanges:
            session.record_id = uuid.uuid4().hex
        session.exchanges = []
        return session

    # -- saved corpora and their conversations (app/sharing/saved.py, next to app/store's KV caches) --
    @property
    def library(self) -> Library | None:
        """The saved conversations; None for a remote backend or --no-disk-cache."""
        store = self.backend.store
        return Library(store.root) if store is not None else None

    def save_conversation(self, session: Session, *, with_corpus: bool = False, stats=None) -> None:
        """Keep the session's loaded corpus and conversation in its owner's saved corpora (when there is a
        disk library and the corpus was loaded)."""
        library = self.library
        if library is None or session.corpus is None or session.system_prompt is None:
            return
        new = not (library.folder(session.owner) / session.record_id / "corpus.json").exists()
        if new and not with_corpus and not session.exchanges:
            return  # a cleared chat: its record begins with its first answer
        saved = getattr(stats if stats is not None else session.last_load, "saved", None)
        kv_id = saved.entry.id if saved is not None and getattr(saved, "entry", None) is not None else None
        if kv_id is None:
            try:
                kv_id = library.find(session.owner, session.record_id).kv_id
            except BadRecord:  # a new record (after Clear chat): the documents' saved cache is still theirs
                kv_id = session.kv_id
        session.kv_id = kv_id
        with_corpus = with_corpus or new
        library.save(session.owner, session.record_id, corpus=session.corpus if with_corpus else None,
                     conversation={**self._summary(session), "kv_id": kv_id, "prefix_tokens": session.prefix_tokens,
                                   "exchanges": [{"question": e.question, "answer": e.answer}
                                                 for e in session.exchanges]})

    def _summary(self, session: Session) -> dict:
        return {"model": self.backend.model_name, "sources": session.sources, "tokens": session.corpus.total_tokens,
                "system_prompt": session.system_prompt,
                "instructions": instructions_tag(session.system_prompt, self.backend)}

    def saved_corpora(self, owner: str = "") -> list:
        """This login's saved corpora with their conversations (`app.sharing.saved.Record`), newest first."""
        library = self.library
        return library.records(owner) if library is not None else []

    def remove_saved(self, ids, owner: str = "") -> int:
        """Delete this login's saved corpora by id, with their KV caches unless another record uses them.

        Returns how many were removed."""
        library, store = self.library, self.backend.store
        if library is None:
            return 0
        removed = 0
        for record in [r for r in library.records(owner) if r.id in set(ids or [])]:
            library.remove(record)
            removed += 1
            if record.kv_id and not library.kv_in_use(record.kv_id, besides=record.path):
                try:
                    store.remove(record.kv_id)
                except OmnibusError:
                    pass  # already gone (removed with `cache rm`, or pruned)
        return removed

    def open_saved(self, session: Session, record_id: str, owner: str = "") -> Session:
        """Put a saved corpus and its conversation into this session (load it next; its cache is on disk)."""
        library = self.library
        if library is None:
            raise BadRecordError("there are no saved corpora here (--no-disk-cache or a remote server)")
        try:
            record = library.find(owner, record_id)
            corpus = library.read_corpus(record, self.backend.tokenizer)
            pairs = exchanges_from_record(record.meta)
        except BadRecord as err:
            raise BadRecordError(f"cannot open it: {err}") from err
        self._replace(session, corpus, pairs, record.meta.get("system_prompt"))
        session.record_id = record.id
        session.prefix_tokens = int(record.meta.get("prefix_tokens") or 0)  # this login's own load, saved with it
        session.own.opened(corpus, record.meta.get("system_prompt"), session.prefix_tokens)
        return session

    def import_conversation(self, session: Session, path) -> Session:
        """Put an exported JSON conversation (`export(..., "json")`), documents and all, into this session."""
        try:
            record = read_import(path)  # capped in size and exchanges before any work
            corpus = corpus_from_record(record["corpus"], self.backend.tokenizer)
            pairs = exchanges_from_record(record)
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise BadRecordError(f"cannot import {Path(path).name}: {err}") from err
        self._replace(session, corpus, pairs, record.get("system_prompt"))
        session.record_id = uuid.uuid4().hex
        return session

    def _replace(self, session: Session, corpus, pairs, system_prompt) -> None:
        self.new_corpus(session)
        session.corpus = corpus
        session.secrets = scan_corpus(corpus)
        session.exchanges = [Exchange(q, a) for q, a in pairs]
        session.system_prompt = None  # not loaded yet
        session.restored_prompt = system_prompt if isinstance(system_prompt, str) and system_prompt else None

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

    # -- export (app/ui/export.py) --
    def conversation(self, session: Session) -> dict:
        """The conversation as one JSON-ready record: model, documents, exchanges with their timings."""
        return export.record(self.backend.model_name, session)

    def export(self, session: Session, folder: Path, kind: str) -> Path:
        """Write the conversation as Markdown ("md") or JSON ("json") into `folder`, named after its documents
        and the day (`omnibus-harbour-report-and-2-more-2026-12-04.md`); return the file."""
        return export.write(self.conversation(session), session.sources, folder, kind)
