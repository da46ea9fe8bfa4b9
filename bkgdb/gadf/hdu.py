"""Writing background models in the GADF ``BKG_2D`` format with astropy alone.

Building a `gammapy.irf.Background2D` only to write it costs the 2-3 s gammapy import; this
writer produces the same table (gammapy reads it back, a test checks it) in microseconds.
See https://gamma-astro-data-formats.readthedocs.io (full-enclosure IRFs, background, bkg_2d).
"""

import numpy as np

__all__ = ["background_2d_hdu"]

RATE_UNIT_FITS = "MeV-1 s-1 sr-1"


def background_2d_hdu(energy_edges_tev, offset_edges_deg, rate, name="BACKGROUND"):
    """A ``BKG_2D`` binary table HDU of a rate per (energy, offset) bin in s-1 MeV-1 sr-1.

    Parameters
    ----------
    energy_edges_tev, offset_edges_deg : array
        Bin edges in TeV and deg.
    rate : array of shape (n_energy, n_offset)
        The rate.
    name : str, optional
        EXTNAME. Default is ``BACKGROUND``, where gammapy looks first.
    """
    from astropy.io import fits

    energy, offset = np.asarray(energy_edges_tev, float), np.asarray(offset_edges_deg, float)
    rate = np.asarray(rate, float)
    if rate.shape != (len(energy) - 1, len(offset) - 1):
        raise ValueError(f"rate of shape {rate.shape} does not fit {len(energy) - 1} x {len(offset) - 1} bins")
    n_energy, n_offset = rate.shape
    columns = [
        fits.Column("ENERG_LO", f"{n_energy}D", unit="TeV", dim=f"({n_energy})", array=energy[np.newaxis, :-1]),
        fits.Column("ENERG_HI", f"{n_energy}D", unit="TeV", dim=f"({n_energy})", array=energy[np.newaxis, 1:]),
        fits.Column("THETA_LO", f"{n_offset}D", unit="deg", dim=f"({n_offset})", array=offset[np.newaxis, :-1]),
        fits.Column("THETA_HI", f"{n_offset}D", unit="deg", dim=f"({n_offset})", array=offset[np.newaxis, 1:]),
        # FITS stores the fastest axis first: TDIM (energy, offset) is numpy (offset, energy).
        fits.Column("BKG", f"{rate.size}D", unit=RATE_UNIT_FITS, dim=f"({n_energy},{n_offset})",
                    array=rate.T[np.newaxis]),
    ]
    hdu = fits.BinTableHDU.from_columns(columns, name=name)
    hdu.header.update({
        "HDUCLASS": "GADF", "HDUDOC": "https://github.com/open-gamma-ray-astro/gamma-astro-data-formats",
        "HDUVERS": "0.2", "HDUCLAS1": "RESPONSE", "HDUCLAS2": "BKG", "HDUCLAS3": "FULL-ENCLOSURE",
        "HDUCLAS4": "BKG_2D",
    })
    return hdu
