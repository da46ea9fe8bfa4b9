"""Runs that must never build a background: failed, empty, flagged bad, or another copy of a run.

These are the integrity steps every selection applies before its criteria (`integrity_steps`),
as SQL conditions on the candidate runs. Short lists of offending ids are asked for once and
passed to the database as values; long ones stay subqueries.
"""

from __future__ import annotations

import functools
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, aliased

from bkgdb.store.flags import bad_obs_ids
from bkgdb.store.models import RUN_STATUS_OK, Datastore, PieceRow, Run

__all__ = [
    "observation_second",
    "has_events",
    "is_ok",
    "short_list",
    "not_in_list",
    "list_state",
    "integrity_key",
    "one_copy_condition",
    "integrity_steps",
    "integrity_lists",
    "OBS_ID_LIST_MAX",
]

#: Up to this many run ids or OBS_IDs (empty, flagged, repeated) are passed to the database as a
#: list of values, more as a subquery.
OBS_ID_LIST_MAX = 2000

# Made once: an alias made per build is adapted anew (column by column) in every statement using it.
_OTHER, _OTHER_PIECE = aliased(Run, name="other_runs"), aliased(PieceRow, name="other_pieces")


def observation_second(run: Any = Run) -> Any:
    """SQL expression: a run's observation start in whole seconds (MJD x 86400), -1 when unknown.

    With the OBS_ID it identifies an observation: two copies of one run in two datastores (even
    reprocessed ones) share both.
    """
    return sa.func.coalesce(sa.func.round(run.tstart_mjd * 86400.0), -1)


def has_events(piece: Any = PieceRow) -> Any:
    """SQL condition on a piece: its run has ontime and events in the binning's range.

    A run without events (``event_count`` 0) has none in range either, so the piece alone
    tells, and the check reads no catalogue row.
    """
    # Zeros as literals, as in the condition of the empty pieces' partial index (`EMPTY_PIECE`), so
    # that every database sees the query's condition is the index's.
    zero: Any = sa.literal_column("0")
    return sa.and_(piece.ontime_s > zero, piece.n_kept + piece.n_excluded > zero)


def is_ok(run: Any = Run) -> Any:
    """SQL condition: the run indexed fine.

    Written ``status || '' = 'ok'`` so that no plan scans the status index for it (nearly every
    run is ok): without table statistics SQLite would take that index over the zenith range.
    """
    return run.status.concat("") == RUN_STATUS_OK


def short_list(session: Session, query: Any) -> list | None:
    """The values of ``query`` when there are at most `OBS_ID_LIST_MAX`, else None."""
    values = session.scalars(query.limit(OBS_ID_LIST_MAX + 1)).all()
    return None if len(values) > OBS_ID_LIST_MAX else list(values)


def not_in_list(column: Any, query: Any, values: list | None, name: str | None = None) -> Any:
    """SQL condition ``column NOT IN (values of query)``, with the ``values`` when they were listed.

    Short lists (usually none: few runs are empty or flagged) are passed as values, so the
    funnel and selection queries do not evaluate the subquery again for every candidate. With a
    ``name`` they are the bound parameter of that name, without a value: given when the statement
    runs (see `integrity_steps`).
    """
    if values is None:
        return column.not_in(query)
    if not values:
        return sa.true()
    if name is None:
        return column.not_in(values)
    return column.not_in(sa.bindparam(name, type_=column.type, expanding=True))


def list_state(values: list | None) -> int:
    """How a list of `not_in_list` shapes its condition: -1 a subquery, 0 none, 1 a bound list."""
    return -1 if values is None else int(bool(values))


def integrity_key(binning_id: int, exclusion_id: int, search_id: int | None, *lists: list | None) -> tuple:
    """What the integrity conditions of a selection are made of, besides their parameters: the
    setting, the search datastore and the `list_state` of each integrity list. Statements made of
    the conditions are kept under it (`integrity_steps`, the funnel's counts)."""
    return (binning_id, exclusion_id, search_id, *map(list_state, lists))


def _repeated() -> Any:
    """Query of the OBS_IDs catalogued more than once."""
    return sa.select(_OTHER.obs_id).group_by(_OTHER.obs_id).having(sa.func.count(_OTHER.id) > 1)


@functools.cache
def _lists_statement() -> Any:
    """One query for what the integrity steps ask before a selection (see `integrity_lists`):
    rows (kind, value) of the empty pieces' run ids (0), the OBS_IDs flagged bad (1), the number of
    datastores (2) and the target's `observation_second` (3). Made once, with bound parameters."""

    def listed(kind: int, query: Any) -> Any:
        values = query.limit(OBS_ID_LIST_MAX + 1).subquery()
        return sa.select(sa.literal_column(str(kind)).label("kind"), list(values.c)[0].label("value"))

    empty = sa.select(PieceRow.run_id).where(
        PieceRow.binning_id == sa.bindparam("binning_id"),
        PieceRow.exclusion_id == sa.bindparam("exclusion_id"),
        sa.not_(has_events()),
    )
    return sa.union_all(
        listed(0, empty),
        listed(1, bad_obs_ids()),
        sa.select(sa.literal_column("2"), sa.func.count(Datastore.id)),
        # As an integer (a whole number), so that every row's value is of one integer type.
        sa.select(sa.literal_column("3"), sa.cast(observation_second(), sa.BigInteger)).where(
            Run.id == sa.bindparam("target_id")
        ),
    )


def integrity_lists(
    session: Session, target: Run, binning_id: int, exclusion_id: int
) -> tuple[list | None, list | None, list | None, float]:
    """(empty pieces' run ids, OBS_IDs flagged bad, repeated OBS_IDs, the target's `observation_second`).

    Each list is None when longer than `OBS_ID_LIST_MAX`. One round trip (two with several
    datastores, whose repeated OBS_IDs are then asked for).
    """
    lists: dict[int, list] = {0: [], 1: [], 2: [], 3: []}
    parameters = {"binning_id": binning_id, "exclusion_id": exclusion_id, "target_id": target.id}
    for kind, value in session.connection().execute(_lists_statement(), parameters):
        lists[kind].append(value)
    empty_ids, bad_ids = (None if len(lists[kind]) > OBS_ID_LIST_MAX else lists[kind] for kind in (0, 1))
    repeated = [] if lists[2][0] <= 1 else short_list(session, _repeated())
    # A float, as the database computes it: the cast above only changed its type.
    return empty_ids, bad_ids, repeated, float(lists[3][0])


def one_copy_condition(
    binning_id: int, exclusion_id: int, datastore_id: int | None, repeated_obs_ids: list | None
) -> Any:
    """SQL condition: the run is the preferred copy of its observation, and no copy of the target.

    An observation is its OBS_ID and start second (`observation_second`; the target's is the
    parameter ``target_second``). Of several copies that are candidates (ok, with a non-empty
    piece), the one in the target's datastore is kept, else the one of the datastore indexed first
    (the lowest datastore id). Only runs whose OBS_ID is catalogued more than once
    (``repeated_obs_ids``, None when too many to list) are looked up (a correlated NOT EXISTS on
    the OBS_ID index), so an archive without copies pays almost nothing.

    The target's values (``target_obs_id``, ``target_second``, ``target_datastore_id``) and the
    repeated OBS_IDs (``repeated_obs_ids``) are named parameters without values: given when the
    statement runs (`integrity_steps`).
    """
    not_target_copy = sa.not_(
        sa.and_(
            Run.obs_id == sa.bindparam("target_obs_id", type_=Run.obs_id.type),
            observation_second() == sa.bindparam("target_second", type_=sa.Float),
        )
    )
    other, other_piece = _OTHER, _OTHER_PIECE
    if repeated_obs_ids == []:
        return not_target_copy
    target_store = sa.bindparam("target_datastore_id", type_=Run.datastore_id.type)
    preferred_copy = (
        sa.select(other.id)
        .join(other_piece, other_piece.run_id == other.id)
        .where(
            other.obs_id == Run.obs_id,
            other.id != Run.id,
            observation_second(other) == observation_second(),
            other.status == RUN_STATUS_OK,
            other_piece.binning_id == binning_id,
            other_piece.exclusion_id == exclusion_id,
            has_events(other_piece),
            sa.or_(
                other.datastore_id == target_store,
                sa.and_(Run.datastore_id != target_store, other.datastore_id < Run.datastore_id),
            ),
        )
    )
    if datastore_id is not None:
        preferred_copy = preferred_copy.where(other.datastore_id == datastore_id)
    # Listed once (`integrity_lists`): inside the funnel's scan SQLite would evaluate the subquery
    # for every run.
    single = Run.obs_id.not_in(
        _repeated()
        if repeated_obs_ids is None
        else sa.bindparam("repeated_obs_ids", type_=Run.obs_id.type, expanding=True)
    )
    return sa.and_(not_target_copy, sa.or_(single, ~preferred_copy.exists()))


def integrity_steps(
    session: Session,
    target: Run,
    binning_id: int,
    exclusion_id: int,
    search_id: int | None = None,
    memo: dict | None = None,
) -> tuple[list, tuple]:
    """(name, condition) of the runs that must never build a background: empty, flagged bad,
    other copies of a run; and (empty ids, flagged OBS_IDs, repeated OBS_IDs, parameters).

    Each list (empty, flagged, repeated OBS_IDs) is asked for once (`integrity_lists`) and passed as
    values, None where too long to list. The values that depend on the target and the lists are
    bound parameters with names and without values: a statement with these conditions runs with
    ``parameters``. So the conditions serve every target of the setting whose lists are of the same
    `list_state`: made once per such key in ``memo``.
    """
    empty_ids, bad_ids, repeated_ids, target_second = integrity_lists(session, target, binning_id, exclusion_id)
    key = integrity_key(binning_id, exclusion_id, search_id, empty_ids, bad_ids, repeated_ids)
    steps = None if memo is None else memo.get(key)
    if steps is None:
        # The subqueries are made only when a list is too long to pass.
        empty_pieces = None
        if empty_ids is None:
            empty_pieces = sa.select(PieceRow.run_id).where(
                PieceRow.binning_id == binning_id, PieceRow.exclusion_id == exclusion_id, sa.not_(has_events())
            )
        steps = [
            ("empty runs", not_in_list(Run.id, empty_pieces, empty_ids, "empty_ids")),
            (
                "flagged bad",
                not_in_list(Run.obs_id, bad_obs_ids() if bad_ids is None else None, bad_ids, "bad_obs_ids"),
            ),
            ("duplicate copies", one_copy_condition(binning_id, exclusion_id, search_id, repeated_ids)),
        ]
        if memo is not None:
            memo[key] = steps
    parameters = {
        "target_id": target.id,
        "target_obs_id": target.obs_id,
        "target_second": target_second,
        "target_datastore_id": target.datastore_id,
        "empty_ids": empty_ids,
        "bad_obs_ids": bad_ids,
        "repeated_obs_ids": repeated_ids,
    }
    return list(steps), (empty_ids, bad_ids, repeated_ids, parameters)
