"""Quality flags on runs: a history per OBS_ID whose newest entry is in force.

A run flagged bad is never selected for a background. Flags are kept by OBS_ID in their own
table (``run_flags``), apart from the catalogue rows, so re-indexing a datastore never touches
them and a flag covers every copy of the run in every datastore.
"""

import getpass
import logging
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.sql import Select, Subquery

from bkgdb.errors import BkgdbError
from bkgdb.store.database import session_scope
from bkgdb.store.models import FLAG_BAD, FLAG_GOOD, Run, RunFlag

__all__ = ["flag_run", "run_flags", "flags_in_force", "bad_obs_ids", "default_author"]

log = logging.getLogger(__name__)

FLAGS = (FLAG_BAD, FLAG_GOOD)


def default_author() -> str:
    """The login name of the user, or 'unknown' where the system has none."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry, no environment variable
        return "unknown"


def flags_in_force() -> Subquery:
    """Subquery of the flag in force per OBS_ID: its newest row (``obs_id``, ``flag``, ``created_at``)."""
    newest = sa.func.row_number().over(
        partition_by=RunFlag.obs_id, order_by=(RunFlag.created_at.desc(), RunFlag.id.desc())
    )
    ranked = sa.select(
        RunFlag.obs_id, RunFlag.flag, RunFlag.reason, RunFlag.created_at, newest.label("newest")
    ).subquery("ranked_flags")
    return (
        sa.select(ranked.c.obs_id, ranked.c.flag, ranked.c.reason, ranked.c.created_at)
        .where(ranked.c.newest == 1)
        .subquery("flags_in_force")
    )


def bad_obs_ids() -> Select:
    """Query of the OBS_IDs whose flag in force is bad: the runs selection leaves out."""
    in_force = flags_in_force()
    return sa.select(in_force.c.obs_id).where(in_force.c.flag == FLAG_BAD)


def flag_run(
    engine: Engine, obs_id: int, flag: str, reason: str | None = None, author: str | None = None
) -> dict[str, Any]:
    """Flag run ``obs_id`` bad or good; the new flag is in force from now on.

    Parameters
    ----------
    engine : `sqlalchemy.engine.Engine`
    obs_id : int
        A run in the catalogue (any datastore, any status).
    flag : {'bad', 'good'}
    reason : str, optional
        Why; required for a bad flag.
    author : str, optional
        Who flags it. Default is the login name.

    Returns
    -------
    entry : dict
        The stored flag: obs_id, flag, reason, author, created_at.
    """
    if flag not in FLAGS:
        raise BkgdbError(f"a flag is 'bad' or 'good', got {flag!r}")
    reason = (reason or "").strip() or None
    if flag == FLAG_BAD and reason is None:
        raise BkgdbError(f"say why run {obs_id} is bad: a reason is required")
    with session_scope(engine) as session:
        known = session.scalar(sa.select(sa.func.count(Run.id)).where(Run.obs_id == obs_id))
        if not known:
            raise BkgdbError(f"run {obs_id} is not in the catalogue: index its datastore first")
        row = RunFlag(obs_id=obs_id, flag=flag, reason=reason, author=author or default_author())
        session.add(row)
        session.commit()
        entry = _as_dict(row)
    log.info("run %s flagged %s by %s: %s", obs_id, flag, entry["author"], reason)
    return entry


def run_flags(engine: Engine, obs_id: int) -> list[dict[str, Any]]:
    """The flag history of run ``obs_id``, oldest first; ``in_force`` marks the newest.

    Returns
    -------
    rows : list of dict
        obs_id, flag, reason, author, created_at (ISO) and in_force of every flag set.
    """
    with session_scope(engine) as session:
        rows = session.scalars(
            sa.select(RunFlag).where(RunFlag.obs_id == obs_id).order_by(RunFlag.created_at, RunFlag.id)
        ).all()
        entries = [_as_dict(row) for row in rows]
    for number, entry in enumerate(entries):
        entry["in_force"] = number == len(entries) - 1
    return entries


def _as_dict(row: Any) -> dict[str, Any]:
    created = row.created_at
    return {
        "obs_id": row.obs_id,
        "flag": row.flag,
        "reason": row.reason,
        "author": row.author,
        "created_at": created.isoformat() if isinstance(created, datetime) else created,
    }
