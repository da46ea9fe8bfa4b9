"""Selection as index range scans, and results equal to ranking every candidate, on SQLite and PostgreSQL."""

import math
from datetime import date, timedelta

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from bkgdb.background import BackgroundBuilder
from bkgdb.config import Binning, BkgdbConfig, ExclusionSettings, SelectionSettings
from bkgdb.makers.assembly import assemble_background
from bkgdb.makers.condition_fit import ConditionModelFitter, representative_subset
from bkgdb.makers.condition_model import RunConditions
from bkgdb.makers.piece import BackgroundPiece
from bkgdb.simulate import BackgroundTruth
from bkgdb.store.condition_models import archive_condition_model
from bkgdb.store.funnel_counts import funnel_counts
from bkgdb.store.indexing import piece_values
from bkgdb.store.models import BinningRow, ConditionModelRow, Datastore, ExclusionRow, PieceRow, Run
from bkgdb.store.pieces import row_to_piece
from bkgdb.store.ranking import AIRMASS_STEP, airmass, kl_divergence, kl_divergences, rate_shape

BINNING = Binning(e_min=0.1, e_max=100, e_bins=12, off_min=0, off_max=2.5, off_bins=5)
EXCLUSION = ExclusionSettings(gammacat=None, hawc=None, star_cat=None)
TRUTH = BackgroundTruth(norm=1e-4, threshold_tev=0.3, threshold_zenith_index=2.5, rate_zenith_index=1.0)
ONTIME = 1800.0


def synthetic_catalogue(catalogue, n_runs, seed=3):
    """``n_runs`` runs (OBS_ID 0, 1, ...) with pieces drawn from `TRUTH` at their zenith angles."""
    rng = np.random.default_rng(seed)
    with Session(catalogue.engine) as session:
        store = Datastore(path="/synthetic", obs_index_meta={})
        binning = BinningRow(hash=BINNING.hash, params=BINNING.params)
        exclusion = ExclusionRow(hash=EXCLUSION.hash, params=EXCLUSION.params)
        session.add_all([store, binning, exclusion])
        session.commit()
        ids = store.id, binning.id, exclusion.id
    zenith = rng.uniform(0, 60, n_runs)
    days = rng.integers(0, 3000, n_runs)
    runs = [
        dict(
            id=i + 1,
            datastore_id=ids[0],
            obs_id=i,
            status="ok",
            zenith_deg=float(zenith[i]),
            alt_deg=float(90 - zenith[i]),
            az_deg=float(rng.uniform(0, 360)),
            glat_deg=float(rng.uniform(-90, 90)),
            tstart_mjd=55000.0 + float(days[i]),
            date_obs=date(2009, 6, 18) + timedelta(days=int(days[i])),
            ontime_s=ONTIME,
            n_tels=int(rng.integers(2, 5)),
            muon_eff=float(rng.uniform(0.6, 0.9)),
            # One instrument: the "same instrument" criterion applies, and passes every run.
            instrument="HESS",
            extra={},
        )
        for i in range(n_runs)
    ]
    expected = {
        round(z): TRUTH.expected_counts(BINNING.energy_edges, BINNING.offset_edges, ONTIME, round(z)) for z in zenith
    }
    exposure, none = np.full(BINNING.off_bins, ONTIME), np.zeros(BINNING.shape, dtype=np.int64)
    # Encoded as the index encodes them: counts in the smallest integer type that holds them, so
    # the build decodes pieces of several dtypes together.
    pieces = [
        piece_values(
            BackgroundPiece(rng.poisson(expected[round(zenith[i])]), none, exposure, ONTIME, ONTIME),
            i + 1,
            ids[1],
            ids[2],
            None,
        )
        for i in range(n_runs)
    ]
    with catalogue.engine.begin() as connection:
        connection.execute(sa.insert(Run), runs)
        connection.execute(sa.insert(PieceRow), pieces)
        if catalogue.engine.dialect.name == "postgresql":
            connection.exec_driver_sql("SELECT setval('runs_id_seq', (SELECT max(id) FROM runs))")
            connection.exec_driver_sql("ANALYZE runs, pieces")
        else:
            connection.exec_driver_sql("ANALYZE")
    return runs


def make_config(**selection):
    return BkgdbConfig(binnings=[BINNING], exclusion=EXCLUSION, selection=SelectionSettings(**selection))


def recorded_statements(engine, action):
    """(SQL, parameters) of every statement ``action()`` runs on ``engine``."""
    statements = []

    def record(connection, cursor, statement, parameters, context, executemany):
        statements.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        action()
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    return statements


def plan(engine, statement, parameters):
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            return "\n".join(
                row[-1] for row in connection.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)
            )
        return "\n".join(row[0] for row in connection.exec_driver_sql("EXPLAIN ANALYZE " + statement, parameters))


def test_zenith_range_is_searched_in_the_runs_index(catalogue):
    synthetic_catalogue(catalogue, 3000)
    target = 7
    builder = BackgroundBuilder(catalogue, make_config(el_diff=0.01, az_diff=20, time_request=2))
    statements = recorded_statements(catalogue.engine, lambda: builder.build(target))
    on_runs = [
        (sql, parameters)
        for sql, parameters in statements
        if "FROM runs" in sql and "runs.zenith_deg >=" in sql and "pieces.counts" not in sql
    ]
    assert on_runs, "the selection asked no zenith range"
    for sql, parameters in on_runs:
        text = plan(catalogue.engine, sql, parameters)
        if catalogue.engine.dialect.name == "sqlite":
            assert "INDEX ix_runs_selection (zenith_deg>? AND zenith_deg<?)" in text, text
        else:
            # PostgreSQL weighs the zenith range against the azimuth one (as selective here): either is
            # a range scan of an index; the runs table is never read whole.
            assert ("ix_runs_selection" in text or "ix_runs_az_deg" in text) and "Seq Scan on runs" not in text, text
        # The setting's pieces are looked up per run, never scanned.
        assert "Seq Scan on pieces" not in text and "SCAN pieces" not in text, text
    if catalogue.engine.dialect.name == "sqlite":
        # No statement of the build reads the runs or pieces tables row by row (index-only counts may).
        for sql, parameters in statements:
            lines = [line.strip() for line in plan(catalogue.engine, sql, parameters).splitlines()]
            assert not {"SCAN runs", "SCAN pieces"} & set(lines), (sql, lines)


def test_instrument_criterion_is_tested_in_the_runs_index(catalogue):
    """A catalogue of two instruments: the criterion and the count of runs left to read again (after
    it removed some) read indexes only; no run of the other instrument is chosen."""
    synthetic_catalogue(catalogue, 3000)
    with catalogue.engine.begin() as connection:
        connection.execute(sa.update(Run).where(Run.obs_id % 7 == 0).values(instrument="VERITAS"))
        connection.exec_driver_sql("ANALYZE")
    builder = BackgroundBuilder(catalogue, make_config(el_diff=0.05, az_diff=60, time_request=2))
    statements = recorded_statements(catalogue.engine, lambda: builder.build(8))
    built = builder.build(8)
    assert built.selection.funnel[2][0] == "same instrument (HESS)"
    assert built.selection.funnel[2][1] < built.selection.funnel[1][1]  # it removed the VERITAS runs
    assert built.selection.obs_ids and all(obs_id % 7 for obs_id in built.selection.obs_ids)
    counts = [(sql, parameters) for sql, parameters in statements if "runs.instrument IS NULL" in sql]
    assert len(counts) == 1, "the runs left to read again were not counted once"
    if catalogue.engine.dialect.name == "sqlite":
        for sql, parameters in statements:
            lines = [line.strip() for line in plan(catalogue.engine, sql, parameters).splitlines()]
            assert not {"SCAN runs", "SCAN pieces"} & set(lines), (sql, lines)
        assert "COVERING INDEX ix_runs_instrument" in plan(catalogue.engine, *counts[0])


def test_airmass_shells_are_read_with_their_own_range_alone(catalogue):
    """SQLite scans the first range a query gives on an indexed column, not the narrowest: a shell
    read with the airmass window as well scanned the whole window (6 ms instead of 0.6 at 100,000 runs)."""
    synthetic_catalogue(catalogue, 3000)
    builder = BackgroundBuilder(catalogue, make_config(el_diff=0.15, az_diff=20, time_request=2))
    statements = recorded_statements(catalogue.engine, lambda: builder.build(7))
    shells = [sql for sql, _ in statements if "runs.tstart_mjd, runs.ontime_s" in sql and "FROM runs" in sql]
    assert shells, "no airmass shell was read"
    for sql in shells:
        assert sql.count("runs.zenith_deg >=") == sql.count("runs.zenith_deg <=") == 1, sql
    assert builder.build(7).selection.obs_ids == reference_selection(catalogue, 7, builder.config.selection)[0]


def test_empty_pieces_are_found_in_their_own_index(catalogue):
    """Every build asks for the setting's empty pieces: found in the partial index that holds only
    them, not by going through every piece of the setting."""
    synthetic_catalogue(catalogue, 3000)
    with catalogue.engine.begin() as connection:  # two empty pieces: the index holds exactly them
        connection.execute(sa.update(PieceRow).where(PieceRow.run_id.in_([5, 9])).values(n_kept=0))
    builder = BackgroundBuilder(catalogue, make_config(el_diff=0.01, az_diff=20, time_request=2))
    statements = recorded_statements(catalogue.engine, lambda: builder.build(7))
    (sql, parameters), *_ = [(sql, p) for sql, p in statements if "NOT (pieces.ontime_s > 0" in sql]
    text = plan(catalogue.engine, sql, parameters)
    assert "ix_pieces_empty" in text and "ix_pieces_setting_events" not in text, text
    with catalogue.engine.connect() as connection:
        rows = connection.exec_driver_sql(sql, parameters).all()
    assert sorted(value for kind, value in rows if kind == 0) == [5, 9]  # by run id


def reference_selection(catalogue, target, settings):
    """The runs chosen for ``target`` as before index scans: every candidate ranked in Python."""
    with Session(catalogue.engine) as session:
        runs = session.scalars(sa.select(Run)).all()
        me = next(run for run in runs if run.obs_id == target)
        target_airmass = airmass(me.zenith_deg)
        candidates = []
        for run in runs:
            if run.id == me.id or abs(airmass(run.zenith_deg) - target_airmass) > settings.el_diff:
                continue
            if min(abs(run.az_deg - me.az_deg), 360 - abs(run.az_deg - me.az_deg)) >= settings.az_diff:
                continue
            if abs(run.glat_deg) <= settings.gal_lat_min:
                continue
            candidates.append(run)

        def distance(run):
            step = math.floor(abs(airmass(run.zenith_deg) - target_airmass) / AIRMASS_STEP)
            return (step, abs(run.tstart_mjd - me.tstart_mjd), run.obs_id)

        ordered = sorted(candidates, key=distance)
        if settings.KL_DIV:
            pieces = {piece.run_id: row_to_piece(piece) for piece in session.scalars(sa.select(PieceRow))}
            reference = rate_shape(pieces[me.id])
            ordered = sorted(
                ordered, key=lambda run: (kl_divergence(reference, rate_shape(pieces[run.id])), run.obs_id)
            )
        chosen, ontime = [], 0.0
        for run in ordered:
            if settings.time_request is not None and ontime >= settings.time_request * 3600:
                break
            chosen.append(run.obs_id)
            ontime += run.ontime_s
        return chosen, len(candidates)


@pytest.mark.parametrize("hours", [2.0, 20.0, None])
def test_selection_and_rate_equal_ranking_every_candidate(catalogue, hours):
    synthetic_catalogue(catalogue, 1500)
    config = make_config(time_request=hours)
    builder = BackgroundBuilder(catalogue, config)
    for target in (3, 11, 29, 101):
        built = builder.build(target)
        expected, n_candidates = reference_selection(catalogue, target, config.selection)
        assert built.selection.obs_ids == expected
        assert built.selection.funnel[-1][1] == n_candidates
        # Same rate as summing the pieces, read one by one, in that order.
        with Session(catalogue.engine) as session:
            pieces = [
                row_to_piece(session.scalars(sa.select(PieceRow).join(Run).where(Run.obs_id == obs_id)).one())
                for obs_id in expected
            ]
        reference = assemble_background(pieces, BINNING)
        np.testing.assert_array_equal(built.assembled.counts, reference.counts)
        np.testing.assert_array_equal(built.assembled.rate, reference.rate)


def test_funnel_counts_equal_the_single_scan(catalogue):
    from bkgdb.store.flags import flag_run

    synthetic_catalogue(catalogue, 800)
    flag_run(catalogue.engine, 5, "bad", "test", author="test")
    flag_run(catalogue.engine, 6, "bad", "test", author="test")
    config = make_config(el_diff=0.1, az_diff=60, n_tels=3, time_request=5)
    builder = BackgroundBuilder(catalogue, config)
    built = builder.build(12)
    # Counted the old way: each step's condition over every candidate in one scan.
    with Session(catalogue.engine) as session:
        selector = builder.selector
        target = session.scalars(sa.select(Run).where(Run.obs_id == 12)).one()
        base = (
            sa.select(Run.id).join(PieceRow, PieceRow.run_id == Run.id).where(Run.status == "ok", Run.id != target.id)
        )
        conditions = [Run.obs_id.not_in([5, 6])] + [condition for _, condition in selector.criteria(target)]
        counts = funnel_counts(session, base, conditions)
    assert [left for _, left in built.selection.funnel] == counts
    assert built.selection.funnel[1][0] == "flagged bad"
    assert 5 not in built.selection.obs_ids and 6 not in built.selection.obs_ids


def test_kl_ranking_of_a_stack_equals_one_by_one():
    rng = np.random.default_rng(4)
    counts = rng.poisson(20, size=(50, 6, 4))
    exposure = rng.uniform(0, 1000, size=(50, 4))
    exposure[3, 1] = 0.0
    reference = rate_shape(type("Piece", (), {"counts": counts[0], "exposure_s": exposure[0]}))
    one_by_one = [
        kl_divergence(reference, rate_shape(type("Piece", (), {"counts": c, "exposure_s": e})))
        for c, e in zip(counts, exposure, strict=True)
    ]
    assert list(kl_divergences(reference, counts, exposure)) == one_by_one


def test_kl_ranks_the_nearest_pool_as_every_candidate_when_it_holds_them(catalogue):
    synthetic_catalogue(catalogue, 600)
    config = make_config(time_request=1.0, KL_DIV=True)
    built = BackgroundBuilder(catalogue, config).build(9)
    expected, n_candidates = reference_selection(catalogue, 9, make_config(time_request=None, KL_DIV=True).selection)
    # Ranked within the nearest runs holding twice the request: those chosen are among the best of all.
    assert len(built.selection.obs_ids) == 2 and built.selection.ranking == "kl_divergence"
    assert set(built.selection.obs_ids) <= set(expected)
    everything = BackgroundBuilder(catalogue, make_config(time_request=None, KL_DIV=True)).build(9)
    assert everything.selection.obs_ids == expected and len(expected) == n_candidates


def test_representative_subset_is_all_below_n_and_spread_above():
    rng = np.random.default_rng(5)
    conditions = [
        RunConditions(float(z), float(a), float(m))
        for z, a, m in zip(
            rng.uniform(0, 60, 1000), rng.uniform(0, 360, 1000), rng.uniform(0.6, 0.9, 1000), strict=True
        )
    ]
    assert list(representative_subset(conditions[:40], 40)) == list(range(40))
    chosen = representative_subset(conditions, 100)
    assert list(chosen) == list(representative_subset(conditions, 100)) and len(chosen) == 100
    assert list(chosen) == sorted(set(chosen))
    zenith = np.array([c.zenith_deg for c in conditions])
    # Each zenith decile of the archive gives about a tenth of the subset.
    deciles = np.searchsorted(np.quantile(zenith, np.linspace(0, 1, 11)[1:-1]), zenith[chosen])
    assert np.all(np.bincount(deciles, minlength=10) >= 7)
    north = np.array([np.sin(np.radians(c.zenith_deg)) * np.cos(np.radians(c.az_deg)) for c in conditions])
    assert north[chosen].min() < -0.5 and north[chosen].max() > 0.5


def test_condition_model_fit_on_a_subset_is_deterministic_and_full_below_n(catalogue):
    synthetic_catalogue(catalogue, 12)
    settings = SelectionSettings(gal_lat_min=0, assembly="condition")
    with Session(catalogue.engine) as session:
        binning_id, exclusion_id = session.scalar(sa.select(BinningRow.id)), session.scalar(sa.select(ExclusionRow.id))
        full, record = archive_condition_model(
            session, binning_id, exclusion_id, BINNING.energy_edges, settings, max_runs=300
        )
        rows = session.execute(
            sa.select(PieceRow, Run.zenith_deg, Run.az_deg, Run.muon_eff)
            .join(Run, Run.id == PieceRow.run_id)
            .order_by(PieceRow.id)
        ).all()
        pieces = [row_to_piece(row[0]) for row in rows]
        direct = ConditionModelFitter(
            np.array([p.counts for p in pieces]),
            np.array([p.exposure_s for p in pieces]),
            BINNING.energy_edges,
            [RunConditions(*row[1:]) for row in rows],
        ).run()
        assert record["n_runs"] == 12 and full.params == direct.model.params

        subset, first = archive_condition_model(
            session, binning_id, exclusion_id, BINNING.energy_edges, settings, max_runs=8
        )
        assert first["n_runs"] == 8 and first["cached"] is False
        session.execute(sa.delete(ConditionModelRow))
        session.commit()
        again, second = archive_condition_model(
            session, binning_id, exclusion_id, BINNING.energy_edges, settings, max_runs=8
        )
        assert again.params == subset.params and second["archive_digest"] == first["archive_digest"]
        # Memoised: a second look-up asks the database nothing.
        memo = {}
        archive_condition_model(
            session, binning_id, exclusion_id, BINNING.energy_edges, settings, max_runs=8, memo=memo
        )
    statements = recorded_statements(
        catalogue.engine,
        lambda: archive_condition_model(
            Session(catalogue.engine), binning_id, exclusion_id, BINNING.energy_edges, settings, max_runs=8, memo=memo
        ),
    )
    assert statements == []
