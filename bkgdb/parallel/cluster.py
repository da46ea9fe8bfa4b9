"""Indexing on a Dask cluster: the per-run work runs on ``dask.distributed`` workers.

`DaskExecutor` has the interface of `~bkgdb.parallel.processes.WorkerPool` (a context manager with
``imap_unordered``), so `~bkgdb.store.indexing.run_jobs` sends the per-run work to a cluster as it
sends it to local processes; a task's runs go through `~bkgdb.makers.run.process_runs` (``batched``),
which reads each run's file while the one before is processed. Workers only read files and return a
`~bkgdb.makers.run.RunResult`; the client, the only process that holds a database connection,
writes the results (one commit per batch of runs, at least every few seconds). A run whose file
cannot be read comes back as a result with its reason, as locally. Runs travel a few per task
(`DEFAULT_TASK_SIZE`): a task costs the scheduler, the worker and the client about as much as a run.
The runs of a worker that dies are given to other workers by the scheduler. The runs of a task
that keeps killing workers are run again one at a time after the others (a dying worker takes the
blame for every task it held); a run that still kills workers alone is an error naming it.
A task's first act in a worker process is `~bkgdb.parallel.memory.tune_worker_malloc`: the
nanny's ``MALLOC_TRIM_THRESHOLD_`` would otherwise make glibc map every large numpy temporary.

dask is an optional dependency (the ``dask`` extra: ``pip install ".[dask]"`` in bkgdb's clone)
imported only here, and only when a scheduler address is given, so ``bkgdb --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator
from types import ModuleType, TracebackType
from typing import Any, Literal, TypeVar

from bkgdb.errors import BkgdbError
from bkgdb.parallel.memory import tune_worker_malloc
from bkgdb.parallel.processes import WorkerError

__all__ = [
    "DaskExecutor",
    "DEFAULT_RETRIES",
    "DEFAULT_COMMIT_BATCH",
    "DEFAULT_COMMIT_INTERVAL_S",
    "DEFAULT_TASK_SIZE",
    "items_per_task",
    "CONNECT_TIMEOUT_S",
    "check_scheduler_address",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: How often a run whose task raised (not one whose file is unreadable: that is a result) is retried.
DEFAULT_RETRIES = 2
#: Results written per database commit: one commit per run costs a round trip per run.
DEFAULT_COMMIT_BATCH = 50
#: Longest wait between commits: an interrupted index loses at most this much work.
DEFAULT_COMMIT_INTERVAL_S = 2.0
#: Most items per task. Scheduling and moving a task costs about 7 ms of CPU, as much as indexing a
#: run; tasks are made smaller when there are few items, so that every worker gets several.
DEFAULT_TASK_SIZE = 8
#: Seconds to wait for the scheduler before giving up.
CONNECT_TIMEOUT_S = 20.0
#: Seconds to close a client that failed to connect (it holds no work).
FAILED_CLIENT_CLOSE_TIMEOUT_S = 2.0
#: Address schemes whose location is HOST:PORT (inproc:// names an in-process scheduler).
HOST_PORT_SCHEMES = ("tcp", "tls", "ws", "wss")


def items_per_task(n_items: int, n_workers: int, most: int = DEFAULT_TASK_SIZE) -> int:
    """Items per task: at most ``most``, fewer when there are few items, so that each worker gets four tasks."""
    return max(1, min(most, n_items // (4 * max(1, n_workers))))


def apply_to_each(function: Callable[[T], R], items: list[T]) -> list[R]:
    """``[function(item) for item in items]``: the body of a task that carries several items."""
    tune_worker_malloc()
    return [function(item) for item in items]


def apply_to_batch(function: Callable[[list[T]], Iterable[R]], items: list[T]) -> list[R]:
    """``list(function(items))``: the body of a task whose function takes all its items at once."""
    tune_worker_malloc()
    return list(function(items))


def _import_distributed() -> ModuleType:
    try:
        import distributed
    except ImportError:
        raise BkgdbError(
            '--scheduler needs dask.distributed, which is not installed: pip install "dask[distributed]" '
            '(or the dask extra: pip install ".[dask]" in bkgdb\'s clone)'
        ) from None
    return distributed


def check_scheduler_address(address: str) -> None:
    """Fail unless ``address`` has the form of a Dask scheduler address, e.g. ``tcp://host:8786``.

    Only the form: the scheduler is not contacted, so a malformed address is refused before any
    work, even when there turns out to be nothing to send to the cluster.

    Raises
    ------
    BkgdbError
        dask.distributed is not installed, or the address is malformed.
    """
    _import_distributed()
    from distributed.comm.addressing import parse_address, parse_host_port
    from distributed.comm.registry import get_backend

    def refuse(reason: str) -> BkgdbError:
        return BkgdbError(f"malformed Dask scheduler address {address!r}: {reason}; give one such as tcp://host:8786")

    try:
        scheme, location = parse_address(str(address))  # "host:8786" is tcp
        get_backend(scheme)  # an unknown scheme fails, naming the known ones
    except (ValueError, ImportError) as exc:
        raise refuse(str(exc)) from None
    if scheme not in HOST_PORT_SCHEMES:
        return
    try:
        host, port = parse_host_port(location)
    except ValueError:
        raise refuse(f"{location!r} is not HOST:PORT") from None
    if not host or any(character.isspace() or character in "/\\@?#" for character in host):
        raise refuse(f"no host name in {location!r}")
    if not 0 < port < 65536:
        raise refuse(f"port {port} is not between 1 and 65535")


@functools.cache
def _closing_client_class() -> type:
    """``distributed.Client``, closed at once when it fails to connect, whatever the error.

    distributed closes a client whose connection failed with an OSError only. After any other
    error (a TypeError for a tls:// address without certificates in the dask config, ...) the
    half-made client's ``__del__`` waits twice the connect timeout for a close that never comes,
    then prints "Exception ignored in Client.__del__".
    """
    distributed = _import_distributed()

    class ClosingClient(distributed.Client):  # type: ignore[name-defined]  # a module imported at run time
        def start(self, **kwargs: Any) -> None:
            try:
                super().start(**kwargs)
            except BaseException:
                with contextlib.suppress(Exception):  # the connection's error is the one to report
                    self.close(timeout=FAILED_CLIENT_CLOSE_TIMEOUT_S)
                raise

    return ClosingClient


class DaskExecutor:
    """Runs a function over many items on the workers of a Dask scheduler.

    Use it as a context manager: entering connects to the scheduler, leaving disconnects. Entered
    again while connected, it keeps its one connection until the outermost ``with`` is left.
    Leaving by an exception (Ctrl-C, SIGTERM, a database error) or by closing the generator of
    `imap_unordered` cancels every task not yet done; results already returned are the
    caller's to keep.

    Parameters
    ----------
    address : str
        The scheduler's address, e.g. ``tcp://host:8786``; or a ``distributed.Client`` to use
        (it is then left open).
    retries : int, optional
        Retries of a task that raised an exception. A task whose worker died is retried by the
        scheduler up to its ``distributed.scheduler.allowed-failures`` (default 3) times.
    commit_batch : int, optional
        Results the caller should write per commit. Default is `DEFAULT_COMMIT_BATCH`.
    commit_interval_s : float, optional
        Longest time the caller should hold results before a commit. Default is
        `DEFAULT_COMMIT_INTERVAL_S`.
    timeout_s : float, optional
        Seconds to wait for the scheduler. Default is `CONNECT_TIMEOUT_S`.
    task_size : int, optional
        Most items per task. Default is `DEFAULT_TASK_SIZE`.

    Examples
    --------
    >>> with DaskExecutor("tcp://scheduler:8786") as executor:  # doctest: +SKIP
    ...     for result in executor.imap_unordered(process_run, jobs):
    ...         store(result)
    """

    def __init__(
        self,
        address: Any,
        retries: int = DEFAULT_RETRIES,
        commit_batch: int = DEFAULT_COMMIT_BATCH,
        commit_interval_s: float = DEFAULT_COMMIT_INTERVAL_S,
        timeout_s: float | None = None,
        task_size: int = DEFAULT_TASK_SIZE,
    ) -> None:
        if isinstance(address, str):
            check_scheduler_address(address)
        self.address = address
        self.retries = int(retries)
        self.commit_batch = max(1, int(commit_batch))
        self.commit_interval_s = float(commit_interval_s)
        self.timeout_s = float(CONNECT_TIMEOUT_S if timeout_s is None else timeout_s)
        self.task_size = max(1, int(task_size))
        #: The ``distributed.Client`` while the executor is entered.
        self.client: Any = None
        self._owns_client = False
        self._depth = 0

    def __repr__(self) -> str:
        return f"DaskExecutor({self.address!r})"

    def __enter__(self) -> DaskExecutor:
        if self._depth:
            self._depth += 1
            return self
        distributed = _import_distributed()
        if isinstance(self.address, distributed.Client):
            self.client = self.address
            self._depth = 1
            return self
        try:
            self.client = _closing_client_class()(self.address, timeout=self.timeout_s, set_as_default=False)
        except (OSError, ValueError, TypeError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BkgdbError(f"cannot connect to the Dask scheduler {self.address}: {reason}") from None
        self._owns_client = True
        n_workers = len(self.client.scheduler_info().get("workers", {}))
        log.info("connected to Dask scheduler %s (%d workers)", self.address, n_workers)
        if n_workers == 0:
            log.warning("the Dask scheduler %s has no workers yet: runs wait until workers join", self.address)
        self._depth = 1
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> Literal[False]:
        self._depth -= 1
        if self._depth:
            return False
        if self._owns_client and self.client is not None:
            self.client.close()
        self.client = None
        return False

    @staticmethod
    def _results(future: Any, label: str) -> list | None:
        """The results of a finished task, or None if it killed workers repeatedly."""
        from distributed.scheduler import KilledWorker

        try:
            return list(future.result())
        except KilledWorker:
            return None
        except (ImportError, AttributeError) as exc:  # a worker without this bkgdb
            raise WorkerError(
                f"{label} failed on a Dask worker: {type(exc).__name__}: {exc} (do the workers "
                "run the same bkgdb in the same environment?)"
            ) from exc

    def imap_unordered(
        self,
        function: Callable[[T], R] | Callable[[list[T]], Iterable[R]],
        items: Iterable[T],
        name: Callable[[T], str] | None = None,
        batched: bool = False,
    ) -> Iterator[R]:
        """``function(item)`` for every item on the cluster, in completion order.

        Parameters
        ----------
        function : callable
            Importable by the workers (they run the same bkgdb).
        items : iterable
            Picklable arguments, up to ``task_size`` per task.
        name : callable, optional
            ``name(item)``: how an item is named in errors (e.g. ``run 23523``).
        batched : bool, optional
            ``function`` takes a task's list of items and returns their results in the same order
            (so that it can, say, read the next item's file while processing one), instead of one
            item. A task that kills workers is still run again one item at a time. Default is False.

        Raises
        ------
        WorkerError
            An item killed ``allowed-failures`` workers in a row when run alone (after all the others).
        """
        from distributed import as_completed

        items = list(items)
        if self.client is None:
            raise RuntimeError("DaskExecutor.imap_unordered needs the executor entered (with DaskExecutor(...) as ...)")
        token = uuid.uuid4().hex[:8]
        n_workers = max(1, len(self.client.scheduler_info().get("workers", {})))
        size = items_per_task(len(items), n_workers, self.task_size)
        labels: dict[str, str] = {}
        chunks: dict[str, list[int]] = {}  # positions in ``items``

        def task(positions: list[int]) -> tuple[str, list[T]]:
            """A task's key, naming the runs it holds (in errors and on the dashboard), and its items."""
            key = f"bkgdb-{token}-{len(chunks)}"
            chunks[key] = positions
            first = name(items[positions[0]]) if name is not None else f"item {positions[0]}"
            labels[key] = first if len(positions) == 1 else f"{first} (and {len(positions) - 1} more in its task)"
            return key, [items[position] for position in positions]

        body: Callable[[Any, list[T]], list[R]] = apply_to_batch if batched else apply_to_each
        tasks = [task(list(range(at, min(at + size, len(items))))) for at in range(0, len(items), size)]
        pending: set[Any] = set()
        try:
            if tasks:  # one map call submits tens of thousands of tasks in one message
                work = [chunk for _, chunk in tasks]
                keys = [key for key, _ in tasks]
                pending.update(
                    self.client.map(body, [function] * len(work), work, key=keys, retries=self.retries, pure=False)
                )
            finished = as_completed(list(pending), loop=self.client.loop)
            # Runs of tasks that killed workers. A dying worker takes the blame for every task it
            # held, so they are run again one at a time once the others are done: alone on the
            # cluster, a run that still kills workers is the one that does.
            isolated: list[int] = []
            for future in finished:
                pending.discard(future)
                results = self._results(future, labels[future.key])
                if results is None:
                    log.warning("%s killed Dask workers: run again alone at the end", labels[future.key])
                    isolated += chunks[future.key]
                    continue
                future.release()
                yield from results
            killers = []
            for position in isolated:
                key, chunk = task([position])
                single = self.client.submit(body, function, chunk, key=key, retries=self.retries, pure=False)
                pending.add(single)
                results = self._results(single, labels[key])
                pending.discard(single)
                if results is None:
                    killers.append(labels[key])
                    continue
                single.release()
                yield from results
            if killers:
                raise WorkerError(
                    f"{', '.join(killers)} killed Dask workers repeatedly (out of memory, or a crash reading "
                    "the file?) and was given up; the other runs are done"
                )
        finally:
            if pending:  # left early: nothing queued may start any more
                self.client.cancel(list(pending))
                log.debug("cancelled %d Dask tasks", len(pending))
