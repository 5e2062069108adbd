"""Likely secrets in ingested files are found (gitleaks' rule table, plus passwords in URLs and quoted
assignments), listed per file and can be left out before anything leaves the machine; the CLI warns on stderr
before it sends a corpus to a remote server. Issue 13, item 10: the formats the old hand-written list missed."""

import os

import pytest

from app import cli
from ingest.secret_scan import entropy_bits, scan_corpus, scan_text, warning
from app.ui.handlers import Workbench
from app.ui.session import Session
from ingest import build_corpus, load_tokenizer
from remote_support.fake_server import FakeServer, send_json

AWS_ID = "AKIA" + "Q3EGJ7RZ5WX2LMNB"  # split so that the repository itself holds no key-shaped string
GITHUB = "ghp_" + "7aB9cD1eF3gH5iJ7kL9mN1oP3qR5sT7uV9wX"
SLACK = "xoxb-" + "2871993021-4411873390-QhZk81LmNpWs"
OPENAI = "sk-proj-" + "Xy7Qm2Lr9Tz4Vb1Nc8Kd3Hf6Pq0Ws5Er7Ty9Ui2Op4As6Df8Gh1Jk3Lz5X" + "T3Blbk" + "FJ" \
    + "Mn2Bv4Cx6Za8Sd0Fg3Hj5Kl7Qw9Er1Ty3Ui5Op7As9Df2Gh4Jk6Lz8Xc0V"
GOOGLE = "AIza" + "SyD4-7fK2mQ9xL1vR8tZ3nB6cW0pJ5hY2uE"
PEM = ("-----BEGIN RSA " + "PRIVATE KEY-----\nMIIEowIBAAKCAQEA7xQm2Lr9Tz4Vb1Nc8Kd3Hf6Pq0Ws5Er7Ty9Ui2Op4As6Df8Gh1Jk3L"
       "\n-----END RSA PRIVATE KEY-----")
HUGGING_FACE = "hf_" + "QmZkTrWpLxNvBsYcHdJgFaKeUoRiMtPqWz"
STRIPE = "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc"
GITLAB = "glpat-" + "xY3kP9mQ2rT7vW1zB5nC"
NPM = "npm_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9" + ".eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIn0"
       ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c")


def repo(folder):
    """A small codebase: two files with secrets, one with look-alikes that are not secrets."""
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "settings.py").write_text(
        f'DEBUG = True\nAWS_ACCESS_KEY_ID = "{AWS_ID}"\nDB_PASSWORD = "q8#Zt!r2Lx9v"\n')
    (folder / "deploy.env").write_text(f"GITHUB_TOKEN={GITHUB}\nSLACK_BOT={SLACK}\n")
    (folder / "src" / "safe.py").write_text(
        'password = os.environ["DB_PASSWORD"]\napi_key = "${API_KEY}"\ntoken = "your-token-here"\n'
        'secret = "changeme-1234"\nheader = "Proxy-Authorization"\npassword = "password1"\n'
        'def token_count(text: str) -> int:\n    return len(text.split())\n')
    return folder


@pytest.mark.parametrize("text, kind", [
    (f"key_id = {AWS_ID}", "aws access token"),
    ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYzq8mNv0PlR", "generic api key"),
    (f"token: {GITHUB}", "github pat"),
    ("github_pat_" + "11ABCDEFG0" * 8 + "12", "github fine grained pat"),
    (f"SLACK={SLACK}", "slack bot token"),
    ("url = https://hooks.slack.com/services/" + "T0A1B2C3D/B4E5F6G7H/" + "Zq81mNv0PlR7xWk2Lp9Tz4Vb", "slack webhook url"),
    (f"OPENAI_API_KEY={OPENAI}", "openai api key"),
    (f"maps_key = {GOOGLE}", "gcp api key"),
    (PEM, "private key"),
    ('db_password = "q8#Zt!r2Lx9v"', "password or secret assignment"),
    ("{'client_secret': 'Zq81mNv0PlR7'}", "generic api key"),
    ("config.auth_token => 'Zq8#mNv0PlR7'", "password or secret assignment"),
    # issue 13, item 10: what the old hand-written list missed
    ("PASSWORD=Zq81mNv0PlR7xW", "generic api key"),                       # .env, unquoted
    ("  password: Zq81mNv0PlR7xW", "generic api key"),                    # YAML, unquoted
    ("DATABASE_URL=postgres://app:Zq81mNv0@db.internal:5432/app", "password in a URL"),
    ("url: postgres://user:pass@host", "password in a URL"),
    (f"HF_TOKEN={HUGGING_FACE}", "huggingface access token"),
    (f"stripe.api_key = {STRIPE}", "stripe access token"),
    (f"CI_TOKEN={GITLAB}", "gitlab pat"),
    (f"Authorization: Bearer {JWT}", "jwt"),
    (f"//registry.npmjs.org/:_authToken={NPM}", "npm access token"),
])
def test_each_kind_is_found_masked_and_placed(text, kind):
    [finding] = scan_text("first line\n" + text + "\n")
    assert finding.kind == kind and finding.line == 2
    assert finding.excerpt.endswith("characters)") and len(finding.excerpt.split("…")[0]) == 4


@pytest.mark.parametrize("text", [
    'password = os.environ["DB_PASSWORD"]', 'api_key = "${API_KEY}"', 'token = "your-token-here"',
    'secret = "changeme-1234"', 'password = "password1"', 'header = "Proxy-Authorization"',
    'password = "hunter2"', 'token = "aaaaaaaaaaaa"', "sk-short", "the ghp_ prefix alone",
])
def test_placeholders_and_look_alikes_are_not_findings(text):
    assert scan_text(text) == []


def test_ordinary_code_gives_no_findings():
    stdlib = os.path.dirname(os.__file__)
    for name in ("getpass.py", "netrc.py", "smtplib.py", "ftplib.py", "imaplib.py", "secrets.py", "hmac.py"):
        with open(os.path.join(stdlib, name), encoding="utf-8") as handle:
            assert scan_text(handle.read()) == [], name
    assert entropy_bits("aaaa") == 0 and entropy_bits("abcd") == 2


def test_findings_are_listed_per_file_and_the_files_can_be_left_out(tmp_path):
    from test_ui_helpers import demo_backend

    workbench, session = Workbench(demo_backend()), Session()
    workbench.add_files(session, [repo(tmp_path / "repo")])
    assert {s: [(f.kind, f.line) for f in fs] for s, fs in session.secrets.items()} == {
        "repo/deploy.env": [("github pat", 1), ("slack bot token", 2)],
        "repo/src/settings.py": [("aws access token", 2), ("password or secret assignment", 3)]}
    text = warning(session.secrets, "http://gpu-host:8000/v1")
    assert "**2 files may hold secrets**" in text and "http://gpu-host:8000/v1" in text
    assert "repo/deploy.env: 2 likely secrets (github pat line 1, slack bot token line 2)" in text
    assert GITHUB not in text and AWS_ID not in text
    assert sorted(workbench.exclude_secrets(session)) == ["repo/deploy.env", "repo/src/settings.py"]
    assert session.secrets == {} and GITHUB not in session.corpus.text and AWS_ID not in session.corpus.text
    assert [d.source for d in session.corpus.documents] == ["repo/", "repo/src/safe.py"]


def test_line_numbers_count_in_the_file_even_with_numbered_code(tmp_path):
    corpus = build_corpus([repo(tmp_path / "repo")], tokenizer=load_tokenizer(), line_numbers=True)
    assert [(f.kind, f.line) for f in scan_corpus(corpus)["repo/src/settings.py"]] == \
        [("aws access token", 2), ("password or secret assignment", 3)]


def test_ask_with_a_remote_backend_warns_on_stderr_before_sending(tmp_path, capsys):
    seen_stderr = []

    def chat(handler, body):
        seen_stderr.append(capsys.readouterr().err)  # what had been printed when the corpus arrived
        send_json(handler, 503, {"error": {"message": "stopping the test here"}})

    with FakeServer(chat=chat) as server:
        code = cli.main(["ask", str(repo(tmp_path / "repo")), "-q", "What is deployed?", "--backend", "openai",
                         "--base-url", server.url])
    assert code != 0 and len(server.requests) == 1
    warned = [line for line in seen_stderr[0].splitlines() if line.startswith("warning: likely secret")]
    assert len(warned) == 2 and server.url in warned[0]
    assert "repo/deploy.env: 2 likely secrets (github pat line 1, slack bot token line 2)" in warned[0]
    assert GITHUB not in seen_stderr[0]


@pytest.mark.parametrize("name", ["a`b.env", "``x``.env", "`start.env", "x\n# Heading\n- item.env", "a` **bold** `b.env"])
def test_file_names_cannot_break_out_of_the_code_span_in_the_warning(name):
    """Issue 13, item 9: a back-tick or a newline in a file name used to end the code span (or start a block)."""
    from ingest.secret_scan import Finding, code_span

    text = warning({name: [Finding("github pat", 1, "ghp_… (40 characters)")]})
    item = text.rsplit("\n\n", 1)[1]
    assert item.count("\n") == 0 and item.startswith("- `")
    fence = "`" * (len(item[2:]) - len(item[2:].lstrip("`")))
    body = item[2 + len(fence):]
    assert body.endswith(fence) and fence not in body[:-len(fence)]
    assert code_span(name).strip("`").strip() == name.replace("\n", "\\n")
