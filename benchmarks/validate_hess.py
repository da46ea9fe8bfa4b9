"""Time `bkgdb validate` on every H.E.S.S. DR1 target of configs/hess-dr1.yaml and print its summary.

Usage: python benchmarks/validate_hess.py [--jobs N] [--config FILE]   (needs $GAMMAPY_DATA)

Indexes DR1 into a temporary SQLite file (not timed), then runs the whole `bkgdb validate`
command twice, without and with the control-ring normalisation (a copy of the config with
``background_selection.normalisation: {method: control-ring, offset_min: 2.0, offset_max: 2.5}``),
and prints the wall-clock time and the summary of each.
"""

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BKGDB = [sys.executable, "-m", "bkgdb.cli"]


def run_validate(database, datastore, config, jobs, rows_file):
    start = time.perf_counter()
    result = subprocess.run([*BKGDB, "--db", str(database), "validate", str(datastore), "--config", str(config),
                             "--jobs", str(jobs), "-o", str(rows_file)], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"bkgdb validate failed:\n{result.stderr}")
    return elapsed, result.stdout


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "hess-dr1.yaml")
    args = parser.parse_args()
    datastore = Path(os.environ["GAMMAPY_DATA"]) / "hess-dl3-dr1"
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        database = folder / "hess.sqlite"
        subprocess.run([*BKGDB, "--db", str(database), "index", str(datastore), "--config", str(args.config),
                        "--jobs", str(args.jobs)], check=True, capture_output=True)
        ring_config = folder / "hess-dr1-control-ring.yaml"
        values = yaml.safe_load(args.config.read_text())
        values["background_selection"]["normalisation"] = {"method": "control-ring", "offset_min": 2.0,
                                                           "offset_max": 2.5}
        ring_config.write_text(yaml.safe_dump(values, sort_keys=False))
        for label, config in (("no normalisation", args.config), ("control-ring normalisation", ring_config)):
            rows_file = folder / "rows.csv"
            elapsed, summary = run_validate(database, datastore, config, args.jobs, rows_file)
            with rows_file.open() as handle:
                n_rows = sum(1 for _ in csv.DictReader(handle))
            print(f"== {label}: bkgdb validate of {n_rows} DR1 targets with --jobs {args.jobs}: {elapsed:.1f} s "
                  f"(whole command, {os.cpu_count()} cores)")
            print(summary)


if __name__ == "__main__":
    main()
