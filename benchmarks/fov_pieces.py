"""Benchmark: the per-run work of indexing H.E.S.S. DL3 DR1 with 2D pieces alone and with 2D + 3D ALTAZ pieces.

Times `~bkgdb.makers.run.process_run` (read the file once, describe the run, make its pieces),
which is what each index worker does, in this process, over every DR1 run: with the config's 2D
binning alone, and with it plus a 3D ALTAZ geometry of 20 energies x 24 x 24 pixels over
+-2.5 deg. Also the whole index into a new SQLite file (2D, 2D + 3D; 1 and 2 processes), and the bytes a 3D piece takes as
stored (zlib-compressed counts, excluded counts and exposure).

Usage: python benchmarks/fov_pieces.py [--config FILE] [--repeat N]   (needs $GAMMAPY_DATA)
"""

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

from bkgdb.config import FovBinning, load_config
from bkgdb.gadf.datastore import DL3Datastore
from bkgdb.makers.piece import COUNTS_DTYPE, EXPOSURE_DTYPE, encode_array
from bkgdb.makers.run import RunJob, process_run
from bkgdb.store.catalogue import RunCatalogue

REPO = Path(__file__).resolve().parent.parent


def per_run_seconds(store, specs):
    """Seconds of `process_run` per run, and the results."""
    seconds, results = [], []
    for source in store.runs():
        start = time.perf_counter()
        result = process_run(RunJob(source, store.meta, specs=specs))
        seconds.append(time.perf_counter() - start)
        assert result.error is None, (source.obs_id, result.error)
        results.append(result)
    return seconds, results


def piece_bytes(piece):
    return (len(encode_array(piece.counts, COUNTS_DTYPE)) + len(encode_array(piece.excluded_counts, COUNTS_DTYPE))
            + len(encode_array(piece.exposure_s, EXPOSURE_DTYPE)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "default.yaml"))
    parser.add_argument("--repeat", type=int, default=1, help="best of N")
    args = parser.parse_args()
    datastore = Path(os.environ["GAMMAPY_DATA"], "hess-dl3-dr1")
    config = load_config(args.config)
    binning, exclusion = config.binning, config.exclusion
    fov = FovBinning(e_min=binning.e_min, e_max=binning.e_max, e_bins=binning.e_bins, fov_max=2.5, fov_bins=24,
                     fov_alignment="ALTAZ")
    store = DL3Datastore(datastore)
    process_run(RunJob(store.runs()[0], store.meta, specs=[(binning, exclusion), (fov, exclusion)]))  # imports

    rows = []
    for label, specs in (("2D", [(binning, exclusion)]), ("2D + 3D ALTAZ", [(binning, exclusion), (fov, exclusion)])):
        best = min((per_run_seconds(store, specs) for _ in range(args.repeat)), key=lambda item: sum(item[0]))
        rows.append((label, best[0]))
        if len(specs) == 2:
            sizes = [piece_bytes(result.pieces[1][2]) for result in best[1]]
    indexes = []
    for label, binnings in (("2D", [binning]), ("2D + 3D ALTAZ", [binning, fov])):
        for jobs in (1, 2):
            with tempfile.TemporaryDirectory() as folder:
                catalogue = RunCatalogue.open(f"sqlite:///{Path(folder, 'bench.sqlite')}")
                start = time.perf_counter()
                report = catalogue.index(datastore, config=dataclasses.replace(config, binnings=binnings), jobs=jobs)
                indexes.append((label, jobs, time.perf_counter() - start, report.summary()))
                catalogue.engine.dispose()

    print(f"H.E.S.S. DL3 DR1 ({len(rows[0][1])} runs), {args.config}, 1 process, {os.cpu_count()} CPUs")
    print(f"| {'pieces per run':16s} | {'all runs s':>10s} | {'median per run ms':>17s} | {'max ms':>7s} |")
    print(f"|{'-' * 18}|{'-' * 11}:|{'-' * 18}:|{'-' * 8}:|")
    for label, seconds in rows:
        print(f"| {label:16s} | {sum(seconds):10.2f} | {1e3 * statistics.median(seconds):17.1f} | "
              f"{1e3 * max(seconds):7.1f} |")
    for label, jobs, seconds, summary in indexes:
        print(f"whole index into a new SQLite file, {label}, --jobs {jobs}: {seconds:.2f} s ({summary})")
    print(f"3D piece (20 x 24 x 24) as stored: median {statistics.median(sizes):,.0f} bytes, "
          f"min {min(sizes):,}, max {max(sizes):,}")


if __name__ == "__main__":
    main()
