"""Imports point one way: every import in app/ and ingest/ (at module level or inside a function) is read from the
source (all but those under `if TYPE_CHECKING:`, which only name types for annotations), and the layers of the
README's Layout section are checked: ingest stands alone, the shared modules import
no subsystem above them, the engine and the store know nothing of the app, and no two modules import each other."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Bottom to top; a module may import its own layer and those below it, never one above.
LAYERS = [
    ["ingest"],
    ["app.errors", "app.logs", "app.models_catalog", "app.protocol", "app.settings"],
    ["app.planner", "app.prompt", "app.citations", "app.calibration", "app.model_hub", "app.model_download"],
    ["app.store"],
    ["app.engine", "app.remote", "app.remote_http"],
    ["app.backend"],
    ["app.sharing"],  # what the page and the API share: the turnstile, logins, the origin rule, adding files
    ["app.ui", "app.server"],  # side by side, and neither imports the other (app.cli mounts the API beside the page)
    ["app.cli"],
    ["app"],
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted([*ROOT.glob("app/**/*.py"), *ROOT.glob("ingest/**/*.py")])}


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ours that `name` imports, anywhere in its source (a `from x import y` counts x.y when
    x.y is a module, else x)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and ast.unparse(node.test) in
                   ("TYPE_CHECKING", "typing.TYPE_CHECKING") for n in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def layer_of(name: str) -> int:
    best = max((prefix for layer in LAYERS for prefix in layer if name == prefix or name.startswith(prefix + ".")),
               key=len)
    return next(i for i, layer in enumerate(LAYERS) if best in layer)


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imported(name, path, set(found)) for name, path in found.items()}


def test_the_import_reader_sees_imports_of_every_kind():
    edges = graph()
    assert "app.engine.kv_cache" in edges["app.engine.engine"]  # from app.engine.kv_cache import KVCache
    assert "ingest.corpus" in edges["ingest"]  # from .corpus import Corpus
    assert "app.server.serve" in edges["app.cli"]  # inside a function
    assert len(edges) > 60


def test_the_page_and_the_api_do_not_import_each_other():
    """app.ui and app.server share only what is below them (app.sharing and lower); neither imports the other,
    not even inside a function."""
    def side(name: str) -> str:
        return next((s for s in ("app.ui", "app.server") if name == s or name.startswith(s + ".")), "")

    crossing = sorted(f"{a} -> {b}" for a, targets in graph().items() for b in targets
                      if side(a) and side(b) and side(a) != side(b))
    assert crossing == []


def test_every_import_points_down_the_layers():
    upward = sorted(f"{a} -> {b}" for a, targets in graph().items() for b in targets if layer_of(b) > layer_of(a))
    assert upward == []


def test_ingest_imports_nothing_from_app():
    assert sorted(f"{a} -> {b}" for a, targets in graph().items() if a.startswith("ingest")
                  for b in targets if b.startswith("app")) == []


def test_no_two_modules_import_each_other_even_through_others():
    edges = graph()
    cycles = []
    for start in edges:  # depth-first search for a path back to `start`
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in edges[node]:
                if nxt == start:
                    cycles.append(" -> ".join(path + [start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
    assert cycles == []
