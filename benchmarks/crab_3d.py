"""H.E.S.S. Crab run 23523: bkgdb's 3D background against H.E.S.S.'s own ``bkg_3d``, pixel by pixel.

Usage: python benchmarks/crab_3d.py [CONFIG ...]   (needs $GAMMAPY_DATA; default configs/hess-dr1.yaml)

Indexes H.E.S.S. DL3 DR1 into a temporary SQLite catalogue with each config, builds the 3D
background of run 23523 from the other runs, and compares it with the model in the run file:

- the IRFs themselves, where both are aligned with RA/Dec (DR1's ``bkg_3d`` is, with FoV lon
  reversed: gammapy reads it as ``REVERSE_LON_RADEC``): the ratio bkgdb / H.E.S.S. at bkgdb's pixel
  centres above 1 TeV, within 2 deg of the centre;
- what gammapy predicts with each (``MapDatasetMaker``, any alignment, bkgdb's model in its own frame
  rather than relabelled as gammapy relabels any model of a H.E.S.S. run): the ratio of the predicted
  counts per sky pixel (0.1 deg) and energy bin above 1 TeV within 2 deg of the pointing;
- the FoV background norm of each (Crab masked, 0.7-50 TeV, as ``crab_fov_norm.py``).

Median and the 16-84 % range of the ratios are printed; a ratio's spread includes bkgdb's
Poisson noise (about 100 runs of 28 min).
"""

import os
import sys
import tempfile
import time

import numpy as np

CRAB = (83.633, 22.014, 0.4)
TARGET = 23523


def spread(values):
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    low, median, high = np.percentile(values, [16, 50, 84])
    return f"median {median:.3f}, 16-84 % {low:.3f}-{high:.3f} ({len(values)} values)"


def irf_ratio(model, reference):
    """bkgdb / reference at the model's bin centres above 1 TeV, pixel centres within 2 deg."""
    from astropy import units as u

    energy = model.axes["energy"].center
    lon, lat = model.axes["fov_lon"].center, model.axes["fov_lat"].center
    energy_grid, lon_grid, lat_grid = np.meshgrid(energy, lon, lat, indexing="ij")
    sign = -1 if reference.fov_alignment.name == "REVERSE_LON_RADEC" else 1
    theirs = reference.evaluate(energy=energy_grid, fov_lon=sign * lon_grid, fov_lat=lat_grid).to_value(model.unit)
    offset = np.hypot(lon_grid.to_value("deg"), lat_grid.to_value("deg"))
    use = (energy_grid >= 1 * u.TeV) & (offset < 2) & (theirs > 0) & (model.data > 0)
    return model.data[use] / theirs[use]


def predicted_ratio(observation, model):
    """Ratio of gammapy's predicted counts with bkgdb's model and with the file's, per pixel above 1 TeV."""
    from astropy import units as u
    from gammapy.makers import MapDatasetMaker
    from gammapy.maps import MapAxis, WcsGeom

    energy = MapAxis.from_energy_bounds(1, 10, nbin=5, unit="TeV")
    geom = WcsGeom.create(skydir=observation.pointing.fixed_icrs, binsz=0.1, width=4, frame="icrs", axes=[energy])
    from bkgdb.fov_fit import model_background

    maker = MapDatasetMaker(fov_rotation_step=0.5 * u.deg)
    theirs = maker.make_background(geom, observation)
    # Not through observation.bkg, which relabels any model of a DR1 run REVERSE_LON_RADEC (bkgdb.gadf.sash).
    ours = model_background(maker, geom, observation, model)
    offset = geom.separation(observation.pointing.fixed_icrs).to_value("deg")
    use = np.broadcast_to(offset < 2, geom.data_shape) & (theirs.data > 0)
    per_bin = ours.data[use] / theirs.data[use]
    summed = ours.data.sum(axis=0)[offset < 2] / theirs.data.sum(axis=0)[offset < 2]
    return per_bin, summed, float(ours.data[use].sum() / theirs.data[use].sum())


def main(configs):
    from astropy.utils import iers
    from gammapy.data import DataStore

    from bkgdb.catalogue import Catalogue
    from bkgdb.fov_fit import fov_background_norm

    iers.conf.auto_download = False
    datastore = os.path.join(os.environ["GAMMAPY_DATA"], "hess-dl3-dr1")
    observation = DataStore.from_dir(datastore).obs(TARGET)
    reference = observation.bkg
    for config in configs:
        with tempfile.TemporaryDirectory() as folder:
            catalogue = Catalogue.open(f"sqlite:///{folder}/dr1.sqlite", config=config)
            start = time.perf_counter()
            catalogue.index(datastore, jobs=2)
            indexed = time.perf_counter() - start
            built = catalogue.build(TARGET, three_d=True)
        model = built.model
        print(f"{config}: {built.geometry_label} {model.data.shape}, {len(built.selection.obs_ids)} runs, "
              f"index {indexed:.1f} s")
        if model.fov_alignment.name == "RADEC" and reference.fov_alignment.name.endswith("RADEC"):
            print(f"  IRF ratio bkgdb / H.E.S.S. above 1 TeV, < 2 deg: {spread(irf_ratio(model, reference))}")
        per_bin, summed, total = predicted_ratio(observation, model)
        print(f"  predicted counts ratio per pixel and energy bin (1-10 TeV, < 2 deg): {spread(per_bin)}")
        print(f"  predicted counts ratio per pixel, 1-10 TeV summed: {spread(summed)}; all pixels {total:.3f}")
        for label, bkg in (("bkgdb 3D", model), ("H.E.S.S. bkg_3d", None)):
            # bkgdb's model in its own frame; H.E.S.S.'s as gammapy reads it (REVERSE_LON_RADEC).
            norm = fov_background_norm(observation, [CRAB], energy_range_tev=(0.7, 50), binsz_deg=0.02,
                                       aeff_safe_mask=True, model=bkg)
            print(f"  FoV background norm with {label}: {norm.value:.3f} +- {norm.error:.3f}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["configs/hess-dr1.yaml"])
