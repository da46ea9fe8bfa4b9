"""Benchmark: the per-run work of indexing H.E.S.S. DL3 DR1 with 2D pieces alone and with 3D RADEC or ALTAZ pieces.

Times `~bkgdb.makers.run.process_run` (read the file once, describe the run, make its pieces),
which is what each index worker does, in this process, over every DR1 run: with the config's 2D
binning alone, and with it plus a 3D geometry of 20 energies x 24 x 24 pixels over +-2.5 deg,
RADEC or ALTAZ. Also the whole index into a new SQLite file (1 and 2 processes), and the bytes a
3D piece takes as stored (zlib-compressed counts, excluded counts and exposure).

``--accuracy`` also compares, on every DR1 run, the ALTAZ FoV coordinates of 3D pieces (a run's
`~bkgdb.makers.fov.AltAzTrack`) with astropy's frame transform of each event at its own time
into gammapy's ``FoVAltAzFrame``: the largest difference and the share of events whose pixel
differs.

Usage: python benchmarks/fov_pieces.py [--config FILE] [--repeat N] [--no-index] [--accuracy]   (needs $GAMMAPY_DATA)
"""

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bkgdb.config import FovBinning, load_config
from bkgdb.gadf.datastore import DL3Datastore
from bkgdb.makers.run import RunJob, process_run

REPO = Path(__file__).resolve().parent.parent


def per_run_seconds(store, specs, repeat):
    """Wall and CPU seconds of `process_run` per run, each the best of ``repeat`` (other processes only add)."""
    wall, cpu, results = [], [], []
    for source in store.runs():
        best_wall = best_cpu = float("inf")
        for _ in range(repeat):
            start, start_cpu = time.perf_counter(), time.process_time()
            result = process_run(RunJob(source, store.meta, specs=specs))
            best_wall = min(best_wall, time.perf_counter() - start)
            best_cpu = min(best_cpu, time.process_time() - start_cpu)
        assert result.error is None, (source.obs_id, result.error)
        wall.append(best_wall)
        cpu.append(best_cpu)
        results.append(result)
    return wall, cpu, results


def piece_bytes(piece):
    """Bytes of an `EncodedPiece`'s arrays, as the catalogue stores them."""
    return len(piece.encoded_counts) + len(piece.encoded_excluded_counts) + len(piece.encoded_exposure)


def track_accuracy(store, geometry):
    """Largest difference (arcsec) between the track and astropy, events compared, events changing pixel."""
    from astropy import units as u
    from astropy.coordinates import AltAz, SkyCoord, angular_separation
    from astropy.coordinates.erfa_astrom import ErfaAstromInterpolator, erfa_astrom
    from gammapy.utils.coordinates import FoVAltAzFrame

    from bkgdb.gadf.events import read_events
    from bkgdb.makers.fov import altaz_track
    from bkgdb.makers.run import run_clock
    from bkgdb.makers.sphere import fov_matrix, lon_lat_deg, unit_vectors

    edges = geometry.fov_lon_edges
    worst, n_events, n_changed = 0.0, 0, 0
    for source in store.runs():
        events = read_events(source, source.events_path.read_bytes(), with_events=True)
        ra0, dec0 = float(events.header.get("RA_PNT")), float(events.header.get("DEC_PNT"))
        ontime, clock = float(events.header.get("ONTIME")), run_clock(events, source, store.meta)
        fov = unit_vectors(events.ra_deg, events.dec_deg) @ fov_matrix(ra0, dec0).T
        near = fov[:, 0] >= np.cos(np.radians(geometry.max_offset_deg))
        seconds = clock.event_seconds(near)
        track = altaz_track(clock, ra0, dec0, min(0.0, seconds.min()), max(ontime, seconds.max()),
                            geometry.max_offset_deg)
        lon, lat = lon_lat_deg(track.to_altaz(fov[near], seconds))
        times, site = clock.event_times(near), clock.observatory()
        with erfa_astrom.set(ErfaAstromInterpolator(300 * u.s)):
            origin = SkyCoord(ra0 * u.deg, dec0 * u.deg).transform_to(AltAz(obstime=times, location=site))
            exact = SkyCoord(events.ra_deg[near] * u.deg, events.dec_deg[near] * u.deg).transform_to(
                FoVAltAzFrame(origin=origin, location=site, obstime=times))
        lon_a, lat_a = exact.fov_lon.wrap_at(180 * u.deg).deg, exact.fov_lat.deg
        difference = angular_separation(lon * u.deg, lat * u.deg, lon_a * u.deg, lat_a * u.deg).to_value(u.arcsec)
        pixels = [np.searchsorted(edges, values) for values in (lon, lat, lon_a, lat_a)]
        worst = max(worst, difference.max())
        n_events += len(lon)
        n_changed += int(np.sum((pixels[0] != pixels[2]) | (pixels[1] != pixels[3])))
    return worst, n_events, n_changed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "default.yaml"))
    parser.add_argument("--repeat", type=int, default=1, help="best of N per run")
    parser.add_argument("--no-index", action="store_true", help="skip the whole-index timings")
    parser.add_argument("--accuracy", action="store_true", help="compare ALTAZ coordinates with astropy's")
    args = parser.parse_args()
    datastore = Path(os.environ["GAMMAPY_DATA"], "hess-dl3-dr1")
    config = load_config(args.config)
    binning, exclusion = config.binning, config.exclusion
    fovs = {
        alignment: FovBinning(e_min=binning.e_min, e_max=binning.e_max, e_bins=binning.e_bins, fov_max=2.5,
                              fov_bins=24, fov_alignment=alignment)
        for alignment in ("RADEC", "ALTAZ")
    }
    store = DL3Datastore(datastore)
    specs_of = {
        "2D": [binning],
        "2D + 3D RADEC": [binning, fovs["RADEC"]],
        "2D + 3D ALTAZ": [binning, fovs["ALTAZ"]],
    }
    process_run(RunJob(store.runs()[0], store.meta, specs=[(b, exclusion) for b in specs_of["2D + 3D ALTAZ"]]))

    rows, sizes = [], {}
    for label, binnings in specs_of.items():
        specs = [(b, exclusion) for b in binnings]
        seconds, cpu, results = per_run_seconds(store, specs, args.repeat)
        rows.append((label, seconds, cpu))
        if len(specs) == 2:
            sizes[label] = [piece_bytes(result.pieces[1][2]) for result in results]
    # Imported here: spawned index workers import this script as their main module.
    from bkgdb.store.catalogue import RunCatalogue

    indexes = []
    for label, binnings in specs_of.items() if not args.no_index else ():
        for jobs in (1, 2):
            with tempfile.TemporaryDirectory() as folder:
                catalogue = RunCatalogue.open(f"sqlite:///{Path(folder, 'bench.sqlite')}")
                start = time.perf_counter()
                report = catalogue.index(datastore, config=dataclasses.replace(config, binnings=binnings), jobs=jobs)
                indexes.append((label, jobs, time.perf_counter() - start, report.summary()))
                catalogue.engine.dispose()

    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"H.E.S.S. DL3 DR1 ({len(rows[0][1])} runs), {args.config}, 1 process, {os.cpu_count()} CPUs, "
          f"load {load}")
    print(f"| {'pieces per run':16s} | {'all runs s':>10s} | {'median per run ms':>17s} | {'max ms':>7s} | "
          f"{'CPU all runs s':>14s} | {'CPU median ms':>13s} |")
    print(f"|{'-' * 18}|{'-' * 11}:|{'-' * 18}:|{'-' * 8}:|{'-' * 15}:|{'-' * 14}:|")
    for label, seconds, cpu in rows:
        print(f"| {label:16s} | {sum(seconds):10.2f} | {1e3 * statistics.median(seconds):17.1f} | "
              f"{1e3 * max(seconds):7.1f} | {sum(cpu):14.2f} | {1e3 * statistics.median(cpu):13.1f} |")
    for label, jobs, seconds, summary in indexes:
        print(f"whole index into a new SQLite file, {label}, --jobs {jobs}: {seconds:.2f} s ({summary})")
    for label, values in sizes.items():
        print(f"3D piece (20 x 24 x 24) as stored, {label}: median {statistics.median(values):,.0f} bytes, "
              f"min {min(values):,}, max {max(values):,}")
    if args.accuracy:
        worst, n_events, n_changed = track_accuracy(store, fovs["ALTAZ"].geometry)
        print(f"ALTAZ track against astropy event by event: max {worst:.5f} arcsec over {n_events:,} events; "
              f"{n_changed} change pixel ({n_changed / n_events:.1e})")


if __name__ == "__main__":
    main()
