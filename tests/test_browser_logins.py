"""In a real headless Chromium, with logins: two logins do not see each other's saved corpora, and a login locked
out after five wrong passwords is not let in with the right one."""

import os

import pytest

from test_browser import CHROMIUM
from test_browser_session import browser, start_app, stop_app  # noqa: F401 (browser is a fixture)
from test_ui_helpers import make_documents

LOGINS = {"ada": "harbour lamp 1", "bob": "ferry rope 2", "cy": "tide table 3"}

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"{CHROMIUM} is absent: install Debian's chromium package to run the browser test")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser-logins")
    (tmp / "logins").write_text("".join(f"{user}:{password}\n" for user, password in LOGINS.items()))
    process, url, log = start_app(tmp, "--auth-file", str(tmp / "logins"))
    try:
        yield url
    finally:
        stop_app(process, log)


def log_in(browser, url: str, user: str, password: str):
    """A fresh browser (its own cookies and localStorage) that has tried to log in; returns its page."""
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.goto(url)
    page.get_by_label("username").fill(user)
    page.get_by_label("password").fill(password)
    page.get_by_role("button", name="Login").click()
    return page


def test_two_logins_do_not_see_each_others_saved_corpora(app_url, browser, tmp_path):
    from playwright.sync_api import expect

    ada = log_in(browser, app_url, "ada", LOGINS["ada"])
    expect(ada.get_by_text("You are running the small demo model")).to_be_visible(timeout=60_000)
    ada.locator("#files input[type=file]").set_input_files([str(p) for p in make_documents(tmp_path / "docs")])
    expect(ada.locator("#documents")).to_contain_text("security-notes.docx", timeout=60_000)
    ada.locator("#load").click()
    expect(ada.locator("#load-status")).to_contain_text("Ready", timeout=180_000)
    ada.get_by_text("Saved corpora and conversations").click()
    expect(ada.locator("#saved")).to_contain_text("harbour-report.pdf", timeout=30_000)

    bob = log_in(browser, app_url, "bob", LOGINS["bob"])
    expect(bob.get_by_text("You are running the small demo model")).to_be_visible(timeout=60_000)
    bob.get_by_text("Saved corpora and conversations").click()
    expect(bob.locator("#saved")).to_be_visible()
    expect(bob.locator("#saved")).not_to_contain_text("harbour-report.pdf")
    expect(bob.locator("#open-saved")).to_be_disabled()  # nothing of his to open
    expect(bob.locator("#documents")).not_to_be_visible()  # and ada's session is not his

    ada.reload()  # ada's own session and saved corpus are still hers
    expect(ada.locator("#documents")).to_contain_text("security-notes.docx", timeout=60_000)
    ada.get_by_text("Saved corpora and conversations").click()
    expect(ada.locator("#saved")).to_contain_text("harbour-report.pdf", timeout=30_000)
    ada.context.close()
    bob.context.close()


def test_a_locked_out_login_is_not_let_in_with_the_right_password(app_url, browser):
    from playwright.sync_api import expect

    page = log_in(browser, app_url, "cy", "wrong 0")
    for n in range(1, 5):
        expect(page.get_by_role("button", name="Login")).to_be_visible(timeout=30_000)
        page.get_by_label("password").fill(f"wrong {n}")
        page.get_by_role("button", name="Login").click()
    page.wait_for_timeout(1000)
    page.get_by_label("password").fill(LOGINS["cy"])  # the right password, after five wrong ones
    page.get_by_role("button", name="Login").click()
    page.wait_for_timeout(2000)
    expect(page.get_by_role("button", name="Login")).to_be_visible()  # still the login page
    expect(page.get_by_text("You are running the small demo model")).not_to_be_visible()
    if "locked" in page.content().lower():  # the wording of the lock-out is the login page's own (another change)
        expect(page.get_by_text("locked", exact=False).first).to_be_visible()
    page.context.close()
