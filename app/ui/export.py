"""A conversation as a file: the JSON record (documents, text and all, so it can be imported again) or a Markdown
document for people, named after its documents and the day. Written readable by this user only."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from app.sharing.saved import corpus_record
from app.ui.views import FINISH_WORDS


def record(model_name: str, session) -> dict:
    """The conversation of `session` (`app.ui.session.Session`) as one JSON-ready record: model, documents,
    exchanges with their timings and how each ended."""
    documents = [doc.to_json() for doc in session.corpus.documents] if session.corpus else []
    exchanges = []
    for e in session.exchanges:
        item = {"question": e.question, "answer": e.answer}
        if e.stats is not None:
            item["stats"] = {"time_to_first_token_s": round(e.stats.ttft_s, 3),
                             "tokens_per_s": round(e.stats.tokens_per_s, 1),
                             "new_tokens": e.stats.new_tokens, "finish_reason": e.stats.finish_reason}
        exchanges.append(item)
    return {"model": model_name, "exported": time.strftime("%Y-%m-%d %H:%M:%S"),
            "documents": documents, "exchanges": exchanges,
            "system_prompt": session.system_prompt or session.restored_prompt,
            "corpus": corpus_record(session.corpus) if session.corpus else None}


def write(conversation: dict, sources: list[str], folder: Path, kind: str) -> Path:
    """Write `conversation` as Markdown ("md") or JSON ("json") into `folder` (made 0700, the file 0600)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / f"{export_name(sources)}.{kind}"
    text = json.dumps(conversation, indent=2, ensure_ascii=False) + "\n" if kind == "json" else markdown(conversation)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # readable by this user only
    os.fchmod(fd, 0o600)
    with open(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path


def export_name(sources: list[str], day: str | None = None) -> str:
    """A file name for a conversation: its first document's name, how many more, and the day."""
    first = sources[0].rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0] if sources else "conversation"
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", first).strip("-")[:40] or "documents"
    more = f"-and-{len(sources) - 1}-more" if len(sources) > 1 else ""
    return f"omnibus-{stem}{more}-{day or time.strftime('%Y-%m-%d')}"


def markdown(conversation: dict) -> str:
    """A conversation record (`record`) as a Markdown document."""
    lines = ["# Omnibus conversation", "", f"Model: {conversation['model']}  ",
             f"Exported: {conversation['exported']}", ""]
    if conversation["documents"]:
        lines += ["## Documents", ""]
        lines += [f"- {d['source']} ({d['kind']}, {d['tokens']:,} tokens)" for d in conversation["documents"]]
        lines.append("")
    for e in conversation["exchanges"]:
        lines += [f"## Q: {e['question']}", "", e["answer"].strip(), ""]
        if "stats" in e:
            s = e["stats"]
            ended = FINISH_WORDS.get(s["finish_reason"], "")
            lines += [f"*First word after {s['time_to_first_token_s']:.2f} s; {s['new_tokens']} tokens at "
                      f"{s['tokens_per_s']:.1f} tokens/s{'; ' + ended if ended else ''}.*", ""]
    return "\n".join(lines)
