"""Bias of each smoothing method per offset bin, against a known simulated truth.

The smoother is fed `AssembledBackground`s whose counts are Poisson draws of the expected counts
of `bkgdb.simulate.BackgroundTruth` (12 energy x 10 offset bins, 0-2.5 deg, the exposure of 32
runs of 1800 s by default). Per offset bin it prints, over the energy slices with at least
``--min-counts`` expected counts:

- ``exact``: max |smoothed / true - 1| (%) when the smoother gets the expected counts themselves
  (no noise: the method's systematic bias);
- ``mean``: max |<smoothed> / true - 1| (%) over ``--draws`` Poisson draws, and that in units
  of the error of the mean (sigma): what statistics-dependent weighting adds;
- ``noise``: the median scatter (%) of one draw, next to that of the unsmoothed rate.

With ``--fov`` the background is 3D: 20 x 20 FoV pixels over +-2.5 deg whose truth also has a
gradient in FoV lat (``--gradient``, per deg, e.g. toward the horizon), and the columns are rings
of pixel centres 0.25 deg wide (pixels beyond 2.5 deg, the FoV's corners, in the last).

Usage: ``python benchmarks/smoothing_bias.py [--runs 32] [--draws 400] [--offset-sigma 1.5] [--fov]``.
"""

import argparse
import time

import numpy as np

from bkgdb.geometry import PieceGeometry
from bkgdb.makers.assembly import AssembledBackground
from bkgdb.makers.smoothing import SMOOTHING_METHODS_3D, BackgroundSmoother
from bkgdb.simulate import BackgroundTruth


def fov_expected_counts(truth, geometry, ontime, gradient, samples=8):
    """Expected counts per (energy, lon, lat) pixel of ``truth`` times ``1 + gradient * lat``."""
    lo, hi = geometry.energy_edges[:-1], geometry.energy_edges[1:]
    g = truth.index
    energy = truth.norm * 1e6 * (lo ** (1 - g) - hi ** (1 - g)) / (g - 1)
    t = (np.arange(samples) + 0.5) / samples
    lon = np.radians((geometry.fov_lon_edges[:-1, None] + np.diff(geometry.fov_lon_edges)[:, None] * t).ravel())
    lat = np.radians((geometry.fov_lat_edges[:-1, None] + np.diff(geometry.fov_lat_edges)[:, None] * t).ravel())
    lon, lat = np.meshgrid(lon, lat, indexing="ij")
    offset = np.degrees(np.arccos(np.cos(lon) * np.cos(lat)))
    value = np.exp(-0.5 * (offset / truth.offset_sigma_deg) ** 2) * (1 + gradient * np.degrees(lat))
    n_lon, n_lat = geometry.spatial_shape

    def per_pixel(a):
        return a.reshape(n_lon, samples, n_lat, samples).sum(axis=(1, 3))

    spatial = per_pixel(value * np.cos(lat)) / per_pixel(np.cos(lat)) * geometry.solid_angle_sr * ontime
    return energy[:, None, None] * spatial[None]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=32, help="runs of 1800 s summed")
    parser.add_argument("--draws", type=int, default=400, help="Poisson draws")
    parser.add_argument("--offset-sigma", type=float, default=1.5, help="width of the true offset profile (deg)")
    parser.add_argument("--min-counts", type=float, default=100, help="expected counts for a bin to count")
    parser.add_argument("--sigma", type=float, default=1.0, help="smooth_sigma (bins)")
    parser.add_argument("--methods", default=None, help="comma-separated; default: all that apply")
    parser.add_argument("--fov", action="store_true", help="3D: 20 x 20 FoV pixels with a gradient in lat")
    parser.add_argument("--gradient", type=float, default=-0.12, help="3D: relative rate change per deg of lat")
    args = parser.parse_args()

    energy = np.geomspace(0.1, 100, 13)
    ontime = args.runs * 1800.0
    truth = BackgroundTruth(offset_sigma_deg=args.offset_sigma)
    if args.fov:
        geometry = PieceGeometry.fov(energy, np.linspace(-2.5, 2.5, 21), np.linspace(-2.5, 2.5, 21))
        expected = fov_expected_counts(truth, geometry, ontime, args.gradient)
        ring = np.minimum(geometry.spatial_offset_deg // 0.25, 10).astype(int).ravel()
        methods = SMOOTHING_METHODS_3D
    else:
        geometry = PieceGeometry.offset(energy, np.linspace(0, 2.5, 11))
        expected = truth.expected_counts(energy, geometry.offset_edges, ontime)
        ring = np.arange(10)
        methods = BackgroundSmoother.available_methods
    exposure = np.full(geometry.spatial_shape, ontime)
    exact = AssembledBackground(geometry, expected, exposure, ontime, args.runs)
    true_rate = exact.rate
    rng = np.random.default_rng(1)
    draws = [AssembledBackground(geometry, rng.poisson(expected), exposure, ontime, args.runs)
             for _ in range(args.draws)]
    enough = (expected >= args.min_counts).reshape(len(energy) - 1, -1)
    columns = int(ring.max()) + 1
    print(f"truth: offset sigma {args.offset_sigma} deg" + (f", lat gradient {args.gradient:g}/deg" if args.fov else "")
          + f", {args.runs} runs x 1800 s, {args.draws} draws, "
          f"bins with >= {args.min_counts:g} expected counts ({enough.sum()} of {enough.size})")
    header = " ".join(f"{'bin ' + str(j):>6}" for j in range(columns))
    print(f"{'method':>11} {'':>12} {header}")

    def in_column(j):
        return enough & (ring == j)[np.newaxis, :]

    def worst(values):
        values = values.reshape(enough.shape)
        return [np.max(np.where(in_column(j), values, 0.0)) for j in range(columns)]

    for method in (args.methods.split(",") if args.methods else methods):
        smoother = BackgroundSmoother(method, sigma=args.sigma)
        start = time.perf_counter()
        relative = np.array([smoother.run(draw) for draw in draws]) / true_rate - 1
        elapsed = (time.perf_counter() - start) / args.draws
        systematic = np.abs(smoother.run(exact) / true_rate - 1)
        mean = relative.mean(axis=0)
        scatter = relative.std(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            pull = np.abs(mean) / (scatter / np.sqrt(args.draws))
        rows = [("exact (%)", 100 * systematic), ("mean (%)", 100 * np.abs(mean)), ("mean (sigma)", pull)]
        for label, values in rows:
            print(f"{method:>11} {label:>12} " + " ".join(f"{v:6.2f}" if "%" in label else f"{v:6.1f}"
                                                             for v in worst(values)))
        scatter = scatter.reshape(enough.shape)
        noise = [np.median(scatter[in_column(j)]) * 100 if in_column(j).any() else 0.0 for j in range(columns)]
        print(f"{method:>11} {'noise (%)':>12} " + " ".join(f"{v:6.2f}" for v in noise)
              + f"   ({1e3 * elapsed:.1f} ms per model)")


if __name__ == "__main__":
    main()
