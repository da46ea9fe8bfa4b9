"""A background with a gradient across the FoV, simulated and recovered: by hand and by bkgdb.

For each alignment of the truth (ALTAZ: brighter toward the horizon; RADEC: toward lower
declination and west), an archive of tracking runs at zeniths 20-45 deg all around the sky is
simulated (`bkgdb.simulate.DatastoreSimulator`), and the first run's background is made from the
others in both FoV alignments:

- ``by hand``: each event carried into the FoV frame at its own time (gammapy's frames) and binned,
  the counts over ontime x solid angle x energy width: an independent reference for bkgdb's pieces;
- ``bkgdb`` (with ``--bkgdb``): ``bkgdb index --config`` with a 3D binning and
  ``bkgdb background --3d`` through the command line (plain sums, no smoothing).

Printed per model: the median and the 16-84 % spread of model / truth per pixel (energy bins
with at least ``--min-counts`` counts per pixel on average; truth averaged over each bin for the
hand-made model, at bin centres for bkgdb's, which holds centre values), and the largest |pull| of
the target's counts against gammapy's predicted background counts in FoV quadrants x energy bands
(`bkgdb.simulate.compare`): small for the truth's alignment, large for the other.

Usage: ``python benchmarks/fov_truth.py [--runs 11] [--ontime 1800] [--bkgdb] [--folder DIR]``.
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from bkgdb.geometry import PieceGeometry
from bkgdb.simulate import DatastoreSimulator, FoVBackgroundTruth, datastore_with_backgrounds, radec_to_fov
from bkgdb.simulate.compare import pulls, quadrant_counts

TRUTHS = {
    "ALTAZ": FoVBackgroundTruth(norm=6e-4, index=2.4, energy_range_tev=(0.3, 100.0), alignment="ALTAZ",
                                lat_gradient=-0.3, gradient_energy_index=0.15),
    "RADEC": FoVBackgroundTruth(norm=6e-4, index=2.4, energy_range_tev=(0.3, 100.0), alignment="RADEC",
                                lon_gradient=0.2, lat_gradient=-0.25),
}
OTHER = {"ALTAZ": "RADEC", "RADEC": "ALTAZ"}
ENERGY_EDGES = np.geomspace(0.3, 30.0, 6)
FOV_EDGES = np.linspace(-2.5, 2.5, 25)
BANDS = [0.5, 1.0, 3.0]
RADIUS_DEG = 2.3


def horizontal_pointings(n_runs):
    """(zenith, azimuth) at mid-run: azimuths around the circle, zeniths 20-45 deg."""
    azimuths = (100.0 + np.arange(n_runs) * 360.0 / n_runs * 7) % 360.0
    zeniths = 20.0 + 25.0 * ((np.arange(n_runs) * 0.618) % 1.0)
    return list(zip(zeniths, azimuths, strict=True))


def hand_made_model(path, obs_ids, alignment):
    """The rate binned from the events of ``obs_ids`` in the FoV of ``alignment``; and its counts."""
    from gammapy.data import DataStore

    store = DataStore.from_dir(path)
    geometry = PieceGeometry.fov(ENERGY_EDGES, FOV_EDGES, FOV_EDGES, alignment)
    counts = np.zeros(geometry.shape)
    ontime = 0.0
    for obs_id in obs_ids:
        observation = store.obs(obs_id, required_irf=[])
        events, pointing = observation.events, observation.pointing.fixed_icrs
        lon, lat = radec_to_fov(events.radec.ra.deg, events.radec.dec.deg, events.time, pointing.ra.deg,
                                pointing.dec.deg, observation.observatory_earth_location, alignment)
        counts += geometry.histogram(events.energy.to_value("TeV"), lon, lat)
        ontime += observation.observation_time_duration.to_value("s")
    rate = counts / geometry.denominator(np.full(geometry.spatial_shape, ontime))
    return geometry, rate, counts


def truth_bin_average(truth, geometry, ontime_s):
    """The truth averaged over each bin (zero where no events are drawn)."""
    exposure = np.full(geometry.spatial_shape, ontime_s)
    return truth.expected_counts_on(geometry, ontime_s) / geometry.denominator(exposure)


def ratio_summary(model, truth_rate, counts, min_counts, inside):
    """Median and 16-84 % half-spread of model / truth over the pixels ``inside`` the drawn FoV, in
    energy bins with at least ``min_counts`` counts per pixel on average; and the spread Poisson
    statistics of ``counts`` alone give (the median of 1 / sqrt(counts))."""
    per_pixel = counts.sum(axis=(1, 2)) / counts[0].size
    use = (per_pixel >= min_counts)[:, None, None] & inside[None] & (truth_rate > 0)
    ratio = model[use] / truth_rate[use]
    low, median, high = np.percentile(ratio, [16, 50, 84])
    return median, 0.5 * (high - low), float(np.median(1 / np.sqrt(np.maximum(counts[use], 1))))


def target_pulls(path, target, alignment, model, folder, n_others):
    store = datastore_with_backgrounds(path, folder, {target: model})
    counts, npred = quadrant_counts(store, [target], alignment, BANDS, radius_deg=RADIUS_DEG)
    return pulls(counts, npred, model_variance=1.0 / (n_others * npred))


def bkgdb_model(path, target, alignment, folder):
    """``bkgdb index`` and ``bkgdb background --3d`` through the command line; the model read back."""
    from astropy.io import fits
    from gammapy.irf import Background3D

    from bkgdb.cli.main import app

    energy = {"e_min": float(ENERGY_EDGES[0]), "e_max": float(ENERGY_EDGES[-1]), "e_bins": len(ENERGY_EDGES) - 1}
    config = {
        "binning": [{**energy, "off_min": 0.0, "off_max": 2.5, "off_bins": 10},
                    {**energy, "fov_max": 2.5, "fov_bins": len(FOV_EDGES) - 1, "fov_alignment": alignment}],
        "exclusion": {"gammacat": "none", "hawc": "none", "star_cat": "none", "exclude_regions": []},
        "background_selection": {"el_diff": None, "az_diff": None, "gal_lat_min": 0, "assembly": "sum",
                                 "smooth_method": "none"},
        "config": {"njobs": 1},
    }
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    database, output = f"sqlite:///{folder / 'bkgdb.sqlite'}", folder / "model.fits"
    start = time.perf_counter()
    app(["--db", database, "index", str(path), "--config", str(config_path)], standalone_mode=False)
    indexed = time.perf_counter() - start
    app(["--db", database, "background", str(target), "--3d", "-o", str(output), "--config", str(config_path),
         "--overwrite"], standalone_mode=False)
    with fits.open(output) as hdus:
        name = next(hdu.name for hdu in hdus[1:] if hdu.header.get("HDUCLAS2") == "BKG")
    return Background3D.read(output, hdu=name), indexed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=11, help="runs per archive, the first being the target")
    parser.add_argument("--ontime", type=float, default=1800.0, help="ontime per run (s)")
    parser.add_argument("--min-counts", type=float, default=20.0, help="counts per pixel for a bin to be judged")
    parser.add_argument("--bkgdb", action="store_true", help="also index and build with bkgdb's command line")
    parser.add_argument("--folder", type=Path, default=None, help="where to write (default: a temporary folder)")
    args = parser.parse_args()
    folder = args.folder or Path(tempfile.mkdtemp(prefix="bkgdb-fov-truth-"))

    for alignment, truth in TRUTHS.items():
        path = folder / f"archive-{alignment.lower()}"
        start = time.perf_counter()
        obs_ids = DatastoreSimulator(truth=truth, horizontal=horizontal_pointings(args.runs), ontime_s=args.ontime,
                                     seed=8, first_obs_id=2000).run(path)
        simulated = time.perf_counter() - start
        target, others = obs_ids[0], obs_ids[1:]
        print(f"\ntruth {alignment}: {len(obs_ids)} runs of {args.ontime:.0f} s simulated in {simulated:.1f} s "
              f"({simulated / len(obs_ids):.2f} s per run); target {target}, model from {len(others)} runs")
        for model_alignment in (alignment, OTHER[alignment]):
            geometry, rate, counts = hand_made_model(path, others, model_alignment)
            # Pixels wholly within the drawn FoV (events go to truth.max_offset_deg).
            inside = geometry.spatial_offset_deg < truth.max_offset_deg - 0.15
            average = truth_bin_average(truth, geometry, args.ontime)
            median, spread, poisson = ratio_summary(rate, average, counts, args.min_counts, inside)
            model = geometry.to_irf(np.where(rate > 0, rate, rate[rate > 0].min()))
            found = target_pulls(path, target, alignment, model, folder / f"hand-{alignment}-{model_alignment}",
                                 len(others))
            print(f"  by hand, {model_alignment:5s} model: model/truth median {median:.3f}, spread {spread:.3f} "
                  f"(Poisson {poisson:.3f}); target max |pull| {np.abs(found).max():.1f}")
            if not args.bkgdb:
                continue
            try:
                built, indexed = bkgdb_model(path, target, model_alignment,
                                             folder / f"bkgdb-{alignment}-{model_alignment}")
            except Exception as error:  # a benchmark reports what fails and goes on
                print(f"  bkgdb,   {model_alignment:5s} model: failed: {error}")
                continue
            found = target_pulls(path, target, alignment, built, folder / f"with-{alignment}-{model_alignment}",
                                 len(others))
            head = (f"  bkgdb,   {model_alignment:5s} model ({built.fov_alignment.value}): target max |pull| "
                    f"{np.abs(found).max():.1f}; index {indexed:.1f} s")
            if built.data.shape != geometry.shape:
                print(f"{head}; model of shape {built.data.shape}, not {geometry.shape}: no pixel comparison")
                continue
            # bkgdb's models hold rates at bin centres, as gammapy reads them.
            truth_rate = truth.rate_on(PieceGeometry.fov(ENERGY_EDGES, FOV_EDGES, FOV_EDGES, model_alignment))
            median, spread, poisson = ratio_summary(built.data, truth_rate, counts, args.min_counts, inside)
            print(f"{head}; model/truth median {median:.3f}, spread {spread:.3f} (Poisson {poisson:.3f})")
    print(f"\nfiles in {folder}")


if __name__ == "__main__":
    main()
