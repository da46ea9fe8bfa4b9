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


def truth_bin_average(truth, geometry, steps=8):
    """The truth averaged over each bin: uniform in energy and over each pixel's grid of positions."""
    fractions = (np.arange(steps) + 0.5) / steps
    low, high = geometry.energy_edges[:-1], geometry.energy_edges[1:]
    energy = low[:, None] * (high / low)[:, None] ** fractions[None, :]  # (n_energy, steps), log-spaced
    weight = energy / energy.sum(axis=1, keepdims=True)  # dE = E dlnE
    lon_edges, lat_edges = geometry.fov_lon_edges, geometry.fov_lat_edges
    total = np.zeros(geometry.shape)
    for fx in fractions:
        lon = lon_edges[:-1] + fx * np.diff(lon_edges)
        for fy in fractions:
            lat = lat_edges[:-1] + fy * np.diff(lat_edges)
            rate = truth.fov_rate(energy[:, :, None, None], lon[None, None, :, None], lat[None, None, None, :])
            total += np.sum(weight[:, :, None, None] * rate, axis=1)
    return total / steps ** 2


def ratio_summary(model, truth_rate, counts_per_pixel, min_counts, inside):
    """Median and 16-84 % half-spread of model / truth over the pixels ``inside`` the drawn FoV, in
    well-filled energy bins."""
    use = (counts_per_pixel >= min_counts)[:, None, None] & inside[None] & (truth_rate > 0)
    ratio = model[use] / truth_rate[use]
    low, median, high = np.percentile(ratio, [16, 50, 84])
    return median, 0.5 * (high - low), int(use.sum())


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
            per_pixel = counts.sum(axis=(1, 2)) / counts[0].size
            # Pixels wholly within the drawn FoV (events go to truth.max_offset_deg).
            inside = geometry.spatial_offset_deg < truth.max_offset_deg - 0.15
            median, spread, n = ratio_summary(rate, truth_bin_average(truth, geometry), per_pixel, args.min_counts,
                                              inside)
            model = geometry.to_irf(np.where(rate > 0, rate, rate[rate > 0].min()))
            found = target_pulls(path, target, alignment, model, folder / f"hand-{alignment}-{model_alignment}",
                                 len(others))
            print(f"  by hand, {model_alignment:5s} model: model/truth median {median:.3f}, spread {spread:.3f} "
                  f"over {n} bins; target max |pull| {np.abs(found).max():.1f}")
            if not args.bkgdb:
                continue
            try:
                built, indexed = bkgdb_model(path, target, model_alignment,
                                             folder / f"bkgdb-{alignment}-{model_alignment}")
            except Exception as error:  # a benchmark reports what fails and goes on
                print(f"  bkgdb,   {model_alignment:5s} model: failed: {error}")
                continue
            lon, lat = np.meshgrid(built.axes["fov_lon"].center.to_value("deg"),
                                   built.axes["fov_lat"].center.to_value("deg"), indexing="ij")
            energy = built.axes["energy"].center.to_value("TeV")[:, None, None]
            truth_rate = truth.fov_rate(energy, lon[None], lat[None])
            data = built.data if built.data.shape == truth_rate.shape else built.data.transpose(0, 2, 1)
            median, spread, n = ratio_summary(data, truth_rate, per_pixel, args.min_counts, inside)
            found = target_pulls(path, target, alignment, built, folder / f"with-{alignment}-{model_alignment}",
                                 len(others))
            print(f"  bkgdb,   {model_alignment:5s} model ({built.fov_alignment.value}): model/truth median "
                  f"{median:.3f}, spread {spread:.3f} over {n} bins; target max |pull| {np.abs(found).max():.1f}; "
                  f"index {indexed:.1f} s")
    print(f"\nfiles in {folder}")


if __name__ == "__main__":
    main()
