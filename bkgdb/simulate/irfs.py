"""Instrument responses written into simulated runs: simple IRFs so gammapy's makers accept the
runs, and known background rates as gammapy background IRFs in a datastore beside the runs."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.table import Table

if TYPE_CHECKING:
    from gammapy.irf.background import BackgroundIRF

__all__ = ["simple_irf_hdus", "background_hdu", "datastore_with_backgrounds"]


def simple_irf_hdus(
    psf_sigma_deg: float = 0.1, energy_resolution: float = 0.1
) -> list[tuple[str, str, fits.BinTableHDU]]:
    """Effective area (H.E.S.S. parametrisation, flat in offset), Gaussian energy dispersion and a
    Gaussian PSF table: (HDU_TYPE, HDU_CLASS, HDU) triples. Enough for gammapy's makers; not a real
    instrument."""
    from gammapy.irf import PSF3D, EffectiveAreaTable2D, EnergyDispersion2D
    from gammapy.maps import MapAxis

    energy = MapAxis.from_energy_bounds(0.05, 200, nbin=24, unit="TeV", name="energy_true")
    offset = MapAxis.from_edges(np.arange(5) * u.deg, name="offset")
    flat = EffectiveAreaTable2D.from_parametrization(energy, "HESS")
    aeff = EffectiveAreaTable2D(axes=[energy, offset], data=np.repeat(flat.data, offset.nbin, axis=1), unit=flat.unit)
    migra = MapAxis.from_edges(np.linspace(0.2, 5, 49), name="migra")
    edisp = EnergyDispersion2D.from_gauss(
        energy_axis_true=energy, migra_axis=migra, offset_axis=offset, bias=0, sigma=energy_resolution
    )
    rad = MapAxis.from_edges(np.linspace(0, 1, 51) * u.deg, name="rad")
    sigma = np.radians(psf_sigma_deg)
    profile = np.exp(-(rad.center.to_value("rad") ** 2) / (2 * sigma**2)) / (2 * np.pi * sigma**2)
    psf = PSF3D(
        axes=[energy, offset, rad],
        unit="sr-1",
        data=np.broadcast_to(profile, (energy.nbin, offset.nbin, rad.nbin)).copy(),
    )
    return [
        ("aeff", "aeff_2d", aeff.to_table_hdu()),
        ("edisp", "edisp_2d", edisp.to_table_hdu()),
        ("psf", "psf_table", psf.to_table_hdu()),
    ]


def background_hdu(irf: BackgroundIRF) -> fits.BinTableHDU:
    """A gammapy ``Background2D`` or ``Background3D`` as a ``BKG`` HDU; 3D ones carry ``FOVALIGN``.

    gammapy reads a 3D background without ``FOVALIGN`` as RA/Dec aligned, so the keyword is always set.
    """
    hdu = irf.to_table_hdu()
    hdu.name = "BKG"
    if not irf.has_offset_axis:
        hdu.header["FOVALIGN"] = irf.fov_alignment.value
    return hdu


def datastore_with_backgrounds(
    datastore: str | Path, out: str | Path, backgrounds: Mapping[int, BackgroundIRF]
) -> Path:
    """A datastore in ``out`` whose runs are those of ``datastore`` (its files read in place) and whose
    background IRFs are ``backgrounds`` (OBS_ID -> gammapy background IRF), written under ``out/bkg``.

    Background rows of ``datastore``'s hdu-index are dropped, so gammapy reads only the given
    backgrounds. Several variants of a model for the same runs cost no copy of the event files.
    """
    datastore, out = Path(datastore).resolve(), Path(out)
    (out / "bkg").mkdir(parents=True, exist_ok=True)
    obs_table = Table.read(datastore / "obs-index.fits.gz")
    hdu_table = Table.read(datastore / "hdu-index.fits.gz")
    hdu_table = hdu_table[np.char.strip(np.char.lower(hdu_table["HDU_TYPE"].astype(str))) != "bkg"]
    rows = [dict(zip(hdu_table.colnames, map(_plain, row), strict=True)) for row in hdu_table]
    relative = os.path.relpath(datastore, out.resolve())
    for row in rows:
        row["FILE_DIR"] = str(Path(relative) / str(row["FILE_DIR"]))
    for obs_id, irf in backgrounds.items():
        file_name = f"bkg_{int(obs_id):06d}.fits"
        fits.HDUList([fits.PrimaryHDU(), background_hdu(irf)]).writeto(out / "bkg" / file_name, overwrite=True)
        hdu_class = "bkg_2d" if irf.has_offset_axis else "bkg_3d"
        rows.append(
            {
                "OBS_ID": int(obs_id),
                "HDU_TYPE": "bkg",
                "HDU_CLASS": hdu_class,
                "FILE_DIR": "bkg",
                "FILE_NAME": file_name,
                "HDU_NAME": "BKG",
            }
        )
    new_hdu_table = Table(rows=rows, names=hdu_table.colnames)
    new_hdu_table.meta.update(hdu_table.meta)
    new_hdu_table.write(out / "hdu-index.fits.gz", format="fits", overwrite=True)
    obs_table.write(out / "obs-index.fits.gz", format="fits", overwrite=True)
    return out


def _plain(value: Any) -> Any:
    """A table cell as a plain Python value (strings stripped of FITS padding)."""
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode().strip()
    if isinstance(value, str):
        return value.strip()
    return value.item() if hasattr(value, "item") else value
