"""Faults of real processes: an indexer killed (SIGKILL) or terminated (SIGTERM) mid-way, and two
indexers on one database at once, on SQLite and PostgreSQL.

Each case runs `bkgdb index` as a subprocess on a simulated datastore of 60 short runs and compares
the database afterwards with an uninterrupted index: the same run rows and the same piece bytes.
"""

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import ctrl_c_as_in_a_terminal
from typer.testing import CliRunner

from bkgdb.config import load_config
from bkgdb.simulate import BackgroundTruth, DatastoreSimulator
from bkgdb.store.catalogue import RunCatalogue
from bkgdb.store.database import resolve_url
from bkgdb.store.indexing import WORKER_FOLDER_PREFIX
from bkgdb.store.models import Datastore, PieceRow, RegionSet, Run

N_RUNS = 120
#: Runs committed before the indexer is stopped: enough to show work is kept, far from all of them.
COMMITTED_BEFORE_STOP = 3
CONFIG = """\
binning: {e_min: 0.1, e_max: 100, e_bins: 12, off_min: 0, off_max: 2.5, off_bins: 10}
exclusion: {gammacat: none, hawc: none, star_cat: none, exclude_regions: [[150.3, 20.2, 0.3]]}
"""
#: Columns that differ between two correct indexes of the same files.
VOLATILE_RUN_COLUMNS = {"id", "datastore_id", "indexed_at"}


@pytest.fixture(scope="module")
def fault_datastore(tmp_path_factory):
    """N_RUNS short simulated runs and a config that makes one piece per run."""
    folder = tmp_path_factory.mktemp("faults")
    pointings = [(150.0 + 0.25 * i, 20.0 + 0.15 * i) for i in range(N_RUNS)]
    DatastoreSimulator(
        truth=BackgroundTruth(norm=3e-6), pointings=pointings, ontime_s=300.0, with_irfs=False, seed=3
    ).run(folder / "datastore")
    (folder / "config.yaml").write_text(CONFIG)
    return folder / "datastore", folder / "config.yaml"


@pytest.fixture(scope="module")
def reference(fault_datastore, tmp_path_factory):
    """The database content after one uninterrupted index."""
    datastore, config = fault_datastore
    url = f"sqlite:///{tmp_path_factory.mktemp('reference') / 'reference.sqlite'}"
    catalogue = RunCatalogue.open(url)
    catalogue.index(datastore, config=load_config(config))
    catalogue.engine.dispose()
    return content(url)


def content(url):
    """Runs (by OBS_ID, without ids and timestamps) and the bytes of their pieces."""
    engine = sa.create_engine(resolve_url(url))
    try:
        with engine.connect() as connection:
            runs = {}
            for row in connection.execute(sa.select(Run.__table__)).mappings():  # typed: dates, JSON
                runs.setdefault(row["obs_id"], []).append(
                    {key: value for key, value in row.items() if key not in VOLATILE_RUN_COLUMNS}
                )
            pieces = {}
            table = PieceRow.__table__
            query = (
                sa.select(
                    Run.obs_id,
                    table.c.counts,
                    table.c.excluded_counts,
                    table.c.exposure_s,
                    table.c.ontime_s,
                    table.c.livetime_s,
                    table.c.n_kept,
                    table.c.n_excluded,
                    RegionSet.regions,
                    table.c.file_sha256,
                )
                .join(Run, Run.id == table.c.run_id)
                .outerjoin(RegionSet, RegionSet.id == table.c.region_set_id)
            )
            for obs_id, *values in connection.execute(query):
                pieces.setdefault(obs_id, []).append(tuple(values))
            n_datastores = connection.execute(sa.select(sa.func.count()).select_from(Datastore)).scalar()
    finally:
        engine.dispose()
    return {"runs": runs, "pieces": pieces, "datastores": n_datastores}


def committed_runs(engine):
    try:
        with engine.connect() as connection:
            return connection.execute(sa.text("SELECT count(*) FROM runs WHERE status = 'ok'")).scalar()
    except sa.exc.DBAPIError:  # the schema is not there yet
        return 0


def start_index(url, fault_datastore, jobs):
    datastore, config = fault_datastore
    environment = {key: value for key, value in os.environ.items() if key != "BKGDB_URL"}
    # A session of its own: the indexer leads a process group that holds all its descendants.
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bkgdb.cli.main",
            "--db",
            url,
            "index",
            str(datastore),
            "--config",
            str(config),
            "--jobs",
            str(jobs),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        start_new_session=True,
        preexec_fn=ctrl_c_as_in_a_terminal,
    )


def wait_for_commits(process, url, count, timeout_s=120.0):
    """Wait until ``count`` runs are committed; return how many there are."""
    engine = sa.create_engine(resolve_url(url))
    deadline = time.monotonic() + timeout_s
    try:
        while (done := committed_runs(engine)) < count:
            assert process.poll() is None, f"the indexer ended early: {process.communicate()}"
            assert time.monotonic() < deadline, "the indexer committed nothing in time"
            time.sleep(0.02)
        return done
    finally:
        engine.dispose()


def freeze_midway(process, url):
    """Wait for `COMMITTED_BEFORE_STOP` commits, then stop the indexer's process group (SIGSTOP) while
    runs are left: a signal sent now meets it at work, however fast it would have finished (one commit
    can hold 50 runs, and the last one came a few tenths of a second after the first). Resume it with
    `resume`; return the runs committed when it was stopped."""
    wait_for_commits(process, url, COMMITTED_BEFORE_STOP)
    os.killpg(process.pid, signal.SIGSTOP)
    engine = sa.create_engine(resolve_url(url))
    try:
        committed = committed_runs(engine)
    finally:
        engine.dispose()
    assert committed < N_RUNS, "the indexer had finished before it was stopped: give it more runs"
    return committed


def resume(process):
    os.killpg(process.pid, signal.SIGCONT)


@contextlib.contextmanager
def killed_on_exit(*processes):
    """The indexer processes, killed with their workers on leaving the block if they still run (a
    failed assertion; stopped ones too)."""
    try:
        yield processes
    finally:
        for process in processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.communicate()


def live_processes_in_group(pgid):
    """PIDs of processes (not zombies) in process group ``pgid``, from /proc/*/stat."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                text = stat.read()
        except OSError:
            continue
        state, _ppid, group = text[text.rfind(")") + 2 :].split()[:3]
        if int(group) == pgid and state != "Z":
            found.append(int(entry))
    return found


def children_of(pid):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    text = stat.read()
            except OSError:
                continue
            if int(text[text.rfind(")") + 2 :].split()[1]) == pid:
                found.append(int(entry))
    return found


def wait_until_gone(pgid, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while (alive := live_processes_in_group(pgid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


def finish_index(url, fault_datastore):
    datastore, config = fault_datastore
    catalogue = RunCatalogue.open(url)
    try:
        return catalogue.index(datastore, config=load_config(config))
    finally:
        catalogue.engine.dispose()


def test_sigkill_leaves_no_processes_and_a_rerun_completes_the_work(db_url, fault_datastore, reference):
    RunCatalogue.open(db_url).engine.dispose()  # the schema exists before the indexer starts
    with killed_on_exit(start_index(db_url, fault_datastore, jobs=2)) as (process,):
        committed = freeze_midway(process, db_url)
        workers = children_of(process.pid)
        assert len(workers) >= 2  # two workers (and multiprocessing's resource tracker)
        os.kill(process.pid, signal.SIGKILL)
        resume(process)  # the workers, which then see their parent gone
        process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert wait_until_gone(process.pid) == []  # workers and resource tracker exited with their parent

    engine = sa.create_engine(resolve_url(db_url))
    kept = committed_runs(engine)
    engine.dispose()
    assert committed <= kept < N_RUNS
    partial = content(db_url)
    assert set(partial["pieces"]) == set(partial["runs"])  # a run and its piece are committed together

    left = list(Path(tempfile.gettempdir()).glob(f"{WORKER_FOLDER_PREFIX}{process.pid}-*"))
    assert len(left) == 1  # its folder of catalogues for the workers: removed by the next index
    report = finish_index(db_url, fault_datastore)
    assert report.new == N_RUNS - kept and report.unchanged == kept and report.failed == 0
    assert content(db_url) == reference
    assert not left[0].exists()


def test_sigterm_stops_cleanly_keeps_the_work_and_a_rerun_completes_it(db_url, fault_datastore, reference):
    RunCatalogue.open(db_url).engine.dispose()
    with killed_on_exit(start_index(db_url, fault_datastore, jobs=2)) as (process,):
        committed = freeze_midway(process, db_url)
        os.kill(process.pid, signal.SIGTERM)
        resume(process)
        stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 128 + signal.SIGTERM
    assert stderr.strip().splitlines() == ["Interrupted by SIGTERM: stopped; work committed so far is kept."]
    assert stdout == ""
    assert wait_until_gone(process.pid) == []

    engine = sa.create_engine(resolve_url(db_url))
    kept = committed_runs(engine)
    engine.dispose()
    assert committed <= kept < N_RUNS
    report = finish_index(db_url, fault_datastore)
    assert report.new == N_RUNS - kept and report.unchanged == kept
    assert content(db_url) == reference


def test_two_indexers_at_once_both_succeed_without_duplicates(db_url, fault_datastore, reference):
    # Both start on an empty database: they also race to create the schema.
    with killed_on_exit(*[start_index(db_url, fault_datastore, jobs=1) for _ in range(2)]) as processes:
        outputs = [process.communicate(timeout=300) for process in processes]
    for process, (stdout, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr
        assert "Traceback" not in stderr and "Error" not in stderr
        assert ", 0 failed" in stdout
    found = content(db_url)
    assert all(len(rows) == 1 for rows in found["runs"].values())
    assert found == reference


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_ctrl_c_to_the_process_group_stops_cleanly(db_url, fault_datastore):
    # A terminal's Ctrl-C reaches every process of the group: the workers ignore it, the parent stops.
    RunCatalogue.open(db_url).engine.dispose()
    with killed_on_exit(start_index(db_url, fault_datastore, jobs=2)) as (process,):
        freeze_midway(process, db_url)
        os.killpg(process.pid, signal.SIGINT)
        resume(process)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 128 + signal.SIGINT
    assert stderr.strip().splitlines() == ["Interrupted by SIGINT: stopped; work committed so far is kept."]
    assert wait_until_gone(process.pid) == []


INTERRUPTED_FETCH = """\
import sys
import sqlalchemy as sa
import typer
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from bkgdb.cli.common import reports_errors
from bkgdb.parallel.processes import Terminated


class Base(DeclarativeBase):
    pass


class Row(Base):
    __tablename__ = "rows"
    id: Mapped[int] = mapped_column(primary_key=True)


engine = sa.create_engine(sys.argv[1])
Base.metadata.create_all(engine)
with Session(engine) as session, session.begin():
    session.add_all([Row(id=i) for i in range(4)])
engine.dispose()


@sa.event.listens_for(engine, "connect")
def terminated_on_the_third_row(dbapi_connection, record):
    def row(cursor, values):
        if values[0] == 2:  # SIGTERM arrives while SQLite hands out rows
            raise Terminated()
        return values

    dbapi_connection.row_factory = row


try:
    reports_errors(lambda: Session(engine).scalars(sa.select(Row)).all())()
except typer.Exit as stop:
    sys.exit(stop.exit_code)
"""


def test_an_interrupt_inside_a_sqlite_fetch_prints_one_line_not_sqlalchemys_cursor_error(tmp_path):
    # SQLAlchemy closes the connection, then logs "Error closing cursor" with a traceback as it unwinds.
    result = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_FETCH, f"sqlite:///{tmp_path / 'bkgdb.sqlite'}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 128 + signal.SIGTERM
    assert result.stderr.strip().splitlines() == ["Interrupted by SIGTERM: stopped; work committed so far is kept."]


SECOND_INTERRUPT_WHILE_EXITING = """\
import atexit
import os
import signal
import sys
import time

import typer
from bkgdb.cli import common
from bkgdb.cli.common import reports_errors

common.PROCESS_ENDS_WITH_COMMAND = True  # as the bkgdb program (bkgdb.cli.run) says


def second_interrupt():
    os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C, or `timeout` signalling the process group
    time.sleep(0.2)
    print("exit hooks went on", file=sys.stderr)


atexit.register(second_interrupt)  # before the command: it runs after the command's own exit hooks


def command():
    raise KeyboardInterrupt


try:
    reports_errors(command)()
except typer.Exit as stop:
    sys.exit(stop.exit_code)
"""


def test_a_command_run_in_process_leaves_the_hosts_interrupt_handlers(db_url, fault_datastore, monkeypatch):
    """A program that runs a command in-process and interrupts it gets its own Ctrl-C back at once."""
    import bkgdb.store.catalogue
    from bkgdb.cli.main import app

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bkgdb.store.catalogue.RunCatalogue, "index", interrupted)
    before = signal.getsignal(signal.SIGINT)
    result = CliRunner().invoke(app, ["--db", db_url, "index", str(fault_datastore)])
    assert result.exit_code == 128 + signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is before


def test_a_second_interrupt_while_the_process_exits_changes_nothing(tmp_path):
    # Before, Python printed "Exception ignored in atexit callback" with a KeyboardInterrupt
    # traceback and left the hook (seen with `timeout -s INT` during `validate`, inside
    # multiprocessing's exit hook): the exit hooks now run to their end.
    result = subprocess.run(
        [sys.executable, "-c", SECOND_INTERRUPT_WHILE_EXITING],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=ctrl_c_as_in_a_terminal,
    )
    assert result.returncode == 128 + signal.SIGINT
    assert result.stderr.strip().splitlines() == [
        "Interrupted by SIGINT: stopped; work committed so far is kept.",
        "exit hooks went on",
    ]
