"""Simulated counts against gammapy's predicted background counts, in quadrants of the FoV.

Each run's counts and predicted background counts (`gammapy.makers.MapDatasetMaker`, with
``fov_rotation_step`` for ALTAZ models) are binned in sky pixels, then summed per energy band over
the four quadrants of the FoV (the signs of fov_lon and fov_lat at mid-run in a chosen alignment)
within a radius of the pointing, and over runs. A gradient across the FoV shows as quadrants with
unequal counts; a model that has it the wrong way round or in the wrong frame mispredicts them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from astropy import units as u

from bkgdb.simulate.observing import radec_to_fov
from bkgdb.simulate.truth import fov_offset_deg

__all__ = ["quadrant_counts", "pulls", "QUADRANTS"]

#: The quadrants, in the order of the rows `quadrant_counts` returns.
QUADRANTS = ("+lon +lat", "-lon +lat", "+lon -lat", "-lon -lat")


def quadrant_counts(
    datastore: str | Path,
    obs_ids: Iterable[int],
    alignment: str,
    energy_edges_tev: Sequence[float],
    radius_deg: float = 2.4,
    fov_rotation_step_deg: float = 0.5,
    pixel_deg: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """Counts and predicted background counts per (quadrant, energy band), summed over runs.

    Parameters
    ----------
    datastore : str or `~pathlib.Path`
        A datastore whose runs have a background IRF (and an effective area, for gammapy's maker).
    obs_ids : iterable of int
        The runs summed.
    alignment : {"ALTAZ", "RADEC"}
        The FoV frame whose quadrants (at each run's mid-time) are the regions.
    energy_edges_tev : sequence of float
        Edges of the energy bands.
    radius_deg : float
        Only sky pixels whose centres lie within this angle of the pointing. Default is 2.4.
    fov_rotation_step_deg : float
        gammapy's ``fov_rotation_step``. Default is 0.5.
    pixel_deg : float
        Sky pixel size. Default is 0.1.

    Returns
    -------
    counts, npred : `~numpy.ndarray`
        Of shape ``(4, n_bands)``, rows in the order of `QUADRANTS`.
    """
    from gammapy.data import DataStore
    from gammapy.datasets import MapDataset
    from gammapy.makers import MapDatasetMaker
    from gammapy.maps import MapAxis, WcsGeom

    store = DataStore.from_dir(datastore)
    energy = MapAxis.from_energy_edges(np.asarray(energy_edges_tev) * u.TeV)
    maker = MapDatasetMaker(selection=["counts", "background"], fov_rotation_step=fov_rotation_step_deg * u.deg)
    counts = np.zeros((len(QUADRANTS), energy.nbin))
    npred = np.zeros_like(counts)
    for obs_id in obs_ids:
        observation = store.obs(obs_id, required_irf=["aeff", "bkg"])
        pointing = observation.pointing.fixed_icrs
        geom = WcsGeom.create(
            skydir=pointing, width=2 * radius_deg + 2 * pixel_deg, binsz=pixel_deg, frame="icrs", axes=[energy]
        )
        dataset = maker.run(MapDataset.create(geom, name=str(obs_id)), observation)
        sky = geom.to_image().get_coord().skycoord
        lon, lat = radec_to_fov(
            sky.ra.deg,
            sky.dec.deg,
            observation.tmid,
            pointing.ra.deg,
            pointing.dec.deg,
            observation.observatory_earth_location,
            alignment,
        )
        inside = fov_offset_deg(lon, lat) < radius_deg
        regions = [(lon > 0) & (lat > 0), (lon <= 0) & (lat > 0), (lon > 0) & (lat <= 0), (lon <= 0) & (lat <= 0)]
        predicted = dataset.npred_background().data
        for number, region in enumerate(regions):
            pixels = inside & region
            counts[number] += dataset.counts.data[:, pixels].sum(axis=1)
            npred[number] += predicted[:, pixels].sum(axis=1)
    return counts, npred


def pulls(counts: np.ndarray, npred: np.ndarray, model_variance: float | np.ndarray = 0.0) -> np.ndarray:
    """``(counts - npred) / sigma`` with the Poisson variance ``npred`` plus ``model_variance * npred**2``
    (the model's own relative variance)."""
    counts, npred = np.asarray(counts, float), np.asarray(npred, float)
    return (counts - npred) / np.sqrt(npred + model_variance * npred**2)
