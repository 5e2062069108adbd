"""End to end in a real headless Chromium: start `launch.py`, drop a PDF and a DOCX, load, ask, read the answer."""

import os
import shutil
from pathlib import Path

import pytest

from serving import demo_app
from test_ui_helpers import FACT, QUESTION, make_documents

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CITE_REQUEST = 'Copy this citation exactly as written: [1, p. 1: "harbour"]'
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"{CHROMIUM} is absent: install Debian's chromium package to run the browser test")


@pytest.fixture
def app_url(tmp_path):
    """`launch.py --model demo` on a free localhost port; stopped after the test."""
    with demo_app(tmp_path) as (url, log_path):
        yield url
    assert "running at " + url in log_path.read_text()


def test_drop_files_load_ask_and_read_the_streamed_answer(app_url, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    pdf, word = make_documents(tmp_path / "docs")
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        try:
            page.goto(app_url)
            expect(page.get_by_text("You are running the small demo model")).to_be_visible(timeout=30_000)
            page.locator("#files input[type=file]").set_input_files([str(pdf), str(word)])
            documents = page.locator("#documents")
            expect(documents).to_contain_text("security-notes.docx", timeout=60_000)
            expect(documents).to_contain_text("harbour-report.pdf")
            expect(page.locator("#meter")).to_contain_text("Loading will take about")

            page.locator("#load").click()
            expect(page.locator("#load-status")).to_contain_text("Ready", timeout=120_000)

            page.locator("#question textarea").fill(QUESTION)
            page.locator("#ask").click()
            expect(page.locator("#chat")).to_contain_text(QUESTION, timeout=30_000)
            expect(page.locator("#answer-info")).to_contain_text("First word after", timeout=180_000)
            expect(page.locator("#chat")).to_contain_text(FACT)

            # A citation chip opens the cited page with the quote highlighted. The demo model is asked (on a clear
            # chat, greedy) to copy a citation; it answers 'The document is: [1, p. 1: "harbour"]'.
            page.get_by_role("button", name="Clear chat (keep documents)").click()
            expect(page.locator("#answer-info")).not_to_contain_text("First word after", timeout=30_000)
            page.locator("#question textarea").fill(CITE_REQUEST)
            page.locator("#ask").click()
            chip = page.locator("#citations button[data-cite]").first
            expect(chip).to_be_visible(timeout=180_000)
            expect(chip).to_contain_text("harbour-report.pdf")
            chip.click()
            passage = page.locator("#cited-passage")
            expect(passage.locator("mark")).to_contain_text("harbour", ignore_case=True, timeout=30_000)
            expect(passage).to_contain_text("Shipping volumes rose")  # page 1, the cited page
            expect(passage).not_to_contain_text("lighthouse keeper")  # not page 2

            page.get_by_text("Saved corpora and conversations").click()  # the load was saved with its chat
            expect(page.locator("#saved")).to_contain_text("harbour-report.pdf", timeout=30_000)
            page.screenshot(path=str(artifacts / "ui.png"), full_page=True)

            # The same page in dark mode: a reload brings the session back, so it shows the same state.
            page.emulate_media(color_scheme="dark")
            page.reload()
            expect(page.locator("#chat")).to_contain_text(CITE_REQUEST, timeout=60_000)
            expect(page.locator("#citations button[data-cite]").first).to_be_visible(timeout=30_000)
            page.get_by_text("Saved corpora and conversations").click()
            expect(page.locator("#saved")).to_contain_text("harbour-report.pdf", timeout=30_000)
            page.screenshot(path=str(artifacts / "ui-dark.png"), full_page=True)
        except BaseException:
            page.screenshot(path=str(artifacts / "ui-failed.png"), full_page=True)
            raise
        finally:
            browser.close()
    if os.environ.get("OMNIBUS_UPDATE_SCREENSHOT"):  # refresh the README's picture
        (ROOT / "docs").mkdir(exist_ok=True)
        shutil.copyfile(artifacts / "ui.png", ROOT / "docs" / "screenshot.png")
