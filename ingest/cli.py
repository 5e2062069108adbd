"""`python launch.py ingest PATH... [--out FILE] [--json] [--line-numbers]`.

Progress (files, then tokens) goes to stderr through tqdm. `--out` writes the exact
context text (UTF-8); `--json` prints the corpus record on stdout; without `--json` a short
table of documents and skipped files is printed instead.
"""

from __future__ import annotations

import argparse
import json
import sys

from .corpus import build_corpus
from .document import Progress
from .errors import IngestError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="launch.py ingest",
                                     description="Turn files, folders and archives into one exact context.")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="files, folders, .zip or .tar.gz archives")
    parser.add_argument("--out", metavar="FILE", help="write the exact context text to FILE")
    parser.add_argument("--json", action="store_true", help="print the token/document report as JSON")
    parser.add_argument("--line-numbers", action="store_true", help="prefix each line of code with its number")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return parser


class _Bar:
    """Feeds `Progress` reports into one tqdm bar on stderr."""

    def __init__(self, enabled: bool):
        self.bar = None
        self.enabled = enabled

    def __call__(self, report: Progress) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=report.files_total, unit="file", file=sys.stderr, dynamic_ncols=True)
        self.bar.set_postfix_str(f"{report.tokens:,} tokens", refresh=False)
        self.bar.update(report.files_done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def main(argv: list[str]) -> int:
    """Run the ingest command; returns the process exit code (0 ok, 2 bad input)."""
    args = _parser().parse_args(argv)
    bar = _Bar(enabled=not args.no_progress)
    try:
        corpus = build_corpus(args.paths, line_numbers=args.line_numbers, progress=bar)
    except IngestError as error:
        bar.close()
        print(f"error: {error}", file=sys.stderr)
        return 2
    bar.close()
    if args.out:
        with open(args.out, "w", encoding="utf-8", newline="") as handle:
            handle.write(corpus.text)
    for item in corpus.skipped:
        print(f"skipped {item.source}: {item.reason}", file=sys.stderr)
    if args.json:
        json.dump(corpus.to_json(), sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        for doc in corpus.documents:
            pages = f" {doc.pages} pages" if doc.pages is not None else ""
            print(f"{doc.index:>5}  {doc.tokens:>10,} tokens  {doc.kind:<4}{pages}  {doc.source}")
        print(f"total {corpus.total_tokens:,} tokens in {len(corpus.documents):,} documents;"
              f" {len(corpus.skipped):,} skipped")
    return 0
