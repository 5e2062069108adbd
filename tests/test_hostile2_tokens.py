"""Issue 13, item 3: a long whitespace run made tiktoken's regex overflow its stack and panic (a BaseException
that killed `ingest` and `ask`). Such runs are now cut at exact piece boundaries before tokenizing, so the ids
still equal HF `tokenizers`' ids on the same text; whatever a tokenizer still throws skips only its own file."""

import numpy as np
import pytest

from ingest import build_corpus, load_tokenizer
from ingest.tokens import LONG_RUN_CHARS, TokenCounter, long_whitespace_runs


def hf_ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


# Runs of every kind of whitespace, with every kind of neighbour: letters, digits, punctuation (which takes
# following newlines into its piece), a combining mark, the start and the end of the text.
RUN = 1_100_000  # tiktoken panicked from about here; the cuts themselves are exercised from LONG_RUN_CHARS on
SHORT = 4 * LONG_RUN_CHARS
CASES = {
    "spaces then a letter": "before" + " " * RUN + "x after",
    "tabs then a digit": "1" + "\t" * SHORT + "2",
    "spaces at the end": "end " + " " * SHORT,
    "only spaces": " " * SHORT,
    "punctuation, newlines, spaces, punctuation": "!" + "\n" * 3 + " " * SHORT + "\n \n" + " " * 5 + "?",
    "letter, newlines then spaces": "word\r\n" + " \t" * SHORT + "\n" + " " * 300 + "next",
    "mark then no-break spaces": "e\u0301" + "\u00a0" * SHORT + "'s",
    "two runs": "a" + " " * SHORT + "b" + "\n" * SHORT + ". c",
    "a run starting with a space before punctuation": "x" + " " * SHORT + " !",
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_long_whitespace_runs_count_exactly_like_hf_tokenizers(llama3_tokenizer, name):
    text = CASES[name]
    assert long_whitespace_runs(text)
    counter = TokenCounter(llama3_tokenizer)
    assert counter.fast is not None
    [ids] = counter.encode_many([text])
    assert ids.tolist() == hf_ids(llama3_tokenizer, text)


def test_runs_just_around_the_threshold_are_exact(llama3_tokenizer):
    counter = TokenCounter(llama3_tokenizer)
    texts = [f"a{' ' * n}b\n" for n in (LONG_RUN_CHARS // 2 - 1, LONG_RUN_CHARS // 2, LONG_RUN_CHARS,
                                         LONG_RUN_CHARS + 1, 3 * LONG_RUN_CHARS - 1)]
    for text, ids in zip(texts, counter.encode_many(texts)):
        assert ids.tolist() == hf_ids(llama3_tokenizer, text)


def test_a_file_of_a_million_spaces_is_read_and_counted_exactly(tmp_path, llama3_tokenizer):
    (tmp_path / "spaces.txt").write_text("start" + " " * RUN + "x\n")
    (tmp_path / "tabs.py").write_text("x = 1" + "\t" * RUN + "# end\n")
    (tmp_path / "plain.txt").write_text("An ordinary file.\n")
    corpus = build_corpus([tmp_path], tokenizer=llama3_tokenizer)
    assert [d.source.rpartition("/")[2] for d in corpus.documents] == ["", "plain.txt", "spaces.txt", "tabs.py"]
    assert corpus.skipped == []
    assert corpus.token_ids().tolist() == hf_ids(llama3_tokenizer, corpus.text)


class PanickingTokenizer:
    """A real HF tokenizer whose batch call raises a BaseException (as a Rust panic does) on one text."""

    def __init__(self, tokenizer):
        self.inner = tokenizer

    def __call__(self, texts, **kwargs):
        if any("PANIC-HERE" in t for t in texts):
            raise BaseException("called `Result::unwrap()` on an `Err` value: StackOverflow")
        return self.inner(texts, **kwargs)


def test_a_tokenizer_panic_skips_only_its_file_and_the_rest_is_reindexed(tmp_path, llama3_tokenizer):
    (tmp_path / "a.txt").write_text("First file.\n")
    (tmp_path / "b.txt").write_text("PANIC-HERE\n")
    (tmp_path / "c.txt").write_text("Third file.\n")
    tokenizer = PanickingTokenizer(llama3_tokenizer)
    corpus = build_corpus([tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "c.txt"], tokenizer=tokenizer)
    assert [(d.index, d.source) for d in corpus.documents] == [(1, "a.txt"), (2, "c.txt")]
    [skip] = corpus.skipped
    assert skip.source == "b.txt" and skip.reason.startswith("the tokenizer failed on it (BaseException")
    assert np.array_equal(corpus.token_ids(), hf_ids(llama3_tokenizer, corpus.text))
