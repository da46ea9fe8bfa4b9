import json
import subprocess
import sys
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.orm import Session

from bkgdb.config import Binning, ExclusionSettings
from bkgdb.gadf.datastore import DL3Datastore
from bkgdb.makers.piece import BackgroundPiece
from bkgdb.makers.run import RunJob, process_run
from bkgdb.store.backgrounds import background_history
from bkgdb.store.catalogue import RunCatalogue
from bkgdb.store.database import (
    SCHEMA_HEAD,
    create_engine,
    current_revision,
    downgrade_schema,
    head_revision,
    upgrade_schema,
)
from bkgdb.store.indexing import piece_row, piece_values
from bkgdb.store.lineage import background_lineage, stale_backgrounds
from bkgdb.store.models import BackgroundInput, Base, BinningRow, Datastore, ExclusionRow, PieceRow, Run
from bkgdb.store.pieces import PieceCache, row_to_piece


def test_models_and_migrations_agree(db_url):
    engine = create_engine(db_url)
    upgrade_schema(engine)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []
    engine.dispose()


def test_upgrade_downgrade_upgrade(db_url):
    engine = create_engine(db_url)
    upgrade_schema(engine)
    assert current_revision(engine) == head_revision(engine) == SCHEMA_HEAD
    assert {"runs", "datastores"} <= set(sa.inspect(engine).get_table_names())
    downgrade_schema(engine)
    assert current_revision(engine) is None
    assert not {"runs", "datastores"} & set(sa.inspect(engine).get_table_names())
    upgrade_schema(engine)
    assert current_revision(engine) == head_revision(engine)
    engine.dispose()


def test_migrations_ship_with_the_package():
    assert Path(str(resources.files("bkgdb.migrations")), "env.py").is_file()


def test_init_works_from_any_folder(tmp_path):
    """`bkgdb init` as installed, run away from the source tree."""
    result = subprocess.run(
        [sys.executable, "-m", "bkgdb.cli.main", "--db", "fresh.sqlite", "init"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "schema revision" in result.stdout
    engine = create_engine(str(tmp_path / "fresh.sqlite"))
    assert current_revision(engine) == head_revision(engine)


def test_an_older_database_is_upgraded_on_first_use(db_url):
    engine = create_engine(db_url)
    upgrade_schema(engine, "0001")
    assert "pieces" not in sa.inspect(engine).get_table_names()
    RunCatalogue.open(db_url)
    assert current_revision(engine) == SCHEMA_HEAD
    assert "pieces" in sa.inspect(engine).get_table_names()
    engine.dispose()


# -- 0006: pieces of any geometry, a background's runs only in background_inputs ------------------

MIGRATED_BINNING = Binning(e_min=0.1, e_max=100, e_bins=6, off_min=0, off_max=2.5, off_bins=4)
MIGRATED_EXCLUSION = ExclusionSettings(gammacat=None, hawc=None, star_cat=None)


def real_pieces(datastore):
    """{obs_id: (source, result)} of each run of ``datastore``, its piece made as indexing makes it."""
    store = DL3Datastore(datastore)
    made = {}
    for source in store.runs():
        result = process_run(RunJob(source=source, meta=store.meta, specs=[(MIGRATED_BINNING, MIGRATED_EXCLUSION)]))
        assert result.error is None and len(result.pieces) == 1
        made[source.obs_id] = result
    return made


def fill_revision_0005(engine, datastore, made):
    """Rows as bkgdb at revision 0005 wrote them: runs with real pieces (``n_energy``, ``n_offset``), a
    background with its inputs, and one recorded before inputs were kept (only its ``obs_ids`` list)."""
    tables = sa.MetaData()
    tables.reflect(engine)
    assert {"n_energy", "n_offset"} <= set(tables.tables["pieces"].c.keys())
    now = datetime.now(UTC)
    with engine.begin() as connection:

        def insert(name, **values):
            return connection.execute(sa.insert(tables.tables[name]).values(**values)).inserted_primary_key[0]

        store_id = insert(
            "datastores", path=str(datastore.resolve()), obs_index_meta={}, first_indexed_at=now, last_indexed_at=now
        )
        binning_id = insert("binnings", hash=MIGRATED_BINNING.hash, params=MIGRATED_BINNING.params, created_at=now)
        exclusion_id = insert(
            "exclusion_settings", hash=MIGRATED_EXCLUSION.hash, params={"exposure_method": "geometric"}, created_at=now
        )
        run_ids, piece_ids = {}, {}
        for obs_id, result in made.items():
            run_ids[obs_id] = insert(
                "runs",
                datastore_id=store_id,
                obs_id=obs_id,
                status="ok",
                extra={},
                indexed_at=now,
                file_sha256=result.sha256,
                zenith_deg=30.0,
            )
            *_, piece = result.pieces[0]
            values = piece_values(piece, run_ids[obs_id], binning_id, exclusion_id, result.sha256)
            del values["region_set_id"]
            values["regions"] = piece.regions
            n_energy, n_offset = values.pop("shape")
            piece_ids[obs_id] = insert("pieces", n_energy=n_energy, n_offset=n_offset, created_at=now, **values)
        common = dict(
            target_run_id=run_ids[1000],
            target_obs_id=1000,
            binning_id=binning_id,
            exclusion_id=exclusion_id,
            selection={"ranking": "airmass_then_time"},
            ontime_s=1200.0,
            smoothing="none",
            created_at=now,
        )
        old = insert("backgrounds", obs_ids=[1003, 1001, 1002], n_runs=3, output_path="/old.fits", **common)
        recent = insert("backgrounds", obs_ids=[1004, 1001], n_runs=2, output_path="/recent.fits", **common)
        for obs_id in (1004, 1001):
            insert(
                "background_inputs",
                background_id=recent,
                piece_id=piece_ids[obs_id],
                run_id=run_ids[obs_id],
                obs_id=obs_id,
                file_sha256=made[obs_id].sha256,
                piece_created_at=now,
                weight=1.0,
            )
    return old, recent, piece_ids, run_ids


def stored_inputs(engine, background_id):
    with Session(engine) as session:
        return [
            (item.obs_id, item.run_id, item.piece_id, item.file_sha256)
            for item in session.scalars(
                sa.select(BackgroundInput)
                .where(BackgroundInput.background_id == background_id)
                .order_by(BackgroundInput.id)
            )
        ]


def assert_same_pieces(engine, made, piece_ids, regions=None):
    """The pieces as made (``regions``: the regions of some runs' pieces as changed since)."""
    with Session(engine) as session:
        rows = {row.id: row for row in session.scalars(sa.select(PieceRow))}
        assert len(rows) == len(made)
        for obs_id, result in made.items():
            *_, original = result.pieces[0]
            row = rows[piece_ids[obs_id]]
            assert row.shape == [6, 4]
            piece = row_to_piece(row)
            np.testing.assert_array_equal(piece.counts, original.counts)
            np.testing.assert_array_equal(piece.excluded_counts, original.excluded_counts)
            np.testing.assert_array_equal(piece.exposure_s, original.exposure_s)
            assert (piece.ontime_s, piece.livetime_s, piece.regions) == (
                original.ontime_s,
                original.livetime_s,
                (regions or {}).get(obs_id, original.regions),
            )


def test_0006_keeps_real_pieces_and_lineage_through_upgrade_and_downgrade(db_url, simulated_datastore):
    made = real_pieces(simulated_datastore)
    assert sum(int(result.pieces[0][2].counts.sum()) for result in made.values()) > 500  # real events
    engine = create_engine(db_url)
    upgrade_schema(engine, "0005")
    old, recent, piece_ids, run_ids = fill_revision_0005(engine, simulated_datastore, made)
    recent_inputs = stored_inputs(engine, recent)

    RunCatalogue.open(db_url).engine.dispose()  # migrates to the head on first use
    assert current_revision(engine) == SCHEMA_HEAD
    assert_same_pieces(engine, made, piece_ids)
    # Rebuilding the pieces and backgrounds tables (SQLite) must not touch the inputs that refer to them.
    assert stored_inputs(engine, recent) == recent_inputs
    # The old background got one input per OBS_ID of its list, in its order, with the run's piece.
    assert stored_inputs(engine, old) == [
        (obs_id, run_ids[obs_id], piece_ids[obs_id], made[obs_id].sha256) for obs_id in (1003, 1001, 1002)
    ]
    history = {row["id"]: row["obs_ids"] for row in background_history(engine)}
    assert history == {old: [1003, 1001, 1002], recent: [1004, 1001]}
    found = background_lineage(engine, 1002)
    assert [(row["id"], row["from_datastore"]) for row in found] == [(old, str(simulated_datastore.resolve()))]
    assert stale_backgrounds(engine) == []

    downgrade_schema(engine, "0005")
    with engine.connect() as connection:
        pieces = connection.execute(sa.text("SELECT id, n_energy, n_offset FROM pieces")).all()
        lists = dict(connection.execute(sa.text("SELECT id, obs_ids FROM backgrounds")).all())
    assert {(n_energy, n_offset) for _, n_energy, n_offset in pieces} == {(6, 4)} and len(pieces) == len(made)
    lists = {key: json.loads(value) if isinstance(value, str) else value for key, value in lists.items()}
    assert lists == {old: [1003, 1001, 1002], recent: [1004, 1001]}
    assert stored_inputs(engine, recent) == recent_inputs

    upgrade_schema(engine)
    assert_same_pieces(engine, made, piece_ids)
    assert stored_inputs(engine, recent) == recent_inputs
    engine.dispose()


def test_0006_stores_3d_pieces_and_refuses_to_downgrade_them(db_url):
    catalogue = RunCatalogue.open(db_url)
    rng = np.random.default_rng(1)
    counts = rng.poisson(5.0, size=(5, 4, 3))  # energy x lon x lat, lon != lat so a transposition shows
    exposure = rng.uniform(100.0, 600.0, size=(4, 3))
    piece = BackgroundPiece(counts, np.zeros_like(counts), exposure, 600.0, 540.0)
    with catalogue.session() as session:
        run = Run(datastore=Datastore(path="/synthetic", obs_index_meta={}), obs_id=1, status="ok")
        session.add(
            piece_row(piece, run, BinningRow(hash="3" * 64, params={}), ExclusionRow(hash="e" * 64, params={}), None)
        )
        session.commit()
    with catalogue.session() as session:
        row = session.scalars(sa.select(PieceRow)).one()
        assert row.shape == [5, 4, 3]
        stored = row_to_piece(row)
    np.testing.assert_array_equal(stored.counts, counts)
    np.testing.assert_array_equal(stored.exposure_s, exposure)
    with pytest.raises(RuntimeError, match=r"1 pieces are 3D \(FoV pixels\), which older schemas cannot hold"):
        downgrade_schema(catalogue.engine, "0005")
    # Stopped at 0006 on SQLite; on PostgreSQL the whole downgrade is one transaction, not done at all.
    postgresql = catalogue.engine.dialect.name == "postgresql"
    assert current_revision(catalogue.engine) == (SCHEMA_HEAD if postgresql else "0006")
    catalogue.engine.dispose()


# -- 0007: exclusion regions stored once per distinct list -------------------------------------

FIELD = [
    {"name": "Crab nebula", "kind": "source", "ra": 83.63308333333334, "dec": 22.0145, "radius": 0.35},
    {"name": "HIP 26451", "kind": "star", "ra": 84.41118, "dec": 21.14255, "radius": 0.35},
]
OTHER_FIELD = [{"name": "region file", "kind": "region", "ra": 10.0, "dec": -71.5, "radius": 1.0 / 3.0}]


def test_0007_stores_each_list_of_regions_once_and_keeps_pieces_and_lineage(db_url, simulated_datastore):
    made = real_pieces(simulated_datastore)
    engine = create_engine(db_url)
    upgrade_schema(engine, "0005")
    _, recent, piece_ids, _ = fill_revision_0005(engine, simulated_datastore, made)
    upgrade_schema(engine, "0006")
    # Runs 1000 and 1001 share a field, 1002 sees another, the others exclude nothing.
    given = {1000: FIELD, 1001: FIELD, 1002: OTHER_FIELD}
    with engine.begin() as connection:
        for obs_id, regions in given.items():
            connection.execute(
                sa.text("UPDATE pieces SET regions = :regions WHERE id = :id"),
                {"regions": json.dumps(regions), "id": piece_ids[obs_id]},
            )
    recent_inputs = stored_inputs(engine, recent)

    upgrade_schema(engine, "0007")
    with engine.connect() as connection:
        stored = connection.execute(sa.text("SELECT id, sha256 FROM region_sets")).all()
    assert len(stored) == 2
    with Session(engine) as session:
        rows = {row.id: row for row in session.scalars(sa.select(PieceRow))}
    for obs_id, piece_id in piece_ids.items():
        assert rows[piece_id].regions == given.get(obs_id, [])  # floats to the last digit
        assert (rows[piece_id].region_set_id is None) == (obs_id not in given)
    assert rows[piece_ids[1000]].region_set_id == rows[piece_ids[1001]].region_set_id
    assert stored_inputs(engine, recent) == recent_inputs
    assert [(row["name"], row["ra"]) for row in PieceCache(engine).exclusions(1000)[0]["regions"]] == [
        ("Crab nebula", 83.63308333333334),
        ("HIP 26451", 84.41118),
    ]

    downgrade_schema(engine, "0006")
    assert "region_sets" not in sa.inspect(engine).get_table_names()
    with engine.connect() as connection:
        back = dict(connection.execute(sa.text("SELECT id, regions FROM pieces")).all())
    back = {key: json.loads(value) if isinstance(value, str) else value for key, value in back.items()}
    assert back == {piece_id: given.get(obs_id, []) for obs_id, piece_id in piece_ids.items()}
    assert stored_inputs(engine, recent) == recent_inputs
    upgrade_schema(engine)
    assert_same_pieces(engine, made, piece_ids, given)
    engine.dispose()
