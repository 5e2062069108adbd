"""What models there are and where they are on this computer: the known models (`app.models_catalog`), the Hugging
Face cache and what it holds, whether the hub can be reached, the free disk; `app.model_download` gets a model onto
the disk.

The cache is huggingface_hub's own, so the usual variables apply: `HF_HOME` (or `HF_HUB_CACHE`) says where it lives,
`HF_HUB_OFFLINE=1` never touches the network, `HF_TOKEN` is sent for gated or private models and `HF_ENDPOINT`
points at a mirror. They are read on every call, not at import. When the hub cannot be reached, one short request
finds that out and the rest of the session works offline.

This module imports no torch and no gradio; huggingface_hub is imported when first needed.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shlex
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from app.errors import ModelLoadError
from app.models_catalog import REGISTRY, ModelSpec
from ingest.errors import human_size

log = logging.getLogger(__name__)

# Files a model needs to load in transformers; the rest of a repository (other formats, originals) is skipped.
IGNORE = ["original/*", "onnx/*", "runs/*", "coreml/*", "*.pth", "*.h5", "*.msgpack", "*.onnx", "*.ot",
          "*.tflite", "*.mlmodel"]


class ModelNotAvailable(ModelLoadError):
    """The model is not on this computer and cannot be downloaded now (offline, unknown id, no access)."""


@dataclass(frozen=True)
class Card:
    """What the picker shows about one model."""

    name: str
    source: str  # Hugging Face id or local folder
    window: int | None
    licence: str
    parameters: str
    on_disk: str  # "yes", "partly" (an interrupted download, resumable) or "no"
    size_bytes: int | None  # on disk when it is there, else what the hub says, else None (unknown)

    def row(self) -> list:
        """The picker's table row."""
        return [self.name, self.source, f"{self.window:,}" if self.window else "?", self.licence,
                self.parameters, human_size(self.size_bytes) if self.size_bytes else "?", self.on_disk]


CARD_HEADERS = ["model", "source", "window (tokens)", "licence", "parameters", "size", "on disk"]


# -- the environment, read on every call --
def hub_cache() -> Path:
    """huggingface_hub's cache folder: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def offline() -> bool:
    """True when $HF_HUB_OFFLINE asks for no network at all, or the hub was found unreachable in this session."""
    return _unreachable is not None or \
        os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


_unreachable: str | None = None  # why the hub could not be reached, once found so: offline for the session


def unreachable_reason() -> str | None:
    """Why the hub was found unreachable in this session, or None while it was not."""
    return _unreachable
_probe_lock = threading.Lock()
PROBE_TIMEOUT_S = 5.0


def hub_reachable() -> bool:
    """Whether the hub answers at all (any HTTP answer counts), asked once with one short request and no retries.

    When it does not, the rest of this session works offline (huggingface_hub and transformers too), said in one
    line, so no later call spends its retries (5 of them, ~23 s for each file) before using the copy on disk."""
    global _unreachable
    if offline():
        return False
    with _probe_lock:
        if _unreachable is not None:
            return False
        import httpx

        url = (endpoint() or "https://huggingface.co").rstrip("/") + "/"
        try:
            httpx.head(url, timeout=PROBE_TIMEOUT_S)
            return True
        except httpx.TransportError as err:
            _unreachable = f"{type(err).__name__}: {first_line(err)}"
        from huggingface_hub import constants

        constants.HF_HUB_OFFLINE = True  # what huggingface_hub and transformers ask before any request
        log.warning("the Hugging Face hub (%s) cannot be reached (%s): working offline for this session, with "
                    "the models on this computer only", url, _unreachable)
        return False


def endpoint() -> str | None:
    """The hub's address from $HF_ENDPOINT (a mirror), or None for huggingface_hub's own default."""
    return os.environ.get("HF_ENDPOINT") or None


def repo_folder(repo_id: str) -> Path:
    """The folder of `repo_id` in the cache (its blobs, snapshots and refs)."""
    return hub_cache() / ("models--" + repo_id.replace("/", "--"))


# -- what a name means --
def package_folder(spec: ModelSpec) -> str | None:
    """The folder of the package that ships this model's weights, when it is installed."""
    if spec.package is None:
        return None
    found = importlib.util.find_spec(spec.package)
    if found is None or found.origin is None:
        return None
    folder = Path(found.origin).parent
    return str(folder) if (folder / spec.gguf_file).exists() else None


def _model_folder(folder: Path) -> bool:
    """Whether `folder` is a folder of model weights this process can read: config.json, or a .gguf file."""
    try:
        return folder.is_dir() and ((folder / "config.json").is_file() or any(folder.glob("*.gguf")))
    except OSError:  # unreadable: said exactly as a missing folder is
        return False


def repo_id(name: str) -> str | None:
    """The Hugging Face id a name downloads from, or None for a local model folder.

    A path that is not a model folder gets one message, whether it is missing, unreadable or holds something
    else (`/root/.ssh` and `/nope` read the same): the model picker must not tell which folders exist."""
    if name in REGISTRY:
        return REGISTRY[name].repo_id
    if _model_folder(Path(name).expanduser()):
        return None
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        return name
    raise ModelNotAvailable(f"{name!r} is neither a model Omnibus knows ({', '.join(REGISTRY)}), a Hugging Face id "
                            "(owner/name), nor a model folder on this computer (one with config.json or a .gguf "
                            "file, readable by Omnibus)")


def on_disk(repo: str) -> str | None:
    """The cached snapshot folder of `repo` when it is complete, else None (never touches the network)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(repo, cache_dir=str(hub_cache()), local_files_only=True, ignore_patterns=IGNORE)
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def disk_bytes(folder: Path) -> int:
    """The bytes of the files under `folder` (links not followed, unreadable files left out)."""
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                try:
                    total += os.path.getsize(path)
                except OSError:
                    pass
    return total


def _window_of(folder: str | Path | None) -> int | None:
    try:
        with open(Path(folder) / "config.json", encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError, TypeError):
        return None
    value = config.get("max_position_embeddings") or config.get("text_config", {}).get("max_position_embeddings")
    return int(value) if isinstance(value, int) else None


def card(name: str) -> Card:
    """What is known about `name` without the network: window, licence, size and whether it is on disk."""
    known = REGISTRY.get(name)
    if known is not None and package_folder(known):
        path = Path(package_folder(known)) / known.gguf_file
        return Card(name, f"package {known.package}", known.window, known.licence, known.parameters, "yes",
                    path.stat().st_size)
    repo = repo_id(name)
    if repo is None:
        folder = Path(name).expanduser()
        return Card(name, str(folder), _window_of(folder), _licence_of(folder), "?", "yes", disk_bytes(folder))
    snapshot = on_disk(repo)
    state = "yes" if snapshot else "partly" if (repo_folder(repo) / "blobs").is_dir() else "no"
    size = disk_bytes(repo_folder(repo) / "blobs") if state != "no" else None
    window = _window_of(snapshot) or (known.window if known else None)
    return Card(name, repo, window, known.licence if known else "see the model card",
                known.parameters if known else "?", state, size)


def catalogue(extra: list[str] = ()) -> list[Card]:
    """Cards of the known models, then of `extra` names (folders, Hugging Face ids) in order."""
    cards = []
    for name in [*REGISTRY, *[n for n in extra if n and n not in REGISTRY]]:
        try:
            cards.append(card(name))
        except ModelNotAvailable as err:
            log.warning("%s", err)
    return cards


def _licence_of(folder: Path) -> str:
    """The `license:` line of a model card's front matter (README.md), if it has one."""
    try:
        text = (folder / "README.md").read_text(encoding="utf-8", errors="replace")[:4000]
    except OSError:
        return "see the folder"
    if text.startswith("---"):
        for line in text.split("---", 2)[1].splitlines():
            if line.strip().lower().startswith("license:"):
                return line.split(":", 1)[1].strip() or "see the folder"
    return "see the folder"


# -- when it is not here --
def how_to_get(name: str) -> str:
    """The plain instructions for a model that is not on disk and cannot be fetched now."""
    name = shlex.quote(name)  # pasted into a shell: a hostile id like `x/y;rm -rf ~` stays one argument
    return (f"On a computer with internet access run `omnibus pull {name}` (or `python3 launch.py pull {name}`), "
            f"then copy its Hugging Face cache folder ({hub_cache()}) here, or set HF_HOME to where it is; "
            "or pass --model /path/to/a/model/folder."
            + (" Unset HF_HUB_OFFLINE to let Omnibus download it." if _unreachable is None and offline() else ""))


# -- the disk --
def free_bytes(folder: Path) -> int:
    """Free bytes on the disk that holds `folder` (or the nearest existing folder above it): the one probe of free
    space, for downloads and for saved corpora (tests replace it to simulate a full disk)."""
    folder = Path(folder).expanduser().resolve()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def first_line(err: BaseException) -> str:
    """The first line of an error's message (its class name when it has none), for a one-line report."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__

