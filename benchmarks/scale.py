"""Benchmark: select + assemble from large synthetic catalogues (1,000 to 100,000 runs), SQLite and PostgreSQL.

Usage: python benchmarks/scale.py [--runs 1000,10000,100000] [--db sqlite,postgresql] [--sizes 10,100,1000]
       [--postgres URL] [--condition-runs N] [--modes plain,kl,condition] [--3d]
       python benchmarks/scale.py --recompute 1000 [--recompute-source simulated|hess-dr1] [--rounds 3]

For each database and catalogue size, a fresh database is filled by bulk inserts (synthetic runs of
random zenith, azimuth, latitude, date and NSB, each with a 20 x 10 piece: no event files), then
`BackgroundBuilder.build` is timed for 10 random targets with the default criteria (airmass 0.15,
azimuth 45 deg, |b| > 10) and ``time_request`` set for 10, 100 and 1,000 runs of 0.5 h: plain,
ranked by KL divergence, and with the condition model (its one-off fit timed apart). PostgreSQL
databases are created and dropped by the script. With ``--3d`` the pieces are 3D (20 energies x
24 x 24 FoV pixels) and the backgrounds are built on them.

With ``--recompute N``: N + 1 runs are indexed, the background of the first is built from the other
N, and the same model is recomputed from their event files (read, exclude, histogram, exposure) and
compared bin by bin. The runs are simulated (`bkgdb.simulate`: about 6,000 events each, nothing to
exclude) or, with ``--recompute-source hess-dr1``, copies of the H.E.S.S. DR1 runs under new OBS_IDs
(about 10,000 events each, the sources and stars of configs/hess-dr1.yaml excluded) in a temporary
datastore. Each of ``--rounds`` rounds times builds, recomputes and times builds again; the speed-up
of a round is the recomputation over the mean build time around it, and the median over rounds is
the figure (one round on a machine whose speed drifts is a lottery). It then prints where a build's
time goes (`build_breakdown`).
"""

import argparse
import logging
import os
import statistics
import tempfile
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from bkgdb.background import BackgroundBuilder
from bkgdb.config import Binning, BkgdbConfig, ExclusionSettings, FovBinning, SelectionSettings
from bkgdb.makers.piece import BackgroundPiece
from bkgdb.makers.run import RUN_CHECKS_VERSION
from bkgdb.store.catalogue import RunCatalogue
from bkgdb.store.indexing import piece_values
from bkgdb.store.models import BinningRow, Datastore, ExclusionRow, PieceRow, RegionSet, Run

BINNING = Binning(e_bins=20, off_bins=10)
FOV_BINNING = FovBinning(e_bins=20, fov_max=2.5, fov_bins=24)
EXCLUSION = ExclusionSettings(gammacat=None, hawc=None, star_cat=None)
ONTIME_S = 1800.0
BATCH = 10_000


def fill(engine, n_runs, seed=1, binning=BINNING):
    """Bulk-insert ``n_runs`` synthetic runs and their pieces (of ``binning``); seconds taken."""
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    with Session(engine) as session:
        store = Datastore(path="/synthetic/archive", obs_index_meta={})
        binning_row = BinningRow(hash=binning.hash, params=binning.params)
        exclusion_row = ExclusionRow(hash=EXCLUSION.hash, params=EXCLUSION.params)
        session.add_all([store, binning_row, exclusion_row])
        session.commit()
        ids = (store.id, binning_row.id, exclusion_row.id)
    geometry = binning.geometry
    exposure = np.full(geometry.spatial_shape, ONTIME_S * 0.95)
    no_counts = np.zeros(geometry.shape, dtype=np.int64)
    # Pieces of the same shape whose norm varies with zenith: KL ranking and the condition model have
    # something to find, at Poisson noise (the same counts per run whatever the geometry).
    radial = np.linspace(1.0, 0.5, geometry.spatial_offset_deg.size) * 10 / geometry.spatial_offset_deg.size
    shape = np.outer(np.geomspace(1, 1e-2, geometry.n_energy), radial).reshape(geometry.shape)
    with engine.begin() as connection:
        for first in range(0, n_runs, BATCH):
            n = min(BATCH, n_runs - first)
            zenith = rng.uniform(0, 60, n)
            days = rng.integers(0, 5000, n)
            runs = [dict(id=first + i + 1, datastore_id=ids[0], obs_id=first + i, status="ok",
                         zenith_deg=float(zenith[i]), alt_deg=float(90 - zenith[i]), az_deg=float(rng.uniform(0, 360)),
                         glat_deg=float(rng.uniform(-90, 90)), tstart_mjd=55197.0 + float(days[i]),
                         date_obs=date(2010, 1, 1) + timedelta(days=int(days[i])), ontime_s=ONTIME_S, n_tels=4,
                         nsb_level=float(rng.uniform(3, 9)), muon_eff=float(rng.uniform(0.6, 0.9)), extra={},
                         # One instrument, as an index of it records: the "same instrument" criterion
                         # is tested on every candidate and passes them all (selections as before).
                         instrument="HESS", checks_version=RUN_CHECKS_VERSION)
                    for i in range(n)]
            connection.execute(sa.insert(Run), runs)
            counts = rng.poisson(200 * shape * np.cos(np.radians(zenith)).reshape((-1,) + (1,) * shape.ndim))
            # Encoded as the index encodes them (counts in the smallest integer type that holds them).
            pieces = [piece_values(BackgroundPiece(counts[i], no_counts, exposure, ONTIME_S, ONTIME_S * 0.9),
                                   first + i + 1, ids[1], ids[2], None)
                      for i in range(n)]
            connection.execute(sa.insert(PieceRow), pieces)
        if engine.dialect.name == "postgresql":
            connection.exec_driver_sql("SELECT setval('runs_id_seq', (SELECT max(id) FROM runs))")
    RunCatalogue(engine).refresh_statistics()  # as `index` does after bulk changes
    return time.perf_counter() - start


def median_ms(builder, targets):
    times, sizes = [], []
    with Session(builder.catalogue.engine) as session:
        builder.build(int(targets[0]), session=session)  # warm-up (and the condition model's fit)
        for target in targets:
            start = time.perf_counter()
            built = builder.build(int(target), session=session)
            times.append(time.perf_counter() - start)
            sizes.append(len(built.selection.obs_ids))
    return 1e3 * statistics.median(times), int(statistics.median(sizes))


def new_database(kind, folder, postgres):
    """(url, drop) of a fresh database of ``kind``."""
    if kind == "sqlite":
        return str(Path(folder, f"scale-{uuid.uuid4().hex[:8]}.sqlite")), lambda: None
    name = f"bkgdb_scale_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(postgres, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')

    def drop():
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()

    return sa.engine.make_url(postgres).set(database=name).render_as_string(hide_password=False), drop


MODES = {"plain": {}, "kl": {"KL_DIV": True}, "condition": {"assembly": "condition"}}


def bench(kind, n_runs, sizes, folder, postgres, condition_runs, modes, binning=BINNING):
    url, drop = new_database(kind, folder, postgres)
    try:
        catalogue = RunCatalogue.open(url)
        seconds = fill(catalogue.engine, n_runs, binning=binning)
        print(f"\n{kind}, {n_runs} runs with {binning.geometry.describe()} pieces written in {seconds:.1f} s")
        print("| runs summed (requested) | " + " | ".join(f"{mode} ms" for mode in modes) + " |")
        print("|---" * (len(modes) + 1) + "|")
        targets = np.random.default_rng(2).choice(n_runs, 10, replace=False)
        for size in sizes:
            cells, summed = [], None
            for extra in [MODES[mode] for mode in modes]:
                settings = SelectionSettings(time_request=size * ONTIME_S / 3600.0, **extra)
                config = BkgdbConfig(binnings=[binning], exclusion=EXCLUSION, selection=settings)
                builder = BackgroundBuilder(catalogue, config, three_d=binning.geometry.is_3d)
                if extra.get("assembly"):
                    builder.condition_model_max_runs = condition_runs
                    start = time.perf_counter()
                    built = builder.build(int(targets[0]))
                    if not built.condition_model["cached"]:
                        fit = time.perf_counter() - start
                ms, n = median_ms(builder, targets)
                summed = n if summed is None else summed
                cells.append(f"{ms:.1f}")
            print(f"| {summed} ({size}) | " + " | ".join(cells) + " |", flush=True)
        if "condition" in modes:
            print(f"condition model: first build, fitting it on {min(condition_runs, n_runs)} runs: {fit:.1f} s")
        catalogue.engine.dispose()
    finally:
        drop()


#: DR1 copies get OBS_IDs from here on: six digits, as DR1's file names have, and none of DR1's own.
COPY_OBS_ID_START = 100_000


def hess_copies(folder: Path, n_runs: int) -> Path:
    """A datastore of ``n_runs`` copies of the 105 H.E.S.S. DR1 runs, in turn, under new OBS_IDs.

    Every HDU that carries OBS_ID gets the new one; everything else in the files is kept, so each
    copy holds as many events and sees the same sources and stars as its DR1 run. The observation
    times are kept: a run is its OBS_ID and start time (`bkgdb.store.integrity`), so copies under
    new OBS_IDs are distinct runs, not copies of one observation.
    """
    import gzip
    import io
    import os

    from astropy.io import fits
    from astropy.table import Table, vstack

    dr1 = Path(os.environ["GAMMAPY_DATA"], "hess-dl3-dr1")
    obs_index = Table.read(dr1 / "obs-index.fits.gz")
    hdu_index = Table.read(dr1 / "hdu-index.fits.gz")
    store = Path(folder, "hess-dr1-copies")
    (store / "data").mkdir(parents=True)
    contents = {}  # decompressed once per DR1 run
    obs_rows, hdu_rows = [], []
    for copy in range(n_runs):
        obs_row = obs_index[[copy % len(obs_index)]]
        source_id, obs_id = int(obs_row["OBS_ID"][0]), COPY_OBS_ID_START + copy
        name = f"hess_dl3_dr1_obs_id_{obs_id:06d}.fits.gz"
        rows = hdu_index[hdu_index["OBS_ID"] == source_id]
        if source_id not in contents:
            source_file = dr1 / str(rows["FILE_DIR"][0]).strip() / str(rows["FILE_NAME"][0]).strip()
            contents[source_id] = gzip.decompress(source_file.read_bytes())
        with fits.open(io.BytesIO(contents[source_id]), memmap=False) as hdul:
            for hdu in hdul:
                if "OBS_ID" in hdu.header:
                    hdu.header["OBS_ID"] = obs_id
            buffer = io.BytesIO()
            hdul.writeto(buffer)
        # Level 6 rather than astropy's 9: written four times faster, files 0.4 % larger.
        (store / "data" / name).write_bytes(gzip.compress(buffer.getvalue(), compresslevel=6))
        obs_row["OBS_ID"] = obs_id
        obs_rows.append(obs_row)
        rows["OBS_ID"] = obs_id
        rows["FILE_DIR"] = "data"
        rows.replace_column("FILE_NAME", [name] * len(rows))
        hdu_rows.append(rows)
    obs_table, hdu_table = vstack(obs_rows, metadata_conflicts="silent"), vstack(hdu_rows, metadata_conflicts="silent")
    obs_table.meta, hdu_table.meta = obs_index.meta, hdu_index.meta
    obs_table.write(store / "obs-index.fits.gz")
    hdu_table.write(store / "hdu-index.fits.gz")
    return store


def simulated_store(folder: Path, n_runs: int) -> Path:
    """A datastore of ``n_runs`` simulated runs (`bkgdb.simulate`, about 6,000 events each, no sources)."""
    from bkgdb.simulate import BackgroundTruth, DatastoreSimulator

    store = Path(folder, "simulated")
    pointings = [(150.0 + 0.01 * i, 20.0 + 0.001 * i) for i in range(n_runs)]
    DatastoreSimulator(truth=BackgroundTruth(norm=3e-5), pointings=pointings, ontime_s=1800.0, with_irfs=False,
                       zeniths=list(np.linspace(20, 30, n_runs))).run(store)
    return store


def build_breakdown(builder, target, session, repeats=20):
    """Median ms of each step of ``builder.build(target)`` and of its statements through the driver alone.

    The steps are timed by wrapping the functions the build calls (a few microseconds each); the
    statements a build sends are recorded, then run again on the driver's connection with their
    parameters and fetched: what the database and its driver take before any SQLAlchemy row.
    """
    import functools

    import bkgdb.background as background

    steps = {name: [] for name in ("find_target", "selected_pieces", "stacked_pieces", "datastore_paths")}
    steps["selection"] = []
    originals = {name: getattr(background, name) for name in steps if name != "selection"}
    original_run = builder.selector.run

    def timed(name, function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            begin = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                steps[name].append(time.perf_counter() - begin)

        return wrapper

    statements = []

    def record(connection, cursor, statement, parameters, context, executemany):
        statements.append((statement, parameters))

    totals = []
    try:
        for name, function in originals.items():
            setattr(background, name, timed(name, function))
        builder.selector.run = timed("selection", original_run)
        for _ in range(repeats):
            begin = time.perf_counter()
            builder.build(target, session=session)
            totals.append(time.perf_counter() - begin)
        sa.event.listen(builder.catalogue.engine, "before_cursor_execute", record)
        builder.build(target, session=session)
    finally:
        sa.event.remove(builder.catalogue.engine, "before_cursor_execute", record)
        for name, function in originals.items():
            setattr(background, name, function)
        builder.selector.run = original_run
    # A step the build did not take (the pieces read with the candidates) is left out.
    result = {name: 1e3 * statistics.median(times) for name, times in steps.items() if times}
    result["whole build"] = 1e3 * statistics.median(totals)
    result["rest"] = result["whole build"] - sum(value for name, value in result.items() if name != "whole build")
    driver = session.connection().connection.dbapi_connection
    for number, (statement, parameters) in enumerate(statements):
        times = []
        for _ in range(repeats):
            begin = time.perf_counter()
            driver.execute(statement, parameters).fetchall()
            times.append(time.perf_counter() - begin)
        result[f"statement {number + 1} alone: {' '.join(statement.split())[:60]}..."] = 1e3 * statistics.median(times)
    return result


def recompute(n_runs: int, folder: str, source: str = "simulated", rounds: int = 3) -> None:
    """Select + assemble of ``n_runs`` runs against recomputing the same model from their event files.

    ``source`` is ``simulated`` (`simulated_store`, no exclusion) or ``hess-dr1`` (`hess_copies`,
    indexed with the exclusion settings and 2D binning of configs/hess-dr1.yaml). No selection
    criteria: the first run's background sums the other ``n_runs``. The recomputation reads each
    file, excludes, histograms and computes the exposure with the maker the index uses, in this
    process, and sums; its exclusion catalogues are already in memory. ``rounds`` recomputations,
    each between two batches of timed builds.
    """
    from bkgdb.config import load_config
    from bkgdb.gadf.datastore import DL3Datastore
    from bkgdb.gadf.events import read_events
    from bkgdb.makers.assembly import assemble_background, energy_nodes_for_gammapy, fill_empty_bins
    from bkgdb.makers.fov_nodes import fov_nodes_for_gammapy
    from bkgdb.makers.piece import PieceMaker

    start = time.perf_counter()
    if source == "hess-dr1":
        store = hess_copies(Path(folder), n_runs + 1)
        hess = load_config(Path(__file__).resolve().parent.parent / "configs" / "hess-dr1.yaml")
        binning, exclusion = hess.binning, hess.exclusion
    else:
        store = simulated_store(Path(folder), n_runs + 1)
        binning, exclusion = BINNING, EXCLUSION
    made = time.perf_counter() - start
    selection = SelectionSettings(el_diff=None, az_diff=None, gal_lat_min=0)
    config = BkgdbConfig(binnings=[binning], exclusion=exclusion, selection=selection)
    catalogue = RunCatalogue.open(str(Path(folder, "recompute.sqlite")))
    start = time.perf_counter()
    catalogue.index(store, config=config, jobs=2)
    indexed = time.perf_counter() - start
    sources = {run.obs_id: run for run in DL3Datastore(store).runs()}
    target = min(sources)
    builder = BackgroundBuilder(catalogue, config)
    # The copies just written (hundreds of MB) are flushed to disk before anything is timed, so that
    # the kernel's writing them back does not run during the timing.
    os.sync()
    time.sleep(1.0)

    def build_times():
        """Median of 10 builds in a new session, after one untimed build; and the last result."""
        with Session(catalogue.engine) as session:
            builder.build(target, session=session)
            times = []
            for _ in range(10):
                begin = time.perf_counter()
                built = builder.build(target, session=session)
                times.append(time.perf_counter() - begin)
        return statistics.median(times), built

    # Made before the clock starts: its source and star catalogues are those the index read in this process.
    maker = PieceMaker(config.binning, config.exclusion)

    def recomputed(obs_ids):
        """The pieces recomputed from the event files of ``obs_ids``, their sum, and the time taken."""
        begin = time.perf_counter()
        pieces = []
        for obs_id in obs_ids:
            run = sources[obs_id]
            events = read_events(run, run.events_path.read_bytes(), with_events=True)
            header = events.header
            # The header is read key by key (get only), not as a dict.
            pieces.append(maker.run(events.ra_deg, events.dec_deg, events.energy_tev, header.get("RA_PNT"),
                                    header.get("DEC_PNT"), header.get("ONTIME"), header.get("LIVETIME")))
        assembled = assemble_background(pieces, config.binning)
        return pieces, assembled, time.perf_counter() - begin

    # Each round times builds, recomputes, and times builds again: the speed-up of a round is the
    # recomputation over the mean of the two build medians. This machine's speed drifts over
    # minutes, so a ratio of two times taken far apart drifts with it, and one round is a lottery.
    timings = []
    for _ in range(rounds):
        before, built = build_times()
        pieces, assembled, from_files = recomputed(built.selection.obs_ids)
        after, _ = build_times()
        timings.append((before, from_files, after))
    with Session(catalogue.engine) as session:
        stored_regions = dict(session.execute(
            sa.select(Run.obs_id, RegionSet.regions).select_from(Run).join(PieceRow, PieceRow.run_id == Run.id)
            .outerjoin(RegionSet, RegionSet.id == PieceRow.region_set_id)
            .where(PieceRow.binning_id == built.binning_id, PieceRow.exclusion_id == built.exclusion_id)).all())
        breakdown = build_breakdown(builder, target, session)

    filled = fill_empty_bins(assembled.rate, assembled)
    rate = energy_nodes_for_gammapy(fov_nodes_for_gammapy(filled, assembled), assembled)
    checks = {
        "counts": np.array_equal(assembled.counts, built.assembled.counts),
        "exposure": np.array_equal(assembled.exposure_s, built.assembled.exposure_s),
        "rate": np.array_equal(assembled.rate, built.assembled.rate) and np.array_equal(rate, built.rate),
        "regions": all(piece.regions == (stored_regions[obs_id] or [])
                       for obs_id, piece in zip(built.selection.obs_ids, pieces, strict=True)),
    }
    n = len(built.selection.obs_ids)
    n_events = sum(piece.n_events for piece in pieces)
    excluded = sum(int(piece.excluded_counts.sum()) for piece in pieces)
    print(f"\n{n} {source} runs summed, {n_events:,} events in range ({excluded:,} excluded), "
          f"{sum(len(piece.regions) for piece in pieces):,} exclusion regions; datastore made in {made:.0f} s, "
          f"indexed in {indexed:.0f} s (2 processes)")
    speedups = [from_files / ((before + after) / 2) for before, from_files, after in timings]
    print("| round | builds before / after (median of 10) | recomputed from event files | per run | speed-up |")
    print("|---|---|---|---|---|")
    for number, ((before, from_files, after), speedup) in enumerate(zip(timings, speedups, strict=True), start=1):
        print(f"| {number} | {1e3 * before:.1f} / {1e3 * after:.1f} ms | {from_files:.1f} s | "
              f"{1e3 * from_files / n:.1f} ms | {speedup:.0f}x |")
    print(f"\n{n} runs: median speed-up {statistics.median(speedups):.0f}x over {rounds} rounds "
          f"({min(speedups):.0f}-{max(speedups):.0f}x); identical: "
          f"{', '.join(f'{name} {ok}' for name, ok in checks.items())}")
    print("\nWhere a build's time goes (median ms; the steps timed in place, the statements again through "
          "the SQLite driver alone):")
    for name, ms in breakdown.items():
        print(f"  {name}: {ms:.2f}")
    catalogue.engine.dispose()


def main():
    logging.getLogger("bkgdb").setLevel(logging.ERROR)  # shortfall warnings of small catalogues
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="1000,10000,100000")
    parser.add_argument("--db", default="sqlite,postgresql")
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--condition-runs", type=int, default=300)
    parser.add_argument("--modes", default="plain,kl,condition")
    parser.add_argument("--3d", dest="three_d", action="store_true", help="3D pieces (20 x 24 x 24)")
    parser.add_argument("--recompute", type=int, default=0,
                        help="instead compare with recomputation from the event files of N runs")
    parser.add_argument("--recompute-source", choices=("simulated", "hess-dr1"), default="simulated",
                        help="the runs of --recompute: simulated, or copies of H.E.S.S. DR1 ($GAMMAPY_DATA)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="with --recompute: recomputations, each between two batches of timed builds")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    sizes = [int(value) for value in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        if args.recompute:
            recompute(args.recompute, folder, args.recompute_source, args.rounds)
            return
        for kind in args.db.split(","):
            for n_runs in (int(value) for value in args.runs.split(",")):
                bench(kind, n_runs, sizes, folder, args.postgres, args.condition_runs,
                      args.modes.split(","), FOV_BINNING if args.three_d else BINNING)


if __name__ == "__main__":
    main()
