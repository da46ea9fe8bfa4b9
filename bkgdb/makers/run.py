"""The per-run work of an index: read the event file once, describe the run, make its pieces.

`process_run` runs in worker processes (``--jobs N``) and touches no database: it returns a
`RunResult` that `~bkgdb.store.catalogue.RunCatalogue.index` writes in the main process.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from bkgdb.gadf.datastore import RunSource
from bkgdb.gadf.events import EventList, RunReadError, observatory_location, read_events, time_reference
from bkgdb.gadf.runfacts import RunFacts, read_run_facts
from bkgdb.makers.exclusion import ExclusionFinder
from bkgdb.makers.fov import FovError, RunClock
from bkgdb.makers.piece import PieceMaker

__all__ = [
    "RunJob",
    "RunResult",
    "process_run",
    "run_facts",
    "exclusion_finder",
    "save_exclusion_finders",
    "load_exclusion_finders",
    "piece_maker",
]

log = logging.getLogger(__name__)


@dataclass
class RunJob:
    """What a worker needs to bring one run up to date.

    ``specs`` are (binning, exclusion) pairs. When the file's hash equals ``known_sha256`` only
    ``missing_specs`` are computed; otherwise the run is described anew with all ``specs``.
    """

    source: RunSource
    #: The obs-index header (time reference, observatory location).
    meta: dict
    known_sha256: str | None = None
    specs: list = field(default_factory=list)
    missing_specs: list = field(default_factory=list)


@dataclass
class RunResult:
    obs_id: int
    sha256: str | None = None
    size: int | None = None
    mtime: float | None = None
    changed: bool = True
    #: What the catalogue records of the run; None when the indexing process makes them from
    #: ``header`` (`run_facts`).
    facts: RunFacts | None = None
    #: The EVENTS header's values, when the file was read.
    header: Any = None
    #: (binning, exclusion, BackgroundPiece) triples.
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


def run_facts(result: RunResult, source: RunSource, meta: dict) -> RunFacts:
    """What the catalogue records of a run `process_run` has read (or failed to read)."""
    return result.facts or read_run_facts(source, meta, result.header)


def process_run(job: RunJob) -> RunResult:
    """Read one run's file once; return its header and pieces, or why it could not be read."""
    source = job.source
    result = RunResult(source.obs_id)
    path = source.events_path
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
        result.size, result.mtime = stat.st_size, stat.st_mtime
        result.sha256 = hashlib.sha256(content).hexdigest()
        result.changed = result.sha256 != job.known_sha256
        specs = job.specs if result.changed else job.missing_specs
        if not result.changed and not specs:
            return result
        events = read_events(source, content, with_events=bool(specs))
    except RunReadError as exc:
        result.error = str(exc)
        return result

    # The facts' dates are made by the indexing process (`run_facts`): the time scales they need
    # cost a worker process more to load than a run.
    result.header = header = events.header
    facts = read_run_facts(source, job.meta, header, dates=False)
    # Pieces take the geometry and times of the event file itself, at full precision, as gammapy
    # does (obs-index columns are often float32); the catalogue row describes the run for selection.
    values = {
        key: header.get(key, value)
        for key, value in (
            ("RA_PNT", facts.ra_deg),
            ("DEC_PNT", facts.dec_deg),
            ("ONTIME", facts.ontime_s),
            ("LIVETIME", facts.livetime_s),
        )
    }
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
        result.pieces.append((binning, exclusion, piece))
    return result
