"""How many candidate runs each step of a selection leaves (the funnel), counted in SQL.

`funnel_counts` evaluates every condition once per candidate in one query; `indexed_funnel_counts`
gets the same numbers from index range scans, so a selection's cost follows the runs it uses,
not the size of the catalogue.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from bkgdb.store.integrity import is_ok
from bkgdb.store.models import RUN_STATUS_OK, PieceRow, Run

__all__ = ["funnel_counts", "indexed_funnel_counts"]


def funnel_counts(session: Session, candidates: Any, conditions: list) -> list[int]:
    """[candidates, left after the 1st condition, after the 1st and 2nd, ...] in one query.

    Each condition is evaluated once per candidate (an inner 0/1 column), then summed.
    """
    if not conditions:
        return [session.scalar(sa.select(sa.func.count()).select_from(candidates.subquery())) or 0]
    return _funnel_and_scalars(session, candidates, conditions, [])


def _funnel_and_scalars(session: Session, candidates: Any, conditions: list, scalars: list) -> list[int]:
    """`funnel_counts` (at least one condition), followed by the values of uncorrelated scalar
    subqueries ``scalars``, all in one query."""
    passes = candidates.with_only_columns(
        *[sa.case((condition, 1), else_=0).label(f"pass_{number}") for number, condition in enumerate(conditions)]
    ).subquery("passes")
    columns: list[Any] = [sa.func.count()]
    kept = []
    for number in range(len(conditions)):
        kept.append(passes.c[f"pass_{number}"] == 1)
        columns.append(sa.func.coalesce(sa.func.sum(sa.case((sa.and_(*kept), 1), else_=0)), 0))
    row = session.execute(sa.select(*columns, *scalars).select_from(passes)).one()
    return [int(value) for value in row]


def indexed_funnel_counts(
    session: Session,
    candidates: Any,
    target: Run,
    binning_id: int,
    exclusion_id: int,
    search_id: int | None,
    integrity: list,
    criteria: list,
    suspect_run_ids: list,
    suspect_obs_ids: list,
) -> list[int]:
    """The counts of `funnel_counts`, from queries that each read an index range, not the catalogue.

    - all candidates: the setting's pieces (an index count) less those of runs not ok and the
      target's own;
    - after each integrity step: only suspects (candidates with an id or OBS_ID on one of the
      short lists) can fail one, so they alone are looked up (by primary key or OBS_ID) and subtracted;
    - after each criterion: conditional counts over the runs passing the integrity steps and the
      first criterion (an index range scan, usually of zenith angles).

    The integrity steps need one query (with the totals as scalar subqueries of it), the criteria another.
    """
    if search_id is None:
        of_setting = sa.and_(PieceRow.binning_id == binning_id, PieceRow.exclusion_id == exclusion_id)
        with_runs = sa.select(sa.func.count()).select_from(PieceRow).join(Run, Run.id == PieceRow.run_id)
        scalars = [
            sa.select(sa.func.count()).select_from(PieceRow).where(of_setting).scalar_subquery(),
            # Runs that failed to index rarely have pieces: an index lookup finds none.
            with_runs.where(of_setting, Run.status != RUN_STATUS_OK).scalar_subquery(),
            with_runs.where(of_setting, Run.status == RUN_STATUS_OK, Run.id == target.id).scalar_subquery(),
            sa.select(sa.func.count(Run.id)).where(Run.status != RUN_STATUS_OK).scalar_subquery(),
            sa.select(sa.func.count(Run.id)).scalar_subquery(),
        ]
    else:
        scalars = [
            sa.select(sa.func.count()).select_from(candidates.subquery()).scalar_subquery(),
            sa.select(sa.func.count(Run.id))
            .where(Run.datastore_id == search_id, Run.status == RUN_STATUS_OK, Run.id != target.id)
            .scalar_subquery(),
        ]
    # Suspects by OBS_ID (the target's is always one) or by id: an index lookup each.
    suspect: Any = Run.obs_id.in_(sorted(set(suspect_obs_ids)))
    if suspect_run_ids:
        suspect = sa.or_(suspect, Run.id.in_(sorted(set(suspect_run_ids))))
    values = _funnel_and_scalars(session, candidates.where(suspect), integrity, scalars)
    suspect_counts, found = values[: len(integrity) + 1], values[len(integrity) + 1 :]
    if search_id is None:
        total, not_ok_pieces, own_piece, not_ok, n_runs = found
        total -= not_ok_pieces + own_piece
        other_ok_runs = n_runs - not_ok - 1  # the target is ok
    else:
        total, other_ok_runs = found
    counts = [total] + [total - (suspect_counts[0] - left) for left in suspect_counts[1:]]
    if criteria:
        # When every such run has a piece (the usual case) the pieces need not be joined and the
        # counts are read from the runs' selection index alone.
        if other_ok_runs == total:
            candidates = sa.select(Run.id).where(is_ok(), Run.id != target.id)
            if search_id is not None:
                candidates = candidates.where(Run.datastore_id == search_id)
        counts += funnel_counts(session, candidates.where(*integrity, criteria[0]), criteria[1:])
    return counts
