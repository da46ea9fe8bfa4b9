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


def funnel_counts(session: Session, candidates: Any, conditions: list, parameters: dict | None = None) -> list[int]:
    """[candidates, left after the 1st condition, after the 1st and 2nd, ...] in one query.

    Each condition is evaluated once per candidate (an inner 0/1 column), then summed. The query
    runs with the named ``parameters`` of the candidates and conditions.
    """
    # Through the session's connection: one row of numbers needs no ORM statement handling.
    connection = session.connection()
    if not conditions:
        return [connection.scalar(sa.select(sa.func.count()).select_from(candidates.subquery()), parameters) or 0]
    return [int(value) for value in connection.execute(_funnel_statement(candidates, conditions, []), parameters).one()]


def _funnel_statement(candidates: Any, conditions: list, scalars: list) -> Any:
    """The query of `funnel_counts` (at least one condition), followed by the values of uncorrelated
    scalar subqueries ``scalars``, in one row."""
    passes = candidates.with_only_columns(
        *[sa.case((condition, 1), else_=0).label(f"pass_{number}") for number, condition in enumerate(conditions)]
    ).subquery("passes")
    columns: list[Any] = [sa.func.count()]
    kept = []
    for number in range(len(conditions)):
        kept.append(passes.c[f"pass_{number}"] == 1)
        columns.append(sa.func.coalesce(sa.func.sum(sa.case((sa.and_(*kept), 1), else_=0)), 0))
    return sa.select(*columns, *scalars).select_from(passes)


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
    memo: dict | None = None,
    key: Any = None,
    parameters: dict | None = None,
) -> list[int]:
    """The counts of `funnel_counts`, from queries that each read an index range, not the catalogue.

    - all candidates: the setting's pieces (an index count) less those of runs not ok and the
      target's own;
    - after each integrity step: only suspects (candidates with an id or OBS_ID on one of the
      short lists) can fail one, so they alone are looked up (by primary key or OBS_ID) and subtracted;
    - after each criterion: conditional counts over the runs passing the integrity steps and the
      first criterion (an index range scan, usually of zenith angles).

    The integrity steps need one query (with the totals as scalar subqueries of it), the criteria another.
    With a ``memo``, the first is kept there under ``key`` and run again with ``parameters`` (the
    named parameters of the integrity conditions, `~bkgdb.store.integrity.integrity_steps`): the
    key must tell every other difference of the conditions (setting, lists' states, search datastore).
    """
    # Without a value, as in the candidates' query: every statement here runs with ``named``.
    target_id = sa.bindparam("target_id", type_=Run.id.type)
    named = {
        **(parameters or {}),
        "target_id": target.id,
        "suspect_obs_ids": sorted(set(suspect_obs_ids)),
        "suspect_run_ids": sorted(set(suspect_run_ids)),
    }
    statement = None if memo is None else memo.get(key)
    if statement is None:
        statement = _integrity_funnel_statement(
            candidates, target_id, binning_id, exclusion_id, search_id, integrity, bool(suspect_run_ids), named
        )
        if memo is not None:
            memo[key] = statement
    # Through the session's connection: one row, no ORM statement handling.
    values = [int(value) for value in session.connection().execute(statement, named).one()]
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
            candidates = sa.select(Run.id).where(is_ok(), Run.id != target_id)
            if search_id is not None:
                candidates = candidates.where(Run.datastore_id == search_id)
        counts += funnel_counts(session, candidates.where(*integrity, criteria[0]), criteria[1:], named)
    return counts


def _integrity_funnel_statement(
    candidates: Any,
    target_id: Any,
    binning_id: int,
    exclusion_id: int,
    search_id: int | None,
    integrity: list,
    by_run_id: bool,
    named: dict,
) -> Any:
    """The query of `indexed_funnel_counts` for the integrity steps: the suspects' funnel, then the totals.

    Its target-dependent values are the named parameters ``named``; a name it binds that is not
    among them would keep the first target's value when the query is run again, so it is refused.
    """
    if search_id is None:
        of_setting = sa.and_(PieceRow.binning_id == binning_id, PieceRow.exclusion_id == exclusion_id)
        with_runs = sa.select(sa.func.count()).select_from(PieceRow).join(Run, Run.id == PieceRow.run_id)
        # Two ranges of the status index, not a scan of it as ``!=`` would be.
        not_ok = sa.or_(Run.status < RUN_STATUS_OK, Run.status > RUN_STATUS_OK)
        n_not_ok = sa.select(sa.func.count(Run.id)).where(not_ok)
        scalars = [
            sa.select(sa.func.count()).select_from(PieceRow).where(of_setting).scalar_subquery(),
            # Runs that failed to index rarely have pieces: joined (every piece of the setting
            # looked up) only when there are some; the databases evaluate a CASE branch only if taken.
            sa.case((n_not_ok.scalar_subquery() > 0, with_runs.where(of_setting, not_ok).scalar_subquery()), else_=0),
            with_runs.where(of_setting, Run.status == RUN_STATUS_OK, Run.id == target_id).scalar_subquery(),
            n_not_ok.scalar_subquery(),
            sa.select(sa.func.count(Run.id)).scalar_subquery(),
        ]
    else:
        scalars = [
            sa.select(sa.func.count()).select_from(candidates.subquery()).scalar_subquery(),
            sa.select(sa.func.count(Run.id))
            .where(Run.datastore_id == search_id, Run.status == RUN_STATUS_OK, Run.id != target_id)
            .scalar_subquery(),
        ]
    # Suspects by OBS_ID (the target's is always one) or by id: an index lookup each.
    suspect: Any = Run.obs_id.in_(sa.bindparam("suspect_obs_ids", type_=Run.obs_id.type, expanding=True))
    if by_run_id:
        suspect = sa.or_(suspect, Run.id.in_(sa.bindparam("suspect_run_ids", type_=Run.id.type, expanding=True)))
    statement = _funnel_statement(candidates.where(suspect), integrity, scalars)
    unnamed = {
        element.key
        for element in sa.sql.visitors.iterate(statement)
        if isinstance(element, sa.BindParameter) and not element.unique and element.key not in named
    }
    if unnamed:
        raise ValueError(f"parameters {sorted(unnamed)} of the integrity funnel have no value")
    return statement
