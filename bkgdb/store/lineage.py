"""Lineage of backgrounds: which runs' pieces each one summed, and which must be rebuilt.

Every background recorded by `~bkgdb.background.BackgroundBuilder.record` lists its inputs in
``background_inputs``: piece, run, OBS_ID, and the piece's file hash and creation time at build
time. From them `background_lineage` finds everything built from a run, and `stale_backgrounds`
finds backgrounds whose inputs changed since: a piece deleted or replaced by re-indexing, a run
whose file hash differs, a run removed, or a run flagged bad after the background was built.
"""

import logging
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from bkgdb.store.database import session_scope
from bkgdb.store.flags import flags_in_force
from bkgdb.store.models import FLAG_BAD, BackgroundInput, BackgroundRow, Datastore, PieceRow, Run

__all__ = ["background_lineage", "stale_backgrounds"]

log = logging.getLogger(__name__)


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def background_lineage(engine: Engine, obs_id: int) -> list[dict[str, Any]]:
    """Every background (and attached file) built from run ``obs_id``'s pieces, newest first.

    Returns
    -------
    rows : list of dict
        background id, target OBS_ID, the datastore of the copy that was used (None when that
        run is no longer catalogued), the output file (a FITS file, or the run file of an attached
        datastore) and when it was built.
    """
    query = (
        sa.select(
            BackgroundRow.id,
            BackgroundRow.target_obs_id,
            BackgroundRow.output_path,
            BackgroundRow.created_at,
            Datastore.path,
        )
        .join(BackgroundInput, BackgroundInput.background_id == BackgroundRow.id)
        .outerjoin(Run, Run.id == BackgroundInput.run_id)
        .outerjoin(Datastore, Datastore.id == Run.datastore_id)
        .where(BackgroundInput.obs_id == obs_id)
        .order_by(BackgroundRow.id.desc())
    )
    # Backgrounds recorded before inputs were kept got their inputs in migration 0006.
    with session_scope(engine) as session:
        rows = session.execute(query).all()
    return [
        {
            "id": row.id,
            "target": row.target_obs_id,
            "from_datastore": row.path,
            "output": row.output_path,
            "created_at": _iso(row.created_at),
        }
        for row in rows
    ]


def stale_backgrounds(engine: Engine) -> list[dict[str, Any]]:
    """Backgrounds whose inputs changed since they were built, with the reasons, newest first.

    An input is out of date when its piece was deleted (or replaced: same id, another creation
    time or file hash), its run was removed from the catalogue or its event file's hash differs,
    or its OBS_ID was flagged bad after the background was built.

    Returns
    -------
    rows : list of dict
        background id, target, output, created_at and ``reason`` ('; '-joined, per cause the
        OBS_IDs concerned).
    """
    in_force = flags_in_force()
    piece_gone = BackgroundInput.piece_id.is_(None)
    piece_replaced = sa.and_(
        ~piece_gone,
        sa.or_(
            PieceRow.created_at != BackgroundInput.piece_created_at,
            PieceRow.file_sha256.is_distinct_from(BackgroundInput.file_sha256),
        ),
    )
    run_gone = BackgroundInput.run_id.is_(None)
    file_changed = sa.and_(~run_gone, Run.file_sha256.is_distinct_from(BackgroundInput.file_sha256))
    flagged_later = sa.and_(in_force.c.flag == FLAG_BAD, in_force.c.created_at > BackgroundRow.created_at)
    causes = [
        ("run removed", run_gone),
        ("event file changed", file_changed),
        ("piece deleted", sa.and_(piece_gone, ~run_gone)),
        ("piece replaced", piece_replaced),
        ("flagged bad since", flagged_later),
    ]
    query = (
        sa.select(
            BackgroundRow.id,
            BackgroundRow.target_obs_id,
            BackgroundRow.output_path,
            BackgroundRow.created_at,
            BackgroundInput.obs_id,
            *[
                sa.case((condition, 1), else_=0).label(f"cause_{number}")
                for number, (_, condition) in enumerate(causes)
            ],
        )
        .join(BackgroundInput, BackgroundInput.background_id == BackgroundRow.id)
        .outerjoin(PieceRow, PieceRow.id == BackgroundInput.piece_id)
        .outerjoin(Run, Run.id == BackgroundInput.run_id)
        .outerjoin(in_force, in_force.c.obs_id == BackgroundInput.obs_id)
        .where(sa.or_(*[condition for _, condition in causes]))
        .order_by(BackgroundRow.id.desc(), BackgroundInput.obs_id)
    )
    with session_scope(engine) as session:
        rows = session.execute(query).all()
    stale: dict[int, dict[str, Any]] = {}
    for row in rows:
        entry = stale.setdefault(
            row.id,
            {
                "id": row.id,
                "target": row.target_obs_id,
                "output": row.output_path,
                "created_at": _iso(row.created_at),
                "causes": defaultdict(list),
            },
        )
        for number, (name, _) in enumerate(causes):
            # A run removed or re-indexed loses its pieces too: name only the first cause.
            if getattr(row, f"cause_{number}"):
                entry["causes"][name].append(row.obs_id)
                break
    result = []
    for entry in stale.values():
        causes_found = entry.pop("causes")
        entry["reason"] = "; ".join(
            f"{name}: {_obs_id_list(causes_found[name])}" for name, _ in causes if name in causes_found
        )
        result.append(entry)
    return result


def _obs_id_list(obs_ids: Iterable[int], shown: int = 10) -> str:
    """'1001, 1002' or '1001, 1002, ... (25 runs)' for long lists."""
    unique = sorted(set(obs_ids))
    text = ", ".join(str(obs_id) for obs_id in unique[:shown])
    return text if len(unique) <= shown else f"{text}, ... ({len(unique)} runs)"
