"""Coverage-guided fuzzing of the loaders (atheris, optional): bad input must give FileRejected, never anything else.

    .venv/bin/pip install atheris                    # optional; the script says so and exits 0 without it
    .venv/bin/python bench/fuzz_loaders.py --seconds 60 [--target text|docx|pdf|zip|all]

Each target feeds mutated bytes to one loader in this process (no worker: atheris needs the code in-process to
see its coverage). The seeds are small real files made here (a PDF, a DOCX, text in several encodings, a zip),
so mutations start from valid structure. Any exception other than FileRejected is a finding: the input is
written to bench/fuzz-findings/ and the run stops with a traceback. pypdfium2 is native code that atheris cannot
instrument; its crashes (not Python exceptions) are what the parser worker's kill-and-skip is for.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def seeds() -> dict[str, list[bytes]]:
    """Small valid inputs per target."""
    import docx

    from test_ingest_helpers import make_pdf

    with tempfile.TemporaryDirectory() as tmp:
        pdf = make_pdf(Path(tmp) / "a.pdf", ["Hello (world)\nSecond line", None]).read_bytes()
        document = docx.Document()
        document.add_paragraph("A paragraph.")
        table = document.add_table(rows=2, cols=2)
        table.cell(0, 0).text = "cell"
        document.save(Path(tmp) / "a.docx")
        docx_bytes = (Path(tmp) / "a.docx").read_bytes()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("src/a.py", "print('a')\n")
        archive.writestr("docs/b.md", "# B\n")
    texts = ["plain\n".encode(), "Grüße\n".encode("cp1252"), "日本語\n".encode("shift_jis"),
             "BOM\n".encode("utf-16"), b"<document index=\"1\">\x00\xff"]
    return {"pdf": [pdf], "docx": [docx_bytes], "text": texts, "zip": [buffer.getvalue()]}


def target(kind: str):
    """The function atheris calls with each input."""
    from ingest import Limits, formats
    from ingest.archive import open_archive
    from ingest.errors import FileRejected
    from ingest.isolation import _load as load_as_the_worker_does

    limits = Limits(max_archive_total_bytes=5_000_000, max_file_bytes=5_000_000)
    name = {"pdf": "f.pdf", "docx": "f.docx", "text": "f.txt", "zip": "f.zip"}[kind]

    def one(data: bytes) -> None:
        try:
            if kind == "zip":  # archives are read from a file: list them, then read every member
                with tempfile.NamedTemporaryFile(suffix=".zip") as handle:
                    handle.write(data)
                    handle.flush()
                    archive = open_archive(name, Path(handle.name), limits, [])
                    try:
                        for member in archive.members:
                            try:
                                member.read()
                            except FileRejected:
                                pass
                    finally:
                        archive.close()
            elif kind == "docx":
                load_as_the_worker_does(name, data, limits)  # the zip checks, then python-docx
            else:
                formats.extract(name, data, limits)
        except FileRejected:
            pass
        except Exception:
            folder = ROOT / "bench" / "fuzz-findings"
            folder.mkdir(exist_ok=True)
            (folder / f"{kind}-{os.getpid()}.bin").write_bytes(data)
            raise

    return one


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60, help="time per target")
    parser.add_argument("--target", default="all", choices=["all", "text", "docx", "pdf", "zip"])
    args, rest = parser.parse_known_args()
    try:
        import atheris
    except ImportError:
        print("atheris is not installed (pip install atheris); nothing to fuzz", file=sys.stderr)
        return 0
    kinds = ["text", "docx", "zip", "pdf"] if args.target == "all" else [args.target]
    if len(kinds) > 1:  # atheris.Fuzz never returns: one child process per target
        import subprocess

        for kind in kinds:
            code = subprocess.call([sys.executable, __file__, "--seconds", str(args.seconds), "--target", kind])
            if code:
                return code
        return 0
    kind = kinds[0]
    corpus_dir = Path(tempfile.mkdtemp(prefix=f"fuzz-{kind}-"))
    for i, seed in enumerate(seeds()[kind]):
        (corpus_dir / f"seed{i}").write_bytes(seed)
    with atheris.instrument_imports(include=["ingest", "docx", "pypdf", "charset_normalizer", "zipfile"]):
        one = target(kind)
    print(f"fuzzing {kind} for {args.seconds} s", file=sys.stderr)
    findings = ROOT / "bench" / "fuzz-findings"
    findings.mkdir(exist_ok=True)
    atheris.Setup([sys.argv[0], f"-max_total_time={args.seconds}", "-rss_limit_mb=3000", "-max_len=200000",
                   f"-artifact_prefix={findings}/", str(corpus_dir), *rest], one)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
