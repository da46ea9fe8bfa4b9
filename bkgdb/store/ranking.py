"""Ranking the candidate runs of a selection, most similar to the target first.

Two orders: by airmass step, then days from the target (`airmass_then_time`), or by the
Kullback-Leibler divergence of each candidate's rate shape from the target's (`kl_divergences`),
on pieces of any geometry (the arrays are flattened).
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import itemgetter
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from bkgdb.errors import BkgdbError
from bkgdb.store.database import driver_rows, id_in
from bkgdb.store.models import PieceRow
from bkgdb.store.pieces import parsed_shape, stacked_array

__all__ = [
    "AIRMASS_STEP",
    "airmass",
    "rate_shape",
    "kl_divergence",
    "kl_divergences",
    "airmass_then_time",
    "kl_ranking",
    "row_column",
    "row_arrays",
    "known_or_zero",
]

#: Airmass step of the similarity ranking: within a step, the run closest in time comes first.
AIRMASS_STEP = 0.01


def airmass(zenith_deg: Any) -> Any:
    """Plane-parallel airmass 1 / cos(zenith) of zenith angles in deg (a number or an array)."""
    return 1.0 / np.cos(np.radians(zenith_deg))


def _rates(counts: np.ndarray, exposure_s: np.ndarray, pseudo: float) -> np.ndarray:
    """(counts + pseudo) / exposure per bin for a stack of pieces, flattened to (n_pieces, n_bins).

    ``counts`` has shape (n_pieces, n_energy, *spatial), ``exposure_s`` (n_pieces, *spatial); bins
    without exposure get rate 0.
    """
    counts = np.asarray(counts, float)
    exposure = np.asarray(exposure_s, float)
    exposure = np.where(exposure > 0, exposure, np.inf)[:, np.newaxis]
    return ((counts + pseudo) / exposure).reshape(len(counts), -1)


def rate_shape(piece: Any, pseudo: float = 0.5) -> np.ndarray:
    """A piece's rate per bin, normalised to 1: counts (+ ``pseudo``) / exposure, of the counts' shape.

    Dividing by the accepted exposure removes the holes that exclusion regions cut, so runs with
    different stars in the field compare by their background alone. Works on any geometry.
    """
    counts = np.asarray(piece.counts, float)
    rate = _rates(counts[np.newaxis], np.asarray(piece.exposure_s)[np.newaxis], pseudo)[0]
    return (rate / rate.sum()).reshape(counts.shape)


def kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Kullback-Leibler divergence D(p || q) of two normalised shapes (q > 0 where p > 0)."""
    p, q = np.asarray(p, float).ravel(), np.asarray(q, float).ravel()
    use = p > 0
    return float(np.sum(p[use] * np.log(p[use] / np.maximum(q[use], 1e-300))))


def kl_divergences(
    reference: np.ndarray, counts: np.ndarray, exposure_s: np.ndarray, pseudo: float = 0.5
) -> np.ndarray:
    """`kl_divergence` of the reference shape from each piece's `rate_shape`, for a stack of pieces.

    Parameters
    ----------
    reference : `~numpy.ndarray`
        The target's normalised shape, of one piece's counts shape (any geometry).
    counts : `~numpy.ndarray`
        Shape (n_pieces, n_energy, *spatial).
    exposure_s : `~numpy.ndarray`
        Shape (n_pieces, *spatial).

    Returns
    -------
    divergences : `~numpy.ndarray`
        One per piece, equal to the one-piece functions' values.
    """
    flat = _rates(counts, exposure_s, pseudo)
    flat = flat / flat.sum(axis=1)[:, np.newaxis]
    p = np.asarray(reference, float).ravel()
    use = p > 0
    q = np.ascontiguousarray(flat[:, use])
    return np.sum(p[use] * np.log(p[use] / np.maximum(q, 1e-300)), axis=1)


def _fields(rows: list, fields: Sequence[str] | None) -> Sequence[str] | None:
    """The names of the rows' positions: ``fields``, else those of result rows (``_fields``), else None."""
    if fields is not None:
        return fields
    return getattr(rows[0], "_fields", None) if rows else None


def row_column(rows: list, name: str, fields: Sequence[str] | None = None) -> list:
    """Column ``name`` of ``rows``: by position for tuples whose ``fields`` are given and for result
    rows (a tenth of the cost of an attribute lookup per row), else by attribute."""
    known = _fields(rows, fields)
    if known is not None and name in known:
        return list(map(itemgetter(known.index(name)), rows))
    if fields is not None:
        raise KeyError(f"no column {name!r} among {tuple(fields)}")
    return [getattr(row, name) for row in rows]


def airmass_then_time(target: Any, rows: list, fields: Sequence[str] | None = None) -> list:
    """Rows (``zenith_deg``, ``tstart_mjd``, ``obs_id``; tuples of ``fields``) ordered by airmass step
    from the target's (`AIRMASS_STEP`; 0 where a zenith is unknown), then by days from it (an
    unknown start counts as 0), then by OBS_ID."""
    if not rows:
        return []
    obs_ids, zenith, start = row_arrays(rows, ("obs_id", "zenith_deg", "tstart_mjd"), fields)
    if target.zenith_deg is None:
        step = np.zeros(len(rows))
    else:
        with np.errstate(invalid="ignore"):
            step = np.floor(np.abs(airmass(zenith) - airmass(target.zenith_deg)) / AIRMASS_STEP)
        step[np.isnan(zenith)] = 0
    days = np.abs(known_or_zero(start) - (target.tstart_mjd or 0.0))
    return list(map(rows.__getitem__, np.lexsort((obs_ids.astype(np.int64), days, step)).tolist()))


def known_or_zero(values: Sequence[Any] | np.ndarray) -> np.ndarray:
    """``values`` (ontimes, start times) as floats, the unknown ones (None, NaN) as 0."""
    array = np.array(values, dtype=float)
    array[np.isnan(array)] = 0.0
    return array


def row_arrays(rows: list, names: Sequence[str], fields: Sequence[str] | None = None) -> list[np.ndarray]:
    """Columns ``names`` of ``rows`` (see `row_column`) as float arrays (None becomes NaN)."""
    return [np.array(row_column(rows, name, fields), dtype=float) for name in names]


def kl_ranking(
    session: Session,
    target: Any,
    rows: list,
    binning_id: int,
    exclusion_id: int,
    candidates: Any = None,
    fields: Sequence[str] | None = None,
    parameters: dict | None = None,
) -> list:
    """``rows`` (with ``id`` and ``obs_id``; tuples of ``fields``) ordered by the KL divergence of their
    pieces from the target's.

    Only the candidates' counts and exposure are read (with the target's): in one query joined to
    the selection ``candidates`` (a query of run ids, run with its named ``parameters``), or by the
    rows' ids when it is None. Rows that hold their pieces (`~bkgdb.store.pieces.PIECE_COLUMNS`
    among ``fields``, read with the candidates) are not read again: only the target's piece is.

    Raises
    ------
    BkgdbError
        The target has no piece of the setting.
    """
    if not rows:
        return []
    carried = fields is not None and "counts" in fields
    if carried:
        wanted = PieceRow.run_id == target.id
    else:
        others = (
            id_in(session, PieceRow.run_id, row_column(rows, "id", fields))
            if candidates is None
            else PieceRow.run_id.in_(candidates.scalar_subquery())
        )
        wanted = sa.or_(PieceRow.run_id == target.id, others)
    found = driver_rows(
        session,
        sa.select(
            PieceRow.run_id,
            # As text, parsed once per distinct shape (`parsed_shape`), not as JSON per row.
            sa.cast(PieceRow.shape, sa.Text),
            PieceRow.counts_dtype,
            PieceRow.exposure_dtype,
            PieceRow.counts,
            PieceRow.exposure_s,
        ).where(PieceRow.binning_id == binning_id, PieceRow.exclusion_id == exclusion_id, wanted),
        parameters,
    )
    by_run = {row[0]: row for row in found}
    if target.id not in by_run:
        raise BkgdbError(f"KL_DIV needs run {target.obs_id}'s own piece: index its datastore with --config")
    # The rows' pieces (then the target's) decoded at once per array: one buffer each, no per-piece arrays.
    names = ("counts_dtype", "exposure_dtype", "counts", "exposure_s")
    memo: dict[str, tuple[int, ...]] = {}
    own = by_run[target.id]
    if carried:
        # Their shape is not read: the pieces of one setting have its binning's (as a build assumes),
        # and `stacked_array` refuses arrays of another size.
        shape = parsed_shape(own[1], memo)
        columns = [row_column(rows, name, fields) + [own[2 + number]] for number, name in enumerate(names)]
    else:
        ordered = [by_run[run_id] for run_id in row_column(rows, "id", fields)] + [own]
        shapes = {parsed_shape(row[1], memo) for row in ordered}
        if len(shapes) != 1:
            raise BkgdbError(f"pieces of several shapes {sorted(shapes)} in one setting")
        shape = shapes.pop()
        columns = [[row[2 + number] for row in ordered] for number in range(len(names))]
    counts_dtypes, exposure_dtypes, counts_blobs, exposure_blobs = columns
    all_counts = stacked_array(counts_blobs, counts_dtypes, shape)
    all_exposure = stacked_array(exposure_blobs, exposure_dtypes, shape[1:])
    counts, exposure = all_counts[:-1], all_exposure[:-1]
    own_counts, own_exposure = all_counts[-1], all_exposure[-1]
    reference = rate_shape(_Arrays(own_counts, own_exposure))
    scores = kl_divergences(reference, counts, exposure)
    obs_ids = np.array(row_column(rows, "obs_id", fields), dtype=np.int64)
    return [rows[index] for index in np.lexsort((obs_ids, scores)).tolist()]


class _Arrays:
    """The two arrays `rate_shape` reads from a piece."""

    def __init__(self, counts: np.ndarray, exposure_s: np.ndarray) -> None:
        self.counts, self.exposure_s = counts, exposure_s
