"""Benchmark: background assembly from a large synthetic catalogue (default 10,000 runs).

Usage: python benchmarks/scale.py [--runs N] [--db URL]

Fills a fresh database with N runs of random zenith, azimuth, latitude, date and NSB, each with a
20 x 10 piece, then times `BackgroundBuilder.build` for 20 random targets: the default selection
(airmass 0.15, azimuth 45 deg, |b| > 10, 50 h requested), and the same with KL-divergence ranking.
"""

import argparse
import statistics
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session

from bkgdb.background import BackgroundBuilder
from bkgdb.catalogue import RunCatalogue, piece_row
from bkgdb.config import BkgdbConfig, Binning, ExclusionSettings, SelectionSettings
from bkgdb.models import BinningRow, Datastore, ExclusionRow, Run
from bkgdb.pieces import BackgroundPiece


def fill(catalogue, n_runs, config, seed=1):
    rng = np.random.default_rng(seed)
    binning = config.binning
    start = time.perf_counter()
    with Session(catalogue.engine) as session:
        store = Datastore(path="/synthetic/archive", obs_index_meta={})
        binning_row = BinningRow(hash=binning.hash, params=binning.params)
        exclusion_row = ExclusionRow(hash=config.exclusion.hash, params=config.exclusion.params)
        session.add_all([store, binning_row, exclusion_row])
        for obs_id in range(n_runs):
            zenith = float(rng.uniform(0, 60))
            day = date(2010, 1, 1) + timedelta(days=int(rng.integers(0, 5000)))
            run = Run(datastore=store, obs_id=obs_id, status="ok", zenith_deg=zenith, alt_deg=90 - zenith,
                      az_deg=float(rng.uniform(0, 360)), glat_deg=float(rng.uniform(-90, 90)),
                      tstart_mjd=55197.0 + (day - date(2010, 1, 1)).days, date_obs=day, ontime_s=1800.0,
                      n_tels=4, nsb_level=float(rng.uniform(3, 9)), extra={})
            counts = rng.poisson(50, size=binning.shape)
            piece = BackgroundPiece(counts, np.zeros_like(counts), np.full(binning.off_bins, 1800.0 * 0.95),
                                    1800.0, 1600.0)
            session.add_all([run, piece_row(piece, run, binning_row, exclusion_row, None)])
            if obs_id % 2000 == 1999:
                session.flush()
        session.commit()
    catalogue.refresh_statistics()  # as `index` does after bulk changes
    return time.perf_counter() - start


def median_ms(builder, targets):
    times, sizes = [], []
    with Session(builder.catalogue.engine) as session:
        builder.build(int(targets[0]), session=session)  # warm-up
        for target in targets:
            start = time.perf_counter()
            built = builder.build(int(target), session=session)
            times.append(time.perf_counter() - start)
            sizes.append(len(built.selection.obs_ids))
    return 1e3 * statistics.median(times), int(statistics.median(sizes))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--db", default=None, help="database URL; default a new SQLite file")
    args = parser.parse_args()
    binning = Binning(e_bins=20, off_bins=10)
    exclusion = ExclusionSettings(gammacat=None, hawc=None, star_cat=None)
    with tempfile.TemporaryDirectory() as folder:
        catalogue = RunCatalogue.open(args.db or str(Path(folder, "scale.sqlite")))
        base = BkgdbConfig(binnings=[binning], exclusion=exclusion)
        seconds = fill(catalogue, args.runs, base)
        print(f"{args.runs} runs with pieces written in {seconds:.1f} s ({catalogue.url})")
        targets = np.random.default_rng(2).choice(args.runs, 20, replace=False)
        for label, settings in (
            ("airmass + azimuth + |b|, 50 h", SelectionSettings(time_request=50)),
            ("same, ranked by KL divergence", SelectionSettings(time_request=50, KL_DIV=True)),
            ("airmass only, every match", SelectionSettings(az_diff=None, gal_lat_min=0)),
        ):
            config = BkgdbConfig(binnings=[binning], exclusion=exclusion, selection=settings)
            ms, n = median_ms(BackgroundBuilder(catalogue, config), targets)
            print(f"build, {label:32s} {ms:8.1f} ms for {n} runs summed (median of 20 targets)")


if __name__ == "__main__":
    main()
