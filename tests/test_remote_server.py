"""End to end against a real OpenAI-compatible server: llama.cpp (llama-cpp-python) serving the SmolLM2
demo GGUF on the CPU. The remote engine loads a real corpus, answers a needle question from it, and a
follow-up reuses the server's cached prefix; the CLI does the same as a subprocess."""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from app.protocol import AnswerStats, Settings
from app.errors import CorpusTooLarge
from app.prompt import Turn
from app.remote import RemoteEngine
from ingest import build_corpus, load_tokenizer
from remote_support import llama_server

pytestmark = pytest.mark.skipif(bool(llama_server.missing()), reason=llama_server.missing() or "ready")

ROOT = Path(__file__).resolve().parent.parent
NEEDLE = "The secret launch code is 7391."
QUESTION = "What is the secret launch code?"


def write_corpus(folder: Path, filler_lines: int = 60) -> Path:
    """A few real text files, with the needle in the middle one."""
    folder.mkdir(parents=True, exist_ok=True)
    weather = "The weather report for the harbour said light winds and calm seas all week.\n"
    (folder / "a_harbour.txt").write_text(weather * (filler_lines // 3))
    (folder / "b_orders.txt").write_text("Standing orders for the night shift.\n" * 10 + NEEDLE + "\n"
                                         + "Check the gates every hour.\n" * 10)
    (folder / "c_menu.txt").write_text("Lunch is soup and bread; dinner is fish and rice.\n" * (filler_lines // 3))
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("llama_server") / "server.log"
    with llama_server.LlamaServer(n_ctx=4096, log_path=log) as running:
        yield running


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def collect(pieces):
    pieces = list(pieces)
    assert isinstance(pieces[-1], AnswerStats)
    return "".join(pieces[:-1]), pieces[-1]


def test_needle_answer_usage_and_prefix_reuse(server, tokenizer, tmp_path):
    with server.answering():
        corpus = build_corpus([str(write_corpus(tmp_path / "docs"))], tokenizer=tokenizer)
        engine = RemoteEngine(server.url, tokenizer=tokenizer)
        assert engine.model_name == llama_server.SERVED_NAME
        assert engine.window == 0  # llama-cpp-python does not report its n_ctx: the server decides
        assert engine.plan(corpus.total_tokens).fits

        load = engine.load(corpus)
        assert load.tokens > corpus.total_tokens // 2 and load.seconds > 0  # the server's own count of the prompt
        settings = Settings(max_new_tokens=24, temperature=0.0)
        text, first = collect(engine.ask(QUESTION, settings=settings))
        assert "7391" in text, text
        assert first.finish_reason in ("stop", "length") and first.new_tokens > 0
        assert first.prompt_tokens > load.tokens and first.ttft_s > 0

        # A follow-up: the same corpus prefix, so llama.cpp re-runs only the new turns.
        text2, second = collect(engine.ask("Repeat the code, digits only.", history=[Turn(QUESTION, text)],
                                           settings=settings))
        assert "7391" in text2.replace(" ", ""), text2
        assert second.prompt_tokens > first.prompt_tokens
        assert second.ttft_s < load.seconds, (second.ttft_s, load.seconds)


def test_corpus_over_the_server_context_is_refused(server, tokenizer, tmp_path):
    with server.answering():
        corpus = build_corpus([str(write_corpus(tmp_path / "big", filler_lines=900))], tokenizer=tokenizer)
        assert corpus.total_tokens > server.n_ctx
        # Told the window, the engine refuses before sending anything.
        with pytest.raises(CorpusTooLarge, match=f"takes {server.n_ctx:,}"):
            RemoteEngine(server.url, max_model_len=server.n_ctx, tokenizer=tokenizer).load(corpus)
        # Not told, the server's HTTP 400 comes back as the same kind of error, with its message.
        with pytest.raises(CorpusTooLarge, match="maximum context length is 4096"):
            RemoteEngine(server.url, tokenizer=tokenizer).load(corpus)


def test_cli_ask_answers_from_the_server(server, tmp_path):
    with server.answering():
        docs = write_corpus(tmp_path / "docs")
        env = dict(os.environ, OMNIBUS_NO_BOOTSTRAP="1")
        result = subprocess.run([sys.executable, str(ROOT / "launch.py"), "ask", str(docs), "-q", QUESTION,
                                 "--backend", "openai", "--base-url", server.url, "--max-new-tokens", "24"],
                                capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
        assert result.returncode == 0, result.stderr
        assert "7391" in result.stdout, result.stdout
        assert "prompt tokens" in result.stderr and "time to first token" in result.stderr, result.stderr
        assert llama_server.SERVED_NAME in result.stderr


def test_server_build_has_no_amx_path(server):
    """llama.cpp's AMX matrix path crashes on some Sapphire Rapids machines, so launch.py builds the server for a
    portable x86-64 baseline; the server's own start-up line shows which CPU features its build uses."""
    info = server.system_info()
    assert info.startswith("CPU : "), server.log_tail()
    assert "AMX" not in info and "AVX512" not in info, info
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert "AVX2 = 1" in info and "FMA = 1" in info and "F16C = 1" in info, info


def test_a_server_that_cannot_start_fails_with_its_own_log(tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(AssertionError, match=r"llama_cpp.server exited \(1\)") as failure:
        with llama_server.LlamaServer(n_ctx=512, model=broken):
            pass
    assert str(broken) in str(failure.value), failure.value  # the server's own words about the file it refused


def test_a_server_that_dies_fails_with_its_own_log(tokenizer):
    with llama_server.LlamaServer(n_ctx=512) as dying:
        started = dying.system_info()
        dying.process.send_signal(signal.SIGSEGV)  # how the AMX crash ended it
        dying.process.wait(10)
        with pytest.raises(AssertionError, match="died while serving .killed by SIGSEGV.") as failure:
            with dying.answering():
                RemoteEngine(dying.url, tokenizer=tokenizer)
    assert "connection" in str(failure.value).lower()  # what the client saw, and then the server's log
    assert started and started in str(failure.value), failure.value
