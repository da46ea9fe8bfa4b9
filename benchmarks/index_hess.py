"""Benchmark: index H.E.S.S. DL3 DR1 with background pieces; print times and database size.

Usage: python benchmarks/index_hess.py [--jobs N] [--db URL]   (needs $GAMMAPY_DATA)
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

from bkgdb.catalogue import RunCatalogue
from bkgdb.config import load_config

REPO = Path(__file__).resolve().parent.parent


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--db", default=None, help="database URL; default a new SQLite file")
    parser.add_argument("--config", default=str(REPO / "configs" / "hess-dr1.yaml"))
    args = parser.parse_args()
    datastore = Path(os.environ["GAMMAPY_DATA"], "hess-dl3-dr1")
    with tempfile.TemporaryDirectory() as folder:
        config = load_config(args.config)
        start = time.perf_counter()
        report = RunCatalogue.open(str(Path(folder, "runs-only.sqlite"))).index(datastore)
        print(f"{'catalogue only (SQLite)':24s} {time.perf_counter() - start:7.2f} s   {report.summary()}")

        url = args.db or str(Path(folder, "bench.sqlite"))
        catalogue = RunCatalogue.open(url)
        for label in (f"with pieces, {args.jobs} jobs", "again (nothing to do)"):
            start = time.perf_counter()
            report = catalogue.index(datastore, config=config, jobs=args.jobs)
            print(f"{label:24s} {time.perf_counter() - start:7.2f} s   {report.summary()}")
        if url.endswith(".sqlite"):
            with catalogue.engine.connect() as connection:
                connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            print(f"database size            {Path(url).stat().st_size / 1024:7.0f} KiB")
        from bkgdb.cache import PieceCache

        for row in PieceCache(catalogue.engine).summary():
            print(f"pieces: {row['pieces']} x {row['energy']} x {row['offset']}, "
                  f"{row['bytes_per_piece']:.0f} bytes of arrays per piece")


if __name__ == "__main__":
    main()
