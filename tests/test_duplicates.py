"""A run held by several datastores is one run: a background uses one copy, never a copy of the target."""

import shutil
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from bkgdb.background import BackgroundBuilder
from bkgdb.config import Binning, BkgdbConfig, ExclusionSettings, IOSettings, SelectionSettings
from bkgdb.makers.piece import BackgroundPiece
from bkgdb.store.flags import flag_run
from bkgdb.store.indexing import piece_row
from bkgdb.store.models import BinningRow, Datastore, ExclusionRow, PieceRow, Run
from bkgdb.store.selection import RunSelector

BINNING = Binning(e_min=0.1, e_max=100, e_bins=6, off_min=0, off_max=2.5, off_bins=4)
RUN_ONTIME_S = 600.0  # of every run of the simulated datastore


def make_config(**selection):
    return BkgdbConfig(
        binnings=[BINNING],
        exclusion=ExclusionSettings(gammacat=None, hawc=None, star_cat=None),
        selection=SelectionSettings(**{"el_diff": None, "az_diff": None, "gal_lat_min": 10, **selection}),
        io=IOSettings(),
    )


@pytest.fixture
def two_copies(catalogue, simulated_datastore, tmp_path):
    """The simulated datastore (5 runs) and a copy of it, both indexed with pieces."""
    copy = tmp_path / "copy"
    shutil.copytree(simulated_datastore, copy)
    config = make_config()
    catalogue.index(simulated_datastore, config=config)
    catalogue.index(copy, config=config)
    return simulated_datastore.resolve(), copy.resolve()


def test_every_background_uses_each_run_once_and_never_the_target(catalogue, two_copies):
    original, copy = two_copies
    builder = BackgroundBuilder(catalogue, make_config())
    for target in range(1000, 1005):
        for store in (original, copy):
            built = builder.build(target, store)
            obs_ids = built.selection.obs_ids
            assert len(obs_ids) == len(set(obs_ids)) == 4, (target, store)
            assert target not in obs_ids
            assert built.assembled.ontime_s == pytest.approx(4 * RUN_ONTIME_S)
            # The target's own datastore holds the copies used.
            assert set(built.selection.datastores) == {str(store)}
            # 9 candidates: 4 runs twice and the target's copy; one copy of each of the 4 is left.
            assert built.selection.funnel[:2] == [("candidate runs with pieces", 9), ("duplicate copies", 4)]


def test_too_many_listed_values_give_the_same_selection(catalogue, two_copies, monkeypatch):
    # Beyond OBS_ID_LIST_MAX the repeated OBS_IDs (and empty or flagged runs) are asked for in the
    # query itself instead of as a list: the same runs and funnel.
    from bkgdb.store import integrity

    original, copy = two_copies
    # Something on each list: run 1002 flagged bad, the original copy of run 1004 empty.
    flag_run(catalogue.engine, 1002, "bad", "test")
    with catalogue.engine.begin() as connection:
        in_original = sa.select(Run.id).join(Datastore).where(Run.obs_id == 1004, Datastore.path == str(original))
        connection.execute(sa.update(PieceRow).where(PieceRow.run_id.in_(in_original)).values(n_kept=0, n_excluded=0))
    expected = {target: BackgroundBuilder(catalogue, make_config()).build(target, copy) for target in (1000, 1003)}
    assert {name for before in expected.values() for name, _ in before.selection.funnel} >= {
        "flagged bad",
        "empty runs",
    }
    monkeypatch.setattr(integrity, "OBS_ID_LIST_MAX", 0)
    integrity._lists_statement.cache_clear()
    try:
        builder = BackgroundBuilder(catalogue, make_config())
        for target, before in expected.items():
            built = builder.build(target, copy)
            assert built.selection.obs_ids == before.selection.obs_ids
            assert built.selection.datastores == before.selection.datastores == [str(copy)] * 3
            assert built.selection.funnel == before.selection.funnel
    finally:
        integrity._lists_statement.cache_clear()


def test_same_model_as_from_one_datastore(catalogue, two_copies, tmp_path):
    from bkgdb.store.catalogue import RunCatalogue

    original, _ = two_copies
    single = RunCatalogue.open(f"sqlite:///{tmp_path / 'single.sqlite'}")
    try:
        single.index(original, config=make_config())
        alone = BackgroundBuilder(single, make_config()).build(1002)
    finally:
        single.engine.dispose()
    doubled = BackgroundBuilder(catalogue, make_config()).build(1002, original)
    assert sorted(doubled.selection.obs_ids) == sorted(alone.selection.obs_ids)
    np.testing.assert_array_equal(doubled.assembled.counts, alone.assembled.counts)
    np.testing.assert_allclose(doubled.rate, alone.rate)


def test_time_request_counts_distinct_runs(catalogue, two_copies):
    original, _ = two_copies
    half_hour = BackgroundBuilder(catalogue, make_config(time_request=0.5)).build(1000, original)
    assert len(set(half_hour.selection.obs_ids)) == len(half_hour.selection.obs_ids) == 3  # 3 x 10 min
    assert half_hour.selection.ontime_s == pytest.approx(3 * RUN_ONTIME_S)
    everything = BackgroundBuilder(catalogue, make_config(time_request=1.0)).build(1000, original)
    assert sorted(everything.selection.obs_ids) == [1001, 1002, 1003, 1004]
    assert everything.selection.ontime_s == pytest.approx(4 * RUN_ONTIME_S)  # not 8 copies' worth
    assert everything.selection.warnings == ["run 1000: 0.7 h of the 1 h requested are available"]
    # The request is echoed as given: an "everything" of 1e300 h in a few characters, not 300 digits.
    huge = BackgroundBuilder(catalogue, make_config(time_request=1e300)).build(1000, original)
    assert huge.selection.warnings == ["run 1000: 0.7 h of the 1e+300 h requested are available"]


def test_written_provenance_lists_each_run_once(catalogue, two_copies, tmp_path):
    from astropy.table import Table

    _, copy = two_copies
    BackgroundBuilder(catalogue, make_config()).write(1001, tmp_path / "bkg.fits", datastore=copy)
    runs = Table.read(tmp_path / "bkg.fits", hdu="BKGDB_RUNS")
    assert sorted(runs["OBS_ID"]) == [1000, 1002, 1003, 1004]
    assert set(runs["DATASTORE"]) == {str(copy)}


def add_copies(catalogue, stores):
    """Catalogue rows with pieces in several synthetic datastores.

    ``stores`` maps a datastore path to the (obs_id, tstart_mjd) of its runs; datastores are
    indexed in the order given, a minute apart.
    """
    with Session(catalogue.engine, expire_on_commit=False) as session:
        binning = BinningRow(hash="b" * 64, params=BINNING.params)
        exclusion = ExclusionRow(hash="e" * 64, params={"exposure_method": "geometric"})
        session.add_all([binning, exclusion])
        start = datetime(2026, 1, 1, tzinfo=UTC)
        runs = {}
        for number, (path, observations) in enumerate(stores.items()):
            store = Datastore(path=path, obs_index_meta={}, first_indexed_at=start + timedelta(minutes=number))
            session.add(store)
            for obs_id, tstart in observations:
                run = Run(
                    datastore=store,
                    obs_id=obs_id,
                    status="ok",
                    zenith_deg=30.0,
                    alt_deg=60.0,
                    az_deg=180.0,
                    glat_deg=45.0,
                    tstart_mjd=tstart,
                    ontime_s=1800.0,
                    n_tels=4,
                    extra={},
                )
                counts = np.ones(BINNING.shape, dtype=np.int64)
                piece = BackgroundPiece(counts, 0 * counts, np.full(BINNING.off_bins, 1800.0), 1800.0, 1620.0)
                session.add_all([run, piece_row(piece, run, binning, exclusion, None)])
                runs[(path, obs_id, tstart)] = run
        session.commit()
        return runs, binning.id, exclusion.id


def test_preferred_copy_and_what_counts_as_one_run(catalogue):
    first, second, target_store, other = "/first", "/second", "/target", "/other"
    runs, binning_id, exclusion_id = add_copies(
        catalogue,
        {
            # Indexed first: runs 1-3 and a copy of the target 9 (start known to the second only).
            first: [(1, 55000.1), (2, 55000.2), (3, 55000.3), (9, 55000.9 + 0.4 / 86400)],
            # Copies of 1-3, and run 4.
            second: [(1, 55000.1), (2, 55000.2), (3, 55000.3), (4, 55000.4)],
            # The target's datastore: the target and its own copy of run 2.
            target_store: [(9, 55000.9), (2, 55000.2)],
            # An observation that reuses OBS_ID 3 at another time: another run.
            other: [(3, 55100.3)],
        },
    )
    target = runs[(target_store, 9, 55000.9)]
    with Session(catalogue.engine) as session:
        selection = RunSelector(SelectionSettings(el_diff=None, az_diff=None, gal_lat_min=0)).run(
            session, session.get(Run, target.id), binning_id, exclusion_id
        )
    by_run = {}
    with Session(catalogue.engine) as session:
        for run_id in selection.run_ids:
            run = session.get(Run, run_id)
            by_run[(run.obs_id, run.tstart_mjd)] = run.datastore.path
    assert by_run == {
        (2, 55000.2): target_store,  # the target's datastore first
        (1, 55000.1): first,
        (3, 55000.3): first,  # then the datastore indexed first
        (4, 55000.4): second,  # the only copy
        (3, 55100.3): other,  # same OBS_ID, another observation start: another run
    }
    # 10 candidates (every row but the target): 4 copies of 1-3 and the target's copy are dropped.
    assert selection.funnel == [("candidate runs with pieces", 10), ("duplicate copies", 5)]
