"""Getting a model onto this computer: `locate` finds it on disk or downloads it, with progress (bytes, speed, time
left) and a check of the free disk first.

Downloads are huggingface_hub's own (`snapshot_download`) into its cache (`app.model_hub` says where, and whether
the hub can be reached). A broken connection resumes inside the download (an HTTP range request); a download that
was stopped keeps every file it finished, and the next one fetches only the rest (huggingface_hub 1.x does not keep
half a file between runs). Progress is measured by watching the repository's blobs grow on disk, so it counts
resumed bytes and needs nothing from the library's bars.

This module imports no torch and no gradio; huggingface_hub is imported when first needed.
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from app.errors import ModelLoadError
from app.model_hub import (IGNORE, ModelNotAvailable, disk_bytes, endpoint, first_line, free_bytes, how_to_get,
                           hub_cache, hub_reachable, offline, on_disk, package_folder, repo_folder, repo_id,
                           unreachable_reason)
from app.models_catalog import REGISTRY
from ingest.errors import human_size

log = logging.getLogger(__name__)

DISK_MARGIN_BYTES = 512 * 2**20  # left free after a download, for the cache's own files and the system


class NotEnoughDisk(ModelLoadError):
    """The download would not fit on the disk that holds the Hugging Face cache."""


@dataclass(frozen=True)
class Located:
    """A model ready to load from disk: a folder (and the GGUF file inside it, for GGUF models)."""

    name: str
    folder: str
    gguf_file: str | None = None


@dataclass(frozen=True)
class DownloadProgress:
    """Bytes of one download so far (resumed bytes included), its speed and the time left."""

    model: str
    done: int
    total: int
    bytes_per_s: float
    eta_s: float | None
    finished: bool = False

    def describe(self) -> str:
        """`1.23 GB of 16.07 GB (7.7%), 45.1 MB/s, 5 min 29 s left`."""
        share = f" ({self.done / self.total:.1%})" if self.total else ""
        left = "done" if self.finished else (f"{format_duration(self.eta_s)} left" if self.eta_s is not None
                                             else "time left unknown")
        return (f"{human_size(self.done)} of {human_size(self.total)}{share}, "
                f"{human_size(self.bytes_per_s)}/s, {left}")


def format_duration(seconds: float | None) -> str:
    """A download's time left as people say it: `42 s`, `5 min 29 s`, `1 h 7 min` ("?" when unknown)."""
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def download_printer(every_s: float = 1.0):
    """A `DownloadProgress` callback that prints one line to stderr at most every `every_s` seconds."""
    last = [0.0]

    def show(p: DownloadProgress) -> None:
        now = time.monotonic()
        if now - last[0] >= every_s or p.finished:
            last[0] = now
            print(f"download {p.model}: {p.describe()}", file=sys.stderr, flush=True)

    return show


def check_free_space(needed: int, folder: Path, what: str = "the download") -> None:
    """Raise NotEnoughDisk (with the numbers) unless `needed` bytes, plus a margin, fit on `folder`'s disk."""
    free = free_bytes(folder)
    if needed + DISK_MARGIN_BYTES > free:
        raise NotEnoughDisk(f"{what} needs {human_size(needed)} more on the disk of {folder}, which has "
                            f"{human_size(free)} free (and keeps {human_size(DISK_MARGIN_BYTES)} spare). Free "
                            "some space, or set HF_HOME to a folder on a bigger disk.")


def locate(name: str, progress: Callable[[DownloadProgress], None] | None = None,
           interval_s: float = 1.0) -> Located:
    """The model as files on disk: a local folder or an installed package as they are, a hub model from the cache,
    downloading (with `progress` every `interval_s`) whatever is missing.

    Raises ModelNotAvailable (offline, or the hub refuses) with how to get it, NotEnoughDisk before a download
    that would not fit.
    """
    known = REGISTRY.get(name)
    if known is not None and package_folder(known):
        return Located(name, package_folder(known), known.gguf_file)
    repo = repo_id(name)
    if repo is None:
        folder = str(Path(name).expanduser().resolve())
        return Located(name, folder, _only_gguf(folder))
    folder = download(repo, name=name, progress=progress, interval_s=interval_s)
    return Located(name, folder, _only_gguf(folder))


def _only_gguf(folder: str) -> str | None:
    """The GGUF file to load from a folder that holds weights only as one GGUF file (no config.json)."""
    if (Path(folder) / "config.json").exists():
        return None
    ggufs = sorted(p.name for p in Path(folder).glob("*.gguf"))
    return ggufs[0] if len(ggufs) == 1 else None


def download(repo: str, *, name: str | None = None, progress: Callable[[DownloadProgress], None] | None = None,
             interval_s: float = 1.0) -> str:
    """Fetch `repo` into the Hugging Face cache (resuming what an earlier run left) and return its snapshot folder."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import DryRunError, GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, \
        RepositoryNotFoundError

    name = name or repo
    cached = on_disk(repo)
    log.debug("%s (%s) in %s: %s", name, repo, hub_cache(), "on disk" if cached else "not on disk")
    if offline() or not hub_reachable():
        if cached:
            return cached
        unreachable = unreachable_reason()
        why = f"the Hugging Face hub cannot be reached ({unreachable})" if unreachable else "HF_HUB_OFFLINE is set"
        raise ModelNotAvailable(f"{name} ({repo}) is not on this computer and {why}. " + how_to_get(name))
    common = dict(cache_dir=str(hub_cache()), endpoint=endpoint(), ignore_patterns=IGNORE)
    try:
        try:
            plan = snapshot_download(repo, dry_run=True, **common, tqdm_class=_quiet_class())
        except DryRunError as err:  # the dry run wraps the hub's answer; a refusal is not a network problem
            refusal = err.__cause__ if isinstance(err.__cause__, (GatedRepoError, RepositoryNotFoundError)) else None
            raise refusal or err
    except (GatedRepoError, RepositoryNotFoundError) as err:
        raise ModelNotAvailable(f"the Hugging Face hub refuses {repo}: {first_line(err)}. Check the id; for a "
                                "gated or private model, accept its licence on the hub and set HF_TOKEN.") from err
    except (DryRunError, HfHubHTTPError, LocalEntryNotFoundError, OSError) as err:
        if cached:
            log.warning("the hub is unreachable (%s); using the copy of %s on disk", first_line(err), repo)
            return cached
        raise ModelNotAvailable(f"{name} ({repo}) is not on this computer and the Hugging Face hub cannot be "
                                f"reached ({first_line(err)}). " + how_to_get(name)) from err
    files = [f for f in plan if f.will_download]
    total = sum(f.file_size or 0 for f in files)
    if not files:
        return snapshot_download(repo, **common, tqdm_class=_quiet_class())
    blobs = repo_folder(repo) / "blobs"
    complete_before = _complete_blob_bytes(blobs)
    check_free_space(total - (disk_bytes(blobs) - complete_before), hub_cache(), f"{name} ({human_size(total)})")
    log.info("downloading %s (%s): %d files, %s", name, repo, len(files), human_size(total))
    watch = _Watch(name, blobs, complete_before, total, progress, interval_s)
    watch.start()
    finished = False
    try:
        folder = snapshot_download(repo, **common, tqdm_class=_quiet_class())
        finished = True
    except (HfHubHTTPError, OSError) as err:
        raise ModelNotAvailable(f"the download of {name} ({repo}) stopped: {first_line(err)}. Run it again: the "
                                "files it finished are kept.") from err
    finally:
        watch.stop(finished)
    log.info("downloaded %s to %s", name, folder)
    return folder


def _complete_blob_bytes(blobs: Path) -> int:
    if not blobs.is_dir():
        return 0
    return sum(p.stat().st_size for p in blobs.iterdir() if p.is_file() and not p.name.endswith(".incomplete"))


class _Watch:
    """A thread that reports a download's progress from the bytes its blobs hold on disk."""

    def __init__(self, model: str, blobs: Path, complete_before: int, total: int, report, interval_s: float):
        self.model, self.blobs, self.total, self.report = model, blobs, total, report
        self.complete_before, self.interval_s = complete_before, interval_s
        self.started = time.monotonic()
        self.first = disk_bytes(blobs) - complete_before  # resumed bytes: not counted in the speed
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"download-{model}", daemon=True)

    def start(self) -> None:
        if self.report is not None:
            self.thread.start()

    def snapshot(self, finished: bool = False) -> DownloadProgress:
        done = min(max(disk_bytes(self.blobs) - self.complete_before, 0), self.total)
        if finished:
            done = self.total
        elapsed = max(time.monotonic() - self.started, 1e-6)
        speed = max(done - self.first, 0) / elapsed
        eta = (self.total - done) / speed if speed > 0 else None
        return DownloadProgress(self.model, done, self.total, speed, eta, finished)

    def _run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            self.report(self.snapshot())

    def stop(self, finished: bool) -> None:
        self.stopped.set()
        if self.report is not None:
            self.thread.join()
            self.report(self.snapshot(finished))


@functools.lru_cache(maxsize=1)
def _quiet_class():
    from tqdm.std import tqdm

    class Quiet(tqdm):
        """huggingface_hub's progress bars, drawn nowhere (Omnibus reports its own progress)."""

        def __init__(self, *args, **kwargs):
            kwargs.pop("name", None)
            kwargs["file"] = _Nowhere()
            super().__init__(*args, **kwargs)

    return Quiet


class _Nowhere:
    def write(self, _text) -> None:
        pass

    def flush(self) -> None:
        pass
