"""The cores other programs leave free, and torch's CPU threads fitted to them.

torch's CPU kernels split each operation over all their threads (OpenMP) and wait for the slowest. When another
program holds one of two cores, one thread waits for the other's time slice on every operation, and a load runs
about 4× slower than it does with one thread (2-core box, 2026-12-05, 1,000 tokens of the demo model beside one
busy-loop process: 2 threads 15.8 s, 1 thread 4.0 s; quiet: 2.8 s and 4.1 s). So the engine runs as many threads
as cores are free: before each load and answer, and again between a load's chunks.

What the others use is read from /proc/stat (the time of this process's cores) less /proc/self/stat (this
process's own time) over a short window. Where /proc is missing (macOS, Windows), or the user fixed the thread
count (OMP_NUM_THREADS), the threads stay as torch set them.
"""

from __future__ import annotations

import math
import os
import threading
import time

import torch

WINDOW_S = 0.2  # the shortest span others' use is averaged over
STALE_S = 1.0  # a span longer than this says too little about now: a new one starts
FREE_ENOUGH = 0.7  # a core counts as free when others leave at least this much of it


def _cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def _busy_ticks(cores: list[int]) -> int | None:
    """Clock ticks all programs spent on `cores` (not idle, not waiting for the disk); None without /proc."""
    wanted, total = {f"cpu{c}" for c in cores}, 0
    try:
        with open("/proc/stat", encoding="ascii") as f:
            for line in f:
                name, *fields = line.split()
                if name in wanted:
                    values = [int(x) for x in fields[:8]]
                    total += sum(values) - values[3] - values[4]  # less idle and iowait
    except (OSError, ValueError, IndexError):
        return None
    return total


def _own_ticks() -> int | None:
    """Clock ticks this process has spent, all its threads (user and system)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    except (OSError, ValueError, IndexError):
        return None


class CpuShare:
    """How many threads torch should run now: one per core that other programs leave free."""

    def __init__(self, max_threads: int | None = None):
        self.cores = _cores()
        self.max_threads = max_threads or torch.get_num_threads()
        self.fixed = "OMP_NUM_THREADS" in os.environ or _busy_ticks(self.cores) is None or self.max_threads < 2
        self.ticks_per_s = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._lock = threading.Lock()
        self._look = self._sample()  # (time, all programs' busy ticks, this process's ticks) at the last look
        self._threads, self._decided = torch.get_num_threads(), -math.inf

    def _sample(self) -> tuple[float, int, int]:
        return time.monotonic(), _busy_ticks(self.cores) or 0, _own_ticks() or 0

    def others_cores(self, wait: bool = True) -> float | None:
        """Cores other programs used since the last look, a span of at least WINDOW_S. `wait`: a span older than
        STALE_S starts now and the call sleeps until it is long enough; else a span too short gives None
        (between a load's chunks the span is the last chunk)."""
        with self._lock:
            if wait and time.monotonic() - self._look[0] > STALE_S:
                self._look = self._sample()
            wait_s = self._look[0] + WINDOW_S - time.monotonic()
            if wait_s > 0:
                if not wait:
                    return None
                time.sleep(wait_s)
            (t0, busy0, own0), (t1, busy1, own1) = self._look, self._sample()
            self._look = (t1, busy1, own1)
        return max((busy1 - busy0) - (own1 - own0), 0) / self.ticks_per_s / max(t1 - t0, 1e-3)

    def threads_now(self, wait: bool = True) -> int:
        """The threads a pass started now should run: the last answer when it is under STALE_S old; else one
        per core others leave free (`wait=False`: the last answer, unless WINDOW_S has passed since the last look)."""
        if self.fixed:
            return torch.get_num_threads()
        if time.monotonic() - self._decided > STALE_S or not wait:
            others = self.others_cores(wait)
            if others is not None:
                free = len(self.cores) - others
                self._threads = max(1, min(self.max_threads, int(free + 1 - FREE_ENOUGH)))
                self._decided = time.monotonic()
        return self._threads

    def fit(self, wait: bool = True) -> int:
        """Set torch's threads to `threads_now(wait)` (call while holding the engine's lock); returns them."""
        threads = self.threads_now(wait)
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        return threads
