"""Benchmark: fitting the condition model on archives of simulated pieces, and moving pieces with it.

Usage: python benchmarks/condition_model_fit.py [N_RUNS ...]   (default 60 250 1000; no data needed)

Pieces are Poisson draws from `bkgdb.simulate.BackgroundTruth` with a zenith-dependent threshold,
zeniths 10-60 deg, azimuths and optical efficiencies random, 20 energy x 10 offset bins. Prints per
archive size the fit time (done once per archive state; the result is cached in the database),
the parameters found next to the simulated ones, and the time to move 100 pieces to a target.
"""

import sys
import time

import numpy as np

from bkgdb.config import Binning
from bkgdb.makers.condition_fit import ConditionModelFitter
from bkgdb.makers.condition_model import RunConditions
from bkgdb.simulate import BackgroundTruth

BINNING = Binning(e_min=0.1, e_max=100, e_bins=20, off_min=0, off_max=2.5, off_bins=10)
TRUTH = BackgroundTruth(norm=1e-4, threshold_tev=0.3, threshold_zenith_index=2.5, rate_zenith_index=1.0)


def archive(n_runs, rng):
    zeniths = rng.uniform(10, 60, n_runs)
    expected = {round(z, 1): TRUTH.expected_counts(BINNING.energy_edges, BINNING.offset_edges, 1800.0, round(z, 1))
                for z in zeniths}
    counts = np.array([rng.poisson(expected[round(z, 1)]) for z in zeniths])
    conditions = [RunConditions(round(z, 1), float(rng.uniform(0, 360)), float(rng.uniform(0.8, 1.1)))
                  for z in zeniths]
    return counts, np.full((n_runs, BINNING.off_bins), 1800.0), conditions


def main(sizes):
    rng = np.random.default_rng(0)
    true_rate = TRUTH.rate_zenith_index + TRUTH.threshold_zenith_index * (TRUTH.index - 1)
    print(f"simulated: energy_zenith {TRUTH.threshold_zenith_index:.2f}, rate_zenith {true_rate:.2f}, "
          "no azimuth or optical-efficiency dependence")
    for n_runs in sizes:
        counts, exposure, conditions = archive(n_runs, rng)
        start = time.perf_counter()
        fit = ConditionModelFitter(counts, exposure, BINNING.energy_edges, conditions).run()
        fit_s = time.perf_counter() - start
        chosen = slice(0, min(100, n_runs))
        start = time.perf_counter()
        for _ in range(20):
            fit.model.apply(counts[chosen], BINNING.energy_edges, conditions[chosen], RunConditions(45.0, 180.0, 1.0))
        apply_ms = (time.perf_counter() - start) / 20 * 1e3
        params = ", ".join(f"{key} {value:.3f}" for key, value in fit.model.params.items())
        print(f"{n_runs:5d} runs: fit {fit_s:6.1f} s ({params}); moving {chosen.stop} pieces {apply_ms:.1f} ms")


if __name__ == "__main__":
    main([int(arg) for arg in sys.argv[1:]] or [60, 250, 1000])
