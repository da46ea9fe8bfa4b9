"""Reading ahead (`process_runs`) gives what `process_run` gives run by run, in order, and stops cleanly.

The next run's file is read (and decompressed) in a thread while a run is processed: results,
read errors and the catalogue must be those of reading each file when its run comes; a bug
must raise at its run; an early stop (closing the generator, an exception, Ctrl-C) must leave no
thread reading.
"""

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from conftest import catalogue_content, ctrl_c_as_in_a_terminal, index_into_sqlite

from bkgdb.config import Binning, ExclusionSettings, load_config
from bkgdb.gadf.datastore import DL3Datastore, RunSource
from bkgdb.gadf.runfacts import read_run_facts
from bkgdb.makers import run as run_module
from bkgdb.makers.run import (
    RunFile,
    RunJob,
    RunResult,
    process_run,
    process_run_file,
    process_runs,
    read_run_file,
)
from bkgdb.store import indexing
from bkgdb.store.indexing import piece_values, run_jobs

REPO = Path(__file__).resolve().parent.parent
READER_PREFIX = "bkgdb-read-ahead"
BINNING = Binning(e_min=0.1, e_max=100, e_bins=6, off_min=0, off_max=2.5, off_bins=5)
NO_CATALOGUES = ExclusionSettings(gammacat=None, hawc=None, star_cat=None)


def reader_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith(READER_PREFIX)]


def outcome(result: RunResult, source: RunSource, meta: dict) -> tuple:
    """Everything a result tells the catalogue, comparable with ``==`` (pieces as the bytes stored)."""
    pieces = [
        (binning, exclusion, piece_values(piece, None, None, None, result.sha256))
        for binning, exclusion, piece in result.pieces
    ]
    facts = repr(read_run_facts(source, meta, result.header))
    return (result.obs_id, result.sha256, result.size, result.mtime, result.changed, result.error, facts, pieces)


def assert_same_as_one_by_one(jobs: list[RunJob], meta: dict, ahead: int = 1) -> list[RunResult]:
    expected = [outcome(process_run(job), job.source, meta) for job in jobs]
    results = list(process_runs(jobs, ahead=ahead))
    assert [outcome(result, job.source, meta) for result, job in zip(results, jobs, strict=True)] == expected
    assert reader_threads() == []
    return results


def one_by_one(jobs: list[RunJob], ahead: int = 1) -> Iterator[RunResult]:
    """`process_runs` without reading ahead: the index as it was before."""
    for job in jobs:
        yield process_run(job)


@pytest.fixture
def damaged_datastore(datastore_copy: Path) -> tuple[list[RunJob], dict]:
    """Jobs of the 5 simulated runs: one file missing, one truncated gzip, one not FITS, one a folder;
    and a run whose events the hdu-index does not name."""
    store = DL3Datastore(datastore_copy)
    sources = store.runs()
    paths = [source.events_path for source in sources if source.events_path is not None]
    assert len(paths) == 5
    paths[1].unlink()
    paths[2].write_bytes(paths[2].read_bytes()[: paths[2].stat().st_size // 2])
    paths[3].write_bytes(b"not a FITS file" * 300)
    paths[4].unlink()
    paths[4].mkdir()
    jobs = [RunJob(source, store.meta, specs=[(BINNING, NO_CATALOGUES)]) for source in sources]
    jobs.append(RunJob(RunSource(99, sources[0].row, None, None, "no EVENTS row in the hdu-index"), store.meta))
    return jobs, store.meta


def test_read_errors_are_per_run_results_as_one_by_one(damaged_datastore: tuple[list[RunJob], dict]) -> None:
    jobs, meta = damaged_datastore
    results = assert_same_as_one_by_one(jobs, meta)
    paths = [job.source.events_path for job in jobs]
    assert results[0].error is None and len(results[0].pieces) == 1
    assert [result.error.split(":")[0] if result.error else None for result in results[1:]] == [
        "event file not found",
        f"cannot read {paths[2].name}",
        f"cannot read {paths[3].name}",
        f"cannot read {paths[4]}",
        "no EVENTS row in the hdu-index",
    ]
    assert "EOFError" in str(results[2].error)
    # A damaged gzip stream is found after hashing: the run records the file it failed on.
    assert results[2].sha256 is not None and results[2].size is not None


def test_unchanged_runs_and_missing_pieces_as_one_by_one(simulated_datastore: Path) -> None:
    store = DL3Datastore(simulated_datastore)
    sources = store.runs()
    known = [process_run(RunJob(source, store.meta)).sha256 for source in sources]
    spec = (BINNING, NO_CATALOGUES)
    jobs = [
        RunJob(sources[0], store.meta, known_sha256=known[0], specs=[spec]),  # unchanged, nothing missing
        RunJob(sources[1], store.meta, known_sha256=known[1], specs=[spec], missing_specs=[spec]),
        RunJob(sources[2], store.meta, known_sha256="0" * 64, specs=[spec]),  # changed
        RunJob(sources[3], store.meta),  # described, no pieces asked for
    ]
    results = assert_same_as_one_by_one(jobs, store.meta)
    assert [(result.changed, len(result.pieces)) for result in results] == [
        (False, 0),
        (False, 1),
        (True, 1),
        (True, 0),
    ]


def test_a_run_file_is_decompressed_only_when_the_run_needs_it(simulated_datastore: Path) -> None:
    store = DL3Datastore(simulated_datastore)
    source = store.runs()[0]
    assert source.events_path is not None and source.events_path.suffix == ".gz"
    read = read_run_file(RunJob(source, store.meta))
    assert read.content is not None and read.content.startswith(b"SIMPLE  =")
    assert read_run_file(RunJob(source, store.meta, known_sha256=read.sha256)) == RunFile(
        read.size, read.mtime, read.sha256
    )


@pytest.mark.parametrize("ahead", [0, 1, 3])
def test_results_come_in_the_order_of_the_jobs(simulated_datastore: Path, ahead: int) -> None:
    store = DL3Datastore(simulated_datastore)
    jobs = [RunJob(source, store.meta) for source in reversed(store.runs())] * 2
    results = assert_same_as_one_by_one(jobs, store.meta, ahead=ahead)
    assert [result.obs_id for result in results] == [job.source.obs_id for job in jobs]


def test_files_are_read_in_a_thread_at_most_ahead_of_the_run_processed(
    simulated_datastore: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = DL3Datastore(simulated_datastore)
    jobs = [RunJob(source, store.meta) for source in store.runs()] * 3
    readers: list[str] = []

    def recorded_read(job: RunJob) -> RunFile:
        readers.append(threading.current_thread().name)
        return read_run_file(job)

    monkeypatch.setattr(run_module, "read_run_file", recorded_read)
    ahead = 2
    for number, _ in enumerate(process_runs(jobs, ahead=ahead), start=1):
        time.sleep(0.02)  # a slow caller: the reader must wait, not read everything
        assert len(readers) <= number + ahead
    assert len(readers) == len(jobs)
    assert all(name.startswith(READER_PREFIX) for name in readers)
    assert reader_threads() == []


def test_closing_early_leaves_no_thread(simulated_datastore: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = DL3Datastore(simulated_datastore)
    jobs = [RunJob(source, store.meta) for source in store.runs()] * 4
    started: list[int] = []

    def slow_read(job: RunJob) -> RunFile:
        started.append(job.source.obs_id)
        time.sleep(0.05)
        return read_run_file(job)

    monkeypatch.setattr(run_module, "read_run_file", slow_read)
    results = process_runs(jobs, ahead=2)
    first = next(results)
    assert first.obs_id == jobs[0].source.obs_id and reader_threads()
    results.close()
    assert reader_threads() == []
    assert len(started) <= 3  # the run processed and two ahead

    # Leaving `run_jobs` (as the indexer does on Ctrl-C or SIGTERM) closes its reader too.
    with closing(run_jobs(jobs, 1)) as indexed:
        next(indexed)
    assert reader_threads() == []


def test_an_exception_in_a_run_propagates_at_that_run(
    simulated_datastore: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = DL3Datastore(simulated_datastore)
    jobs = [RunJob(source, store.meta) for source in store.runs()]
    broken = jobs[2].source.obs_id

    def failing_process(job: RunJob, run_file: RunFile) -> RunResult:
        if job.source.obs_id == broken:
            raise ZeroDivisionError("a bug")
        return process_run_file(job, run_file)

    monkeypatch.setattr(run_module, "process_run_file", failing_process)
    got = []
    with pytest.raises(ZeroDivisionError, match="a bug"):
        for result in process_runs(jobs):
            got.append(result.obs_id)
    assert got == [job.source.obs_id for job in jobs[:2]]
    assert reader_threads() == []


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_an_exception_while_reading_propagates_at_its_run(
    simulated_datastore: Path, monkeypatch: pytest.MonkeyPatch, error: type[BaseException]
) -> None:
    store = DL3Datastore(simulated_datastore)
    jobs = [RunJob(source, store.meta) for source in store.runs()]
    broken = jobs[3].source.obs_id

    def failing_read(job: RunJob) -> RunFile:
        if job.source.obs_id == broken:
            raise error("reading went wrong")
        return read_run_file(job)

    monkeypatch.setattr(run_module, "read_run_file", failing_read)
    got = []
    with pytest.raises(error, match="reading went wrong"):
        for result in run_jobs(jobs, 1):
            got.append(result.obs_id)
    assert got == [job.source.obs_id for job in jobs[:3]]
    assert reader_threads() == []


#: Consumes `run_jobs` in one process as the indexer does, printing a line per result, until a signal.
SIGNALLED_READER = """
import sys, threading, time
from contextlib import closing
from bkgdb.gadf.datastore import DL3Datastore
from bkgdb.makers import run
from bkgdb.makers.run import RunJob
from bkgdb.parallel.processes import sigterm_raises_interrupt
from bkgdb.store.indexing import run_jobs

datastore, phase = sys.argv[1:]
read_run_file = run.read_run_file
def slow_read(job):
    time.sleep(0.3)
    return read_run_file(job)
if phase == "reading":  # the signal comes while the main thread waits for a file
    run.read_run_file = slow_read
store = DL3Datastore(datastore)
jobs = [RunJob(source, store.meta) for source in store.runs()] * 50
try:
    with sigterm_raises_interrupt(), closing(run_jobs(jobs, 1)) as results:
        for result in results:
            print("result", flush=True)
            if phase == "writing":  # the signal comes while the caller handles a result
                time.sleep(0.3)
except KeyboardInterrupt as exc:
    readers = [thread.name for thread in threading.enumerate() if thread.name.startswith("bkgdb-read-ahead")]
    print(type(exc).__name__, readers, flush=True)
"""


@pytest.mark.parametrize("phase", ["reading", "writing"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_reading_ahead_at_once(simulated_datastore: Path, signum: int, phase: str) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", SIGNALLED_READER, str(simulated_datastore), phase],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=ctrl_c_as_in_a_terminal,
    )
    try:
        assert process.stdout is not None and process.stdout.readline() == "result\n"
        os.kill(process.pid, signum)
        signalled = time.monotonic()
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    name = "Terminated" if signum == signal.SIGTERM else "KeyboardInterrupt"
    assert stdout.splitlines()[-1] == f"{name} []"
    assert time.monotonic() - signalled < 2.0  # at most the one read under way is waited for


#: Raises KeyboardInterrupt before each bytecode in turn of the main thread's hand-off of a run
#: (every point where a signal may be handled, and more), in a thread given 2 s; prints the
#: bytecodes after which the generator hung, left a reader or raised something else.
INTERRUPTED_HAND_OFF = """
import os, sys, threading, time
from bkgdb.makers import run
from bkgdb.makers.run import RunFile, RunResult

def slow_read(job):
    time.sleep(0.002)  # the main thread waits for the file, as when Ctrl-C came
    return RunFile()
run.read_run_file = slow_read
run.process_run_file = lambda job, run_file: RunResult(job)

def second_run(interrupt_at):
    executed = 0
    def trace(frame, event, arg):
        nonlocal executed
        frame.f_trace_opcodes = True
        if event == "opcode":
            executed += 1
            if executed == interrupt_at:
                raise KeyboardInterrupt
        return trace
    results = run.process_runs(range(4))
    next(results)
    sys.settrace(trace)
    try:
        next(results)
    except KeyboardInterrupt:
        pass
    finally:
        sys.settrace(None)
        results.close()
    return executed

bytecodes = second_run(None)
failed = []
for interrupt_at in range(1, bytecodes + 1):
    errors = []
    def attempt():
        try:
            second_run(interrupt_at)
        except BaseException as exc:
            errors.append(exc)
    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(2)
    if thread.is_alive():
        print(bytecodes, failed + [(interrupt_at, "hung")], flush=True)
        os._exit(0)  # not waiting for threads that wait forever
    if any(thread.name.startswith("bkgdb-read-ahead") for thread in threading.enumerate()):
        failed.append((interrupt_at, "reader left"))
    failed += [(interrupt_at, repr(error)) for error in errors]
print(bytecodes, failed, flush=True)
"""


def test_an_interrupt_at_any_bytecode_of_a_hand_off_stops_reading_ahead() -> None:
    # A Ctrl-C handled just after a lock was taken in Python (`threading.Condition.__enter__`, in
    # `Future.result` or `ThreadPoolExecutor.submit`) kept it taken: the reader waited for it forever.
    process = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_HAND_OFF], capture_output=True, text=True, timeout=30, check=True
    )
    bytecodes, failed = process.stdout.split(" ", 1)
    assert int(bytecodes) > 20 and failed.strip() == "[]", process.stdout + process.stderr


def index_content(tmp_path: Path, name: str, datastore: Path, config: Any) -> tuple[dict, Any]:
    url, report = index_into_sqlite(tmp_path / name, datastore, config)
    return catalogue_content(url), report


def test_hess_dr1_results_and_catalogue_equal_those_read_one_by_one(
    hess_dr1: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(REPO / "configs" / "hess-dr1.yaml")
    store = DL3Datastore(hess_dr1)
    specs = [(binning, config.exclusion) for binning in config.binnings]
    jobs = [RunJob(source, store.meta, specs=specs) for source in store.runs()]
    results = assert_same_as_one_by_one(jobs, store.meta)
    assert len(results) == 105 and all(result.error is None and len(result.pieces) == 2 for result in results)

    read_ahead, report = index_content(tmp_path, "read-ahead.sqlite", hess_dr1, config)
    # Where `run_jobs` finds it: the index it makes reads each file when its run comes.
    calls: list[int] = []

    def counted(jobs: list[RunJob], ahead: int = 1) -> Iterator[RunResult]:
        calls.append(len(jobs))
        return one_by_one(jobs, ahead)

    monkeypatch.setattr(indexing, "process_runs", counted)
    expected, expected_report = index_content(tmp_path, "one-by-one.sqlite", hess_dr1, config)
    assert calls == [105]
    assert (
        (report.new, report.failed, report.pieces) == (expected_report.new, 0, expected_report.pieces) == (105, 0, 210)
    )
    assert read_ahead == expected


def test_dask_tasks_of_batched_items_and_a_killer_among_them(
    damaged_datastore: tuple[list[RunJob], dict],
) -> None:
    distributed = pytest.importorskip("distributed")
    from bkgdb.parallel.cluster import DaskExecutor
    from bkgdb.parallel.processes import WorkerError

    jobs, meta = damaged_datastore
    sources = {job.source.obs_id: job.source for job in jobs}
    expected = sorted((outcome(process_run(job), job.source, meta) for job in jobs), key=repr)
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
        ) as cluster,
        DaskExecutor(cluster.scheduler_address, task_size=4) as executor,
    ):
        executor.client.wait_for_workers(2, timeout=60)
        # Read errors come back as results from the workers, as locally.
        results = executor.imap_unordered(process_runs, jobs, batched=True)
        assert sorted((outcome(result, sources[result.obs_id], meta) for result in results), key=repr) == expected

        # Item 13 kills every worker that runs it: run again alone, every other item comes back.
        killer = lambda items: [os._exit(3) if n == 13 else -n for n in items]  # noqa: E731 - sent by value
        values = []
        with pytest.raises(WorkerError, match=r"^item 13 killed Dask workers repeatedly"):
            for value in executor.imap_unordered(killer, list(range(40)), batched=True):
                values.append(value)
        assert sorted(values) == sorted(-n for n in range(40) if n != 13)
