"""Reading a GADF DL3 datastore: its index tables and, per run, the facts the catalogue keeps.

A datastore is a folder with ``obs-index.fits[.gz]`` and ``hdu-index.fits[.gz]``, the layout
`gammapy.data.DataStore.from_dir` opens. This module reads it with astropy only, so a broken
run file is reported for that run instead of stopping the whole index.
"""

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from .errors import DatastoreError

__all__ = [
    "DL3Datastore", "RunSource", "RunFacts", "RunReadError", "EventList", "read_events", "read_run_facts",
]

log = logging.getLogger(__name__)

OBS_INDEX_NAMES = ("obs-index.fits.gz", "obs-index.fits")
HDU_INDEX_NAMES = ("hdu-index.fits.gz", "hdu-index.fits")


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


def _find_index_file(folder, names, what):
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise DatastoreError(f"{folder} has no {what} ({' or '.join(names)}): not a DL3 datastore")


@dataclass
class RunSource:
    """One run as the datastore's index tables describe it."""

    obs_id: int
    #: The run's obs-index row, JSON-safe, keyed by the obs-index column names.
    row: dict
    #: The file holding the run's events, or None if the hdu-index names none.
    events_path: Path | None
    events_hdu: str | None

    @property
    def row_sha256(self):
        return hashlib.sha256(json.dumps(self.row, sort_keys=True).encode()).hexdigest()


class DL3Datastore:
    """The index tables of a DL3 datastore folder.

    Parameters
    ----------
    path : str or `~pathlib.Path`
        The datastore folder.
    """

    def __init__(self, path):
        path = Path(path).expanduser()
        if not path.exists():
            raise DatastoreError(f"datastore folder does not exist: {path}")
        if not path.is_dir():
            raise DatastoreError(f"not a folder: {path}")
        self.path = path.resolve()
        self.obs_index_path = _find_index_file(self.path, OBS_INDEX_NAMES, "obs-index file")
        self.hdu_index_path = _find_index_file(self.path, HDU_INDEX_NAMES, "hdu-index file")
        try:
            self.obs_table = Table.read(self.obs_index_path, hdu=1)
            self.hdu_table = Table.read(self.hdu_index_path, hdu=1)
        except Exception as exc:  # astropy raises many kinds for a damaged index file
            raise DatastoreError(f"cannot read the index files of {self.path}: {exc}") from None
        for table, name, column in ((self.obs_table, "obs-index", "OBS_ID"),
                                    (self.hdu_table, "hdu-index", "HDU_TYPE")):
            if column not in table.colnames:
                raise DatastoreError(f"{name} of {self.path} has no {column} column")

    @property
    def meta(self):
        """The obs-index header (MJDREF, TIMESYS, GEOLON, ...), JSON-safe."""
        return {key: json_safe(value) for key, value in self.obs_table.meta.items()
                if key not in ("comments", "history", "COMMENT", "HISTORY")}

    def _events_locations(self):
        locations = {}
        hdu_type = np.char.strip(np.char.lower(np.asarray(self.hdu_table["HDU_TYPE"]).astype(str)))
        for row in self.hdu_table[hdu_type == "events"]:
            base = self.hdu_table.meta.get("BASE_DIR", "")
            folder = self.path / str(base).strip() / str(row["FILE_DIR"]).strip()
            path = (folder / str(row["FILE_NAME"]).strip()).resolve()
            locations[int(row["OBS_ID"])] = (path, str(row["HDU_NAME"]).strip())
        return locations

    def runs(self):
        """The runs of the obs-index, in its order.

        Returns
        -------
        runs : list of `RunSource`
        """
        locations = self._events_locations()
        runs = []
        for row in self.obs_table:
            obs_id = int(row["OBS_ID"])
            values = {name: json_safe(row[name]) for name in self.obs_table.colnames}
            events_path, events_hdu = locations.get(obs_id, (None, None))
            runs.append(RunSource(obs_id, values, events_path, events_hdu))
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
            events = EventList({key: json_safe(value) for key, value in header.items()
                                if key not in ("COMMENT", "HISTORY", "")})
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
