"""`launch.py mcp`, MCP over stdin/stdout as an MCP host starts it: the official `mcp` client lists the tools and
the saved corpora while the demo model is still loading, then adds a file, loads it and asks (in free text and
in JSON under a schema); and nothing but protocol messages ever reaches stdout."""

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema

ROOT = Path(__file__).resolve().parent.parent
CODE = "PELICAN-42"
DOCUMENT = f"The secret launch code is {CODE}.\n"
QUESTION = "What is the secret launch code?"
SCHEMA = {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"],
          "additionalProperties": False}
READY = "MCP tools ready"  # the log line (stderr) once the model is loaded


def _environment(tmp_path: Path) -> dict:
    return dict(os.environ, OMNIBUS_NO_BOOTSTRAP="1", XDG_CACHE_HOME=str(tmp_path / "cache"))


def test_the_official_client_lists_loads_and_asks_over_stdio(tmp_path):
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    (tmp_path / "log.txt").write_text(DOCUMENT)
    errors = tmp_path / "stderr.txt"
    server = StdioServerParameters(command=sys.executable, args=[str(ROOT / "launch.py"), "mcp", "--model", "demo"],
                                   env=_environment(tmp_path), cwd=str(ROOT))

    async def session():
        with errors.open("w") as errlog:
            async with stdio_client(server, errlog=errlog) as (read, write):
                async with ClientSession(read, write) as mcp:
                    init = await mcp.initialize()
                    names = sorted(t.name for t in (await mcp.list_tools()).tools)
                    corpora = await mcp.call_tool("list_corpora", {})
                    before = errors.read_text()  # what the server had logged when list_corpora was answered
                    added = (await mcp.call_tool("add_files", {"paths": [str(tmp_path / "log.txt")]})).content
                    loaded = (await mcp.call_tool("load", {})).content[0].text
                    asked = await mcp.call_tool("ask", {"question": QUESTION, "max_tokens": 24})
                    as_json = await mcp.call_tool("ask", {"question": QUESTION, "max_tokens": 48,
                                                          "json_schema": SCHEMA})
                    saved = await mcp.call_tool("list_corpora", {})
                    return init, names, corpora, before, added, loaded, asked, as_json, saved

    init, names, corpora, before, added, loaded, asked, as_json, saved = asyncio.run(session())
    assert init.serverInfo.name == "omnibus"
    assert names == ["add_files", "ask", "list_corpora", "load"]
    assert not corpora.isError and corpora.structuredContent["result"] == []  # a fresh cache: none saved yet
    assert READY not in before  # answered while the model was still loading
    assert "log.txt" in added[0].text and loaded.startswith("Loaded")
    assert not asked.isError and CODE in asked.structuredContent["answer"]
    assert not as_json.isError, as_json.content
    value = json.loads(as_json.structuredContent["answer"])
    jsonschema.validate(value, SCHEMA)
    assert as_json.structuredContent["json"] == value
    assert [c["name"] for c in saved.structuredContent["result"]] == ["log.txt"]  # load saved it on disk


def test_stdout_carries_only_protocol_messages_while_the_model_loads(tmp_path):
    process = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), "mcp", "--model", "demo"], cwd=ROOT,
                               env=_environment(tmp_path), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    messages = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "list_corpora", "arguments": {}}},
        # load waits for the model: its answer (an error, as nothing was added) comes once the model is loaded
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "load", "arguments": {}}},
    ]
    try:
        for message in messages:
            process.stdin.write(json.dumps(message) + "\n")
            process.stdin.flush()
        answers = {}
        while 3 not in answers:
            line = process.stdout.readline()
            assert line, f"the server closed stdout; stderr:\n{process.stderr.read()[-3000:]}"
            answer = json.loads(line)  # every line on stdout is a JSON-RPC message
            answers[answer.get("id")] = answer
        process.stdin.close()
        rest = process.stdout.read()
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert all(json.loads(line) for line in rest.splitlines())
    assert answers[1]["result"]["serverInfo"]["name"] == "omnibus"
    assert answers[2]["result"]["isError"] is False
    assert answers[3]["result"]["isError"] is True and "add_files first" in answers[3]["result"]["content"][0]["text"]
    logged = process.stderr.read()
    assert READY in logged and "loading model demo" in logged  # the model's loading went to stderr
