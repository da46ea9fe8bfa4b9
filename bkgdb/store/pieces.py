"""The piece cache: what is stored per binning and exclusion setting, loading and dropping pieces."""

import json
import logging

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from bkgdb.errors import BkgdbError
from bkgdb.store.models import BinningRow, Datastore, ExclusionRow, PieceRow, Run
from bkgdb.makers.piece import BackgroundPiece, decode_array

__all__ = ["PieceCache", "row_to_piece"]

log = logging.getLogger(__name__)


def row_to_piece(row):
    """A `~bkgdb.makers.piece.BackgroundPiece` from its database row."""
    shape = (row.n_energy, row.n_offset)
    return BackgroundPiece(
        counts=decode_array(row.counts, row.counts_dtype, shape).astype(np.int64),
        excluded_counts=decode_array(row.excluded_counts, row.counts_dtype, shape).astype(np.int64),
        exposure_s=decode_array(row.exposure_s, row.exposure_dtype, (row.n_offset,)).copy(),
        ontime_s=row.ontime_s, livetime_s=row.livetime_s, regions=row.regions or [],
    )


class PieceCache:
    """Stored background pieces of one database.

    Parameters
    ----------
    engine : `sqlalchemy.engine.Engine`
        The database (schema up to date).
    """

    def __init__(self, engine):
        self.engine = engine

    def summary(self):
        """Pieces per (binning, exclusion setting): counts of pieces and runs, bytes stored."""
        size = (sa.func.coalesce(sa.func.sum(
            sa.func.length(PieceRow.counts) + sa.func.length(PieceRow.excluded_counts)
            + sa.func.length(PieceRow.exposure_s)), 0))
        query = (
            sa.select(BinningRow.hash, BinningRow.params, ExclusionRow.hash, ExclusionRow.params,
                      sa.func.count(PieceRow.id), size)
            .join(BinningRow, BinningRow.id == PieceRow.binning_id)
            .join(ExclusionRow, ExclusionRow.id == PieceRow.exclusion_id)
            .group_by(BinningRow.id, BinningRow.hash, BinningRow.params, ExclusionRow.id,
                      ExclusionRow.hash, ExclusionRow.params)
            .order_by(BinningRow.id, ExclusionRow.id)
        )
        with Session(self.engine) as session:
            rows = session.execute(query).all()
        summary = []
        for b_hash, b_params, e_hash, e_params, n_pieces, n_bytes in rows:
            summary.append({
                "binning": b_hash[:12],
                "energy": f"{b_params['e_min']:g}-{b_params['e_max']:g} TeV x {b_params['e_bins']}",
                "offset": f"{b_params['off_min']:g}-{b_params['off_max']:g} deg x {b_params['off_bins']}",
                "exclusion": e_hash[:12],
                "method": e_params.get("exposure_method"),
                "pieces": int(n_pieces),
                "bytes": int(n_bytes),
                "bytes_per_piece": round(int(n_bytes) / n_pieces, 1) if n_pieces else 0,
            })
        return summary

    def _resolve(self, session, model, prefix, what):
        matches = session.scalars(sa.select(model).where(model.hash.startswith(prefix, autoescape=True))).all()
        if not matches:
            raise BkgdbError(f"no {what} whose hash starts with {prefix!r} (see `bkgdb cache`)")
        if len(matches) > 1:
            raise BkgdbError(f"{what} hash prefix {prefix!r} is ambiguous: give more characters")
        return matches[0]

    def drop(self, exclusion=None, binning=None):
        """Delete the pieces of one exclusion setting and/or one binning (by hash prefix).

        Returns
        -------
        n : int
            Pieces deleted.
        """
        if not exclusion and not binning:
            raise BkgdbError("say which pieces to drop: an exclusion and/or a binning hash prefix")
        with Session(self.engine) as session:
            query = sa.delete(PieceRow)
            if exclusion:
                query = query.where(PieceRow.exclusion_id == self._resolve(session, ExclusionRow, exclusion,
                                                                           "exclusion setting").id)
            if binning:
                query = query.where(PieceRow.binning_id == self._resolve(session, BinningRow, binning, "binning").id)
            deleted = session.execute(query).rowcount
            # Settings without pieces are forgotten too; they come back when used again.
            for model, column in ((ExclusionRow, PieceRow.exclusion_id), (BinningRow, PieceRow.binning_id)):
                session.execute(sa.delete(model).where(~model.id.in_(sa.select(column).distinct())))
            session.commit()
        return deleted

    def exclusions(self, obs_id, datastore=None):
        """The exclusion regions applied to a run's pieces, per exclusion setting.

        Returns
        -------
        regions : list of dict
            One entry per (datastore, exclusion setting) with the list of regions.
        """
        query = (
            sa.select(Datastore.path, ExclusionRow.hash, ExclusionRow.params, PieceRow.regions)
            .join(Run, Run.id == PieceRow.run_id).join(Datastore, Datastore.id == Run.datastore_id)
            .join(ExclusionRow, ExclusionRow.id == PieceRow.exclusion_id)
            .where(Run.obs_id == obs_id)
            .order_by(Datastore.path, ExclusionRow.id)
        )
        if datastore is not None:
            query = query.where(Datastore.at(datastore))
        with Session(self.engine) as session:
            rows = session.execute(query).all()
        seen, result = set(), []
        for path, e_hash, e_params, regions in rows:
            key = (path, e_hash, json.dumps(regions, sort_keys=True))
            if key in seen:
                continue  # binnings of one setting mostly share their regions
            seen.add(key)
            result.append({"datastore": path, "exclusion": e_hash[:12],
                           "method": e_params.get("exposure_method"), "regions": regions or []})
        return result
