"""Peak memory and time of importing hostile conversation files (issue 25, item 6): a 30 MB document inside the
JSON, and 200,000 exchanges. Runs `Workbench.import_conversation` in this process over the demo model's engine
and prints one JSON line per case: seconds, peak RSS growth (VmHWM reset before each case) and the outcome.

    .venv/bin/python bench/hostile_import.py [--root DIR]   # DIR: the checkout whose code runs (default: this one)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

MB = 2**20


def rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def document_record(text: str) -> dict:
    from ingest import context

    body = context.escape_content(text)
    wrapped = context.header(1, "big.txt", "text", None) + body + context.FOOTER
    return {"index": 1, "source": "big.txt", "kind": "text", "pages": None, "text": wrapped, "page_spans": [],
            "line_numbers": False, "first_line": 2, "is_tree": False, "root": ""}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default=str(Path(__file__).resolve().parent.parent))
    args = parser.parse_args()
    sys.path.insert(0, args.root)
    from app.backend import open_backend
    from app.settings import BackendSettings
    from app.ui.handlers import Workbench
    from app.ui.session import Session

    workbench = Workbench(open_backend(BackendSettings(model="demo", disk_cache=False)))
    sentence = "The harbour master logs every ship that enters the port before dawn. "
    small = {"line_numbers": False, "skipped": [], "documents": [document_record("A short note.\n")]}
    cases = {
        "document30mb": {"exchanges": [], "corpus": {"line_numbers": False, "skipped": [],
                                                     "documents": [document_record(sentence * (30 * MB // len(sentence)))]}},
        "exchanges200k": {"exchanges": [{"question": f"Question {i}?", "answer": f"Answer {i}."}
                                        for i in range(200_000)], "corpus": small},
    }
    folder = Path(tempfile.mkdtemp())
    for name, record in cases.items():
        path = folder / f"{name}.json"
        path.write_text(json.dumps({"system_prompt": "", **record}))
        del record
        Path("/proc/self/clear_refs").write_text("5")
        base, started = rss_mb("VmRSS"), time.perf_counter()
        try:
            session = workbench.import_conversation(Session(), path)
            outcome = f"imported: {len(session.exchanges):,} exchanges, {session.corpus.total_tokens:,} tokens"
        except Exception as err:  # the refusal being measured
            outcome = f"{type(err).__name__}: {err}"
        print(json.dumps({"case": name, "file_mb": round(path.stat().st_size / MB, 1),
                          "seconds": round(time.perf_counter() - started, 2),
                          "peak_growth_mb": round(rss_mb("VmHWM") - base), "outcome": outcome[:160]}), flush=True)
        path.unlink()


if __name__ == "__main__":
    main()
