"""Reading a GADF DL3 datastore: its index tables and, per run, the facts the catalogue keeps.

A datastore is a folder with ``obs-index.fits[.gz]`` and ``hdu-index.fits[.gz]``, the layout
`gammapy.data.DataStore.from_dir` opens. This module reads it with astropy only, so a broken
run file is reported for that run instead of stopping the whole index.

The index tables are read as gammapy reads them, so a run's event file is the one
``DataStore.from_dir(folder).obs(obs_id)`` opens:

- files are joined as ``folder / FILE_DIR / FILE_NAME``, ``folder`` being the folder given (the
  hdu-index's own ``BASE_DIR`` keyword is ignored, as gammapy overwrites it);
- a masked (empty) ``FILE_DIR`` means the folder itself;
- ``HDU_TYPE``, ``FILE_DIR``, ``FILE_NAME`` and ``HDU_NAME`` are stripped of blanks, and
  ``HDU_TYPE`` is compared with ``events`` as is: gammapy finds no ``EVENTS`` (upper case) row;
- when several events rows name one run, the first one counts.

An index whose OBS_IDs are not integers in 0 ... 2**63 - 1, or whose obs-index lists an OBS_ID
twice, is refused as a whole (`DatastoreError`): the OBS_ID is the run's key, so such a run
could not even be recorded as failed. A run whose events row lacks ``FILE_NAME`` or ``HDU_NAME``
is indexed as failed with that reason, and the other runs are indexed.
"""

import gzip
import hashlib
import io
import json
import logging
import math
import os
import warnings
import zlib
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from bkgdb.errors import DatastoreError

__all__ = [
    "DL3Datastore", "RunSource", "RunFacts", "RunReadError", "EventList", "read_events", "read_run_facts",
    "read_index_table", "checked_obs_ids", "one_line", "NO_EVENTS_HDU",
]

log = logging.getLogger(__name__)

OBS_INDEX_NAMES = ("obs-index.fits.gz", "obs-index.fits")
HDU_INDEX_NAMES = ("hdu-index.fits.gz", "hdu-index.fits")
#: Columns gammapy needs in an hdu-index to locate an HDU.
HDU_INDEX_COLUMNS = ("OBS_ID", "HDU_TYPE", "HDU_CLASS", "FILE_DIR", "FILE_NAME", "HDU_NAME")
#: OBS_IDs are stored as 64-bit signed integers.
OBS_ID_LIMIT = 2**63
#: Why a run without an events row in the hdu-index cannot be read.
NO_EVENTS_HDU = "the hdu-index lists no events HDU for this run"
#: Longest error reason kept from a library's message.
REASON_LENGTH = 200


class RunReadError(Exception):
    """A run's event file cannot be read; the message is the reason stored in the catalogue."""


def json_safe(value):
    """Convert a FITS table or header value into something JSON (and JSONB) stores exactly."""
    if value is np.ma.masked or (isinstance(value, np.ma.MaskedArray) and value.mask.all()):
        return None
    if isinstance(value, np.ndarray):
        return [json_safe(item) for item in value.tolist()]
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode("ascii", errors="replace").strip()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return str(value)


def one_line(text, limit=REASON_LENGTH):
    """The first non-empty line of a message, at most ``limit`` characters."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _find_index_file(folder, names, what):
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise DatastoreError(f"{folder} has no {what} ({' or '.join(names)}): not a DL3 datastore")


def read_index_table(path: Path, what: str) -> Table:
    """Read the first table of an index file as gammapy does, or say in one line what is wrong.

    Parameters
    ----------
    path : `~pathlib.Path`
        The ``obs-index`` or ``hdu-index`` file, gzip-compressed or not.
    what : str
        Its name in messages (``"obs-index"``, ``"hdu-index"``).

    Returns
    -------
    table : `~astropy.table.Table`
        Masked where the file has empty (null) cells.

    Raises
    ------
    DatastoreError
        The file cannot be read, is truncated or holds no FITS table.
    """
    def refuse(reason):
        return DatastoreError(f"cannot read the {what} {path}: {one_line(reason)}")

    try:
        content = path.read_bytes()
    except OSError as exc:
        raise refuse(exc.strerror or exc) from None
    if content[:2] == b"\x1f\x8b":
        try:
            content = gzip.decompress(content)
        except (EOFError, OSError, zlib.error) as exc:
            raise refuse(f"damaged or truncated gzip data ({exc})") from None
    if not content:
        raise refuse("the file is empty")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # format="fits" as gammapy: astropy's format guessing would answer garbage with a table of
        # every format it knows.
        try:
            table = Table.read(io.BytesIO(content), format="fits")
        except Exception as exc:  # astropy raises OSError, ValueError, TypeError... for bad FITS
            error = exc
        else:
            error = None
    truncated = [str(w.message) for w in caught if "truncated" in str(w.message)]
    for warning in caught:
        log.debug("%s %s: %s", what, path, one_line(warning.message))
    if truncated:
        raise refuse(truncated[0])
    if error is not None:
        reason = one_line(error)
        if reason == "No table found":
            reason = "no table HDU in the file (damaged or truncated?)"
        raise refuse(f"{type(error).__name__}: {reason}")
    return table


def checked_obs_ids(table: Table, what: str, path: Path, unique: bool) -> np.ndarray:
    """The OBS_ID column as 64-bit integers, or a `DatastoreError` naming the first bad value.

    OBS_IDs must be whole numbers in 0 ... 2**63 - 1 (a float column of whole numbers is
    accepted); with ``unique``, each may appear once.
    """
    column = table["OBS_ID"]
    prefix = f"{what} {path}:"
    missing = np.flatnonzero(np.ma.getmaskarray(column))
    if len(missing):
        raise DatastoreError(f"{prefix} row {missing[0] + 1} has no OBS_ID")
    values = np.asarray(column)
    kind = values.dtype.kind
    if kind not in "iuf":
        sample = json_safe(values[0]) if len(values) else ""
        held = {"S": "text", "U": "text", "b": "boolean"}.get(kind, str(values.dtype))
        raise DatastoreError(f"{prefix} OBS_ID must be integers, the column holds {held} values "
                             f"(row 1: {sample!r})")
    if kind == "f":
        bad = np.flatnonzero(~np.isfinite(values) | (values != np.round(values)))
        if len(bad):
            raise DatastoreError(f"{prefix} OBS_ID {float(values[bad[0]])!r} in row {bad[0] + 1} is not an integer")
    # Compared as Python integers: uint64 values above 2**63 and int64 values below 0 both fail.
    out_of_range = [row for row, value in enumerate(values.tolist())
                    if not 0 <= int(value) < OBS_ID_LIMIT]
    if out_of_range:
        row = out_of_range[0]
        raise DatastoreError(f"{prefix} OBS_ID {int(values[row])} in row {row + 1} is outside 0 ... 2**63 - 1 "
                             "(OBS_IDs are stored as 64-bit signed integers)")
    obs_ids = values.astype(np.int64)
    if unique and len(obs_ids):
        found, counts = np.unique(obs_ids, return_counts=True)
        if (counts > 1).any():
            duplicate = found[counts > 1][0]
            rows = np.flatnonzero(obs_ids == duplicate) + 1
            raise DatastoreError(f"{prefix} OBS_ID {duplicate} is listed {len(rows)} times (rows "
                                 f"{', '.join(map(str, rows[:5]))}): which row describes the run?")
    return obs_ids


def _text(value):
    """A string cell stripped of blanks, or None when it is masked or empty."""
    if value is np.ma.masked:
        return None
    if isinstance(value, (bytes, np.bytes_)):
        value = value.decode("ascii", errors="replace")
    text = str(value).strip()
    return text or None


@dataclass
class RunSource:
    """One run as the datastore's index tables describe it."""

    obs_id: int
    #: The run's obs-index row, JSON-safe, keyed by the obs-index column names.
    row: dict
    #: The file holding the run's events, or None if the hdu-index names none.
    events_path: Path | None
    events_hdu: str | None
    #: Why ``events_path`` is None: what the hdu-index lacks for this run.
    events_problem: str | None = None

    @property
    def row_sha256(self):
        return hashlib.sha256(json.dumps(self.row, sort_keys=True).encode()).hexdigest()

    @property
    def missing_events_reason(self):
        """Why this run's events cannot be located (for a run whose ``events_path`` is None)."""
        return self.events_problem or NO_EVENTS_HDU


class DL3Datastore:
    """The index tables of a DL3 datastore folder, read as `gammapy.data.DataStore.from_dir` reads them.

    Parameters
    ----------
    path : str or `~pathlib.Path`
        The datastore folder (``$VARIABLES`` and ``~`` are expanded).

    Attributes
    ----------
    obs_table : `~astropy.table.Table`
        The obs-index as read (masked where cells are empty).
    hdu_table : `~astropy.table.Table`
        The hdu-index as gammapy holds it: filled (an empty ``FILE_DIR`` is ``""``) and with
        ``BASE_DIR`` set to the datastore folder.

    Raises
    ------
    DatastoreError
        The folder or an index file is missing or unreadable, a required column is missing, or
        an OBS_ID is invalid.
    """

    def __init__(self, path):
        path = Path(os.path.expandvars(str(path))).expanduser()
        if not path.exists():
            raise DatastoreError(f"datastore folder does not exist: {path}")
        if not path.is_dir():
            raise DatastoreError(f"not a folder: {path}")
        self.path = path.resolve()
        self.obs_index_path = _find_index_file(self.path, OBS_INDEX_NAMES, "obs-index file")
        self.hdu_index_path = _find_index_file(self.path, HDU_INDEX_NAMES, "hdu-index file")
        self.obs_table = read_index_table(self.obs_index_path, "obs-index")
        hdu_table = read_index_table(self.hdu_index_path, "hdu-index")
        if "OBS_ID" not in self.obs_table.colnames:
            raise DatastoreError(f"obs-index {self.obs_index_path} has no OBS_ID column")
        absent = [name for name in HDU_INDEX_COLUMNS if name not in hdu_table.colnames]
        if absent:
            raise DatastoreError(f"hdu-index {self.hdu_index_path} has no {', '.join(absent)} column"
                                 f"{'s' if len(absent) > 1 else ''} (it needs {', '.join(HDU_INDEX_COLUMNS)})")
        self.obs_ids = checked_obs_ids(self.obs_table, "obs-index", self.obs_index_path, unique=True)
        self._hdu_obs_ids = checked_obs_ids(hdu_table, "hdu-index", self.hdu_index_path, unique=False)
        self._resolved_folders = {}
        self._locations = self._events_locations(hdu_table)
        base_dir = hdu_table.meta.get("BASE_DIR")
        if base_dir is not None:
            log.debug("hdu-index BASE_DIR %r ignored, as gammapy does: files are relative to %s", base_dir, self.path)
        if hasattr(hdu_table["FILE_DIR"], "fill_value"):
            hdu_table["FILE_DIR"].fill_value = ""
        hdu_table = hdu_table.filled()
        hdu_table.meta["BASE_DIR"] = str(self.path)
        self.hdu_table = hdu_table

    @property
    def meta(self):
        """The obs-index header (MJDREF, TIMESYS, GEOLON, ...), JSON-safe."""
        return {key: json_safe(value) for key, value in self.obs_table.meta.items()
                if key not in ("comments", "history", "COMMENT", "HISTORY")}

    def _events_locations(self, hdu_table):
        """{obs_id: (path, hdu_name, problem)} from the hdu-index rows of HDU type ``events``."""
        locations = {}
        other_case = {}
        obs_ids = self._hdu_obs_ids.tolist()
        # Column by column: row access in astropy costs microseconds a cell, and archives have
        # hundreds of thousands of hdu-index rows.
        hdu_types = [_text(value) for value in hdu_table["HDU_TYPE"]]
        for index, hdu_type in enumerate(hdu_types):
            if hdu_type is None or hdu_type.lower() != "events":
                continue
            obs_id = obs_ids[index]
            if hdu_type != "events":
                other_case.setdefault(obs_id, hdu_type)
                continue
            if obs_id in locations:
                log.warning("hdu-index %s lists several events HDUs for OBS_ID %s: the first one is used, "
                            "as gammapy does", self.hdu_index_path, obs_id)
                continue
            row = hdu_table[index]
            file_dir = _text(row["FILE_DIR"]) or ""
            file_name, hdu_name = _text(row["FILE_NAME"]), _text(row["HDU_NAME"])
            if file_name is None or hdu_name is None:
                missing = "FILE_NAME" if file_name is None else "HDU_NAME"
                locations[obs_id] = (None, None, f"the hdu-index events row of this run has no {missing}")
                continue
            locations[obs_id] = (self._resolved(self.path / file_dir / file_name), hdu_name, None)
        for obs_id, hdu_type in other_case.items():
            if obs_id not in locations:
                locations[obs_id] = (None, None, f"the hdu-index gives this run's events HDU_TYPE {hdu_type!r}; "
                                                 "gammapy reads only 'events' (lower case)")
        return locations

    def _resolved(self, path):
        """``path.resolve()``, resolving each folder once (a run's file is usually among thousands)."""
        folder = self._resolved_folders.get(path.parent)
        if folder is None:
            folder = self._resolved_folders[path.parent] = path.parent.resolve()
        path = folder / path.name
        return path.resolve() if path.is_symlink() else path

    def runs(self):
        """The runs of the obs-index, in its order.

        Returns
        -------
        runs : list of `RunSource`
        """
        runs = []
        for obs_id, row in zip(self.obs_ids.tolist(), self.obs_table):
            values = {name: json_safe(row[name]) for name in self.obs_table.colnames}
            events_path, events_hdu, problem = self._locations.get(obs_id, (None, None, None))
            runs.append(RunSource(obs_id, values, events_path, events_hdu, problem))
        return runs


@dataclass
class RunFacts:
    """What the catalogue records of one run; angles in deg, times in s or MJD (UTC)."""

    ra_deg: float | None = None
    dec_deg: float | None = None
    glon_deg: float | None = None
    glat_deg: float | None = None
    alt_deg: float | None = None
    zenith_deg: float | None = None
    az_deg: float | None = None
    tstart_mjd: float | None = None
    tstop_mjd: float | None = None
    date_obs: date | None = None
    ontime_s: float | None = None
    livetime_s: float | None = None
    deadtime_fraction: float | None = None
    n_tels: int | None = None
    tellist: str | None = None
    object_name: str | None = None
    nsb_level: float | None = None
    muon_eff: float | None = None
    event_count: int | None = None
    extra: dict = field(default_factory=dict)


def _number(value):
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class _Lookup:
    """Reads a run quantity from its obs-index row first, then from its EVENTS header."""

    def __init__(self, row, header):
        self.sources = [row, header or {}]

    def get(self, *names):
        for name in names:
            for source in self.sources:
                value = source.get(name)
                if value not in (None, ""):
                    return value
        return None

    def number(self, *names):
        return _number(self.get(*names))


def _mjd_reference(lookup):
    if lookup.get("MJDREFI") is not None:
        return float(lookup.get("MJDREFI")) + float(lookup.get("MJDREFF") or 0.0)
    return _number(lookup.get("MJDREF"))


def _fill_times(facts, lookup):
    from astropy.time import Time

    tstart, tstop = lookup.number("TSTART"), lookup.number("TSTOP")
    mjdref = _mjd_reference(lookup)
    scale = str(lookup.get("TIMESYS") or "tt").strip().lower()
    if scale not in Time.SCALES:
        scale = "tt"
    if mjdref is not None and tstart is not None:
        start = Time(mjdref, tstart / 86400.0, format="mjd", scale=scale).utc
        facts.tstart_mjd = float(start.mjd)
        facts.date_obs = start.datetime.date()
        if tstop is not None:
            facts.tstop_mjd = float(Time(mjdref, tstop / 86400.0, format="mjd", scale=scale).utc.mjd)
    elif lookup.get("DATE-OBS"):
        start = Time(str(lookup.get("DATE-OBS"))[:10], scale="utc")
        facts.tstart_mjd = float(start.mjd)
        facts.date_obs = start.datetime.date()
    facts.ontime_s = lookup.number("ONTIME")
    if facts.ontime_s is None and tstart is not None and tstop is not None:
        facts.ontime_s = tstop - tstart
    facts.livetime_s = lookup.number("LIVETIME")
    deadc = lookup.number("DEADC")
    if facts.livetime_s is None and facts.ontime_s is not None and deadc is not None:
        facts.livetime_s = facts.ontime_s * deadc
    if facts.ontime_s and facts.livetime_s is not None:
        facts.deadtime_fraction = 1.0 - facts.livetime_s / facts.ontime_s


def _fill_pointing(facts, lookup):
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    facts.ra_deg, facts.dec_deg = lookup.number("RA_PNT"), lookup.number("DEC_PNT")
    facts.glon_deg, facts.glat_deg = lookup.number("GLON_PNT"), lookup.number("GLAT_PNT")
    if facts.ra_deg is not None and facts.dec_deg is not None and (
        facts.glon_deg is None or facts.glat_deg is None
    ):
        galactic = SkyCoord(facts.ra_deg * u.deg, facts.dec_deg * u.deg, frame="icrs").galactic
        facts.glon_deg, facts.glat_deg = float(galactic.l.deg), float(galactic.b.deg)

    facts.alt_deg, facts.zenith_deg = lookup.number("ALT_PNT"), lookup.number("ZEN_PNT")
    facts.az_deg = lookup.number("AZ_PNT")
    if facts.alt_deg is None and facts.zenith_deg is not None:
        facts.alt_deg = 90.0 - facts.zenith_deg
    if facts.zenith_deg is None and facts.alt_deg is not None:
        facts.zenith_deg = 90.0 - facts.alt_deg
    if facts.alt_deg is None or facts.az_deg is None:
        _fill_alt_az(facts, lookup)
    if facts.az_deg is not None:
        facts.az_deg = facts.az_deg % 360.0


def _fill_alt_az(facts, lookup):
    """Horizontal coordinates at mid-run, for indexes that lack them (needs the site location)."""
    from astropy import units as u
    from astropy.coordinates import AltAz, EarthLocation, SkyCoord
    from astropy.time import Time
    from astropy.utils import iers

    lon, lat = lookup.number("GEOLON"), lookup.number("GEOLAT")
    if None in (lon, lat, facts.ra_deg, facts.dec_deg, facts.tstart_mjd):
        return
    iers.conf.auto_download = False  # no network here: use the bundled tables
    location = EarthLocation(lon=lon * u.deg, lat=lat * u.deg, height=(lookup.number("ALTITUDE") or 0) * u.m)
    mid = facts.tstart_mjd if facts.tstop_mjd is None else 0.5 * (facts.tstart_mjd + facts.tstop_mjd)
    horizontal = SkyCoord(facts.ra_deg * u.deg, facts.dec_deg * u.deg, frame="icrs").transform_to(
        AltAz(obstime=Time(mid, format="mjd", scale="utc"), location=location)
    )
    facts.alt_deg, facts.az_deg = float(horizontal.alt.deg), float(horizontal.az.deg)
    facts.zenith_deg = 90.0 - facts.alt_deg


def _fill_instrument(facts, lookup):
    n_tels = lookup.number("N_TELS")
    facts.n_tels = int(n_tels) if n_tels is not None else None
    tellist = lookup.get("TELLIST")
    facts.tellist = str(tellist) if tellist is not None else None
    if facts.n_tels is None and facts.tellist:
        facts.n_tels = len([tel for tel in facts.tellist.split(",") if tel.strip()])
    name = lookup.get("OBJECT", "TARGET_NAME")
    facts.object_name = str(name) if name is not None else None
    facts.nsb_level = lookup.number("NSBLEVEL")
    facts.muon_eff = lookup.number("MUONEFF")


class _HeaderValues:
    """A FITS header's values as `json_safe` gives them, parsed only for the keys asked for.

    Parsing every card of an EVENTS header costs more than reading its events; a run needs a
    dozen keys. Like a dict of the cards, a repeated key gives its last value.
    """

    def __init__(self, header):
        self._header = header

    def get(self, key, default=None):
        if key in ("COMMENT", "HISTORY", "") or key not in self._header:
            return default
        return json_safe(self._header[(key, self._header.count(key) - 1)])


@dataclass
class EventList:
    """What bkgdb needs of a run's EVENTS table: its header and, if asked, directions and energies."""

    header: dict
    ra_deg: np.ndarray | None = None
    dec_deg: np.ndarray | None = None
    energy_tev: np.ndarray | None = None


def _column(hdu, name, unit):
    from astropy import units as u

    values = np.asarray(hdu.data[name], dtype=float)
    column_unit = hdu.columns[name].unit
    if column_unit:
        values = (values * u.Unit(column_unit)).to_value(unit)
    return values


def read_events(source, content, with_events=False):
    """Parse a run's event file from its bytes and check its EVENTS table is complete.

    Parameters
    ----------
    source : `RunSource`
        The run (for the HDU name and messages).
    content : bytes
        The file's bytes (gzip-compressed or not), read once by the caller.
    with_events : bool, optional
        Also return RA, Dec (deg) and energy (TeV) of every event. Default is False.

    Returns
    -------
    events : `EventList`

    Raises
    ------
    RunReadError
        The file is damaged, truncated, or has no events table.
    """
    import gzip
    import io

    name = source.events_path.name
    try:
        if content[:2] == b"\x1f\x8b":
            content = gzip.decompress(content)
        with fits.open(io.BytesIO(content), memmap=False) as hdul:
            try:
                hdu = hdul[source.events_hdu]
            except KeyError:
                raise RunReadError(f"no HDU named {source.events_hdu!r} in {name}") from None
            header = hdu.header
            expected = int(header.get("NAXIS2", 0))
            found = 0 if hdu.data is None else len(hdu.data)
            if found != expected:
                raise RunReadError(f"event table truncated: {found} of {expected} rows readable")
            events = EventList(_HeaderValues(header))
            if with_events:
                events.ra_deg = _column(hdu, "RA", "deg")
                events.dec_deg = _column(hdu, "DEC", "deg")
                events.energy_tev = _column(hdu, "ENERGY", "TeV")
            return events
    except RunReadError:
        raise
    except Exception as exc:  # gzip, OSError, astropy's VerifyError...: all mean "unreadable"
        raise RunReadError(f"cannot read {name}: {type(exc).__name__}: {exc}") from None


def read_run_facts(source, meta, header=None):
    """The catalogue columns of one run, from its obs-index row and (if given) its EVENTS header.

    Parameters
    ----------
    source : `RunSource`
        The run.
    meta : dict
        The obs-index header (time reference, site location).
    header : dict, optional
        The EVENTS header, when the file could be read. Default is None.

    Returns
    -------
    facts : `RunFacts`
    """
    lookup = _Lookup({**meta, **source.row}, header)
    facts = RunFacts(extra=dict(source.row))
    _fill_times(facts, lookup)
    _fill_pointing(facts, lookup)
    _fill_instrument(facts, lookup)
    if header is not None:
        facts.event_count = int(header.get("NAXIS2", 0))
    elif lookup.number("EVENT_COUNT") is not None:
        facts.event_count = int(lookup.number("EVENT_COUNT"))
    return facts
