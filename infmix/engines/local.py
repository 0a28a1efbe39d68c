"""The default executor: one process, or a spawn-started process pool on this machine.

Units are independent and each commits its own files, so order of completion does not matter
and a killed pool loses at most the units in flight. `spawn` keeps workers free of the parent's
threads (the progress display runs one).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import partial

from PIL import Image


def _init_worker(max_pixels: int) -> None:
    # Pillow's own bomb check agrees with ours (it raises only above twice this value).
    Image.MAX_IMAGE_PIXELS = max_pixels


def _watch_parent(parent: int) -> None:
    """A worker whose build was killed exits instead of writing on as an orphan."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _init_pool_worker(max_pixels: int, parent: int) -> None:
    _init_worker(max_pixels)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def run_units(
    fn: Callable[..., dict],
    jobs: Iterable[tuple],
    workers: int,
    max_pixels: int,
    on_done: Callable[[dict], None],
) -> None:
    """Call `fn(*job)` for every job, in `workers` processes; `on_done` gets each result."""
    jobs = list(jobs)
    if workers <= 1 or len(jobs) <= 1:
        previous = Image.MAX_IMAGE_PIXELS
        _init_worker(max_pixels)
        try:
            for job in jobs:
                on_done(fn(*job))
        finally:
            Image.MAX_IMAGE_PIXELS = previous
        return
    ctx = mp.get_context("spawn")
    init = partial(_init_pool_worker, max_pixels, os.getpid())
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx, initializer=init) as pool:
        futures = [pool.submit(fn, *job) for job in jobs]
        try:
            for fut in as_completed(futures):
                on_done(fut.result())
        except BaseException:
            for f in futures:
                f.cancel()
            raise
