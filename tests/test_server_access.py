"""The API and MCP mounted beside the app's page (`launch.py --listen`, its own process): a key is required,
made and printed once at start (the key of the login made for --listen), wrong keys are refused, the right one
answers."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from serving import free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """`launch.py --model demo --listen` on a free port; (base URL on 127.0.0.1, the printed API key)."""
    tmp = tmp_path_factory.mktemp("listen")
    port = free_port()
    log_path = tmp / "app.log"
    env = {**os.environ, "OMNIBUS_NO_BOOTSTRAP": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), "--model", "demo", "--listen",
                                    "--port", str(port), "--no-disk-cache"], env=env, stdout=log,
                                   stderr=subprocess.STDOUT, cwd=tmp)
    try:
        deadline, key = time.monotonic() + 240, None
        while key is None:
            assert process.poll() is None, log_path.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "no API key printed:\n" + log_path.read_text(errors="replace")[-3000:]
            # --listen makes the login `omnibus`; its API key is printed on a line of its own
            found = re.search(r"^\s+omnibus: (omnibus-\S+)", log_path.read_text(errors="replace"), re.M)
            key = found.group(1) if found else None
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}", key
    finally:
        process.terminate()
        process.wait(30)


def test_the_api_beside_the_page_needs_the_printed_key(app):
    base, key = app
    missing = httpx.get(base + "/v1/models", timeout=30)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
    wrong = httpx.get(base + "/v1/models", headers={"Authorization": "Bearer not-the-key"}, timeout=30)
    assert wrong.status_code == 401
    assert httpx.post(base + "/mcp", json={}, timeout=30).status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base + "/v1", api_key="not-the-key", max_retries=0).models.list()
    client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=300)
    assert client.models.list().data[0].id == "demo"
    reply = client.chat.completions.create(model="demo", max_tokens=4, messages=[
        {"role": "user", "content": "The secret launch code is PELICAN-42.\n\nWhat is the secret launch code?"}])
    assert reply.usage.completion_tokens > 0 and reply.choices[0].message.content
