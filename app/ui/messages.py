"""Errors meant for the user, as the page and the terminal say them: a sentence, no class name, one line."""

from __future__ import annotations

import contextlib
import sys

import gradio as gr

from app.errors import Cancelled, OmnibusError


def say(message: str) -> None:
    """One line in the terminal where the app was started."""
    print(message, file=sys.stderr, flush=True)


def user_message(err: OmnibusError) -> str:
    """An error meant for the user, as a sentence; logged as one line where the app was started (no class
    name, no word said twice)."""
    text = str(err)
    if isinstance(err, Cancelled) and not text.lower().startswith("stopped"):
        text = f"stopped: {text}"
    text = text[:1].upper() + text[1:]
    say(f"omnibus: {text}")
    return text


@contextlib.contextmanager
def user_errors():
    """Show errors meant for the user on the page, as they are (one line in the terminal, no traceback)."""
    try:
        yield
    except OmnibusError as err:
        raise gr.Error(user_message(err), print_exception=False) from err
