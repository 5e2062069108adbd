"""Shared fixtures: the real SmolLM2 demo model (loaded once per run) and tiny random Llama models."""

import os
import tempfile

import pytest

from test_engine_helpers import tiny_llama as make_tiny_llama


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (tests/test_gpu_*.py); skipped without one")


# Saved corpora (app/store/) go to $XDG_CACHE_HOME/omnibus: keep every test run, and the apps and CLIs the
# tests start, out of the user's real cache folder.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="omnibus-test-cache-")


@pytest.fixture(scope="session")
def demo_model():
    """(model, tokenizer) of the real demo model on the CPU, fp32 (about 20 s to load, so once per run)."""
    from app.engine.models import load_model

    return load_model("demo")


@pytest.fixture(scope="session")
def llama3_tokenizer():
    """The real Llama-3 tokenizer bundled for ingestion (vocab 128,256)."""
    from ingest import load_tokenizer

    return load_tokenizer()


@pytest.fixture
def tiny_llama():
    """Factory for tiny random Llama models: `tiny_llama(rope="llama3", layers=2, ...)`; see test_engine_helpers."""
    return make_tiny_llama


@pytest.fixture(scope="session")
def demo_tokenizer(demo_model):
    """The demo model's own tokenizer (SmolLM2, ChatML template with <|im_start|>/<|im_end|>)."""
    return demo_model[1]
