"""Benchmark: indexing H.E.S.S. DR1 on Dask workers, results written by the client or by the workers.

(a) *client writes*: `RunCatalogue.index` with a `~bkgdb.parallel.cluster.DaskExecutor`, as the
library does: workers only read files and return `~bkgdb.makers.run.RunResult` objects (up to
``DEFAULT_TASK_SIZE`` runs per task), the client holds the one database connection and commits them
in batches.

(b) *workers write*: a prototype in which each task reads a batch of runs, then writes their
results through an engine of its own (opened for the task, closed after it), one commit per batch,
with the library's own storing code (`store_results`, the one place coupled to it).

(c) *client writes, batched tasks*: the tasks of (b) return their results and the client writes
each batch, one commit per task: what (b) gains from fewer, larger tasks, apart from what it gains
from writing on the workers.

For each database (SQLite file, new PostgreSQL database) and each case, a new database is indexed
on a fresh `distributed.LocalCluster` of 2 workers of 1 thread; before the clock starts the workers
have imported bkgdb and read the exclusion catalogues, so the times compare the writing, not cold
starts. Printed: wall time of the index (best and median of ``--repeat``, the cases taking turns),
commits and database connections opened in all processes (SQLAlchemy events, counted in the
client and in every task), and the seconds spent writing (by the tasks in (b), which includes
waiting for SQLite's single writer lock; by the client in (c)). The catalogues of the three cases
are then compared row by row: every run's and piece's values, ids and timestamps aside. Last, in
this process: the time to make one run's result (a worker's share) against the time to write it
(the client's share, serial), whose ratio is how many workers one writing client keeps busy.

Findings (2026-11-26, 2 cores, load average 1.5 before the run, 2.0 after; 2D + 3D pieces of
configs/hess-dr1.yaml; best of 3, median in brackets, seconds):

=================  =====  ============  ============  =============  ============
database           batch  (a) client    (b) workers   (c) client,    connections
                                                      batched tasks  (a) / (b)
=================  =====  ============  ============  =============  ============
SQLite             10     1.10 (1.13)   1.14 (1.16)   1.18 (1.25)    1 / 12
SQLite             50     1.12 (1.19)   1.17 (1.17)   1.16 (1.17)    1 / 4
PostgreSQL         10     1.21 (1.24)   1.34 (1.34)   1.27 (1.30)    1 / 12
PostgreSQL         50     1.20 (1.24)   1.24 (1.39)   1.24 (1.27)    1 / 4
=================  =====  ============  ============  =============  ============

The three catalogues were identical, run by run and piece by piece. Commits are the same in (a),
(b) and (c) (one per batch); connections are one in all for (a) and (c), one per task plus the
client's for (b). Writing on the workers gains nothing: (b) is never faster than (a) or (c). With
one task per run, (a) took 1.42-1.48 s on the same machine earlier the same day: what (b) had seemed
to gain came from fewer, larger tasks, which the library now sends. One process then wrote a run's
result (a 2D and a 3D piece) in 2.3-3.5 ms and made it in 7.7-10.3 ms, so one writing client kept
2.2-4 workers of this config busy. Since the workers encode the pieces (`EncodedPiece`; a result
travels as 20 kB instead of 224 kB), and with the client's writes timed through one session and
one writer as the library makes them (not one per batch), writing takes 0.8-0.9 ms per run on
SQLite and 1.0-1.3 ms on PostgreSQL against 7.1-9.2 ms to make it: one client keeps 5-10 workers
busy (2026-11-26 07:50, load 1.9 after; (a) 1.07-1.08 s, (b) 1.06-1.17 s, (c) 0.92-1.02 s on SQLite,
1.10-1.15, 1.17-1.25, 0.97-1.06 s on PostgreSQL, and the catalogues again identical).

The library keeps (a), the client writing: only the client needs the writer role and a route to
the database (workers on a batch cluster often have neither, and analysers stay read-only);
PostgreSQL sees one connection however many workers run, where (b) opens one per task and holds
up to one per worker at once (hundreds of workers would exhaust ``max_connections`` without a
pooler); and SQLite works as it is, where in (b) the writers queue for its single lock
(0.01-0.15 s waited here, more with more workers) and its WAL cannot be shared by workers on other
hosts. The client already writes several runs per statement and receives several runs per task; if
it becomes the limit (more than about 5-10 workers of this config), several writing clients, each
with its share of the runs, are the next step, not moving the writes into the workers.

Usage: python benchmarks/dask_writes.py [--db sqlite,postgresql] [--postgres URL] [--batches 10,50]
       [--repeat N]   (needs $GAMMAPY_DATA)
"""

import argparse
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from index_scaling import drop_database, new_database

from bkgdb.config import BkgdbConfig, ExclusionSettings, load_config
from bkgdb.gadf.datastore import DL3Datastore, RunSource
from bkgdb.makers.run import RunJob, RunResult, exclusion_finder, process_run
from bkgdb.parallel.cluster import DaskExecutor, items_per_task
from bkgdb.store.catalogue import RunCatalogue
from bkgdb.store.database import create_engine, session_scope
from bkgdb.store.indexing import DatastoreIndexer, _ResultWriter
from bkgdb.store.models import BinningRow, Datastore, ExclusionRow, PieceRow, RegionSet, Run
from bkgdb.store.upsert import insert_if_missing

REPO = Path(__file__).resolve().parent.parent
WORKERS = 2


@contextmanager
def counting() -> Iterator[dict[str, int]]:
    """Commits and new database connections of every engine in this process while the block runs."""
    tally = {"commits": 0, "connections": 0}

    def commit(connection: Any) -> None:
        tally["commits"] += 1

    def connect(dbapi_connection: Any, record: Any) -> None:
        tally["connections"] += 1

    # On the classes, so that engines made inside the block (by bkgdb) are counted from their first connection.
    sa.event.listen(sa.engine.Engine, "commit", commit)
    sa.event.listen(sa.pool.Pool, "connect", connect)
    try:
        yield tally
    finally:
        sa.event.remove(sa.engine.Engine, "commit", commit)
        sa.event.remove(sa.pool.Pool, "connect", connect)


def store_results(
    engine: sa.engine.Engine, path: str, meta: dict, config: BkgdbConfig, done: list[tuple[RunSource, RunResult]]
) -> float:
    """Write new runs' results in one transaction, as `RunCatalogue.index` writes them; seconds waited to write.

    The benchmark's one coupling to the library's storing code: the datastore's row is upserted,
    then the setting rows and every result go through `~bkgdb.store.indexing.DatastoreIndexer`'s
    own writer. They are private because the library writes only in the process that runs
    `RunCatalogue.index`; a library version of this prototype would make them public.
    """
    with session_scope(engine) as session:
        start = time.perf_counter()
        # The transaction's first write: where SQLite waits for its single writer lock.
        insert_if_missing(session, Datastore, ["path"], {"path": path, "obs_index_meta": meta})
        waited = time.perf_counter() - start
        datastore_id = session.scalars(sa.select(Datastore.id).where(Datastore.path == path)).one()
        if done:
            writer = _ResultWriter(session, datastore_id, meta, DatastoreIndexer._piece_specs(session, config))
            existing = {source.obs_id: Run(datastore_id=datastore_id, obs_id=source.obs_id) for source, _ in done}
            writer.write([result for _, result in done], existing, {source.obs_id: source for source, _ in done})
        session.commit()
    return waited


@contextmanager
def one_writer_session(engine: sa.engine.Engine, path: str, meta: dict, config: BkgdbConfig) -> Iterator[Any]:
    """``write(done)``: results written and committed as `RunCatalogue.index` writes them, through one
    session and one writer made once (as the library makes them once per index, not per batch)."""
    with session_scope(engine) as session:
        insert_if_missing(session, Datastore, ["path"], {"path": path, "obs_index_meta": meta})
        datastore_id = session.scalars(sa.select(Datastore.id).where(Datastore.path == path)).one()
        writer = _ResultWriter(session, datastore_id, meta, DatastoreIndexer._piece_specs(session, config))
        session.commit()

        def write(done: list[tuple[RunSource, RunResult]]) -> None:
            existing = {source.obs_id: Run(datastore_id=datastore_id, obs_id=source.obs_id) for source, _ in done}
            writer.write([result for _, result in done], existing, {source.obs_id: source for source, _ in done})
            session.commit()

        yield write


def result_counts(results: list[RunResult]) -> dict[str, int]:
    """Runs, pieces and failed runs among ``results``."""
    return dict(
        runs=len(results),
        pieces=sum(len(result.pieces) for result in results),
        failed=sum(result.error is not None for result in results),
    )


def index_batch(url: str, path: str, meta: dict, config: BkgdbConfig, jobs: list[RunJob]) -> dict[str, Any]:
    """A task of the prototype: process a batch of runs, then write them through a connection of its own."""
    start = time.perf_counter()
    results = [process_run(job) for job in jobs]
    processed = time.perf_counter()
    with counting() as tally:
        catalogue = RunCatalogue.open(url, upgrade=False)
        try:
            waited = store_results(
                catalogue.engine, path, meta, config, [(job.source, r) for job, r in zip(jobs, results, strict=True)]
            )
        finally:
            catalogue.engine.dispose()
    return dict(
        tally,
        **result_counts(results),
        write_s=time.perf_counter() - processed,
        wait_s=waited,
        process_s=processed - start,
    )


def warm(exclusion: ExclusionSettings) -> None:
    """Read the exclusion catalogues in a worker, as its first run would."""
    exclusion_finder(exclusion)


def new_run_jobs(store: DL3Datastore, config: BkgdbConfig) -> list[RunJob]:
    """The jobs of every run of ``store`` for a new catalogue: every piece of every run to make."""
    specs = [(binning, config.exclusion) for binning in config.binnings]
    return [RunJob(source, store.meta, None, specs, specs) for source in store.runs()]


def client_writes(url: str, datastore: Path, config: BkgdbConfig, address: str, batch: int) -> dict[str, Any]:
    """Case (a): the library's own Dask index; the client writes ``batch`` results per commit."""
    with counting() as tally:
        catalogue = RunCatalogue.open(url, upgrade=False)
        report = catalogue.index(datastore, config=config, executor=DaskExecutor(address, commit_batch=batch))
        catalogue.engine.dispose()
    runs = report.new + report.failed
    size = items_per_task(runs, WORKERS)  # as DaskExecutor groups them
    return dict(tally, runs=report.new, pieces=report.pieces, failed=report.failed, tasks=-(-runs // size))


def prepared(url: str, datastore: Path, config: BkgdbConfig) -> tuple[RunCatalogue, str, dict, list[RunJob]]:
    """The catalogue, datastore path, obs-index header and run jobs of cases (b) and (c)."""
    catalogue = RunCatalogue.open(url, upgrade=False)
    store = DL3Datastore(datastore)
    path, meta = str(store.path), store.meta
    # The datastore's and the settings' rows once, before the tasks: they would otherwise all upsert them at once.
    store_results(catalogue.engine, path, meta, config, [])
    return catalogue, path, meta, new_run_jobs(store, config)


def workers_write(url: str, datastore: Path, config: BkgdbConfig, address: str, batch: int) -> dict[str, Any]:
    """Case (b): tasks of ``batch`` runs, each writing its results itself."""
    from distributed import Client

    with counting() as tally:
        catalogue, path, meta, jobs = prepared(url, datastore, config)
        with Client(address, set_as_default=False) as client:
            futures = [
                client.submit(index_batch, url, path, meta, config, jobs[first : first + batch], pure=False)
                for first in range(0, len(jobs), batch)
            ]
            tasks = client.gather(futures)
        catalogue.refresh_statistics()  # as `index` does after bulk changes
        catalogue.engine.dispose()
    totals = {key: sum(task[key] for task in tasks) for key in ("commits", "connections", "runs", "pieces", "failed")}
    for key in ("commits", "connections"):
        totals[key] += tally[key]
    return dict(totals, tasks=len(tasks), **{key: sum(task[key] for task in tasks) for key in ("write_s", "wait_s")})


def process_batch(jobs: list[RunJob]) -> list[RunResult]:
    """A task of case (c): the results of a batch of runs, returned to the client."""
    return [process_run(job) for job in jobs]


def client_writes_batches(url: str, datastore: Path, config: BkgdbConfig, address: str, batch: int) -> dict[str, Any]:
    """Case (c): the tasks of (b), whose results the client writes, one commit per task.

    Tells apart what (b) gains from fewer, larger tasks and what it gains from writing on the workers.
    """
    from distributed import Client, as_completed

    with counting() as tally:
        catalogue, path, meta, jobs = prepared(url, datastore, config)
        sources = {job.source.obs_id: job.source for job in jobs}
        results: list[RunResult] = []
        writing = 0.0
        with Client(address, set_as_default=False) as client:
            futures = [
                client.submit(process_batch, jobs[first : first + batch], pure=False)
                for first in range(0, len(jobs), batch)
            ]
            with one_writer_session(catalogue.engine, path, meta, config) as write:
                for future in as_completed(futures, loop=client.loop):
                    done = future.result()
                    start = time.perf_counter()
                    write([(sources[r.obs_id], r) for r in done])
                    writing += time.perf_counter() - start
                    results.extend(done)
        catalogue.refresh_statistics()
        catalogue.engine.dispose()
    return dict(
        tally,
        **result_counts(results),
        tasks=len(futures),
        write_s=writing,
    )


def one_writer(
    kind: str, folder: str, postgres: str | None, store: DL3Datastore, config: BkgdbConfig, batch: int, repeat: int
) -> tuple[float, float]:
    """Seconds per run to make a run's result and to write it, in this process, ``batch`` runs per commit.

    Writing is the serial part of client writes: one client keeps about (make / write) workers busy.
    """
    jobs = new_run_jobs(store, config)
    start = time.perf_counter()
    results = [process_run(job) for job in jobs]
    make = (time.perf_counter() - start) / len(jobs)
    done = [(job.source, result) for job, result in zip(jobs, results, strict=True)]
    times = []
    for _ in range(repeat):
        url = new_database(folder, postgres if kind == "postgresql" else None)
        catalogue = RunCatalogue.open(url)
        store_results(catalogue.engine, str(store.path), store.meta, config, [])
        with one_writer_session(catalogue.engine, str(store.path), store.meta, config) as write:
            start = time.perf_counter()
            for first in range(0, len(done), batch):
                write(done[first : first + batch])
            times.append((time.perf_counter() - start) / len(done))
        catalogue.engine.dispose()
        drop_database(url, postgres if kind == "postgresql" else None)
    return make, min(times)


def catalogue_rows(url: str) -> tuple[dict, dict]:
    """Every run's and piece's values, keyed by (datastore, OBS_ID[, binning hash, exclusion hash])."""
    run_columns = [
        column for column in Run.__table__.columns if column.name not in ("id", "datastore_id", "indexed_at")
    ]
    piece_columns = [
        column
        for column in PieceRow.__table__.columns
        # The regions themselves, not the ids of their sets (given in the order runs were written).
        if column.name not in ("id", "run_id", "binning_id", "exclusion_id", "created_at", "region_set_id")
    ]
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            runs = connection.execute(
                sa.select(Datastore.path, *run_columns).join(Datastore, Run.datastore_id == Datastore.id)
            )
            pieces = connection.execute(
                sa.select(Datastore.path, Run.obs_id, BinningRow.hash, ExclusionRow.hash, *piece_columns,
                          RegionSet.regions)
                .select_from(PieceRow)
                .outerjoin(RegionSet, RegionSet.id == PieceRow.region_set_id)
                .join(Run, PieceRow.run_id == Run.id)
                .join(Datastore, Run.datastore_id == Datastore.id)
                .join(BinningRow, PieceRow.binning_id == BinningRow.id)
                .join(ExclusionRow, PieceRow.exclusion_id == ExclusionRow.id)
            )
            obs_id = [column.name for column in run_columns].index("obs_id") + 1
            return (
                {(row[0], row[obs_id]): tuple(row) for row in runs},
                {tuple(row[:4]): tuple(row) for row in pieces},
            )
    finally:
        engine.dispose()


CASES = {
    "client writes": client_writes,
    "workers write": workers_write,
    "client writes, batched tasks": client_writes_batches,
}


def measure(
    kind: str, case: str, batch: int, folder: str, postgres: str | None, datastore: Path, config: BkgdbConfig
) -> tuple[float, dict[str, Any], str]:
    """Index into a new database on a fresh, warmed cluster; (wall s, counts, url). The caller drops the database."""
    from distributed import Client, LocalCluster

    url = new_database(folder, postgres if kind == "postgresql" else None)
    RunCatalogue.open(url).engine.dispose()  # the schema, made before the clock starts
    # Critical messages only: a worker whose last heartbeat meets the closed scheduler logs a harmless error.
    with LocalCluster(
        n_workers=WORKERS, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.CRITICAL
    ) as cluster:
        with Client(cluster.scheduler_address, set_as_default=False) as client:
            client.run(warm, config.exclusion)
        start = time.perf_counter()
        counts = CASES[case](url, datastore, config, cluster.scheduler_address, batch)
        return time.perf_counter() - start, counts, url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "hess-dr1.yaml"))
    parser.add_argument("--db", default="sqlite,postgresql")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--batches", default="10,50", help="runs per commit (client) and per task (workers)")
    parser.add_argument("--repeat", type=int, default=3, help="best of N for every line")
    args = parser.parse_args()
    datastore = Path(os.environ["GAMMAPY_DATA"], "hess-dl3-dr1")
    config = load_config(args.config)
    batches = [int(value) for value in args.batches.split(",")]
    print(
        f"H.E.S.S. DL3 DR1, {args.config}, LocalCluster of {WORKERS} workers x 1 thread, {os.cpu_count()} CPUs, "
        f"best of {args.repeat}; load average before: {os.getloadavg()[0]:.2f}"
    )
    print(
        "| database | writes by | runs per commit | tasks | wall s best (median) | commits | connections opened "
        "| runs | pieces | s writing (tasks, or client) | of which waiting to write |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    ceilings = []
    with tempfile.TemporaryDirectory() as folder:
        for kind in args.db.split(","):
            postgres = args.postgres if kind == "postgresql" else None
            kept: dict[str, str] = {}
            for batch in batches:
                timings: dict[str, list[tuple[float, dict[str, Any]]]] = {case: [] for case in CASES}
                # The cases take turns, so that a change in the machine's load falls on both.
                for _ in range(args.repeat):
                    for case in CASES:
                        seconds, counts, url = measure(kind, case, batch, folder, postgres, datastore, config)
                        if case not in kept:
                            kept[case] = url  # compared below
                        else:
                            drop_database(url, postgres)
                        timings[case].append((seconds, counts))
                for case, measured in timings.items():
                    seconds, counts = min(measured, key=lambda item: item[0])
                    median = statistics.median(item[0] for item in measured)
                    writing = [f"{counts[key]:.2f}" if key in counts else "" for key in ("write_s", "wait_s")]
                    print(
                        f"| {kind} | {case} | {batch} | {counts['tasks']} | {seconds:.2f} ({median:.2f}) | "
                        f"{counts['commits']} | {counts['connections']} | {counts['runs']} | {counts['pieces']} | "
                        f"{' | '.join(writing)} |",
                        flush=True,
                    )
            for batch in batches:
                make, write = one_writer(kind, folder, postgres, DL3Datastore(datastore), config, batch, args.repeat)
                ceilings.append(f"| {kind} | {batch} | {1e3 * make:.1f} | {1e3 * write:.1f} | {make / write:.1f} |")
            rows = [catalogue_rows(kept[case]) for case in CASES]
            same_runs = all(runs == rows[0][0] for runs, _ in rows)
            same_pieces = all(pieces == rows[0][1] for _, pieces in rows)
            print(
                f"{kind}: catalogues of the {len(CASES)} cases identical: runs {same_runs} "
                f"({', '.join(str(len(runs)) for runs, _ in rows)}), pieces {same_pieces} "
                f"({', '.join(str(len(pieces)) for _, pieces in rows)})"
            )
            for url in kept.values():
                drop_database(url, postgres)
    print("\nOne process: making a run's result (what a worker does) against writing it (what the client does)")
    print("| database | runs per commit | make ms per run | write ms per run | workers one writer keeps busy |")
    print("|---|---:|---:|---:|---:|")
    print("\n".join(ceilings))
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
