"""The settings that open a backend, in one checked object: `BackendSettings`.

Each setting is one field here with its default, its command-line option and that option's help, so the app, `ask`,
`serve` and `mcp` offer the same options (`add_arguments`) and read them back the same way, once, into
`args.settings` (`parse_arguments`, or `read_settings` for a subcommand); that object is what gets passed down
(`app.backend.open_backend(settings)`). It is checked when it is made, from the command line or in code: a bad value
raises SettingsError, which names the option, the value and what it takes (on the command line: argparse's usage
line and exit status 2).

This module imports nothing above `app.errors`, so every layer may use it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields

from app.errors import OmnibusError

BACKENDS = ("local", "openai")
KV_DTYPES = ("auto", "bf16", "fp8", "fp32")
WEIGHT_DTYPES = ("auto", "bf16", "fp8")
ATTENTIONS = ("bf16", "fp8")
PARALLEL = ("sequence", "layers")
REMOTE_ONLY = ("base_url", "served_model", "max_model_len")  # mean something only with --backend openai


class SettingsError(OmnibusError):
    """A setting has a value it cannot take; the message names the option, the value and what it takes."""


def _option(default, flag: str, **argparse_options):
    """A field with its command-line option: `flag` and what `ArgumentParser.add_argument` takes besides."""
    return field(default=default, metadata={"flag": flag, **argparse_options})


@dataclass(frozen=True, kw_only=True)
class BackendSettings:
    """How to open the backend: which model and where it runs, its dtypes, attention, chunking and disk cache.

    The defaults are the command line's. The fields are in the order the options show in `--help`.
    """

    model: str = _option("auto", "--model", help="auto, ultralong-1m|2m|4m, demo, or any Hugging Face id or local "
                                                 "folder (default: auto)")
    kv_dtype: str = _option("auto", "--kv-dtype", choices=KV_DTYPES)
    chunk_tokens: int | None = _option(None, "--chunk-tokens", type=int,
                                       help="prefill chunk size (default 16,384 on GPUs)")
    backend: str = _option("local", "--backend", choices=BACKENDS,
                           help="local: this machine's GPUs/CPU; openai: a vLLM/SGLang/llama.cpp server")
    base_url: str | None = _option(None, "--base-url",
                                   help="the server's OpenAI API root, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str | None = _option(None, "--api-key-env",
                                      help="name of the environment variable that holds the server's API key")
    served_model: str | None = _option(None, "--served-model",
                                       help="the model name the server expects (default: the first it lists)")
    weight_dtype: str = _option("auto", "--weight-dtype", choices=WEIGHT_DTYPES,
                                help="fp8 halves the weights' memory (needed for a 1M-token corpus on one 80 GB GPU); "
                                     "auto: bf16 unless only fp8 lets the model's window fit (ultralong-2m on one "
                                     "H200)")
    attention: str = _option("bf16", "--attention", choices=ATTENTIONS,
                             help="fp8: FlashAttention-3's fp8 kernels read the fp8 KV cache in prefill and decode "
                                  "(Hopper GPUs with fa3-fwd; faster at long context, ~4%% relative error)")
    max_model_len: int | None = _option(None, "--max-model-len", type=int,
                                        help="the server's context length, if it does not report one")
    parallel: str = _option("sequence", "--parallel", choices=PARALLEL,
                            help="several GPUs: split every layer's KV by position so attention runs on all of them "
                                 "at once (default), or split the layers (one GPU busy at a time)")
    cache_dir: str | None = _option(None, "--cache-dir",
                                    help="where processed corpora are saved (default: ~/.cache/omnibus)")
    disk_cache: bool = _option(True, "--no-disk-cache", action="store_false",
                               help="neither reopen nor save corpora on disk")
    random_weights: bool = _option(False, "--random-weights", action="store_true",
                                   help=argparse.SUPPRESS)  # benchmarks only

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise SettingsError(f"--model is {self.model!r}: name a model (auto, ultralong-1m|2m|4m, demo), a "
                                "Hugging Face id (owner/name) or a folder")
        for name, allowed in (("backend", BACKENDS), ("kv_dtype", KV_DTYPES), ("weight_dtype", WEIGHT_DTYPES),
                              ("attention", ATTENTIONS), ("parallel", PARALLEL)):
            value = getattr(self, name)
            if value not in allowed:
                raise SettingsError(f"{_flag(name)} is {value!r}; it takes one of {', '.join(allowed)}")
        if self.chunk_tokens is not None and not _whole(self.chunk_tokens, 1):
            raise SettingsError(f"--chunk-tokens is {self.chunk_tokens!r}; a prefill chunk holds at least 1 token "
                                "(leave it out for 16,384 on GPUs, or a size measured on the CPU)")
        if self.max_model_len is not None and not _whole(self.max_model_len, 1):
            raise SettingsError(f"--max-model-len is {self.max_model_len!r}; the server's context length is at "
                                "least 1 token (leave it out to take what the server reports)")
        if self.backend == "openai" and not self.base_url:
            raise SettingsError("the openai backend needs the server's address: --base-url http://HOST:PORT/v1")
        stray = [_flag(name) for name in REMOTE_ONLY if self.backend == "local" and getattr(self, name) is not None]
        if stray:
            raise SettingsError(f"{', '.join(stray)} {'is' if len(stray) == 1 else 'are'} for a remote server: add "
                                "--backend openai to use one, or leave "
                                f"{'it' if len(stray) == 1 else 'them'} out for this machine's model")

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> BackendSettings:
        """The settings that `args` (parsed with the options of `add_arguments`) hold; SettingsError if one is bad."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


def _flag(name: str) -> str:
    return next(f.metadata["flag"] for f in fields(BackendSettings) if f.name == name)


def _whole(value, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Put the options of every `BackendSettings` field on `parser` (the app, `ask`, `serve` and `mcp` share them)."""
    for setting in fields(BackendSettings):
        options = {key: value for key, value in setting.metadata.items() if key != "flag"}
        parser.add_argument(setting.metadata["flag"], dest=setting.name, default=setting.default, **options)


def read_settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> BackendSettings:
    """The checked settings of `args`, parsed by `parser` (or its subcommand parser); the shared options then leave
    `args`, so that nothing reads them twice. A bad value ends the run as argparse's own errors do: the usage line,
    the message, exit status 2."""
    try:
        settings = BackendSettings.from_arguments(args)
    except SettingsError as err:
        parser.error(str(err))
    for setting in fields(BackendSettings):
        delattr(args, setting.name)
    return settings


def parse_arguments(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """`parser.parse_args(argv)`, with the shared options read into one `BackendSettings` at `args.settings`."""
    args = parser.parse_args(argv)
    args.settings = read_settings(parser, args)
    return args
