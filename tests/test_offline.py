"""No request leaves the machine unless the user asks for one: the app (`launch.py --model demo`) is used in a real
headless Chromium whose every request to a host other than the app is aborted and recorded, while the app's own
process has its HTTP(S) proxy pointed at a local recorder (httpx, which Gradio and huggingface_hub use, honours it).
The page must come up whole, and neither side may have tried to reach anywhere else."""

from __future__ import annotations

import os
import re
import socketserver
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest

from serving import free_port, stop_process, wait_until_serving
from test_browser import CHROMIUM, CHROMIUM_ARGS

ROOT = Path(__file__).resolve().parent.parent
LOCAL = {"127.0.0.1", "localhost", "[::1]", "::1"}

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"{CHROMIUM} is absent: install Debian's chromium package to run this test")


class RecordingProxy(socketserver.ThreadingTCPServer):
    """An HTTP proxy that forwards nothing: it records each request line (`CONNECT host:443 ...`) and hangs up."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        self.seen: list[str] = []
        proxy = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                line = self.rfile.readline(4096).decode("latin-1").strip()
                if line:
                    proxy.seen.append(line)
                self.wfile.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


def test_page_loads_whole_with_the_network_blocked(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    proxy = RecordingProxy()
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    port = free_port()
    env = {**os.environ, "OMNIBUS_NO_BOOTSTRAP": "1", "HTTP_PROXY": proxy.url, "HTTPS_PROXY": proxy.url,
           "ALL_PROXY": proxy.url, "http_proxy": proxy.url, "https_proxy": proxy.url,
           "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    env.pop("GRADIO_ANALYTICS_ENABLED", None)  # the app's own default must be the one that holds
    log_path = tmp_path / "app.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "launch.py", "--model", "demo", "--port", str(port),
                                    "--cache-dir", str(tmp_path / "saved")], cwd=ROOT, stdout=log,
                                   stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    outside: list[str] = []
    try:
        wait_until_serving(process, url, 240, "the app", log_path, poll=1)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 1100})

            def guard(route):
                if urlparse(route.request.url).hostname in LOCAL or route.request.url.startswith(("data:", "blob:")):
                    route.continue_()
                else:
                    outside.append(route.request.url)
                    route.abort()

            page.route("**/*", guard)
            failed = []
            page.on("requestfailed", lambda request: failed.append(request.url))
            try:
                page.goto(url)
                expect(page.get_by_text("You are running the small demo model")).to_be_visible(timeout=60_000)
                for element in ("#files", "#load", "#question", "#ask", "#meter", "#model-panel", "#chat"):
                    expect(page.locator(element).first).to_be_visible(timeout=30_000)
                expect(page.locator("#model-status")).to_contain_text("is ready", timeout=240_000)
                page.get_by_role("button", name=re.compile(r"^Model: ")).click()  # closed once a model is ready
                expect(page.locator("#models")).to_contain_text("ultralong-4m")
                fonts = page.evaluate("getComputedStyle(document.body).fontFamily")
            finally:
                (ROOT / "test-artifacts").mkdir(exist_ok=True)
                page.screenshot(path=str(ROOT / "test-artifacts" / "offline.png"), full_page=True)
                browser.close()
    finally:
        stop_process(process)
    assert outside == [], f"the page asked for outside hosts: {outside}"
    # the page's own requests all came back, except the event streams cut when the browser closed
    assert [u for u in failed if "/gradio_api/queue/data" not in u] == [], failed
    assert proxy.seen == [], f"the app's process tried to reach: {proxy.seen}"
    assert "Google" not in fonts and "Montserrat" not in fonts, fonts
    proxy.shutdown()
    proxy.server_close()
