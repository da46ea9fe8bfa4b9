"""Exclusion regions stored once per distinct list (`~bkgdb.store.models.RegionSet`), shared by pieces."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from bkgdb.store.models import PieceRow, RegionSet
from bkgdb.store.upsert import upsert_insert

__all__ = ["regions_digest", "region_set_ids", "remove_unused_region_sets"]


def regions_digest(regions: list) -> str:
    """SHA-256 of a list of exclusion regions as JSON, keys sorted (its order kept): its `RegionSet`'s key."""
    return hashlib.sha256(json.dumps(regions, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def region_set_ids(session: Session, region_lists: Sequence[list]) -> list[Any]:
    """The `RegionSet` id of each list of regions (None for an empty list), stored first when new.

    Safe against another writer storing the same list at the same moment (an insert that ignores
    a set already there, then one look-up of the ids). The ids are valid in the session's
    transaction only: a ``cache --drop`` deletes sets no piece refers to, so a writer looks them up
    again in each transaction, under `~bkgdb.store.database.lock_piece_references`.

    Parameters
    ----------
    session : `~sqlalchemy.orm.Session`
        Written in; the caller commits.
    region_lists : sequence of list
        Each piece's regions.
    """
    digests = [regions_digest(regions) if regions else None for regions in region_lists]
    lists: dict[str, list] = {
        digest: regions for digest, regions in zip(digests, region_lists, strict=True) if digest is not None
    }
    if not lists:
        return list(digests)

    def stored(wanted: list[str]) -> dict[str, int]:
        query = sa.select(RegionSet.sha256, RegionSet.id).where(RegionSet.sha256.in_(wanted))
        return {digest: set_id for digest, set_id in session.execute(query)}

    # Most lists are stored already (the fields of an archive repeat): only the others are sent.
    known = stored(list(lists))
    new = [digest for digest in lists if digest not in known]
    if new:
        insert = upsert_insert(session, cast(sa.Table, RegionSet.__table__)).on_conflict_do_nothing(
            index_elements=["sha256"]
        )
        session.execute(insert, [{"sha256": digest, "regions": lists[digest]} for digest in new])
        known.update(stored(new))
    return [None if digest is None else known[digest] for digest in digests]


def remove_unused_region_sets(session: Session) -> int:
    """Delete the region sets no piece refers to; how many. The caller commits."""
    unused = sa.delete(RegionSet).where(~sa.exists().where(PieceRow.region_set_id == RegionSet.id))
    return cast(sa.CursorResult, session.execute(unused)).rowcount
