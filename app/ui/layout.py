"""The page's layout: its components, laid out (`layout`, no events), and how it looks (CSS, theme, the JS
snippets on two HTML blocks, the intro's words).

`app.ui.events` says what the components do and `app.ui.app` connects the two and serves the page.
"""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from app.backend import ModelSlot
from app.citations.form import CITATION_FORMAT
from app.sharing.turnstile import SharedBackend
from app.ui import model_picker, views
from app.ui.handlers import Workbench
from app.ui.session import Session

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
# While an answer streams, the chat stays on screen: a page scrolled down to the Load or Ask button would otherwise
# leave the newest words above the fold. It acts only when the chat box is not wholly in view.
FOLLOW_JS = ("const follow = () => { const chat = document.getElementById('chat'); "
             "if (!chat) { setTimeout(follow, 500); return; } "
             "new MutationObserver(() => { const r = chat.getBoundingClientRect(); "
             "if (r.top < 0 || r.bottom > window.innerHeight) chat.scrollIntoView({block: 'nearest'}); })"
             ".observe(chat, {childList: true, subtree: true, characterData: true}); }; follow();")
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


class Page(SimpleNamespace):
    """The page's components, by name (`layout` makes them, `wire` connects them)."""


def model_slot(backend) -> ModelSlot | None:
    """The model slot behind the page's backend (beside the API, a `SharedBackend` wraps it), or None for a
    backend with no model picker (a model opened at start, a remote server)."""
    inner = backend.engine if isinstance(backend, SharedBackend) else backend
    return inner if isinstance(inner, ModelSlot) else None


def layout(workbench: Workbench, max_upload_mb: int = 500, owner=None) -> tuple[gr.Blocks, Page]:
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
        slot = model_slot(backend)
        if slot is not None:
            model_picker.build(slot, owner)  # owner: who may change it (model_picker.Owner)
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
                                            show_label=False, scale=6, elem_id="question", lines=1,
                                            max_lines=6)  # a pasted book scrolls inside: the answer line stays in view
                    p.send_btn = gr.Button("Ask", variant="primary", scale=1, elem_id="ask", interactive=False)
                    p.stop_btn = gr.Button("Stop", variant="stop", scale=1, elem_id="stop", interactive=False)
                p.answer_info = gr.Markdown(elem_id="answer-info")
                p.chips = gr.HTML("", elem_id="citations", js_on_load=CHIPS_JS + " " + FOLLOW_JS)
                p.cited = gr.HTML("", elem_id="cited-passage", js_on_load=PASSAGE_JS)
                with gr.Row():
                    p.regen_btn = gr.Button("Regenerate last answer", size="sm", interactive=False)
                    p.clear_btn = gr.Button("Clear chat (keep documents)", size="sm", interactive=False)
                    p.export_md_btn = gr.DownloadButton("Export as Markdown", size="sm", interactive=False,
                                                        elem_id="export-md")
                    p.export_json_btn = gr.DownloadButton("Export as JSON", size="sm", interactive=False,
                                                          elem_id="export-json")
                p.export_file = gr.File(label="Your export", visible=False, interactive=False, elem_id="export")
                with gr.Accordion("Settings", open=False):
                    p.max_new = gr.Slider(16, 4096, value=defaults.max_new_tokens, step=16,
                                          label="Longest answer (tokens)")
                    p.temperature = gr.Slider(0.0, 1.5, value=defaults.temperature, step=0.05,
                                              label="Temperature (0 = always the same answer; higher = more varied)")
                    p.attention = gr.Radio(["bf16", "fp8"], value=backend.attention if backend.attention in ("bf16", "fp8") else "bf16",
                                           elem_id="attention",
                                           label="Attention precision (fp8: long documents load faster on H100/H200 "
                                                 "GPUs, a little less exactly; applies to documents loaded next)")
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
                                   column_widths=["30%", "24%", "9%", "9%", "14%", "14%"], elem_id="saved")
            with gr.Row():
                p.saved_pick = gr.Dropdown([], value=None, label="Saved corpus", scale=4, elem_id="saved-pick")
                p.open_btn = gr.Button("Open", size="sm", scale=1, elem_id="open-saved", interactive=False)
                p.saved_remove = gr.Button("Remove from disk", size="sm", scale=1, interactive=False)
                p.import_btn = gr.UploadButton("Import a conversation (.json)", file_types=[".json"], size="sm",
                                               scale=1, elem_id="import")
    p.buttons = [p.load_btn, p.cancel_btn, p.send_btn, p.stop_btn, p.regen_btn, p.clear_btn, p.export_md_btn,
                 p.export_json_btn, p.remove_btn, p.new_btn]
    return demo, p
