import json

from ingest import load_tokenizer
from ingest.cli import main


def test_json_and_out(tmp_path, capsys):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.py").write_text("x = 1\n")
    (tmp_path / "docs" / "b.bin").write_bytes(b"\x00\x01\x02")
    out = tmp_path / "context.txt"
    assert main([str(tmp_path / "docs"), "--json", "--out", str(out), "--line-numbers"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert set(report) == {"total_tokens", "documents", "skipped"}
    assert report["documents"][1] == {"source": "docs/a.py", "kind": "code", "pages": None,
                                      "tokens": report["documents"][1]["tokens"], "chars": 76}
    assert report["skipped"] == [{"source": "docs/b.bin", "reason": "binary file (.bin)"}]
    text = out.read_text(encoding="utf-8")
    assert "   1| x = 1\n" in text
    ids = load_tokenizer()(text, add_special_tokens=False, split_special_tokens=True).input_ids
    assert report["total_tokens"] == len(ids) == sum(d["tokens"] for d in report["documents"])
    assert "file" in captured.err  # the progress bar went to stderr


def test_missing_path_exits_2(tmp_path, capsys):
    assert main([str(tmp_path / "missing"), "--no-progress"]) == 2
    assert "no such file or folder" in capsys.readouterr().err
