"""Runs that must never build a background: failed, empty, flagged bad, or another copy of a run.

These are the integrity steps every selection applies before its criteria (`integrity_steps`),
as SQL conditions on the candidate runs. Short lists of offending ids are asked for once and
passed to the database as values; long ones stay subqueries.
"""

from __future__ import annotations

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
    "repeated_obs_ids",
    "one_copy_condition",
    "integrity_steps",
    "OBS_ID_LIST_MAX",
]

#: Up to this many run ids or OBS_IDs (empty, flagged, repeated) are passed to the database as a
#: list of values, more as a subquery.
OBS_ID_LIST_MAX = 2000


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
    return sa.and_(piece.ontime_s > 0, piece.n_kept + piece.n_excluded > 0)


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


def not_in_list(column: Any, query: Any, values: list | None) -> Any:
    """SQL condition ``column NOT IN (values of query)``, with the ``values`` when they were listed.

    Short lists (usually none: few runs are empty or flagged) are passed as values, so the
    funnel and selection queries do not evaluate the subquery again for every candidate.
    """
    if values is None:
        return column.not_in(query)
    return column.not_in(values) if values else sa.true()


def repeated_obs_ids(session: Session) -> list | None:
    """OBS_IDs catalogued more than once (at most `OBS_ID_LIST_MAX`, else None).

    One datastore holds an OBS_ID once (a unique constraint), so a catalogue of one
    datastore has none and is not scanned.
    """
    if (session.scalar(sa.select(sa.func.count(Datastore.id))) or 0) <= 1:
        return []
    other = aliased(Run)
    repeated = sa.select(other.obs_id).group_by(other.obs_id).having(sa.func.count(other.id) > 1)
    return short_list(session, repeated)


def one_copy_condition(
    session: Session,
    target: Run,
    binning_id: int,
    exclusion_id: int,
    datastore_id: int | None = None,
    repeated_obs_ids: list | None = None,
) -> Any:
    """SQL condition: the run is the preferred copy of its observation, and no copy of the target.

    An observation is its OBS_ID and start second (`observation_second`). Of several copies
    that are candidates (ok, with a non-empty piece), the one in the target's datastore is
    kept, else the one of the datastore indexed first (the lowest datastore id). Only runs
    whose OBS_ID is catalogued more than once are looked up (a correlated NOT EXISTS on the
    OBS_ID index), so an archive without copies pays almost nothing.
    """
    target_run = aliased(Run)
    # Asked once, compared as a value: a scalar subquery would keep the scan from the index.
    target_second = session.scalar(sa.select(observation_second(target_run)).where(target_run.id == target.id))
    not_target_copy = sa.not_(sa.and_(Run.obs_id == target.obs_id, observation_second() == target_second))
    other, other_piece = aliased(Run), aliased(PieceRow)
    repeated = sa.select(other.obs_id).group_by(other.obs_id).having(sa.func.count(other.id) > 1)
    # Asked once (`repeated_obs_ids`): inside the funnel's scan SQLite would evaluate it for every run.
    if repeated_obs_ids is None:
        repeated_obs_ids = list(session.scalars(repeated.limit(OBS_ID_LIST_MAX + 1)).all())
    if not repeated_obs_ids:
        return not_target_copy
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
                other.datastore_id == target.datastore_id,
                sa.and_(Run.datastore_id != target.datastore_id, other.datastore_id < Run.datastore_id),
            ),
        )
    )
    if datastore_id is not None:
        preferred_copy = preferred_copy.where(other.datastore_id == datastore_id)
    single = Run.obs_id.not_in(repeated if len(repeated_obs_ids) > OBS_ID_LIST_MAX else list(repeated_obs_ids))
    return sa.and_(not_target_copy, sa.or_(single, ~preferred_copy.exists()))


def integrity_steps(
    session: Session, target: Run, binning_id: int, exclusion_id: int, search_id: int | None = None
) -> tuple[list, tuple]:
    """(name, condition) of the runs that must never build a background: empty, flagged bad,
    other copies of a run; and the short lists of ids they used (None where too long to list).

    Each list (empty, flagged, repeated OBS_IDs) is asked for once and passed as values.
    """
    empty_pieces = sa.select(PieceRow.run_id).where(
        PieceRow.binning_id == binning_id, PieceRow.exclusion_id == exclusion_id, sa.not_(has_events())
    )
    empty_ids = short_list(session, empty_pieces)
    bad_ids = short_list(session, bad_obs_ids())
    repeated_ids = repeated_obs_ids(session)
    steps = [
        ("empty runs", not_in_list(Run.id, empty_pieces, empty_ids)),
        ("flagged bad", not_in_list(Run.obs_id, bad_obs_ids(), bad_ids)),
        ("duplicate copies", one_copy_condition(session, target, binning_id, exclusion_id, search_id, repeated_ids)),
    ]
    return steps, (empty_ids, bad_ids, repeated_ids)
