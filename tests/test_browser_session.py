"""In a real headless Chromium: work survives a reload, Cancel and Stop act and say so, a saved corpus reopens
with its conversation. The times it measures go to test-artifacts/browser-timings.json (BENCHMARKS.md);
nothing here asserts a time."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serving import free_port, stop_process, wait_until_serving
from test_browser import CHROMIUM, CHROMIUM_ARGS
from test_ui_helpers import FACT, QUESTION, make_documents

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
LONG_QUESTION = "Describe every document in detail, one paragraph for each page."

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"{CHROMIUM} is absent: install Debian's chromium package to run the browser test")


def start_app(tmp: Path, *extra: str):
    """`launch.py --model demo` on a free port, its saved corpora under `tmp`; returns (process, url, log)."""
    port = free_port()
    log = open(tmp / "app.log", "w")
    process = subprocess.Popen([sys.executable, "launch.py", "--model", "demo", "--port", str(port),
                                "--cache-dir", str(tmp / "saved"), *extra], cwd=ROOT, stdout=log,
                               stderr=subprocess.STDOUT, env={**os.environ, "OMNIBUS_NO_BOOTSTRAP": "1"})
    url = f"http://127.0.0.1:{port}/"
    wait_until_serving(process, url, 240, "the app", tmp / "app.log", poll=1)
    return process, url, log


def stop_app(process, log) -> None:
    stop_process(process)
    log.close()


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser-session")
    process, url, log = start_app(tmp)
    try:
        yield url
    finally:
        stop_app(process, log)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


def record_timing(name: str, seconds: float) -> None:
    """Keep a measured time for BENCHMARKS.md (never asserted: the machine is shared)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "browser-timings.json"
    timings = json.loads(path.read_text()) if path.exists() else {}
    timings.setdefault(name, []).append(round(seconds, 3))
    path.write_text(json.dumps(timings, indent=1) + "\n")


def open_page(browser, url: str, dark: bool = False):
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1400, "height": 1100}, color_scheme="dark" if dark else "light")
    page.goto(url + ("?__theme=dark" if dark else ""))
    expect(page.get_by_text("You are running the small demo model")).to_be_visible(timeout=60_000)
    return page


def ask(page, question: str) -> None:
    page.locator("#question textarea").fill(question)
    page.locator("#ask").click()


def wait_for_words(page, question: str, seconds: float = 300) -> None:
    """Until the answer to `question` shows its first words."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        after = page.locator("#chat").inner_text().rpartition(question)[2]
        if len(after.replace("…", "").strip()) >= 3:
            return
        page.wait_for_timeout(100)
    raise AssertionError(f"no words of the answer to {question!r} after {seconds:.0f} s")


def long_text(path: Path, lines: int) -> Path:
    path.write_text("".join(f"Day {i}: the keeper lit the lamp at dusk, logged the ships and the weather, "
                            f"and noted that the sea was calm near the northern rocks.\n" for i in range(lines)))
    return path


def test_a_reload_mid_answer_gets_documents_corpus_and_chat_back_and_open_reopens_both(app_url, browser, tmp_path):
    from playwright.sync_api import expect

    page = open_page(browser, app_url)
    expect(page.locator("#load")).to_be_disabled()  # nothing to load yet
    expect(page.locator("#stop")).to_be_disabled()
    page.locator("#files input[type=file]").set_input_files([str(p) for p in make_documents(tmp_path / "docs")])
    expect(page.locator("#documents")).to_contain_text("security-notes.docx", timeout=60_000)
    page.locator("#load").click()
    expect(page.locator("#load-status")).to_contain_text("Ready", timeout=180_000)
    ask(page, QUESTION)
    expect(page.locator("#answer-info")).to_contain_text("First word after", timeout=180_000)
    expect(page.locator("#chat")).to_contain_text(FACT)
    expect(page.locator("#chat")).to_contain_text("demo model — answers are unreliable")
    expect(page.locator("#citations")).to_contain_text("demo model is not asked")

    ask(page, LONG_QUESTION)  # reload while this answer is being written
    expect(page.locator("#stop")).to_be_enabled(timeout=60_000)
    expect(page.locator("#chat")).to_contain_text(LONG_QUESTION)
    asked = time.monotonic()
    page.reload()
    expect(page.locator("#documents")).to_contain_text("security-notes.docx", timeout=60_000)
    expect(page.locator("#chat")).to_contain_text(FACT)  # the earlier exchange
    expect(page.locator("#chat")).to_contain_text(LONG_QUESTION)  # and the one being answered
    record_timing("reload mid-answer: documents and chat back (s)", time.monotonic() - asked)
    if page.locator("#stop").is_enabled():  # the answer goes on after the reload until it ends or is stopped
        page.locator("#stop").click()
    expect(page.locator("#answer-info")).to_contain_text(re.compile("stopped by you|First word after"),
                                                         timeout=120_000)
    expect(page.locator("#stop")).to_be_disabled()
    expect(page.locator("#load-status")).to_contain_text("Ready")
    page.screenshot(path=str(ARTIFACTS / "ui-after-reload.png"), full_page=True)
    page.close()

    # A new browser (no localStorage): the saved corpus opens with its conversation.
    fresh = browser.new_context(viewport={"width": 1400, "height": 1100}).new_page()
    fresh.goto(app_url)
    expect(fresh.locator("#chat")).not_to_contain_text(FACT, timeout=60_000)
    fresh.get_by_text("Saved corpora and conversations").click()
    expect(fresh.locator("#saved")).to_contain_text("harbour-report.pdf", timeout=30_000)
    fresh.locator("#saved-pick input").click()
    fresh.get_by_role("option").first.click()
    opened = time.monotonic()
    fresh.locator("#open-saved").click()
    expect(fresh.locator("#chat")).to_contain_text(FACT, timeout=60_000)
    expect(fresh.locator("#documents")).to_contain_text("security-notes.docx")
    expect(fresh.locator("#load-status")).to_contain_text("Ready", timeout=120_000)
    record_timing("Open a saved corpus with its conversation: loaded (s)", time.monotonic() - opened)
    fresh.context.close()


def test_cancel_during_a_load_and_stop_during_an_answer_say_what_happened(app_url, browser, tmp_path):
    from playwright.sync_api import expect

    page = open_page(browser, app_url)
    page.locator("#files input[type=file]").set_input_files([str(long_text(tmp_path / "logbook.txt", 70))])
    expect(page.locator("#documents")).to_contain_text("logbook.txt", timeout=60_000)
    expect(page.locator("#meter")).to_contain_text("Loading will take about")
    status = page.locator("#load-status")
    pressed = time.monotonic()
    page.locator("#load").click()
    expect(status).to_contain_text(re.compile(r"Reading the documents into the model: [\d,]+ of [\d,]+ tokens"),
                                   timeout=30_000)  # the progress line, with its numbers
    record_timing("first progress shown after Load (s)", time.monotonic() - pressed)
    expect(status).to_contain_text("left")
    expect(page.locator("#cancel")).to_be_enabled()
    expect(page.locator("#ask")).to_be_disabled()
    page.screenshot(path=str(ARTIFACTS / "ui-loading.png"), full_page=True)
    cancelled = time.monotonic()
    page.locator("#cancel").click()
    expect(status).to_contain_text(re.compile("Loading stopped|finished before it could stop"), timeout=60_000)
    record_timing("Cancel during a load takes effect (s)", time.monotonic() - cancelled)
    said = status.inner_text()
    assert "Loading stopped at" in said and "resumes there" in said or "finished before it could stop" in said
    expect(page.locator("#load")).to_be_enabled()

    ask(page, LONG_QUESTION)  # loads the rest (resuming), then answers
    expect(page.locator("#stop")).to_be_enabled(timeout=30_000)
    expect(status).to_contain_text("Ready", timeout=600_000)  # the rest of the documents are read (a busy box: slow)
    wait_for_words(page, LONG_QUESTION)
    stopped = time.monotonic()
    page.locator("#stop").click()
    expect(page.locator("#answer-info")).to_contain_text(re.compile("stopped by you|finished before it could stop"),
                                                         timeout=60_000)
    record_timing("Stop during an answer takes effect (s)", time.monotonic() - stopped)
    line = page.locator("#answer-info").inner_text()
    assert "stopped by you after" in line or "finished before it could stop" in line
    expect(page.locator("#stop")).to_be_disabled()
    expect(page.locator("#ask")).to_be_enabled()
    page.close()
