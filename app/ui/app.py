"""The Gradio app: the page's layout (`layout`), its events (`wire`), and `main` for `python3 launch.py [options]`.

What each button does lives in `app.ui.handlers` (plain Python, the same `Workbench` methods the tests call);
the words it shows in `app.ui.views`; who may log in in `app.ui.auth`. This file only lays out the page, wires
events to those methods, streams their progress and turns `OmnibusError`s into messages on the page.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import socket
import sys
import tempfile
import threading
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: nothing sent to its servers
import gradio as gr  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402

from app.ui import views
from app.citations.form import CITATION_FORMAT
from app.errors import Cancelled, OmnibusError
from app.backend import ModelSlot, add_backend_arguments
from app.ui import model_picker
from app.prompt import DEFAULT_SYSTEM_PROMPT
from ingest.secret_scan import warning as secrets_warning
from app.ui.auth import Access, AuthError, ClientAddress, LocalHostOnly, LoginGuard, LoginNotice, decide
from app.ui.handlers import Session, Workbench, settings_from
from app.ui.uploads import UploadGate, Uploads

CSS = """
.meter { font-size: 0.95em; }
.meter ul { margin: 0.4em 0 0 1.1em; padding: 0; }
.meter-bar { height: 12px; border-radius: 6px; background: #e0e0e0; overflow: hidden; margin-top: 0.4em; }
.meter-bar > div { height: 100%; }
.refusal { margin-top: 0.5em; padding: 0.6em; border-left: 4px solid #c62828; background: #ffebee; color: #000; }
.refusal * { color: #000 !important; }
.banner { padding: 0.6em 0.9em; border-radius: 6px; background: #fff8e1; border: 1px solid #ffcc80; }
.banner, .banner * { color: #3e2723 !important; }
.banner code { background: #ffe0b2 !important; border: 1px solid #ffcc80 !important; }
#load-status code, #answer-info code { background: none !important; border: none !important; padding: 0 !important; }
.citations { margin-top: 0.3em; }
.cite-label, .cite-none { font-size: 0.9em; margin-right: 0.3em; }
button.cite, span.cite { display: inline-block; margin: 0.15em 0.25em 0.15em 0; padding: 0.1em 0.6em;
  border-radius: 999px; font-size: 0.85em; border: 1px solid; cursor: pointer; }
.cite-verified { background: #e8f5e9; border-color: #2e7d32 !important; color: #1b5e20 !important; }
.cite-near { background: #fff8e1; border-color: #ef6c00 !important; color: #e65100 !important; }
.cite-not-found { background: #ffebee; border-color: #c62828 !important; color: #b71c1c !important;
  text-decoration: line-through; }
.cite-no-quote { background: #f5f5f5; border-color: #9e9e9e !important; color: #424242 !important; }
.passage { margin-top: 0.5em; border: 1px solid #ddd; border-radius: 6px; padding: 0.5em 0.7em; }
.passage-text { max-height: 320px; overflow: auto; white-space: pre-wrap; font-size: 0.85em; margin: 0.4em 0 0; }
.passage-text mark { background: #ffeb3b; color: #000; }
.passage-text .ln { color: #9e9e9e; user-select: none; }
.passage-quote { font-size: 0.85em; font-style: italic; }
.demo-mark { font-size: 0.8em; opacity: 0.75; }
"""

# Chips are buttons inside one HTML block; a click sends the chip's number to `show_passage`.
CHIPS_JS = ("element.addEventListener('click', (e) => { const chip = e.target.closest('[data-cite]'); "
            "if (chip) trigger('click', {cite: Number(chip.dataset.cite)}); });")
PASSAGE_JS = ("watch('value', () => { const m = element.querySelector('mark'); "
              "if (m) m.scrollIntoView({block: 'nearest'}); });")

# The Soft theme with the system's own fonts: its default fonts come from Google Fonts, a request off the machine.
THEME = gr.themes.Soft(font=["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"],
                       font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"])
UPLOADS_KEPT_S = 3600  # uploads that no session used, and exports, are deleted after an hour (Gradio's delete_cache)

INTRO = ("Ask questions about whole books, document collections and codebases. **1.** Add your files. "
         "**2.** Press *Load into the model* (it reads everything once). **3.** Ask; follow-up questions are "
         "fast because the documents stay loaded.")
SESSION_KEY = "omnibus-session"  # the browser's localStorage key for its session id (gr.BrowserState)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def user_message(err: OmnibusError) -> str:
    """An error meant for the user, as a sentence; logged as one line where the app was started."""
    if isinstance(err, Cancelled):
        text = f"Stopped: {err}."
    else:
        text = str(err)[:1].upper() + str(err)[1:]
    _say(f"omnibus: {type(err).__name__}: {text}")
    return text


@contextlib.contextmanager
def user_errors():
    """Show errors meant for the user on the page, as they are (one line in the terminal, no traceback)."""
    try:
        yield
    except OmnibusError as err:
        raise gr.Error(user_message(err), print_exception=False) from err


def _owner(request: gr.Request | None) -> str:
    return (getattr(request, "username", None) or "") if request is not None else ""


def _in_thread(work):
    """Run `work(report)` (it returns an iterable) in a worker thread; yield ("progress", report) as the work
    reports, ("item", x) for each item, then ("end", None) or ("error", exception).

    The page gets progress while the engine is busy; if the page goes away, the work still finishes (and the
    conversation keeps what it did)."""
    box: queue.Queue = queue.Queue()

    def run():
        try:
            for item in work(lambda report: box.put(("progress", report))):
                box.put(("item", item))
            box.put(("end", None))
        except BaseException as err:  # handed to the page's thread, which re-raises what is not the user's
            box.put(("error", err))

    threading.Thread(target=run, daemon=True, name="omnibus-work").start()
    while True:
        kind, value = box.get()
        yield kind, value
        if kind in ("end", "error"):
            return


class Page(SimpleNamespace):
    """The page's components, by name (`layout` makes them, `wire` connects them)."""


def layout(workbench: Workbench, max_upload_mb: int = 500) -> tuple[gr.Blocks, Page]:
    """The page: its components, laid out; no events."""
    backend = workbench.backend
    defaults = workbench.default_settings()
    p = Page()
    with gr.Blocks(title="Omnibus", analytics_enabled=False, delete_cache=(UPLOADS_KEPT_S, UPLOADS_KEPT_S)) as demo:
        p.session = gr.State(Session())
        p.browser = gr.BrowserState("", storage_key=SESSION_KEY)
        p.tick = gr.Timer(1.0, active=False)  # refreshes a page reloaded while an answer is being written
        gr.Markdown("# Omnibus\n" + INTRO)
        gr.Markdown(views.banner(backend), elem_classes=["banner"] if backend.model_name == "demo" else None)
        slot = getattr(backend, "engine", backend)  # beside the API, the page's backend wraps the model slot
        if isinstance(slot, ModelSlot):
            model_picker.build(slot)
        with gr.Row(equal_height=False):
            with gr.Column(scale=5):
                gr.Markdown("### 1 · Your documents")
                p.files = gr.File(label=f"Drop files here: PDF, Word, text, code, or a .zip of a folder "
                                        f"(up to {max_upload_mb:,} MB each)", file_count="multiple",
                                  type="filepath", height=140, elem_id="files")
                with gr.Accordion("…or upload a whole folder", open=False):
                    p.folder = gr.File(label="Choose a folder", file_count="directory", type="filepath", height=100)
                p.summary = gr.Markdown(views.corpus_summary(None), elem_id="summary")
                p.table = gr.Dataframe(headers=views.DOCUMENT_HEADERS, value=[], interactive=False, wrap=True,
                                       column_widths=["8%", "50%", "12%", "12%", "18%"],
                                       label="Documents, in the order the model reads them", visible=False,
                                       elem_id="documents")
                p.skipped = gr.Dataframe(headers=views.SKIPPED_HEADERS, value=[], interactive=False, wrap=True,
                                         column_widths=["40%", "60%"], label="Files left out", visible=False,
                                         elem_id="skipped")
                p.secrets_note = gr.Markdown(visible=False, elem_classes=["refusal"], elem_id="secrets")
                p.exclude_btn = gr.Button("Leave these files out", size="sm", visible=False, elem_id="exclude-secrets")
                with gr.Row():
                    p.to_remove = gr.Dropdown([], value=[], multiselect=True, label="Remove files", scale=3,
                                              visible=False)
                    p.remove_btn = gr.Button("Remove selected", size="sm", scale=1, interactive=False)
                    p.new_btn = gr.Button("Start over with new documents", size="sm", scale=1, interactive=False)
                p.meter = gr.HTML(views.context_meter(backend, None), elem_id="meter")
                with gr.Row():
                    p.load_btn = gr.Button("Load into the model", variant="primary", elem_id="load",
                                           interactive=False)
                    p.cancel_btn = gr.Button("Cancel loading", variant="stop", elem_id="cancel", interactive=False)
                p.load_status = gr.Markdown(elem_id="load-status")
            with gr.Column(scale=7):
                gr.Markdown("### 2 · Ask")
                p.chat = gr.Chatbot(height=460, buttons=["copy"], feedback_options=None, elem_id="chat",
                                    label="Conversation",
                                    placeholder="Load your documents, then ask a question about them.")
                with gr.Row():
                    p.question = gr.Textbox(placeholder="Ask a question about your documents",
                                            show_label=False, scale=6, elem_id="question", lines=1)
                    p.send_btn = gr.Button("Ask", variant="primary", scale=1, elem_id="ask", interactive=False)
                    p.stop_btn = gr.Button("Stop", variant="stop", scale=1, elem_id="stop", interactive=False)
                p.answer_info = gr.Markdown(elem_id="answer-info")
                p.chips = gr.HTML("", elem_id="citations", js_on_load=CHIPS_JS)
                p.cited = gr.HTML("", elem_id="cited-passage", js_on_load=PASSAGE_JS)
                with gr.Row():
                    p.regen_btn = gr.Button("Regenerate last answer", size="sm", interactive=False)
                    p.clear_btn = gr.Button("Clear chat (keep documents)", size="sm", interactive=False)
                    p.export_md_btn = gr.Button("Export as Markdown", size="sm", interactive=False)
                    p.export_json_btn = gr.Button("Export as JSON", size="sm", interactive=False)
                p.export_file = gr.File(label="Your export", visible=False, interactive=False, elem_id="export")
                with gr.Accordion("Settings", open=False):
                    p.max_new = gr.Slider(16, 4096, value=defaults.max_new_tokens, step=16,
                                          label="Longest answer (tokens)")
                    p.temperature = gr.Slider(0.0, 1.5, value=defaults.temperature, step=0.05,
                                              label="Temperature (0 = always the same answer; higher = more varied)")
                    start_prompt = backend.system_prompt
                    p.system_prompt = gr.Textbox(start_prompt, lines=4, elem_id="instructions",
                                                 label="Instructions to the model (changing them means the "
                                                       "documents are read again)")
                    p.cite_box = gr.Checkbox(CITATION_FORMAT in start_prompt, elem_id="cite-box",
                                             label="Ask for a quote and its source with each claim "
                                                   "(each is checked against the documents)")
        with gr.Accordion("Saved corpora and conversations", open=False, elem_id="saved-panel",
                          visible=workbench.library is not None):
            gr.Markdown(views.SAVED_NOTE)
            p.saved = gr.Dataframe(headers=views.SAVED_HEADERS, value=[], interactive=False, wrap=True,
                                   column_widths=["38%", "10%", "10%", "24%", "18%"], elem_id="saved")
            with gr.Row():
                p.saved_pick = gr.Dropdown([], value=None, label="Saved corpus", scale=4, elem_id="saved-pick")
                p.open_btn = gr.Button("Open", size="sm", scale=1, elem_id="open-saved", interactive=False)
                p.saved_remove = gr.Button("Remove from disk", size="sm", scale=1, interactive=False)
                p.import_btn = gr.UploadButton("Import a conversation (.json)", file_types=[".json"], size="sm",
                                               scale=1, elem_id="import")
    p.buttons = [p.load_btn, p.cancel_btn, p.send_btn, p.stop_btn, p.regen_btn, p.clear_btn, p.export_md_btn,
                 p.export_json_btn, p.remove_btn, p.new_btn]
    return demo, p


class Events:
    """The page's event handlers: each turns the page's inputs into one `Workbench` call and its result into
    what the page shows."""

    def __init__(self, workbench: Workbench, page: Page, uploads: Uploads | None = None):
        self.workbench, self.p, self.uploads = workbench, page, uploads
        self.backend = workbench.backend

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
            out += [{"role": "user", "content": question}, {"role": "assistant", "content": (answer or "…") + mark}]
        return out

    def buttons(self, session: Session, busy: str = "") -> dict:
        """Each button enabled only when it can act."""
        p, docs, chat, idle = self.p, session.corpus is not None, bool(session.exchanges), not busy
        on = {p.load_btn: docs and idle, p.cancel_btn: busy == "load", p.send_btn: docs and idle,
              p.stop_btn: busy == "answer", p.regen_btn: chat and idle, p.clear_btn: chat and idle,
              p.export_md_btn: chat, p.export_json_btn: chat, p.remove_btn: docs and idle, p.new_btn: docs and idle}
        return {button: gr.update(interactive=bool(state)) for button, state in on.items()}

    def meter(self, session: Session, system_prompt: str) -> str:
        corpus = session.corpus
        loaded = session.is_loaded and not self.workbench.instructions_changed(session, system_prompt)
        return views.context_meter(self.backend, self.workbench.plan(session, system_prompt),
                                   corpus.total_tokens if corpus else None,
                                   cost=self.workbench.load_cost(session, system_prompt), loaded=loaded)

    def status(self, session: Session, system_prompt: str) -> str:
        if session.corpus is None:
            return ""
        if self.workbench.instructions_changed(session, system_prompt):
            return self.instructions_warning(session, system_prompt)
        if session.is_loaded:
            return "**Ready:** the documents are loaded. Ask away."
        return "Not loaded yet: press **Load into the model**."

    def instructions_warning(self, session: Session, system_prompt: str) -> str:
        cost = self.workbench.load_cost(session, system_prompt)
        plan = self.workbench.plan(session, system_prompt)
        return views.instructions_warning(cost, plan.tokens, views.load_estimate(plan, cost))

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
        return views.answer_line(exchange.stats, exchange.reload, exchange.stop_late) if exchange else ""

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
    def starting(self, session: Session, system_prompt: str) -> str:
        """The progress line at the moment a load starts ("" when nothing needs reading)."""
        if session.corpus is None:
            return ""
        cost = self.workbench.load_cost(session, system_prompt)
        plan = self.workbench.plan(session, system_prompt)
        if cost is not None and not cost.to_read:
            return ""
        reused = cost.tokens - cost.to_read if cost is not None else 0
        return views.load_starting(cost.tokens if cost is not None else plan.tokens, reused,
                                   views.load_estimate(plan, cost))

    def load(self, session, system_prompt):
        """Stream the load's progress into the status line; end with what happened."""
        yield "Reading the documents into the model: starting…"  # at once; the engine's first report follows
        work = lambda report: [self.workbench.load(session, system_prompt, report)]  # noqa: E731
        for kind, value in _in_thread(work):
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
        if isinstance(err, OmnibusError):
            text = user_message(err)
            gr.Warning(text)
            return f"**{text}**"
        raise err

    def answering(self, session, question: str, answers, status, earlier=None):
        """Yield (chat, answer line, question box, load status) while `answers(report)` (a Workbench generator)
        loads and streams. The chat shows `earlier` exchanges (default: the session's) and the new answer."""
        def chat(text=None):
            return self.messages(session, (question, text or "") if text is not None else None, earlier)

        yield chat(""), "", "", status
        text = ""
        for kind, value in _in_thread(answers):
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
            question = self.workbench.check_question(session, question, system_prompt)
        except OmnibusError as err:
            yield self.messages(session), user_message(err), question, gr.update()
            return
        status = self.starting(session, system_prompt)
        yield from self.answering(session, question, lambda report: self.workbench.ask(
            session, question, settings, system_prompt, report), status or gr.update())

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
            folder = Path(tempfile.mkdtemp(prefix="omnibus-export-"))
            return gr.update(value=str(self.workbench.export(session, folder, kind)), visible=True)

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


def wire(workbench: Workbench, p: Page, uploads: Uploads | None = None) -> None:
    """Connect the page's components to the `Events` handlers (call inside the page's `gr.Blocks`)."""
    on = Events(workbench, p, uploads)
    everything = [p.session, p.browser, p.tick, p.summary, p.table, p.skipped, p.to_remove, p.meter, p.load_status,
                  p.chat, p.answer_info, p.chips, p.cited, p.export_file, p.system_prompt, p.cite_box, p.saved,
                  p.saved_pick, p.open_btn, p.saved_remove, *p.buttons]
    model = dict(concurrency_limit=1, concurrency_id="model")  # one GPU: one prefill or answer at a time
    quick = dict(api_name=False, concurrency_limit=None, queue=False)
    after = dict(fn=on.idle, inputs=[p.session, p.system_prompt], outputs=[*p.buttons, p.meter, p.saved, p.saved_pick, p.open_btn,
                                                          p.saved_remove], api_name=False)
    citations = dict(fn=on.show_citations, inputs=p.session, outputs=[p.chips, p.cited], api_name=False)
    hide_export = dict(fn=lambda: gr.update(value=None, visible=False), inputs=None, outputs=p.export_file, **quick)

    p.demo.load(on.restore, [p.browser, p.session, p.system_prompt], everything, api_name=False)
    p.tick.tick(on.refresh, [p.session, p.system_prompt], everything, api_name=False, show_progress="hidden")

    corpus_outputs = [p.session, p.summary, p.table, p.skipped, p.to_remove, p.meter, p.load_status]
    p.files.upload(on.add_files, [p.session, p.files, p.system_prompt], corpus_outputs + [p.files],
                   api_name="add_files", concurrency_id="ingest").then(**after)
    p.folder.upload(on.add_files, [p.session, p.folder, p.system_prompt], corpus_outputs + [p.folder],
                    api_name=False, concurrency_id="ingest").then(**after)
    p.remove_btn.click(on.remove_files, [p.session, p.to_remove, p.system_prompt], corpus_outputs,
                       api_name="remove_files").then(**after)
    p.new_btn.click(on.new_corpus, [p.session, p.system_prompt], corpus_outputs + [p.chat, p.answer_info],
                    api_name="new_corpus").then(**hide_export).then(**citations).then(**after)
    p.summary.change(on.show_secrets, p.session, [p.secrets_note, p.exclude_btn], api_name=False)
    p.exclude_btn.click(on.exclude_secrets, [p.session, p.system_prompt], corpus_outputs,
                        api_name="exclude_secrets").then(**after)
    p.system_prompt.change(on.instructions, [p.session, p.system_prompt], [p.meter, p.load_status], api_name=False)
    p.cite_box.input(on.toggle_citations, [p.cite_box, p.system_prompt], p.system_prompt, api_name=False)

    p.load_btn.click(on.busy("load"), p.session, p.buttons, **quick).then(
        on.load, [p.session, p.system_prompt], p.load_status, api_name="load", show_progress="hidden",
        **model).then(**after)
    asked = [p.session, p.question, p.max_new, p.temperature, p.system_prompt]
    answer_outputs = [p.chat, p.answer_info, p.question, p.load_status]
    for trigger, api_name in ((p.question.submit, False), (p.send_btn.click, "ask")):
        trigger(on.busy("answer"), p.session, p.buttons, **quick).then(
            on.ask, asked, answer_outputs, api_name=api_name, show_progress="hidden", **model).then(
            **citations).then(**after)
    p.regen_btn.click(on.busy("answer"), p.session, p.buttons, **quick).then(
        on.regenerate, [p.session, p.max_new, p.temperature, p.system_prompt], answer_outputs,
        api_name="regenerate", show_progress="hidden", **model).then(**citations).then(**after)
    p.stop_btn.click(on.stop, p.session, None, api_name="stop", concurrency_limit=None)
    p.cancel_btn.click(on.stop, p.session, None, api_name=False, concurrency_limit=None)

    p.chips.click(on.show_passage, p.session, p.cited, api_name=False)
    p.clear_btn.click(on.clear_chat, p.session, [p.chat, p.answer_info], api_name="clear_chat").then(
        **hide_export).then(**citations).then(**after)
    p.chat.clear(on.clear_chat, p.session, [p.chat, p.answer_info], api_name=False).then(  # the bin icon
        **hide_export).then(**citations).then(**after)
    p.export_md_btn.click(on.export("md"), p.session, p.export_file, api_name="export_markdown")
    p.export_json_btn.click(on.export("json"), p.session, p.export_file, api_name="export_json")

    p.open_btn.click(on.open_saved, [p.session, p.saved_pick, p.system_prompt], everything, api_name="open_saved",
                     show_progress="hidden", **model).then(**citations)
    p.saved_remove.click(on.remove_saved, p.saved_pick, [p.saved, p.saved_pick, p.open_btn, p.saved_remove],
                         api_name="remove_saved")
    p.import_btn.upload(on.import_conversation, [p.session, p.import_btn, p.system_prompt], everything,
                        api_name="import_conversation").then(**citations)


def build(workbench: Workbench, max_upload_mb: int = 500, uploads: Uploads | None = None) -> gr.Blocks:
    """The page, wired to `workbench`. With `uploads`, a browser may add only files it uploaded itself."""
    demo, page = layout(workbench, max_upload_mb)
    page.demo = demo
    with demo:
        wire(workbench, page, uploads)
    if uploads is not None:
        uploads.served = demo.upload_file_set  # what Gradio's file route may serve
    return demo


def _lan_address() -> str:
    """This computer's address on its network (no packet is sent), or its host name."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("10.255.255.255", 1))
        return s.getsockname()[0]
    return socket.gethostname()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="launch.py", description="Start the Omnibus app in your browser.")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
                        help="port to serve on (default: $GRADIO_SERVER_PORT, then 7860)")
    parser.add_argument("--inbrowser", action="store_true", help="open the app in the default browser")
    parser.add_argument("--share", action="store_true", help="make a public gradio.live link (login required)")
    parser.add_argument("--listen", action="store_true", help="serve on the local network (login required)")
    parser.add_argument("--auth", metavar="USER:PASSWORD", help="the login to require")
    parser.add_argument("--auth-file", metavar="FILE", help="logins to accept, one user:password a line")
    parser.add_argument("--no-auth", action="store_true", help="no login even with --share or --listen (unsafe)")
    parser.add_argument("--max-upload-mb", type=int, default=500, help="largest file one may upload (default 500)")
    parser.add_argument("--max-upload-files", type=int, default=2000,
                        help="most files one upload may hold; a folder counts each file (default 2000)")
    add_backend_arguments(parser)
    return parser.parse_args(argv)


def login_message(access: Access) -> str:
    """The login page's words: the app's name, and the user name when the login was made at start."""
    if access.generated:
        user = access.credentials[0][0]
        return (f"<b>Omnibus</b>: log in as <b>{user}</b> with the password printed in the terminal where "
                "Omnibus was started (a new one at each start).")
    return "<b>Omnibus</b>: log in with the user and password you were given."


def start(args: argparse.Namespace, backend, access: Access) -> gr.Blocks:
    """Build the app for `backend` and serve it in the background as `args` ask; return it running."""
    from gradio.utils import get_upload_folder

    from app.server import serve  # the OpenAI-compatible API and MCP, beside the page

    backend = serve.shared(backend)  # the page takes its turns on the model with the API's requests
    uploads = Uploads(get_upload_folder())
    demo = build(Workbench(backend, args.max_upload_files), args.max_upload_mb, uploads)
    demo.queue(default_concurrency_limit=1)
    middleware = [Middleware(ClientAddress),  # the caller's address, for LoginGuard
                  Middleware(LoginNotice),  # the login page shows a lock-out's message
                  Middleware(UploadGate, uploads=uploads)]  # each upload to a private folder of its own
    if not (args.listen or args.share or access.credentials):
        middleware.append(Middleware(LocalHostOnly))  # no login: no page elsewhere may reach it (DNS rebinding)
    demo.launch(server_name="0.0.0.0" if args.listen else "127.0.0.1", server_port=args.port, share=args.share,
                auth=LoginGuard(access.credentials, tunnel=args.share, say=_say) if access.credentials else None,
                app_kwargs={"middleware": middleware},
                max_file_size=f"{args.max_upload_mb}mb", inbrowser=args.inbrowser,
                auth_message=login_message(access),
                prevent_thread_lock=True, quiet=True, ssr_mode=False, footer_links=["api"], css=CSS,
                theme=THEME)
    serve.mount(demo, backend, args)
    return demo


def _model_reporter(show_download):
    """The terminal's view of the model slot: download progress lines (the page shows the same)."""
    def report(state) -> None:
        if state.download is not None:  # downloading, and the line that says it is done
            show_download(state.download)
        elif state.phase == "failed":
            _say(f"omnibus: could not open the model {state.model}: {state.message}")
    return report


def main(argv: list[str]) -> int:
    """Start the app: load the model, serve on 127.0.0.1 (or the network), print the address, block."""
    args = parse_args(argv)
    try:
        access = decide(auth=args.auth, auth_file=args.auth_file, no_auth=args.no_auth,
                        exposed=args.share or args.listen)
    except AuthError as err:
        _say(f"error: {err}")
        return 2
    from app.backend import open_from_arguments, open_in_background
    from app.cli import download_printer

    try:  # the local model opens in the background (downloading first if needed): the page serves at once
        backend = (open_in_background(args, on_change=_model_reporter(download_printer()))
                   if args.backend == "local" else open_from_arguments(args))
    except OmnibusError as err:
        _say(f"error: {err}")
        return 1
    try:
        demo = start(args, backend, access)
    except OSError as err:
        _say(f"error: cannot serve on port {args.port}: {err}. Try another with --port.")
        return 1
    _say(f"omnibus: model {backend.model_name}" + (" (CPU demo model)" if backend.model_name == "demo" else "")
         + (" (opening in the background; the page shows its progress)" if isinstance(backend, ModelSlot) else ""))
    _say(f"omnibus: running at http://127.0.0.1:{args.port}/")
    if args.listen:
        _say(f"omnibus: on your network at http://{_lan_address()}:{args.port}/")
    if args.share:
        if demo.share_url:
            _say(f"omnibus: public link {demo.share_url}")
        else:
            _say("omnibus: the public share link could not be made (no internet connection, or a firewall "
                 "blocks it). The app is still running locally at the address above.")
    if access.notice:
        _say("omnibus: " + access.notice)
    _say("omnibus: press Ctrl+C to stop")
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
