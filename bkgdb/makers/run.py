"""The per-run work of an index: read the event file once, describe the run, make its pieces.

`process_run` runs in worker processes (``--jobs N``) and touches no database: it returns a
`RunResult` that `~bkgdb.store.catalogue.RunCatalogue.index` writes in the main process.
`process_runs` does the same for many runs in one process (``--jobs 1``, a Dask task), reading
the next run's file in a thread meanwhile.
"""

from __future__ import annotations

import hashlib
import logging
import math
import pickle
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from queue import SimpleQueue
from typing import Any

import numpy as np

from bkgdb.gadf.datastore import RunSource, finite_number
from bkgdb.gadf.events import (
    EventList,
    RunReadError,
    decompress_events,
    observatory_location,
    read_events,
    time_reference,
)
from bkgdb.gadf.runfacts import pointing_and_durations
from bkgdb.makers.exclusion import ExclusionFinder
from bkgdb.makers.fov import FovError, RunClock
from bkgdb.makers.piece import EncodedPiece, PieceMaker

__all__ = [
    "RunJob",
    "RunResult",
    "RunFile",
    "read_run_file",
    "process_run",
    "process_run_file",
    "process_runs",
    "exclusion_finder",
    "save_exclusion_finders",
    "load_exclusion_finders",
    "piece_maker",
    "ontime_problem",
    "obs_index_ontime_problem",
    "non_finite_problem",
    "INSTRUMENT_CHECKS_VERSION",
    "ONTIME_GTI_TOLERANCE",
    "RUN_CHECKS_VERSION",
]

log = logging.getLogger(__name__)

#: Largest relative difference between a run's ONTIME and the sum of its GTI intervals. Pieces
#: scale by ONTIME, gammapy by the GTI sum: a run beyond it would bias every model that uses it.
#: The public datastores agree to 2e-4 (MAGIC: ONTIME 1183.80 s, GTI 1184 s, rounded to 1 s).
ONTIME_GTI_TOLERANCE = 0.01

#: The version of the checks a run passes to be indexed ok, stored with each run
#: (``Run.checks_version``). A run checked by an older version is read again by the next index,
#: even if its file did not change. Raise it whenever a check is added or made stricter, or the
#: index learns a new fact of the EVENTS header.
#:
#: - 0: before checks had versions (the catalogue of schema 0007 and older).
#: - 1: files cut off after their events, non-finite event values, ONTIME not positive or off
#:   the GTI sum or off the obs-index's; the instrument (``TELESCOP``) is read.
#: - 2: the EVENTS header's OBS_ID, where it has one, is the index's.
RUN_CHECKS_VERSION = 2
#: The first `RUN_CHECKS_VERSION` that reads the instrument: runs checked by an older one have none.
INSTRUMENT_CHECKS_VERSION = 1


def _seconds(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _percent_off(seconds: float, reference: float) -> str | None:
    """How far ``seconds`` is from a positive ``reference``, in percent as messages show it, when
    beyond `ONTIME_GTI_TOLERANCE`; else None."""
    difference = abs(seconds - reference) / reference
    if difference <= ONTIME_GTI_TOLERANCE:
        return None
    percent = 100 * difference
    return f"{percent:.0f}" if percent >= 10 else f"{percent:.1f}"


def obs_id_problem(header_obs_id: Any, obs_id: int) -> str | None:
    """Why a run's EVENTS header names another run than the index does, or None when it does not.

    A file copied under another run's name would otherwise be catalogued as that run, its events
    summed twice into every background that selects both (the duplicate-copy step compares OBS_IDs).
    A header without OBS_ID, or with one that is not a whole number, is not a disagreement.
    """
    if isinstance(header_obs_id, bool | np.bool_):  # a logical card (T): no run number
        return None
    if isinstance(header_obs_id, int | np.integer):
        number = int(header_obs_id)  # exact, however large
    else:
        try:
            number = int(str(header_obs_id).strip())  # a string card, exact however large
        except ValueError:
            value = finite_number(header_obs_id)
            if value is None or not value.is_integer():
                return None
            number = int(value)
    if number == obs_id:
        return None
    return f"the EVENTS header's OBS_ID {number} differs from the index's {obs_id}: the file holds another run's events"


def obs_index_ontime_problem(row_ontime: Any, header_ontime: Any) -> str | None:
    """Why a run's obs-index ONTIME and its EVENTS header's disagree, or None when they agree.

    The catalogue describes a run by its obs-index row (``time_request`` sums those ontimes), while
    its pieces and gammapy's predicted counts scale with the header's: they must be one time.
    Either missing or not a number is not a disagreement (the header's is checked apart).
    """
    row_seconds, header_seconds = finite_number(row_ontime), finite_number(header_ontime)
    if row_seconds is None or header_seconds is None or header_seconds <= 0:
        return None
    off = _percent_off(row_seconds, header_seconds)
    if off is None:
        return None
    return (
        f"the obs-index ONTIME {_seconds(row_seconds)} s differs from the EVENTS header's "
        f"{_seconds(header_seconds)} s by {off} %"
    )


def ontime_problem(ontime: Any, gti_sum_s: float | None) -> str | None:
    """Why a run's ONTIME cannot scale its pieces, or None when it can.

    Parameters
    ----------
    ontime : float or None
        The ONTIME pieces would use (EVENTS header first); None when the run has none.
    gti_sum_s : float or None
        The sum of the run's GTI intervals (s), None without a GTI table.

    Returns
    -------
    reason : str or None
        ONTIME not finite and positive, or more than `ONTIME_GTI_TOLERANCE` off the GTI sum.
    """
    if ontime is None:
        return None
    seconds = finite_number(ontime)
    if seconds is None or seconds <= 0:
        return f"ONTIME {ontime} is not a positive number of seconds"
    if gti_sum_s is None:
        return None
    if not math.isfinite(gti_sum_s) or gti_sum_s <= 0:
        return f"the GTI intervals sum to {gti_sum_s} s, ONTIME is {_seconds(seconds)} s"
    off = _percent_off(seconds, gti_sum_s)
    if off is None:
        return None
    return f"ONTIME {_seconds(seconds)} s differs from the GTI sum {_seconds(gti_sum_s)} s by {off} %"


def non_finite_problem(columns: dict[str, Any]) -> str | None:
    """Why some events cannot go into pieces (a value that is NaN or infinite), or None.

    Such events fall in no bin while the run keeps its whole exposure: every model using the run
    would be low. ``columns`` are column name to values (None: not read).
    """
    for name, values in columns.items():
        if values is None or np.isfinite(values).all():
            continue
        bad = len(values) - int(np.count_nonzero(np.isfinite(values)))
        return f"{bad:,} of {len(values):,} events have a non-finite {name}"
    return None


@dataclass
class RunJob:
    """What a worker needs to bring one run up to date.

    ``specs`` are (binning, exclusion) pairs. When the file's hash equals ``known_sha256`` only
    ``missing_specs`` are computed; otherwise the run is described anew with all ``specs``.
    ``check_events`` reads and checks the event columns even when no piece is asked for: a run
    read again for newer checks keeps the pieces it has only if its events pass them.
    """

    source: RunSource
    #: The obs-index header (time reference, observatory location).
    meta: dict
    known_sha256: str | None = None
    specs: list = field(default_factory=list)
    missing_specs: list = field(default_factory=list)
    check_events: bool = False


@dataclass
class RunResult:
    obs_id: int
    sha256: str | None = None
    size: int | None = None
    mtime: float | None = None
    changed: bool = True
    #: The EVENTS header's values, when the file was read: the indexing process makes the run's
    #: catalogue facts from them (`~bkgdb.gadf.runfacts.read_run_facts`).
    header: Any = None
    #: (binning, exclusion, `~bkgdb.makers.piece.EncodedPiece`) triples: encoded here, in the worker.
    pieces: list = field(default_factory=list)
    error: str | None = None


#: The `ExclusionFinder` of each exclusion setting, made or received once per process.
_finders: dict[Any, ExclusionFinder] = {}


def exclusion_finder(exclusion: Any) -> ExclusionFinder:
    """One `ExclusionFinder` per exclusion setting and process."""
    finder = _finders.get(exclusion)
    if finder is None:
        finder = _finders[exclusion] = ExclusionFinder(exclusion)
    return finder


def save_exclusion_finders(exclusions: Any, path: Path) -> None:
    """Write this process's finders of the exclusion settings to ``path``, for `load_exclusion_finders`."""
    path.write_bytes(pickle.dumps([exclusion_finder(exclusion) for exclusion in exclusions]))


def load_exclusion_finders(path: str) -> None:
    """Use finders made in another process (catalogues read and parsed there) in this one.

    A spawned worker would otherwise read and parse every catalogue again before its first run,
    which costs more than many runs.

    Parameters
    ----------
    path : str
        A file written by `save_exclusion_finders`.
    """
    for finder in pickle.loads(Path(path).read_bytes()):
        _finders.setdefault(finder.settings, finder)


@cache
def piece_maker(binning: Any, exclusion: Any) -> PieceMaker:
    """One `PieceMaker` per (binning, exclusion) and process."""
    return PieceMaker(binning, exclusion, finder=exclusion_finder(exclusion))


def run_clock(events: EventList, source: RunSource, meta: dict) -> RunClock:
    """The times and observatory of a run, for FoV frames aligned with Alt/Az.

    Event TIMEs count from the EVENTS header's time reference (else the obs-index header's); the
    start is the header's TSTART (else the obs-index row's); the observatory comes from the
    EVENTS header, else the obs-index header.
    """
    header = events.header
    start = header.get("TSTART")
    if start is None:
        start = source.row.get("TSTART")
    return RunClock(
        reference=time_reference(header) or time_reference(meta),
        start_s=None if start is None else float(start),
        event_time_s=events.time_s,
        location=observatory_location(header, meta),
    )


@dataclass
class RunFile:
    """What `read_run_file` read of a run's event file, or why it could not read it."""

    size: int | None = None
    mtime: float | None = None
    sha256: str | None = None
    #: The FITS bytes (decompressed), when the run needs them: None when the file is unchanged
    #: and no pieces are missing, or could not be read.
    content: bytes | None = None
    #: Why the file could not be read (missing, unreadable, a damaged gzip stream): the run's error.
    error: str | None = None


def read_run_file(job: RunJob) -> RunFile:
    """Stat, read, hash and (if gzip, and the run needs it) decompress one run's event file.

    The part of `process_run` that mostly waits for the disk and zlib, which release the GIL:
    `process_runs` does it in a thread for the next run while this one is parsed.
    """
    source = job.source
    path = source.events_path
    run_file = RunFile()
    try:
        if path is None:
            raise RunReadError(source.missing_events_reason)
        try:
            stat = path.stat()
            content = path.read_bytes()
        except FileNotFoundError:
            raise RunReadError(f"event file not found: {path}") from None
        except OSError as exc:
            raise RunReadError(f"cannot read {path}: {exc}") from None
        run_file.size, run_file.mtime = stat.st_size, stat.st_mtime
        run_file.sha256 = hashlib.sha256(content).hexdigest()
        if run_file.sha256 != job.known_sha256 or job.missing_specs:
            run_file.content = decompress_events(source, content)
    except RunReadError as exc:
        run_file.error = str(exc)
    return run_file


def process_run_file(job: RunJob, run_file: RunFile) -> RunResult:
    """A run's header and pieces from its file as `read_run_file` read it, or why it has none."""
    source = job.source
    result = RunResult(source.obs_id, sha256=run_file.sha256, size=run_file.size, mtime=run_file.mtime)
    if run_file.sha256 is not None:
        result.changed = run_file.sha256 != job.known_sha256
    specs = job.specs if result.changed else job.missing_specs
    if run_file.error is not None:
        result.error = run_file.error
        return result
    if not result.changed and not specs:
        return result
    assert run_file.content is not None  # read_run_file keeps it for a changed run or missing specs
    try:
        events = read_events(source, run_file.content, with_events=bool(specs) or job.check_events)
    except RunReadError as exc:
        result.error = str(exc)
        return result

    result.header = header = events.header
    # Pieces take the geometry and times of the event file itself, at full precision, as gammapy
    # does (obs-index columns are often float32); the catalogue row describes the run for selection.
    keys = ("RA_PNT", "DEC_PNT", "ONTIME", "LIVETIME")
    found = pointing_and_durations(source, job.meta, header)
    values = {key: header.get(key, value) for key, value in zip(keys, found, strict=True)}
    if values["ONTIME"] is None and header.get("ONTIME", "") is None:  # NaN, inf or unparsable there
        result.error = "ONTIME in the EVENTS header is not a finite number"
        return result
    result.error = (
        obs_id_problem(header.get("OBS_ID"), source.obs_id)
        or ontime_problem(values["ONTIME"], events.gti_sum_s)
        or obs_index_ontime_problem(source.row.get("ONTIME"), header.get("ONTIME"))
    )
    if result.error is not None:
        return result
    if specs and (values["RA_PNT"] is None or values["DEC_PNT"] is None or not values["ONTIME"]):
        result.error = "no pointing or ontime: cannot make background pieces"
        return result
    ra, dec, energy = events.ra_deg, events.dec_deg, events.energy_tev
    if ra is None or dec is None or energy is None:  # columns not read: no pieces asked for
        return result
    livetime = None if values["LIVETIME"] is None else float(values["LIVETIME"])
    # Times and location matter only to FoV frames aligned with Alt/Az.
    altaz = any(piece_maker(binning, exclusion).geometry.alignment == "ALTAZ" for binning, exclusion in specs)
    clock = run_clock(events, source, job.meta) if altaz else None
    # On the columns already read (a check per column, counted only when it fails).
    result.error = non_finite_problem(
        {"RA": ra, "DEC": dec, "ENERGY": energy, "TIME": None if clock is None else clock.event_time_s}
    )
    if result.error is not None:
        return result
    for binning, exclusion in specs:
        try:
            piece = piece_maker(binning, exclusion).run(
                ra,
                dec,
                energy,
                float(values["RA_PNT"]),
                float(values["DEC_PNT"]),
                float(values["ONTIME"]),
                livetime,
                clock=clock,
            )
        except FovError as exc:
            # The run cannot have every piece asked for: it fails as a whole, saying why.
            result.pieces, result.error = [], f"cannot make 3D pieces: {exc}"
            return result
        result.pieces.append((binning, exclusion, EncodedPiece.of(piece)))
    return result


def process_run(job: RunJob) -> RunResult:
    """Read one run's file once; return its header and pieces, or why it could not be read."""
    return process_run_file(job, read_run_file(job))


def _read_ahead(
    todo: SimpleQueue[RunJob | None], done: SimpleQueue[RunFile | BaseException], stop: threading.Event
) -> None:
    """The reader thread of `process_runs`: `read_run_file` of each job from ``todo`` into ``done``.

    It ends at None, or at the next job once ``stop`` is set (the reads not started are cancelled).
    """
    while (job := todo.get()) is not None and not stop.is_set():
        try:
            done.put(read_run_file(job))
        except BaseException as exc:  # raised in the caller's thread, when its run is reached
            done.put(exc)


def _next_read(done: SimpleQueue[RunFile | BaseException]) -> RunFile:
    """The next file the reader thread of `process_runs` read; raise what reading it raised."""
    run_file = done.get()
    if isinstance(run_file, BaseException):
        raise run_file
    return run_file


def process_runs(jobs: Iterable[RunJob], ahead: int = 1) -> Iterator[RunResult]:
    """`process_run` of each job, in order, reading the next files while a run is processed.

    One thread reads (`read_run_file`) up to ``ahead`` files beyond the run being processed
    (and the caller's work with its result), so that reading and decompressing, which release
    the GIL, overlap with parsing, pieces and database writes, which hold it. At most
    ``ahead + 1`` files are in memory. An exception other than a read error raises when its run
    is reached, as with `process_run`. Closing the generator early (or an exception, Ctrl-C)
    cancels the reads not started and waits for the one under way (a single file).

    Jobs and files pass between the threads through `queue.SimpleQueue`, written in C, and the
    reader takes no lock that this thread takes: a KeyboardInterrupt (Ctrl-C, or SIGTERM's
    `~bkgdb.parallel.processes.Terminated`) raised here at any bytecode once the reader runs cannot
    make the wait for it endless. With a ``ThreadPoolExecutor`` it could: a signal handled right after
    ``Future.result`` or ``submit`` took a lock in ``threading.Condition.__enter__`` (Python code),
    before the ``with`` block began, left it taken, and the reader waited for it forever.

    Parameters
    ----------
    jobs : iterable of `RunJob`
        The runs, in the order of the results.
    ahead : int, optional
        Files read ahead. Default is 1.
    """
    todo: SimpleQueue[RunJob | None] = SimpleQueue()
    done: SimpleQueue[RunFile | BaseException] = SimpleQueue()
    stop = threading.Event()
    # A daemon, so that a reader left waiting cannot keep the process alive: one whose start a
    # signal interrupts (`Thread.start` waits on an Event, whose lock is taken in Python).
    reader = threading.Thread(target=_read_ahead, args=(todo, done, stop), name="bkgdb-read-ahead", daemon=True)
    reading: deque[RunJob] = deque()
    try:
        reader.start()
        for job in jobs:
            todo.put(job)
            reading.append(job)
            if len(reading) > max(0, ahead):
                yield process_run_file(reading.popleft(), _next_read(done))
        while reading:
            yield process_run_file(reading.popleft(), _next_read(done))
    finally:
        # First what alone ends the reader (after the reads queued), then cancel those reads.
        todo.put(None)
        stop.set()
        if reader.is_alive():  # not if its start was interrupted
            reader.join()
