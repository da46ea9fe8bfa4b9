"""Indexing on a Dask cluster (`bkgdb index --scheduler`) gives the catalogue a local index gives.

A real `distributed.LocalCluster` of two worker processes; the client writes into SQLite or
PostgreSQL (``db_url``), the reference is a local index into an SQLite file.
"""

import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import catalogue_content, index_into_sqlite
from typer.testing import CliRunner

from bkgdb.config import Binning, BkgdbConfig, ExclusionSettings, load_config
from bkgdb.errors import BkgdbError
from bkgdb.simulate import BackgroundTruth, DatastoreSimulator, PointSource, write_source_catalogue
from bkgdb.store.catalogue import RunCatalogue

distributed = pytest.importorskip("distributed")

N_RUNS = 20
BROKEN_OBS_ID = 1007
#: Seconds to wait for the nanny to restart a killed worker: a fresh worker imports gammapy, which
#: took more than a minute on two cores busy with other test runs.
WORKER_RESTART_S = 240
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
    ) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def sim_datastore(tmp_path_factory):
    """20 runs around a catalogued source; one run's file is cut in half (a failed run)."""
    folder = tmp_path_factory.mktemp("dask_sim")
    source = PointSource(ra_deg=83.6, dec_deg=22.0, rate_per_s=0.2, name="Sim source")
    pointings = [(83.6 + 0.5 * (i % 4) - 0.75, 22.0 + 0.1 * (i // 4)) for i in range(N_RUNS)]
    DatastoreSimulator(
        truth=BackgroundTruth(norm=3e-6), pointings=pointings, source=source, ontime_s=600.0, seed=3
    ).run(folder / "datastore")
    broken = folder / "datastore" / "data" / f"run_{BROKEN_OBS_ID:06d}.fits.gz"
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    catalogue_file = write_source_catalogue(folder / "sources.fits", [source])
    exclusion = ExclusionSettings(gammacat=str(catalogue_file), hawc=None, star_cat=None)
    config = BkgdbConfig(
        binnings=[Binning(e_min=0.1, e_max=100, e_bins=12, off_min=0, off_max=2.5, off_bins=10)], exclusion=exclusion
    )
    return folder / "datastore", config


def local_reference(tmp_path, datastore, config):
    return index_into_sqlite(tmp_path / "local.sqlite", datastore, config)


def test_dask_index_equals_local_index(db_url, tmp_path, cluster, sim_datastore):
    datastore, config = sim_datastore
    reference_url, reference = local_reference(tmp_path, datastore, config)
    from bkgdb.parallel.cluster import DaskExecutor

    catalogue = RunCatalogue.open(db_url)
    try:
        report = catalogue.index(
            datastore, config=config, executor=DaskExecutor(cluster.scheduler_address, commit_batch=7)
        )
        again = catalogue.index(datastore, config=config, executor=DaskExecutor(cluster.scheduler_address))
    finally:
        catalogue.engine.dispose()
    assert (report.new, report.failed, report.pieces) == (N_RUNS - 1, 1, N_RUNS - 1)
    assert report.failures == reference.failures
    assert report.failures[0][0] == BROKEN_OBS_ID and "cannot read" in report.failures[0][1]
    # Only the failed run is tried again, and fails the same way.
    assert (again.new, again.unchanged, again.failed) == (0, N_RUNS - 1, 1)

    got, expected = catalogue_content(db_url), catalogue_content(reference_url)
    assert got["runs"][BROKEN_OBS_ID]["status"] == "failed"
    assert got["runs"][BROKEN_OBS_ID]["error"] == expected["runs"][BROKEN_OBS_ID]["error"]
    assert got == expected


def test_runs_of_a_killed_worker_are_not_lost(db_url, tmp_path, cluster, sim_datastore):
    datastore, config = sim_datastore
    reference_url, _ = local_reference(tmp_path, datastore, config)
    from bkgdb.parallel.cluster import DaskExecutor

    killed = []
    with distributed.Client(cluster.scheduler_address, set_as_default=False) as observer:

        def kill_a_busy_worker(done, total):
            if killed or done == 0:
                return
            busy = [address for address, keys in observer.processing().items() if keys]
            if busy:
                pid = observer.run(os.getpid, workers=[busy[0]])[busy[0]]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

        catalogue = RunCatalogue.open(db_url)
        try:
            report = catalogue.index(
                datastore,
                config=config,
                progress=kill_a_busy_worker,
                # A run per task: these runs take milliseconds, and tasks of several would all be
                # done before a busy worker could be found to kill.
                executor=DaskExecutor(cluster.scheduler_address, commit_batch=1, task_size=1),
            )
        finally:
            catalogue.engine.dispose()
        observer.wait_for_workers(2, timeout=WORKER_RESTART_S)  # the nanny restarts it for the next test
    assert killed, "no worker was busy to be killed"
    assert (report.new, report.failed) == (N_RUNS - 1, 1)
    assert catalogue_content(db_url) == catalogue_content(reference_url)


def test_a_run_that_keeps_killing_workers_is_a_clear_error(cluster):
    from bkgdb.parallel.cluster import DaskExecutor
    from bkgdb.parallel.processes import WorkerError

    with DaskExecutor(cluster.scheduler_address) as executor:
        executor.client.wait_for_workers(2, timeout=WORKER_RESTART_S)  # both back from an earlier test's kill
        with pytest.raises(WorkerError, match=r"run 5 killed Dask workers repeatedly"):
            list(executor.imap_unordered(os._exit, [5], name=lambda item: f"run {item}"))
        executor.client.wait_for_workers(2, timeout=WORKER_RESTART_S)


def test_items_travel_a_few_per_task_and_a_killer_among_them_is_named(cluster):
    from bkgdb.parallel.cluster import DaskExecutor
    from bkgdb.parallel.processes import WorkerError

    with DaskExecutor(cluster.scheduler_address, task_size=4) as executor:
        executor.client.wait_for_workers(2, timeout=WORKER_RESTART_S)
        # 40 items on 2 workers: tasks of 4, all results back, each once.
        assert sorted(executor.imap_unordered(abs, [-n for n in range(40)])) == list(range(40))
        task_of = lambda _: distributed.get_worker().get_current_task()  # noqa: E731 - sent by value
        assert sorted(Counter(executor.imap_unordered(task_of, list(range(40)))).values()) == [4] * 10
        # Item 13 kills every worker that runs it. The tasks its workers held are blamed too; run
        # again alone at the end, every other item comes back and item 13 alone is named.
        killer = lambda n: os._exit(3) if n == 13 else n  # noqa: E731 - sent to the workers by value
        got = []
        with pytest.raises(WorkerError, match=r"^run 13 killed Dask workers repeatedly"):
            for value in executor.imap_unordered(killer, list(range(40)), name=lambda n: f"run {n}"):
                got.append(value)
        assert sorted(got) == [n for n in range(40) if n != 13]
        executor.client.wait_for_workers(2, timeout=WORKER_RESTART_S)


def test_cli_index_with_scheduler_and_unreachable_scheduler(db_url, tmp_path, cluster, sim_datastore, monkeypatch):
    from bkgdb.cli.main import app

    datastore, _ = sim_datastore
    runner = CliRunner()
    result = runner.invoke(app, ["--db", db_url, "index", str(datastore), "--scheduler", cluster.scheduler_address])
    assert result.exit_code == 0, result.output
    assert f"{N_RUNS - 1} new, 0 updated, 0 unchanged, 1 failed" in result.stdout
    assert f"failed: run {BROKEN_OBS_ID}: cannot read" in result.stderr

    monkeypatch.setattr("bkgdb.parallel.cluster.CONNECT_TIMEOUT_S", 1.0)
    result = runner.invoke(app, ["--db", db_url, "index", str(datastore), "--scheduler", "tcp://127.0.0.1:9"])
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: cannot connect to the Dask scheduler tcp://127.0.0.1:9")
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_malformed_scheduler_address_is_refused_before_any_work(db_url, sim_datastore):
    from bkgdb.cli.main import app

    datastore, _ = sim_datastore
    runner = CliRunner()

    def index(*options):
        return runner.invoke(app, ["--db", db_url, "index", str(datastore), *options])

    for address in ("garbage", "tcp://[::1", "tcp://scheduler:99999", "foo://scheduler:8786", "http//scheduler:8786"):
        started = time.monotonic()
        result = index("--scheduler", address)
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith(f"Error: malformed Dask scheduler address {address!r}: ")
        assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""
        assert time.monotonic() - started < 10
    assert RunCatalogue.open(db_url).select_runs() == []
    # With every run indexed there is nothing for the cluster to do: the address is checked all the same.
    assert index().exit_code == 0
    result = index("--scheduler", "garbage")
    assert result.exit_code == 2 and result.stderr.startswith("Error: malformed Dask scheduler address 'garbage'")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_scheduler_that_cannot_be_reached_or_jobs_beside_it_leave_the_catalogue_untouched(
    db_url, sim_datastore, monkeypatch
):
    """The scheduler is reached before the datastore is catalogued: no datastore row stamped
    'indexed' with no runs. ``--jobs`` beside ``--scheduler`` (the runs would go to the scheduler
    alone) is refused before any work."""
    from bkgdb.cli.main import app
    from bkgdb.store.models import Datastore

    datastore, _ = sim_datastore
    runner = CliRunner()
    monkeypatch.setattr("bkgdb.parallel.cluster.CONNECT_TIMEOUT_S", 1.0)
    database = Path(db_url.removeprefix("sqlite:///"))
    config = database.parent / "config.yaml"
    config.write_text(
        "binning: {e_min: 0.1, e_max: 100, e_bins: 8, off_min: 0, off_max: 2.5, off_bins: 5}\n"
        "exclusion: {gammacat: none, hawc: none, star_cat: none}\n"
    )
    attach = ["attach", str(datastore), "--out", str(database.parent / "out"), "--config", str(config)]
    for command in (["index", str(datastore)], attach):
        result = runner.invoke(app, ["--db", db_url, *command, "--scheduler", "tcp://127.0.0.1:9"])
        assert result.exit_code == 2 and result.stderr.startswith("Error: cannot connect to the Dask scheduler")
        assert not database.exists() and not (database.parent / "out").exists()
    result = runner.invoke(
        app, ["--db", db_url, "index", str(datastore), "--jobs", "2", "--scheduler", "tcp://127.0.0.1:9"]
    )
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "Error: --jobs and --scheduler both say where to index: the runs go to the scheduler's workers, "
        "so give one of them"
    )
    catalogue = RunCatalogue.open(db_url)
    with catalogue.session() as session:
        assert session.scalars(sa.select(Datastore.path)).all() == []
    catalogue.engine.dispose()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_failed_connection_closes_at_once_and_quietly(db_url, sim_datastore):
    """A tls:// address without certificates in the dask config fails with a TypeError, not an OSError:
    distributed left that client half-open, and at exit the command waited twice the connect timeout
    (40 s), then printed "Exception ignored in Client.__del__": a whole command, as a user runs it."""
    import subprocess
    import sys

    datastore, _ = sim_datastore
    started = time.monotonic()
    command = [sys.executable, "-m", "bkgdb.cli.main", "--db", db_url, "index", str(datastore)]
    result = subprocess.run([*command, "--scheduler", "tls://127.0.0.1:9"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("Error: cannot connect to the Dask scheduler tls://127.0.0.1:9: ")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert time.monotonic() - started < 20


def test_a_client_may_be_given_for_the_scheduler(db_url, cluster, sim_datastore):
    """The library call takes a connected distributed.Client as its scheduler, and leaves it open."""
    from bkgdb.catalogue import Catalogue

    datastore, _ = sim_datastore
    with distributed.Client(cluster.scheduler_address, set_as_default=False) as client:
        report = Catalogue.open(db_url).index(datastore, scheduler=client)
        assert (report.new, report.failed) == (N_RUNS - 1, 1)
        assert client.status == "running"


def test_missing_dask_is_a_one_line_error(monkeypatch):
    import builtins

    from bkgdb.parallel.cluster import DaskExecutor

    real_import = builtins.__import__

    def without_distributed(name, *args, **kwargs):
        if name == "distributed" or name.startswith("distributed."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_distributed)
    with pytest.raises(BkgdbError, match=r'--scheduler needs dask.distributed, .*: pip install "dask\[distributed\]"'):
        DaskExecutor("tcp://127.0.0.1:8786").__enter__()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # DR1 is compared once
def test_hess_dr1_on_dask_equals_local(db_url, tmp_path, cluster, hess_dr1):
    from bkgdb.parallel.cluster import DaskExecutor

    config = load_config(os.path.join(REPO, "configs", "hess-dr1.yaml"))
    reference_url, reference = local_reference(tmp_path, hess_dr1, config)
    catalogue = RunCatalogue.open(db_url)
    try:
        report = catalogue.index(hess_dr1, config=config, executor=DaskExecutor(cluster.scheduler_address))
    finally:
        catalogue.engine.dispose()
    assert (report.new, report.failed, report.pieces) == (reference.new, 0, reference.pieces) == (105, 0, 210)
    assert catalogue_content(db_url) == catalogue_content(reference_url)


def bkgdb_tasks(dask_scheduler):
    return [key for key in dask_scheduler.tasks if str(key).startswith("bkgdb-")]


def test_interrupted_dask_index_keeps_commits_cancels_tasks_and_resumes(db_url, tmp_path, cluster, sim_datastore):
    datastore, config = sim_datastore
    reference_url, _ = local_reference(tmp_path, datastore, config)
    from bkgdb.parallel.cluster import DaskExecutor

    def interrupt_after_five(done, total):
        if done >= 5:
            raise KeyboardInterrupt

    catalogue = RunCatalogue.open(db_url)
    try:
        with pytest.raises(KeyboardInterrupt):
            catalogue.index(
                datastore,
                config=config,
                progress=interrupt_after_five,
                executor=DaskExecutor(cluster.scheduler_address, commit_batch=2, commit_interval_s=600),
            )
        kept = len(catalogue.select_runs(status=None))
        kept_ok = len(catalogue.select_runs())  # a failed run is tried again, whenever it was stored
        with distributed.Client(cluster.scheduler_address, set_as_default=False) as observer:
            deadline = time.monotonic() + 10  # the scheduler forgets cancelled tasks asynchronously
            while (left := observer.run_on_scheduler(bkgdb_tasks)) and time.monotonic() < deadline:
                time.sleep(0.1)
        report = catalogue.index(datastore, config=config, executor=DaskExecutor(cluster.scheduler_address))
    finally:
        catalogue.engine.dispose()
    assert kept == 4  # two batches of two; the fifth run was not committed
    assert left == []
    assert (report.new + report.updated + report.failed, report.unchanged) == (N_RUNS - kept_ok, kept_ok)
    assert catalogue_content(db_url) == catalogue_content(reference_url)
