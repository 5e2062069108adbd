"""Likely secrets in ingested documents: cloud keys, API tokens, private keys, passwords in assignments and URLs.

`scan_corpus(corpus)` returns, per document source, the findings in that document: what kind of secret,
on which line of the file, and a masked excerpt (the first four characters and the length; a secret is
never copied out whole). The UI lists them with an option to leave those files out before anything is
sent to a remote server or shown through a share link; `ask --backend openai` warns on stderr.

The rules are gitleaks' maintained table (`ingest/rules/gitleaks.toml`, ~220 token formats: AWS, GitHub,
GitLab, Slack, Stripe, Hugging Face, npm, JWTs, PEM keys, generic `KEY=value` assignments, ...), applied as
gitleaks does: a rule runs only on text holding one of its keywords, its secret is its first non-empty
group, it must reach the rule's entropy, and the rule's and the global allowlists (regexes and stopwords)
drop known non-secrets. The patterns are RE2 (`google-re2`): matching takes linear time, so no document can
stall the scan. Two checks of our own stay beside the table: a password in a URL (`postgres://user:pw@host`),
which gitleaks has no rule for, and a quoted `password = "..."`-style assignment whose value looks random
(length ≥ 8, at least two of lower case, upper case and digits, ≥ 3 bits of entropy per character, not a
placeholder), which catches passwords with symbols that the generic rule does not.
"""

from __future__ import annotations

import functools
import math
import os
import tomllib
from collections import Counter
from dataclasses import dataclass

import re2

RULES_FILE = os.path.join(os.path.dirname(__file__), "rules", "gitleaks.toml")
ASSIGNMENT = "password or secret assignment"
URL_PASSWORD = "password in a URL"
_RE2 = re2.Options()
_RE2.max_mem = 64 << 20


def _compile(pattern: str):
    return re2.compile(pattern, _RE2)


# Assignments are found value first (a quoted value after `=`, `:` or `=>`), then the name before it.
_QUOTED_VALUE = _compile(r"[=:>]\s{0,4}[\"']([^\"'\s]{8,200})[\"']")
_SECRET_NAME = _compile(r"(?i:password|passwd|pwd|secret|api_?key|apikey|token|access_?key|private_?key|auth)"
                        r"[\w.-]{0,40}[\"']?\s{0,4}(?::=|=>|[=:])$")
_URL_PASSWORD = _compile(r"\b[A-Za-z][A-Za-z0-9+.-]{1,30}://[^\s:/@'\"<>]{1,100}:([^\s:/@'\"<>]{1,200})@"
                         r"[A-Za-z0-9.\[\]-]{1,255}")
_PLACEHOLDER = _compile(r"(?i)^(?:\$\{?|%\(|\{\{|<)|^(?:x+|\*+|\.+)$|changeme|example|your[_-]|dummy|placeholder"
                        r"|redacted|^password\d*$|^secret$")
_WORDLIKE = _compile(r"[A-Za-z_.-]+")
MIN_ENTROPY_BITS = 3.0


@dataclass(frozen=True)
class Finding:
    """One likely secret: its kind, the 1-based line in the file, and a masked excerpt."""

    kind: str
    line: int
    excerpt: str


@dataclass(frozen=True)
class Rule:
    """One gitleaks rule: `kind` is its id in words, `allow` its allowlists as (target, regexes, stopwords)."""

    kind: str
    regex: object
    keywords: tuple[str, ...]
    entropy: float
    group: int
    allow: tuple[tuple[str, tuple, tuple[str, ...]], ...]
    path: object = None  # a rule with a path applies only to files whose name matches it (Terraform, ...)


@functools.lru_cache(maxsize=1)
def rules() -> tuple[tuple[Rule, ...], tuple, tuple[str, ...]]:
    """(rules, global allowlist regexes, global stopwords) from the gitleaks table, compiled once.

    Generic rules go last, so that a token is named by its specific rule when both match it."""
    with open(RULES_FILE, "rb") as handle:
        table = tomllib.load(handle)
    out = []
    for entry in table.get("rules", []):
        if "regex" not in entry:
            continue  # path-only rules (file names such as .pem) are not about a document's text
        path = _compile(entry["path"]) if "path" in entry else None
        allow = []
        for allowlist in entry.get("allowlists", []):
            if allowlist.get("paths") or allowlist.get("commits"):
                continue  # conditions on file paths or commits do not apply to an uploaded document
            allow.append((allowlist.get("regexTarget", "secret"), tuple(map(_compile, allowlist.get("regexes", []))),
                          tuple(s.lower() for s in allowlist.get("stopwords", []))))
        out.append(Rule(entry["id"].replace("-", " "), _compile(entry["regex"]),
                        tuple(k.lower() for k in entry.get("keywords", [])), float(entry.get("entropy", 0)),
                        int(entry.get("secretGroup", 0)), tuple(allow), path))
    out.sort(key=lambda rule: rule.kind.startswith("generic"))
    top = table.get("allowlist", {})
    return tuple(out), tuple(map(_compile, top.get("regexes", []))), tuple(s.lower() for s in top.get("stopwords", []))


def entropy_bits(text: str) -> float:
    """Shannon entropy of `text` in bits per character."""
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values()) if text else 0.0


def _mask(secret: str) -> str:
    return f"{secret[:4]}… ({len(secret)} characters)"


def _secret_of(match, group: int) -> tuple[str, int, int]:
    """The secret of a match as gitleaks takes it: the rule's group, else the first non-empty group, else all."""
    if group and match.group(group):
        return match.group(group), match.start(group), match.end(group)
    for index in range(1, (match.re.groups or 0) + 1):
        if match.group(index):
            return match.group(index), match.start(index), match.end(index)
    return match.group(0), match.start(), match.end()


def _allowed(rule: Rule, secret: str, whole: str, line: str, top_regexes, top_stopwords) -> bool:
    lower = secret.lower()
    if any(regex.search(secret) for regex in top_regexes) or any(word in lower for word in top_stopwords):
        return True
    for target, regexes, stopwords in rule.allow:
        subject = {"match": whole, "line": line}.get(target, secret)
        if any(regex.search(subject) for regex in regexes) or any(word in lower for word in stopwords):
            return True
    return False


def scan_text(text: str, source: str = "") -> list[Finding]:
    """Likely secrets in one text (the file `source`, which decides the rules that are about file types), in
    order of appearance."""
    table, top_regexes, top_stopwords = rules()
    found, lower, spans = [], text.lower(), []

    def overlaps(start, end):
        return any(start < e and s < end for s, e in spans)

    for rule in table:
        if rule.keywords and not any(keyword in lower for keyword in rule.keywords):
            continue
        if rule.path is not None and not rule.path.search(source):
            continue
        for match in rule.regex.finditer(text):
            secret, start, end = _secret_of(match, rule.group)
            if overlaps(start, end) or (rule.entropy and entropy_bits(secret) < rule.entropy):
                continue
            line = text[text.rfind("\n", 0, start) + 1:text.find("\n", end) % (len(text) + 1)]
            if _allowed(rule, secret, match.group(0), line, top_regexes, top_stopwords):
                continue
            found.append((start, rule.kind, secret))
            spans.append((start, end))
    if "://" in text:
        for match in _URL_PASSWORD.finditer(text):
            value = match.group(1)
            if not overlaps(match.start(1), match.end(1)) and not _PLACEHOLDER.search(value):
                found.append((match.start(1), URL_PASSWORD, value))
                spans.append((match.start(1), match.end(1)))
    for match in _QUOTED_VALUE.finditer(text):
        value, at = match.group(1), match.start()
        if overlaps(match.start(1), match.end(1)):  # already found by a rule
            continue
        if _looks_random(value) and _SECRET_NAME.search(text[max(0, at - 60):at + 1]):
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
        findings = scan_text(doc.text, doc.source)
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


def code_span(text: str) -> str:
    """`text` as one Markdown code span that nothing in it can close or break: the fence is one backtick
    longer than its longest run of backticks, and line breaks (which could start a new block) show as `\\n`."""
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    longest, run = 0, 0
    for char in text:
        run = run + 1 if char == "`" else 0
        longest = max(longest, run)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or (text.startswith(" ") and text.endswith(" ")) else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def warning(found: dict[str, list[Finding]], destination: str = "") -> str:
    """The Markdown warning the UI shows above the documents ('' when nothing was found).

    `destination` names where documents go beyond this computer (a remote server's address), if anywhere.
    """
    if not found:
        return ""
    where = (f"Loading sends every document to **{destination}**. " if destination else
             "If you share this app (a share link or your network), people who log in can ask about them. ")
    files = "\n".join(f"- {code_span(line)}" for line in summary(found))
    return (f"**{len(found)} file{'s' if len(found) > 1 else ''} may hold secrets** (keys, tokens, passwords). "
            f"{where}Leave them out unless the model needs them.\n\n{files}")
