"""Shared by the UI tests: the demo model loaded once per test run, and a small real PDF + DOCX corpus."""

from __future__ import annotations

import functools
from pathlib import Path

import docx

from test_ingest_helpers import make_pdf

FACT = "PELICAN-42"
QUESTION = "What is the secret launch code?"


@functools.cache
def demo_backend():
    """The real SmolLM2 demo model on the CPU (about 20-30 s to load, so once per run)."""
    from app.backend import open_backend
    from app.settings import BackendSettings

    return open_backend(BackendSettings(model="demo", disk_cache=False))


def make_documents(folder: Path) -> list[Path]:
    """A two-page PDF and a DOCX that holds the planted fact (~150 tokens together).

    The fact sits in the last document: the 135M demo model finds it reliably there.
    """
    folder.mkdir(parents=True, exist_ok=True)
    pdf = make_pdf(folder / "harbour-report.pdf", [
        "Harbour report, spring.\nShipping volumes rose and two new cranes arrived.",
        "Staff.\nThe lighthouse keeper is Ada Brightwater. She lights the lamp at dusk.",
    ])
    word = docx.Document()
    word.add_heading("Security notes", level=1)
    word.add_paragraph(f"The secret launch code is {FACT}.")
    word.add_paragraph("Keep it in the safe in the harbour office.")
    path = folder / "security-notes.docx"
    word.save(path)
    return [pdf, path]


