"""A share link faces the internet: failed logins are rate-limited, uploads are capped in size and count, and
Gradio's file route serves nothing outside the files uploaded to this app. Checked over HTTP on a running app."""

import contextlib
from pathlib import Path

import httpx
import pytest

from app.ui.app import parse_args, start
from app.ui.app import _lan_address
from app.sharing.auth import Access, LockedOut, LoginGuard, _client_address
from app.sharing.documents import TooManyFiles
from app.ui.handlers import Workbench
from app.ui.session import Session
from test_ui_helpers import demo_backend
from serving import free_port

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def from_address(address: str):
    token = _client_address.set(address)
    try:
        yield
    finally:
        _client_address.reset(token)


def test_an_address_is_locked_out_after_five_failures_until_the_window_passes():
    now = [1000.0]
    guard = LoginGuard([("ada", "correct horse")], max_failures=5, window_s=300, clock=lambda: now[0])
    with from_address("203.0.113.9"):
        assert not any(guard("ada", f"guess{i}") for i in range(5))
        with pytest.raises(LockedOut, match="locked for 5 more minutes") as refused:  # even the right password
            guard("ada", "correct horse")
        assert refused.value.status_code == 429 and guard.locked_out("ada", "203.0.113.9")
        now[0] += 301
        assert guard("ada", "correct horse") and not guard.locked_out("ada", "203.0.113.9")


def test_failures_from_one_network_address_lock_that_address_out_for_every_name():
    guard = LoginGuard([("ada", "pw-a"), ("bob", "pw-b")], max_failures=3)
    with from_address("203.0.113.9"):
        assert not any(guard(name, "wrong") for name in ("ada", "bob", "ada"))
        with pytest.raises(LockedOut):
            guard("bob", "pw-b")
        assert guard.locked_out(address="203.0.113.9")
    with from_address("198.51.100.7"):
        assert guard("ada", "pw-a")  # the lock-out limits the address that failed, not the user everywhere
    assert guard("bob", "pw-b")  # and the owner on this computer is never locked out


def test_the_owner_on_this_computer_is_never_locked_out_and_lock_outs_are_logged():
    said = []
    guard = LoginGuard([("ada", "pw")], max_failures=5, say=said.append)
    for address in ("127.0.0.1", "::1"):
        with from_address(address):
            assert not any(guard("ada", "wrong") for _ in range(50))
            assert guard("ada", "pw")
    assert said == []
    with from_address("203.0.113.9"):
        for _ in range(7):
            guard("ada", "wrong") if not guard.locked_out("ada", "203.0.113.9") else None
    assert said == ["omnibus: 5 wrong passwords in 5 minutes: logins for address 203.0.113.9, user ada are "
                    "locked for 5 minutes"]


def test_through_a_share_link_the_user_name_is_limited():
    guard = LoginGuard([("ada", "pw")], max_failures=5, tunnel=True)  # every outside try comes from loopback
    with from_address("127.0.0.1"):
        assert not any(guard("ada", "wrong") for _ in range(5))
        with pytest.raises(LockedOut):
            guard("ada", "pw")


def test_unknown_names_are_not_tracked():
    guard = LoginGuard([("ada", "pw")])
    for i in range(20_000):
        guard(f"nobody{i}", "x")
    assert guard.failures == {} and guard("ada", "pw")


def test_one_upload_with_too_many_files_is_refused_before_reading_any(tmp_path):
    paths = []
    for i in range(4):
        (tmp_path / f"f{i}.txt").write_text(f"file {i}\n")
        paths.append(tmp_path / f"f{i}.txt")
    workbench, session = Workbench(demo_backend(), max_upload_files=3), Session()
    with pytest.raises(TooManyFiles, match="4 files; at most 3"):
        workbench.add_files(session, paths)
    assert session.corpus is None
    workbench.add_files(session, paths[:3])
    assert len(session.corpus.documents) == 3


@pytest.fixture(scope="module")
def shared_app():
    """The app as `--listen --auth` starts it (login required), on a free port, with a 1 MB upload cap."""
    port = free_port()
    args = parse_args(["--listen", "--port", str(port), "--auth", "ada:correct horse", "--max-upload-mb", "1"])
    demo = start(args, demo_backend(), Access([("ada", "correct horse")]))
    try:
        assert isinstance(demo.app.auth, LoginGuard)  # what Gradio's /login calls
        demo.base = f"http://127.0.0.1:{port}"
        yield demo
    finally:
        demo.close()


def _logged_in(base: str) -> httpx.Client:
    client = httpx.Client(base_url=base, timeout=30)
    assert client.post("/login", data={"username": "ada", "password": "correct horse"}).status_code == 200
    return client


def test_the_running_app_locks_out_the_guessing_address_and_says_so(shared_app):
    """From this computer's network address (not loopback), as another machine on the network would."""
    client = httpx.Client(base_url=shared_app.base.replace("127.0.0.1", _lan_address()), timeout=30)
    for i in range(4):
        assert client.post("/login", data={"username": "ada", "password": f"g{i}"}).status_code == 400
    assert client.post("/login", data={"username": "ada", "password": "g4"}).status_code == 400
    locked = client.post("/login", data={"username": "ada", "password": "correct horse"})
    assert locked.status_code == 429 and "locked for 5 more minutes" in locked.json()["detail"]
    assert "Incorrect" not in locked.text
    assert _logged_in(shared_app.base)  # the owner on this computer still gets in
    page = httpx.get(shared_app.base + "/", timeout=30).text
    assert "Omnibus" in page and "omnibus-lockout" in page  # the login page names the app, shows lock-outs
    shared_app.app.auth.failures.clear()


@pytest.mark.parametrize("path", ["/etc/passwd", "/etc/../etc/passwd", "..%2F..%2F..%2Fetc%2Fpasswd",
                                  "%2Fetc%2Fpasswd", str(ROOT / "README.md"), str(ROOT / "app" / "ui_auth.py"),
                                  "~/.ssh/id_rsa", "/proc/self/environ"])
def test_the_file_route_serves_nothing_outside_the_uploads(shared_app, path):
    anonymous = httpx.Client(base_url=shared_app.base, timeout=30)
    assert anonymous.get(f"/gradio_api/file={path}").status_code in (401, 403)
    response = _logged_in(shared_app.base).get(f"/gradio_api/file={path}")
    assert response.status_code in (403, 404), (path, response.status_code)
    assert "root:" not in response.text and "LoginGuard" not in response.text


def test_an_upload_is_served_to_a_logged_in_browser_only_and_oversized_ones_are_refused(shared_app):
    client = _logged_in(shared_app.base)
    response = client.post("/gradio_api/upload", files={"files": ("note.txt", b"harbour note\n")})
    assert response.status_code == 200
    [uploaded] = response.json()
    assert client.get(f"/gradio_api/file={uploaded}").text == "harbour note\n"
    assert httpx.get(f"{shared_app.base}/gradio_api/file={uploaded}").status_code == 401
    big = client.post("/gradio_api/upload", files={"files": ("big.txt", b"x" * 1_500_000)})
    assert big.status_code == 413


def test_files_with_likely_secrets_can_be_left_out_through_the_app(shared_app, tmp_path):
    from gradio_client import Client, handle_file

    (tmp_path / "deploy.env").write_text("GITHUB_TOKEN=ghp_" + "7aB9cD1eF3gH5iJ7kL9mN1oP3qR5sT7uV9wX\n")
    (tmp_path / "notes.txt").write_text("Harbour notes.\n")
    client = Client(shared_app.base, auth=("ada", "correct horse"), verbose=False)
    client.predict([handle_file(str(tmp_path / "deploy.env")), handle_file(str(tmp_path / "notes.txt"))],
                   api_name="/add_files")
    outputs = client.predict(api_name="/exclude_secrets")
    documents = outputs[1]["value"]["data"]  # the documents table, after the files were left out
    assert [row[1] for row in documents] == ["notes.txt"]
