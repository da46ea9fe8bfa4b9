"""Builds equal a reference computed run by run in Python, over copies, flags, empty pieces and failed runs.

The reference reads every run and piece as ORM objects and applies the integrity steps (empty
pieces, flags in force, copies of a run), the criteria, the ranking and the requested ontime
itself: the build's SQL (funnel counts, index range scans, airmass shells) and its stacked
decoding must give the same selection, funnel, lineage and arrays, bit for bit.
"""

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from test_query_plans import ONTIME, make_config, synthetic_catalogue

from bkgdb.background import BackgroundBuilder
from bkgdb.errors import NoRunsSelected
from bkgdb.makers.assembly import assemble_background
from bkgdb.store import backgrounds
from bkgdb.store.database import driver_rows
from bkgdb.store.flags import flag_run
from bkgdb.store.models import Datastore, PieceRow, Run, RunFlag
from bkgdb.store.pieces import row_to_piece
from bkgdb.store.ranking import AIRMASS_STEP, airmass


def new_datastore(catalogue, path):
    """The id of a new, empty datastore row of ``path``."""
    with Session(catalogue.engine) as session:
        store = Datastore(path=path, obs_index_meta={})
        session.add(store)
        session.commit()
        return store.id


def complicate(catalogue, rng):
    """A second datastore with copies of 40 runs (some another observation, some failed, some
    without or with an empty piece), empty pieces and failed runs in the first, runs of a second
    instrument, runs flagged."""
    copy_id = new_datastore(catalogue, "/synthetic/copy")
    with catalogue.engine.begin() as connection:
        runs = connection.execute(sa.select(Run.__table__).order_by(Run.id)).mappings().all()
        pieces = {row["run_id"]: row for row in connection.execute(sa.select(PieceRow.__table__)).mappings()}
        next_id = len(runs) + 1
        new_runs, new_pieces = [], []
        for index in rng.choice(len(runs), 40, replace=False):
            original = runs[int(index)]
            run = dict(original, id=next_id, datastore_id=copy_id)
            kind = next_id % 5
            if kind == 1:  # the same OBS_ID observed at another time: another observation
                run["tstart_mjd"] += 3.0
            elif kind == 2:
                run["status"] = "failed"
            new_runs.append(run)
            if kind != 3:  # kind 3: a copy without a piece
                piece = dict(pieces[original["id"]], run_id=next_id)
                del piece["id"]
                if kind == 4:
                    piece["ontime_s"] = 0.0
                new_pieces.append(piece)
            next_id += 1
        connection.execute(sa.insert(Run), new_runs)
        connection.execute(sa.insert(PieceRow), new_pieces)
        empty = [int(i) + 1 for i in rng.choice(len(runs), 8, replace=False)]
        connection.execute(sa.update(PieceRow).where(PieceRow.run_id.in_(empty)).values(n_kept=0, n_excluded=0))
        failed = [int(i) + 1 for i in rng.choice(len(runs), 4, replace=False)]
        connection.execute(sa.update(Run).where(Run.id.in_(failed)).values(status="failed"))
        # Another instrument's runs among them (their copies stay of the first: the copies' step comes first).
        connection.execute(sa.update(Run).where(Run.id % 9 == 0, Run.id < len(runs)).values(instrument="VERITAS"))
        if catalogue.engine.dialect.name == "postgresql":
            connection.exec_driver_sql("SELECT setval('runs_id_seq', (SELECT max(id) FROM runs))")
    for obs_id in rng.choice(len(runs), 10, replace=False):
        flag_run(catalogue.engine, int(obs_id), "bad", "test", author="test")
    for obs_id in rng.choice(len(runs), 3, replace=False):
        flag_run(catalogue.engine, int(obs_id), "good", None, author="test")
    catalogue.refresh_statistics()


def reference_build(session, target, settings):
    """(funnel, chosen runs) for ``target`` (a Run), each integrity step and criterion applied in Python."""
    runs = session.scalars(sa.select(Run)).all()
    pieces = {piece.run_id: piece for piece in session.scalars(sa.select(PieceRow))}
    newest = {}
    for flag in session.scalars(sa.select(RunFlag).order_by(RunFlag.created_at, RunFlag.id)):
        newest[flag.obs_id] = flag.flag
    bad = {obs_id for obs_id, flag in newest.items() if flag == "bad"}

    def second(run):
        return -1 if run.tstart_mjd is None else round(run.tstart_mjd * 86400.0)

    def has_events(run):
        piece = pieces.get(run.id)
        return piece is not None and piece.ontime_s > 0 and piece.n_kept + piece.n_excluded > 0

    def preferred_elsewhere(run):
        return any(
            other.obs_id == run.obs_id
            and other.id != run.id
            and second(other) == second(run)
            and other.status == "ok"
            and has_events(other)
            and (
                other.datastore_id == target.datastore_id
                or (run.datastore_id != target.datastore_id and other.datastore_id < run.datastore_id)
            )
            for other in runs
        )

    candidates = [run for run in runs if run.status == "ok" and run.id in pieces and run.id != target.id]
    steps = [
        ("empty runs", has_events),
        ("flagged bad", lambda run: run.obs_id not in bad),
        (
            "duplicate copies",
            lambda run: (
                not (run.obs_id == target.obs_id and second(run) == second(target)) and not preferred_elsewhere(run)
            ),
        ),
    ]
    target_airmass = airmass(target.zenith_deg)
    criteria = [
        lambda run: abs(airmass(run.zenith_deg) - target_airmass) <= settings.el_diff,
        lambda run: run.instrument == target.instrument,
        lambda run: min(abs(run.az_deg - target.az_deg), 360 - abs(run.az_deg - target.az_deg)) < settings.az_diff,
        lambda run: abs(run.glat_deg) > settings.gal_lat_min,
    ]
    funnel = [("candidate runs with pieces", len(candidates))]
    for name, keep in steps:
        candidates = [run for run in candidates if keep(run)]
        if len(candidates) != funnel[-1][1]:
            funnel.append((name, len(candidates)))
    for keep in criteria:
        candidates = [run for run in candidates if keep(run)]
        funnel.append((None, len(candidates)))

    def distance(run):
        step = math.floor(abs(airmass(run.zenith_deg) - target_airmass) / AIRMASS_STEP)
        return (step, abs(run.tstart_mjd - target.tstart_mjd), run.obs_id)

    chosen, ontime = [], 0.0
    for run in sorted(candidates, key=distance):
        if settings.time_request is not None and ontime >= settings.time_request * 3600:
            break
        chosen.append(run)
        ontime += run.ontime_s
    return funnel, chosen, [pieces[run.id] for run in chosen]


@pytest.mark.parametrize("hours", [3.0, 40.0, None])
def test_builds_equal_the_run_by_run_reference(catalogue, hours):
    rng = np.random.default_rng(8)
    synthetic_catalogue(catalogue, 400)
    complicate(catalogue, rng)
    config = make_config(el_diff=0.2, az_diff=90, time_request=hours)
    builder = BackgroundBuilder(catalogue, config)
    with Session(catalogue.engine) as session:
        # Targets in both datastores, among them copies, flagged runs and runs with empty pieces.
        targets = session.execute(
            sa.select(Run.obs_id, Datastore.path).join(Datastore).where(Run.status == "ok").order_by(Run.id)
        ).all()
    chosen_targets = [targets[int(i)] for i in rng.choice(len(targets), 12, replace=False)]
    chosen_targets += [target for target in targets if target.path == "/synthetic/copy"][:6]
    built_any = 0
    for obs_id, path in chosen_targets:
        with Session(catalogue.engine) as session:
            target = session.scalars(
                sa.select(Run).join(Datastore).where(Run.obs_id == obs_id, Datastore.path == path)
            ).one()
            funnel, runs, pieces = reference_build(session, target, config.selection)
            expected = (
                assemble_background([row_to_piece(piece) for piece in pieces], config.binning) if pieces else None
            )
        try:
            built = builder.build(obs_id, path)
        except NoRunsSelected:
            assert not runs
            continue
        built_any += 1
        assert [left for _, left in built.selection.funnel] == [left for _, left in funnel]
        n_criteria = 4  # airmass, instrument, azimuth, |b|
        assert [name for name, _ in built.selection.funnel][: len(funnel) - n_criteria] == [
            name for name, _ in funnel[:-n_criteria]
        ]
        assert built.selection.funnel[-3][0] == f"same instrument ({target.instrument})"
        assert built.selection.run_ids == [run.id for run in runs]
        assert built.selection.ontime_s == sum(run.ontime_s for run in runs) == len(runs) * ONTIME
        assert [item.piece_id for item in built.inputs] == [piece.id for piece in pieces]
        assert [item.created_at for item in built.inputs] == [piece.created_at for piece in pieces]
        # Bit for bit, and of the same dtypes.
        assert built.assembled.counts.dtype == expected.counts.dtype
        np.testing.assert_array_equal(built.assembled.counts, expected.counts)
        assert built.assembled.exposure_s.tobytes() == expected.exposure_s.tobytes()
        assert built.assembled.rate.tobytes() == expected.rate.tobytes()
    assert built_any >= 12


def test_piece_times_are_read_as_stored(catalogue):
    synthetic_catalogue(catalogue, 30)
    when = datetime(2021, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    with catalogue.engine.begin() as connection:
        connection.execute(sa.update(PieceRow).values(created_at=when + timedelta(seconds=1)))
    built = BackgroundBuilder(catalogue, make_config(el_diff=None, az_diff=None, gal_lat_min=0)).build(3)
    # Naive datetimes are UTC (as SQLAlchemy stores them in SQLite), whatever the local time zone.
    as_utc = {
        item.created_at if item.created_at.tzinfo else item.created_at.replace(tzinfo=UTC) for item in built.inputs
    }
    assert {moment.astimezone(UTC) for moment in as_utc} == {when + timedelta(seconds=1)}


def test_runs_of_a_datastore_indexed_after_the_first_build_carry_its_path(catalogue):
    synthetic_catalogue(catalogue, 30)
    builder = BackgroundBuilder(catalogue, make_config(el_diff=None, az_diff=None, gal_lat_min=0))
    assert set(builder.build(3).selection.datastores) == {"/synthetic"}
    # A second datastore, of five more runs (new OBS_IDs: other observations).
    store_id = new_datastore(catalogue, "/synthetic/more")
    with catalogue.engine.begin() as connection:
        runs = connection.execute(sa.select(Run.__table__).where(Run.id <= 5)).mappings().all()
        pieces = connection.execute(sa.select(PieceRow.__table__).where(PieceRow.run_id <= 5)).mappings().all()
        connection.execute(
            sa.insert(Run),
            [dict(run, id=run["id"] + 100, obs_id=run["obs_id"] + 100, datastore_id=store_id) for run in runs],
        )
        connection.execute(
            sa.insert(PieceRow),
            [{**{k: v for k, v in piece.items() if k != "id"}, "run_id": piece["run_id"] + 100} for piece in pieces],
        )
    # Its runs carry their own path, though the builder had read the datastores before.
    built = builder.build(3)
    assert set(built.selection.datastores) == {"/synthetic", "/synthetic/more"}
    with Session(catalogue.engine) as session:
        paths = dict(session.execute(sa.select(Run.id, Datastore.path).join(Datastore)).all())
    assert built.selection.datastores == [paths[run_id] for run_id in built.selection.run_ids]


#: A requested ontime no catalogue here holds: every candidate is chosen, after the ranking, so the
#: pieces are read after the choice (`~bkgdb.store.backgrounds.selected_pieces`).
EVERY_RUN_REQUESTED_H = 1e6


@pytest.mark.parametrize(
    "selection",
    [
        dict(el_diff=0.3, az_diff=None, gal_lat_min=0),
        dict(el_diff=0.3, az_diff=None, gal_lat_min=0, time_request=3.0),
        dict(el_diff=0.3, az_diff=None, gal_lat_min=0, time_request=3.0, KL_DIV=True),
    ],
    ids=["window", "requested", "kl"],
)
def test_one_builder_selects_for_each_target_what_a_new_one_selects(catalogue, selection):
    """The selection's statements are made once per builder: each target's values still reach them."""
    synthetic_catalogue(catalogue, 40)
    config = make_config(**selection)
    shared = BackgroundBuilder(catalogue, config)
    seen = []
    for obs_id in (3, 7, 12, 3):
        built, fresh = shared.build(obs_id), BackgroundBuilder(catalogue, config).build(obs_id)
        assert obs_id not in built.selection.obs_ids
        assert (built.selection.obs_ids, built.selection.funnel) == (fresh.selection.obs_ids, fresh.selection.funnel)
        np.testing.assert_array_equal(built.assembled.counts, fresh.assembled.counts)
        seen.append(tuple(built.selection.obs_ids))
    assert len(set(seen[:3])) == 3 and seen[3] == seen[0]


def test_pieces_read_with_the_candidates_build_what_pieces_read_after_them_build(catalogue):
    synthetic_catalogue(catalogue, 40)
    open_selection = dict(el_diff=None, az_diff=None, gal_lat_min=0)
    builder = BackgroundBuilder(catalogue, make_config(**open_selection))
    after = BackgroundBuilder(catalogue, make_config(**open_selection, time_request=EVERY_RUN_REQUESTED_H))
    with Session(catalogue.engine) as session:
        target = session.scalar(sa.select(Run).where(Run.obs_id == 3))
        binning_row, exclusion_row = builder._setting_rows(session)
        ids = (session, target, binning_row.id, exclusion_row.id)
        together, alone = builder.selector.run(*ids, with_pieces=True), builder.selector.run(*ids)
        assert alone.pieces is None and together.pieces is not None
        assert together.obs_ids == alone.obs_ids and together.piece_ids == alone.piece_ids
        read_after = backgrounds.selected_pieces(
            session, alone.piece_ids, alone.run_ids, binning_row.id, exclusion_row.id
        )
        assert read_after == {name: tuple(values) for name, values in together.pieces.items()}
        assert after.selector.run(*ids, with_pieces=True).pieces is None
    expected, built = after.build(3), builder.build(3)
    assert built.selection.pieces is None  # the arrays are summed, not kept
    assert built.selection.obs_ids == expected.selection.obs_ids and len(built.inputs) == 39
    assert built.inputs == expected.inputs
    np.testing.assert_array_equal(built.assembled.counts, expected.assembled.counts)
    assert built.assembled.exposure_s.tobytes() == expected.assembled.exposure_s.tobytes()


def test_a_builds_rows_are_the_drivers_own_and_come_in_binary_from_postgresql(catalogue):
    synthetic_catalogue(catalogue, 5)
    statement = sa.select(
        PieceRow.id,
        PieceRow.counts,
        PieceRow.ontime_s,
        PieceRow.counts_dtype,
        sa.type_coerce(PieceRow.created_at, sa.Text),
    ).order_by(PieceRow.id)
    formats = []

    def record(connection, cursor, statement, parameters, context, executemany):
        result = getattr(cursor, "pgresult", None)  # psycopg's
        if result is not None:
            formats.append({result.fformat(column) for column in range(result.nfields)})

    sa.event.listen(catalogue.engine, "after_cursor_execute", record)
    with Session(catalogue.engine) as session:
        rows = driver_rows(session, statement)
        expected = [tuple(row) for row in session.execute(statement).all()]
    assert rows == expected and len(rows) == 5
    assert {type(value) for value in rows[0][1:3]} == {bytes, float}
    if catalogue.engine.dialect.name == "postgresql":
        assert formats == [{1}, {0}]  # binary for the driver's rows, text for SQLAlchemy's


def test_pieces_the_database_returns_in_another_order_are_placed_by_their_id(catalogue, monkeypatch):
    synthetic_catalogue(catalogue, 40)
    config = make_config(el_diff=None, az_diff=None, gal_lat_min=0, time_request=EVERY_RUN_REQUESTED_H)
    expected = BackgroundBuilder(catalogue, config).build(3)
    original = backgrounds._pieces_statement
    monkeypatch.setattr(
        backgrounds, "_pieces_statement", lambda dialect: original(dialect).order_by(PieceRow.id.desc())
    )
    selection = expected.selection
    arguments = (selection.piece_ids, selection.run_ids, expected.binning_id, expected.exclusion_id)
    with Session(catalogue.engine) as session:
        columns = backgrounds.selected_pieces(session, *arguments)
        returned = session.execute(
            backgrounds._pieces_statement(catalogue.engine.dialect.name),
            {"piece_ids": ",".join(map(str, arguments[0])), "binning_id": arguments[2], "exclusion_id": arguments[3]},
        ).all()
    assert [row.piece_id for row in returned] != selection.piece_ids  # the database's order is not the selection's
    assert list(columns["piece_id"]) == selection.piece_ids
    # A build reads them in that order too, and sums the same.
    built = BackgroundBuilder(catalogue, config).build(3)
    assert built.inputs == expected.inputs
    np.testing.assert_array_equal(built.assembled.counts, expected.assembled.counts)
    assert built.assembled.exposure_s.tobytes() == expected.assembled.exposure_s.tobytes()
