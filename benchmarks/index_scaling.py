"""Benchmark: indexing H.E.S.S. DL3 DR1 with pieces, on local processes and Dask workers, beside the read floor.

The read floor is a loop in this process that opens every event file and reads the event
columns (RA, DEC, ENERGY): what no indexer can avoid. Each index goes into a new database; the
Dask cases use a `distributed.LocalCluster` started beforehand (its workers import bkgdb and read
the catalogues within the timed index, as workers on a cluster do).

Local workers are spawned: each imports the main module of the process that starts them. This
script imports what it needs inside its functions, so its workers import what those of `bkgdb
index` import (the command's module is light), not this script's tools.

The Dask lines are timed three times: with the workers' environment as `distributed` sets it
(``MALLOC_TRIM_THRESHOLD_=65536``, which bkgdb's tasks answer by setting glibc's malloc
thresholds, `bkgdb.parallel.memory`); with ``MALLOC_MMAP_THRESHOLD_=131072`` added, glibc's
initial value, with which bkgdb leaves malloc alone: the workers as they were before bkgdb did
this; and with ``MALLOC_TRIM_THRESHOLD_`` unset (``distributed.nanny.pre-spawn-environ``), glibc's
adaptive thresholds. For these lines, "worker RSS" is each worker's resident memory after each
index (the largest worker's, in MiB), to show that it does not grow from one index to the next.

Besides wall-clock seconds, each line gives the CPU seconds of this process and every process it
started (local workers, the Dask cluster's) in the best case: on a machine shared with other work,
they tell what the indexer costs where wall-clock time tells mostly what the others did.

Usage: python benchmarks/index_scaling.py [--config FILE] [--postgres URL] [--repeat N]   (needs $GAMMAPY_DATA)
"""

import argparse
import os
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def cpu_seconds():
    """CPU seconds so far of this process, its finished children and its running descendants."""
    import psutil

    process = psutil.Process()
    times = process.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in process.children(recursive=True):
        try:
            child_times = child.cpu_times()
        except psutil.NoSuchProcess:  # ended meanwhile: counted in children_* once reaped
            continue
        total += child_times.user + child_times.system
    return total


def read_floor(datastore):
    """Seconds (wall, CPU) to open every event file and read its event columns; the events read."""
    import numpy as np
    from astropy.io import fits

    from bkgdb.gadf.datastore import DL3Datastore

    start, cpu = time.perf_counter(), cpu_seconds()
    events = 0
    for source in DL3Datastore(datastore).runs():
        with fits.open(source.events_path, memmap=False) as hdul:
            data = hdul[source.events_hdu].data
            columns = [np.asarray(data[name], dtype=float) for name in ("RA", "DEC", "ENERGY")]
            events += len(columns[0])
    return time.perf_counter() - start, cpu_seconds() - cpu, events


def new_database(folder, postgres):
    if not postgres:
        return f"sqlite:///{Path(folder, uuid.uuid4().hex[:8] + '.sqlite')}"
    import sqlalchemy as sa

    from bkgdb.store.database import resolve_url

    admin = sa.create_engine(resolve_url(postgres), isolation_level="AUTOCOMMIT")
    name = f"bkgdb_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return sa.engine.make_url(resolve_url(postgres)).set(database=name).render_as_string(hide_password=False)


def drop_database(url, postgres):
    if not postgres:
        return
    import sqlalchemy as sa

    from bkgdb.store.database import resolve_url

    admin = sa.create_engine(resolve_url(postgres), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{sa.engine.make_url(url).database}" WITH (FORCE)'))
    admin.dispose()


def timed_index(folder, postgres, datastore, config, jobs=1, executor=None):
    from bkgdb.store.catalogue import RunCatalogue

    url = new_database(folder, postgres)
    catalogue = RunCatalogue.open(url)
    try:
        start, cpu = time.perf_counter(), cpu_seconds()
        report = catalogue.index(datastore, config=config, jobs=jobs, executor=executor)
        return time.perf_counter() - start, cpu_seconds() - cpu, report
    finally:
        catalogue.engine.dispose()
        drop_database(url, postgres)


def resident_mib():
    """This process's resident memory in MiB (run on each Dask worker)."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "hess-dr1.yaml"))
    parser.add_argument("--postgres", default=None, help="write into new databases on this PostgreSQL server "
                        "(e.g. postgresql://postgres@127.0.0.1:5432/postgres); default SQLite files")
    parser.add_argument("--repeat", type=int, default=1, help="best of N for every line")
    args = parser.parse_args()
    datastore = Path(os.environ["GAMMAPY_DATA"], "hess-dl3-dr1")

    import dask
    from distributed import Client, LocalCluster

    from bkgdb.parallel.cluster import DaskExecutor

    rows = []  # (label, wall s, CPU s, result, worker RSS)
    floor, floor_cpu, events = min((read_floor(datastore) for _ in range(args.repeat)), key=lambda item: item[0])
    rows.append(("read floor (open + read event columns)", floor, floor_cpu, f"{events:,} events", ""))
    from bkgdb.config import load_config

    # Once per process, whatever the archive's size: measured apart, so the first index line is not
    # the only one to pay it (local workers receive the catalogues from this process; Dask workers
    # read them themselves, within their first task).
    from bkgdb.makers.run import exclusion_finder

    start, cpu = time.perf_counter(), cpu_seconds()
    config = load_config(args.config)  # resolves the config's source names in the catalogues
    exclusion_finder(config.exclusion)
    rows.append(("config, source and star catalogues (once)", time.perf_counter() - start, cpu_seconds() - cpu,
                 "gamma-cat, 3HWC, Hipparcos", ""))
    with tempfile.TemporaryDirectory() as folder:
        for jobs in (1, 2):
            best, cpu, report = min((timed_index(folder, args.postgres, datastore, config, jobs=jobs)
                                     for _ in range(args.repeat)), key=lambda item: item[0])
            rows.append((f"index, {jobs} local process{'es' if jobs > 1 else ''}", best, cpu, report.summary(), ""))
        # Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which alone makes glibc map and
        # unmap every large numpy temporary; bkgdb's tasks then set malloc's thresholds themselves.
        # Timed as it comes; with MALLOC_MMAP_THRESHOLD_ at glibc's initial value, which makes bkgdb
        # leave malloc alone (the workers as before bkgdb did this); and with the variable unset.
        nanny_environ = dask.config.get("distributed.nanny.pre-spawn-environ")
        cases = (
            ("", {}),
            (", malloc left alone", {**nanny_environ, "MALLOC_MMAP_THRESHOLD_": 131072}),
            (", no malloc trim", {**nanny_environ, "MALLOC_TRIM_THRESHOLD_": None}),
        )
        for suffix, environ in cases:
            settings = {"distributed.nanny.pre-spawn-environ": environ} if environ else {}
            # A LocalCluster's nannies leave their variables in this process's environment, whence
            # the next cluster's workers would inherit them.
            os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
            os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
            for workers in (1, 2):
                with dask.config.set(settings), LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                             dashboard_address=None, silence_logs=40) as cluster:
                    client = Client(cluster, set_as_default=False)  # asks the workers their memory
                    timings, resident = [], []
                    for _ in range(args.repeat):
                        timings.append(timed_index(folder, args.postgres, datastore, config,
                                                   executor=DaskExecutor(cluster.scheduler_address)))
                        resident.append(max(client.run(resident_mib).values()))
                    client.close()
                best, cpu, report = min(timings, key=lambda item: item[0])
                label = f"index, {workers} Dask worker{'s' if workers > 1 else ''}"
                rows.append((label + suffix, best, cpu, report.summary(), ", ".join(f"{m:.0f}" for m in resident)))

    database = "PostgreSQL" if args.postgres else "SQLite"
    print(f"H.E.S.S. DL3 DR1, {args.config}, {database}, {os.cpu_count()} CPUs, best of {args.repeat}")
    print(f"| {'what':48s} | {'wall s':>7s} | {'x floor':>7s} | {'CPU s':>7s} | {'worker RSS MiB':14s} | result |")
    print(f"|{'-' * 50}|{'-' * 8}:|{'-' * 8}:|{'-' * 8}:|{'-' * 15}:|--------|")
    for label, seconds, cpu, note, resident in rows:
        print(f"| {label:48s} | {seconds:7.2f} | {seconds / floor:7.2f} | {cpu:7.2f} | {resident:>14s} | {note} |")


if __name__ == "__main__":
    main()
