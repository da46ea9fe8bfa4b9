"""Fit the FoV background norm of H.E.S.S. Crab run 23523 with a bkgdb background and with H.E.S.S.'s own.

Usage: python benchmarks/crab_fov_norm.py ATTACHED_DATASTORE   (needs $GAMMAPY_DATA)

ATTACHED_DATASTORE is the output of `bkgdb attach $GAMMAPY_DATA/hess-dl3-dr1 --out DIR ...`.
A norm near 1 means the model predicts the counts outside the Crab exclusion region.
"""

import os
import sys

from gammapy.data import DataStore

from bkgdb.fov_fit import fov_background_norm

CRAB = (83.633, 22.014, 0.4)


def fov_norm(observation):
    """Norm and error of the FoV fit of run 23523: Crab masked, 0.7-50 TeV, offsets below 2 deg."""
    norm = fov_background_norm(observation, [CRAB], energy_range_tev=(0.7, 50), binsz_deg=0.02,
                               aeff_safe_mask=True)
    return norm.value, norm.error


def main(attached):
    original = DataStore.from_dir(os.path.join(os.environ["GAMMAPY_DATA"], "hess-dl3-dr1"))
    ours = DataStore.from_dir(attached)
    for label, store in (("H.E.S.S. bkg_3d", original), ("bkgdb bkg_2d", ours)):
        value, error = fov_norm(store.obs(23523))
        print(f"{label:16s} FoV background norm of run 23523: {value:.3f} +- {error:.3f}")


if __name__ == "__main__":
    main(sys.argv[1])
