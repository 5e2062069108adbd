"""Peak memory and time of the API server for hostile bodies (issue 25, items 3): a 600 MB chunked body and a
40 MB message (and a 3 MB one, under the body cap) sent to `launch.py serve --model demo`. Prints one JSON line per case: the server's peak RSS growth
(VmHWM, so nothing between two samples is missed), the seconds to the answer and its status.

    .venv/bin/python bench/hostile_bodies.py [--root DIR]   # DIR: the checkout to serve (default: this one)
Each case gets a fresh server, so one case's peak does not hide the next.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from serving import free_port, stop_process, wait_until_serving  # noqa: E402

MB = 2**20


def rss_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def chunked_junk(total: int, piece: int = MB):
    block = b"x" * piece
    for _ in range(total // piece):
        yield block


def big_message(chars: int) -> bytes:
    return json.dumps({"model": "demo", "max_tokens": 4,
                       "messages": [{"role": "user", "content": "word " * (chars // 5)}]}).encode()


def run_case(root: Path, name: str, send) -> dict:
    port = free_port()
    log_path = Path(f"/tmp/hostile-bodies-{port}.log")
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "launch.py", "serve", "--model", "demo", "--port", str(port),
                                    "--no-disk-cache"], cwd=root, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "OMNIBUS_NO_BOOTSTRAP": "1"})
        try:
            wait_until_serving(process, f"http://127.0.0.1:{port}/v1/models", 240, "serve", log_path, poll=1)
            Path(f"/proc/{process.pid}/clear_refs").write_text("5")  # the peak so far (the model's load) is reset
            base = rss_kb(process.pid, "VmRSS")
            started = time.perf_counter()
            status, text = send(port)
            seconds = time.perf_counter() - started
            peak = rss_kb(process.pid, "VmHWM")
        finally:
            stop_process(process)
    return {"case": name, "status": status, "seconds": round(seconds, 2),
            "rss_before_mb": round(base / 1024), "peak_growth_mb": round((peak - base) / 1024),
            "answer": text[:160]}


def post(port: int, body, chunked: bool, content_type: str = "application/json"):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
    try:
        headers = {"Content-Type": content_type}
        connection.request("POST", "/v1/chat/completions", body=body, headers=headers, encode_chunked=chunked)
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    except (BrokenPipeError, ConnectionResetError) as err:  # the server closed the connection on a refused body
        try:
            response = connection.getresponse()
            return response.status, response.read().decode(errors="replace")
        except Exception:
            return 0, f"connection closed: {err}"
    finally:
        connection.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default=str(Path(__file__).resolve().parent.parent))
    parser.add_argument("--cases", default="chunked600,message40")
    args = parser.parse_args()
    root = Path(args.root)
    cases = {"chunked600": lambda port: post(port, chunked_junk(600 * MB), chunked=True),
             "message40": lambda port: post(port, big_message(40 * MB), chunked=False),
             # under the demo's 4 MB body cap, over its character bound (8,192 tokens x 128 characters)
             "message3": lambda port: post(port, big_message(3 * MB), chunked=False)}
    for name in args.cases.split(","):
        print(json.dumps(run_case(root, name, cases[name])), flush=True)


if __name__ == "__main__":
    main()
