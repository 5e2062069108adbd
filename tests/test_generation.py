"""Streaming detokenization and sampling (app/generation.py) with the real Llama-3 tokenizer."""

import pytest
import torch

from app.engine.generation import StreamDecoder, sample

TEXTS = [
    "Plain ASCII, nothing to see.",
    "Emoji: 🦙🚀 and a family 👩‍👩‍👧‍👦 with a flag 🇳🇴, then 🤖.",
    "日本語のテキストと中文字符，还有한국어 문장도 있습니다。",
    "Accents: naïve café, Ångström, Œuvre, ß; math: ∮ E⋅da = Q, √2 ≈ 1.414; arrows ⟶ ⇒.",
    "Mixed 🧪 tokens: αβγ 😀 日本 🙂 end",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙 and 🏳️‍🌈 mid-sentence.",
]


def _stream(tokenizer, ids):
    decoder = StreamDecoder(tokenizer)
    pieces = [decoder.push(token) for token in ids]
    return pieces, decoder.flush(), decoder


@pytest.mark.parametrize("text", TEXTS)
def test_pieces_concatenate_to_the_full_decode_without_replacement_chars(llama3_tokenizer, text):
    ids = llama3_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > 3
    pieces, tail, decoder = _stream(llama3_tokenizer, ids)
    assert "".join(pieces) + tail == text == decoder.text()
    assert not any("\ufffd" in piece for piece in pieces)
    assert tail == ""  # complete characters all came out while streaming


def test_multi_token_characters_come_out_whole(llama3_tokenizer):
    ids = llama3_tokenizer("🦙", add_special_tokens=False)["input_ids"]
    assert len(ids) > 1  # the llama emoji is split over byte tokens
    pieces, tail, _ = _stream(llama3_tokenizer, ids)
    assert pieces[:-1] == [""] * (len(ids) - 1) and pieces[-1] == "🦙" and tail == ""


def test_incomplete_character_at_the_end_is_flushed(llama3_tokenizer):
    ids = llama3_tokenizer("ok 🦙", add_special_tokens=False)["input_ids"]
    pieces, tail, _ = _stream(llama3_tokenizer, ids[:-1])  # the last byte of the emoji never arrives
    assert "".join(pieces) == "ok" and "\ufffd" not in "".join(pieces)
    assert tail.strip() and set(tail.strip()) == {"\ufffd"}


def test_special_tokens_are_skipped(llama3_tokenizer):
    eot = llama3_tokenizer.convert_tokens_to_ids("<|eot_id|>")
    ids = llama3_tokenizer("Hello", add_special_tokens=False)["input_ids"] + [eot] + \
        llama3_tokenizer(" world", add_special_tokens=False)["input_ids"]
    pieces, tail, _ = _stream(llama3_tokenizer, ids)
    assert "".join(pieces) + tail == "Hello world"


def test_demo_tokenizer_streams_utf8_too(demo_tokenizer):
    text = TEXTS[1] + " " + TEXTS[2]
    ids = demo_tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces, tail, _ = _stream(demo_tokenizer, ids)
    assert "".join(pieces) + tail == text and not any("\ufffd" in p for p in pieces)


def test_greedy_and_top_p_sampling():
    logits = torch.tensor([0.0, 3.0, 2.9, -1.0])
    assert sample(logits, 0.0, 0.95) == 1
    generator = torch.Generator().manual_seed(0)
    assert {sample(logits, 1.0, 0.01, generator) for _ in range(50)} == {1}  # top-p keeps only the top token
    draws = [sample(logits, 1.0, 0.95, generator) for _ in range(400)]
    assert set(draws) == {1, 2}  # p = .51, .46, .03, .01: the tail beyond top_p 0.95 is cut
    assert 0.3 < draws.count(2) / len(draws) < 0.6
    again = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert [sample(logits, 0.8, 1.0, again[0]) for _ in range(20)] == [sample(logits, 0.8, 1.0, again[1]) for _ in range(20)]


def test_repetition_guard_stops_a_loop_with_a_counter_in_it(demo_tokenizer):
    from app.engine.generation import RepetitionGuard

    loop = "".join(f"The document is in the version 1.2.{i}. " for i in range(10))
    ids = demo_tokenizer(loop, add_special_tokens=False)["input_ids"]
    guard = RepetitionGuard()
    stopped = next(i for i, token in enumerate(ids) if guard.push(token))
    cycle = len(ids) // 10
    assert stopped < 4 * cycle  # caught in the third or fourth cycle, not at the answer cap


def test_repetition_guard_lets_ordinary_prose_and_code_examples_through(demo_tokenizer):
    from pydoc_data.topics import topics

    from app.engine.generation import RepetitionGuard

    for key in ("exceptions", "naming", "execmodel", "assignment", "compound"):
        ids = demo_tokenizer(topics[key], add_special_tokens=False)["input_ids"][:1024]
        guard = RepetitionGuard()
        flagged = [i for i, token in enumerate(ids) if guard.push(token)]
        assert not flagged, (key, demo_tokenizer.decode(ids[max(flagged[0] - 40, 0):flagged[0] + 1]))
