"""The Gradio app's entry: `build` puts the page together (`app.ui.layout` lays it out, `wire` connects its
components to the `app.ui.events` handlers), `start` serves it, and `main` is `python3 launch.py [options]`.

What each button does lives in `app.ui.handlers` (plain Python, the same `Workbench` methods the tests call);
the words it shows in `app.ui.views`; who may log in in `app.sharing.auth`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: nothing sent to its servers
import gradio as gr  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402

from app.backend import ModelSlot
from app.errors import OmnibusError
from app.settings import add_arguments, parse_arguments
from app.sharing.auth import Access, AuthError, ClientAddress, LocalHostOnly, LoginGuard, LoginNotice, decide
from app.ui.events import Events, say
from app.ui.handlers import Workbench
from app.ui.layout import CSS, THEME, Page, layout
from app.ui.model_picker import Owner
from app.ui.page_policy import ContentSecurityPolicy, SameOriginPosts
from app.ui.uploads import DEFAULT_MAX_TOTAL_MB, UploadGate, Uploads


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
    p.attention.input(on.attention, p.attention, p.attention, api_name=False)

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


def build(workbench: Workbench, max_upload_mb: int = 500, uploads: Uploads | None = None,
          owner: Owner | None = None) -> gr.Blocks:
    """The page, wired to `workbench`. With `uploads`, a browser may add only files it uploaded itself; only
    `owner` may change the model."""
    demo, page = layout(workbench, max_upload_mb, owner)
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
    """The app's options; the backend's are read once into `args.settings` (app/settings.py)."""
    parser = argparse.ArgumentParser(prog="launch.py", description="Start the Omnibus app in your browser.")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
                        help="port to serve on (default: $GRADIO_SERVER_PORT, then 7860)")
    parser.add_argument("--inbrowser", action="store_true", help="open the app in the default browser")
    parser.add_argument("--share", action="store_true", help="make a public gradio.live link (login required)")
    parser.add_argument("--listen", action="store_true", help="serve on the local network (login required)")
    parser.add_argument("--auth", metavar="USER:PASSWORD", help="the login to require")
    parser.add_argument("--auth-file", metavar="FILE", help="logins to accept, one user:password a line")
    parser.add_argument("--admin", metavar="USER",
                        help="the login that may change the model for everyone (default: only this computer, "
                             "with no login)")
    parser.add_argument("--no-auth", action="store_true", help="no login even with --share or --listen (unsafe)")
    parser.add_argument("--max-upload-mb", type=int, default=500, help="largest file one may upload (default 500)")
    parser.add_argument("--max-upload-files", type=int, default=2000,
                        help="most files one upload may hold; a folder counts each file (default 2000)")
    parser.add_argument("--max-upload-total-mb", type=int, default=DEFAULT_MAX_TOTAL_MB,
                        help="most the upload folder may hold, all browsers together; a new upload past it is "
                             f"refused (default {DEFAULT_MAX_TOTAL_MB:,})")
    parser.add_argument("--files-root", metavar="DIR",
                        help="the folder MCP's add_files (at /mcp) may read (default: any path on this computer "
                             "with no logins; none with logins, --listen or --share)")
    add_arguments(parser)
    return parse_arguments(parser, argv)


def login_message(access: Access) -> str:
    """The login page's words: the app's name, and the user name when the login was made at start."""
    if access.generated:
        user = access.credentials[0][0]
        return (f"<b>Omnibus</b>: log in as <b>{user}</b> with the password printed in the terminal where "
                "Omnibus was started (a new one at each start).")
    return "<b>Omnibus</b>: log in with the user and password you were given."


def start(args: argparse.Namespace, backend, access: Access, api=None) -> gr.Blocks:
    """Build the app for `backend` and serve it in the background as `args` ask; return it running.

    `api`: what serves the OpenAI-compatible API and MCP beside the page (`app.server.serve`, passed in by
    `app.cli`, so that the page and the API never import each other); None: the page alone."""
    from gradio.utils import get_upload_folder

    if api is not None:
        backend = api.shared(backend)  # the page takes its turns on the model with the API's requests
    uploads = Uploads(get_upload_folder(), max_total_bytes=args.max_upload_total_mb * 2**20)
    owner = Owner(args.admin, loopback_trusted=not args.share)
    demo = build(Workbench(backend, args.max_upload_files), args.max_upload_mb, uploads, owner)
    demo.queue(default_concurrency_limit=1)
    middleware = [Middleware(ContentSecurityPolicy),  # the page fetches from its own origin only
                  Middleware(SameOriginPosts),  # no page elsewhere may upload or post
                  Middleware(ClientAddress),  # the caller's address, for LoginGuard
                  Middleware(LoginNotice),  # the login page shows a lock-out's message
                  Middleware(UploadGate, uploads=uploads)]  # each upload to a private folder of its own
    if not (args.listen or args.share or access.credentials):
        middleware.append(Middleware(LocalHostOnly))  # no login: no page elsewhere may reach it (DNS rebinding)
    demo.launch(server_name="0.0.0.0" if args.listen else "127.0.0.1", server_port=args.port, share=args.share,
                auth=LoginGuard(access.credentials, tunnel=args.share, say=say) if access.credentials else None,
                app_kwargs={"middleware": middleware},
                max_file_size=f"{args.max_upload_mb}mb", inbrowser=args.inbrowser,
                auth_message=login_message(access),
                prevent_thread_lock=True, quiet=True, ssr_mode=False, footer_links=["api"], css=CSS,
                theme=THEME)
    if api is not None:
        api.mount(demo, backend, args, logins=[user for user, _ in access.credentials or []],
                  uploads=uploads.folder)
    return demo


def _model_reporter(show_download):
    """The terminal's view of the model slot: download progress lines (the page shows the same)."""
    def report(state) -> None:
        if state.download is not None:  # downloading, and the line that says it is done
            show_download(state.download)
        elif state.phase == "failed":
            say(f"omnibus: could not open the model {state.model}: {state.message}")
    return report


def main(argv: list[str], api=None) -> int:
    """Start the app: load the model, serve on 127.0.0.1 (or the network), print the address, block. `api`: as
    for `start`."""
    args = parse_args(argv)
    try:
        access = decide(auth=args.auth, auth_file=args.auth_file, no_auth=args.no_auth,
                        exposed=args.share or args.listen)
    except AuthError as err:
        say(f"error: {err}")
        return 2
    if access.notice:  # how to log in, said before the server can answer a login page
        say("omnibus: " + access.notice)
    from app.backend import open_backend, open_in_background
    from app.model_download import download_printer

    try:  # the local model opens in the background (downloading first if needed): the page serves at once
        backend = (open_in_background(args.settings, on_change=_model_reporter(download_printer()))
                   if args.settings.backend == "local" else open_backend(args.settings))
    except OmnibusError as err:
        say(f"error: {err}")
        return 1
    try:
        demo = start(args, backend, access, api)
    except OSError as err:
        say(f"error: cannot serve on port {args.port}: {err}. Try another with --port.")
        return 1
    say(f"omnibus: model {backend.model_name}" + (" (CPU demo model)" if backend.model_name == "demo" else "")
         + (" (opening in the background; the page shows its progress)" if isinstance(backend, ModelSlot) else ""))
    say(f"omnibus: running at http://127.0.0.1:{args.port}/")
    if args.listen:
        say(f"omnibus: on your network at http://{_lan_address()}:{args.port}/")
    if args.share:
        if demo.share_url:
            say(f"omnibus: public link {demo.share_url}")
        else:
            say("omnibus: the public share link could not be made (no internet connection, or a firewall "
                 "blocks it). The app is still running locally at the address above.")
    say("omnibus: press Ctrl+C to stop")
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
