"""Which paths to leave out: default ignores plus `.gitignore` files at every level.

`.gitignore` lines are matched the way git's wildmatch reads them, in bounded time: a pattern is cut at `/`
into segments (`**` segments match any number of folders, by a small table over segments), and each segment
at `*` into fixed-length pieces (`?`, `[a-z]`, literals), found left to right with `re.search`. A leftmost
fixed-length piece never needs to be taken back, so nothing backtracks: the cost is at most the name's length
times the pattern's, in C. (pathspec's regexes backtracked exponentially on `*a*a*a…b` beside a long
a-name, which froze the whole server.) A `.gitignore` with more than `MAX_RULES` rules or bytes is not used,
and says so.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

IGNORED_DIRS = frozenset({
    ".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv", "venv", ".tox", ".nox",
    ".mypy_cache", ".pytest_cache", ".ruff_cache", ".ipynb_checkpoints", "bower_components",
    ".gradle", ".idea", ".next", ".nuxt", ".parcel-cache", ".turbo", "__MACOSX",
})

IGNORED_FILES = frozenset({
    "package-lock.json", "yarn.lock", "pnpm-lock.yaml", "npm-shrinkwrap.json", "poetry.lock",
    "Pipfile.lock", "uv.lock", "pdm.lock", "Cargo.lock", "composer.lock", "Gemfile.lock",
    "go.sum", "bun.lockb", "flake.lock", "mix.lock", "packages.lock.json", ".DS_Store", "Thumbs.db",
})

IGNORED_PATTERNS = ("*.min.js", "*.min.css", "*.min.mjs", "*.bundle.js", "*.js.map", "*.css.map",
                    "*.lock", "*.pyc", "*.pyo")


def default_reason(name: str, is_dir: bool, marker_names: frozenset[str] = frozenset()) -> str | None:
    """Why `name` (one path component) is ignored by default, or None.

    `marker_names` are the entries inside a directory; a directory holding `pyvenv.cfg`
    is a virtual environment whatever its name.
    """
    if is_dir:
        if name in IGNORED_DIRS:
            return f"ignored by default ({name})"
        if "pyvenv.cfg" in marker_names:
            return "ignored by default (virtual environment)"
        return None
    if name in IGNORED_FILES:
        return "ignored by default (lock file)" if "lock" in name.lower() or name == "go.sum" \
            else "ignored by default"
    for pattern in IGNORED_PATTERNS:
        if fnmatch.fnmatchcase(name, pattern):
            kind = "lock file" if pattern == "*.lock" else "minified bundle" if ".min." in pattern \
                or "bundle" in pattern or ".map" in pattern else "compiled file"
            return f"ignored by default ({kind})"
    return None


MAX_RULES = 5_000              # rules in one .gitignore; a longer one is not used (and reported)
MAX_GITIGNORE_BYTES = 256_000   # bytes of one .gitignore


class TooManyRules(ValueError):
    """A .gitignore over the caps; the message is the reason shown for it."""


@dataclass(frozen=True)
class Rule:
    """One .gitignore line. `segments` are the pattern's '/'-separated parts; `anchored` rules match the path
    from the .gitignore's folder, the others match the last component at any depth."""

    negate: bool
    dir_only: bool
    anchored: bool
    segments: tuple[str, ...]

    def matches(self, parts: list[str], is_dir: bool) -> bool:
        """Whether this rule matches the path `parts` (relative to the .gitignore's folder)."""
        if self.dir_only and not is_dir:
            return False
        if not self.anchored:
            return _segment_matches(self.segments[0], parts[-1])
        segments = self.segments
        if "**" not in segments:  # one part per segment: cheap checks first
            return len(parts) == len(segments) and all(map(_segment_matches, segments, parts))
        if segments[-1] != "**" and not _segment_matches(segments[-1], parts[-1]):
            return False
        return _path_matches(segments, parts)


def parse_line(line: str) -> Rule | None:
    """A rule from one .gitignore line, or None for blank lines and comments (git's rules)."""
    if not line or line.startswith("#"):
        return None
    stripped = line.rstrip(" ")
    if stripped.endswith("\\") and len(stripped) < len(line):  # "foo\ " keeps one escaped trailing space
        stripped += " "
    line = stripped
    negate = line.startswith("!")
    if negate:
        line = line[1:]
    elif line.startswith(("\\!", "\\#")):
        line = line[1:]
    dir_only = line.endswith("/")
    line = line.rstrip("/") if dir_only else line
    if not line:
        return None
    anchored = "/" in line
    segments = tuple(p for p in line.lstrip("/").split("/") if p != "") if anchored else (line,)
    if not segments:
        return None
    return Rule(negate, dir_only, anchored, segments)


def _path_matches(segments: tuple[str, ...], parts: list[str]) -> bool:
    """Segments against path parts; `**` alone in a segment matches zero or more parts (one or more when last)."""
    n = len(parts)
    # reach[j]: the first i pattern segments can match exactly parts[:j]
    reach = [True] + [False] * n
    for k, segment in enumerate(segments):
        nxt = [False] * (n + 1)
        if segment == "**":
            last = k == len(segments) - 1
            seen = False
            for j in range(n + 1):
                if last:  # trailing /**: everything inside, at least one more part
                    nxt[j] = seen
                    seen = seen or reach[j]
                else:
                    seen = seen or reach[j]
                    nxt[j] = seen
        else:
            for j in range(n):
                if reach[j] and _segment_matches(segment, parts[j]):
                    nxt[j + 1] = True
        reach = nxt
        if not any(reach):
            return False
    return reach[n]


_GLOB_CHARS = re.compile(r"[*?\[\\]")


def _segment_matches(glob: str, name: str) -> bool:
    """One path component against one glob segment (no '/' in either), without backtracking."""
    if not _GLOB_CHARS.search(glob):
        return glob == name
    pieces = _pieces(glob)
    if len(pieces) == 1:
        return pieces[0][0].fullmatch(name) is not None
    (first, _), *middle, (last, width) = pieces
    head = first.match(name)
    if head is None:
        return False
    at = head.end()
    for piece, _ in middle:  # the leftmost place of a fixed-length piece leaves the most room for the rest
        found = piece.search(name, at)
        if found is None:
            return False
        at = found.end()
    start = len(name) - width  # the last piece ends the name; with a fixed length it can sit in one place only
    return start >= at and last.fullmatch(name, start) is not None


_PIECES: dict[str, list[tuple[re.Pattern, int]]] = {}


def _pieces(glob: str) -> list[tuple[re.Pattern, int]]:
    """The glob cut at its stars into (regex, length) pieces of fixed length (`?` one character, `[...]` one class)."""
    cached = _PIECES.get(glob)
    if cached is not None:
        return cached
    pieces, current, i = [], [], 0
    while i < len(glob):
        char = glob[i]
        if char == "*":
            while i < len(glob) and glob[i] == "*":
                i += 1
            pieces.append(current)
            current = []
            continue
        if char == "?":
            current.append(".")
        elif char == "[":
            end, cls = _bracket(glob, i)
            current.append(re.escape("[") if cls is None else cls)
            i = end
        elif char == "\\" and i + 1 < len(glob):
            i += 1
            current.append(re.escape(glob[i]))
        else:
            current.append(re.escape(char))
        i += 1
    pieces.append(current)
    compiled = [(re.compile("".join(piece), re.DOTALL), len(piece)) for piece in pieces]
    if len(_PIECES) > 10_000:
        _PIECES.clear()
    _PIECES[glob] = compiled
    return compiled


def _bracket(glob: str, i: int) -> tuple[int, str | None]:
    """A `[...]` class starting at glob[i]: (index of its `]`, regex class), or (i, None) when unterminated."""
    j = i + 1
    negate = j < len(glob) and glob[j] in "!^"
    if negate:
        j += 1
    items, first = [], True
    while j < len(glob) and (glob[j] != "]" or first):
        first = False
        if glob[j] == "[" and glob.startswith("[:", j):
            close = glob.find(":]", j + 2)
            if close != -1 and glob[j + 2:close] in _POSIX:
                items.append(_POSIX[glob[j + 2:close]])
                j = close + 2
                continue
        if glob[j] == "\\" and j + 1 < len(glob):
            j += 1
        if j + 2 < len(glob) and glob[j + 1] == "-" and glob[j + 2] != "]":
            low, high = glob[j], glob[j + 2]
            if glob[j + 2] == "\\" and j + 3 < len(glob):
                high = glob[j + 3]
                j += 1
            items.append(f"{re.escape(low)}-{re.escape(high)}" if low <= high else "")
            j += 3
            continue
        items.append(re.escape(glob[j]))
        j += 1
    if j >= len(glob):
        return i, None
    body = "".join(items)
    if not body:
        return j, "[^\\s\\S]" if not negate else "."
    return j, f"[{'^' if negate else ''}{body}]"


_POSIX = {"alnum": "a-zA-Z0-9", "alpha": "a-zA-Z", "blank": " \\t", "cntrl": "\\x00-\\x1f\\x7f",
          "digit": "0-9", "graph": "!-~", "lower": "a-z", "print": " -~", "punct": "!-/:-@\\[-`{-~",
          "space": " \\t\\n\\r\\f\\v", "upper": "A-Z", "xdigit": "0-9A-Fa-f"}


def parse(text: str) -> list[Rule]:
    """The rules of one .gitignore. Raises TooManyRules past the caps."""
    if len(text) > MAX_GITIGNORE_BYTES:
        raise TooManyRules(f".gitignore over the {MAX_GITIGNORE_BYTES:,}-character cap (its rules are not used)")
    rules = [rule for rule in map(parse_line, text.splitlines()) if rule is not None]
    if len(rules) > MAX_RULES:
        raise TooManyRules(f".gitignore has {len(rules):,} rules, over the {MAX_RULES:,}-rule cap "
                           "(its rules are not used)")
    return rules


class _RuleSet:
    """The rules of one .gitignore, indexed so that the common shapes cost a lookup, not a loop: a plain name
    (`build/`, `.env`) by a dict, `*.ext` by one `str.endswith` over all suffixes; the rest one by one."""

    def __init__(self, rules: list[Rule]):
        self.rules = rules
        self.names: dict[str, list[int]] = {}
        self.suffixes: dict[str, list[int]] = {}
        self.others: list[int] = []
        for i, rule in enumerate(rules):
            glob = rule.segments[0]
            if not rule.anchored and not _GLOB_CHARS.search(glob):
                self.names.setdefault(glob, []).append(i)
            elif not rule.anchored and glob.startswith("*") and not _GLOB_CHARS.search(glob.lstrip("*")):
                self.suffixes.setdefault(glob.lstrip("*"), []).append(i)
            else:
                self.others.append(i)
        self.suffix_tuple = tuple(self.suffixes)

    def decision(self, parts: list[str], is_dir: bool) -> bool | None:
        """True (ignored), False (re-included) or None (no rule matches): the last matching rule decides."""
        name, rules = parts[-1], self.rules
        candidates = list(self.names.get(name, ()))
        if self.suffix_tuple and name.endswith(self.suffix_tuple):
            candidates += [i for suffix, found in self.suffixes.items() if name.endswith(suffix) for i in found]
        best = max((i for i in candidates if rules[i].matches(parts, is_dir)), default=-1)
        for i in reversed(self.others):
            if i <= best:
                break
            if rules[i].matches(parts, is_dir):
                best = i
                break
        return None if best < 0 else not rules[best].negate


class GitIgnores:
    """The `.gitignore` rules of one tree, keyed by the folder (relative, '' for the root) that holds each.

    Like git, a deeper file overrides a shallower one and the last matching line wins,
    so a `!pattern` can re-include what a parent ignored. (A file inside an ignored folder is never
    re-included: callers check the folders first, as git does not descend into them.)
    """

    def __init__(self):
        self._rules: dict[str, _RuleSet] = {}

    def add(self, folder: str, text: str) -> None:
        """Register the lines of `folder/.gitignore`. Raises TooManyRules (and registers nothing) past the caps."""
        self._rules[folder.strip("/")] = _RuleSet(parse(text))

    def ignored(self, path: str, is_dir: bool) -> bool:
        """Whether `path` (relative to the tree root, '/'-separated) is ignored."""
        decision = None
        parts = path.split("/")
        for depth in range(len(parts)):
            rules = self._rules.get("/".join(parts[:depth]))
            if rules is None:
                continue
            found = rules.decision(parts[depth:], is_dir)
            if found is not None:
                decision = found
        return bool(decision)
