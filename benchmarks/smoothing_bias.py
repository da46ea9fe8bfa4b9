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

Usage: ``python benchmarks/smoothing_bias.py [--runs 32] [--draws 400] [--offset-sigma 1.5]``.
"""

import argparse
import time

import numpy as np

from bkgdb.makers.assembly import AssembledBackground
from bkgdb.config import Binning
from bkgdb.simulate import BackgroundTruth
from bkgdb.makers.smoothing import BackgroundSmoother


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=32, help="runs of 1800 s summed")
    parser.add_argument("--draws", type=int, default=400, help="Poisson draws")
    parser.add_argument("--offset-sigma", type=float, default=1.5, help="width of the true offset profile (deg)")
    parser.add_argument("--min-counts", type=float, default=100, help="expected counts for a bin to count")
    parser.add_argument("--sigma", type=float, default=1.0, help="smooth_sigma (bins)")
    parser.add_argument("--methods", default=",".join(BackgroundSmoother.available_methods))
    args = parser.parse_args()

    binning = Binning(e_min=0.1, e_max=100, e_bins=12, off_min=0, off_max=2.5, off_bins=10)
    ontime = args.runs * 1800.0
    truth = BackgroundTruth(offset_sigma_deg=args.offset_sigma)
    expected = truth.expected_counts(binning.energy_edges, binning.offset_edges, ontime)
    exposure = np.full(binning.off_bins, ontime)
    exact = AssembledBackground(binning, expected, exposure, ontime, args.runs)
    true_rate = exact.rate
    rng = np.random.default_rng(1)
    draws = [AssembledBackground(binning, rng.poisson(expected), exposure, ontime, args.runs)
             for _ in range(args.draws)]
    enough = expected >= args.min_counts
    print(f"truth: offset sigma {args.offset_sigma} deg, {args.runs} runs x 1800 s, {args.draws} draws, "
          f"bins with >= {args.min_counts:g} expected counts ({enough.sum()} of {enough.size})")
    header = " ".join(f"{'bin ' + str(j):>6}" for j in range(binning.off_bins))
    print(f"{'method':>11} {'':>12} {header}")

    def worst(values):
        return [np.max(np.where(enough[:, j], values[:, j], 0.0)) for j in range(binning.off_bins)]

    for method in args.methods.split(","):
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
        noise = [np.median(scatter[:, j][enough[:, j]]) * 100 for j in range(binning.off_bins)]
        print(f"{method:>11} {'noise (%)':>12} " + " ".join(f"{v:6.2f}" for v in noise)
              + f"   ({1e3 * elapsed:.1f} ms per model)")


if __name__ == "__main__":
    main()
