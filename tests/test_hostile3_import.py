"""Conversation import has a size cap (issue 25, item 6): a file over 5 MB or with more than 2,000 exchanges is
refused with the numbers before anything is tokenized, and deeply nested JSON is a clear message, not a crash.
With the real demo model's engine and the real ingestion."""

from __future__ import annotations

import json

import pytest

from app.engine.engine import Engine
from app.ui.handlers import BadRecordError, Workbench
from app.sharing.saved import MAX_IMPORT_EXCHANGES, corpus_record
from app.ui.session import Session
from ingest import build_corpus


@pytest.fixture(scope="module")
def workbench(demo_model):
    model, tokenizer = demo_model
    return Workbench(Engine(model, tokenizer, model_name="demo"))


def conversation(workbench, tmp_path, exchanges) -> dict:
    (tmp_path / "notes.txt").write_text("The harbour opens at six.\n")
    corpus = build_corpus([str(tmp_path / "notes.txt")], tokenizer=workbench.backend.tokenizer)
    return {"system_prompt": "", "exchanges": exchanges, "corpus": corpus_record(corpus)}


def test_a_file_over_the_cap_is_refused_with_its_size(workbench, tmp_path):
    big = conversation(workbench, tmp_path, [{"question": "q", "answer": "word " * (1_300_000)}])  # 6.2 MB
    path = tmp_path / "big.json"
    path.write_text(json.dumps(big))
    session = Session()
    with pytest.raises(BadRecordError, match=r"the file is 6\.2 MB; at most 5 MB can be imported"):
        workbench.import_conversation(session, path)
    assert session.corpus is None and session.exchanges == []


def test_too_many_exchanges_are_refused_with_the_numbers(workbench, tmp_path):
    many = MAX_IMPORT_EXCHANGES + 1
    path = tmp_path / "many.json"
    path.write_text(json.dumps(conversation(workbench, tmp_path, [{"question": "q", "answer": "a"}] * many)))
    with pytest.raises(BadRecordError, match=f"holds {many:,} exchanges; at most {MAX_IMPORT_EXCHANGES:,}"):
        workbench.import_conversation(Session(), path)


def test_deeply_nested_json_is_a_clear_message(workbench, tmp_path):
    path = tmp_path / "nested.json"
    path.write_text('{"corpus": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(BadRecordError, match="nested too deeply"):
        workbench.import_conversation(Session(), path)


def test_a_conversation_within_the_caps_still_imports(workbench, tmp_path):
    path = tmp_path / "ok.json"
    path.write_text(json.dumps(conversation(workbench, tmp_path, [{"question": "When?", "answer": "At six."}])))
    session = workbench.import_conversation(Session(), path)
    assert session.sources == ["notes.txt"] and [(e.question, e.answer) for e in session.exchanges] == \
        [("When?", "At six.")]
