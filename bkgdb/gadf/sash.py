"""H.E.S.S. (SASH) exports: gammapy reads every background of such a run in reversed RA/Dec.

gammapy 2.1's ``Observation.bkg`` (``gammapy/data/observations.py``), kept for old H.E.S.S. data,
relabels the background of an observation whose EVENTS header has ``CREATOR = 'SASH
FITS::EventListWriter'`` and ``HDUVERS = '0.2'`` as ``FoVAlignment.REVERSE_LON_RADEC``: RA/Dec
aligned, FoV longitude reversed. Only the label changes, not the data, whatever alignment the
file's ``FOVALIGN`` gives. H.E.S.S. DR1 and every H.E.S.S. FITS export carry these keys.

A 2D model has no FoV longitude, so the rule does not change it. A RADEC 3D model is still read
correctly if it is written mirrored in FoV longitude with ``FOVALIGN = 'REVERSE_LON_RADEC'``: the
relabelling then changes nothing (`mirrored_lon`). An ALTAZ 3D model cannot be written so that
gammapy reads it in Alt/Az for such a run (`check_writable`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bkgdb.errors import BkgdbError

if TYPE_CHECKING:
    from gammapy.irf import Background3D

    from bkgdb.gadf.events import Values
    from bkgdb.geometry import PieceGeometry

__all__ = [
    "SASH_CREATOR",
    "SASH_HDUVERS",
    "HESS_INSTRUMENT",
    "REVERSE_LON_RADEC",
    "gammapy_reverses_lon",
    "read_events_header",
    "check_writable",
    "mirrored_lon",
    "in_own_frame",
    "ALTAZ_REFUSED",
]

#: The EVENTS ``CREATOR`` and ``HDUVERS`` values gammapy 2.1 tests, compared as exact strings.
SASH_CREATOR = "SASH FITS::EventListWriter"
SASH_HDUVERS = "0.2"
#: The catalogued instrument (``TELESCOP``, upper case) of H.E.S.S. runs, the only ones gammapy's rule can match.
HESS_INSTRUMENT = "HESS"
#: gammapy's name (``FoVAlignment`` and ``FOVALIGN``) of RA/Dec alignment with reversed FoV longitude.
REVERSE_LON_RADEC = "REVERSE_LON_RADEC"

ALTAZ_REFUSED = (
    "gammapy reads every background of a H.E.S.S. run (EVENTS CREATOR 'SASH FITS::EventListWriter', "
    "HDUVERS '0.2') as RA/Dec aligned, so an ALTAZ 3D model would be misread: use a RADEC 3D binning "
    "(fov_alignment: RADEC) or a 2D one"
)


def gammapy_reverses_lon(header: Values | None) -> bool:
    """Whether gammapy labels any background of the run with this EVENTS header ``REVERSE_LON_RADEC``.

    Mirrors the test of gammapy 2.1's ``Observation.bkg``: ``CREATOR`` equal to
    ``'SASH FITS::EventListWriter'`` and ``HDUVERS`` equal to the string ``'0.2'`` (a number 0.2
    or a missing key does not match), values as astropy reads them (trailing blanks dropped).

    Parameters
    ----------
    header : dict-like or None
        The run's EVENTS header (anything with ``get``); None for an unknown header.
    """
    if header is None:
        return False
    return header.get("CREATOR") == SASH_CREATOR and header.get("HDUVERS") == SASH_HDUVERS


def read_events_header(path: str | Path) -> Any:
    """The EVENTS header of a run file: of its first HDU named ``EVENTS`` or with ``HDUCLAS1 = 'EVENTS'``.

    Raises
    ------
    BkgdbError
        The file cannot be read or has no events HDU.
    """
    from astropy.io import fits

    try:
        with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
            for hdu in hdul:
                if hdu.name == "EVENTS" or str(hdu.header.get("HDUCLAS1", "")).strip().upper() == "EVENTS":
                    return hdu.header.copy()
    except Exception as exc:  # OSError, astropy's VerifyError, a gzip error: all mean "unreadable"
        raise BkgdbError(f"cannot read the EVENTS header of {path}: {exc}") from None
    raise BkgdbError(f"{path} has no EVENTS HDU")


def check_writable(geometry: PieceGeometry, reverses_lon: bool) -> None:
    """Refuse a model gammapy would misread: an ALTAZ 3D one for a run whose background gammapy reverses.

    Raises
    ------
    BkgdbError
        ``reverses_lon`` and an ALTAZ 3D ``geometry`` (`ALTAZ_REFUSED`).
    """
    if reverses_lon and geometry.is_3d and geometry.alignment == "ALTAZ":
        raise BkgdbError(ALTAZ_REFUSED)


def mirrored_lon(lon_edges: np.ndarray, rate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A RADEC 3D rate in gammapy's ``REVERSE_LON_RADEC`` convention: (FoV longitude edges, rate).

    gammapy evaluates such a model at minus the RA/Dec FoV longitude, so the bin at longitude
    ``l`` must hold the rate at ``-l``: edges ``-lon_edges[::-1]``, rate reversed along its
    longitude axis (shape ``(energy, fov_lon, fov_lat)``). Applying it twice gives the input back.
    """
    lon_edges = np.asarray(lon_edges, float)
    return -lon_edges[::-1], np.asarray(rate)[:, ::-1, :]


def in_own_frame(background: Background3D) -> Background3D:
    """A ``REVERSE_LON_RADEC`` gammapy `Background3D` as the RADEC model it stands for; others as they are."""
    from astropy import units as u
    from gammapy.irf import Background3D
    from gammapy.maps import MapAxis

    if background.fov_alignment.value != REVERSE_LON_RADEC:
        return background
    energy, lon, lat = (background.axes[name] for name in ("energy", "fov_lon", "fov_lat"))
    edges, data = mirrored_lon(lon.edges.to_value("deg"), background.data)
    return Background3D(
        axes=[energy, MapAxis.from_edges(edges * u.deg, name="fov_lon"), lat],
        data=data,
        unit=background.unit,
        meta=background.meta,
        fov_alignment="RADEC",
    )
