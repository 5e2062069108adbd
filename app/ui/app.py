"""The Gradio app: the page's layout and its events, and `main` for `python3 launch.py [options]`.

What each button does lives in `app.ui.handlers` (plain Python); the words it shows in `app.ui.views`;
who may log in in `app.ui.auth`. This file only lays out the page, wires events and turns
`OmnibusError`s into messages on the page.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import tempfile
from pathlib import Path

import gradio as gr
from starlette.middleware import Middleware

from app.ui import views
from app.citations.form import CITATION_FORMAT
from app.protocol import Settings
from app.errors import Cancelled, OmnibusError
from app.backend import add_backend_arguments
from app.prompt import DEFAULT_SYSTEM_PROMPT
from ingest.secret_scan import warning as secrets_warning
from app.ui.auth import Access, AuthError, ClientAddress, LoginGuard, decide
from app.ui.handlers import Session, Workbench

CSS = """
.meter { font-size: 0.95em; }
.meter ul { margin: 0.4em 0 0 1.1em; padding: 0; }
.meter-bar { height: 12px; border-radius: 6px; background: #e0e0e0; overflow: hidden; margin-top: 0.4em; }
.meter-bar > div { height: 100%; }
.refusal { margin-top: 0.5em; padding: 0.6em; border-left: 4px solid #c62828; background: #ffebee; color: #000; }
.banner { padding: 0.6em 0.9em; border-radius: 6px; background: #fff8e1; border: 1px solid #ffcc80; }
.banner, .banner * { color: #3e2723 !important; }
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
"""

# Chips are buttons inside one HTML block; a click sends the chip's number to `show_passage`.
CHIPS_JS = ("element.addEventListener('click', (e) => { const chip = e.target.closest('[data-cite]'); "
            "if (chip) trigger('click', {cite: Number(chip.dataset.cite)}); });")
PASSAGE_JS = ("watch('value', () => { const m = element.querySelector('mark'); "
              "if (m) m.scrollIntoView({block: 'nearest'}); });")

INTRO = ("Ask questions about whole books, document collections and codebases. **1.** Add your files. "
         "**2.** Press *Load into the model* (it reads everything once). **3.** Ask; follow-up questions are "
         "fast because the documents stay loaded.")


@contextlib.contextmanager
def user_errors():
    """Show errors meant for the user on the page, as they are."""
    try:
        yield
    except Cancelled as err:
        raise gr.Error(f"Stopped: {err}.", title="Stopped") from err
    except OmnibusError as err:
        raise gr.Error(str(err)[:1].upper() + str(err)[1:]) from err


def _messages(session: Session) -> list[dict]:
    out = []
    for e in session.exchanges:
        out += [{"role": "user", "content": e.question}, {"role": "assistant", "content": e.answer}]
    return out


def build(workbench: Workbench, max_upload_mb: int = 500) -> gr.Blocks:
    """The page, wired to `workbench`."""
    backend = workbench.backend

    def show_saved():
        entries = workbench.saved_corpora()
        return views.saved_rows(entries), gr.update(choices=views.saved_choices(entries), value=[])

    def remove_saved(ids):
        with user_errors():
            workbench.remove_saved(ids)
        return show_saved()

    def corpus_view(session: Session, system_prompt: str, status: str | None = None):
        corpus = session.corpus
        skipped = views.skipped_rows(corpus)
        if status is None:
            status = ("" if corpus is None else
                      "Not loaded yet: press **Load into the model**." if not session.is_loaded else
                      "**Ready:** the documents are loaded. Ask away.")
        return (session, views.corpus_summary(corpus),
                gr.update(value=views.document_rows(corpus), visible=corpus is not None),
                gr.update(value=skipped, visible=bool(skipped)),
                gr.update(choices=session.sources, value=[], visible=corpus is not None),
                views.context_meter(backend, workbench.plan(session, system_prompt),
                                    corpus.total_tokens if corpus else None), status)

    def add_files(session, paths, system_prompt, progress=gr.Progress()):
        def report(done, total, current):
            progress((done, total), desc=f"Reading {current}" if current else "Counting tokens", unit="files")

        with user_errors():
            workbench.add_files(session, paths, report)
        return (*corpus_view(session, system_prompt), None)

    def remove_files(session, sources, system_prompt):
        workbench.remove_files(session, sources)
        return corpus_view(session, system_prompt)

    def new_corpus(session, system_prompt):
        workbench.new_corpus(session)
        return (*corpus_view(session, system_prompt), [], "")

    def prefill_reporter(progress):
        return lambda p: progress((p.done, p.total), desc=views.load_progress(p), unit="tokens")

    def load(session, system_prompt, progress=gr.Progress()):
        with user_errors():
            try:
                stats = workbench.load(session, system_prompt, prefill_reporter(progress))
            except Cancelled as err:
                gr.Warning(f"Loading stopped: {err}.")
                return f"**Loading stopped:** {err}. Press *Load into the model* to continue."
        return views.load_done(stats)

    def stream(session, question, answers, status):
        """Yield (chat, answer line, question box, load status) while `answers` streams."""
        chat = _messages(session)
        yield chat + [{"role": "user", "content": question}, {"role": "assistant", "content": "…"}], "", "", status
        with user_errors():
            for text in answers:
                yield chat + [{"role": "user", "content": question},
                              {"role": "assistant", "content": text or "…"}], "", "", status
        last = session.exchanges[-1] if session.exchanges else None
        yield _messages(session), views.answer_line(last.stats if last else None), "", status

    def ask(session, question, max_new_tokens, temperature, system_prompt, progress=gr.Progress()):
        settings = Settings(int(max_new_tokens), float(temperature))
        with user_errors():
            if not (question or "").strip():
                raise gr.Error("Type a question first.")
            stats = workbench.load(session, system_prompt, prefill_reporter(progress))
        yield from stream(session, question.strip(), workbench.answer(session, question, settings),
                          views.load_done(stats))

    def regenerate(session, max_new_tokens, temperature, system_prompt, progress=gr.Progress()):
        if not session.exchanges:
            raise gr.Error("There is no answer to regenerate yet.")
        settings = Settings(int(max_new_tokens), float(temperature))
        with user_errors():
            stats = workbench.load(session, system_prompt, prefill_reporter(progress))
        last = session.exchanges.pop()
        yield from stream(session, last.question, workbench.answer(session, last.question, settings),
                          views.load_done(stats))

    def show_secrets(session):
        """The likely-secrets warning and its button, shown while the corpus holds such files."""
        text = secrets_warning(session.secrets, getattr(backend, "base_url", "") if backend.name != "local" else "")
        return gr.update(value=text, visible=bool(text)), gr.update(visible=bool(text))

    def exclude_secrets(session, system_prompt):
        workbench.exclude_secrets(session)
        return corpus_view(session, system_prompt)

    def stop(session):
        workbench.stop(session)

    def show_citations(session):
        return views.citation_chips(workbench.citations(session)), ""

    def show_passage(session, evt: gr.EventData):
        return views.cited_passage(*workbench.cited_passage(session, int(getattr(evt, "cite", -1))))

    def toggle_citations(on, instructions):
        instructions = (instructions or "").replace(CITATION_FORMAT, "").strip()
        return f"{instructions} {CITATION_FORMAT}".strip() if on else instructions

    def clear_chat(session):
        workbench.clear_chat(session)
        return [], ""

    def export(kind):
        def run(session):
            if not session.exchanges:
                raise gr.Error("There is no conversation to export yet.")
            folder = Path(tempfile.mkdtemp(prefix="omnibus-export-"))
            return gr.update(value=str(workbench.export(session, folder, kind)), visible=True)

        return run

    with gr.Blocks(title="Omnibus", analytics_enabled=False) as demo:
        session = gr.State(Session())
        gr.Markdown("# Omnibus\n" + INTRO)
        gr.Markdown(views.banner(backend), elem_classes=["banner"] if backend.model_name == "demo" else None)
        with gr.Row(equal_height=False):
            with gr.Column(scale=5):
                gr.Markdown("### 1 · Your documents")
                files = gr.File(label=f"Drop files here: PDF, Word, text, code, or a .zip of a folder "
                                      f"(up to {max_upload_mb:,} MB each)", file_count="multiple",
                                type="filepath", height=140, elem_id="files")
                with gr.Accordion("…or upload a whole folder", open=False):
                    folder = gr.File(label="Choose a folder", file_count="directory", type="filepath", height=100)
                summary = gr.Markdown(views.corpus_summary(None))
                table = gr.Dataframe(headers=views.DOCUMENT_HEADERS, value=[], interactive=False, wrap=True,
                                     label="Documents, in the order the model reads them", visible=False,
                                     elem_id="documents")
                skipped = gr.Dataframe(headers=views.SKIPPED_HEADERS, value=[], interactive=False, wrap=True,
                                       label="Files left out", visible=False)
                secrets_note = gr.Markdown(visible=False, elem_classes=["refusal"], elem_id="secrets")
                exclude_btn = gr.Button("Leave these files out", size="sm", visible=False, elem_id="exclude-secrets")
                with gr.Row():
                    to_remove = gr.Dropdown([], value=[], multiselect=True, label="Remove files", scale=3,
                                            visible=False)
                    remove_btn = gr.Button("Remove selected", size="sm", scale=1)
                    new_btn = gr.Button("Start over with new documents", size="sm", scale=1)
                meter = gr.HTML(views.context_meter(backend, None), elem_id="meter")
                with gr.Row():
                    load_btn = gr.Button("Load into the model", variant="primary", elem_id="load")
                    cancel_btn = gr.Button("Cancel loading", variant="stop")
                load_status = gr.Markdown(elem_id="load-status")
                with gr.Accordion("Saved corpora", open=False, visible=getattr(backend, "store", None) is not None):
                    gr.Markdown(views.SAVED_NOTE)
                    saved = gr.Dataframe(headers=views.SAVED_HEADERS, value=[], interactive=False, wrap=True,
                                         elem_id="saved")
                    with gr.Row():
                        saved_pick = gr.Dropdown([], value=[], multiselect=True, label="Remove from disk", scale=3)
                        saved_remove = gr.Button("Remove selected", size="sm", scale=1)
            with gr.Column(scale=7):
                gr.Markdown("### 2 · Ask")
                chat = gr.Chatbot(height=460, buttons=["copy"], feedback_options=None, elem_id="chat",
                                  label="Conversation",
                                  placeholder="Load your documents, then ask a question about them.")
                with gr.Row():
                    question = gr.Textbox(placeholder="Ask a question about your documents",
                                          show_label=False, scale=6, elem_id="question", lines=1)
                    send_btn = gr.Button("Ask", variant="primary", scale=1, elem_id="ask")
                    stop_btn = gr.Button("Stop", variant="stop", scale=1)
                answer_info = gr.Markdown(elem_id="answer-info")
                chips = gr.HTML("", elem_id="citations", js_on_load=CHIPS_JS)
                cited = gr.HTML("", elem_id="cited-passage", js_on_load=PASSAGE_JS)
                with gr.Row():
                    regen_btn = gr.Button("Regenerate last answer", size="sm")
                    clear_btn = gr.Button("Clear chat (keep documents)", size="sm")
                    export_md_btn = gr.Button("Export as Markdown", size="sm")
                    export_json_btn = gr.Button("Export as JSON", size="sm")
                export_file = gr.File(label="Your export", visible=False, interactive=False)
                with gr.Accordion("Settings", open=False):
                    max_new = gr.Slider(16, 4096, value=512, step=16, label="Longest answer (tokens)")
                    temperature = gr.Slider(0.0, 1.5, value=0.0, step=0.05,
                                            label="Temperature (0 = always the same answer; higher = more varied)")
                    start_prompt = getattr(backend, "system_prompt", DEFAULT_SYSTEM_PROMPT)
                    system_prompt = gr.Textbox(start_prompt, lines=4,
                                               label="Instructions to the model (changing them means the "
                                                     "documents are loaded again)")
                    cite_box = gr.Checkbox(start_prompt == DEFAULT_SYSTEM_PROMPT, label="Ask for a quote and its source with each claim "
                                                       "(each is checked against the documents)")

        corpus_outputs = [session, summary, table, skipped, to_remove, meter, load_status]
        files.upload(add_files, [session, files, system_prompt], corpus_outputs + [files], api_name="add_files",
                     concurrency_id="ingest")
        folder.upload(add_files, [session, folder, system_prompt], corpus_outputs + [folder], api_name=False,
                      concurrency_id="ingest")
        remove_btn.click(remove_files, [session, to_remove, system_prompt], corpus_outputs, api_name="remove_files")
        new_btn.click(new_corpus, [session, system_prompt], corpus_outputs + [chat, answer_info],
                      api_name="new_corpus").then(show_citations, session, [chips, cited], api_name=False)
        model = dict(concurrency_limit=1, concurrency_id="model")  # one GPU: one prefill or answer at a time
        load_btn.click(load, [session, system_prompt], load_status, api_name="load", **model)
        asked = [session, question, max_new, temperature, system_prompt]
        answer_outputs = [chat, answer_info, question, load_status]
        citations = dict(fn=show_citations, inputs=session, outputs=[chips, cited], api_name=False)
        question.submit(ask, asked, answer_outputs, api_name=False, **model).then(**citations)
        send_btn.click(ask, asked, answer_outputs, api_name="ask", **model).then(**citations)
        regen_btn.click(regenerate, [session, max_new, temperature, system_prompt], answer_outputs,
                        api_name="regenerate", **model).then(**citations)
        chips.click(show_passage, session, cited, api_name=False)
        cite_box.change(toggle_citations, [cite_box, system_prompt], system_prompt, api_name=False)
        stop_btn.click(stop, session, None, api_name="stop", concurrency_limit=None)
        cancel_btn.click(stop, session, None, api_name=False, concurrency_limit=None)
        clear_btn.click(clear_chat, session, [chat, answer_info], api_name="clear_chat").then(**citations)
        chat.clear(clear_chat, session, [chat, answer_info], api_name=False).then(**citations)  # the bin icon
        summary.change(show_secrets, session, [secrets_note, exclude_btn], api_name=False)  # after every corpus change
        exclude_btn.click(exclude_secrets, [session, system_prompt], corpus_outputs, api_name="exclude_secrets")
        saved_outputs = [saved, saved_pick]
        demo.load(show_saved, None, saved_outputs, api_name=False)
        load_status.change(show_saved, None, saved_outputs, api_name=False)  # after each load
        saved_remove.click(remove_saved, saved_pick, saved_outputs, api_name="remove_saved")
        export_md_btn.click(export("md"), session, export_file, api_name="export_markdown")
        export_json_btn.click(export("json"), session, export_file, api_name="export_json")
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


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def start(args: argparse.Namespace, backend, access: Access) -> gr.Blocks:
    """Build the app for `backend` and serve it in the background as `args` ask; return it running."""
    from app.server import serve  # the OpenAI-compatible API and MCP, beside the page

    backend = serve.shared(backend)  # the page takes its turns on the model with the API's requests
    demo = build(Workbench(backend, args.max_upload_files), args.max_upload_mb)
    demo.queue(default_concurrency_limit=1)
    demo.launch(server_name="0.0.0.0" if args.listen else "127.0.0.1", server_port=args.port, share=args.share,
                auth=LoginGuard(access.credentials) if access.credentials else None,
                app_kwargs={"middleware": [Middleware(ClientAddress)]},  # the caller's address, for LoginGuard
                max_file_size=f"{args.max_upload_mb}mb", inbrowser=args.inbrowser,
                auth_message="Log in with the user and password printed where Omnibus was started.",
                prevent_thread_lock=True, quiet=True, ssr_mode=False, footer_links=["api"], css=CSS,
                theme=gr.themes.Soft())
    serve.mount(demo, backend, args)
    return demo


def main(argv: list[str]) -> int:
    """Start the app: load the model, serve on 127.0.0.1 (or the network), print the address, block."""
    args = parse_args(argv)
    try:
        access = decide(auth=args.auth, auth_file=args.auth_file, no_auth=args.no_auth,
                        exposed=args.share or args.listen)
    except AuthError as err:
        _say(f"error: {err}")
        return 2
    from app.backend import open_from_arguments

    _say(f"omnibus: loading the model ({args.model}); this can take a while…")
    try:
        backend = open_from_arguments(args)
    except OmnibusError as err:
        _say(f"error: {err}")
        return 1
    try:
        demo = start(args, backend, access)
    except OSError as err:
        _say(f"error: cannot serve on port {args.port}: {err}. Try another with --port.")
        return 1
    _say(f"omnibus: model {backend.model_name}" + (" (CPU demo model)" if backend.model_name == "demo" else ""))
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
