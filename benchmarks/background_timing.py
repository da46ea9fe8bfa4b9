"""Benchmark: assembling a background from ~100 stored pieces vs recomputing it from event files.

Usage: python benchmarks/background_timing.py   (needs $GAMMAPY_DATA; builds a fresh SQLite catalogue)

Prints, for H.E.S.S. DL3 DR1 target run 23523 with every other run as a candidate:
- the library time of select + load pieces + sum, warm, median of 20;
- the wall time of the `bkgdb background` command, next to `bkgdb --help` (Python start-up);
- the time to make the same model from the event files (read, exclude, histogram, exposure).
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session

from bkgdb.background import BackgroundBuilder
from bkgdb.config import BkgdbConfig, SelectionSettings, load_config
from bkgdb.gadf.datastore import DL3Datastore
from bkgdb.gadf.events import read_events
from bkgdb.makers.assembly import assemble_background
from bkgdb.makers.piece import PieceMaker
from bkgdb.store.catalogue import RunCatalogue

REPO = Path(__file__).resolve().parent.parent
TARGET = 23523


def timed(function, repeat=20):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main():
    datastore = Path(os.environ["GAMMAPY_DATA"], "hess-dl3-dr1")
    base = load_config(REPO / "configs" / "hess-dr1.yaml")
    config = BkgdbConfig(binnings=base.binnings, exclusion=base.exclusion,
                         selection=SelectionSettings(el_diff=None, az_diff=None, gal_lat_min=0))
    with tempfile.TemporaryDirectory() as folder:
        db = str(Path(folder, "bench.sqlite"))
        catalogue = RunCatalogue.open(db)
        catalogue.index(datastore, config=config, jobs=2)
        builder = BackgroundBuilder(catalogue, config)
        builder.build(TARGET)  # warm-up: imports, first queries

        with Session(catalogue.engine) as session:
            seconds, built = timed(lambda: builder.build(TARGET, session=session))
        n_runs = len(built.selection.obs_ids)
        print(f"runs summed: {n_runs} ({built.assembled.ontime_s / 3600:.1f} h)")
        print(f"library: select + load + sum (build)          {1e3 * seconds:8.1f} ms (median of 20)")

        config_file = Path(folder, "bench.yaml")
        config_file.write_text((REPO / "configs" / "hess-dr1.yaml").read_text().replace(
            "el_diff: 0.15", "el_diff: null").replace("gal_lat_min: 10", "gal_lat_min: 0").replace(
            "n_tels: 3", "n_tels: null"))
        command = [sys.executable, "-m", "bkgdb.cli.main", "--db", db]
        help_time, _ = timed(lambda: subprocess.run(command + ["--help"], capture_output=True, check=True), 3)
        out = Path(folder, "bkg.fits")
        run_time, _ = timed(lambda: subprocess.run(
            command + ["background", str(TARGET), "--config", str(config_file), "-o", str(out), "--overwrite"],
            capture_output=True, check=True), 3)
        print(f"command: bkgdb --help (start-up)                {1e3 * help_time:8.0f} ms")
        print(f"command: bkgdb background ... -o bkg.fits       {1e3 * run_time:8.0f} ms")

        store = DL3Datastore(datastore)
        sources = {source.obs_id: source for source in store.runs()}
        maker = PieceMaker(config.binning, config.exclusion)

        def from_event_files():
            pieces = []
            for obs_id in built.selection.obs_ids:
                source = sources[obs_id]
                events = read_events(source, source.events_path.read_bytes(), with_events=True)
                header = events.header
                pieces.append(maker.run(events.ra_deg, events.dec_deg, events.energy_tev, header.get("RA_PNT"),
                                        header.get("DEC_PNT"), header.get("ONTIME"), header.get("LIVETIME")))
            return assemble_background(pieces, config.binning)

        recompute, assembled = timed(from_event_files, 3)
        assert np.array_equal(assembled.counts, built.assembled.counts)
        print(f"recomputed from {n_runs} event files                {1e3 * recompute:8.0f} ms (median of 3)")
        print(f"speed-up of the library call: {recompute / seconds:.0f}x")


if __name__ == "__main__":
    main()
