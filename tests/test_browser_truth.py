"""The first screen and the chat as a newcomer sees them, in a real headless Chromium (issue 28): the Model panel
closed once the model is ready, the question shown as typed, the newest answer text kept in view while it streams,
the export downloaded in one click under a useful name, two saved conversations over the same documents told
apart by their first questions, and documents that cannot fit refused in one place with
Load and Ask turned off. One app start for all of it; screenshots in light and dark under test-artifacts/."""

import os
import re
import time
from pathlib import Path

import pytest

from serving import demo_app
from test_browser import CHROMIUM, CHROMIUM_ARGS
from test_ui_helpers import QUESTION, make_documents

ROOT = Path(__file__).resolve().parent.parent
VIEWPORT = {"width": 1400, "height": 857}  # the newcomer's screen
SECOND_QUESTION = "Where is the code kept?"

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"{CHROMIUM} is absent: install Debian's chromium package to run this test")


@pytest.fixture
def app_url(tmp_path):
    with demo_app(tmp_path) as (url, log_path):
        yield url
    said = log_path.read_text()
    assert "de-quantizing" not in said and "Loading weights" not in said  # no library progress bars


def _in_view(page, selector: str) -> bool:
    box = page.locator(selector).bounding_box()
    return box is not None and box["y"] >= 0 and box["y"] + box["height"] <= VIEWPORT["height"]


def test_first_screen_chat_export_and_a_corpus_that_cannot_fit(app_url, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    pdf, word = make_documents(tmp_path / "docs")
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    question = f"{QUESTION} (It is not in __init__.py.)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport=VIEWPORT, accept_downloads=True)
        try:
            page.goto(app_url)
            panel = page.locator("#model-panel")
            expect(panel).to_contain_text("(ready", timeout=240_000)
            page.reload()  # a page opened once the model is ready
            expect(panel).to_contain_text("(ready", timeout=30_000)
            time.sleep(2)  # the panel's first refresh has run
            expect(page.locator("#models")).to_be_hidden()  # the Model panel is closed...
            assert _in_view(page, "#files")  # ...so the upload area is on the first screen
            page.screenshot(path=str(artifacts / "truth-first-screen.png"))

            page.locator("#files input[type=file]").set_input_files([str(pdf), str(word)])
            expect(page.locator("#documents")).to_contain_text("security-notes.docx", timeout=120_000)
            expect(page.locator("#meter")).to_contain_text("Loading will take about")
            page.locator("#load").click()
            expect(page.locator("#load-status")).to_contain_text("Ready", timeout=300_000)

            page.locator("#question textarea").fill(question)
            page.locator("#ask").click()
            chat = page.locator("#chat")
            expect(chat.locator(".user").first).to_contain_text(question, timeout=60_000)  # as typed
            expect(chat.locator(".bot").first).not_to_have_text(re.compile(r"^\W*$"), timeout=300_000)
            assert _in_view(page, "#chat .bot >> nth=-1"), "the answer being written is out of view"
            expect(page.locator("#answer-info")).to_contain_text("First word after", timeout=300_000)
            assert "<strong>init" not in chat.inner_html()

            download_md = page.locator("#export-md")
            expect(download_md).to_be_enabled(timeout=30_000)
            with page.expect_download(timeout=30_000) as got:
                download_md.click()  # one click: the file comes at once
            day = time.strftime("%Y-%m-%d")
            assert got.value.suggested_filename == f"omnibus-harbour-report-and-1-more-{day}.md"
            assert question in Path(got.value.path()).read_text()
            page.screenshot(path=str(artifacts / "truth-answer.png"), full_page=True)

            # Clear chat starts a new saved conversation over the same documents: the saved list tells the two
            # apart by their first questions (shown as typed), not by identical rows.
            page.get_by_role("button", name="Clear chat (keep documents)").click()
            expect(chat.locator(".user")).to_have_count(0, timeout=30_000)
            page.locator("#question textarea").fill(SECOND_QUESTION)
            page.locator("#ask").click()
            expect(page.locator("#answer-info")).to_contain_text("First word after", timeout=300_000)
            page.locator("#saved-panel").get_by_text("Saved corpora and conversations").click()
            saved = page.locator("#saved")
            expect(saved).to_contain_text(SECOND_QUESTION, timeout=30_000)
            expect(saved).to_contain_text(question)  # "__init__.py" as typed, not bold "init.py"
            page.locator("#saved-panel").scroll_into_view_if_needed()
            page.screenshot(path=str(artifacts / "truth-saved.png"), full_page=True)

            # A document far over the demo's window: one message, in the meter, and nothing to press.
            big = tmp_path / "docs" / "almanac.txt"
            big.write_text("The tide tables of the harbour, hour by hour, for the whole year. " * 900)
            page.locator("#files input[type=file]").set_input_files([str(big)])
            refusal = page.locator("#refusal")
            expect(refusal).to_contain_text("almanac.txt", timeout=120_000)
            expect(refusal).to_contain_text("remove files")
            expect(page.locator("#load-status")).to_contain_text("do not fit")
            expect(page.locator("#load")).to_be_disabled()
            expect(page.locator("#ask")).to_be_disabled()
            page.screenshot(path=str(artifacts / "truth-too-big.png"), full_page=True)
            page.emulate_media(color_scheme="dark")
            page.reload()
            expect(page.locator("#refusal")).to_contain_text("almanac.txt", timeout=60_000)
            expect(page.locator("#chat .user").first).to_contain_text(SECOND_QUESTION)
            expect(panel).to_contain_text("(ready", timeout=30_000)
            page.screenshot(path=str(artifacts / "truth-too-big-dark.png"), full_page=True)
            page.locator("#saved-panel").get_by_text("Saved corpora and conversations").click()
            expect(page.locator("#saved")).to_contain_text(SECOND_QUESTION, timeout=30_000)
            page.locator("#saved-panel").scroll_into_view_if_needed()
            page.screenshot(path=str(artifacts / "truth-saved-dark.png"), full_page=True)
        except BaseException:
            page.screenshot(path=str(artifacts / "truth-failed.png"), full_page=True)
            raise
        finally:
            browser.close()
