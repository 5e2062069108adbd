"""A long Workbench call in a worker thread, its progress and items handed to the page's thread as they come."""

from __future__ import annotations

import queue
import threading


def in_thread(work):
    """Run `work(report)` (it returns an iterable) in a worker thread; yield ("progress", report) as the work
    reports, ("item", x) for each item, then ("end", None) or ("error", exception).

    The page gets progress while the engine is busy; if the page goes away, the work still finishes (and the
    conversation keeps what it did)."""
    box: queue.Queue = queue.Queue()

    def run():
        try:
            for item in work(lambda report: box.put(("progress", report))):
                box.put(("item", item))
            box.put(("end", None))
        except BaseException as err:  # handed to the page's thread, which re-raises what is not the user's
            box.put(("error", err))

    threading.Thread(target=run, daemon=True, name="omnibus-work").start()
    while True:
        kind, value = box.get()
        yield kind, value
        if kind in ("end", "error"):
            return
