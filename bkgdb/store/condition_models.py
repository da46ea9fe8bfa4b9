"""The archive a condition model is fitted on, and the fitted models cached in table ``condition_models``.

The fit itself is pure numpy (`bkgdb.makers.condition_model`); this module finds the archive's
pieces, identifies the archive's state by one aggregate query and stores or reuses the fit.
A model is fitted on one binning's pieces and can move pieces of any geometry with the same
energy bins (`~bkgdb.makers.condition_model.ConditionModel.apply` checks them): e.g. fitted on
the 2D binning of an exclusion setting and applied to its 3D pieces.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, aliased

from bkgdb.errors import BkgdbError
from bkgdb.geometry import PieceGeometry
from bkgdb.makers.condition_fit import ConditionModelFitter, representative_subset
from bkgdb.makers.condition_model import MODEL_KIND, ConditionModel, RunConditions
from bkgdb.store.database import is_readonly_error
from bkgdb.store.flags import bad_obs_ids
from bkgdb.store.integrity import has_events, observation_second
from bkgdb.store.models import RUN_STATUS_OK, ConditionModelRow, PieceRow, Run
from bkgdb.store.pieces import row_to_piece

__all__ = ["archive_condition_model", "archive_digest", "CONDITION_MODEL_MAX_RUNS"]

log = logging.getLogger(__name__)

#: Default most runs a condition model is fitted on (`archive_condition_model`).
CONDITION_MODEL_MAX_RUNS = 300
#: SQLite binds at most 32766 values in one statement.
_ID_CHUNK = 30000
# Made once, as the selection's aliases (`bkgdb.store.integrity`): the archive's other copies of a run.
_OTHER_COPY, _OTHER_COPY_PIECE = aliased(Run, name="copies"), aliased(PieceRow, name="copy_pieces")


def _archive_query(binning_id: int, exclusion_id: int, settings: Any, instrument: str | None = None) -> sa.Select:
    """Pieces a condition model is fitted on: every good run with a zenith angle, a piece of this
    binning and exclusion setting with events, and the selection's fixed criteria (|b|, telescopes,
    the ``instrument`` when one is given: another instrument's background changes otherwise).

    As in a selection, runs flagged bad are left out, and an observation catalogued in several
    datastores counts once (the copy of the datastore indexed first): a copy would weigh its run
    twice in the fit.
    """
    other, other_piece = _OTHER_COPY, _OTHER_COPY_PIECE
    earlier_copy = (
        sa.select(other.id)
        .join(other_piece, other_piece.run_id == other.id)
        .where(
            other.obs_id == Run.obs_id,
            other.datastore_id < Run.datastore_id,
            observation_second(other) == observation_second(),
            other.status == RUN_STATUS_OK,
            other_piece.binning_id == binning_id,
            other_piece.exclusion_id == exclusion_id,
            has_events(other_piece),
        )
        .exists()
    )
    query = (
        sa.select(PieceRow.id, PieceRow.file_sha256, Run.zenith_deg, Run.az_deg, Run.muon_eff)
        .join(Run, Run.id == PieceRow.run_id)
        .where(
            PieceRow.binning_id == binning_id,
            PieceRow.exclusion_id == exclusion_id,
            Run.status == RUN_STATUS_OK,
            Run.zenith_deg.is_not(None),
            has_events(),
            Run.obs_id.not_in(bad_obs_ids()),
            sa.not_(earlier_copy),
        )
    )
    if settings.gal_lat_min:
        query = query.where(sa.or_(Run.glat_deg > settings.gal_lat_min, Run.glat_deg < -settings.gal_lat_min))
    if settings.n_tels is not None:
        query = query.where(Run.n_tels >= settings.n_tels)
    if instrument is not None:
        query = query.where(Run.instrument == instrument)
    return query.order_by(PieceRow.id)


def archive_digest(
    session: Session,
    binning_id: int,
    exclusion_id: int,
    settings: Any,
    max_runs: int | None,
    instrument: str | None = None,
) -> str:
    """SHA-256 identifying the archive a condition model is fitted on, from one aggregate query.

    Pieces are replaced (new id, new time) when their run is re-indexed, and runs get a new
    ``indexed_at``: the number of archive pieces, the sum and maximum of their ids and the newest
    piece and run times change whenever a run is added, removed, re-indexed, or flagged bad or
    good again (which takes it out of the archive or puts it back).
    """
    archive = (
        _archive_query(binning_id, exclusion_id, settings, instrument)
        .order_by(None)
        .with_only_columns(
            sa.func.count(PieceRow.id),
            sa.func.sum(PieceRow.id),
            sa.func.max(PieceRow.id),
            sa.func.max(PieceRow.created_at),
            sa.func.max(Run.indexed_at),
        )
    )
    values = session.execute(archive).one()
    text = ";".join(str(value) for value in values)
    # The instrument only when there is one: the digests of catalogues fitted before it was read stay.
    of = "" if instrument is None else f"instrument={instrument};"
    return hashlib.sha256(f"{MODEL_KIND};max_runs={max_runs};{of}{text}".encode()).hexdigest()


def _fit_bins(geometry: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """Energy edges of the fit binning, and its pixels' solid angles when it is 3D."""
    if isinstance(geometry, np.ndarray | list | tuple):
        return np.asarray(geometry, float), None  # energy edges alone: pieces of one spatial axis
    geometry = PieceGeometry.of(geometry)
    return geometry.energy_edges, geometry.solid_angle_sr if geometry.is_3d else None


def archive_condition_model(
    session: Session,
    binning_id: int,
    exclusion_id: int,
    geometry: Any,
    settings: Any,
    max_runs: int | None = CONDITION_MODEL_MAX_RUNS,
    memo: dict | None = None,
    instrument: str | None = None,
) -> tuple[ConditionModel, dict]:
    """The archive's `~bkgdb.makers.condition_model.ConditionModel`, from table ``condition_models`` or fitted.

    The archive is every piece of the binning and exclusion setting whose run passes the fixed
    selection criteria (``gal_lat_min``, ``n_tels``, ``instrument``). The model is fitted on all of it up to
    ``max_runs`` runs, else on a `~bkgdb.makers.condition_fit.representative_subset` of
    ``max_runs`` (the fit's cost grows faster than the number of runs). Its digest
    (`archive_digest`, one aggregate query) identifies a cached fit: a new, changed or removed run
    gives a new digest and a new fit, otherwise the stored parameters are reused. With a ``memo``
    dict (one per `~bkgdb.background.BackgroundBuilder`) the model is looked up once per builder.

    Parameters
    ----------
    session : `~sqlalchemy.orm.Session`
    binning_id, exclusion_id : int
        The binning and exclusion setting whose pieces the model is fitted on.
    geometry : `~bkgdb.geometry.PieceGeometry`
        That binning's geometry (a config binning, or for 2D its energy edges, are accepted). The
        model returned knows its energy edges and moves pieces of any geometry with the same.
    settings : `~bkgdb.config.SelectionSettings`
        ``gal_lat_min`` and ``n_tels``.
    max_runs : int, optional
        Most runs fitted on. Default is `CONDITION_MODEL_MAX_RUNS`.
    memo : dict, optional
        Models already found, by binning, setting and criteria.
    instrument : str, optional
        Fit on this instrument's runs only (the target's, with ``same_instrument``). Default is
        None: every instrument's.

    Returns
    -------
    model : `~bkgdb.makers.condition_model.ConditionModel`
    record : dict
        The stored parameters with ``kind``, ``archive_digest``, ``n_runs`` and ``cached``.
    """
    energy_edges, solid_angle = _fit_bins(geometry)
    key = (binning_id, exclusion_id, settings.gal_lat_min, settings.n_tels, max_runs, instrument)
    if memo is not None and key in memo:
        model, record = memo[key]
        return model, {**record, "cached": True}
    digest = archive_digest(session, binning_id, exclusion_id, settings, max_runs, instrument)
    cached = session.scalars(
        sa.select(ConditionModelRow).where(
            ConditionModelRow.binning_id == binning_id,
            ConditionModelRow.exclusion_id == exclusion_id,
            ConditionModelRow.kind == MODEL_KIND,
            ConditionModelRow.archive_digest == digest,
        )
    ).one_or_none()
    if cached is not None:
        params = dict(cached.params)
        found = (
            ConditionModel.from_params(params, energy_edges),
            {**params, "kind": MODEL_KIND, "archive_digest": digest, "n_runs": cached.n_runs, "cached": True},
        )
        if memo is not None:
            memo[key] = found
        return found
    rows = session.execute(_archive_query(binning_id, exclusion_id, settings, instrument)).all()
    if len(rows) < 3:
        raise BkgdbError(
            f"condition-aware assembly needs at least 3 archive runs with pieces, found {len(rows)}: "
            "index more runs or set background_selection.assembly: sum"
        )
    conditions = [RunConditions(row.zenith_deg, row.az_deg, row.muon_eff) for row in rows]
    chosen = representative_subset(conditions, max_runs)
    if len(chosen) < len(rows):
        log.info("condition model fitted on %d of the archive's %d runs", len(chosen), len(rows))
    rows, conditions = [rows[index] for index in chosen], [conditions[index] for index in chosen]
    ids = [row.id for row in rows]
    piece_rows: list[PieceRow] = []
    for start in range(0, len(ids), _ID_CHUNK):
        piece_rows += session.scalars(
            sa.select(PieceRow).where(PieceRow.id.in_(ids[start : start + _ID_CHUNK])).order_by(PieceRow.id)
        ).all()
    pieces = [row_to_piece(piece) for piece in piece_rows]
    counts = np.array([p.counts for p in pieces])
    if counts.shape[1] != len(energy_edges) - 1:
        raise BkgdbError(
            f"the pieces of binning {binning_id} have {counts.shape[1]} energy bins, the geometry "
            f"given {len(energy_edges) - 1}: give the geometry of the binning fitted on"
        )
    fit = ConditionModelFitter(
        counts, np.array([p.exposure_s for p in pieces]), energy_edges, conditions, solid_angle_sr=solid_angle
    ).run()
    params = fit.as_dict()
    # Stored at once in its own transaction, so every later build reuses it; a concurrent
    # builder storing the same fit first is fine.
    with Session(session.get_bind()) as store:
        try:
            store.add(
                ConditionModelRow(
                    binning_id=binning_id,
                    exclusion_id=exclusion_id,
                    kind=MODEL_KIND,
                    archive_digest=digest,
                    n_runs=len(rows),
                    params=params,
                )
            )
            store.commit()
        except IntegrityError:
            store.rollback()
        except DBAPIError as exc:  # a read-only catalogue: the fit serves this process only
            store.rollback()
            if not is_readonly_error(exc):
                raise
            log.debug("condition model not cached: the database is read-only")
    record = {**params, "kind": MODEL_KIND, "archive_digest": digest, "n_runs": len(rows), "cached": False}
    if memo is not None:
        memo[key] = (fit.model, record)
    return fit.model, record
