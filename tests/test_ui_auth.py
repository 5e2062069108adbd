"""Who may use the app: the login rules, and a real server on the network that asks for a login."""

import json
import re

import httpx
import pytest

from app.ui.app import parse_args, start
from app.sharing.auth import DEFAULT_USER, AuthError, decide, parse_pair, read_auth_file
from test_ui_helpers import demo_backend
from serving import free_port


def test_local_serving_needs_no_login():
    assert decide(auth=None, auth_file=None, no_auth=False, exposed=False).credentials is None


def test_exposed_serving_makes_a_random_password_and_says_it_once():
    first = decide(auth=None, auth_file=None, no_auth=False, exposed=True)
    second = decide(auth=None, auth_file=None, no_auth=False, exposed=True)
    [(user, password)] = first.credentials
    assert user == DEFAULT_USER and len(password) >= 12 and password in first.notice
    assert second.credentials != first.credentials


def test_given_credentials_win(tmp_path):
    path = tmp_path / "logins"
    path.write_text("# team\nana:s3cret:with:colons\n\nbo:pw\n")
    assert read_auth_file(str(path)) == [("ana", "s3cret:with:colons"), ("bo", "pw")]
    access = decide(auth="me:pw", auth_file=str(path), no_auth=False, exposed=True)
    assert access.credentials[0] == ("me", "pw") and len(access.credentials) == 3 and not access.notice


def test_bad_credentials_are_refused(tmp_path):
    with pytest.raises(AuthError, match="user:password"):
        parse_pair("nocolon")
    with pytest.raises(AuthError, match="cannot read"):
        read_auth_file(str(tmp_path / "missing"))
    with pytest.raises(AuthError, match="cannot be combined"):
        decide(auth="a:b", auth_file=None, no_auth=True, exposed=True)


def test_no_auth_on_the_network_warns():
    access = decide(auth=None, auth_file=None, no_auth=True, exposed=True)
    assert access.credentials is None and "WARNING" in access.notice


def test_listen_without_credentials_shows_the_login_page_not_the_app():
    port = free_port()
    args = parse_args(["--listen", "--port", str(port)])
    access = decide(auth=None, auth_file=None, no_auth=False, exposed=args.listen)
    demo = start(args, demo_backend(), access)
    try:
        base = f"http://127.0.0.1:{port}"
        page = httpx.get(base + "/").text
        config = re.search(r"window\.gradio_config = (\{.*?\});", page).group(1)
        assert '"auth_required":true' in config and '"components":[]' in config
        assert "<b>Omnibus</b>: log in as <b>omnibus</b>" in json.loads(config)["auth_message"]  # the user name
        assert "Load into the model" not in page
        assert httpx.get(base + "/config").status_code == 401
        assert httpx.get(base + "/gradio_api/info").status_code == 401

        client = httpx.Client()
        user, password = access.credentials[0]
        assert client.post(base + "/login", data={"username": user, "password": "wrong"}).status_code == 400
        assert client.post(base + "/login", data={"username": user, "password": password}).status_code == 200
        assert "Load into the model" in client.get(base + "/config").text
    finally:
        demo.close()
