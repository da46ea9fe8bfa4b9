"""Time `bkgdb validate` on every H.E.S.S. DR1 target of configs/hess-dr1.yaml and print its summary.

Usage: python benchmarks/validate_hess.py [--jobs N] [--config FILE]   (needs $GAMMAPY_DATA)

Indexes DR1 into a temporary SQLite file (not timed), then runs the whole `bkgdb validate`
command four times: with the config as it is, and with copies that add the control-ring
normalisation (``background_selection.normalisation: {method: control-ring, offset_min: 2.0,
offset_max: 2.5}``, all energies, then 0.5-10 TeV only, then combined by inverse variance with
the model's run-to-run scatter of 0.12 that the first run measures), and prints for each the wall-clock time,
the CPU time of the command and its workers, and the summary.
"""

import argparse
import csv
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BKGDB = [sys.executable, "-m", "bkgdb.cli.main"]


def run_validate(database, datastore, config, jobs, rows_file):
    start, cpu_before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run([*BKGDB, "--db", str(database), "validate", str(datastore), "--config", str(config),
                             "--jobs", str(jobs), "-o", str(rows_file)], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    if result.returncode != 0:
        sys.exit(f"bkgdb validate failed:\n{result.stderr}")
    return elapsed, cpu, result.stdout


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
        configs = [("config as it is", args.config)]
        for label, energies in (("control ring 2.0-2.5 deg, all energies", {}),
                                ("control ring 2.0-2.5 deg, 0.5-10 TeV", {"e_min": 0.5, "e_max": 10.0}),
                                ("control ring 2.0-2.5 deg, 0.5-10 TeV, combined with model scatter 0.12",
                                 {"e_min": 0.5, "e_max": 10.0, "model_scatter": 0.12})):
            values = yaml.safe_load(args.config.read_text())
            values["background_selection"]["normalisation"] = {"method": "control-ring", "offset_min": 2.0,
                                                               "offset_max": 2.5, **energies}
            path = folder / f"control-ring-{len(configs)}.yaml"
            path.write_text(yaml.safe_dump(values, sort_keys=False))
            configs.append((label, path))
        for number, (label, config) in enumerate(configs):
            rows_file = folder / f"rows-{number}.csv"  # validate refuses to replace an existing file
            elapsed, cpu, summary = run_validate(database, datastore, config, args.jobs, rows_file)
            with rows_file.open() as handle:
                n_rows = sum(1 for _ in csv.DictReader(handle))
            print(f"== {label}: bkgdb validate of {n_rows} DR1 targets with --jobs {args.jobs}: {elapsed:.1f} s "
                  f"wall clock, {cpu:.1f} s CPU (command and workers; {os.cpu_count()} cores, load average "
                  f"{os.getloadavg()[0]:.1f})")
            print(summary)


if __name__ == "__main__":
    main()
