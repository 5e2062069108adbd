"""The backend's settings (app/settings.py): one checked object, built once from the command line by the same
builder for the app, `ask`, `serve` and `mcp`; a bad value is refused with the option, the value and what it takes.
Also the twins made one: the size formatter and the free-space probe."""

from __future__ import annotations

import dataclasses

import pytest

from app import cli, model_download, model_hub
from app.server import mcp_stdio, serve
from app.settings import BackendSettings, SettingsError
from app.store import library
from app.ui import app as ui_app
from ingest.errors import human_size

PARSERS = {"app": ui_app.parse_args, "serve": serve.parse_args, "mcp": mcp_stdio.parse_args}
SHOWN = [f.metadata["flag"] for f in dataclasses.fields(BackendSettings) if f.name != "random_weights"]


def ask_help(capsys) -> str:
    with pytest.raises(SystemExit):
        cli.main(["ask", "--help"])
    return capsys.readouterr().out


@pytest.mark.parametrize("entry", PARSERS)
def test_the_command_line_builds_the_settings_once_with_the_same_defaults(entry):
    args = PARSERS[entry]([])
    assert args.settings == BackendSettings()  # the dataclass's defaults are the command line's
    assert not hasattr(args, "model") and not hasattr(args, "kv_dtype")  # read once: only `args.settings` holds them
    chosen = PARSERS[entry](["--model", "demo", "--kv-dtype", "fp8", "--chunk-tokens", "512", "--attention", "fp8",
                             "--weight-dtype", "bf16", "--parallel", "layers", "--cache-dir", "/tmp/saved",
                             "--no-disk-cache", "--api-key-env", "OMNIBUS_KEY"]).settings
    assert chosen == BackendSettings(model="demo", kv_dtype="fp8", chunk_tokens=512, attention="fp8",
                                     weight_dtype="bf16", parallel="layers", cache_dir="/tmp/saved", disk_cache=False,
                                     api_key_env="OMNIBUS_KEY")


def test_ask_builds_the_same_settings(monkeypatch, tmp_path):
    seen = []

    def open_backend(settings, download_progress=None):  # stop at the point the settings are passed down
        seen.append(settings)
        raise SettingsError("stopped here by the test")

    monkeypatch.setattr("app.backend.open_backend", open_backend)
    (tmp_path / "a.txt").write_text("words")
    assert cli.main(["ask", str(tmp_path / "a.txt"), "-q", "why?", "--backend", "openai", "--base-url",
                     "http://127.0.0.1:9/v1", "--served-model", "m", "--max-model-len", "4096"]) == 1
    assert seen == [BackendSettings(backend="openai", base_url="http://127.0.0.1:9/v1", served_model="m",
                                    max_model_len=4096)]


def test_every_shared_option_is_offered_with_the_same_help_everywhere(capsys):
    helps = {"ask": ask_help(capsys)}
    for entry, parse in PARSERS.items():
        with pytest.raises(SystemExit):
            parse(["--help"])
        helps[entry] = capsys.readouterr().out
    for entry, text in helps.items():
        missing = [flag for flag in SHOWN if f"  {flag}" not in text]
        assert missing == [], f"{entry} lost {missing}"
        assert "--random-weights" not in text  # benchmarks only: hidden
    block = helps["app"][helps["app"].index("  --model"):]  # the shared options come last, in the same words
    assert all(text.endswith(block) for text in helps.values())


@pytest.mark.parametrize(("options", "said"), [
    (["--chunk-tokens", "0"], "--chunk-tokens is 0; a prefill chunk holds at least 1 token"),
    (["--chunk-tokens", "-4096"], "--chunk-tokens is -4096; a prefill chunk holds at least 1 token"),
    (["--max-model-len", "0", "--backend", "openai", "--base-url", "http://h:8000/v1"],
     "--max-model-len is 0; the server's context length is at least 1 token"),
    (["--backend", "openai"], "the openai backend needs the server's address: --base-url http://HOST:PORT/v1"),
    (["--base-url", "http://h:8000/v1"], "--base-url is for a remote server: add --backend openai"),
    (["--model", " "], "--model is ' ': name a model"),
])
def test_a_bad_value_is_refused_with_the_option_and_the_numbers(options, said, capsys):
    for entry, parse in PARSERS.items():
        with pytest.raises(SystemExit) as stopped:
            parse(options)
        err = capsys.readouterr().err
        assert stopped.value.code == 2 and said in err and err.startswith("usage: "), (entry, err)
        assert "Traceback" not in err and "SettingsError" not in err
    with pytest.raises(SystemExit) as stopped:
        cli.main(["ask", "book.txt", "-q", "why?", *options])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and said in err and "usage: omnibus ask" in err


def test_settings_made_in_code_are_checked_and_frozen():
    with pytest.raises(SettingsError, match="--kv-dtype is 'int4'; it takes one of auto, bf16, fp8, fp32"):
        BackendSettings(kv_dtype="int4")
    with pytest.raises(SettingsError, match="--served-model, --max-model-len are for a remote server"):
        BackendSettings(served_model="m", max_model_len=4096)
    settings = BackendSettings(model="demo")
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.model = "ultralong-1m"
    assert dataclasses.replace(settings, model="ultralong-1m").model == "ultralong-1m"  # the model picker's switch
    with pytest.raises(SettingsError, match="--chunk-tokens is True"):
        dataclasses.replace(settings, chunk_tokens=True)  # checked again on every copy


def test_sizes_have_one_formatter():
    progress = model_download.DownloadProgress("ultralong-1m", 1_230_000_000, 16_070_000_000, 45_100_000, 329)
    assert progress.describe() == "1.2 GB of 16 GB (7.7%), 45 MB/s, 5 min 29 s left"
    assert [human_size(n) for n in (512, 2_100, 400_000, 20_000_000, 2_147_483_648)] == \
        ["512 B", "2.1 KB", "400 KB", "20 MB", "2.1 GB"]
    assert not hasattr(model_hub, "human_bytes") and not hasattr(model_download, "human_bytes")


def test_free_space_has_one_probe(tmp_path):
    assert library.free_bytes is model_hub.free_bytes  # the store asks the same probe as the downloads
    assert model_hub.free_bytes(tmp_path / "not" / "made" / "yet") == model_hub.free_bytes(tmp_path) > 0
