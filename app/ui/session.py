"""One browser's state: its corpus, its conversation (`Exchange`s) and its Stop button (`Session.cancel`).

`app.ui.handlers.Workbench` keeps the sessions and works on them; nothing here does any work itself.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
import uuid
from dataclasses import dataclass

from app.protocol import AnswerStats
from app.ui.reuse import OwnPrefix


@dataclass
class Exchange:
    """One question, its answer and how it was produced."""

    question: str
    answer: str
    stats: AnswerStats | None = None
    reload: object = None  # LoadStats of a load that read documents again just before this answer (else None)
    reload_why: str = ""  # why that load had to read them ("the instructions changed", ...)
    stop_late: bool = False  # Stop was pressed, but the answer had already finished


class Session:
    """One browser's corpus and conversation. `cancel` stops whatever this browser is running.

    A plain class, not a dataclass: Gradio would try to serialise a dataclass state into the page.
    """

    def __init__(self):
        self.id = uuid.uuid4().hex  # what the browser keeps (gr.BrowserState) to get this session back on reload
        self.owner = ""  # the login this session belongs to ("" without logins)
        self.record_id = uuid.uuid4().hex  # its saved conversation (app.sharing.saved); a new one after Start over
        self.kv_id = None  # the saved KV cache of its documents (app.store), kept with each saved conversation
        self.system_prompt = None  # the instructions it was last loaded with
        self.busy = ""  # "load" or "answer" while one runs
        self.partial = None  # (question, answer so far) while an answer streams
        self.last_load = None  # LoadStats of its last load
        self.load_why = ""  # why its last load had work to do (Workbench.load_reason)
        self.corpus = None  # ingest.Corpus, or None before the first file
        self.secrets: dict = {}  # source -> [ingest.secret_scan.Finding]: likely secrets in this corpus
        self.exchanges: list[Exchange] = []
        self.loaded_tokens = 0  # corpus tokens this session last loaded into the model (0: not loaded)
        self.prefix_tokens = 0  # prompt prefix tokens of this session's last load (saved with its record)
        self.own = OwnPrefix()  # what of the model's cache it may reuse: only what it loaded itself
        self.cancel = threading.Event()
        self.verifier = None  # app.citations.check.Verifier of this corpus, built when an answer is first checked
        self.restored_prompt = None  # the instructions of a reopened or imported conversation, for the page's box

    def __deepcopy__(self, memo):
        # Gradio deep-copies a state's starting value for each new browser; a fresh session is that copy.
        return Session()

    @property
    def sources(self) -> list[str]:
        return [doc.source for doc in self.corpus.documents] if self.corpus else []

    @property
    def is_loaded(self) -> bool:
        return self.corpus is not None and self.loaded_tokens == self.corpus.total_tokens > 0


KEPT_SESSIONS = 200  # browser sessions a page reload can get back (the least recently used beyond go)


class KeptSessions:
    """The sessions a page reload can get back, by id, for their owner; the least recently used idle ones go."""

    def __init__(self, most: int = KEPT_SESSIONS):
        self.most = most
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def keep(self, session: Session, owner: str = "") -> Session:
        """Remember `session` for `owner`."""
        session.owner = owner or ""
        with self._lock:
            self._sessions[session.id] = session
            self._sessions.move_to_end(session.id)
            while len(self._sessions) > self.most:
                idle = next((k for k, s in self._sessions.items() if not s.busy), None)
                if idle is None:
                    break
                del self._sessions[idle]
        return session

    def resume(self, session_id: str | None, owner: str = "") -> Session | None:
        """The kept session with this id, if it belongs to `owner`."""
        with self._lock:
            session = self._sessions.get(session_id or "")
            if session is None or session.owner != (owner or ""):
                return None
            self._sessions.move_to_end(session.id)
            return session

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._sessions
