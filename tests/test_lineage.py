"""Lineage: each background records the pieces it summed; what was built from a run; what is stale."""

import json
import threading
import time

import sqlalchemy as sa
from astropy.io import fits
from astropy.table import Table
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from bkgdb.background import BackgroundBuilder
from bkgdb.cli.main import app
from bkgdb.config import Binning, BkgdbConfig, ExclusionSettings, IOSettings, SelectionSettings
from bkgdb.store import backgrounds
from bkgdb.store.flags import flag_run
from bkgdb.store.lineage import background_lineage, stale_backgrounds
from bkgdb.store.models import BackgroundInput, BackgroundRow, BinningRow, ExclusionRow, PieceRow, Run
from bkgdb.store.pieces import PieceCache

BINNING = Binning(e_min=0.1, e_max=100, e_bins=6, off_min=0, off_max=2.5, off_bins=4)


def make_config(**selection):
    return BkgdbConfig(
        binnings=[BINNING],
        exclusion=ExclusionSettings(gammacat=None, hawc=None, star_cat=None),
        selection=SelectionSettings(**{"el_diff": None, "az_diff": None, "gal_lat_min": 10, **selection}),
        io=IOSettings(),
    )


def touch_events(path):
    """Change a run file's contents (a header comment), as a reprocessing would."""
    with fits.open(path) as hdul:
        hdul["EVENTS"].header.set("COMMENT", "reprocessed")
        hdul.writeto(path, overwrite=True)


def test_inputs_record_the_pieces_summed(catalogue, simulated_datastore, tmp_path):
    config = make_config()
    catalogue.index(simulated_datastore, config=config)
    built = BackgroundBuilder(catalogue, config).write(1000, tmp_path / "bkg.fits")
    with Session(catalogue.engine) as session:
        background = session.scalars(sa.select(BackgroundRow)).one()
        inputs = session.scalars(
            sa.select(BackgroundInput)
            .where(BackgroundInput.background_id == background.id)
            .order_by(BackgroundInput.obs_id)
        ).all()
        pieces = {piece.id: piece for piece in session.scalars(sa.select(PieceRow))}
        runs = {run.id: run for run in session.scalars(sa.select(Run))}
        assert [item.obs_id for item in inputs] == sorted(built.selection.obs_ids) == [1001, 1002, 1003, 1004]
        for item in inputs:
            piece = pieces[item.piece_id]
            assert piece.run_id == item.run_id and runs[item.run_id].obs_id == item.obs_id
            assert item.file_sha256 == piece.file_sha256 == runs[item.run_id].file_sha256
            assert item.piece_created_at is not None and item.weight == 1.0
    assert sorted(Table.read(tmp_path / "bkg.fits", hdu="BKGDB_RUNS")["OBS_ID"]) == [1001, 1002, 1003, 1004]


def test_a_drop_keeps_the_settings_recorded_backgrounds_were_built_on(catalogue, simulated_datastore, tmp_path):
    config = make_config()
    catalogue.index(simulated_datastore, config=config)
    BackgroundBuilder(catalogue, config).write(1000, tmp_path / "bkg.fits")
    assert PieceCache(catalogue.engine).drop(binning=BINNING.hash[:12]) == 5
    with Session(catalogue.engine) as session:
        background = session.scalars(sa.select(BackgroundRow)).one()
        assert session.get(BinningRow, background.binning_id).hash == BINNING.hash
        assert session.get(ExclusionRow, background.exclusion_id) is not None
        assert session.scalar(sa.select(sa.func.count()).select_from(PieceRow)) == 0


def test_a_background_is_recorded_when_its_pieces_were_dropped_while_it_was_built(
    catalogue, simulated_datastore, tmp_path
):
    config = make_config()
    catalogue.index(simulated_datastore, config=config)
    builder = BackgroundBuilder(catalogue, config)
    built = builder.build(1000)
    PieceCache(catalogue.engine).drop(binning=BINNING.hash[:12])
    with Session(catalogue.engine) as session:
        builder.record(session, built, tmp_path / "bkg.fits")
        session.commit()
        background = session.scalars(sa.select(BackgroundRow)).one()
        inputs = session.scalars(sa.select(BackgroundInput).order_by(BackgroundInput.obs_id)).all()
        # What the history holds itself is kept; the pieces are gone, and so is the binning
        # (no recorded background named it when it was dropped).
        assert [item.obs_id for item in inputs] == [1001, 1002, 1003, 1004]
        assert all(item.piece_id is None and item.run_id is not None and item.file_sha256 for item in inputs)
        assert background.binning_id is None and background.target_run_id is not None
    reasons = {row["reason"] for row in stale_backgrounds(catalogue.engine)}
    assert reasons == {"piece deleted: 1001, 1002, 1003, 1004"}


def test_a_drop_waits_for_a_background_being_recorded(catalogue, simulated_datastore, monkeypatch):
    config = make_config()
    catalogue.index(simulated_datastore, config=config)
    builder = BackgroundBuilder(catalogue, config)
    built = builder.build(1000)
    dropped: list = []
    dropper = threading.Thread(
        target=lambda: dropped.append(PieceCache(catalogue.engine).drop(binning=BINNING.hash[:12]))
    )
    present_ids = backgrounds.present_ids

    def present_then_drop(session, model, ids):
        found = present_ids(session, model, ids)
        if model is ExclusionRow:  # the last look-up, before the rows are written
            dropper.start()
            time.sleep(0.5)  # for the drop to reach the database before the record does
        return found

    monkeypatch.setattr(backgrounds, "present_ids", present_then_drop)
    with Session(catalogue.engine) as session:
        builder.record(session, built)
        session.commit()
    dropper.join(timeout=60)
    assert dropped == [5]
    with Session(catalogue.engine) as session:
        background = session.scalars(sa.select(BackgroundRow)).one()
        inputs = session.scalars(sa.select(BackgroundInput)).all()
        # Recorded whole, then the drop: the pieces are gone from it, the binning it names is kept.
        assert sorted(item.obs_id for item in inputs) == [1001, 1002, 1003, 1004]
        assert all(item.piece_id is None for item in inputs)
        assert session.get(BinningRow, background.binning_id).hash == BINNING.hash


def test_lineage_lists_backgrounds_and_attached_files_of_a_run(catalogue, simulated_datastore, tmp_path):
    config = make_config(where=("obs_id<=1002",))
    catalogue.index(simulated_datastore, config=config)
    builder = BackgroundBuilder(catalogue, config)
    builder.write(1000, tmp_path / "bkg-1000.fits")  # from 1001 and 1002
    builder.attach(simulated_datastore, tmp_path / "attached")  # every run from the others of 1000-1002
    found = background_lineage(catalogue.engine, 1002)
    outputs = sorted(row["output"].rsplit("/", 1)[-1] for row in found)
    # 1002 built 1000's file and attached run files of every run except itself.
    assert outputs == [
        "bkg-1000.fits",
        "run_001000.fits.gz",
        "run_001001.fits.gz",
        "run_001003.fits.gz",
        "run_001004.fits.gz",
    ]
    assert {row["from_datastore"] for row in found} == {str(simulated_datastore.resolve())}
    assert [row["id"] for row in found] == sorted((row["id"] for row in found), reverse=True)
    assert background_lineage(catalogue.engine, 1003) == []  # obs_id<=1002 never used it


def test_stale_after_reindexing_flagging_dropping_and_removal(catalogue, datastore_copy, tmp_path):
    config = make_config()
    catalogue.index(datastore_copy, config=config)
    builder = BackgroundBuilder(catalogue, config)
    for target in (1000, 1001, 1004):
        builder.write(target, tmp_path / f"bkg-{target}.fits")
    assert stale_backgrounds(catalogue.engine) == []
    ids = {row["target"]: row["id"] for row in background_lineage(catalogue.engine, 1002)}

    touch_events(datastore_copy / "data" / "run_001003.fits.gz")
    assert catalogue.index(datastore_copy, config=config).updated == 1
    flag_run(catalogue.engine, 1002, "bad", "found later: clouds")
    stale = {row["id"]: row for row in stale_backgrounds(catalogue.engine)}
    assert set(stale) == {ids[1000], ids[1001], ids[1004]}
    assert stale[ids[1000]]["reason"] == "event file changed: 1003; flagged bad since: 1002"
    assert stale[ids[1004]]["output"] == str((tmp_path / "bkg-1004.fits").resolve())

    # A background built now uses the new piece and no bad run: it is not stale.
    builder.write(1000, tmp_path / "again.fits")
    assert len(stale_backgrounds(catalogue.engine)) == 3

    PieceCache(catalogue.engine).drop(binning=config.binning.hash[:12])
    reasons = {row["reason"] for row in stale_backgrounds(catalogue.engine)}
    assert "piece deleted: 1001, 1003, 1004" in reasons  # the new background's inputs

    listed = Table.read(datastore_copy / "obs-index.fits.gz")
    listed[listed["OBS_ID"] != 1004].write(datastore_copy / "obs-index.fits.gz", overwrite=True)
    assert catalogue.index(datastore_copy).removed == 1
    reasons = {row["id"]: row["reason"] for row in stale_backgrounds(catalogue.engine)}
    assert reasons[ids[1000]].startswith("run removed: 1004; event file changed: 1003")


def test_lineage_and_stale_commands(db_url, simulated_datastore, datastore_copy, tmp_path):
    runner = CliRunner()
    config = tmp_path / "config.yaml"
    config.write_text("""
binning: {e_min: 0.1, e_max: 100, e_bins: 6, off_min: 0, off_max: 2.5, off_bins: 4}
exclusion: {gammacat: none, hawc: none, star_cat: none}
background_selection: {el_diff: null, az_diff: null, gal_lat_min: 10}
""")

    def bkgdb(*args):
        return runner.invoke(app, ["--db", db_url, *map(str, args)])

    assert bkgdb("index", datastore_copy, "--config", config).exit_code == 0
    assert bkgdb("background", "1001", "--config", config, "-o", tmp_path / "bkg.fits").exit_code == 0
    lineage = json.loads(bkgdb("lineage", "1003", "-f", "json").output)
    assert [(row["target"], row["output"]) for row in lineage] == [(1001, str((tmp_path / "bkg.fits").resolve()))]
    assert "0 stale backgrounds" in bkgdb("history", "--stale").output

    touch_events(datastore_copy / "data" / "run_001003.fits.gz")
    assert bkgdb("index", datastore_copy, "--config", config).exit_code == 0
    stale = json.loads(bkgdb("history", "--stale", "-f", "json").output)
    assert [(row["target"], row["reason"]) for row in stale] == [(1001, "event file changed: 1003")]
    table = bkgdb("history", "--stale")
    assert table.exit_code == 0 and "1 stale backgrounds" in table.output
