"""Issue 13, items 4 and 9 (ingestion): small files must not cost gigabytes or hang, and nothing vanishes without
a reason. Every archive and special file here is built by the test."""

import bz2
import gzip
import io
import json
import os
import re
import struct
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from ingest import Limits, build_corpus, load_tokenizer
from ingest import cli as ingest_cli
from ingest.archive import MAX_HEADER_BYTES
from ingest.errors import human_size

TESTS = Path(__file__).parent


def _corpus(paths, **kwargs):
    return build_corpus(paths, tokenizer=load_tokenizer(), **kwargs)


def _reasons(corpus):
    return {s.source: s.reason for s in corpus.skipped}


def _tar(members: dict[str, bytes], fmt=tarfile.GNU_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_tar_ratio_is_per_member_beside_incompressible_data(tmp_path):
    """The old check divided by the whole archive, so random bytes beside a bomb hid it."""
    noise = os.urandom(3_000_000)
    packed = gzip.compress(_tar({"noise.bin": noise, "zeros.txt": bytes(15_000_000), "ok.txt": b"fine\n"}), 1)
    (tmp_path / "mixed.tar.gz").write_bytes(packed)
    reasons = _reasons(_corpus([tmp_path / "mixed.tar.gz"]))
    assert "zip bomb" in reasons["mixed.tar.gz/zeros.txt"]
    assert reasons["mixed.tar.gz/noise.bin"] == "binary file (.bin)"


def test_a_tar_named_tar_that_holds_bz2_is_ratio_checked(tmp_path):
    (tmp_path / "plain-name.tar").write_bytes(bz2.compress(_tar({"zeros.txt": bytes(15_000_000), "a.txt": b"a\n"})))
    corpus = _corpus([tmp_path / "plain-name.tar"])
    assert "zip bomb" in _reasons(corpus)["plain-name.tar/zeros.txt"]
    assert [d.source for d in corpus.documents] == ["plain-name.tar/a.txt"]


def test_long_name_and_pax_headers_are_capped(tmp_path):
    long_name = "d/" + "n" * 1_000_000 + ".txt"
    (tmp_path / "gnu.tar.gz").write_bytes(gzip.compress(_tar({long_name: b"x\n", "ok.txt": b"ok\n"})))
    (tmp_path / "pax.tar.gz").write_bytes(gzip.compress(_tar({long_name: b"x\n"}, tarfile.PAX_FORMAT)))
    corpus = _corpus([tmp_path / "gnu.tar.gz", tmp_path / "pax.tar.gz"])
    reasons = _reasons(corpus)
    for name in ("gnu.tar.gz", "pax.tar.gz"):
        assert reasons[name] == f"a tar header field of 1 MB is over the {human_size(MAX_HEADER_BYTES)} cap (hostile archive?)"
    assert corpus.documents == []


SPARSE_MEMBERS, SPARSE_MEMBER_BYTES = 30, 15_000_000


def _sparse_tar(path: Path) -> None:
    """A 450 MB tar of zero-filled members, written sparse (headers only: no disk used for the data)."""
    with open(path, "wb") as handle:
        for i in range(SPARSE_MEMBERS):
            info = tarfile.TarInfo(f"part{i:02d}.bin")
            info.size = SPARSE_MEMBER_BYTES
            handle.write(info.tobuf(tarfile.GNU_FORMAT))
            handle.seek(SPARSE_MEMBER_BYTES + (-SPARSE_MEMBER_BYTES) % 512, 1)
        handle.write(bytes(1024))


def _peak_of_ingesting(path: Path) -> dict:
    script = ("import json, sys\nfrom ingest import build_corpus, load_tokenizer\n"
              "c = build_corpus([sys.argv[1]], tokenizer=load_tokenizer())\n"
              "hwm = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
              "print(json.dumps({'skipped': len(c.skipped), 'reasons': sorted({s.reason for s in c.skipped}),"
              " 'peak_mb': hwm / 1024}))")
    env = {**os.environ, "PYTHONPATH": str(TESTS.parent)}
    done = subprocess.run([sys.executable, "-c", script, str(path)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_archive_members_are_read_one_at_a_time(tmp_path):
    """Peak memory of a fresh process reading 30 members of 15 MB grows by about one member over reading one
    small member, not by 450 MB (the old code held the archive and every member: ~900 MB)."""
    _sparse_tar(tmp_path / "big.tar")
    (tmp_path / "small.tar").write_bytes(_tar({"one.bin": bytes(1000)}))
    small, big = _peak_of_ingesting(tmp_path / "small.tar"), _peak_of_ingesting(tmp_path / "big.tar")
    print(f"peak RSS {big['peak_mb']:.0f} MiB reading {SPARSE_MEMBERS} x {SPARSE_MEMBER_BYTES / 1e6:.0f} MB, "
          f"{small['peak_mb']:.0f} MiB reading one small member")
    assert big["skipped"] == SPARSE_MEMBERS and big["reasons"] == ["binary file (.bin)"]
    assert big["peak_mb"] - small["peak_mb"] < 100


def _zip64_claiming(entries: int) -> bytes:
    """A real one-member zip whose zip64 end records claim `entries` entries (a 2M-entry directory's header)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.txt", "only one\n")
    data = buffer.getvalue()
    end = data.rfind(b"PK\x05\x06")
    _, _, _, _, _, size, offset, _ = struct.unpack("<4s4H2LH", data[end:end + 22])
    record = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries, size, offset)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, end, 1)
    tail = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, size, offset, 0)
    return data[:end] + record + locator + tail


def test_a_2m_entry_zip_directory_is_refused_from_its_end_record(tmp_path):
    (tmp_path / "many.zip").write_bytes(_zip64_claiming(2_000_000))
    corpus = _corpus([tmp_path / "many.zip"])
    assert _reasons(corpus) == {"many.zip": "has 2,000,000 entries, over the 10,000-entry cap"}
    assert corpus.documents == []


def test_a_zero_filled_tar_gz_is_skipped_with_a_reason(tmp_path):
    (tmp_path / "zeros.tar.gz").write_bytes(gzip.compress(bytes(100_000)))
    (tmp_path / "empty.zip").write_bytes(b"PK\x05\x06" + bytes(18))
    corpus = _corpus([tmp_path / "zeros.tar.gz", tmp_path / "empty.zip"])
    assert _reasons(corpus) == {"zeros.tar.gz": "empty archive (no files in it)",
                                "empty.zip": "empty archive (no files in it)"}


def test_a_token_budget_across_files_stops_reading_with_a_reason(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    for i in range(6):
        (folder / f"n{i}.txt").write_text(f"Note {i}: the harbour master counts boats. " * 40)
    corpus = _corpus([folder], max_tokens=700)
    assert [d.source for d in corpus.documents] == ["notes/n0.txt", "notes/n1.txt"]  # n1 crosses the line
    reasons = _reasons(corpus)
    assert sorted(reasons) == [f"notes/n{i}.txt" for i in range(2, 6)]
    assert all(r.startswith("not read: the files before it already hold") and "700-token window" in r
               for r in reasons.values())
    assert not any(re.search(r"hold [\d,]+ tokens", r) for r in reasons.values())  # one count: the table's
    assert _corpus([folder], max_tokens=10**6).skipped == []


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_or_a_device_named_on_the_command_line_is_refused_not_read(tmp_path, capsys):
    os.mkfifo(tmp_path / "pipe.txt")
    (tmp_path / "real.txt").write_text("real\n")
    corpus = _corpus([tmp_path / "pipe.txt", "/dev/zero", tmp_path])
    reasons = _reasons(corpus)
    assert reasons["pipe.txt"] == "not a regular file (a FIFO; not read)"
    assert reasons["zero"] == "not a regular file (a device; not read)"
    assert reasons[f"{tmp_path.name}/pipe.txt"].startswith("not a regular file")
    assert [d.source for d in corpus.documents] == [f"{tmp_path.name}/real.txt"]
    assert ingest_cli.main([str(tmp_path / "pipe.txt"), "--no-progress"]) == 0
    assert "skipped pipe.txt: not a regular file (a FIFO; not read)" in capsys.readouterr().err


def test_utf8_with_a_stray_byte_is_utf8_not_cp1251_mojibake(tmp_path):
    text = "Привет, мир! Это обычный текст на русском языке, и в нём есть один плохой байт.\n"
    (tmp_path / "ru.txt").write_bytes(text.encode() + b"\xff" + "ещё одна строка\n".encode())
    body = _corpus([tmp_path / "ru.txt"]).text
    assert text in body and "\ufffdещё одна строка" in body and "Рџ" not in body
