"""Gamma-ray sources added to simulated runs, and catalogues of them for exclusion regions."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table

__all__ = ["PointSource", "write_source_catalogue"]


@dataclass
class PointSource:
    """A gamma-ray point source seen through a Gaussian PSF."""

    ra_deg: float
    dec_deg: float
    rate_per_s: float = 0.5
    psf_sigma_deg: float = 0.1
    index: float = 2.5
    name: str = "Simulated source"


def write_source_catalogue(path: str | Path, sources: Iterable[PointSource | Mapping]) -> Path:
    """Write a small catalogue in gamma-cat's column layout, readable as ``exclusion.gammacat``.

    Parameters
    ----------
    path : str or `~pathlib.Path`
        Output FITS file.
    sources : list of `PointSource` or dict
        Each with ``name``, ``ra_deg``, ``dec_deg`` and optionally ``morph_sigma`` (deg, makes
        the source extended with a Gaussian morphology).
    """
    rows = []
    for item in sources:
        source: Mapping[str, Any] = (
            {"name": item.name, "ra_deg": item.ra_deg, "dec_deg": item.dec_deg}
            if isinstance(item, PointSource)
            else item
        )
        sigma = source.get("morph_sigma")  # absent for point sources
        rows.append(
            (
                source["name"],
                source["ra_deg"],
                source["dec_deg"],
                "gauss" if sigma else "point",
                float(sigma) if sigma else np.nan,
            )
        )
    table = Table(
        rows=rows,
        names=["common_name", "ra", "dec", "morph_type", "morph_sigma"],
        dtype=[str, float, float, str, float],
    )
    table["ra"].unit = table["dec"].unit = table["morph_sigma"].unit = "deg"
    table.meta["ORIGIN"] = "bkgdb simulation"
    table.write(path, overwrite=True)
    return Path(path)
