"""Logging for the app and the CLI: one line per event on stderr.

`configure(level)` is called once by each entry point (`omnibus`, `launch.py`) before anything else runs. The level
comes from `--log-level`, else `$OMNIBUS_LOG_LEVEL`, else "info". Omnibus's own loggers (`app.*`, `ingest.*`) log at
that level; the libraries underneath (transformers, httpx, gradio, huggingface_hub) only from "warning" up, unless
the level asked for is "debug". A message or traceback that spans lines is folded into one line (` | `), so a log
can be read with `grep`. Libraries' progress bars (tqdm: "Converting and de-quantizing GGUF tensors", "Loading
weights") are switched off below "debug" (Omnibus reports its own progress), and Python warnings become log records.
"""

from __future__ import annotations

import logging
import os
import sys
import time

LEVELS = ("debug", "info", "warning", "error")
DEFAULT = "info"
ENV = "OMNIBUS_LOG_LEVEL"
OURS = ("app", "ingest", "omnibus")
_handler: logging.Handler | None = None


class OneLineFormatter(logging.Formatter):
    """`2026-12-01 20:41:07 INFO app.backend: loading model demo`, with any newline folded into ` | `."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        text = record.getMessage()
        if record.exc_info:
            if record.levelno <= logging.DEBUG or logging.getLogger().isEnabledFor(logging.DEBUG):
                text += " | " + self.formatException(record.exc_info)
            else:
                error = record.exc_info[1]
                text += f" | {type(error).__name__}: {error}"
        return f"{stamp} {record.levelname} {record.name}: " + " | ".join(
            line for line in text.splitlines() if line.strip())


def level_name(requested: str | None = None) -> str:
    """The level to use: `requested`, else $OMNIBUS_LOG_LEVEL, else "info". Raises ValueError for an unknown name."""
    name = (requested or os.environ.get(ENV) or DEFAULT).strip().lower()
    if name == "warn":
        name = "warning"
    if name not in LEVELS:
        raise ValueError(f"unknown log level {name!r}; use one of {', '.join(LEVELS)}")
    return name


class StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at each record, not the one it was made with (which a test's capture,
    or a redirect, may have closed since)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def configure(requested: str | None = None, stream=None) -> str:
    """Send log records to stderr (or `stream`), one line each, at the level asked for; returns that level's name.

    Calling it again replaces the earlier handler (tests, and the app after the CLI parsed its options)."""
    global _handler
    name = level_name(requested)
    level = getattr(logging, name.upper())
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = logging.StreamHandler(stream) if stream is not None else StderrHandler()
    _handler.setFormatter(OneLineFormatter())
    root.addHandler(_handler)
    root.setLevel(level if level <= logging.DEBUG else logging.WARNING)  # libraries: warnings and up
    for logger in OURS:
        logging.getLogger(logger).setLevel(level)
    _library_handlers_off()
    logging.captureWarnings(True)  # warnings.warn(...) from a library: one line through the handler above
    _progress_bars(on=level <= logging.DEBUG)
    return name


def _progress_bars(on: bool) -> None:
    """Library progress bars on or off: tqdm reads TQDM_DISABLE when it is imported, and a class already
    imported gets the same default here."""
    os.environ["TQDM_DISABLE"] = "0" if on else "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "0" if on else "1"
    std = sys.modules.get("tqdm.std")
    if std is not None:
        import functools

        init = getattr(std.tqdm, "_omnibus_init", std.tqdm.__init__)
        std.tqdm._omnibus_init = init
        std.tqdm.__init__ = init if on else functools.partialmethod(init, disable=True)


def _library_handlers_off() -> None:
    """huggingface_hub puts its own handler on its logger; send its records through ours instead (one line each)."""
    try:
        import huggingface_hub.utils.logging  # noqa: F401  (adds its handler on import: let it, then take it off)
    except ImportError:
        return
    hub = logging.getLogger("huggingface_hub")
    for handler in list(hub.handlers):
        hub.removeHandler(handler)
    hub.setLevel(logging.NOTSET if logging.getLogger().level <= logging.DEBUG else logging.WARNING)
    hub.propagate = True


def split_level(argv: list[str]) -> tuple[str | None, list[str]]:
    """Take `--log-level X` (or `--log-level=X`) out of `argv`, wherever it is: (X or None, the other arguments)."""
    level, rest, items = None, [], iter(argv)
    for arg in items:
        if arg == "--log-level":
            level = next(items, None)
            if level is None:
                raise ValueError("--log-level needs a value: " + ", ".join(LEVELS))
        elif arg.startswith("--log-level="):
            level = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return level, rest
