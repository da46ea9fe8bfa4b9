"""What building a background reads from and writes to the catalogue.

`~bkgdb.background.BackgroundBuilder` holds no SQL: it finds its target (`find_target`), reads
the selected runs' pieces (`selected_pieces`), the target's own piece and the selected runs
(`own_piece`, `runs_by_id`, for per-run normalisation), and records what it built
(`record_background`: a `~bkgdb.store.models.BackgroundRow` and one
`~bkgdb.store.models.BackgroundInput` per piece summed). `background_history` lists the records.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from bkgdb.errors import BkgdbError
from bkgdb.makers.piece import BackgroundPiece
from bkgdb.store.database import driver_rows, is_readonly_error, lock_piece_references, session_scope
from bkgdb.store.models import (
    RUN_STATUS_FAILED,
    RUN_STATUS_OK,
    BackgroundInput,
    BackgroundRow,
    BinningRow,
    Datastore,
    ExclusionRow,
    PieceRow,
    Run,
)
from bkgdb.store.pieces import PIECE_COLUMN_NAMES, PIECE_COLUMNS, row_to_piece

__all__ = [
    "background_history",
    "find_target",
    "selected_pieces",
    "datastore_paths",
    "run_conditions",
    "own_piece",
    "runs_by_id",
    "record_background",
    "record_if_writable",
    "stored_datetimes",
    "ID_CHUNK",
]

#: Run ids bound in one query: one round trip up to this many selected runs (SQLite binds 32766).
ID_CHUNK = 30000


def stored_datetimes(values: Sequence[Any]) -> list[datetime]:
    """A DateTime column's values read as the driver gives them (`~bkgdb.store.pieces.PIECE_COLUMNS`), as datetimes.

    SQLite stores them as ISO text (``2026-11-26 08:15:01.123456``, as SQLAlchemy writes them:
    naive, UTC), parsed here in one pass; PostgreSQL's driver gives datetimes.
    """
    return [datetime.fromisoformat(value) if isinstance(value, str) else value for value in values]


def background_history(engine: sa.engine.Engine, obs_id: int | None = None) -> list[dict]:
    """Backgrounds built so far (newest first), from the provenance tables; optionally for one target.

    Returns
    -------
    rows : list of dict
        id, target, runs summed, ontime (h), smoothing, ranking, the OBS_IDs of the pieces summed
        (in selection order), output file and time of each.
    """
    query = sa.select(BackgroundRow).order_by(BackgroundRow.id.desc())
    if obs_id is not None:
        query = query.where(BackgroundRow.target_obs_id == obs_id)
    with session_scope(engine) as session:
        rows = session.scalars(query).all()
        inputs = sa.select(BackgroundInput.background_id, BackgroundInput.obs_id).order_by(
            BackgroundInput.background_id, BackgroundInput.id
        )
        if obs_id is not None:
            inputs = inputs.join(BackgroundRow, BackgroundRow.id == BackgroundInput.background_id).where(
                BackgroundRow.target_obs_id == obs_id
            )
        obs_ids = defaultdict(list)
        for background_id, input_obs_id in session.execute(inputs):
            obs_ids[background_id].append(input_obs_id)
    return [
        {
            "id": row.id,
            "target": row.target_obs_id,
            "runs": row.n_runs,
            "ontime_h": row.ontime_s / 3600.0,
            "smoothing": row.smoothing,
            "ranking": (row.selection or {}).get("ranking"),
            "obs_ids": obs_ids.get(row.id, []),
            "output": row.output_path,
            "created_at": row.created_at.isoformat() if row.created_at else None,
        }
        for row in rows
    ]


#: The runs of an OBS_ID (parameter ``obs_id``), made once.
_TARGET_QUERY = sa.select(Run).where(Run.obs_id == sa.bindparam("obs_id", type_=Run.obs_id.type))


def find_target(session: Session, obs_id: int, datastore: str | Path | None = None) -> Run:
    """The catalogue row of run ``obs_id`` (of ``datastore``); a run that failed to index says why.

    Raises
    ------
    BkgdbError
        The run is not catalogued, failed to index, or is in several datastores and none was given.
    """
    query = _TARGET_QUERY
    if datastore is not None:
        query = query.join(Datastore).where(Datastore.at(datastore))
    found = session.scalars(query, {"obs_id": obs_id}).all()
    runs = [run for run in found if run.status == RUN_STATUS_OK]
    failed = [run for run in found if run.status == RUN_STATUS_FAILED]
    if not runs and failed:
        raise BkgdbError(
            f"run {obs_id} failed to index: {failed[0].error}"
            + (f" ({failed[0].datastore.path})" if len(found) > 1 or datastore else "")
        )
    if not runs:
        raise BkgdbError(
            f"run {obs_id} is not in the catalogue"
            + (f" for datastore {datastore}" if datastore else "")
            + ": index its datastore first"
        )
    if len(runs) > 1:
        paths = ", ".join(run.datastore.path for run in runs)
        raise BkgdbError(f"run {obs_id} is in several datastores ({paths}): give --datastore")
    return runs[0]


@functools.cache
def _pieces_statement(dialect: str) -> sa.Select:
    """The query of `selected_pieces`, made once per dialect: its compiled form is then found in
    SQLAlchemy's cache without building and hashing a new statement per build.

    The piece ids are one text parameter (``1,2,3``) that the database splits: bound one by one (SQLite)
    or as an integer array (PostgreSQL), the driver and SQLAlchemy handle each id apart, which cost
    more than the lookups for a thousand runs. Each piece is then found by its primary key: a third
    faster on SQLite than by the (run, binning, exclusion) key, which needs a lookup in that index
    and one in the table. Its setting is a condition and its run is read: an id freed by a deletion
    can be given to a new piece, of another run or setting.
    """
    ids = sa.bindparam("piece_ids", type_=sa.Text)
    columns = (*PIECE_COLUMNS, PieceRow.run_id)
    setting = (PieceRow.binning_id == sa.bindparam("binning_id"), PieceRow.exclusion_id == sa.bindparam("exclusion_id"))
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import ARRAY

        split = sa.func.string_to_array(ids, sa.literal_column("','"))
        return sa.select(*columns).where(PieceRow.id == sa.any_(sa.cast(split, ARRAY(sa.Integer))), *setting)
    # Read as a JSON array, each id then looked up in the table.
    listed = sa.func.json_each(sa.literal_column("'['") + ids + sa.literal_column("']'")).table_valued("value")
    return sa.select(*columns).select_from(listed).join(PieceRow, PieceRow.id == listed.c.value).where(*setting)


def selected_pieces(
    session: Session, piece_ids: Sequence[int], run_ids: Sequence[int], binning_id: int, exclusion_id: int
) -> dict[str, tuple]:
    """The selected runs' pieces: `~bkgdb.store.pieces.PIECE_COLUMNS` by name, in the order of ``piece_ids``.

    ``piece_ids`` and ``run_ids`` are the selection's (``Selection.piece_ids``, ``Selection.run_ids``),
    of the binning and exclusion setting ``binning_id``, ``exclusion_id``. One query; its rows are
    the driver's (`~bkgdb.store.database.driver_rows`; ``created_at`` see `stored_datetimes`),
    transposed once.

    Raises
    ------
    BkgdbError
        A selected run's piece is gone, or is now another run's (indexed again meanwhile).
    """
    parameters = {"piece_ids": ",".join(map(str, piece_ids)), "binning_id": binning_id, "exclusion_id": exclusion_id}
    rows = driver_rows(session, _pieces_statement(session.get_bind().dialect.name), parameters)
    # SQLite gives them in the order of the ids it was given (one lookup per id); a database that
    # does not has them placed by their id's position.
    if [row[0] for row in rows] != list(piece_ids):
        position = {piece_id: index for index, piece_id in enumerate(piece_ids)}
        rows = sorted(rows, key=lambda row: position[row[0]])
    if len(rows) != len(piece_ids) or [row[-1] for row in rows] != list(run_ids):
        found = {row[0]: row[-1] for row in rows}
        lost = sum(found.get(piece_id) != run_id for piece_id, run_id in zip(piece_ids, run_ids, strict=True))
        raise BkgdbError(
            f"{lost} of the {len(piece_ids)} selected runs lost their piece while the background was built "
            "(indexed again meanwhile?): build it again"
        )
    if not rows:
        return dict.fromkeys(PIECE_COLUMN_NAMES, ())
    *columns, _ = zip(*rows, strict=True)  # the run id, read last, is left out
    return dict(zip(PIECE_COLUMN_NAMES, columns, strict=True))


def datastore_paths(session: Session, datastore_ids: list[int], known: dict[int, str] | None = None) -> list[str]:
    """The path of each of ``datastore_ids`` (repeated as often as they are).

    ``known`` holds paths already read (a datastore keeps its id and path): the datastores table
    is read, and ``known`` updated, only when one of the ids is not in it.
    """
    paths = {} if known is None else known
    if not paths.keys() >= set(datastore_ids):
        paths.update(session.connection().execute(sa.select(Datastore.id, Datastore.path)).all())
    return [paths[datastore_id] for datastore_id in datastore_ids]


def run_conditions(session: Session, run_ids: list[int]) -> list[tuple]:
    """(zenith, azimuth, muon efficiency) of each of ``run_ids``, in their order."""
    found: dict[int, tuple] = {}
    for start in range(0, len(run_ids), ID_CHUNK):
        chunk = run_ids[start : start + ID_CHUNK]
        query = sa.select(Run.id, Run.zenith_deg, Run.az_deg, Run.muon_eff).where(Run.id.in_(chunk))
        found.update((row[0], tuple(row[1:])) for row in session.connection().execute(query))
    return [found[run_id] for run_id in run_ids]


def own_piece(session: Session, target: Run, binning_id: int, exclusion_id: int) -> BackgroundPiece | None:
    """The target run's own piece of the setting, or None."""
    row = session.scalars(
        sa.select(PieceRow).where(
            PieceRow.run_id == target.id, PieceRow.binning_id == binning_id, PieceRow.exclusion_id == exclusion_id
        )
    ).one_or_none()
    return None if row is None else row_to_piece(row)


def runs_by_id(session: Session, run_ids: list[int]) -> list[Run]:
    """The catalogue rows of ``run_ids`` (in no particular order)."""
    runs: list[Run] = []
    for start in range(0, len(run_ids), ID_CHUNK):
        runs += session.scalars(sa.select(Run).where(Run.id.in_(run_ids[start : start + ID_CHUNK]))).all()
    return runs


def record_background(
    session: Session, built: Any, selection_settings: dict, from_run: bool, output_path: str | Path | None = None
) -> BackgroundRow:
    """Store the provenance of a built background, with one input row per piece it summed.

    Parameters
    ----------
    session : `~sqlalchemy.orm.Session`
        Added and flushed here; the caller commits.
    built : `~bkgdb.background.BuiltBackground`
        The background: its target, selection, assembly, smoothing, normalisation, condition
        model and inputs (`~bkgdb.built.PieceInput`).
    selection_settings : dict
        The ``background_selection`` parameters it was built with.
    from_run : bool
        Whether it was built from the target's own piece.
    output_path : str or `~pathlib.Path`, optional
        The file it was written to. Default is None.

    Rows the build read may be gone by now (pieces or settings dropped, runs removed by a new
    index): the record then refers only to those still there, and keeps of the others what it
    holds itself (OBS_IDs, file hashes, creation times). Under
    `~bkgdb.store.database.lock_piece_references` no drop deletes them before the caller commits.
    """
    lock_piece_references(session)
    inputs = list(built.inputs)
    pieces = present_ids(session, PieceRow, [item.piece_id for item in inputs])
    runs = present_ids(session, Run, [built.target.id] + [item.run_id for item in inputs])
    binnings = present_ids(session, BinningRow, [built.binning_id])
    exclusions = present_ids(session, ExclusionRow, [built.exclusion_id])
    row = BackgroundRow(
        target_run_id=built.target.id if built.target.id in runs else None,
        target_obs_id=built.target.obs_id,
        binning_id=built.binning_id if built.binning_id in binnings else None,
        exclusion_id=built.exclusion_id if built.exclusion_id in exclusions else None,
        selection={
            "settings": selection_settings,
            "from_run": from_run,
            **built.selection.as_dict(),
            "normalisation": built.normalisation.as_dict(),
            "condition_model": built.condition_model,
        },
        n_runs=len(built.selection.obs_ids),
        ontime_s=built.assembled.ontime_s,
        smoothing=built.smoothing,
        output_path=None if output_path is None else str(output_path),
    )
    session.add(row)
    session.flush()
    session.add_all(
        [
            BackgroundInput(
                background_id=row.id,
                piece_id=item.piece_id if item.piece_id in pieces else None,
                run_id=item.run_id if item.run_id in runs else None,
                obs_id=item.obs_id,
                file_sha256=item.file_sha256,
                piece_created_at=item.created_at,
                weight=1.0 if item.weight is None else float(item.weight),
            )
            for item in inputs
        ]
    )
    return row


def present_ids(session: Session, model: Any, ids: Sequence[int | None]) -> set[int]:
    """Which of ``ids`` (None ignored) have a row of ``model``."""
    wanted = sorted({value for value in ids if value is not None})
    found: set[int] = set()
    for start in range(0, len(wanted), ID_CHUNK):
        found.update(session.scalars(sa.select(model.id).where(model.id.in_(wanted[start : start + ID_CHUNK]))))
    return found


def record_if_writable(
    session: Session, built: Any, selection_settings: dict, from_run: bool, output_path: str | Path | None = None
) -> bool:
    """`record_background` and commit; False (rolled back) when the database is read-only.

    Raises
    ------
    sqlalchemy.exc.DBAPIError
        Any other database error.
    """
    try:
        record_background(session, built, selection_settings, from_run, output_path)
        session.commit()
    except (sa.exc.OperationalError, sa.exc.ProgrammingError, sa.exc.InternalError) as exc:
        session.rollback()
        if not is_readonly_error(exc):
            raise
        return False
    return True
