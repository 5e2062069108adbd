"""Likely secrets in ingested documents: cloud keys, API tokens, private keys, passwords in assignments.

`scan_corpus(corpus)` returns, per document source, the findings in that document: what kind of secret,
on which line of the file, and a masked excerpt (the first four characters and the length; a secret is
never copied out whole). The UI lists them with an option to leave those files out before anything is
sent to a remote server or shown through a share link; `ask --backend openai` warns on stderr.

It is a heuristic: specific token formats (AWS, GitHub, Slack, OpenAI-style `sk-`, Google API keys,
PEM private-key blocks) are matched exactly; a generic `password = "..."`-style assignment counts only
when its value looks random (length ≥ 8, a digit or a symbol in it, at least two of lower case, upper case and
digits, ≥ 3 bits of entropy per character, not a placeholder).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

# kind -> (regex, lower-case markers: the regex runs only on texts that hold one of them)
_PATTERNS = {
    "AWS access key id": (r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16}\b", ("akia", "asia", "agpa", "aida", "aroa")),
    "AWS secret access key": (r"(?i:aws_?secret_?access_?key)\W{0,4}[=:]\s*[\"']?(?P<aws>[A-Za-z0-9/+]{40})\b",
                              ("secret_access", "secretaccess")),
    "GitHub token": (r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{50,255})\b",
                     ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_")),
    "Slack token": (r"\bxox[abposr]-[A-Za-z0-9-]{10,250}|https://hooks\.slack\.com/services/[A-Za-z0-9/_]{20,}",
                    ("xox", "hooks.slack.com")),
    "OpenAI-style API key": (r"\bsk-(?:proj-|svcacct-|admin-|ant-(?:api03-)?)?[A-Za-z0-9_-]{20,250}", ("sk-",)),
    "Google API key": (r"\bAIza[0-9A-Za-z_-]{35}\b", ("aiza",)),
    "private key": (r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----", ("private key",)),
}
ASSIGNMENT = "password or secret assignment"
_SPECIFIC = [(kind, re.compile(regex), markers) for kind, (regex, markers) in _PATTERNS.items()]
# Assignments are found value first (fast: a quoted value after `=`, `:` or `=>`), then the name before it.
_QUOTED_VALUE = re.compile(r"[=:>]\s{0,4}[\"'](?P<value>[^\"'\s]{8,200})[\"']")
_SECRET_NAME = re.compile(r"(?i:password|passwd|pwd|secret|api_?key|apikey|token|access_?key|private_?key|auth)"
                          r"[\w.-]{0,40}[\"']?\s{0,4}(?::=|=>|[=:])$")
_PLACEHOLDER = re.compile(r"(?i)^(?:\$\{?|%\(|\{\{|<)|^(?:x+|\*+|\.+)$|changeme|example|your[_-]|dummy|placeholder"
                          r"|redacted|^password\d*$|^secret$")
_WORDLIKE = re.compile(r"[A-Za-z_.-]+")
MIN_ENTROPY_BITS = 3.0


@dataclass(frozen=True)
class Finding:
    """One likely secret: its kind, the 1-based line in the file, and a masked excerpt."""

    kind: str
    line: int
    excerpt: str


def entropy_bits(text: str) -> float:
    """Shannon entropy of `text` in bits per character."""
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values()) if text else 0.0


def _mask(secret: str) -> str:
    return f"{secret[:4]}… ({len(secret)} characters)"


def scan_text(text: str) -> list[Finding]:
    """Likely secrets in one text, in order of appearance."""
    found, lower, taken = [], text.lower(), set()
    for kind, regex, markers in _SPECIFIC:
        if any(marker in lower for marker in markers):
            for match in regex.finditer(text):
                found.append((match.start(), kind, match.group("aws") if "aws" in regex.groupindex else match.group()))
                taken.add(match.end())
    for match in _QUOTED_VALUE.finditer(text):
        value, at = match.group("value"), match.start()
        if match.end("value") in taken:  # already found as a specific kind of key
            continue
        if _looks_random(value) and _SECRET_NAME.search(text, max(0, at - 60), at + 1):
            found.append((at, ASSIGNMENT, value))
    found.sort(key=lambda f: f[0])
    return [Finding(kind, text.count("\n", 0, at) + 1, _mask(secret)) for at, kind, secret in found]


def _looks_random(value: str) -> bool:
    """A value that could be a real password or key: not a placeholder, mixed characters, high entropy."""
    if _WORDLIKE.fullmatch(value):  # 'Proxy-Authorization', 'utf-8-sig': names, not secrets
        return False
    classes = any(c.islower() for c in value) + any(c.isupper() for c in value) + any(c.isdigit() for c in value)
    return classes >= 2 and entropy_bits(value) >= MIN_ENTROPY_BITS and not _PLACEHOLDER.search(value)


def scan_corpus(corpus) -> dict[str, list[Finding]]:
    """Findings per document source (only documents with findings), lines counted in the file itself.

    `corpus` is an `ingest.Corpus`; directory listings are not scanned.
    """
    out: dict[str, list[Finding]] = {}
    for doc in corpus.documents if corpus is not None else ():
        if getattr(doc, "is_tree", False):
            continue
        findings = scan_text(doc.text)
        if findings:  # the wrapper's header is line 1 of doc.text; the file starts on `first_line`
            shift = getattr(doc, "first_line", 2) - 1
            out[doc.source] = [Finding(f.kind, max(1, f.line - shift), f.excerpt) for f in findings]
    return out


def summary(found: dict[str, list[Finding]], limit: int = 20) -> list[str]:
    """One line per file: `path: 2 likely secrets (GitHub token line 3, private key line 10)`."""
    lines = []
    for source, findings in list(found.items())[:limit]:
        parts = ", ".join(f"{f.kind} line {f.line}" for f in findings[:4])
        more = f", +{len(findings) - 4} more" if len(findings) > 4 else ""
        lines.append(f"{source}: {len(findings)} likely secret{'s' if len(findings) > 1 else ''} ({parts}{more})")
    if len(found) > limit:
        lines.append(f"… and {len(found) - limit} more files")
    return lines


def warning(found: dict[str, list[Finding]], destination: str = "") -> str:
    """The Markdown warning the UI shows above the documents ('' when nothing was found).

    `destination` names where documents go beyond this computer (a remote server's address), if anywhere.
    """
    if not found:
        return ""
    where = (f"Loading sends every document to **{destination}**. " if destination else
             "If you share this app (a share link or your network), people who log in can ask about them. ")
    files = "\n".join(f"- `{line}`" for line in summary(found))
    return (f"**{len(found)} file{'s' if len(found) > 1 else ''} may hold secrets** (keys, tokens, passwords). "
            f"{where}Leave them out unless the model needs them.\n\n{files}")
