"""The app's page against other web pages (issue 25, item 1's header and the low items): its responses carry the
Content-Security-Policy, a page elsewhere cannot upload into Gradio's temporary folder, and the `pull` hint is
safe to paste into a shell. The real app, served in this process over a local OpenAI-style server."""

from __future__ import annotations

import os
import shlex

import httpx
import pytest

from app.model_hub import how_to_get
from app.remote import RemoteEngine
from app.ui.app import parse_args, start
from app.sharing.auth import Access
from remote_support.fake_server import FakeServer
from serving import free_port


@pytest.fixture(scope="module")
def app(llama3_tokenizer):
    with FakeServer(models=[{"id": "omni", "max_model_len": 8192}]) as model:
        port = free_port()
        options = ["--port", str(port), "--backend", "openai", "--base-url", model.url]
        demo = start(parse_args(options), RemoteEngine(model.url, tokenizer=llama3_tokenizer), Access(None))
        try:
            demo.base = f"http://127.0.0.1:{port}"
            yield demo
        finally:
            demo.close()


def test_the_page_sends_its_content_security_policy(app):
    page = httpx.get(app.base + "/", timeout=30)
    policy = page.headers["content-security-policy"]
    assert "img-src 'self' data: blob:" in policy and "connect-src 'self'" in policy
    assert "font-src 'self' data:" in policy and "script-src 'self'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"


def test_a_page_elsewhere_cannot_upload_and_the_own_page_can(app, tmp_path):
    files = {"files": ("junk.bin", b"x" * 100_000, "application/octet-stream")}
    foreign = httpx.post(app.base + "/gradio_api/upload", files=files, timeout=30,
                         headers={"Origin": "http://attacker.example"})
    assert foreign.status_code == 403 and "attacker.example" in foreign.text
    cross_site = httpx.post(app.base + "/gradio_api/upload", files=files, timeout=30,
                            headers={"Sec-Fetch-Site": "cross-site"})
    assert cross_site.status_code == 403
    own = httpx.post(app.base + "/gradio_api/upload", files=files, timeout=30, headers={"Origin": app.base})
    assert own.status_code == 200 and len(own.json()) == 1


def test_the_pull_hint_quotes_a_hostile_model_id():
    hint = how_to_get("x/y;rm -rf ~")
    assert "omnibus pull 'x/y;rm -rf ~'" in hint
    command = hint.split("`")[1]
    assert shlex.split(command) == ["omnibus", "pull", "x/y;rm -rf ~"]


def test_the_upload_folder_has_a_total_cap_and_a_new_upload_past_it_is_refused_with_the_numbers(
        llama3_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "uploads"))  # this app's own upload folder
    with FakeServer(models=[{"id": "omni", "max_model_len": 8192}]) as model:
        port = free_port()
        options = ["--port", str(port), "--backend", "openai", "--base-url", model.url, "--max-upload-total-mb", "1"]
        demo = start(parse_args(options), RemoteEngine(model.url, tokenizer=llama3_tokenizer), Access(None))
        try:
            base = f"http://127.0.0.1:{port}"

            def upload(size: int, name: str):
                files = {"files": (name, os.urandom(size), "application/octet-stream")}
                return httpx.post(base + "/gradio_api/upload", files=files, timeout=30)

            first = upload(600_000, "first.bin")
            assert first.status_code == 200 and os.path.getsize(first.json()[0]) == 600_000
            second = upload(600_000, "second.bin")
            assert second.status_code == 413
            assert "already holds 0.6 MB of the 1.0 MB" in second.text and "--max-upload-total-mb" in second.text
            assert not list((tmp_path / "uploads").rglob("second.bin"))  # refused before anything was stored
            assert upload(200_000, "small.bin").status_code == 200  # what still fits is taken
            chunked = httpx.post(base + "/gradio_api/upload", timeout=30, content=iter([b"--x\r\n"] * 3),
                                 headers={"content-type": "multipart/form-data; boundary=x"})
            assert chunked.status_code == 411  # an upload that does not say its size
        finally:
            demo.close()
