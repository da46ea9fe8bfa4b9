"""Local index workers start from what the indexing process already has: its parsed catalogues."""

import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from astropy.io import fits

from bkgdb.config import Binning, BkgdbConfig, ExclusionSettings
from bkgdb.gadf.datastore import DL3Datastore, json_safe
from bkgdb.gadf.runfacts import read_run_facts
from bkgdb.makers.run import RunJob, exclusion_finder, process_run
from bkgdb.parallel.processes import WorkerError, WorkerPool
from bkgdb.simulate import BackgroundTruth, DatastoreSimulator, PointSource, write_source_catalogue
from bkgdb.store.catalogue import RunCatalogue
from bkgdb.store.database import session_scope
from bkgdb.store.indexing import (
    WORKER_FINDERS,
    WORKER_FOLDER_OWNER,
    WORKER_FOLDER_PREFIX,
    remove_stale_worker_folders,
    run_jobs,
)
from bkgdb.store.models import RUN_STATUS_OK, PieceRow, Run

SOURCE = PointSource(ra_deg=120.0, dec_deg=-30.0, rate_per_s=0.01, name="Worker test source")

#: Set in each worker by `remember`.
_received: tuple = ()


def remember(*values: object) -> None:
    global _received
    _received = (os.getpid(), *values)


def received(_: object) -> tuple:
    time.sleep(0.2)  # long enough that both workers take items
    return _received


def test_pool_initializer_runs_in_every_worker() -> None:
    with WorkerPool(2, remember, ("state", 3)) as pool:
        answers = list(pool.imap_unordered(received, range(8)))
    assert {answer[1:] for answer in answers} == {("state", 3)}
    workers = {answer[0] for answer in answers}
    assert len(workers) == 2 and os.getpid() not in workers


@pytest.fixture
def field(tmp_path: Path) -> tuple[Path, BkgdbConfig]:
    pointings = [(120.5, -30.0), (119.5, -30.0), (120.0, -29.5)]
    DatastoreSimulator(
        truth=BackgroundTruth(norm=3e-6), pointings=pointings, ontime_s=300.0, with_irfs=False, seed=5
    ).run(tmp_path / "datastore")
    catalogue = write_source_catalogue(tmp_path / "sources.fits", [SOURCE])
    exclusion = ExclusionSettings(gammacat=str(catalogue), hawc=None, star_cat=None)
    binning = Binning(e_min=0.1, e_max=100, e_bins=6, off_min=0, off_max=2.5, off_bins=5)
    return tmp_path / "datastore", BkgdbConfig(binnings=[binning], exclusion=exclusion)


def test_local_workers_use_the_catalogues_read_before_they_start(field: tuple[Path, BkgdbConfig]) -> None:
    datastore, config = field
    exclusion = config.exclusion
    exclusion_finder(exclusion)  # as the indexer does before starting workers
    assert exclusion.gammacat is not None
    Path(exclusion.gammacat).unlink()  # a worker reading it again would fail
    store = DL3Datastore(datastore)
    specs = [(config.binnings[0], exclusion)]
    jobs = [RunJob(source=source, meta=store.meta, specs=specs) for source in store.runs()]
    results = list(run_jobs(jobs, 2))
    assert sorted(result.obs_id for result in results) == sorted(job.source.obs_id for job in jobs)
    assert all(result.error is None and len(result.pieces) == 1 for result in results)
    # Every pointing is 0.5 deg from the source: every piece excludes it.
    assert all(result.pieces[0][2].regions[0]["name"] == SOURCE.name for result in results)


def test_workers_leave_the_run_dates_to_the_indexing_process(field: tuple[Path, BkgdbConfig]) -> None:
    datastore, config = field
    store = DL3Datastore(datastore)
    for source in store.runs():
        result = process_run(RunJob(source=source, meta=store.meta, specs=[(config.binnings[0], config.exclusion)]))
        assert result.header is not None and result.pieces
        facts = read_run_facts(source, store.meta, result.header)
        assert source.events_path is not None
        with fits.open(source.events_path) as hdul:
            header = {key: json_safe(value) for key, value in hdul["EVENTS"].header.items()}
        assert facts == read_run_facts(source, store.meta, header)
        assert facts.tstart_mjd is not None and facts.date_obs is not None and facts.ontime_s


def test_a_dead_local_worker_stops_the_index_and_keeps_the_results_back(tmp_path: Path, db_url: str) -> None:
    # Enough runs that the workers are still busy when the second result is handled: with 8, they
    # had once finished them all by then (PostgreSQL, a slow first write), and nothing died.
    pointings = [(120.0 + 0.3 * number, -30.0) for number in range(32)]
    DatastoreSimulator(
        truth=BackgroundTruth(norm=3e-6), pointings=pointings, ontime_s=300.0, with_irfs=False, seed=6
    ).run(tmp_path / "datastore")
    binning = Binning(e_min=0.1, e_max=100, e_bins=6, off_min=0, off_max=2.5, off_bins=5)
    config = BkgdbConfig(binnings=[binning], exclusion=ExclusionSettings(gammacat=None, hawc=None, star_cat=None))
    seen: list[int] = []

    def kill_the_workers(done: int, total: int) -> None:
        seen.append(done)
        if done == 2:
            for child in multiprocessing.active_children():
                os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]

    catalogue = RunCatalogue.open(db_url)
    try:
        with pytest.raises(WorkerError, match="a worker process died") as error:
            catalogue.index(tmp_path / "datastore", config=config, jobs=2, progress=kill_the_workers)
        assert "__main__" not in str(error.value)  # results came back: no script without a guard
        with session_scope(catalogue.engine) as session:
            stored = session.scalar(sa.select(sa.func.count()).select_from(Run).where(Run.status == RUN_STATUS_OK))
            pieces = session.scalar(sa.select(sa.func.count()).select_from(PieceRow))
    finally:
        catalogue.engine.dispose()
    # Every result that came back before the error is written, with its piece; none other.
    assert stored == pieces == max(seen) >= 2


def test_a_script_without_a_main_guard_is_told_to_add_one(simulated_datastore: Path, tmp_path: Path) -> None:
    # Each spawned worker imports the script again, starts an index itself and dies of it.
    script = tmp_path / "index_runs.py"
    script.write_text(
        "import bkgdb\n"
        f"catalogue = bkgdb.Catalogue.open({str(tmp_path / 'db.sqlite')!r})\n"
        f"catalogue.index({str(simulated_datastore)!r}, jobs=2)\n"
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .endswith('from a Python script, start the work under `if __name__ == "__main__":` (workers import the script)')
    )


def test_folders_left_by_killed_indexes_are_removed_by_the_next(tmp_path: Path) -> None:
    """Only a folder an index made (its owner file names this host and a process that is gone) is
    removed; a user's folder that happens to match the name is left as it is."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])  # a pid that is gone once it has ended
    gone.wait()
    host = socket.gethostname()
    owners = {
        "stale": f"{host} {gone.pid}",
        "live": f"{host} {os.getpid()}",
        "other-host": f"elsewhere.example {gone.pid}",
        "no-owner": None,
        "stale-with-a-user-file": f"{host} {gone.pid}",
    }
    folders = {}
    for name, owner in owners.items():
        folder = folders[name] = tmp_path / f"{WORKER_FOLDER_PREFIX}{gone.pid}-{name}"
        folder.mkdir()
        (folder / WORKER_FINDERS).write_bytes(b"x" * 100)
        if owner is not None:
            (folder / WORKER_FOLDER_OWNER).write_text(owner)
    (folders["no-owner"] / "README.txt").write_text("mine")
    (folders["stale-with-a-user-file"] / "notes.txt").write_text("mine")
    assert remove_stale_worker_folders(str(tmp_path)) == [folders["stale"]]
    assert not folders["stale"].exists()
    for name in ("live", "other-host", "no-owner"):
        assert sorted(path.name for path in folders[name].iterdir()) == sorted(
            [WORKER_FINDERS]
            + ([WORKER_FOLDER_OWNER] if owners[name] else [])
            + (["README.txt"] if name == "no-owner" else [])
        )
    assert [path.name for path in folders["stale-with-a-user-file"].iterdir()] == ["notes.txt"]


def test_a_local_index_names_its_folder_by_its_pid_and_removes_it(field: tuple[Path, BkgdbConfig]) -> None:
    datastore, config = field
    store = DL3Datastore(datastore)
    jobs = [
        RunJob(source=source, meta=store.meta, specs=[(config.binnings[0], config.exclusion)])
        for source in store.runs()
    ]
    mine = f"{WORKER_FOLDER_PREFIX}{os.getpid()}-*"
    during = []
    for _ in run_jobs(jobs, 2):
        during.append(len(list(Path(tempfile.gettempdir()).glob(mine))))
    assert during and all(count == 1 for count in during)
    assert not list(Path(tempfile.gettempdir()).glob(mine))
