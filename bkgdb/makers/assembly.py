"""Summing pieces into a background rate, and turning it into gammapy objects."""

import hashlib
import logging
import math
from dataclasses import dataclass

import numpy as np

from bkgdb.errors import BkgdbError

#: Default most runs a condition model is fitted on (`archive_condition_model`).
CONDITION_MODEL_MAX_RUNS = 300

__all__ = [
    "AssembledBackground", "assemble_background", "fill_empty_bins", "bin_average_to_centre",
    "local_spectral_index", "RATE_UNIT", "ASSEMBLY_METHODS", "archive_condition_model", "archive_digest",
    "representative_subset", "CONDITION_MODEL_MAX_RUNS",
]

#: ``background_selection.assembly``: move pieces to the target's conditions first, or sum them.
ASSEMBLY_METHODS = ("condition", "sum")

log = logging.getLogger(__name__)

RATE_UNIT = "s-1 MeV-1 sr-1"


@dataclass
class AssembledBackground:
    """Summed counts and exposure of the selected pieces, and the rate they give.

    Attributes
    ----------
    binning : `~bkgdb.config.Binning`
    counts : `~numpy.ndarray`
        Summed kept counts per (energy, offset) bin.
    exposure_s : `~numpy.ndarray`
        Summed accepted exposure (ontime x kept fraction) per offset bin, in s.
    ontime_s : float
        Summed ontime of the runs.
    n_runs : int
    weights : `~numpy.ndarray`
        The factor each piece's counts were multiplied by, aligned with the pieces (all 1 for a
        plain sum; the rate factor of the condition model otherwise).
    condition_model : `~bkgdb.makers.condition_model.ConditionModel` or None
        The model that moved the pieces to the target's conditions; None for a plain sum.
    """

    binning: object
    counts: np.ndarray
    exposure_s: np.ndarray
    ontime_s: float
    n_runs: int
    weights: np.ndarray | None = None
    condition_model: object = None

    @property
    def solid_angle_sr(self):
        """Solid angle of each offset annulus on the sphere."""
        edges = np.radians(self.binning.offset_edges)
        return 2 * np.pi * (np.cos(edges[:-1]) - np.cos(edges[1:]))

    @property
    def energy_width_mev(self):
        return np.diff(self.binning.energy_edges) * 1e6

    @property
    def denominator(self):
        """Exposure x energy width x solid angle per bin, in s MeV sr."""
        return np.outer(self.energy_width_mev, self.exposure_s * self.solid_angle_sr)

    @property
    def rate(self):
        """Background rate per bin in s-1 MeV-1 sr-1; bins without counts or exposure are 0."""
        denominator = self.denominator
        rate = np.zeros(self.counts.shape)
        np.divide(self.counts, denominator, out=rate, where=(denominator > 0) & (self.counts > 0))
        return rate

    @property
    def rate_error(self):
        """Poisson error of the rate (from max(counts, 1), so empty bins get an upper scale)."""
        denominator = self.denominator
        error = np.zeros(self.counts.shape)
        np.divide(np.sqrt(np.maximum(self.counts, 1)), denominator, out=error, where=denominator > 0)
        return error

    def to_background2d(self, rate=None):
        """A `gammapy.irf.Background2D` of ``rate`` (default: the unsmoothed rate)."""
        from astropy import units as u
        from gammapy.irf import Background2D
        from gammapy.maps import MapAxis

        energy = MapAxis.from_energy_edges(self.binning.energy_edges * u.TeV, name="energy")
        offset = MapAxis.from_edges(self.binning.offset_edges * u.deg, name="offset")
        data = self.rate if rate is None else rate
        return Background2D(axes=[energy, offset], data=np.asarray(data, dtype=float), unit=RATE_UNIT)


def local_spectral_index(background):
    """Spectral index per energy bin, from the offset-summed rates of its neighbours (log-log).

    Where a neighbour has no counts the one-sided slope is used; where neither has, 0.
    """
    totals = background.counts.sum(axis=1)
    denominator = background.denominator.sum(axis=1)
    mean = np.zeros(len(totals))
    np.divide(totals, denominator, out=mean, where=(totals > 0) & (denominator > 0))
    edges = background.binning.energy_edges
    log_centre = 0.5 * np.log(edges[1:] * edges[:-1])
    index = np.zeros(len(totals))
    for i in range(len(totals)):
        around = [j for j in (i - 1, i, i + 1) if 0 <= j < len(totals) and mean[j] > 0]
        if mean[i] > 0 and len(around) >= 2:
            lo, hi = around[0], around[-1]
            index[i] = -(np.log(mean[hi]) - np.log(mean[lo])) / (log_centre[hi] - log_centre[lo])
    return index


def bin_average_to_centre(rate, background):
    """Turn bin-averaged rates into rates at the bins' log centres, as gammapy reads them.

    gammapy takes a background's values as the rate at each bin's (log) centre and integrates the
    log-log interpolation over the bin. A summed model holds bin averages, which for a falling
    spectrum of index g exceed the centre value: by 2.6 % for g = 2.7 and 4 bins per decade, so
    gammapy would predict that much too much. Each energy slice is scaled by
    ``E_c**-g * (E_hi - E_lo) * (1 - g) / (E_hi**(1 - g) - E_lo**(1 - g))``, with the local
    index g of `local_spectral_index`, which is exact for a power law.
    """
    edges = background.binning.energy_edges
    lo, hi = edges[:-1], edges[1:]
    centre = np.sqrt(lo * hi)
    index = np.clip(local_spectral_index(background), -10, 10)
    factor = np.ones(len(index))
    for i, g in enumerate(index):
        if abs(g - 1) < 1e-6:
            integral = centre[i] * np.log(hi[i] / lo[i])  # integral of (E / E_c)**-1
        else:
            integral = (hi[i] ** (1 - g) - lo[i] ** (1 - g)) / (1 - g) * centre[i] ** g
        factor[i] = (hi[i] - lo[i]) / integral
    return np.asarray(rate, float) * factor[:, np.newaxis]


def fill_empty_bins(rate, background):
    """Fill empty bins so that gammapy's log-scale interpolation of the model stays finite.

    gammapy interpolates background rates in log scale and extrapolates from the outermost bin
    centres to the axis edges. A zero beside a non-zero node there becomes a slope of hundreds of
    e-folds per bin and the model explodes (1e50 and more) at the FoV centre and edge. So empty
    bins of an energy slice that has counts get the slice's mean rate, and an empty slice next to
    a non-empty outermost slice gets that slice's rates. Slices without counts elsewhere stay zero:
    all-zero nodes interpolate to zero.
    """
    rate = np.array(rate, dtype=float)
    denominator = background.denominator
    for index in range(rate.shape[0]):
        counts = background.counts[index].sum()
        exposure = denominator[index].sum()
        empty = rate[index] <= 0
        if counts > 0 and exposure > 0 and empty.any():
            rate[index, empty] = counts / exposure
    if rate.shape[0] > 1:
        for outer, inner in ((0, 1), (-1, -2)):
            if rate[outer].any() and not rate[inner].any():
                rate[inner] = rate[outer]
    return rate


def assemble_background(pieces, binning, conditions=None, target_conditions=None, model=None):
    """Sum pieces of one binning into an `AssembledBackground`.

    Without a model the counts and exposures are summed exactly. With a
    `~bkgdb.makers.condition_model.ConditionModel`, each piece is first moved to the target's conditions:
    its counts are shifted in energy and multiplied by a rate factor ``w``; the exposure (per
    offset) is not touched, so the rate is ``sum(w * counts') / sum(exposure)``.

    Parameters
    ----------
    pieces : list of `~bkgdb.makers.piece.BackgroundPiece`
        The selected runs' pieces (same binning and exclusion setting).
    binning : `~bkgdb.config.Binning`
        Their binning.
    conditions : list of `~bkgdb.makers.condition_model.RunConditions`, optional
        Each piece's run conditions (needed with ``model``).
    target_conditions : `~bkgdb.makers.condition_model.RunConditions`, optional
        The target run's conditions (needed with ``model``).
    model : `~bkgdb.makers.condition_model.ConditionModel`, optional
        Default is None: plain summation.
    """
    if not pieces:
        raise BkgdbError("no pieces to assemble")
    for piece in pieces:
        if piece.counts.shape != binning.shape:
            raise BkgdbError(f"piece of shape {piece.counts.shape} does not fit binning {binning.shape}")
    exposure = np.zeros(binning.off_bins)
    for piece in pieces:
        exposure += piece.exposure_s
    ontime = float(sum(p.ontime_s for p in pieces))
    if model is None:
        counts = np.zeros(binning.shape, dtype=np.int64)
        for piece in pieces:
            counts += piece.counts
        return AssembledBackground(binning, counts, exposure, ontime, len(pieces), np.ones(len(pieces)))
    if conditions is None or target_conditions is None:
        raise BkgdbError("condition-aware assembly needs the conditions of every piece and of the target")
    if any(c.zenith_deg is None for c in conditions) or target_conditions.zenith_deg is None:
        raise BkgdbError("condition-aware assembly needs the zenith angle of every run and of the target")
    moved, weights = model.apply(np.array([p.counts for p in pieces]), binning.energy_edges, conditions,
                                 target_conditions)
    return AssembledBackground(binning, moved.sum(axis=0), exposure, ontime, len(pieces), weights, model)


def _archive_query(binning_id, exclusion_id, settings):
    """Pieces a condition model is fitted on: every good run with a zenith angle, a piece of this
    binning and exclusion setting, and the selection's fixed criteria (|b|, telescopes)."""
    import sqlalchemy as sa

    from bkgdb.store.models import RUN_STATUS_OK, PieceRow, Run

    query = (sa.select(PieceRow.id, PieceRow.file_sha256, Run.zenith_deg, Run.az_deg, Run.muon_eff)
             .join(Run, Run.id == PieceRow.run_id)
             .where(PieceRow.binning_id == binning_id, PieceRow.exclusion_id == exclusion_id,
                    Run.status == RUN_STATUS_OK, Run.zenith_deg.is_not(None)))
    if settings.gal_lat_min:
        query = query.where(sa.or_(Run.glat_deg > settings.gal_lat_min, Run.glat_deg < -settings.gal_lat_min))
    if settings.n_tels is not None:
        query = query.where(Run.n_tels >= settings.n_tels)
    return query.order_by(PieceRow.id)


def representative_subset(conditions, max_runs):
    """Indices (ascending) of at most ``max_runs`` runs spread over zenith, azimuth and efficiency.

    The runs are split into equally populated zenith bands, ordered within a band by the northward
    pointing component and the optical efficiency, and every k-th of that order is taken: each band
    gives the same share and, within it, the whole azimuth range. Deterministic (ties by position).
    All runs when there are at most ``max_runs``.
    """
    n_runs = len(conditions)
    if max_runs is None or n_runs <= max_runs:
        return np.arange(n_runs)
    from bkgdb.makers.condition_model import _north

    zenith = np.array([c.zenith_deg for c in conditions], dtype=float)
    muon = np.array([-1.0 if c.muon_eff is None else c.muon_eff for c in conditions], dtype=float)
    n_bands = max(1, int(round(math.sqrt(max_runs))))
    rank = np.empty(n_runs, dtype=np.int64)
    rank[np.lexsort((np.arange(n_runs), zenith))] = np.arange(n_runs)
    band = rank * n_bands // n_runs
    order = np.lexsort((np.arange(n_runs), muon, _north(conditions), band))
    return np.sort(order[np.round(np.linspace(0, n_runs - 1, max_runs)).astype(np.int64)])


def archive_digest(session, binning_id, exclusion_id, settings, max_runs):
    """SHA-256 identifying the archive a condition model is fitted on, from one aggregate query.

    Pieces are replaced (new id, new time) when their run is re-indexed, and runs get a new
    ``indexed_at``: the number of archive pieces, the sum and maximum of their ids and the newest
    piece and run times change whenever a run is added, removed or re-indexed.
    """
    import sqlalchemy as sa

    from bkgdb.makers.condition_model import MODEL_KIND
    from bkgdb.store.models import PieceRow, Run

    archive = _archive_query(binning_id, exclusion_id, settings).order_by(None).with_only_columns(
        sa.func.count(PieceRow.id), sa.func.sum(PieceRow.id), sa.func.max(PieceRow.id),
        sa.func.max(PieceRow.created_at), sa.func.max(Run.indexed_at))
    values = session.execute(archive).one()
    text = ";".join(str(value) for value in values)
    return hashlib.sha256(f"{MODEL_KIND};max_runs={max_runs};{text}".encode()).hexdigest()


def archive_condition_model(session, binning_id, exclusion_id, energy_edges, settings,
                            max_runs=CONDITION_MODEL_MAX_RUNS, memo=None):
    """The archive's `~bkgdb.makers.condition_model.ConditionModel`, from table ``condition_models`` or fitted.

    The archive is every piece of the binning and exclusion setting whose run passes the fixed
    selection criteria (``gal_lat_min``, ``n_tels``). The model is fitted on all of it up to
    ``max_runs`` runs, else on a `representative_subset` of ``max_runs`` (the fit's cost grows
    faster than the number of runs). Its digest (`archive_digest`, one aggregate query) identifies a
    cached fit: a new, changed or removed run gives a new digest and a new fit, otherwise the stored
    parameters are reused. With a ``memo`` dict (one per `~bkgdb.background.BackgroundBuilder`) the
    model is looked up once per builder.

    Returns
    -------
    model : `~bkgdb.makers.condition_model.ConditionModel`
    record : dict
        The stored parameters with ``kind``, ``archive_digest``, ``n_runs`` and ``cached``.
    """
    import sqlalchemy as sa
    from sqlalchemy.exc import IntegrityError
    from sqlalchemy.orm import Session

    from bkgdb.store.pieces import row_to_piece
    from bkgdb.makers.condition_model import MODEL_KIND, ConditionModel, ConditionModelFitter, RunConditions
    from bkgdb.store.models import ConditionModelRow, PieceRow

    key = (binning_id, exclusion_id, settings.gal_lat_min, settings.n_tels, max_runs)
    if memo is not None and key in memo:
        model, record = memo[key]
        return model, {**record, "cached": True}
    digest = archive_digest(session, binning_id, exclusion_id, settings, max_runs)
    cached = session.scalars(sa.select(ConditionModelRow).where(
        ConditionModelRow.binning_id == binning_id, ConditionModelRow.exclusion_id == exclusion_id,
        ConditionModelRow.kind == MODEL_KIND, ConditionModelRow.archive_digest == digest)).one_or_none()
    if cached is not None:
        params = dict(cached.params)
        found = ConditionModel.from_params(params), {**params, "kind": MODEL_KIND, "archive_digest": digest,
                                                     "n_runs": cached.n_runs, "cached": True}
        if memo is not None:
            memo[key] = found
        return found
    rows = session.execute(_archive_query(binning_id, exclusion_id, settings)).all()
    if len(rows) < 3:
        raise BkgdbError(f"condition-aware assembly needs at least 3 archive runs with pieces, found {len(rows)}: "
                         "index more runs or set background_selection.assembly: sum")
    conditions = [RunConditions(row.zenith_deg, row.az_deg, row.muon_eff) for row in rows]
    chosen = representative_subset(conditions, max_runs)
    if len(chosen) < len(rows):
        log.info("condition model fitted on %d of the archive's %d runs", len(chosen), len(rows))
    rows, conditions = [rows[index] for index in chosen], [conditions[index] for index in chosen]
    ids = [row.id for row in rows]
    pieces = []
    for start in range(0, len(ids), 30000):  # SQLite binds at most 32766 values
        pieces += session.scalars(sa.select(PieceRow).where(PieceRow.id.in_(ids[start:start + 30000]))
                                  .order_by(PieceRow.id)).all()
    pieces = [row_to_piece(piece) for piece in pieces]
    fit = ConditionModelFitter(np.array([p.counts for p in pieces]), np.array([p.exposure_s for p in pieces]),
                               energy_edges, conditions).run()
    params = fit.as_dict()
    # Stored at once in its own transaction, so every later build reuses it; a concurrent
    # builder storing the same fit first is fine.
    with Session(session.get_bind()) as store:
        try:
            store.add(ConditionModelRow(binning_id=binning_id, exclusion_id=exclusion_id, kind=MODEL_KIND,
                                        archive_digest=digest, n_runs=len(rows), params=params))
            store.commit()
        except IntegrityError:
            store.rollback()
    record = {**params, "kind": MODEL_KIND, "archive_digest": digest, "n_runs": len(rows), "cached": False}
    if memo is not None:
        memo[key] = (fit.model, record)
    return fit.model, record
