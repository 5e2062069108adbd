"""The context format: how documents are written into the one string the model reads.

Each document is wrapped as::

    <document index="3" source="papers/x.pdf" kind="pdf" pages="12">
    [page 1]
    ...text of page 1...
    [page 2: no text layer]
    </document>

and documents follow each other with one newline between them (`</document>\\n<document`).
That single newline matters: with it, every document boundary is also a boundary of the
tokenizer's pre-tokenization (for the Llama-3 and GPT-2 style split patterns), so the
corpus's token ids are exactly the per-document ids concatenated.

- Attribute values escape `&`, `"`, `<` and `>`.
- Inside content, any `<document` or `</document` (any letter case) has its `<` written as
  `&lt;`, so a file can never open or close a wrapper. Nothing else is escaped.
- Code may carry line numbers: each line becomes `{n:>4}| line` (wider when needed); empty
  lines become `{n:>4}|`.
- A folder or archive that holds code gets a directory tree as its first document,
  `source="myrepo/"`, kind `text`.
- The question and instructions belong after the corpus; nothing here adds them.
"""

from __future__ import annotations

import re

_TAG = re.compile(r"<(?=/?document)", re.IGNORECASE)


def escape_attr(value: str) -> str:
    """Escape an attribute value for the wrapper tag."""
    return (value.replace("&", "&amp;").replace('"', "&quot;")
            .replace("<", "&lt;").replace(">", "&gt;").replace("\n", " "))


def escape_content(text: str) -> str:
    """Neutralise wrapper tags inside file content."""
    return _TAG.sub("&lt;", text) if "<" in text else text


def number_lines(text: str) -> str:
    """Prefix each line with its 1-based number: `  12| code`."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    width = max(4, len(str(len(lines))))
    return "".join(f"{n:>{width}}| {line}\n" if line else f"{n:>{width}}|\n"
                   for n, line in enumerate(lines, start=1))


def prepare_body(body: str, spans, line_numbers: bool) -> tuple[str, tuple]:
    """Escape (and optionally number) a loader's body; move page spans to the new offsets."""
    if line_numbers:
        body = number_lines(body)
    if not spans:
        return _end_with_newline(escape_content(body)), ()
    pieces, new_spans, cursor, out_len = [], [], 0, 0
    for page_no, start, end in spans:
        before = escape_content(body[cursor:start])
        inside = escape_content(body[start:end])
        pieces += [before, inside]
        out_len += len(before)
        new_spans.append((page_no, out_len, out_len + len(inside)))
        out_len += len(inside)
        cursor = end
    pieces.append(escape_content(body[cursor:]))
    return _end_with_newline("".join(pieces)), tuple(new_spans)


def _end_with_newline(text: str) -> str:
    return text if not text or text.endswith("\n") else text + "\n"


def header(index: int, source: str, kind: str, pages: int | None) -> str:
    """The opening tag line of one document."""
    extra = f' pages="{pages}"' if pages is not None else ""
    return f'<document index="{index}" source="{escape_attr(source)}" kind="{kind}"{extra}>\n'


FOOTER = "</document>\n"


def wrap(index: int, source: str, kind: str, pages: int | None, body: str, spans) -> tuple[str, tuple]:
    """The full text of one document and its page spans as offsets into that text."""
    head = header(index, source, kind, pages)
    shift = len(head)
    return head + body + FOOTER, tuple((p, s + shift, e + shift) for p, s, e in spans)


def directory_tree(root: str, sources: list[str]) -> str:
    """An indented listing of the files under `root` (display paths starting with `root/`)."""
    lines = [f"Directory tree of {root}/ ({len(sources):,} files)", f"{root}/"]
    printed: set[tuple[str, ...]] = set()
    for source in sorted(sources, key=lambda s: s.split("/")):
        parts = source.split("/")[1:]
        for depth in range(1, len(parts)):
            folder = tuple(parts[:depth])
            if folder not in printed:
                printed.add(folder)
                lines.append("  " * depth + parts[depth - 1] + "/")
        lines.append("  " * len(parts) + parts[-1])
    return escape_content("\n".join(lines) + "\n")
