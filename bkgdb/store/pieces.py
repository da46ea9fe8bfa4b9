"""The piece cache: what is stored per binning and exclusion setting, loading and dropping pieces."""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import sqlalchemy as sa

from bkgdb.errors import BkgdbError
from bkgdb.makers.piece import BackgroundPiece, decode_array, stored_payloads
from bkgdb.store.database import lock_piece_references, session_scope
from bkgdb.store.models import BackgroundRow, BinningRow, Datastore, ExclusionRow, PieceRow, RegionSet, Run
from bkgdb.store.regions import remove_unused_region_sets
from bkgdb.store.settings import geometry_from_params, setting_by_prefix

__all__ = [
    "PieceCache",
    "row_to_piece",
    "piece_arrays",
    "stacked_array",
    "stacked_pieces",
    "parsed_shape",
    "PIECE_COLUMNS",
    "PIECE_COLUMN_NAMES",
]

log = logging.getLogger(__name__)

#: The piece columns a build needs: its two summed arrays (decoded together by `stacked_pieces`)
#: and its lineage record. Not the shape: the binning's geometry has it. Not the run: the selection
#: has it, and the piece's id (chosen with its run) names the piece. Named so that they can be read
#: with the candidate runs' columns (`~bkgdb.store.selection.CANDIDATE_COLUMNS`, which hold the piece
#: id). ``created_at`` comes as the driver gives it (`~bkgdb.store.backgrounds.stored_datetimes`):
#: SQLAlchemy's conversion of SQLite's text, row by row, cost a sixth of reading the rows. Excluded
#: counts and regions are not summed, so not read.
PIECE_COLUMNS = (
    PieceRow.id.label("piece_id"),
    PieceRow.counts_dtype,
    PieceRow.exposure_dtype,
    PieceRow.counts,
    PieceRow.exposure_s,
    PieceRow.ontime_s.label("piece_ontime_s"),
    PieceRow.file_sha256,
    sa.type_coerce(PieceRow.created_at, sa.Text).label("created_at"),
)
#: The names of `PIECE_COLUMNS`: the keys of what a build sums (`stacked_pieces`).
PIECE_COLUMN_NAMES = tuple(column.name for column in PIECE_COLUMNS)


def piece_arrays(row: Any, excluded: bool = True) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(counts, excluded counts or None, exposure) decoded from a piece row of any geometry.

    ``row`` has the `~bkgdb.store.models.PieceRow` columns ``shape``, ``counts_dtype``,
    ``exposure_dtype``, ``counts``, ``exposure_s`` (and ``excluded_counts`` if ``excluded``):
    an ORM row or a row of selected columns. The exposure has the shape without its energy axis.
    """
    shape = tuple(int(n) for n in row.shape)
    counts = decode_array(row.counts, row.counts_dtype, shape)
    excluded_counts = decode_array(row.excluded_counts, row.counts_dtype, shape) if excluded else None
    return counts, excluded_counts, decode_array(row.exposure_s, row.exposure_dtype, shape[1:])


def parsed_shape(text: str, memo: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    """A piece's ``shape`` column read as JSON text, parsed once per distinct text (``memo``).

    The pieces of one setting share their shape: parsing it for every row (what the JSON column
    type does) was a large part of reading thousands of pieces.
    """
    shape = memo.get(text)
    if shape is None:
        shape = memo[text] = tuple(int(n) for n in json.loads(text))
    return shape


def stacked_array(blobs: Sequence[bytes], dtypes: Sequence[str], shape: tuple[int, ...]) -> np.ndarray:
    """Arrays of one ``shape`` stored as `~bkgdb.makers.piece.encode_array` blobs, stacked: (len(blobs), *shape).

    One `numpy.frombuffer` per dtype over the joined data instead of an array, a reshape and a
    copy per piece; arrays stored as they are are read all at once
    (`~bkgdb.makers.piece.stored_payloads`), compressed ones decompressed one by one. Pieces stored
    with different dtypes (counts are stored in the smallest integer type that holds them) come in
    their common dtype, exactly.

    Raises
    ------
    BkgdbError
        The arrays do not hold as many values as ``shape`` (pieces of another binning).
    """
    if not blobs:
        return np.zeros((0, *shape))
    kinds = set(dtypes)
    if len(kinds) == 1:
        return _same_dtype(blobs, dtypes[0], shape)
    stacked = np.empty((len(blobs), *shape), dtype=np.result_type(*kinds))
    for kind in kinds:
        chosen = [index for index, dtype in enumerate(dtypes) if dtype == kind]
        stacked[chosen] = _same_dtype([blobs[index] for index in chosen], kind, shape)
    return stacked


def _same_dtype(blobs: Sequence[bytes], dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """`stacked_array` of blobs of one dtype."""
    payloads = stored_payloads(blobs)
    data = np.frombuffer(b"".join(map(zlib.decompress, blobs)), np.uint8) if payloads is None else payloads.ravel()
    if data.size != len(blobs) * np.dtype(dtype).itemsize * int(np.prod(shape)):
        raise BkgdbError(f"stored arrays of another size than {shape} (not pieces of this binning?)")
    return data.view(dtype).reshape((len(blobs), *shape))


def stacked_pieces(columns: Mapping[str, Sequence[Any]], shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(counts as stored, exposure) of pieces given by column, stacked in their order: (n, *shape), (n, *spatial).

    ``columns`` (`PIECE_COLUMNS` by name, as a build reads them: `~bkgdb.store.backgrounds.selected_pieces`
    or with the candidates) has ``counts_dtype``, ``exposure_dtype``, ``counts`` and ``exposure_s``
    of pieces of ``shape`` (their binning's). The same values as `row_to_piece` gives piece by piece
    (there the counts are int64).
    """
    if not columns or not columns["counts"]:
        raise BkgdbError("no pieces to assemble")
    counts = stacked_array(columns["counts"], columns["counts_dtype"], shape)
    exposure = stacked_array(columns["exposure_s"], columns["exposure_dtype"], shape[1:])
    return counts, exposure


def row_to_piece(row: Any) -> BackgroundPiece:
    """A `~bkgdb.makers.piece.BackgroundPiece` of any geometry from its database row."""
    counts, excluded_counts, exposure = piece_arrays(row)
    assert excluded_counts is not None
    return BackgroundPiece(
        counts=counts.astype(np.int64),
        excluded_counts=excluded_counts.astype(np.int64),
        exposure_s=exposure.copy(),
        ontime_s=row.ontime_s,
        livetime_s=row.livetime_s,
        regions=row.regions,
    )


class PieceCache:
    """Stored background pieces of one database.

    Parameters
    ----------
    engine : `sqlalchemy.engine.Engine`
        The database (schema up to date).
    """

    def __init__(self, engine: sa.engine.Engine) -> None:
        self.engine = engine

    def summary(self) -> list[dict]:
        """Pieces per (binning, exclusion setting): number, bytes stored, and the binning's geometry.

        Each entry has ``binning`` and ``exclusion`` (hash prefixes), ``kind`` (``"2d"`` or ``"3d"``),
        ``geometry`` (`~bkgdb.geometry.PieceGeometry.describe`), ``method``, ``pieces``, ``bytes`` and
        ``bytes_per_piece``.
        """
        size = sa.func.coalesce(
            sa.func.sum(
                sa.func.length(PieceRow.counts)
                + sa.func.length(PieceRow.excluded_counts)
                + sa.func.length(PieceRow.exposure_s)
            ),
            0,
        )
        query = (
            sa.select(
                BinningRow.hash,
                BinningRow.params,
                ExclusionRow.hash,
                ExclusionRow.params,
                sa.func.count(PieceRow.id),
                size,
            )
            .join(BinningRow, BinningRow.id == PieceRow.binning_id)
            .join(ExclusionRow, ExclusionRow.id == PieceRow.exclusion_id)
            .group_by(
                BinningRow.id,
                BinningRow.hash,
                BinningRow.params,
                ExclusionRow.id,
                ExclusionRow.hash,
                ExclusionRow.params,
            )
            .order_by(BinningRow.id, ExclusionRow.id)
        )
        with session_scope(self.engine) as session:
            rows = session.execute(query).all()
        summary = []
        for b_hash, b_params, e_hash, e_params, n_pieces, n_bytes in rows:
            geometry = geometry_from_params(b_params)
            summary.append(
                {
                    "binning": b_hash[:12],
                    "kind": geometry.kind,
                    "geometry": geometry.describe(),
                    "exclusion": e_hash[:12],
                    "method": e_params.get("exposure_method"),
                    "pieces": int(n_pieces),
                    "bytes": int(n_bytes),
                    "bytes_per_piece": round(int(n_bytes) / n_pieces, 1) if n_pieces else 0,
                }
            )
        return summary

    def drop(self, exclusion: str | None = None, binning: str | None = None) -> int:
        """Delete the pieces of one exclusion setting and/or one binning (by hash prefix).

        Safe while indexes run (`~bkgdb.store.database.lock_piece_references`): it waits for the
        batches they are writing, and deletes no setting or region set that a piece still refers to,
        nor a setting it was not asked to drop. An index of the dropped setting itself goes on and
        stores the pieces of the runs it has not yet written.

        Returns
        -------
        n : int
            Pieces deleted.
        """
        if not exclusion and not binning:
            raise BkgdbError("say which pieces to drop: an exclusion and/or a binning hash prefix")
        with session_scope(self.engine) as session:
            lock_piece_references(session, exclusive=True)
            query = sa.delete(PieceRow)
            # Each dropped setting: its table, and the columns of pieces and of backgrounds naming it.
            dropped: list[tuple[Any, Any, Any, int]] = []
            if exclusion:
                row = setting_by_prefix(session, ExclusionRow, exclusion, "exclusion setting")
                query = query.where(PieceRow.exclusion_id == row.id)
                dropped.append((ExclusionRow, PieceRow.exclusion_id, BackgroundRow.exclusion_id, row.id))
            if binning:
                row = setting_by_prefix(session, BinningRow, binning, "binning")
                query = query.where(PieceRow.binning_id == row.id)
                dropped.append((BinningRow, PieceRow.binning_id, BackgroundRow.binning_id, row.id))
            deleted = cast(sa.CursorResult, session.execute(query)).rowcount
            # The dropped settings are forgotten once no piece uses them (they come back when used
            # again), unless a recorded background names them: its history keeps what it was built
            # on. Others without pieces are kept too: an index may have just made them.
            for model, in_pieces, in_history, setting_id in dropped:
                unused = ~sa.exists().where(in_pieces == setting_id) & ~sa.exists().where(in_history == setting_id)
                session.execute(sa.delete(model).where(model.id == setting_id, unused))
            # And region lists no piece uses any more: under the lock no batch is being written, and a
            # batch looks its lists up again (indexing itself never deletes one).
            remove_unused_region_sets(session)
            session.commit()
        return deleted

    def exclusions(self, obs_id: int, datastore: str | Path | None = None) -> list[dict]:
        """The exclusion regions applied to a run's pieces, per exclusion setting and set of regions.

        The binnings of one setting differ in their field of view, so in the stars and sources that
        fall in it: each entry names the binnings whose pieces have its regions.

        Returns
        -------
        regions : list of dict
            One entry per (datastore, exclusion setting, regions): ``datastore``, ``exclusion`` (hash
            prefix), ``method``, ``binnings`` (hash prefix and kind of each, e.g. ``1a2b3c4d5e6f 2d``)
            and the list of ``regions``.
        """
        query = (
            sa.select(
                Datastore.path,
                ExclusionRow.hash,
                ExclusionRow.params,
                BinningRow.hash,
                BinningRow.params,
                RegionSet.regions,
            )
            .select_from(PieceRow)
            .outerjoin(RegionSet, RegionSet.id == PieceRow.region_set_id)
            .join(Run, Run.id == PieceRow.run_id)
            .join(Datastore, Datastore.id == Run.datastore_id)
            .join(ExclusionRow, ExclusionRow.id == PieceRow.exclusion_id)
            .join(BinningRow, BinningRow.id == PieceRow.binning_id)
            .where(Run.obs_id == obs_id)
            .order_by(Datastore.path, ExclusionRow.id, BinningRow.id)
        )
        if datastore is not None:
            query = query.where(Datastore.at(datastore))
        with session_scope(self.engine) as session:
            rows = session.execute(query).all()
        entries: dict[tuple, dict] = {}
        for path, e_hash, e_params, b_hash, b_params, regions in rows:
            key = (path, e_hash, json.dumps(regions, sort_keys=True))
            if key not in entries:
                entries[key] = {
                    "datastore": path,
                    "exclusion": e_hash[:12],
                    "method": e_params.get("exposure_method"),
                    "binnings": [],
                    "regions": regions or [],
                }
            entries[key]["binnings"].append(f"{b_hash[:12]} {geometry_from_params(b_params).kind}")
        return list(entries.values())
