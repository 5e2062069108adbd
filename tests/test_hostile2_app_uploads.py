"""Sessions own their files, checked on the real running app over HTTP (issue 13, item 1).

A browser could hand `/add_files` Gradio's upload folder itself, or a file another browser uploaded, and so
read every user's uploads; a web page elsewhere could reach a no-login app on 127.0.0.1 by DNS rebinding.
Here one client uploads a confidential file as a user would, and another sends the raw calls an attacker
would; nothing of the first reaches the second."""

from __future__ import annotations

import json
import os
import stat
import uuid
from pathlib import Path

import httpx
import pytest
from gradio.utils import get_upload_folder
from gradio_client import Client, handle_file

from app.ui.app import parse_args, start
from app.sharing.auth import Access
from test_ui_helpers import demo_backend
from serving import free_port

SECRET = "The merger with Harbourline closes on 9 March; tell nobody."


@pytest.fixture(scope="module")
def local_app():
    """The app as `python3 launch.py` starts it: 127.0.0.1, no login."""
    port = free_port()
    demo = start(parse_args(["--port", str(port)]), demo_backend(), Access(None))
    try:
        demo.base = f"http://127.0.0.1:{port}"
        yield demo
    finally:
        demo.close()


def call(base: str, api_name: str, data: list, session_hash: str | None = None) -> dict:
    """One event through Gradio's queue, as a browser (or an attacker's script) sends it: the final message."""
    config = httpx.get(f"{base}/config", timeout=30).json()
    fn_index = next(i for i, d in enumerate(config["dependencies"]) if d.get("api_name") == api_name)
    session_hash = session_hash or uuid.uuid4().hex
    with httpx.Client(base_url=base, timeout=120) as client:
        joined = client.post("/gradio_api/queue/join", json={"data": data, "fn_index": fn_index,
                                                             "session_hash": session_hash, "event_data": None,
                                                             "trigger_id": config["dependencies"][fn_index].get("id")})
        assert joined.status_code == 200, joined.text
        with client.stream("GET", "/gradio_api/queue/data", params={"session_hash": session_hash}) as events:
            for line in events.iter_lines():
                if line.startswith("data:"):
                    message = json.loads(line[5:])
                    if message.get("msg") == "process_completed":
                        return message
    raise AssertionError("the queue closed without an answer")


def file_data(path: str) -> dict:
    return {"path": path, "meta": {"_type": "gradio.FileData"}, "orig_name": Path(path).name}


def documents_of(message: dict) -> list[str]:
    """The sources in the documents table of an /add_files answer ([] when it was refused)."""
    if not message.get("success"):
        return []
    table = message["output"]["data"][2]
    value = table.get("value", table) if isinstance(table, dict) else {}
    return [row[1] for row in value.get("data", [])]


def test_another_session_cannot_read_the_upload_folder_or_someone_elses_upload(local_app, tmp_path):
    victim_file = tmp_path / "board-minutes.txt"
    victim_file.write_text(SECRET + "\n")
    victim = Client(local_app.base, verbose=False)
    victim.predict([handle_file(str(victim_file))], api_name="/add_files")
    # The victim also uploaded a second file it has not added yet (the raw call the page makes first).
    pending = httpx.post(f"{local_app.base}/gradio_api/upload",
                         files={"files": ("pending.txt", SECRET.encode())}, timeout=30).json()[0]
    upload_folder = get_upload_folder()
    assert os.path.isfile(pending) and Path(pending).resolve().parent.parent == Path(upload_folder).resolve()

    for path in (upload_folder, str(Path(pending).parent), "/etc/passwd", str(tmp_path)):
        answer = call(local_app.base, "add_files", [None, [file_data(path)], ""])
        assert not answer.get("success"), path
        assert SECRET not in json.dumps(answer) and "board-minutes" not in json.dumps(answer)

    # The pending upload is claimed by the first session that adds it; after that no one else may.
    owner = uuid.uuid4().hex
    assert documents_of(call(local_app.base, "add_files", [None, [file_data(pending)], ""], owner)) == \
        ["pending.txt"]
    refused = call(local_app.base, "add_files", [None, [file_data(pending)], ""])
    assert not refused.get("success") and "not files this browser uploaded" in json.dumps(refused)


def test_uploads_get_private_unguessable_folders_and_are_deleted_once_read(local_app):
    first = httpx.post(f"{local_app.base}/gradio_api/upload", files={"files": ("same.txt", b"same bytes\n")},
                       timeout=30).json()[0]
    second = httpx.post(f"{local_app.base}/gradio_api/upload", files={"files": ("same.txt", b"same bytes\n")},
                        timeout=30).json()[0]
    assert first != second  # the same bytes from two users are two files, not one shared path
    for path in (first, second):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(Path(path).parent).st_mode) == 0o700
        assert len(Path(path).parent.name) == 32
    session = uuid.uuid4().hex
    assert documents_of(call(local_app.base, "add_files", [None, [file_data(first)], ""], session)) == ["same.txt"]
    assert not os.path.exists(first) and not os.path.exists(Path(first).parent)  # read, then deleted
    assert os.path.exists(second)


def test_a_page_elsewhere_cannot_reach_the_no_login_app_by_dns_rebinding(local_app):
    assert httpx.get(local_app.base + "/config", timeout=30).status_code == 200
    for host in ("attacker.example", "attacker.example:7860", "127.0.0.1.attacker.example", "localhost.evil"):
        response = httpx.get(local_app.base + "/config", headers={"Host": host}, timeout=30)
        assert response.status_code == 403 and "components" not in response.text, host
        assert httpx.post(local_app.base + "/gradio_api/upload", headers={"Host": host},
                          files={"files": ("x.txt", b"x")}, timeout=30).status_code == 403
    for host in ("localhost", "[::1]:7860", "127.0.0.1"):
        assert httpx.get(local_app.base + "/config", headers={"Host": host}, timeout=30).status_code == 200
