"""In a real headless Chromium (issue 25, item 5): a login that is not the owner sees the Model panel read-only,
its controls off and a line saying who may change the model; the owner (`--admin`) gets them on."""

import os

import pytest

from test_browser import CHROMIUM
from test_browser_logins import log_in
from test_browser_session import browser, start_app, stop_app  # noqa: F401 (browser is a fixture)

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"{CHROMIUM} is absent: install Debian's chromium package to run the browser test")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser-model-panel")
    (tmp / "logins").write_text("alice:harbour lamp 1\nroot-admin:ferry rope 2\n")
    process, url, log = start_app(tmp, "--auth-file", str(tmp / "logins"), "--admin", "root-admin")
    try:
        yield url
    finally:
        stop_app(process, log)


def test_another_login_sees_the_model_read_only_and_the_admin_may_switch(app_url, browser):
    from playwright.sync_api import expect

    page = log_in(browser, app_url, "alice", "harbour lamp 1")
    panel = page.locator("#model-panel")
    expect(panel).to_contain_text("(ready", timeout=240_000)
    panel.locator("button, .label-wrap").first.click()  # open the panel
    expect(page.locator("#model-who")).to_contain_text("read-only: only the login root-admin", timeout=30_000)
    expect(page.locator("#model-use")).to_be_disabled()
    page.context.close()

    page = log_in(browser, app_url, "root-admin", "ferry rope 2")
    expect(page.locator("#model-panel")).to_contain_text("(ready", timeout=240_000)
    page.locator("#model-panel").locator("button, .label-wrap").first.click()
    expect(page.locator("#model-use")).to_be_enabled(timeout=30_000)
    expect(page.locator("#model-who")).to_be_hidden()
    page.context.close()
