import os
import shutil
from datetime import date

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import Table

from bkgdb.errors import DatastoreError


def obs_ids(runs):
    return [run.obs_id for run in runs]


def test_index_then_reindex_is_incremental(catalogue, datastore_copy):
    first = catalogue.index(datastore_copy)
    assert (first.new, first.updated, first.unchanged, first.failed) == (5, 0, 0, 0)
    again = catalogue.index(datastore_copy)
    assert (again.new, again.updated, again.unchanged, again.failed) == (0, 0, 5, 0)


def test_modified_file_is_updated_and_touched_file_is_unchanged(catalogue, datastore_copy):
    catalogue.index(datastore_copy)
    files = sorted((datastore_copy / "data").glob("*.fits.gz"))

    # Same bytes, new modification time: the hash says unchanged.
    os.utime(files[0], (1e9, 1e9))
    assert catalogue.index(datastore_copy).unchanged == 5

    # One event fewer: a changed run.
    with fits.open(files[1]) as hdul:
        hdul["EVENTS"].data = hdul["EVENTS"].data[:-1]
        hdul.writeto(files[1].with_suffix(".tmp"), overwrite=True)
    shutil.move(files[1].with_suffix(".tmp"), files[1])
    report = catalogue.index(datastore_copy)
    assert (report.new, report.updated, report.unchanged) == (0, 1, 4)
    (changed,) = catalogue.select_runs(["obs_id=1001"])
    assert changed.event_count == len(fits.getdata(files[1], "EVENTS"))


def test_unreadable_runs_are_recorded_as_failed(catalogue, datastore_copy):
    files = sorted((datastore_copy / "data").glob("*.fits.gz"))
    data = files[2].read_bytes()
    files[2].write_bytes(data[: len(data) // 2])
    files[3].unlink()

    report = catalogue.index(datastore_copy)
    assert (report.new, report.failed) == (3, 2)
    reasons = dict(report.failures)
    assert "not found" in reasons[1003]
    assert reasons[1002]

    failed = catalogue.select_runs(status="failed")
    assert obs_ids(failed) == [1002, 1003]
    assert all(run.error for run in failed)
    assert obs_ids(catalogue.select_runs()) == [1000, 1001, 1004]


def test_runs_that_left_the_obs_index_are_removed(catalogue, datastore_copy):
    catalogue.index(datastore_copy)
    table = Table.read(datastore_copy / "obs-index.fits.gz")
    table[table["OBS_ID"] != 1004].write(datastore_copy / "obs-index.fits.gz", overwrite=True)
    report = catalogue.index(datastore_copy)
    assert (report.removed, report.unchanged) == (1, 4)
    assert 1004 not in obs_ids(catalogue.select_runs())


def test_same_obs_id_in_two_datastores_is_two_runs(catalogue, simulated_datastore, datastore_copy):
    catalogue.index(simulated_datastore)
    catalogue.index(datastore_copy)
    runs = catalogue.select_runs(["obs_id=1000"])
    assert sorted(run.datastore.path for run in runs) == sorted(
        [str(simulated_datastore.resolve()), str(datastore_copy.resolve())]
    )
    assert len(catalogue.select_runs(datastore=datastore_copy)) == 5


def test_missing_columns_are_computed(catalogue, datastore_copy):
    """Galactic coordinates from RA/Dec, alt/az from the site and time, zenith from altitude."""
    table = Table.read(datastore_copy / "obs-index.fits.gz")
    reference = table.copy()
    table.remove_columns(["GLON_PNT", "GLAT_PNT", "ZEN_PNT", "ALT_PNT", "AZ_PNT"])
    table.write(datastore_copy / "obs-index.fits.gz", overwrite=True)
    # The event headers also carry ALT/AZ; drop them from one run to force a computation.
    path = datastore_copy / "data" / "run_001000.fits.gz"
    with fits.open(path) as hdul:
        for key in ("ALT_PNT", "AZ_PNT", "ZEN_PNT", "GLON_PNT", "GLAT_PNT"):
            del hdul["EVENTS"].header[key]
        hdul.writeto(path, overwrite=True)

    catalogue.index(datastore_copy)
    runs = {run.obs_id: run for run in catalogue.select_runs()}
    row = reference[reference["OBS_ID"] == 1001][0]
    assert runs[1001].glon_deg == pytest.approx(row["GLON_PNT"], abs=1e-4)
    assert runs[1001].glat_deg == pytest.approx(row["GLAT_PNT"], abs=1e-4)
    assert runs[1001].zenith_deg == pytest.approx(row["ZEN_PNT"], abs=1e-4)  # from the header

    computed = runs[1000]
    assert computed.glat_deg == pytest.approx(reference["GLAT_PNT"][0], abs=1e-4)
    assert computed.alt_deg is not None and computed.zenith_deg == pytest.approx(90 - computed.alt_deg)
    assert 0 <= computed.az_deg < 360
    assert computed.date_obs == date(2004, 3, 3)
    assert computed.deadtime_fraction == pytest.approx(0.1)
    assert computed.extra["OBJECT"] == "SIM FIELD"


def test_datastore_errors(catalogue, tmp_path):
    with pytest.raises(DatastoreError, match="does not exist"):
        catalogue.index(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatastoreError, match="obs-index"):
        catalogue.index(tmp_path / "empty")


def test_info_counts_runs_and_failures(catalogue, datastore_copy):
    (datastore_copy / "data" / "run_001004.fits.gz").unlink()
    catalogue.index(datastore_copy)
    info = catalogue.info()
    assert (info["runs"], info["failed_runs"]) == (4, 1)
    (store,) = info["datastores"]
    assert store["ontime_h"] == pytest.approx(4 * 600 / 3600, rel=1e-6)
    assert store["instruments"] == "SIM"  # the simulated runs' TELESCOP


# -- real data -----------------------------------------------------------------------------------


def test_hess_dr1_index_reindex_and_selection(catalogue, hess_dr1, tmp_path):
    copy = tmp_path / "hess"
    shutil.copytree(hess_dr1, copy)
    first = catalogue.index(copy)
    assert (first.new, first.failed) == (105, 0)
    second = catalogue.index(copy)
    assert (second.new, second.updated, second.unchanged) == (0, 0, 105)

    target = copy / "data" / "hess_dl3_dr1_obs_id_023523.fits.gz"
    with fits.open(target) as hdul:
        hdul["EVENTS"].header["COMMENT"] = "modified copy"
        hdul.writeto(tmp_path / "modified.fits.gz")
    shutil.move(tmp_path / "modified.fits.gz", target)
    third = catalogue.index(copy)
    assert (third.new, third.updated, third.unchanged) == (0, 1, 104)

    crab = catalogue.select_runs(["object=Crab Nebula"])
    assert obs_ids(crab) == [23523, 23526, 23559, 23592]

    table = Table.read(hess_dr1 / "obs-index.fits.gz")
    expected = sorted(int(obs_id) for obs_id in table["OBS_ID"][table["ZEN_PNT"] < 20])
    assert obs_ids(catalogue.select_runs(["zenith<20"])) == expected
    assert len(expected) > 0

    muon = catalogue.select_runs(["MUONEFF>=0.8"])
    assert obs_ids(muon) == sorted(int(i) for i in table["OBS_ID"][table["MUONEFF"] >= 0.8])
    total = sum(run.event_count for run in catalogue.select_runs())
    assert total == int(np.sum(table["EVENT_COUNT"]))


def test_magic_datastore_with_other_columns(catalogue, magic_joint_crab):
    report = catalogue.index(magic_joint_crab)
    # The shared copy ships only one of its two run files: the other is a failed run.
    assert (report.new, report.failed) == (1, 1)
    (run,) = catalogue.select_runs()
    assert run.obs_id == 5029748
    assert run.tellist == "MAGIC-I,MAGIC-II" and run.n_tels == 2
    galactic = SkyCoord(run.ra_deg * u.deg, run.dec_deg * u.deg).galactic  # not in its obs-index
    assert run.glat_deg == pytest.approx(galactic.b.deg) and run.glon_deg == pytest.approx(galactic.l.deg)
    assert run.muon_eff is None
    assert run.event_count > 0
    assert "MUONEFF" not in run.extra and "TELLIST" in run.extra


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_index_refreshes_planner_statistics(catalogue, simulated_datastore):
    """Without ANALYZE, PostgreSQL plans for empty tables right after a bulk index (seconds per query)."""
    import sqlalchemy as sa

    catalogue.index(simulated_datastore)
    with catalogue.engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT reltuples FROM pg_class WHERE relname = 'runs'")).scalar()
    assert rows == 5


def test_instrument_columns_from_the_obs_index(catalogue, tmp_path):
    """VERITAS-style NSBLEVEL and H.E.S.S.-style MUONEFF become typed columns; others stay in extra."""
    from bkgdb.simulate import DatastoreSimulator

    DatastoreSimulator(
        pointings=[(10.0, 20.0)] * 3,
        ontime_s=60.0,
        with_irfs=False,
        extra_columns={
            "NSBLEVEL": [4.0, 6.5, 9.0],
            "MUONEFF": [0.8, 0.9, 1.0],
            "WEATHER": ["A", "B", "A"],
        },
    ).run(tmp_path / "veritas-like")
    catalogue.index(tmp_path / "veritas-like")
    runs = catalogue.select_runs()
    assert [run.nsb_level for run in runs] == [4.0, 6.5, 9.0]
    assert [run.muon_eff for run in runs] == pytest.approx([0.8, 0.9, 1.0])
    assert [run.obs_id for run in catalogue.select_runs(["NSBLEVEL<7", "WEATHER=A"])] == [1000]
    assert [run.obs_id for run in catalogue.select_runs(["nsb>5", "muoneff>=0.95"])] == [1002]


FOV_PARAMS = {
    "kind": "fov",
    "e_min": 0.1,
    "e_max": 100.0,
    "e_bins": 5,
    "fov_max": 2.5,
    "fov_bins": 4,
    "fov_alignment": "RADEC",
}


def test_geometry_from_stored_binning_params():
    from bkgdb.config import Binning
    from bkgdb.store.settings import geometry_from_params

    binning = Binning(e_min=0.2, e_max=50, e_bins=7, off_min=0.5, off_max=2.0, off_bins=3)
    flat = geometry_from_params(binning.params)
    assert flat.kind == "2d" and flat.shape == binning.shape == (7, 3)
    np.testing.assert_array_equal(flat.energy_edges, binning.energy_edges)
    np.testing.assert_array_equal(flat.offset_edges, binning.offset_edges)
    fov = geometry_from_params(FOV_PARAMS)
    assert fov.kind == "3d" and fov.alignment == "RADEC" and fov.shape == (5, 4, 4)
    np.testing.assert_allclose(fov.fov_lon_edges, [-2.5, -1.25, 0, 1.25, 2.5])
    np.testing.assert_array_equal(fov.fov_lat_edges, fov.fov_lon_edges)
    assert geometry_from_params({**FOV_PARAMS, "fov_alignment": None}).alignment == "ALTAZ"


def test_cache_summary_describes_2d_and_3d_pieces(catalogue):
    """`bkgdb cache`: per binning its kind and geometry, pieces and bytes, for offset rings and FoV pixels."""
    from bkgdb.config import Binning
    from bkgdb.makers.piece import BackgroundPiece
    from bkgdb.store.indexing import piece_row
    from bkgdb.store.models import BinningRow, Datastore, ExclusionRow, Run
    from bkgdb.store.pieces import PieceCache
    from bkgdb.store.settings import geometry_from_params

    flat = Binning(e_bins=5, off_bins=3)
    rng = np.random.default_rng(3)
    with catalogue.session() as session:
        store = Datastore(path="/synthetic", obs_index_meta={})
        rows = [BinningRow(hash="2" * 64, params=flat.params), BinningRow(hash="3" * 64, params=FOV_PARAMS)]
        exclusion = ExclusionRow(hash="e" * 64, params={"exposure_method": "geometric"})
        for obs_id in (1, 2):
            run = Run(datastore=store, obs_id=obs_id, status="ok")
            for row in rows:
                shape = geometry_from_params(row.params).shape
                counts = rng.poisson(3.0, size=shape)
                piece = BackgroundPiece(counts, 0 * counts, np.full(shape[1:], 600.0), 600.0, 550.0)
                session.add(piece_row(piece, run, row, exclusion, None))
        session.commit()
    summary = PieceCache(catalogue.engine).summary()
    assert [(entry["binning"], entry["kind"], entry["pieces"]) for entry in summary] == [
        ("2" * 12, "2d", 2),
        ("3" * 12, "3d", 2),
    ]
    assert summary[0]["geometry"] == "0.1-100 TeV x 5, offset 0-2.5 deg x 3"
    assert summary[1]["geometry"] == "0.1-100 TeV x 5, FoV RADEC lon -2.5..2.5 x 4, lat -2.5..2.5 x 4 deg"
    assert summary[1]["bytes_per_piece"] > summary[0]["bytes_per_piece"] > 0  # 80 bins against 15
    assert all(entry["method"] == "geometric" and entry["exclusion"] == "e" * 12 for entry in summary)


def test_run_columns_are_declared_once_in_the_model():
    """The facts a datastore reader returns, and the columns conditions may name, are the model's columns."""
    from dataclasses import fields

    from bkgdb.gadf.runfacts import RunFacts
    from bkgdb.store.conditions import SELECTABLE_COLUMNS, typed_column
    from bkgdb.store.models import RUN_FACT_COLUMNS, Run

    assert [field.name for field in fields(RunFacts)] == list(RUN_FACT_COLUMNS)
    columns = set(Run.__table__.columns.keys())
    assert set(RUN_FACT_COLUMNS) < columns and set(SELECTABLE_COLUMNS) < columns
    assert typed_column("zenith") is Run.zenith_deg and typed_column("extra") is None
