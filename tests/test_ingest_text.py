import codecs

from ingest import Limits, build_corpus, load_tokenizer


def _corpus(paths, **kwargs):
    return build_corpus(paths, tokenizer=load_tokenizer(), **kwargs)


def _by_source(corpus):
    return {d.source: d for d in corpus.documents}


def test_encodings(tmp_path):
    words = "Grüße aus München — “quoted” €5, naïve café"
    (tmp_path / "utf8.txt").write_bytes(words.encode("utf-8"))
    (tmp_path / "utf8bom.txt").write_bytes(codecs.BOM_UTF8 + words.encode("utf-8"))
    (tmp_path / "utf16le.txt").write_bytes(codecs.BOM_UTF16_LE + words.encode("utf-16-le"))
    (tmp_path / "utf16be.txt").write_bytes(codecs.BOM_UTF16_BE + words.encode("utf-16-be"))
    (tmp_path / "cp1252.txt").write_bytes(words.encode("cp1252"))
    latin = "Ça va très bien, señor; Øresund straße"
    (tmp_path / "latin1.txt").write_bytes(latin.encode("latin-1"))
    (tmp_path / "crlf.txt").write_bytes(b"one\r\ntwo\rthree\n")
    docs = _by_source(_corpus([tmp_path]))
    root = tmp_path.name
    for name in ("utf8", "utf8bom", "utf16le", "utf16be", "cp1252"):
        assert f"\n{words}\n</document>" in docs[f"{root}/{name}.txt"].text, name
    assert f"\n{latin}\n</document>" in docs[f"{root}/latin1.txt"].text
    assert "\none\ntwo\nthree\n</document>" in docs[f"{root}/crlf.txt"].text
    assert all(d.kind == "text" for d in docs.values())


def test_binary_files_are_skipped(tmp_path):
    (tmp_path / "blob.dat").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "noext").write_bytes(b"ELF\x00\x01\x02" * 100)
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "ok.py").write_text("print('hi')\n")
    corpus = _corpus([tmp_path])
    assert [d.source for d in corpus.documents] == [f"{tmp_path.name}/", f"{tmp_path.name}/ok.py"]
    reasons = {s.source.rsplit("/", 1)[1]: s.reason for s in corpus.skipped}
    assert set(reasons) == {"blob.dat", "noext", "image.png"}
    assert all(r.startswith("binary file") for r in reasons.values())


def test_nested_gitignore_and_negation(tmp_path):
    repo = tmp_path / "repo"
    (repo / "src" / "gen").mkdir(parents=True)
    (repo / "build").mkdir()
    (repo / ".gitignore").write_text("*.log\nbuild/\n")
    (repo / "src" / ".gitignore").write_text("gen/\n*.tmp\n!keep.log\n")
    files = {"a.py": "a = 1\n", "x.log": "log\n", "build/out.txt": "o\n", "src/b.py": "b = 2\n",
             "src/keep.log": "kept\n", "src/drop.log": "d\n", "src/c.tmp": "t\n", "src/gen/g.py": "g\n",
             "notes.tmp": "top-level tmp is not ignored\n"}
    for rel, text in files.items():
        (repo / rel).write_text(text)
    corpus = _corpus([repo])
    got = [d.source for d in corpus.documents]
    assert got == ["repo/", "repo/a.py", "repo/notes.tmp", "repo/src/b.py", "repo/src/keep.log"]
    skipped = {s.source: s.reason for s in corpus.skipped}
    assert skipped == {"repo/build/": "ignored by .gitignore", "repo/x.log": "ignored by .gitignore",
                       "repo/src/gen/": "ignored by .gitignore", "repo/src/drop.log": "ignored by .gitignore",
                       "repo/src/c.tmp": "ignored by .gitignore"}


def test_default_ignores(tmp_path):
    repo = tmp_path / "proj"
    for folder in (".git", "node_modules/lib", "__pycache__", ".venv/lib", "env2", "src"):
        (repo / folder).mkdir(parents=True)
    (repo / "env2" / "pyvenv.cfg").write_text("home = /usr\n")
    (repo / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (repo / "node_modules" / "lib" / "x.js").write_text("x\n")
    (repo / "src" / "app.js").write_text("console.log(1);\n")
    (repo / "src" / "app.min.js").write_text("a" * 100)
    (repo / "src" / "packed.js").write_text("var a=1;" * 1000)  # minified by content
    for lock in ("package-lock.json", "poetry.lock", "yarn.lock", "Cargo.lock"):
        (repo / lock).write_text("{}\n")
    corpus = _corpus([repo])
    assert [d.source for d in corpus.documents] == ["proj/", "proj/src/app.js"]
    reasons = {s.source: s.reason for s in corpus.skipped}
    assert reasons["proj/.git/"] == "ignored by default (.git)"
    assert reasons["proj/node_modules/"] == "ignored by default (node_modules)"
    assert reasons["proj/env2/"] == "ignored by default (virtual environment)"
    assert reasons["proj/poetry.lock"] == "ignored by default (lock file)"
    assert reasons["proj/src/app.min.js"] == "ignored by default (minified bundle)"
    assert reasons["proj/src/packed.js"].startswith("minified bundle")
    assert {"proj/__pycache__/", "proj/.venv/", "proj/package-lock.json"} <= set(reasons)


def test_per_file_cap(tmp_path):
    (tmp_path / "big.txt").write_text("x" * 5000)
    (tmp_path / "small.txt").write_text("y\n")
    corpus = _corpus([tmp_path], limits=Limits(max_file_bytes=2100))
    assert [d.source for d in corpus.documents] == [f"{tmp_path.name}/small.txt"]
    assert corpus.skipped[0].reason == "over the 2.1 KB per-file cap (5 KB)"


def test_folder_of_prose_has_no_tree(tmp_path):
    (tmp_path / "a.md").write_text("# A\n")
    assert [d.source for d in _corpus([tmp_path]).documents] == [f"{tmp_path.name}/a.md"]


def test_missing_path_is_an_input_error(tmp_path):
    import pytest

    from ingest import InputError
    with pytest.raises(InputError, match="no such file or folder"):
        _corpus([tmp_path / "nope"])
