"""Answers in JSON through constrained decoding (llguidance): the real demo model's answers parse and validate
against their schema, also when the budget runs out or the model loops; a schema the grammar cannot carry out is
refused with a message before any work."""

import json

import jsonschema
import pytest

from app.engine.engine import Engine
from app.engine.grammar import SchemaError, grammar
from app.prompt import json_question, system_prompt
from app.protocol import AnswerStats, JsonFormat, Settings

DOCUMENT = ("Ada Lovelace (1815-1852) was a mathematician. Charles Babbage (1791-1871) was an engineer who "
            "designed the Analytical Engine. The secret launch code is PELICAN-42.\n")
PEOPLE = {"type": "object", "properties": {"people": {"type": "array", "items": {
    "type": "object", "properties": {"name": {"type": "string"}, "born": {"type": "integer"}},
    "required": ["name", "born"], "additionalProperties": False}}},
    "required": ["people"], "additionalProperties": False}
CODE = {"type": "object", "properties": {"code": {"type": "string"}, "certain": {"type": "boolean"}},
        "required": ["code", "certain"], "additionalProperties": False}


@pytest.fixture(scope="module")
def engine(demo_model):
    model, tokenizer = demo_model
    engine = Engine(model, tokenizer, model_name="demo")
    engine.load_corpus(tokenizer.encode(DOCUMENT, add_special_tokens=False),
                       system_prompt=system_prompt(citations=False))
    return engine


def _answer(engine, question, fmt, max_new_tokens=160):
    pieces = list(engine.ask(json_question(question, fmt), (), Settings(max_new_tokens=max_new_tokens, json=fmt)))
    assert isinstance(pieces[-1], AnswerStats)
    return "".join(pieces[:-1]), pieces[-1]


def test_a_json_schema_answer_parses_and_validates(engine):
    text, stats = _answer(engine, "What is the secret launch code?", JsonFormat(CODE))
    value = json.loads(text)
    jsonschema.validate(value, CODE)
    assert "PELICAN" in value["code"], text  # the grammar holds the shape; the model still reads the document


def test_a_table_of_facts_stays_valid_when_the_model_loops(engine):
    """The demo model lists the same two people again and again: the answer is closed whole, not cut."""
    text, stats = _answer(engine, "List the people and the year each was born.", JsonFormat(PEOPLE))
    value = json.loads(text)
    jsonschema.validate(value, PEOPLE)
    assert {"name": "Ada Lovelace", "born": 1815} in value["people"]
    assert stats.finish_reason in ("stop", "repetition")


def test_an_answer_closes_whole_when_its_budget_runs_out(engine):
    text, stats = _answer(engine, "List the people and the year each was born.", JsonFormat(PEOPLE),
                          max_new_tokens=24)
    jsonschema.validate(json.loads(text), PEOPLE)
    assert stats.finish_reason == "length" and stats.new_tokens <= 24


def test_json_object_mode_gives_one_object(engine):
    text, _ = _answer(engine, "Who designed the Analytical Engine?", JsonFormat())
    assert isinstance(json.loads(text), dict)


def test_free_text_answers_are_unchanged_by_the_hook(engine):
    """No format: the same greedy answer as before the grammar hook existed (it is not consulted)."""
    first = list(engine.ask("What is the secret launch code?", (), Settings(max_new_tokens=16)))
    assert "PELICAN-42" in "".join(first[:-1])


@pytest.mark.parametrize("schema, words", [
    ({"type": "object", "properties": {"a": {"type": "strng"}}}, "strng"),
    (["not", "an", "object"], "must be a JSON object"),
    ({"type": "string", "pattern": "(a"}, "unclosed group"),
])
def test_a_schema_the_grammar_cannot_carry_out_is_refused_with_the_reason(schema, words):
    with pytest.raises(SchemaError) as err:
        grammar(JsonFormat(schema))
    assert words in str(err.value)


def test_ask_cli_prints_one_json_answer_a_line(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    (tmp_path / "log.txt").write_text(DOCUMENT)
    (tmp_path / "code.json").write_text(json.dumps(CODE))
    done = subprocess.run([sys.executable, "launch.py", "ask", str(tmp_path / "log.txt"), "-q",
                           "What is the secret launch code?", "-q", "Who designed the Analytical Engine?",
                           "--json-schema", str(tmp_path / "code.json"), "--model", "demo", "--no-disk-cache",
                           "--max-new-tokens", "48"], cwd=root, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMNIBUS_NO_BOOTSTRAP="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 2, done.stdout  # nothing but the answers on stdout
    for line in lines:
        jsonschema.validate(json.loads(line), CODE)


def test_ask_cli_refuses_an_unusable_schema_before_loading_anything(tmp_path, capsys):
    from app import cli

    (tmp_path / "log.txt").write_text(DOCUMENT)
    (tmp_path / "bad.json").write_text('{"type": "object", "properties": {"a": {"type": "strng"}}}')
    (tmp_path / "broken.json").write_text('{"type": ')
    for name, words in (("bad.json", "Invalid type: strng"), ("broken.json", "is not valid JSON"),
                        ("missing.json", "cannot read the JSON schema")):
        code = cli.main(["ask", str(tmp_path / "log.txt"), "-q", "x", "--json-schema", str(tmp_path / name),
                         "--model", "no-such-model-anywhere"])
        assert code == 1 and words in capsys.readouterr().err
