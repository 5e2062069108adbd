"""Hostile and broken input: one run over all of it, no crash, no hang, every file read or skipped with a reason,
within time and memory limits. PDFs and DOCX files are parsed in the worker process (ingest/isolation.py)."""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ingest import Limits, build_corpus, load_tokenizer
from ingest.isolation import ParserWorker
from test_hostile_helpers import SECRET_OUTSIDE, build_hostile_drop
from test_ingest_helpers import make_pdf

TESTS = Path(__file__).parent
WORKER_CAP = 768_000_000  # the parser worker's address-space cap in this test

INGEST = textwrap.dedent("""
    import json, resource, sys, time
    from ingest import Limits, build_corpus, load_tokenizer

    def peak_rss_mb():
        # VmHWM belongs to this process's own memory map. ru_maxrss would also count the forked pytest
        # process's resident size from before exec (Linux carries it over), which is not ours.
        try:
            with open("/proc/self/status") as status:
                return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
        except (OSError, StopIteration):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    tokenizer = load_tokenizer()
    started = time.perf_counter()
    corpus = build_corpus(sys.argv[2:], tokenizer=tokenizer, limits=Limits(parse_memory_bytes=int(sys.argv[1])))
    seconds = time.perf_counter() - started
    ids = corpus.token_ids()
    print(json.dumps({
        "seconds": seconds,
        "documents": [d.source for d in corpus.documents],
        "skipped": [[s.source, s.reason, s.defect] for s in corpus.skipped],
        "text": corpus.text,
        "special_ids": sorted({int(i) for i in ids if i >= 128000}),
        "ids_equal_hf": ids.tolist() == tokenizer(corpus.text, add_special_tokens=False,
                                                   split_special_tokens=True)["input_ids"],
        "self_rss_mb": peak_rss_mb(),
        "worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }, ensure_ascii=True))
""")


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    """The whole hostile drop ingested once, in a fresh process (so its time and peak memory are its own)."""
    tmp = tmp_path_factory.mktemp("hostile")
    paths, outside, expected = build_hostile_drop(tmp)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", INGEST, str(WORKER_CAP), *map(str, paths)], env=env,
                          capture_output=True, timeout=180)
    wall = time.perf_counter() - started
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    result = json.loads(done.stdout)
    result["wall"] = wall
    return result, tmp, expected


def test_every_file_is_read_or_skipped_with_a_reason_and_nothing_is_a_defect(hostile_run):
    result, tmp, expected = hostile_run
    read = set(result["documents"])
    skipped = {source: reason for source, reason, _ in result["skipped"]}
    assert read == expected
    assert not [s for s in result["skipped"] if s[2]], "a parser defect, not bad input"
    assert all(reason.strip() for reason in skipped.values())
    # Every name under the drop (links included, never followed) is accounted for.
    for folder, dirs, files in os.walk(tmp / "drop"):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            rel = os.path.relpath(os.path.join(folder, name), tmp)
            shown = rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            assert shown in read or shown in skipped or shown + "/" in skipped, shown


@pytest.mark.parametrize("source, reason", [
    ("drop/truncated.pdf", "damaged or incomplete PDF; re-export it"),
    ("drop/header-only.pdf", "damaged or incomplete PDF; re-export it"),
    ("drop/circular.pdf", "cyclic"),
    ("drop/locked.pdf", "needs a password"),
    ("drop/huge-stream.pdf", "memory cap"),
    ("drop/zip-bomb.docx", "zip bomb"),
    ("drop/entity-bomb.docx", "entity amplification"),
    ("drop/legacy.docx", "not a readable DOCX"),
    ("drop/huge.txt", "over the 20 MB per-file cap (2.1 GB)"),
    ("drop/elf.txt", "binary file"),
    ("drop/random.txt", "binary file"),
    ("drop/mixed.txt", "no text encoding fits"),  # UTF-8 and cp1252 lines and stray bytes in one file
    ("drop/link-to-outside.txt", "outside the dropped folder (not followed)"),
    ("drop/passwd.txt", "outside the dropped folder (not followed)"),
    ("drop/link-to-outside-dir/", "link to a folder (not followed)"),
    ("drop/loop/up/", "link to a folder (not followed)"),
    ("drop/loop/self", "broken or looping link"),
    ("drop/ping.txt", "broken or looping link"),
    ("escapes.zip/../../evil.txt", "escapes the archive"),
    ("escapes.zip//etc/abs.txt", "escapes the archive"),
    ("escapes.zip/C:/windows/x.txt", "escapes the archive"),
    ("nested.zip/inner.zip", "archive inside an archive"),
    ("bomb.zip/zeros.txt", "over the 20 MB per-file cap"),
    ("not-a.zip", "not a readable zip archive"),
    ("drop/pipe.txt", "not a regular file"),
    ("bz2-inside.tar/zeros.txt", "zip bomb"),
    ("long-name.tar.gz", "a tar header field of 1 MB is over"),
    ("zeros.tar.gz", "empty archive (no files in it)"),
])
def test_each_hostile_file_gets_its_reason(hostile_run, source, reason):
    skipped = {s: r for s, r, _ in hostile_run[0]["skipped"]}
    assert reason in skipped[source]


def test_nothing_outside_the_drop_and_no_control_tokens_reach_the_context(hostile_run):
    result, _, _ = hostile_run
    text = result["text"]
    text.encode("utf-8")  # valid UTF-8 throughout, odd file names included
    assert SECRET_OUTSIDE not in text and "root:x:0:0" not in text
    assert "up\n" not in text and "deep" not in text
    assert result["special_ids"] == [] and result["ids_equal_hf"]
    # The injection file cannot close its wrapper or open a fake one: tags stay balanced.
    assert text.count("<document ") == text.count("</document>") == len(result["documents"])
    assert "&lt;/document>\n&lt;document index=\"1\"" in text
    assert 'source="drop/new line.txt"' in text and 'source="drop/bad-\\xff-bytes.txt"' in text


def test_the_run_stays_within_time_and_memory(hostile_run):
    result = hostile_run[0]
    print(f"hostile drop: {result['seconds']:.1f} s ingest, {result['wall']:.1f} s with start-up; peak RSS "
          f"{result['self_rss_mb']:.0f} MiB (parent), {result['worker_rss_mb']:.0f} MiB (parser worker)")
    assert result["seconds"] < 60
    assert result["self_rss_mb"] < 1200  # the 2 GB sparse file, the bombs and the huge stream never land here
    assert result["worker_rss_mb"] < WORKER_CAP / 2**20


def test_a_parser_past_its_clock_is_killed_recorded_as_a_skip_and_the_run_goes_on(tmp_path):
    make_pdf(tmp_path / "a-long.pdf", [f"Page {i} of a long report." for i in range(6000)])  # ~0.2 s to parse
    make_pdf(tmp_path / "b-short.pdf", ["Short and readable."])
    started = time.perf_counter()
    corpus = build_corpus([tmp_path], tokenizer=load_tokenizer(), limits=Limits(parse_timeout_s=0.05))
    assert time.perf_counter() - started < 30
    [skip] = corpus.skipped
    assert skip.source == f"{tmp_path.name}/a-long.pdf" and not skip.defect
    assert skip.reason.startswith("the parser took longer than 0.05 s")
    assert [d.source for d in corpus.documents] == [f"{tmp_path.name}/b-short.pdf"]
    assert "Short and readable." in corpus.text


def test_one_worker_serves_many_files_and_a_dead_one_is_replaced(tmp_path):
    worker = ParserWorker(1_000_000_000)
    data = make_pdf(tmp_path / "p.pdf", ["Hello."]).read_bytes()
    try:
        for _ in range(20):
            assert "Hello." in worker.run("p.pdf", data, Limits()).body
        assert worker.starts == 1
        worker.process.kill()  # as if the kernel had killed it between two files
        worker.process.wait()
        assert "Hello." in worker.run("p.pdf", data, Limits()).body and worker.starts == 2
    finally:
        worker.close()


# Inputs bench/fuzz_loaders.py (atheris) found that escaped as exceptions other than FileRejected; now skips.
FUZZ_FINDINGS = {
    "pdf_attribute_error.pdf": (
        "JVBEJVBERi0xLjMKJeLjz9MKMSAwIG9iago8PAovUHJvZHVjZXIgKHB5cGRmKQo+PgplbmRvYmsKMiAwIG9iago8PAovVHlwZSAv"
        "UGFnZXMKL0NvdW50IDIKL0tpZHMgWyA1IDAgUiA3IDAgUgo+PgplbmRvYmoKMyAwIG9iagoyIDAgUgo+PgplMDAxMTkKMyAwIG9i"
        "MDAwMTY4IDAwMDAKdHJhaWxlcgo8PAovU2l6ZSA4Ci9Sb290IDMgMCBSCi8AAEluZm8gMVIKPj4Kc3RhcnR4cmVmCjMxNQolJUVP"
        "Rjw8Ci9UeXBlIC9DYXRhbG9nCi9QYWdlcyAyIDAgUgo+PgplbmRvYmoKNCAwIG9iago8PAovVHlwZSAgL1R5cGUxCi9CYXNlRm9u"
        "dCAvSGVsdmV0aWNhCi9kaW5nCj4+CmVuZG9iago1IDAgb2JqCjw8Ci9UeXBlIC9QYWdlCi9SZXNvdXJjZXMgPDwKL0ZvbnQgPDwK"
        "L0YxIDQgMCBSCj4+Cj4+Ci9NZWRpYUJveCAwIDAuMCA2MzIgNzkyIF0KL1BhcmVudCAyKjAgUgovQ29udGVudHMgNiAwIFL/AAD/"
        "/////2JqCjYgMCBvYmoKPDwKL0xlbmd0aCA3Mgo+PgpzdHJlYW0KQlQgL0YxIDExIFRmIDE0IFRMIDcyIDc0MCBUZCAoSGVsbG8g"
        "XCh3b3KobGRcKSkgVGogcmVhbQplbmRvYmoKNyAwIG9iago8PAovVHlwZXMgPDwKL0Zv/////////////////250IDwgMCBTCj4+"
        "Cj4+Ci9NZWRpYUJveCBbIDAuMCAwLjAgNjggMDAwMTAwMDAwMDAwMSAwMDAwMCBuIAp0cmFpbGVyCjw8Ci9TaXplIDkKL1Jvb3Qg"
        "MyAwIFIKL0luZm8gRi0xCiUxIDAgUgo+PgpzdGFydHhyZWYK4uPP0woxIDAgb2JqCjw8Ci9QNzMwcm9kdWNlciAKJUUlT0YKKHB5"
        "cGRmKQ=="
    ),
    "zip_bad_deflate.zip": (
        "UEsDBBQAAAAIADBXe11NBYrIDQAAAAsAAAAIAAAAc3JjL2EucHkrKMrMK9FQT1QAS1AC1+QDBBQAAAAIADBXe121XRSJBgAAAAQA"
        "AAAJAAAAZG9jcy9iLm1kU1Zw4gcAUEsBAhQDFAAAAAgAMFd7XU0FisgNAAAACwAAAAgAAAAAAAAAAAAAAIABAAAAAHNyYy9hLnB5"
        "UEsBAhQDFAAAAAgAMFd7XbVdFIkGAAAABAAAAAkAAAAAAAAAAAAAAIABMwAAAGRvY3MvYi5tZFBLBQYAAAAAAgACAG0AAABgAAAA"
        "AAA="
    ),
    "zip_version_23.zip": (
        "UEsDBBQAAAAIAFhXe11NBYrIDQAAAABYV3tdtV0UiQYAAAAEAAAACQAAAGRvY3MvYi5tZFNWcOICAFBLAQIUAxQAAAAIAFhXAAQA"
        "AAAJAAAAZG9jcy9iLm1kU1Zw4gIAUEsBAhQDFAAAAAgAWFd7XU0FisgNAAAACwAAAAgAAAAAAAAAAAAAAIABAAAAAHNyYy9hLnB5"
        "UEsBAvT86/////f/WFd7XbVdFIkGAAAABAAAAAkAAAAAAAAAAAAAAIABMwAAAGRvY3MvYi5tZFBLBQYAAAAAAgACAG0AAABgAAAA"
        "AAA="
    ),
    "zip_empty_name.zip": (
        "UEsDBBQAAAAIAABYe11NBYrIDQAAAAsAAAAIAAAAc3JjL2EucHkrKMrMK9FQT1TX5AIAUEsDBBQAAAAIAABYe121XRSJBgAAAAQA"
        "AAAJAAAAZG9jcy9iLm1kU1Zw4gIAUEsBAhQDFAAAAAgAAFh7XU0FisgNAAAACwAAAAgAAAAAAAAAAAAAAIABc3IAAABjAC9hLnB5"
        "UEsBAhQDFAAAAAgAAFh7XbVdFIkGAAAABAAAAAkAAAAAAAAAAAAAAIABMwAAAGRvY3MvYi5tZFBLBQYAAAAAAgACAG0AAABgAAAA"
        "AAA="
    ),
}


@pytest.mark.parametrize("name", sorted(FUZZ_FINDINGS))
def test_fuzz_findings_are_skipped_with_a_reason_not_a_defect(tmp_path, name):
    import base64

    (tmp_path / name).write_bytes(base64.b64decode(FUZZ_FINDINGS[name]))
    corpus = build_corpus([tmp_path / name], tokenizer=load_tokenizer())
    assert corpus.skipped and not any(s.defect for s in corpus.skipped)
    assert all(s.reason for s in corpus.skipped)
