"""Worker processes that never outlive their parent, and SIGTERM handled like Ctrl-C.

`WorkerPool` runs a function over many items in ``spawn``-ed processes. Each worker arranges to
die with the process that started it: on Linux the kernel sends it SIGKILL when its parent dies
(``prctl(PR_SET_PDEATHSIG)``), and on every platform a watchdog thread polls ``os.getppid()``. So a
``kill -9`` of ``bkgdb index --jobs N`` leaves no workers behind, and multiprocessing's resource
tracker, which lives as long as any process holds its pipe, exits with them. Leaving the pool
early (an exception, Ctrl-C, SIGTERM) cancels the queued work and stops the workers at once
instead of waiting for them to finish it.

`sigterm_raises_interrupt` turns SIGTERM into a `Terminated` exception (a `KeyboardInterrupt`),
so a command stopped by ``kill`` unwinds like one stopped by Ctrl-C: what was committed stays.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from types import FrameType, TracebackType
from typing import Literal, TypeVar

from bkgdb.errors import BkgdbError

__all__ = [
    "WorkerPool",
    "WorkerError",
    "Terminated",
    "sigterm_raises_interrupt",
    "die_with_parent",
    "PARENT_POLL_INTERVAL_S",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: How often a worker's watchdog thread checks that its parent is alive (the portable fallback).
PARENT_POLL_INTERVAL_S = 0.5
#: linux/prctl.h
_PR_SET_PDEATHSIG = 1
#: Seconds a stopped worker gets to exit after SIGTERM before it is killed.
_STOP_GRACE_S = 2.0


class WorkerError(BkgdbError):
    """A worker process died (killed, out of memory) before it returned its result."""


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM; unwinds like Ctrl-C. ``signum`` is the signal's number."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = int(signum)


def die_with_parent(parent_pid: int, interval_s: float = PARENT_POLL_INTERVAL_S) -> None:
    """Make the calling process exit as soon as process ``parent_pid`` is gone.

    Linux delivers SIGKILL on the parent's death (``PR_SET_PDEATHSIG``); a daemon thread polling
    ``os.getppid()`` covers other systems and the moment before ``prctl`` took effect.
    """
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
                log.debug("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
        except (OSError, AttributeError) as exc:  # no libc symbol: the watchdog still works
            log.debug("prctl unavailable: %s", exc)
    if os.getppid() != parent_pid:  # the parent died before the death signal was armed
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="bkgdb-parent-watchdog", daemon=True).start()


@contextlib.contextmanager
def _sigint_ignored_by_new_workers() -> Iterator[None]:
    """Ignore SIGINT while workers are spawned: they inherit it and stay quiet while importing.

    The initializer ignores SIGINT too, but only once a worker has imported everything; a Ctrl-C
    in those first seconds would otherwise print a KeyboardInterrupt traceback per worker.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _initialise_worker(parent_pid: int, initializer: Callable[..., object] | None, initargs: tuple) -> None:
    # Ctrl-C reaches the whole process group: the parent alone decides how to stop, and the
    # workers print no KeyboardInterrupt tracebacks of their own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_parent(parent_pid)
    if initializer is not None:
        initializer(*initargs)


class WorkerPool:
    """A pool of ``workers`` spawned processes that die with their parent.

    ``initializer(*initargs)``, if given, runs in each worker before its first item (e.g. to hand
    it state the parent has already made). Keep ``initargs`` small (a file name rather than what
    the file holds): the parent writes them into a pipe that a new worker reads only once it has
    imported the parent's main module, and waits for that while they do not fit in the pipe.

    Use it as a context manager. Leaving the block normally waits for the workers to exit;
    leaving it by an exception (including `KeyboardInterrupt` and `Terminated`) or by closing the
    generator of `imap_unordered` cancels the queued items and stops the workers at once.

    Examples
    --------
    >>> with WorkerPool(2) as pool:  # doctest: +SKIP
    ...     for result in pool.imap_unordered(process_run, jobs):
    ...         store(result)
    """

    def __init__(self, workers: int, initializer: Callable[..., object] | None = None, initargs: tuple = ()) -> None:
        self.workers = int(workers)
        self.initializer, self.initargs = initializer, initargs
        self._executor: ProcessPoolExecutor | None = None

    def __enter__(self) -> WorkerPool:
        # spawn: workers never inherit the parent's database connections or threads.
        self._executor = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_initialise_worker,
            initargs=(os.getpid(), self.initializer, self.initargs),
        )
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> Literal[False]:
        if exc_type is None:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
        else:
            self.stop()
        return False

    def imap_unordered(self, function: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        """``function(item)`` for every item, in completion order.

        Raises
        ------
        WorkerError
            A worker process died before returning a result.
        """
        executor = self._executor
        if executor is None:
            raise RuntimeError("WorkerPool.imap_unordered needs the pool entered (with WorkerPool(n) as pool: ...)")
        with _sigint_ignored_by_new_workers():
            pending = {executor.submit(function, item) for item in items}
        returned = 0
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
                    returned += 1
        except BrokenProcessPool:
            # Workers import the main script again: one that starts work at import (no main guard)
            # kills every worker before its first result.
            guard = '`if __name__ == "__main__":`'
            hint = (
                "" if returned else f"; from a Python script, start the work under {guard} (workers import the script)"
            )
            raise WorkerError(
                "a worker process died unexpectedly (killed, or out of memory?); "
                f"the runs stored so far are kept: run the command again{hint}"
            ) from None
        finally:
            if pending:  # left early: nothing queued may start any more
                for future in pending:
                    future.cancel()

    def stop(self) -> None:
        """Cancel queued work and end the worker processes now (SIGTERM, then SIGKILL)."""
        executor = self._executor
        if executor is None:
            return
        processes = list((getattr(executor, "_processes", None) or {}).values())
        manager = getattr(executor, "_executor_manager_thread", None)
        executor.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + _STOP_GRACE_S
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(1.0)
        if manager is not None:
            # Python's exit hook wakes this thread through a pipe the thread closes as it ends: let it
            # end now, or the two race and print "Bad file descriptor" after our one-line message.
            manager.join(_STOP_GRACE_S)
        log.debug("stopped %d worker processes", len(processes))


@contextlib.contextmanager
def sigterm_raises_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` in the main thread (like Ctrl-C's KeyboardInterrupt).

    Outside the main thread, where Python cannot install signal handlers, it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum: int, frame: FrameType | None) -> None:
        raise Terminated(signum)

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
