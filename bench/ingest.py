"""Ingestion benchmarks on the local CPU box (see BENCHMARKS.md, section Ingestion).

    .venv/bin/python bench/ingest.py            # all three parts
    .venv/bin/python bench/ingest.py --part pdf|tokens|stdlib

(a) text-PDF extraction pages/s, pypdfium2 against pypdf, on a generated multi-hundred-page PDF;
(b) tokens/s of the fast (tiktoken-built) Llama-3 encoder against the HF tokenizer's batch call,
    with the ids checked identical over the whole corpus;
(c) the Python standard library of this interpreter (site-packages left out) ingested end to end:
    wall time and peak RSS, in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

STDLIB = Path(os.path.dirname(os.__file__))


def bench_pdf(pages: int = 400) -> dict:
    from ingest.limits import Limits
    from ingest.pdf import _pages_pdfium, _pages_pypdf
    from test_ingest_helpers import make_pdf

    source = (STDLIB / "argparse.py").read_text().splitlines()
    texts = ["\n".join(line[:90] for line in source[(i * 45) % 2000:(i * 45) % 2000 + 45]) for i in range(pages)]
    with tempfile.TemporaryDirectory() as tmp:
        data = make_pdf(Path(tmp) / "big.pdf", texts).read_bytes()
    result = {"pages": pages, "pdf_bytes": len(data)}
    for name, extract in (("pypdfium2", _pages_pdfium), ("pypdf", _pages_pypdf)):
        extract(data, Limits())  # warm-up
        start = time.perf_counter()
        out = extract(data, Limits())
        seconds = time.perf_counter() - start
        assert len(out) == pages and all(t.strip() for t in out)
        result[name] = round(pages / seconds)
    from ingest import isolation
    from ingest.pdf import extract as extract_in_process

    isolation.extract("big.pdf", data, Limits())  # starts the worker (once per process)
    start = time.perf_counter()
    assert isolation.extract("big.pdf", data, Limits()).pages == pages
    result["pypdfium2 in the worker"] = round(pages / (time.perf_counter() - start))
    with tempfile.TemporaryDirectory() as tmp:  # many small files: the per-file cost of the worker round trip
        small = make_pdf(Path(tmp) / "small.pdf", texts[:2]).read_bytes()
    for name, extract in (("small files, in process", lambda: extract_in_process("s.pdf", small, Limits())),
                          ("small files, in the worker", lambda: isolation.extract("s.pdf", small, Limits()))):
        start = time.perf_counter()
        for _ in range(200):
            extract()
        result[name + " (files/s)"] = round(200 / (time.perf_counter() - start))
    return result


def _stdlib_texts() -> list[str]:
    texts = []
    for folder, dirs, files in os.walk(STDLIB):
        dirs[:] = sorted(d for d in dirs if d not in ("site-packages", "__pycache__"))
        for name in sorted(files):
            if name.endswith(".py"):
                texts.append(Path(folder, name).read_bytes().decode("utf-8", errors="replace"))
    return texts


def bench_tokens() -> dict:
    from ingest import TokenCounter, load_tokenizer

    tokenizer = load_tokenizer()
    counter = TokenCounter(tokenizer)
    texts = _stdlib_texts()
    counter.encode_many(texts[:50])
    start = time.perf_counter()
    fast = counter.encode_many(texts)
    fast_s = time.perf_counter() - start
    start = time.perf_counter()
    hf = tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    hf_s = time.perf_counter() - start
    total = sum(len(ids) for ids in hf)
    mismatches = sum(f.tolist() != h for f, h in zip(fast, hf))
    return {"files": len(texts), "chars": sum(map(len, texts)), "tokens": total,
            "fast_tokens_per_s": round(total / fast_s), "hf_batch_tokens_per_s": round(total / hf_s),
            "mismatched_files": mismatches}


def bench_stdlib() -> dict:
    from ingest import build_corpus, load_tokenizer

    tokenizer = load_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "python3.11"
        shutil.copytree(STDLIB, tree, ignore=shutil.ignore_patterns("site-packages"), symlinks=True)
        size = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        start = time.perf_counter()
        corpus = build_corpus([tree], tokenizer=tokenizer)
        seconds = time.perf_counter() - start
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024  # before the HF check below
        text = corpus.text
        ids = corpus.token_ids()
        start = time.perf_counter()
        hf = tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids
        hf_s = time.perf_counter() - start
    return {"tree_bytes_without_pycache": size, "documents": len(corpus.documents),
            "skipped": len(corpus.skipped), "defects": sum(s.defect for s in corpus.skipped),
            "context_chars": len(text), "total_tokens": corpus.total_tokens,
            "wall_s": round(seconds, 1), "peak_rss_mib": peak_mib,
            "whole_text_hf_ids_equal": ids.tolist() == hf, "hf_whole_text_s": round(hf_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", choices=["pdf", "tokens", "stdlib", "all"], default="all")
    args = parser.parse_args()
    if args.part == "all":
        for part in ("pdf", "tokens", "stdlib"):  # each in a fresh process, so peak RSS is its own
            subprocess.run([sys.executable, __file__, "--part", part], check=True)
        return
    result = {"pdf": bench_pdf, "tokens": bench_tokens, "stdlib": bench_stdlib}[args.part]()
    print(json.dumps({args.part: result}), flush=True)


if __name__ == "__main__":
    main()
