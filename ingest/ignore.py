"""Which paths to leave out: default ignores plus `.gitignore` files at every level."""

from __future__ import annotations

import fnmatch

import pathspec

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


class GitIgnores:
    """The `.gitignore` rules of one tree, keyed by the folder (relative, '' for the root) that holds each.

    Like git, a deeper file overrides a shallower one and the last matching line wins,
    so a `!pattern` can re-include what a parent ignored.
    """

    def __init__(self):
        self._specs: dict[str, pathspec.GitIgnoreSpec] = {}

    def add(self, folder: str, text: str) -> None:
        """Register the lines of `folder/.gitignore`."""
        spec = pathspec.GitIgnoreSpec.from_lines(text.splitlines())
        self._specs[folder.strip("/")] = spec

    def ignored(self, path: str, is_dir: bool) -> bool:
        """Whether `path` (relative to the tree root, '/'-separated) is ignored."""
        decision = None
        parts = path.split("/")
        for depth in range(len(parts)):
            folder = "/".join(parts[:depth])
            spec = self._specs.get(folder)
            if spec is None:
                continue
            rel = "/".join(parts[depth:]) + ("/" if is_dir else "")
            result = spec.check_file(rel)
            if result.include is not None:
                decision = result.include
        return bool(decision)
