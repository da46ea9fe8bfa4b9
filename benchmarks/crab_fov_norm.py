"""Fit the FoV background norm of H.E.S.S. Crab run 23523 with a bkgdb background and with H.E.S.S.'s own.

Usage: python benchmarks/crab_fov_norm.py ATTACHED_DATASTORE   (needs $GAMMAPY_DATA)

ATTACHED_DATASTORE is the output of `bkgdb attach $GAMMAPY_DATA/hess-dl3-dr1 --out DIR ...`.
A norm near 1 means the model predicts the counts outside the Crab exclusion region.
"""

import os
import sys

import astropy.units as u
from astropy.coordinates import SkyCoord
from gammapy.data import DataStore
from gammapy.datasets import MapDataset
from gammapy.makers import FoVBackgroundMaker, MapDatasetMaker, SafeMaskMaker
from gammapy.maps import MapAxis, WcsGeom
from regions import CircleSkyRegion

CRAB = SkyCoord(83.633 * u.deg, 22.014 * u.deg)


def fov_norm(observation):
    """Norm and its error of a FoVBackgroundMaker scale fit of one observation, Crab excluded."""
    energy = MapAxis.from_energy_bounds(0.7, 50, nbin=8, unit="TeV")
    energy_true = MapAxis.from_energy_bounds(0.3, 100, nbin=20, unit="TeV", name="energy_true")
    geom = WcsGeom.create(skydir=observation.pointing.fixed_icrs, binsz=0.02, width=(4, 4), frame="icrs",
                          axes=[energy])
    dataset = MapDataset.create(geom, energy_axis_true=energy_true, name=str(observation.obs_id))
    dataset = MapDatasetMaker(selection=["counts", "exposure", "background"]).run(dataset, observation)
    dataset = SafeMaskMaker(methods=["offset-max", "aeff-default"], offset_max="2.0 deg").run(dataset, observation)
    mask = geom.region_mask([CircleSkyRegion(CRAB, 0.4 * u.deg)], inside=False)
    dataset = FoVBackgroundMaker(method="scale", exclusion_mask=mask).run(dataset)
    norm = dataset.background_model.spectral_model.norm
    return norm.value, norm.error


def main(attached):
    original = DataStore.from_dir(os.path.join(os.environ["GAMMAPY_DATA"], "hess-dl3-dr1"))
    ours = DataStore.from_dir(attached)
    for label, store in (("H.E.S.S. bkg_3d", original), ("bkgdb bkg_2d", ours)):
        value, error = fov_norm(store.obs(23523))
        print(f"{label:16s} FoV background norm of run 23523: {value:.3f} +- {error:.3f}")


if __name__ == "__main__":
    main(sys.argv[1])
