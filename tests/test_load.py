"""The app as people run it (`launch.py --model demo` in its own process): a SIGKILLed app starts again cleanly
on the same port, and four `gradio_client` sessions asking at once are queued in order, each gets the answer
about its own documents, nothing mixes, and the server's memory stays flat across rounds."""

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from test_ingest_helpers import make_pdf
from serving import free_port, stop_process, wait_until_serving

ROOT = Path(__file__).resolve().parents[1]
CODES = ["PELICAN-42", "OSPREY-17", "HERON-88", "GANNET-63"]
QUESTION = "What is the secret launch code?"
ROUNDS = 3


def _start(port: int, tmp: Path) -> subprocess.Popen:
    env = {**os.environ, "OMNIBUS_NO_BOOTSTRAP": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    log = open(tmp / f"app-{time.monotonic_ns()}.log", "wb")
    process = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), "--model", "demo", "--port", str(port),
                                "--no-disk-cache"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
    process.log_path = log.name
    try:
        wait_until_serving(process, f"http://127.0.0.1:{port}/", 150, "the app", log.name)
    except AssertionError:
        process.kill()
        raise
    return process


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (started from any of its threads)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The app started, given a PDF (so its parser worker runs), SIGKILLed, and started again on the same port."""
    from gradio_client import Client, handle_file

    tmp = tmp_path_factory.mktemp("load")
    port = free_port()
    first = _start(port, tmp)
    pdf = make_pdf(tmp / "report.pdf", ["Quarterly harbour report."])
    Client(f"http://127.0.0.1:{port}/", verbose=False).predict([handle_file(str(pdf))], api_name="/add_files")
    workers = _children(first.pid)
    assert workers, "the PDF was not parsed in a worker process"
    first.send_signal(signal.SIGKILL)
    first.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{w}").exists() for w in workers):
        time.sleep(0.1)
    orphans = [w for w in workers if Path(f"/proc/{w}").exists()
               and Path(f"/proc/{w}/stat").read_text().rpartition(")")[2].split()[0] != "Z"]
    second = _start(port, tmp)  # same port, right away
    try:
        yield {"url": f"http://127.0.0.1:{port}/", "process": second, "orphans": orphans, "tmp": tmp}
    finally:
        stop_process(second)


def test_a_killed_app_restarts_cleanly_on_the_same_port(app):
    from gradio_client import Client, handle_file

    assert app["orphans"] == [], "the killed app's parser worker outlived it"
    note = app["tmp"] / "restart.txt"
    note.write_text(f"The secret launch code is {CODES[0]}.\n")
    client = Client(app["url"], verbose=False)
    client.predict([handle_file(str(note))], api_name="/add_files")
    assert client.predict(api_name="/load").startswith("**Ready")


def _session(url: str, tmp: Path, n: int):
    from gradio_client import Client, handle_file

    path = tmp / f"notes-{n}.txt"
    path.write_text(f"Harbour notes, office {n}.\nThe ferry leaves at nine.\nThe secret launch code is {CODES[n]}.\n")
    client = Client(url, verbose=False)
    client.predict([handle_file(str(path))], api_name="/add_files")
    return client


def _ask(client, stagger: float):
    client.predict(api_name="/clear_chat")  # every round asks the same first question: state stays the same size
    time.sleep(stagger)
    submitted = time.monotonic()
    chat, *_ = client.predict(QUESTION, 40, 0.0, api_name="/ask")
    answer = chat[-1]["content"]
    text = answer if isinstance(answer, str) else " ".join(part.get("text", "") for part in answer)
    return submitted, time.monotonic(), text


def test_concurrent_sessions_queue_in_order_get_their_own_answers_and_memory_stays_flat(app):
    sessions = [_session(app["url"], app["tmp"], n) for n in range(len(CODES))]
    words = [code.split("-")[0] for code in CODES]  # the bird names: distinct in every token
    # One at a time first, in the order the queue will serve them (so each load follows the same one as later).
    _ask(sessions[-1], 0)
    alone = [_ask(client, 0)[2] for client in sessions]
    assert sum(words[n] in text for n, text in enumerate(alone)) >= len(sessions) // 2, alone  # the demo model
    pid, rss, timings = app["process"].pid, [], []
    with ThreadPoolExecutor(len(sessions)) as pool:
        for round_no in range(ROUNDS):
            started = time.monotonic()
            results = list(pool.map(_ask, sessions, [0.4 * n for n in range(len(sessions))]))
            timings.append(time.monotonic() - started)
            rss.append(_rss_mb(pid))
            for n, (_, _, text) in enumerate(results):
                assert text == alone[n], (round_no, n, text, alone[n])  # its own answer, as if it were alone
                assert not any(word in text for word in words if word != words[n]), (round_no, n, text)
            finished = [done for _, done, _ in results]
            assert finished == sorted(finished), "answers did not come back in the order they were asked"
    print(f"load: {len(sessions)} sessions x {ROUNDS} rounds; round times "
          + ", ".join(f"{t:.1f} s" for t in timings) + "; server RSS " + ", ".join(f"{r:.0f}" for r in rss) + " MiB")
    assert max(timings) < 90
    assert rss[-1] - rss[0] < 40, rss  # no growth per round
