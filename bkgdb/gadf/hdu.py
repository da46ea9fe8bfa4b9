"""Writing background models in the GADF ``BKG_2D`` and ``BKG_3D`` formats with astropy alone.

Building a gammapy ``Background2D`` or ``Background3D`` only to write it costs the 2-3 s gammapy
import; this writer produces the same table (gammapy reads it back, the tests check it) in
microseconds. See https://gamma-astro-data-formats.readthedocs.io (full-enclosure IRFs, background).

gammapy cannot tell the order of a background's axes from the file: it transposes the data when
its shape differs from that of the axes, and logs "Ambiguous axes order in Background fits files!"
(at ERROR) on every read when the axes' shape reads the same reversed. The axes are ordered by
gammapy itself (energy, then offset or fov_lon, fov_lat), whatever the order of the columns in the
file, so no layout avoids the message: only the number of bins does (`ambiguous_for_gammapy`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from astropy.io import fits

    from bkgdb.geometry import PieceGeometry

__all__ = ["background_hdu", "ambiguous_for_gammapy", "RATE_UNIT_FITS"]

log = logging.getLogger(__name__)

RATE_UNIT_FITS = "MeV-1 s-1 sr-1"
#: GADF column names of each geometry's spatial axes (2D: offset; 3D: fov_lon, fov_lat).
_SPATIAL_COLUMNS = {"2d": ("THETA",), "3d": ("DETX", "DETY")}


def ambiguous_for_gammapy(shape: tuple[int, ...]) -> bool:
    """Whether gammapy logs "Ambiguous axes order" reading a background of this shape.

    True when the shape reads the same reversed: ``n_energy == n_offset`` (2D) or
    ``n_energy == n_lat`` (3D, ``(n_energy, n_lon, n_lat)``).
    """
    shape = tuple(int(n) for n in shape)
    return shape == shape[::-1]


def _column(name: str, values: np.ndarray, unit: str) -> fits.Column:
    from astropy.io import fits

    n = len(values)
    return fits.Column(name, f"{n}D", unit=unit, dim=f"({n})", array=np.asarray(values, float)[np.newaxis])


def background_hdu(
    geometry: PieceGeometry, rate: np.ndarray, name: str = "BACKGROUND", reverse_lon: bool = False
) -> fits.BinTableHDU:
    """A ``BKG_2D`` or ``BKG_3D`` binary table HDU of a rate in s-1 MeV-1 sr-1.

    Parameters
    ----------
    geometry : `~bkgdb.geometry.PieceGeometry`
        The bins: energy x offset (``BKG_2D``) or energy x fov_lon x fov_lat (``BKG_3D``, with
        ``FOVALIGN`` set to the geometry's alignment, or ``REVERSE_LON_RADEC`` with ``reverse_lon``).
    rate : `~numpy.ndarray`
        The rate, of ``geometry.shape``.
    name : str, optional
        EXTNAME. Default is ``BACKGROUND``, where gammapy looks first.
    reverse_lon : bool, optional
        Write a RADEC 3D model in gammapy's ``REVERSE_LON_RADEC`` convention (mirrored in FoV
        longitude, `~bkgdb.gadf.sash.mirrored_lon`), as gammapy reads any background of a
        H.E.S.S. SASH run (`~bkgdb.gadf.sash`). Default is False.
    """
    from astropy.io import fits

    from bkgdb.gadf.sash import REVERSE_LON_RADEC, mirrored_lon

    rate = np.asarray(rate, float)
    if rate.shape != geometry.shape:
        raise ValueError(f"rate of shape {rate.shape} does not fit the geometry's {geometry.shape}")
    spatial_edges = geometry.spatial_edges
    alignment = geometry.alignment
    if reverse_lon:
        if alignment != "RADEC":
            raise ValueError(f"only a RADEC 3D model can be written with reversed FoV longitude, not {alignment}")
        spatial_edges[0], rate = mirrored_lon(spatial_edges[0], rate)
        alignment = REVERSE_LON_RADEC
    if ambiguous_for_gammapy(rate.shape):
        log.warning("a background of shape %s makes gammapy log 'Ambiguous axes order' on every read", rate.shape)
    energy = geometry.energy_edges
    columns = [_column("ENERG_LO", energy[:-1], "TeV"), _column("ENERG_HI", energy[1:], "TeV")]
    for column, edges in zip(_SPATIAL_COLUMNS[geometry.kind], spatial_edges, strict=True):
        columns += [_column(f"{column}_LO", edges[:-1], "deg"), _column(f"{column}_HI", edges[1:], "deg")]
    # FITS lists the fastest axis first: TDIM (energy, ...) holds the numpy array transposed, as gammapy writes it.
    dim = "(" + ",".join(str(n) for n in rate.shape) + ")"
    columns.append(fits.Column("BKG", f"{rate.size}D", unit=RATE_UNIT_FITS, dim=dim, array=rate.T[np.newaxis]))
    hdu = fits.BinTableHDU.from_columns(columns, name=name)
    hdu.header.update(
        {
            "HDUCLASS": "GADF",
            "HDUDOC": "https://github.com/open-gamma-ray-astro/gamma-astro-data-formats",
            "HDUVERS": "0.2",
            "HDUCLAS1": "RESPONSE",
            "HDUCLAS2": "BKG",
            "HDUCLAS3": "FULL-ENCLOSURE",
            "HDUCLAS4": f"BKG_{geometry.kind.upper()}",
        }
    )
    if geometry.is_3d:
        comment = (
            "RADEC, FoV lon reversed (H.E.S.S. SASH runs)" if reverse_lon else "FoV lon/lat aligned with ALTAZ or RADEC"
        )
        hdu.header["FOVALIGN"] = (alignment, comment)
    return hdu
