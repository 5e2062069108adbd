import io
import tarfile
import zipfile

from ingest import Limits, build_corpus, load_tokenizer
from test_ingest_helpers import make_pdf


def _corpus(paths, **kwargs):
    return build_corpus(paths, tokenizer=load_tokenizer(), **kwargs)


def test_zip_members_are_read_in_memory(tmp_path):
    pdf = make_pdf(tmp_path / "p.pdf", ["Zipped page."]).read_bytes()
    with zipfile.ZipFile(tmp_path / "bundle.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("proj/main.py", "print('main')\n")
        archive.writestr("proj/docs/p.pdf", pdf)
        archive.writestr("proj/.gitignore", "secret.txt\n")
        archive.writestr("proj/secret.txt", "hidden\n")
        archive.writestr("proj/node_modules/x.js", "x\n")
    corpus = _corpus([tmp_path / "bundle.zip"])
    assert [d.source for d in corpus.documents] == \
        ["bundle.zip/", "bundle.zip/proj/docs/p.pdf", "bundle.zip/proj/main.py"]
    assert "Zipped page." in corpus.text and "hidden" not in corpus.text
    assert {s.source: s.reason for s in corpus.skipped} == {
        "bundle.zip/proj/secret.txt": "ignored by .gitignore",
        "bundle.zip/proj/node_modules/x.js": "ignored by default (node_modules)"}


def test_zip_traversal_is_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as archive:
        archive.writestr("../../escape.txt", "up\n")
        archive.writestr("/etc/abs.txt", "abs\n")
        archive.writestr("a/../../b.txt", "sneaky\n")
        archive.writestr("ok.txt", "fine\n")
    corpus = _corpus([tmp_path / "evil.zip"])
    assert [d.source for d in corpus.documents] == ["evil.zip/ok.txt"]
    escaped = [s for s in corpus.skipped if s.reason == "zip entry escapes the archive"]
    assert len(escaped) == 3
    assert not (tmp_path.parent / "escape.txt").exists()
    assert "up" not in corpus.text and "sneaky" not in corpus.text


def test_zip_entry_count_cap(tmp_path):
    with zipfile.ZipFile(tmp_path / "many.zip", "w") as archive:
        for i in range(30):
            archive.writestr(f"f{i}.txt", "x\n")
    corpus = _corpus([tmp_path / "many.zip"], limits=Limits(max_archive_entries=20))
    assert corpus.documents == []
    assert corpus.skipped[0].reason == "has 30 entries, over the 20-entry cap"


def test_zip_ratio_bomb_and_total_cap(tmp_path):
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.txt", "0" * 5_000_000)
        archive.writestr("a.txt", "a" * 300_000 + "\n")
        archive.writestr("b.txt", "b" * 300_000 + "\n")
    corpus = _corpus([tmp_path / "bomb.zip"], limits=Limits(max_archive_total_bytes=400_000))
    reasons = {s.source: s.reason for s in corpus.skipped}
    assert reasons["bomb.zip/zeros.txt"].startswith("compression ratio")
    assert "zip bomb" in reasons["bomb.zip/zeros.txt"]
    assert reasons["bomb.zip/b.txt"] == "archive's total uncompressed size is over the 400 KB cap"
    assert [d.source for d in corpus.documents] == ["bomb.zip/a.txt"]


def test_tar_gz_and_links(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        data = b"def f():\n    return 1\n"
        info = tarfile.TarInfo("src/mod.py")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("src/link")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        archive.addfile(link)
        evil = tarfile.TarInfo("../evil.py")
        evil.size = 2
        archive.addfile(evil, io.BytesIO(b"x\n"))
    (tmp_path / "code.tar.gz").write_bytes(buffer.getvalue())
    corpus = _corpus([tmp_path / "code.tar.gz"])
    assert [d.source for d in corpus.documents] == ["code.tar.gz/", "code.tar.gz/src/mod.py"]
    reasons = {s.source: s.reason for s in corpus.skipped}
    assert reasons["code.tar.gz/src/link"].startswith("link or special file")
    assert reasons["code.tar.gz/../evil.py"] == "zip entry escapes the archive"


def test_corrupt_archive_is_skipped(tmp_path):
    (tmp_path / "bad.zip").write_bytes(b"PK\x05\x06 definitely not")
    corpus = _corpus([tmp_path / "bad.zip"])
    assert corpus.documents == [] and corpus.skipped[0].reason.startswith("not a readable zip archive")
