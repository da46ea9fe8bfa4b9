"""Runs know their instrument, a target's background comes from its own instrument's runs, and a
catalogue of an older bkgdb has its runs read again, with today's checks, by the next index.

The real-data case indexes H.E.S.S. DR1 and the VERITAS Crab runs into one catalogue. The others
make a catalogue as bkgdb at schema revision 0007 left it: rows copied into a database created at
that revision, from an index of the simulated datastore (five runs, OBS_IDs 1000-1004, TELESCOP
'SIM').
"""

import dataclasses
import gzip
import io
import shutil

import numpy as np
import pytest
import sqlalchemy as sa
import yaml
from astropy.io import fits
from conftest import catalogue_content, gammapy_data_path
from typer.testing import CliRunner

from bkgdb.background import BackgroundBuilder
from bkgdb.cli.main import app
from bkgdb.config import BkgdbConfig
from bkgdb.errors import NoRunsSelected
from bkgdb.makers.run import RUN_CHECKS_VERSION
from bkgdb.store.catalogue import RunCatalogue
from bkgdb.store.database import SCHEMA_HEAD, create_engine, current_revision, downgrade_schema, upgrade_schema
from bkgdb.store.models import BinningRow, Datastore, ExclusionRow, PieceRow, RegionSet, Run

CONFIG = """
binning: {e_min: 0.1, e_max: 100, e_bins: 8, off_min: 0, off_max: 2.5, off_bins: 5}
exclusion: {gammacat: none, hawc: none, star_cat: none}
background_selection: {el_diff: null, az_diff: null, gal_lat_min: 0}
"""


def make_config(**selection):
    values = yaml.safe_load(CONFIG)
    values["background_selection"].update(selection)
    return BkgdbConfig.from_dict(values)


def runs_by_obs_id(catalogue):
    return {run.obs_id: run for run in catalogue.select_runs(status=None)}


# -- several instruments in one catalogue ----------------------------------------------------------


def test_a_veritas_target_gets_veritas_runs_only(catalogue):
    hess = gammapy_data_path("hess-dl3-dr1")
    veritas = gammapy_data_path("veritas", "crab-point-like-ED")
    config = make_config()
    assert config.selection.same_instrument  # the default
    assert catalogue.index(hess, config=config).new == 105
    assert catalogue.index(veritas, config=config).new == 4
    runs = runs_by_obs_id(catalogue)
    assert {run.instrument for obs_id, run in runs.items() if obs_id < 60000} == {"HESS"}
    assert {runs[obs_id].instrument for obs_id in (64080, 64081, 64082, 64083)} == {"VERITAS"}
    assert [run.obs_id for run in catalogue.select_runs(["instrument=veritas"])] == [64080, 64081, 64082, 64083]
    assert len(catalogue.select_runs(["TELESCOP!=VERITAS"])) == 105

    built = BackgroundBuilder(catalogue, config).build(64080)
    assert sorted(built.selection.obs_ids) == [64081, 64082, 64083]
    assert built.selection.funnel == [("candidate runs with pieces", 108), ("same instrument (VERITAS)", 3)]
    assert built.selection.warnings == []
    # A H.E.S.S. target, the criterion after the airmass window.
    hess_built = BackgroundBuilder(catalogue, make_config(el_diff=0.3)).build(23523)
    assert [name for name, _ in hess_built.selection.funnel[1:]] == ["airmass within 0.3", "same instrument (HESS)"]
    assert hess_built.selection.obs_ids and max(hess_built.selection.obs_ids) < 60000

    # The condition model moving the pieces is fitted on the target's instrument's runs alone.
    conditioned = BackgroundBuilder(catalogue, make_config(assembly="condition")).build(64080)
    assert conditioned.condition_model["n_runs"] == 4

    # Switched off: the H.E.S.S. runs are candidates again (and, being many, most of the selection).
    mixed = BackgroundBuilder(catalogue, make_config(same_instrument=False)).build(64080)
    assert mixed.selection.funnel == [("candidate runs with pieces", 108)]
    assert {64081, 64082, 64083} < set(mixed.selection.obs_ids) and len(mixed.selection.obs_ids) == 108


def without_telescop(folder):
    """Remove every TELESCOP of a datastore's FITS files (header cards and table columns), in place."""
    for path in sorted(folder.rglob("*.fits*")):
        with fits.open(path) as hdul:
            hdus = [hdu.copy() for hdu in hdul]
        for number, hdu in enumerate(hdus):
            hdu.header.pop("TELESCOP", None)
            if isinstance(hdu, fits.BinTableHDU) and "TELESCOP" in hdu.columns.names:
                hdu.columns.del_col("TELESCOP")
                hdus[number] = fits.BinTableHDU(hdu.data, hdu.header, name=hdu.name)
        fits.HDUList(hdus).writeto(path, overwrite=True)


def test_a_target_that_names_no_instrument_is_told_it_takes_every_instruments_runs(catalogue, tmp_path):
    veritas = tmp_path / "veritas"
    shutil.copytree(gammapy_data_path("veritas", "crab-point-like-ED"), veritas)
    without_telescop(veritas)
    config = make_config()
    assert catalogue.index(gammapy_data_path("hess-dl3-dr1"), config=config).new == 105
    assert catalogue.index(veritas, config=config).new == 4
    assert runs_by_obs_id(catalogue)[64080].instrument is None

    built = BackgroundBuilder(catalogue, config).build(64080)
    assert len(built.selection.obs_ids) == 108  # the criterion cannot apply: H.E.S.S. runs too
    assert built.selection.warnings == [
        "targets whose event files name no instrument (no TELESCOP) take runs of every instrument as candidates, "
        "here of HESS; keep them to one with io.search_datastore or a where condition (e.g. instrument=HESS)"
    ]
    # Kept to their datastore, as the warning says: no H.E.S.S. run, no warning.
    kept = dataclasses.replace(config, io=dataclasses.replace(config.io, search_datastore=str(veritas)))
    alone = BackgroundBuilder(catalogue, kept).build(64080)
    assert sorted(alone.selection.obs_ids) == [64081, 64082, 64083]
    assert alone.selection.warnings == []


# -- a catalogue of an older bkgdb -----------------------------------------------------------------

#: The tables an index writes, in an order that inserts each row after those it refers to.
INDEXED_TABLES = [Datastore, BinningRow, ExclusionRow, RegionSet, Run, PieceRow]
#: What revision 0008 added: a catalogue of 0007 has none of it.
NEW_COLUMNS = {"instrument", "checks_version"}


def catalogue_at_0007(url, datastore, config, scratch):
    """A database at revision 0007 holding the rows an index of ``datastore`` with ``config`` writes
    (made in the SQLite file ``scratch``, copied without the columns 0007 lacks)."""
    source = RunCatalogue.open(f"sqlite:///{scratch}")
    source.index(datastore, config=config)
    engine = create_engine(url)
    upgrade_schema(engine, "0007")
    assert not NEW_COLUMNS & {column["name"] for column in sa.inspect(engine).get_columns("runs")}
    with source.engine.connect() as reading, engine.begin() as writing:
        for model in INDEXED_TABLES:
            table = model.__table__
            rows = [without_new_columns(row) for row in reading.execute(sa.select(table)).mappings()]
            if rows:
                writing.execute(sa.insert(table), rows)
            if engine.dialect.name == "postgresql":  # ids were given: the next ones follow them
                writing.exec_driver_sql(
                    f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                    f"(SELECT coalesce(max(id), 0) + 1 FROM {table.name}), false)"
                )
    source.engine.dispose()
    return engine


def without_new_columns(row):
    return {key: value for key, value in row.items() if key not in NEW_COLUMNS}


def pieces_by_obs_id(url):
    """Each run's pieces, with their ids and creation times: what a re-read must keep as it was."""
    engine = create_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(Run.obs_id, PieceRow.id, PieceRow.created_at, PieceRow.file_sha256, PieceRow.counts)
            .join(Run, Run.id == PieceRow.run_id)
            .order_by(PieceRow.id)
        ).all()
    engine.dispose()
    return {obs_id: (piece_id, created, sha, bytes(counts)) for obs_id, piece_id, created, sha, counts in rows}


def test_runs_of_revision_0007_are_read_again_once(db_url, simulated_datastore, tmp_path):
    config = make_config()
    engine = catalogue_at_0007(db_url, simulated_datastore, config, tmp_path / "scratch.sqlite")
    pieces = pieces_by_obs_id(db_url)
    assert len(pieces) == 5

    catalogue = RunCatalogue.open(db_url)  # migrates to the head on first use
    assert current_revision(engine) == SCHEMA_HEAD
    before = catalogue_content(db_url)
    runs = runs_by_obs_id(catalogue)
    assert {(run.instrument, run.checks_version) for run in runs.values()} == {(None, 0)}

    # Until they are read again, a target of a known instrument has no candidates, and says why.
    with engine.begin() as connection:
        connection.execute(
            sa.update(Run).where(Run.obs_id == 1000).values(instrument="SIM", checks_version=RUN_CHECKS_VERSION)
        )
    builder = BackgroundBuilder(catalogue, config)
    with pytest.raises(NoRunsSelected) as raised:
        builder.build(1000)
    assert str(raised.value) == (
        "no runs selected for run 1000: 4 candidate runs with pieces; same instrument (SIM) removed 4 (0 left); "
        "4 runs catalogued by an older bkgdb have no instrument and cannot pass 'same instrument'; "
        "run `bkgdb index` on their datastores to read them again"
    )
    # A target not read again takes every instrument's runs, with a warning.
    stale_target = builder.build(1001)
    assert len(stale_target.selection.obs_ids) == 4
    assert stale_target.selection.warnings == [
        "targets catalogued by an older bkgdb have no instrument, so runs of every instrument are their "
        "candidates; run `bkgdb index` on their datastores to read them again"
    ]

    (tmp_path / "config.yaml").write_text(CONFIG)
    index = CliRunner().invoke(
        app, ["--db", db_url, "index", str(simulated_datastore), "--config", str(tmp_path / "config.yaml")]
    )
    assert index.exit_code == 0, index.output
    assert (
        f"{simulated_datastore.resolve()}: 0 new, 0 updated, 4 rechecked, 1 unchanged, 0 failed; 4 pieces "
        "computed; 4 runs catalogued by an older bkgdb re-read with this version's checks"
    ) in " ".join(index.output.split())
    runs = runs_by_obs_id(catalogue)
    assert {(run.instrument, run.checks_version) for run in runs.values()} == {("SIM", RUN_CHECKS_VERSION)}
    # The same pieces: same rows, same bytes, same creation times (backgrounds built on them stay current).
    assert pieces_by_obs_id(db_url) == pieces
    after = catalogue_content(db_url)
    assert after["pieces"] == before["pieces"]
    for obs_id, row in after["runs"].items():
        assert without_new_columns(row) == without_new_columns(before["runs"][obs_id])
    assert sorted(builder.build(1000).selection.obs_ids) == [1001, 1002, 1003, 1004]

    # Read once: the next index reads nothing.
    again = catalogue.index(simulated_datastore, config=config)
    assert (again.new, again.updated, again.rechecked, again.unchanged, again.pieces) == (0, 0, 0, 5, 0)
    assert again.summary() == "0 new, 0 updated, 5 unchanged, 0 failed"
    catalogue.engine.dispose()

    # Back to 0007 and up again: the rows stay (SQLite drops the columns without rebuilding runs,
    # which would have deleted every piece), and are to be read again.
    downgrade_schema(engine, "0007")
    assert pieces_by_obs_id(db_url) == pieces
    upgrade_schema(engine)
    with engine.connect() as connection:
        assert set(connection.execute(sa.select(Run.instrument, Run.checks_version)).all()) == {(None, 0)}
    engine.dispose()


def test_runs_indexed_by_this_bkgdb_are_not_read_again(catalogue, simulated_datastore):
    config = make_config()
    first = catalogue.index(simulated_datastore, config=config)
    assert (first.new, first.pieces) == (5, 5)
    assert {(run.instrument, run.checks_version) for run in catalogue.select_runs()} == {("SIM", RUN_CHECKS_VERSION)}
    second = catalogue.index(simulated_datastore, config=config)
    assert (second.new, second.updated, second.rechecked, second.unchanged, second.pieces) == (0, 0, 0, 5, 0)
    assert not second.changed


def spoil_energies(path):
    """NaN and infinite energies in a gzip run file."""
    with fits.open(path) as hdul:
        hdul.readall()
        energies = hdul["EVENTS"].data["ENERGY"]
        energies[::3] = np.nan
        energies[1] = np.inf
        buffer = io.BytesIO()
        hdul.writeto(buffer)
    path.write_bytes(gzip.compress(buffer.getvalue()))


@pytest.mark.parametrize("with_config", [True, False], ids=["index --config", "index alone"])
def test_a_run_an_older_bkgdb_let_through_fails_todays_checks(
    db_url, simulated_datastore, tmp_path, monkeypatch, with_config
):
    """A file with non-finite energies, indexed ok (with pieces) by a bkgdb that did not check them;
    the file is left as it was. Indexed again without a config, the run's events are still checked:
    its pieces were made from them."""
    copy = tmp_path / "datastore"
    shutil.copytree(simulated_datastore, copy)
    spoil_energies(copy / "data" / "run_001002.fits.gz")
    config = make_config()
    with monkeypatch.context() as older:
        older.setattr("bkgdb.makers.run.non_finite_problem", lambda columns: None)
        engine = catalogue_at_0007(db_url, copy, config, tmp_path / "scratch.sqlite")
    assert len(pieces_by_obs_id(db_url)) == 5

    catalogue = RunCatalogue.open(db_url)
    report = catalogue.index(copy, config=config if with_config else None)
    assert (report.rechecked, report.failed, report.rechecked_failed, report.unchanged) == (4, 1, 1, 0)
    assert report.summary().endswith(
        "5 runs catalogued by an older bkgdb re-read with this version's checks (1 now failed)"
    )
    ((obs_id, reason),) = report.failures
    assert obs_id == 1002 and reason.endswith("events have a non-finite ENERGY")
    runs = runs_by_obs_id(catalogue)
    assert (runs[1002].status, runs[1002].error) == ("failed", reason)
    assert sorted(pieces_by_obs_id(db_url)) == [1000, 1001, 1003, 1004]
    assert 1002 not in BackgroundBuilder(catalogue, config).build(1000).selection.obs_ids
    catalogue.engine.dispose()
    engine.dispose()


def test_header_texts_longer_than_their_column_are_cut_alike_on_every_database(catalogue, datastore_copy):
    """A 66-character TELESCOP (one FITS card holds 68) stopped a PostgreSQL index ("value too long");
    SQLite kept it whole. Both now keep the column's length, and every run is indexed."""
    path = datastore_copy / "data" / "run_001000.fits.gz"
    with fits.open(path) as hdul:
        hdul.readall()
        hdul["EVENTS"].header["TELESCOP"] = "X" * 66
        buffer = io.BytesIO()
        hdul.writeto(buffer)
    path.write_bytes(gzip.compress(buffer.getvalue()))
    report = catalogue.index(datastore_copy)
    assert (report.new, report.failed) == (5, 0)
    run = runs_by_obs_id(catalogue)[1000]
    assert run.instrument == "X" * 64
