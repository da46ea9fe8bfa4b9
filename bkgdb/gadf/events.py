"""Reading a run's event file: its EVENTS header and, for pieces, its event columns.

The file's bytes are read once by the caller (they are hashed too) and parsed here; a damaged or
truncated file is a `RunReadError` for that run only. Event times are seconds after the time
reference of the EVENTS header (``MJDREFI`` + ``MJDREFF`` in the ``TIMESYS`` scale), as gammapy
reads them; the observatory location comes from ``GEOLON``, ``GEOLAT`` and ``GEOALT`` or
``ALTITUDE``.
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from astropy.io import fits

from bkgdb.gadf.datastore import RunSource, finite_number, json_safe

if TYPE_CHECKING:
    from astropy.coordinates import EarthLocation
    from astropy.time import Time

__all__ = ["EventList", "RunReadError", "read_events", "time_reference", "observatory_location"]


class RunReadError(Exception):
    """A run's event file cannot be read; the message is the reason stored in the catalogue."""


class Values(Protocol):
    """Anything with a dict-like ``get``: a header, an obs-index row or its header meta."""

    def get(self, key: str, default: Any = None, /) -> Any: ...


def time_reference(values: Values) -> Time | None:
    """The epoch FITS times count from, or None when ``values`` give none.

    ``MJDREFI`` + ``MJDREFF`` (else ``MJDREF``) in the ``TIMESYS`` scale (TT when missing or
    unknown), as `gammapy.utils.time.time_ref_from_dict` reads it.
    """
    from astropy.time import Time

    scale = str(values.get("TIMESYS") or "tt").strip().lower()
    if scale not in Time.SCALES:
        scale = "tt"
    whole = finite_number(values.get("MJDREFI"))
    if whole is not None:
        return Time(whole, finite_number(values.get("MJDREFF")) or 0.0, format="mjd", scale=scale)
    mjdref = finite_number(values.get("MJDREF"))
    return None if mjdref is None else Time(mjdref, format="mjd", scale=scale)


def observatory_location(*sources: Values) -> EarthLocation | None:
    """The observatory of the first source giving ``GEOLON`` and ``GEOLAT``, or None.

    The height is ``GEOALT``, else ``ALTITUDE`` (m), else 0, as gammapy's
    ``earth_location_from_dict`` reads it.
    """
    from astropy import units as u
    from astropy.coordinates import EarthLocation

    for values in sources:
        lon, lat = finite_number(values.get("GEOLON")), finite_number(values.get("GEOLAT"))
        if lon is None or lat is None:
            continue
        height = finite_number(values.get("GEOALT"))
        if height is None:
            height = finite_number(values.get("ALTITUDE"))
        return EarthLocation(lon=lon * u.deg, lat=lat * u.deg, height=(height or 0.0) * u.m)
    return None


class _HeaderValues:
    """A FITS header's values as `json_safe` gives them, parsed only for the keys asked for.

    Parsing every card of an EVENTS header costs more than reading its events; a run needs a
    dozen keys. Like a dict of the cards, a repeated key gives its last value.
    """

    def __init__(self, header: fits.Header) -> None:
        self._header = header

    def get(self, key: str, default: Any = None) -> Any:
        if key in ("COMMENT", "HISTORY", "") or key not in self._header:
            return default
        return json_safe(self._header[(key, self._header.count(key) - 1)])


@dataclass
class EventList:
    """What bkgdb needs of a run's EVENTS table: its header and, if asked, the event columns.

    Attributes
    ----------
    header : dict-like
        The EVENTS header's values (``get`` only).
    ra_deg, dec_deg, energy_tev : `~numpy.ndarray` or None
        Event directions (deg) and reconstructed energies (TeV).
    time_s : `~numpy.ndarray` or None
        Event times in s after the header's time reference (None if the table has no TIME).
    """

    header: Any
    ra_deg: np.ndarray | None = None
    dec_deg: np.ndarray | None = None
    energy_tev: np.ndarray | None = None
    time_s: np.ndarray | None = None


def _column(hdu: fits.BinTableHDU, name: str, unit: str) -> np.ndarray:
    from astropy import units as u

    values = np.asarray(hdu.data[name], dtype=float)
    column_unit = hdu.columns[name].unit
    if column_unit:
        values = (values * u.Unit(column_unit)).to_value(unit)
    return values


def read_events(source: RunSource, content: bytes, with_events: bool = False) -> EventList:
    """Parse a run's event file from its bytes and check its EVENTS table is complete.

    Parameters
    ----------
    source : `~bkgdb.gadf.datastore.RunSource`
        The run (for the HDU name and messages).
    content : bytes
        The file's bytes (gzip-compressed or not), read once by the caller.
    with_events : bool, optional
        Also return RA, Dec (deg), energy (TeV) and, when the table has it, TIME (s) of every
        event. Default is False.

    Returns
    -------
    events : `EventList`

    Raises
    ------
    RunReadError
        The file is damaged, truncated, or has no events table.
    """
    name = source.events_path.name if source.events_path is not None else str(source.obs_id)
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
                if "TIME" in hdu.columns.names:
                    events.time_s = _column(hdu, "TIME", "s")
            return events
    except RunReadError:
        raise
    except Exception as exc:  # gzip, OSError, astropy's VerifyError...: all mean "unreadable"
        raise RunReadError(f"cannot read {name}: {type(exc).__name__}: {exc}") from None
