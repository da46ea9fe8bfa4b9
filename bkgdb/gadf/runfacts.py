"""The facts the catalogue keeps of a run: pointing, times, instrument, from its index row and header.

A quantity is read from the run's obs-index row first, then from its EVENTS header; the
obs-index header (time reference, site) fills in what both lack. Times become UTC MJD.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

from bkgdb.gadf.datastore import RunSource, finite_number
from bkgdb.gadf.events import Values, observatory_location, time_reference

__all__ = ["RunFacts", "read_run_facts", "pointing_and_durations", "normalise_instrument"]


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
    instrument: str | None = None
    n_tels: int | None = None
    tellist: str | None = None
    object_name: str | None = None
    nsb_level: float | None = None
    muon_eff: float | None = None
    event_count: int | None = None
    extra: dict = field(default_factory=dict)


class _Lookup:
    """Reads a run quantity from its obs-index row first, then from its EVENTS header."""

    def __init__(self, row: dict, header: Values | None) -> None:
        self.sources: list[Values] = [row, header or {}]

    def get(self, *names: str) -> Any:
        for name in names:
            for source in self.sources:
                value = source.get(name)
                if value not in (None, ""):
                    return value
        return None

    def number(self, *names: str) -> float | None:
        return finite_number(self.get(*names))


def _fill_dates(facts: RunFacts, lookup: _Lookup) -> None:
    from astropy import units as u
    from astropy.time import Time

    tstart, tstop = lookup.number("TSTART"), lookup.number("TSTOP")
    reference = time_reference(lookup)
    if reference is not None and tstart is not None:
        # Start and stop in one conversion: each costs more than the arithmetic it converts.
        times = (reference + [tstart, tstart if tstop is None else tstop] * u.s).utc
        facts.tstart_mjd = float(times[0].mjd)
        facts.date_obs = times[0].datetime.date()
        if tstop is not None:
            facts.tstop_mjd = float(times[1].mjd)
    elif lookup.get("DATE-OBS"):
        start = Time(str(lookup.get("DATE-OBS"))[:10], scale="utc")
        facts.tstart_mjd = float(start.mjd)
        facts.date_obs = start.datetime.date()


def _fill_durations(facts: RunFacts, lookup: _Lookup) -> None:
    tstart, tstop = lookup.number("TSTART"), lookup.number("TSTOP")
    facts.ontime_s = lookup.number("ONTIME")
    if facts.ontime_s is None and tstart is not None and tstop is not None:
        facts.ontime_s = tstop - tstart
    facts.livetime_s = lookup.number("LIVETIME")
    deadc = lookup.number("DEADC")
    if facts.livetime_s is None and facts.ontime_s is not None and deadc is not None:
        facts.livetime_s = facts.ontime_s * deadc
    if facts.ontime_s and facts.livetime_s is not None:
        facts.deadtime_fraction = 1.0 - facts.livetime_s / facts.ontime_s


def _fill_pointing(facts: RunFacts, lookup: _Lookup) -> None:
    facts.ra_deg, facts.dec_deg = lookup.number("RA_PNT"), lookup.number("DEC_PNT")
    facts.glon_deg, facts.glat_deg = lookup.number("GLON_PNT"), lookup.number("GLAT_PNT")
    if facts.ra_deg is not None and facts.dec_deg is not None and (facts.glon_deg is None or facts.glat_deg is None):
        # Imported only here: astropy.coordinates costs a worker process more than a run.
        from astropy import units as u
        from astropy.coordinates import SkyCoord

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


def _fill_alt_az(facts: RunFacts, lookup: _Lookup) -> None:
    """Horizontal coordinates at mid-run, for indexes that lack them (needs the site location)."""
    from astropy import units as u
    from astropy.coordinates import AltAz, SkyCoord
    from astropy.time import Time
    from astropy.utils import iers

    location = observatory_location(lookup)
    if location is None or facts.ra_deg is None or facts.dec_deg is None or facts.tstart_mjd is None:
        return
    iers.conf.auto_download = False  # no network here: use the bundled tables
    mid = facts.tstart_mjd if facts.tstop_mjd is None else 0.5 * (facts.tstart_mjd + facts.tstop_mjd)
    horizontal = SkyCoord(facts.ra_deg * u.deg, facts.dec_deg * u.deg, frame="icrs").transform_to(
        AltAz(obstime=Time(mid, format="mjd", scale="utc"), location=location)
    )
    facts.alt_deg, facts.az_deg = float(horizontal.alt.deg), float(horizontal.az.deg)
    facts.zenith_deg = 90.0 - facts.alt_deg


def normalise_instrument(value: Any) -> str | None:
    """An instrument name as the catalogue stores and compares it: stripped, upper-case; None if empty.

    ``TELESCOP`` is written 'HESS', 'VERITAS', 'MAGIC', 'CTA' in the public datastores; another
    writer's 'Hess ' is the same instrument.
    """
    if value is None:
        return None
    name = str(value).strip().upper()
    return name or None


def _fill_instrument(facts: RunFacts, lookup: _Lookup) -> None:
    facts.instrument = normalise_instrument(lookup.get("TELESCOP"))
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


def read_run_facts(source: RunSource, meta: dict, header: Values | None = None) -> RunFacts:
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
    _fill_dates(facts, lookup)
    _fill_durations(facts, lookup)
    _fill_pointing(facts, lookup)
    _fill_instrument(facts, lookup)
    if header is not None:
        facts.event_count = int(header.get("NAXIS2", 0))
    else:
        count = lookup.number("EVENT_COUNT")
        facts.event_count = None if count is None else int(count)
    return facts


def pointing_and_durations(
    source: RunSource, meta: dict, header: Values | None = None
) -> tuple[float | None, float | None, float | None, float | None]:
    """(RA, Dec of the pointing in deg, ontime, livetime in s) as `read_run_facts` finds them.

    All a worker needs to make pieces: none of the dates and coordinates that load astropy's time
    scales and frames, which cost a fresh process more than a run (the indexing process reads the
    run's facts from the header the worker returns).
    """
    lookup = _Lookup({**meta, **source.row}, header)
    facts = RunFacts()
    _fill_durations(facts, lookup)
    return lookup.number("RA_PNT"), lookup.number("DEC_PNT"), facts.ontime_s, facts.livetime_s
