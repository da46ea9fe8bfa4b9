"""Run selection: each criterion in SQL, relative to the target run."""

import math
from collections import namedtuple
from datetime import date

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from test_query_plans import recorded_statements

from bkgdb.config import Binning, SelectionSettings
from bkgdb.errors import BkgdbError, ConfigError, NoRunsSelected, TooLittleStatistics
from bkgdb.makers.piece import BackgroundPiece
from bkgdb.store.backgrounds import selected_pieces
from bkgdb.store.indexing import piece_row
from bkgdb.store.models import BinningRow, Datastore, ExclusionRow, PieceRow, Run
from bkgdb.store.ranking import AIRMASS_STEP, airmass, airmass_then_time, kl_divergence, known_or_zero, rate_shape
from bkgdb.store.selection import RunSelector, zenith_range

BINNING = Binning(e_bins=4, off_bins=3)
OPEN = dict(el_diff=None, az_diff=None, gal_lat_min=0)


def add_runs(catalogue, runs, counts=None):
    """Catalogue rows with pieces; ``runs`` are dicts of Run columns (obs_id required)."""
    with Session(catalogue.engine, expire_on_commit=False) as session:
        store = Datastore(path="/synthetic", obs_index_meta={})
        binning = BinningRow(hash="b" * 64, params=BINNING.params)
        exclusion = ExclusionRow(hash="e" * 64, params={"exposure_method": "geometric"})
        session.add_all([store, binning, exclusion])
        rows = []
        for values in runs:
            defaults = dict(
                status="ok",
                zenith_deg=30.0,
                alt_deg=60.0,
                az_deg=180.0,
                glat_deg=45.0,
                tstart_mjd=55000.0,
                date_obs=date(2009, 6, 18),
                ontime_s=1800.0,
                n_tels=4,
                extra={"QUALITY": 0},
            )
            run = Run(datastore=store, **{**defaults, **values})
            run.alt_deg = 90.0 - run.zenith_deg
            kept = counts(values["obs_id"]) if counts else np.ones(BINNING.shape, dtype=np.int64)
            piece = BackgroundPiece(
                kept, np.zeros_like(kept), np.full(kept.shape[1:], run.ontime_s), run.ontime_s, run.ontime_s
            )
            session.add_all([run, piece_row(piece, run, binning, exclusion, None)])
            rows.append(run)
        session.commit()
        return {run.obs_id: run for run in rows}, binning.id, exclusion.id


def select(catalogue, runs, ids, target, **settings):
    selector = RunSelector(SelectionSettings(**{**OPEN, **settings}))
    with Session(catalogue.engine) as session:
        return selector.run(session, session.get(Run, runs[target].id), *ids, catalogue.extra_keys())


def chosen(catalogue, runs, ids, target, **settings):
    return sorted(select(catalogue, runs, ids, target, **settings).obs_ids)


def test_zenith_range_matches_airmass():
    low, high = zenith_range(45.0, 0.15)
    assert airmass(low) == pytest.approx(airmass(45.0) - 0.15)
    assert airmass(high) == pytest.approx(airmass(45.0) + 0.15)
    assert zenith_range(5.0, 0.15)[0] == 0.0  # airmass cannot go below 1


def test_airmass_and_never_the_target(catalogue):
    runs, *ids = add_runs(
        catalogue,
        [
            {"obs_id": 1, "zenith_deg": 45},
            {"obs_id": 2, "zenith_deg": 47},
            {"obs_id": 3, "zenith_deg": 55},
            {"obs_id": 4, "zenith_deg": 20},
        ],
    )
    ids = tuple(ids)
    # airmass(45) = 1.414; 47 -> 1.466, 55 -> 1.743, 20 -> 1.064
    assert chosen(catalogue, runs, ids, 1, el_diff=0.15) == [2]
    assert chosen(catalogue, runs, ids, 1, el_diff=0.4) == [2, 3, 4]


def test_azimuth_wraps_at_360(catalogue):
    runs, *ids = add_runs(
        catalogue,
        [
            {"obs_id": 1, "az_deg": 355},
            {"obs_id": 2, "az_deg": 5},
            {"obs_id": 3, "az_deg": 340},
            {"obs_id": 4, "az_deg": 20},
            {"obs_id": 5, "az_deg": 180},
        ],
    )
    ids = tuple(ids)
    assert chosen(catalogue, runs, ids, 1, az_diff=11) == [2]  # 355 and 5 are 10 deg apart
    assert chosen(catalogue, runs, ids, 1, az_diff=26) == [2, 3, 4]
    assert chosen(catalogue, runs, ids, 2, az_diff=14) == [1]
    assert chosen(catalogue, runs, ids, 2, az_diff=16) == [1, 4]
    assert chosen(catalogue, runs, ids, 2, az_diff=26) == [1, 3, 4]
    assert chosen(catalogue, runs, ids, 5, az_diff=180) == [1, 2, 3, 4]


def test_nsb_time_telescopes_elevation_latitude_and_where(catalogue):
    runs, *ids = add_runs(
        catalogue,
        [
            {"obs_id": 1, "nsb_level": 5.0, "tstart_mjd": 55000.0, "glat_deg": 40},
            {"obs_id": 2, "nsb_level": 5.5, "tstart_mjd": 55010.0, "glat_deg": -40, "n_tels": 3},
            {"obs_id": 3, "nsb_level": 8.0, "tstart_mjd": 55300.0, "glat_deg": 5, "zenith_deg": 10},
            {
                "obs_id": 4,
                "nsb_level": None,
                "tstart_mjd": 54990.0,
                "glat_deg": 60,
                "object_name": "PKS 2155-304",
                "extra": {"QUALITY": 1},
            },
        ],
    )
    ids = tuple(ids)
    assert chosen(catalogue, runs, ids, 1, nsb_diff=1.0) == [2]  # no NSB value: not similar
    assert chosen(catalogue, runs, ids, 1, time_max=30) == [2, 4]
    assert chosen(catalogue, runs, ids, 1, n_tels=4) == [3, 4]
    assert chosen(catalogue, runs, ids, 1, el_min=70) == [3]
    assert chosen(catalogue, runs, ids, 1, el_max=70) == [2, 4]
    assert chosen(catalogue, runs, ids, 1, gal_lat_min=10) == [2, 4]
    assert chosen(catalogue, runs, ids, 1, where=("object~pks",)) == [4]
    assert chosen(catalogue, runs, ids, 1, where=("QUALITY=1",)) == [4]


def test_same_season(catalogue):
    runs, *ids = add_runs(
        catalogue,
        [
            {"obs_id": 1, "date_obs": date(2010, 1, 10)},
            {"obs_id": 2, "date_obs": date(2010, 3, 1)},
            {"obs_id": 3, "date_obs": date(2010, 9, 1)},
            {"obs_id": 4, "date_obs": date(2009, 12, 31)},
        ],
    )
    seasons = (("2009-09-01", "2009-12-31"), ("2010-01-01", "2010-06-30"), ("2010-07-01", "2011-06-30"))
    assert chosen(catalogue, runs, tuple(ids), 1, same_szn=True, seasons=seasons) == [2]
    with pytest.raises(BkgdbError) as error:
        select(catalogue, runs, tuple(ids), 1, same_szn=True, seasons=seasons[2:])
    assert type(error.value) is BkgdbError
    assert str(error.value) == "run 1 (2010-01-10) is in none of the configured seasons"


def test_time_request_takes_most_similar_first(catalogue):
    runs, *ids = add_runs(
        catalogue,
        [
            {"obs_id": 1, "zenith_deg": 40.0, "tstart_mjd": 55000},
            {"obs_id": 2, "zenith_deg": 40.1, "tstart_mjd": 55100},  # same airmass step, later
            {"obs_id": 3, "zenith_deg": 40.1, "tstart_mjd": 55001},  # same step, closest in time
            {"obs_id": 4, "zenith_deg": 44.0, "tstart_mjd": 55000},  # airmass further away
            {"obs_id": 5, "zenith_deg": 42.0, "tstart_mjd": 55000},
        ],
    )
    selection = select(catalogue, runs, tuple(ids), 1, time_request=1.0)  # 1 h = two 30-min runs
    assert selection.obs_ids == [3, 2]
    assert selection.ontime_s == 3600.0 and selection.ranking == "airmass_then_time"
    everything = select(catalogue, runs, tuple(ids), 1, time_request=10.0)
    assert everything.obs_ids == [3, 2, 5, 4] and everything.ontime_s < everything.requested_s


def test_kl_divergence_ranking(catalogue):
    shape = np.outer([100, 50, 20, 5], [1, 2, 3])
    flat = np.full(BINNING.shape, 30)
    counts = {1: shape, 2: flat, 3: shape * 2, 4: shape[::-1]}
    runs, *ids = add_runs(catalogue, [{"obs_id": i} for i in counts], counts=lambda obs_id: counts[obs_id])
    selection = select(catalogue, runs, tuple(ids), 1, KL_DIV=True)
    assert selection.obs_ids == [3, 2, 4]  # same shape with twice the statistics first
    assert selection.ranking == "kl_divergence"


def test_kl_ranking_of_candidates_read_with_their_pieces_reads_the_targets_piece_alone(catalogue):
    shape = np.outer([100, 50, 20, 5], [1, 2, 3])
    counts = {1: shape, 2: np.full(BINNING.shape, 30), 3: shape * 2, 4: shape[::-1]}
    runs, *ids = add_runs(catalogue, [{"obs_id": i} for i in counts], counts=lambda obs_id: counts[obs_id])
    selector = RunSelector(SelectionSettings(**{**OPEN, "KL_DIV": True}))
    with Session(catalogue.engine) as session:
        target = session.get(Run, runs[1].id)
        alone = selector.run(session, target, *ids)
        together = []
        statements = recorded_statements(
            catalogue.engine, lambda: together.append(selector.run(session, target, *ids, with_pieces=True))
        )
    assert together[0].obs_ids == alone.obs_ids == [3, 2, 4]
    assert together[0].pieces["piece_id"] == tuple(alone.piece_ids)
    # The ranking's own read of pieces asks for the target's alone: no list or query of candidates.
    (ranking_read,) = [sql for sql, _ in statements if "CAST(pieces.shape AS" in sql]
    assert " IN " not in ranking_read.upper() and "ANY" not in ranking_read.upper() and "runs" not in ranking_read
    # Without the target's own piece there is nothing to rank by.
    with Session(catalogue.engine) as session:
        session.execute(sa.delete(PieceRow).where(PieceRow.run_id == runs[1].id))
        with pytest.raises(BkgdbError, match="KL_DIV needs run 1's own piece"):
            selector.run(session, session.get(Run, runs[1].id), *ids, with_pieces=True)


def test_kl_divergence_ranking_on_fov_pixels(catalogue):
    """3D pieces (energy x FoV lon x lat) are ranked by their whole shape: a FoV mirrored in lon has
    the same offset profile, yet ranks after a run of the target's shape."""
    energy, lon, lat = np.array([100, 50, 20, 5]), np.array([1, 2, 3, 4, 6]), np.array([1, 1, 2])
    shape = np.einsum("e,x,y->exy", energy, lon, lat)
    counts = {1: shape, 2: np.full(shape.shape, 40), 3: shape * 2, 4: shape[:, ::-1, :]}
    runs, *ids = add_runs(catalogue, [{"obs_id": i} for i in counts], counts=lambda obs_id: counts[obs_id])
    selection = select(catalogue, runs, tuple(ids), 1, KL_DIV=True)
    own = rate_shape(BackgroundPiece(shape, 0 * shape, np.full(shape.shape[1:], 1800.0), 1800.0, 1800.0))
    divergence = {
        obs_id: kl_divergence(own, rate_shape(BackgroundPiece(c, 0 * c, np.full(c.shape[1:], 1800.0), 1800.0, 1800.0)))
        for obs_id, c in counts.items()
        if obs_id != 1
    }
    assert selection.ranking == "kl_divergence" and selection.obs_ids[0] == 3
    assert selection.obs_ids == sorted(divergence, key=divergence.get)
    assert divergence[4] > 0.05 > divergence[3]


def test_kl_divergence_compares_rates_not_holes():
    """A run with a star cutting half of one offset bin has the same rate shape."""

    def piece(counts, exposure):
        counts = np.asarray(counts, dtype=np.int64)
        return BackgroundPiece(counts, 0 * counts, np.asarray(exposure, float), 1800.0, 1600.0)

    counts = np.outer([400, 200, 80, 20], [10, 20, 30])
    full = rate_shape(piece(counts, [1800, 1800, 1800]))
    holed = counts.copy()
    holed[:, 1] //= 2
    assert kl_divergence(full, rate_shape(piece(holed, [1800, 900, 1800]))) < 1e-3
    assert kl_divergence(full, rate_shape(piece(holed, [1800, 1800, 1800]))) > 1e-2  # counts alone differ
    assert kl_divergence(full, full) == 0


def test_from_run_and_empty_selection_explained(catalogue):
    runs, *ids = add_runs(catalogue, [{"obs_id": 1, "zenith_deg": 20}, {"obs_id": 2, "zenith_deg": 60, "glat_deg": 2}])
    ids = tuple(ids)
    with Session(catalogue.engine) as session:
        target = session.get(Run, runs[1].id)
        own = RunSelector(SelectionSettings(), from_run=True).run(session, target, *ids)
        assert own.obs_ids == [1]
        with pytest.raises(NoRunsSelected) as error:
            RunSelector(SelectionSettings(el_diff=0.15, az_diff=None, gal_lat_min=10)).run(session, target, *ids)
    assert type(error.value) is NoRunsSelected  # not TooLittleStatistics: nothing passed at all
    assert str(error.value) == (
        "no runs selected for run 1: 1 candidate runs with pieces; "
        "airmass within 0.15 removed 1 (0 left); |b| > 10 deg removed 0 (0 left)"
    )


def test_too_little_statistics_warns_or_fails(catalogue, caplog):
    runs, *ids = add_runs(catalogue, [{"obs_id": 1}, {"obs_id": 2, "ontime_s": 1692.0}])
    ids = tuple(ids)
    with caplog.at_level("WARNING", logger="bkgdb.store.selection"):
        warned = select(catalogue, runs, ids, 1, min_runs=3, min_ontime=2.0)
    message = "run 1: the background rests on 1 run (0.47 h ontime), below min_runs 3 and min_ontime 2 h"
    assert warned.obs_ids == [2] and warned.warnings == [message]
    assert [record.getMessage() for record in caplog.records] == [message]
    assert select(catalogue, runs, ids, 1, min_runs=1, min_ontime=0.4).warnings == []
    with pytest.raises(TooLittleStatistics, match=r"below min_ontime 2 h \(1 candidate runs with pieces"):
        select(catalogue, runs, ids, 1, min_ontime=2.0, min_statistics="error")


def test_min_statistics_config_keys():
    settings = SelectionSettings.from_dict({"min_runs": 5, "min_ontime": 2.5, "min_statistics": "error"})
    assert (settings.min_runs, settings.min_ontime, settings.min_statistics) == (5, 2.5, "error")
    assert SelectionSettings.from_dict({}).min_statistics == "warn"
    with pytest.raises(ConfigError, match="min_statistics must be one of warn, error, got 'fail'"):
        SelectionSettings.from_dict({"min_statistics": "fail"})
    with pytest.raises(ConfigError, match="min_runs must be >= 1"):
        SelectionSettings.from_dict({"min_runs": 0})


def test_search_datastore_not_in_the_catalogue_is_named(catalogue, tmp_path):
    runs, *ids = add_runs(catalogue, [{"obs_id": 1}, {"obs_id": 2}])
    selector = RunSelector(SelectionSettings(**OPEN), search_datastore=str(tmp_path / "elsewhere"))
    with Session(catalogue.engine) as session:
        with pytest.raises(BkgdbError) as error:
            selector.run(session, session.get(Run, runs[1].id), *ids)
    assert str(error.value) == (
        f"io.search_datastore {tmp_path / 'elsewhere'} is not in the catalogue; indexed datastores: /synthetic"
    )
    selector = RunSelector(SelectionSettings(**OPEN), search_datastore="/synthetic")
    with Session(catalogue.engine) as session:
        assert selector.run(session, session.get(Run, runs[1].id), *ids).obs_ids == [2]


def test_a_failed_target_says_why(catalogue, datastore_copy):
    from bkgdb.background import BackgroundBuilder
    from bkgdb.config import BkgdbConfig, ExclusionSettings, IOSettings

    (datastore_copy / "data" / "run_001002.fits.gz").write_bytes(b"SIMPLE  =  not really fits")
    config = BkgdbConfig(
        binnings=[BINNING],
        exclusion=ExclusionSettings(gammacat=None, hawc=None, star_cat=None),
        selection=SelectionSettings(**OPEN),
        io=IOSettings(),
    )
    catalogue.index(datastore_copy, config=config)
    with pytest.raises(BkgdbError, match=r"^run 1002 failed to index: \S"):
        BackgroundBuilder(catalogue, config).build(1002)
    with pytest.raises(BkgdbError, match="run 4242 is not in the catalogue"):
        BackgroundBuilder(catalogue, config).build(4242)


def test_background_command_prints_a_statistics_warning_once(db_url, simulated_datastore, tmp_path):
    from typer.testing import CliRunner

    from bkgdb.cli.main import app

    config = tmp_path / "config.yaml"
    config.write_text("""
binning: {e_min: 0.1, e_max: 100, e_bins: 6, off_min: 0, off_max: 2.5, off_bins: 4}
exclusion: {gammacat: none, hawc: none, star_cat: none}
background_selection: {el_diff: null, az_diff: null, gal_lat_min: 10, min_runs: 10}
""")
    runner = CliRunner()
    indexed = runner.invoke(app, ["--db", db_url, "index", str(simulated_datastore), "--config", str(config)])
    assert indexed.exit_code == 0
    result = runner.invoke(
        app, ["--db", db_url, "background", "1000", "--config", str(config), "-o", str(tmp_path / "bkg.fits")]
    )
    assert result.exit_code == 0, result.output
    warning = "Warning: run 1000: the background rests on 4 runs (0.67 h ontime), below min_runs 10"
    assert warning in result.output and result.output.count("the background rests on") == 1
    strict = tmp_path / "strict.yaml"
    strict.write_text(config.read_text().replace("min_runs: 10", "min_runs: 10, min_statistics: error"))
    failed = runner.invoke(
        app, ["--db", db_url, "background", "1000", "--config", str(strict), "-o", str(tmp_path / "strict.fits")]
    )
    assert failed.exit_code == 2 and "Error: run 1000: the background rests on 4 runs" in failed.output
    assert not (tmp_path / "strict.fits").exists()


def test_a_piece_gone_between_selection_and_loading_is_an_error(catalogue):
    runs, binning_id, exclusion_id = add_runs(catalogue, [{"obs_id": 1}, {"obs_id": 2}, {"obs_id": 3}])
    selection = select(catalogue, runs, (binning_id, exclusion_id), 1)
    assert selection.datastore_ids == [runs[2].datastore_id] * 2
    arguments = (selection.piece_ids, selection.run_ids, binning_id, exclusion_id)
    with Session(catalogue.engine) as session:
        assert selected_pieces(session, *arguments)["piece_id"] == tuple(selection.piece_ids)
        # Run 3 indexed again meanwhile, its new piece not yet written.
        session.execute(sa.delete(PieceRow).where(PieceRow.run_id == runs[3].id))
        with pytest.raises(BkgdbError, match="1 of the 2 selected runs lost their piece"):
            selected_pieces(session, *arguments)


def test_a_piece_id_given_to_another_run_meanwhile_is_not_summed_for_the_selected_one(catalogue):
    runs, binning_id, exclusion_id = add_runs(catalogue, [{"obs_id": 1}, {"obs_id": 2}, {"obs_id": 3}])
    selection = select(catalogue, runs, (binning_id, exclusion_id), 1)
    pieces = PieceRow.__table__
    with Session(catalogue.engine) as session:
        # Runs 1 and 3 indexed again meanwhile; run 1's new piece got the id run 3's had (SQLite
        # gives a deleted highest id again).
        freed = session.execute(sa.select(pieces).where(pieces.c.run_id == runs[3].id)).mappings().one()
        session.execute(sa.delete(pieces).where(pieces.c.run_id.in_([runs[1].id, runs[3].id])))
        session.execute(sa.insert(pieces).values({**freed, "run_id": runs[1].id}))
        assert freed["id"] in selection.piece_ids
        with pytest.raises(BkgdbError, match="1 of the 2 selected runs lost their piece"):
            selected_pieces(session, selection.piece_ids, selection.run_ids, binning_id, exclusion_id)


def test_ranking_counts_an_unknown_zenith_as_the_nearest_step_and_an_unknown_start_as_day_0():
    Candidate = namedtuple("Candidate", "id obs_id zenith_deg tstart_mjd")
    rng = np.random.default_rng(4)
    unknown = [None, math.nan]
    rows = [
        Candidate(
            i,
            1000 - i,
            unknown[i % 2] if i % 7 == 0 else float(rng.uniform(10, 50)),
            unknown[i % 2] if i % 5 == 0 else float(rng.uniform(55000, 56000)),
        )
        for i in range(300)
    ]
    target = Candidate(-1, 5, 30.0, 55500.0)

    def key(row):  # the rule, run by run
        known = row.zenith_deg is not None and not math.isnan(row.zenith_deg)
        step = math.floor(abs(airmass(row.zenith_deg) - airmass(30.0)) / AIRMASS_STEP) if known else 0
        start = row.tstart_mjd if row.tstart_mjd is not None and not math.isnan(row.tstart_mjd) else 0.0
        return step, abs(start - 55500.0), row.obs_id

    assert airmass_then_time(target, rows) == sorted(rows, key=key)
    np.testing.assert_array_equal(known_or_zero([1.5, None, math.nan, 0.0]), [1.5, 0.0, 0.0, 0.0])
