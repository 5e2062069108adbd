"""The page's event handlers (`Events`): each turns the page's inputs into one `Workbench` call (`app.ui.handlers`,
the same methods the tests call) and its result into what the page shows. A long call runs in a worker thread
(`app.ui.worker.in_thread`) while the page streams its progress, and `OmnibusError`s meant for the user become
messages on the page (`app.ui.messages`). `app.ui.app` connects the page's components to these handlers.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import gradio as gr

from app.citations.form import CITATION_FORMAT
from app.errors import Cancelled, DoesNotFit, OmnibusError
from app.ui import views
from app.ui.inputs import settings_from
from app.ui.handlers import Workbench
from app.ui.session import Session
from app.ui.layout import Page
from app.ui.markup import inert
from app.ui.messages import say, user_errors, user_message  # noqa: F401  (say, user_errors: app.ui.app's)
from app.ui.worker import in_thread
from app.ui.uploads import Uploads
from ingest.secret_scan import warning as secrets_warning


def _owner(request: gr.Request | None) -> str:
    return (getattr(request, "username", None) or "") if request is not None else ""


class Events:
    """The page's event handlers: each turns the page's inputs into one `Workbench` call and its result into
    what the page shows."""

    def __init__(self, workbench: Workbench, page: Page, uploads: Uploads | None = None):
        self.workbench, self.p, self.uploads = workbench, page, uploads
        self.backend = workbench.backend
        self._export_folders: dict[str, Path] = {}  # session id -> its export buttons' folder

    # -- what the page shows for a session --
    def messages(self, session: Session, pending: tuple[str, str] | None = None, exchanges=None) -> list[dict]:
        """The chat: every exchange (or those of `exchanges`), and the one being written (`pending`)."""
        demo = self.backend.model_name == "demo"
        out = []
        shown = session.exchanges if exchanges is None else exchanges
        pairs = [(e.question, e.answer) for e in shown] + ([pending] if pending else [])
        for n, (question, answer) in enumerate(pairs):
            done = pending is None or n < len(pairs) - 1
            mark = f"\n\n<span class='demo-mark'>⚠ {views.DEMO_MARK}</span>" if demo and done else ""
            out += [{"role": "user", "content": views.as_typed(question)},  # shown as typed: escaped, so inert
                    {"role": "assistant", "content": inert(answer or "…") + mark}]  # untrusted: nothing may fetch
        return out

    def buttons(self, session: Session, busy: str = "") -> dict:
        """Each button enabled only when it can act."""
        p, docs, chat, idle = self.p, session.corpus is not None, bool(session.exchanges), not busy
        fits = docs and self.workbench.plan(session, session.system_prompt or session.restored_prompt or "").fits
        on = {p.load_btn: fits and idle, p.cancel_btn: busy == "load", p.send_btn: fits and idle,
              p.stop_btn: busy == "answer", p.regen_btn: chat and idle, p.clear_btn: chat and idle,
              p.remove_btn: docs and idle, p.new_btn: docs and idle}
        return {**{button: gr.update(interactive=bool(state)) for button, state in on.items()},
                **self.downloads(session, busy)}

    def downloads(self, session: Session, busy: str = "") -> dict:
        """The two export buttons: one click downloads the conversation. Their files are written whenever the
        page goes idle (while an answer runs, they keep the conversation as it was before it)."""
        p, chat = self.p, bool(session.exchanges)
        buttons = {"md": p.export_md_btn, "json": p.export_json_btn}
        if not chat:
            return {button: gr.update(value=None, interactive=False) for button in buttons.values()}
        if busy:
            return {button: gr.update(interactive=True) for button in buttons.values()}
        folder = self._export_folders.get(session.id)
        if folder is None:
            folder = self._export_folders[session.id] = Path(tempfile.mkdtemp(prefix="omnibus-export-"))
        for old in folder.iterdir():  # the names follow the documents and the day: one file of each kind
            old.unlink(missing_ok=True)
        return {button: gr.update(value=str(self.workbench.export(session, folder, kind)), interactive=True)
                for kind, button in buttons.items()}

    def meter(self, session: Session, system_prompt: str) -> str:
        corpus = session.corpus
        loaded = session.is_loaded and not self.workbench.instructions_changed(session, system_prompt)
        plan = self.workbench.plan(session, system_prompt)
        refusal = self.workbench.too_large(session, plan) if plan is not None and not plan.fits else ""
        return views.context_meter(self.backend, plan, corpus.total_tokens if corpus else None,
                                   cost=self.workbench.load_cost(session, system_prompt), loaded=loaded,
                                   refusal=refusal)

    def status(self, session: Session, system_prompt: str) -> str:
        if session.corpus is None:
            return ""
        if self.workbench.instructions_changed(session, system_prompt):
            return self.instructions_warning(session, system_prompt)
        if session.is_loaded:
            return "**Ready:** the documents are loaded. Ask away."
        if not self.workbench.plan(session, system_prompt).fits:
            return "Not loaded: the documents do not fit (see the context meter above)."
        return "Not loaded yet: press **Load into the model**."

    def instructions_warning(self, session: Session, system_prompt: str) -> str:
        cost = self.workbench.load_cost(session, system_prompt)
        plan = self.workbench.plan(session, system_prompt)
        return views.instructions_warning(cost, plan.tokens, views.estimate_words(plan, cost))

    def corpus_view(self, session: Session, system_prompt: str) -> tuple:
        """(session, summary, table, skipped, remove menu, meter, status): the API's corpus outputs."""
        corpus = session.corpus
        skipped = views.skipped_rows(corpus)
        return (session, views.corpus_summary(corpus),
                gr.update(value=views.document_rows(corpus), visible=corpus is not None),
                gr.update(value=skipped, visible=bool(skipped)),
                gr.update(choices=session.sources, value=[], visible=corpus is not None),
                self.meter(session, system_prompt), self.status(session, system_prompt))

    def everything(self, session: Session, system_prompt: str, request: gr.Request | None = None) -> dict:
        """The whole page for `session` (after a reload, an Open or an import)."""
        p = self.p
        views_ = dict(zip([p.session, p.summary, p.table, p.skipped, p.to_remove, p.meter, p.load_status],
                          self.corpus_view(session, system_prompt)))
        last = session.exchanges[-1] if session.exchanges else None
        pending = session.partial if session.busy == "answer" else None
        return {**views_, p.chat: self.messages(session, pending),
                p.answer_info: self.answer_line(last) if last and not pending else
                ("*Still answering (the page was reloaded)…*" if pending else ""),
                p.chips: self.chips(session) if not pending else "", p.cited: "",
                p.export_file: gr.update(value=None, visible=False),
                p.tick: gr.Timer(active=bool(session.busy)),
                **self.saved_view(request), **self.buttons(session, session.busy)}

    def answer_line(self, exchange) -> str:
        return views.answer_line(exchange.stats, exchange.reload, exchange.stop_late, exchange.reload_why) \
            if exchange else ""

    def chips(self, session: Session) -> str:
        prompt = session.system_prompt or ""
        return views.citation_chips(self.workbench.citations(session), asked=CITATION_FORMAT in prompt,
                                    demo=self.backend.model_name == "demo")

    def saved_view(self, request: gr.Request | None) -> dict:
        records = self.workbench.saved_corpora(_owner(request))
        return {self.p.saved: views.saved_rows(records),
                self.p.saved_pick: gr.update(choices=views.saved_choices(records), value=None),
                self.p.open_btn: gr.update(interactive=bool(records)),
                self.p.saved_remove: gr.update(interactive=bool(records))}

    # -- a page (re)load --
    def restore(self, browser_id: str, session: Session, system_prompt: str, request: gr.Request):
        """A reloaded page gets its session back (documents, loaded corpus, chat); a new page starts one."""
        owner = _owner(request)
        kept = self.workbench.resume(browser_id, owner)
        if kept is None:
            kept = self.workbench.keep(session, owner)
        prompt = kept.system_prompt or kept.restored_prompt or system_prompt
        return {**self.everything(kept, prompt, request), self.p.browser: kept.id,
                self.p.system_prompt: prompt, self.p.cite_box: CITATION_FORMAT in prompt}

    def refresh(self, session: Session, system_prompt: str, request: gr.Request):
        """While an answer runs in a reloaded page: show it as it grows; stop ticking when it is done."""
        return self.everything(session, system_prompt, request)

    # -- the corpus --
    def add_files(self, session, paths, system_prompt, request: gr.Request, progress=gr.Progress()):
        def report(done, total, current):
            progress((done, total), desc=f"Reading {current}" if current else "Counting tokens", unit="files")

        uploads = self.uploads
        with user_errors():
            if uploads is not None:  # a browser may add only the files it uploaded itself
                paths = uploads.claim(request.session_hash, paths)
            try:
                self.workbench.add_files(session, paths, report)
            finally:
                if uploads is not None:  # their text is in the corpus now: the files themselves go
                    uploads.release(request.session_hash, paths)
        return (*self.corpus_view(session, system_prompt), None)

    def remove_files(self, session, sources, system_prompt):
        self.workbench.remove_files(session, sources)
        return self.corpus_view(session, system_prompt)

    def new_corpus(self, session, system_prompt):
        self.workbench.new_corpus(session)
        return (*self.corpus_view(session, system_prompt), [], "")

    def exclude_secrets(self, session, system_prompt):
        self.workbench.exclude_secrets(session)
        return self.corpus_view(session, system_prompt)

    def show_secrets(self, session):
        """The likely-secrets warning and its button, shown while the corpus holds such files."""
        backend = self.backend
        text = secrets_warning(session.secrets, backend.base_url)
        return gr.update(value=text, visible=bool(text)), gr.update(visible=bool(text))

    def instructions(self, session, system_prompt):
        """The instructions changed: recount the meter and warn first when the documents will be read again."""
        return self.meter(session, system_prompt), self.status(session, system_prompt)

    def toggle_citations(self, on, instructions):
        instructions = (instructions or "").replace(CITATION_FORMAT, "").strip()
        return f"{instructions} {CITATION_FORMAT}".strip() if on else instructions

    # -- the model: load, ask, regenerate, stop --
    def starting(self, session: Session, system_prompt: str, plan=None) -> str:
        """The progress line at the moment a load starts ("" when nothing needs reading); `plan`: made just now."""
        if session.corpus is None:
            return ""
        cost = self.workbench.load_cost(session, system_prompt)
        plan = plan or self.workbench.plan(session, system_prompt)
        if cost is not None and not cost.to_read:
            return ""
        reused = cost.tokens - cost.to_read if cost is not None else 0
        return views.load_starting(cost.tokens if cost is not None else plan.tokens, reused,
                                   views.estimate_words(plan, cost))

    def load(self, session, system_prompt):
        """Stream the load's progress into the status line; end with what happened."""
        yield "Reading the documents into the model: starting…"  # at once; the engine's first report follows
        work = lambda report: [self.workbench.load(session, system_prompt, report)]  # noqa: E731
        for kind, value in in_thread(work):
            if kind == "progress":
                yield views.load_progress(value)
            elif kind == "item":
                yield views.load_finished_first(value) if getattr(value, "stop_requested", False) \
                    else views.load_done(value)
            elif kind == "error":
                yield self.failed(value, load=True)

    def failed(self, err: BaseException, load: bool = False) -> str:
        """What the page says when a load or an answer could not go on (a defect is raised as it is)."""
        if isinstance(err, Cancelled) and load:
            user_message(err)
            return views.load_stopped(err)
        if isinstance(err, DoesNotFit):  # said once, in the context meter and here; no pop-up as well
            return f"**{user_message(err)}**"
        if isinstance(err, OmnibusError):
            text = user_message(err)
            gr.Warning(text.replace("`", ""))  # a pop-up shows plain text: no Markdown marks
            return f"**{text}**"
        raise err

    def answering(self, session, question: str, answers, status, earlier=None):
        """Yield (chat, answer line, question box, load status) while `answers(report)` (a Workbench generator)
        loads and streams. The chat shows `earlier` exchanges (default: the session's) and the new answer."""
        def chat(text=None):
            return self.messages(session, (question, text or "") if text is not None else None, earlier)

        yield chat(""), "", "", status
        text = ""
        for kind, value in in_thread(answers):
            if kind == "progress":
                status = views.load_progress(value)
                yield chat(text), "", "", status
            elif kind == "item":
                text = value if isinstance(value, str) else text
                if isinstance(status, str) and status.startswith("`"):  # a progress line: the load is done
                    status = "**Ready:** the documents are loaded."
                yield chat(text), "", "", status
            elif kind == "error":
                if isinstance(value, Cancelled):
                    user_message(value)
                    line, status = "**Stopped** before the answer began.", views.load_stopped(value)
                else:
                    line = self.failed(value)
                yield self.messages(session), line, question, status
                return
        line = self.answer_line(session.exchanges[-1]) if text.strip() and session.exchanges else \
            "**Stopped** before the first word; nothing was kept."
        yield self.messages(session), line, "", status

    def ask(self, session, question, max_new_tokens, temperature, system_prompt):
        question = (question or "").strip()
        if not question:
            gr.Warning("Type a question first.")
            yield self.messages(session), "Type a question first.", "", gr.update()
            return
        if session.corpus is None:
            line = "**There are no documents yet:** add some files first."
            yield self.messages(session), line, question, gr.update()
            return
        try:  # settings and the question are checked before any model work
            settings = settings_from(max_new_tokens, temperature, most_tokens=self.backend.window or None)
            checked = self.workbench.checked(session, question, system_prompt)  # checked and planned once
        except OmnibusError as err:
            yield self.messages(session), user_message(err), question, gr.update()
            return
        status = self.starting(session, system_prompt, checked.plan)
        yield from self.answering(session, checked.text, lambda report: self.workbench.ask(
            session, checked, settings, system_prompt, report), status or gr.update())

    def regenerate(self, session, max_new_tokens, temperature, system_prompt):
        if not session.exchanges:
            yield self.messages(session), "There is no answer to regenerate yet.", gr.update(), gr.update()
            return
        try:
            settings = settings_from(max_new_tokens, temperature, most_tokens=self.backend.window or None)
        except OmnibusError as err:
            yield self.messages(session), user_message(err), gr.update(), gr.update()
            return
        status = self.starting(session, system_prompt)
        question = session.exchanges[-1].question
        # The chat shows the earlier exchanges and the new answer as it comes; the old one stays in the session
        # (and in an export made meanwhile) until the new one is done.
        yield from self.answering(session, question, lambda report: self.workbench.regenerate(
            session, settings, system_prompt, report), status or gr.update(), earlier=session.exchanges[:-1])

    def attention(self, value: str) -> str:
        """Settings' attention precision: "bf16", or "fp8" (FlashAttention-3's fp8 kernels) for documents loaded
        from now on. Returns the setting now in force."""
        try:
            self.backend.set_attention(value)
        except OmnibusError:  # a server's model, or this machine's still loading: it keeps its own setting
            gr.Warning("Attention precision applies to a model on this computer once it has loaded.")
            return self.backend.attention
        return value

    def stop(self, session):
        self.workbench.stop(session)

    def busy(self, kind: str):
        def mark(session):
            return self.buttons(session, kind)

        return mark

    def idle(self, session, system_prompt, request: gr.Request):
        return {**self.buttons(session), **self.saved_view(request), self.p.meter: self.meter(session, system_prompt)}

    # -- the answer's citations --
    def show_citations(self, session):
        return self.chips(session), ""

    def show_passage(self, session, evt: gr.EventData):
        return views.cited_passage(*self.workbench.cited_passage(session, int(getattr(evt, "cite", -1))))

    # -- the conversation --
    def clear_chat(self, session):
        self.workbench.clear_chat(session)
        return [], ""

    def export(self, kind: str):
        def run(session):
            if not session.exchanges:
                gr.Warning("There is no conversation to export yet.")
                return gr.update(visible=False)
            folder = Path(tempfile.mkdtemp(prefix="omnibus-export-"))  # for the API: the page's buttons download
            return gr.update(value=str(self.workbench.export(session, folder, kind)), visible=False)

        return run

    # -- saved corpora --
    def remove_saved(self, record_id, request: gr.Request):
        if record_id:
            self.workbench.remove_saved([record_id], _owner(request))
        return self.saved_view(request)

    def reopen(self, session, system_prompt, request: gr.Request, opened: str):
        """After an Open or an import: the whole page, with the conversation's own instructions."""
        prompt = session.restored_prompt or system_prompt
        return {**self.everything(session, prompt, request), self.p.system_prompt: prompt,
                self.p.cite_box: CITATION_FORMAT in prompt, self.p.load_status: opened}

    def open_saved(self, session, record_id, system_prompt, request: gr.Request):
        """Open a saved corpus with its conversation, and load it (from disk: seconds)."""
        if not record_id:
            yield {self.p.load_status: "Choose a saved corpus first."}
            return
        try:
            self.workbench.open_saved(session, record_id, _owner(request))
        except OmnibusError as err:
            yield {self.p.load_status: self.failed(err)}
            return
        prompt = session.restored_prompt or system_prompt
        yield {**self.reopen(session, system_prompt, request, self.starting(session, prompt)),
               **self.buttons(session, "load")}
        for line in self.load(session, prompt):
            yield {self.p.load_status: line}
        yield {**self.buttons(session), **self.saved_view(request), self.p.meter: self.meter(session, prompt)}

    def import_conversation(self, session, path, system_prompt, request: gr.Request):
        try:
            self.workbench.import_conversation(session, path)
        except OmnibusError as err:
            return {self.p.load_status: self.failed(err)}
        return self.reopen(session, system_prompt, request,
                           "**Imported:** the documents and the conversation are back. Press *Load into the "
                           "model* (or ask) to continue it.")
