"""Worker threads that each run their own single-threaded torch products and numpy passes.

The evaluation's tiles are independent: a worker computes a tile's similarities (one torch.mm, GIL
released for milliseconds) and counts it while it is still in its core's cache, while another
worker's product runs. With torch limited to one intra-op thread for the duration, W workers keep W
cores busy without oversubscription, and the numpy passes of one tile overlap the product of the next
instead of waiting for it (one shared multi-threaded product per tile would leave every core idle
during the counting).
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

MAX_WORKERS = 8


def worker_count(tasks: int) -> int:
    """Workers for ``tasks`` independent tiles: torch's intra-op threads (at most 8), at most one a task."""
    import torch

    return max(1, min(torch.get_num_threads(), MAX_WORKERS, tasks))


@contextmanager
def single_threaded_torch():
    """torch.set_num_threads(1) inside, the previous count restored after (also on error)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_tasks(tasks, make_state, work, workers: int, on_done=None) -> list:
    """Run ``work(state, task)`` for every task on ``workers`` threads, each with its own
    ``state = make_state()``, tasks taken in order from a shared queue; ``on_done(task)`` is called
    under a lock after each. Returns the workers' states. With one worker everything runs here."""
    tasks = iter(tasks)
    lock = threading.Lock()

    def loop(_):
        if workers > 1:  # OpenMP's thread count is per thread: a new thread starts at the default
            import torch

            torch.set_num_threads(1)
        state = make_state()
        while True:
            with lock:
                task = next(tasks, None)
            if task is None:
                return state
            work(state, task)
            if on_done is not None:
                with lock:
                    on_done(task)

    if workers <= 1:
        return [loop(0)]
    with single_threaded_torch(), ThreadPoolExecutor(workers) as pool:
        return list(pool.map(loop, range(workers)))
