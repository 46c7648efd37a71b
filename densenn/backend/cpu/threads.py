"""Row blocks of the CPU engine's large elementwise passes, run on all cores.

NumPy's ufuncs and the Numba kernels run on one thread while BLAS uses every
core: on a big layer (the seed's 4000×2000 tanh) the elementwise passes then
take a twentieth of the step on one core while the others idle. Both release
the GIL, and rows are independent, so plain Python threads can run row blocks
of one pass side by side; row views allocate no array memory.

Small passes stay on the calling thread: handing a block over costs ~30 µs, and
right after a GEMM the BLAS threads still spin on the other cores for a moment,
so splitting a pass of MNIST's size (128×256) made the step slower.
"""
from __future__ import annotations

import os
import threading
from typing import Any

#: passes over fewer elements than this run on the calling thread
MIN_SPLIT = 1 << 20


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:      # not on Linux
        return os.cpu_count() or 1


class _Worker:
    """A daemon thread that runs one job at a time, handed over through two semaphores."""

    def __init__(self):
        self._go = threading.Semaphore(0)
        self._done = threading.Semaphore(0)
        self._job: Any = None
        self.error: BaseException | None = None
        self.started = self.finished = 0        # jobs handed over / jobs done
        threading.Thread(target=self._loop, name="densenn-rows", daemon=True).start()

    def _loop(self):
        while True:
            self._go.acquire()
            fn, lo, hi = self._job
            try:
                fn(lo, hi)
            except BaseException as exc:   # handed to the caller by wait()
                self.error = exc
            finally:
                self.finished += 1
                self._done.release()

    def start(self, fn, lo, hi):
        self._job = (fn, lo, hi)
        self._go.release()
        self.started += 1

    def wait(self):
        """Block until the job handed over has finished; return its error, if it raised.

        A Ctrl-C while waiting is held back until then and raised afterwards: a block
        still running when the call returned would race the next call for its arrays.
        The counters, not the semaphore, say when the job is done, so an interrupt
        landing just after the semaphore was taken cannot leave the wait hanging.
        """
        interrupted = None
        while self.finished < self.started:
            try:
                self._done.acquire(timeout=0.05)
            except BaseException as exc:
                interrupted = exc
        error, self.error = self.error, None
        if interrupted is not None:
            raise interrupted
        return error


class RowBlocks:
    """Runs ``fn(lo, hi)`` over equal blocks of ``range(n)``, one block per core.

    The calling thread takes the last block; ``threads - 1`` workers, started at
    the first split, take the others. Safe to call from several threads at once:
    the workers serve one pass at a time, and a pass that finds them busy with
    another thread's runs whole on its own thread (``fn(0, n)``) rather than wait,
    so callers never block each other and cores are not oversubscribed.
    """

    def __init__(self, threads: int | None = None):
        self.threads = usable_cores() if threads is None else int(threads)
        if self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self._workers: list[_Worker] = []
        self._pid = os.getpid()
        self._busy = threading.Lock()   # held by the thread whose pass the workers run

    def splits(self, x) -> bool:
        """Whether a pass over ``x`` is worth splitting: large, and more than one core here."""
        return self.threads > 1 and x.size >= MIN_SPLIT and x.shape[0] > 1

    def bounds(self, n: int) -> list:
        """Where run's blocks of range(n) start, and n: block k is bounds[k]:bounds[k + 1]."""
        parts = max(1, min(self.threads, n))
        return [n * i // parts for i in range(parts + 1)]

    def run(self, fn, n: int) -> None:
        """fn(lo, hi) for blocks covering range(n), side by side; returns when all are done.

        ``lo`` is always one of ``bounds(n)`` (the whole range is the first block)."""
        if self._pid != os.getpid():
            # a forked child: the parent's workers do not exist here, and its lock may have
            # been held by a thread that is not here either
            self._workers, self._pid, self._busy = [], os.getpid(), threading.Lock()
        if not self._busy.acquire(blocking=False):
            fn(0, n)
            return
        try:
            self._run(fn, n)
        finally:
            self._busy.release()

    def _run(self, fn, n: int) -> None:
        bounds = self.bounds(n)
        parts = len(bounds) - 1
        while len(self._workers) < parts - 1:
            self._workers.append(_Worker())
        for worker, lo, hi in zip(self._workers, bounds[:-2], bounds[1:-1]):
            worker.start(fn, lo, hi)
        error = None
        try:
            fn(bounds[-2], n)
        except BaseException as exc:
            error = exc
        for worker in self._workers[:parts - 1]:     # every block finishes before anything returns
            try:
                error = worker.wait() or error
            except BaseException as exc:              # an interrupt, raised once all are done
                error = exc
        if error is not None:
            raise error
