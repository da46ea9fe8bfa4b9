"""Summing pieces into a background rate on any `~bkgdb.geometry.PieceGeometry`, and turning it into gammapy objects.

Everything here works on arrays of ``geometry.shape``: energy first, then one offset axis (2D)
or the FoV lon and lat axes (3D). The SQL that finds the archive a condition model is fitted on
lives in `bkgdb.store.condition_models`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bkgdb.errors import BkgdbError
from bkgdb.geometry import PieceGeometry

__all__ = [
    "AssembledBackground",
    "assemble_background",
    "assemble_stacked",
    "fill_empty_bins",
    "bin_average_to_centre",
    "local_spectral_index",
    "RATE_UNIT",
    "ASSEMBLY_METHODS",
]

#: ``background_selection.assembly``: move pieces to the target's conditions first, or sum them.
ASSEMBLY_METHODS = ("condition", "sum")

RATE_UNIT = "s-1 MeV-1 sr-1"


def _per_energy(values: np.ndarray, geometry: PieceGeometry) -> np.ndarray:
    """``values`` (one per energy bin) shaped to broadcast over arrays of ``geometry.shape``."""
    return np.asarray(values).reshape((-1,) + (1,) * len(geometry.spatial_shape))


@dataclass
class AssembledBackground:
    """Summed counts and exposure of the selected pieces, and the rate they give.

    Attributes
    ----------
    geometry : `~bkgdb.geometry.PieceGeometry`
        The bins (a config binning is accepted and replaced by its geometry).
    counts : `~numpy.ndarray`
        Summed kept counts, of ``geometry.shape``.
    exposure_s : `~numpy.ndarray`
        Summed accepted exposure (ontime x kept fraction) per spatial bin in s, of
        ``geometry.spatial_shape``.
    ontime_s : float
        Summed ontime of the runs.
    n_runs : int
    weights : `~numpy.ndarray`
        The factor each piece's counts were multiplied by, aligned with the pieces (all 1 for a
        plain sum; the rate factor of the condition model otherwise).
    condition_model : `~bkgdb.makers.condition_model.ConditionModel` or None
        The model that moved the pieces to the target's conditions; None for a plain sum.
    """

    geometry: PieceGeometry
    counts: np.ndarray
    exposure_s: np.ndarray
    ontime_s: float
    n_runs: int
    weights: np.ndarray | None = None
    condition_model: Any = None

    def __post_init__(self) -> None:
        self.geometry = PieceGeometry.of(self.geometry)
        self.counts = np.asarray(self.counts)
        self.exposure_s = np.asarray(self.exposure_s, float)
        if self.counts.shape != self.geometry.shape or self.exposure_s.shape != self.geometry.spatial_shape:
            raise BkgdbError(
                f"counts {self.counts.shape} and exposure {self.exposure_s.shape} do not fit the "
                f"geometry's {self.geometry.shape} and {self.geometry.spatial_shape}"
            )

    @property
    def solid_angle_sr(self) -> np.ndarray:
        """Solid angle of each spatial bin on the sphere."""
        return self.geometry.solid_angle_sr

    @property
    def energy_width_mev(self) -> np.ndarray:
        return self.geometry.energy_width_mev

    @property
    def denominator(self) -> np.ndarray:
        """Exposure x energy width x solid angle per bin, in s MeV sr."""
        return self.geometry.denominator(self.exposure_s)

    @property
    def rate(self) -> np.ndarray:
        """Background rate per bin in s-1 MeV-1 sr-1; bins without counts or exposure are 0."""
        denominator = self.denominator
        rate = np.zeros(self.counts.shape)
        np.divide(self.counts, denominator, out=rate, where=(denominator > 0) & (self.counts > 0))
        return rate

    def to_irf(self, rate: np.ndarray | None = None) -> Any:
        """A gammapy ``Background2D`` or ``Background3D`` of ``rate`` (default: the unsmoothed rate)."""
        return self.geometry.to_irf(self.rate if rate is None else rate)


def _energy_totals(background: AssembledBackground) -> tuple[np.ndarray, np.ndarray]:
    """Counts and denominator of each energy slice, summed over the spatial bins."""
    n_energy = background.geometry.n_energy
    return (
        background.counts.reshape(n_energy, -1).sum(axis=1),
        background.denominator.reshape(n_energy, -1).sum(axis=1),
    )


def local_spectral_index(background: AssembledBackground) -> np.ndarray:
    """Spectral index per energy bin, from the spatially summed rates of its neighbours (log-log).

    Where a neighbour has no counts the one-sided slope is used; where neither has, 0.
    """
    totals, denominator = _energy_totals(background)
    mean = np.zeros(len(totals))
    np.divide(totals, denominator, out=mean, where=(totals > 0) & (denominator > 0))
    log_centre = np.log(background.geometry.energy_centres)
    index = np.zeros(len(totals))
    for i in range(len(totals)):
        around = [j for j in (i - 1, i, i + 1) if 0 <= j < len(totals) and mean[j] > 0]
        if mean[i] > 0 and len(around) >= 2:
            lo, hi = around[0], around[-1]
            index[i] = -(np.log(mean[hi]) - np.log(mean[lo])) / (log_centre[hi] - log_centre[lo])
    return index


def bin_average_to_centre(rate: np.ndarray, background: AssembledBackground) -> np.ndarray:
    """Turn bin-averaged rates into rates at the bins' log centres, as gammapy reads them.

    gammapy takes a background's values as the rate at each bin's (log) centre and integrates the
    log-log interpolation over the bin. A summed model holds bin averages, which for a falling
    spectrum of index g exceed the centre value: by 2.6 % for g = 2.7 and 4 bins per decade, so
    gammapy would predict that much too much. Each energy slice is scaled by
    ``E_c**-g * (E_hi - E_lo) * (1 - g) / (E_hi**(1 - g) - E_lo**(1 - g))``, with the local
    index g of `local_spectral_index`, which is exact for a power law.
    """
    geometry = background.geometry
    edges, centres = geometry.energy_edges.tolist(), geometry.energy_centres.tolist()
    index = np.clip(local_spectral_index(background), -10, 10).tolist()
    factor = []
    # In Python floats, a bin at a time: the same operations (C's pow) as on numpy's scalars, a
    # tenth of the time.
    for lo, hi, centre, g in zip(edges[:-1], edges[1:], centres, index, strict=True):
        if abs(g - 1) < 1e-6:
            integral = centre * float(np.log(hi / lo))  # integral of (E / E_c)**-1
        else:
            integral = (hi ** (1 - g) - lo ** (1 - g)) / (1 - g) * centre**g
        factor.append((hi - lo) / integral)
    return np.asarray(rate, float) * _per_energy(np.array(factor), geometry)


def fill_empty_bins(rate: np.ndarray, background: AssembledBackground) -> np.ndarray:
    """Fill empty bins so that gammapy's log-scale interpolation of the model stays finite.

    gammapy interpolates background rates in log scale and extrapolates from the outermost bin
    centres to the axis edges. A zero beside a non-zero node there becomes a slope of hundreds of
    e-folds per bin and the model explodes (1e50 and more) at the FoV centre and edge. So empty
    bins of an energy slice that has counts get the slice's mean rate, and an empty slice next to
    a non-empty outermost slice gets that slice's rates. Slices without counts elsewhere stay zero:
    all-zero nodes interpolate to zero.
    """
    rate = np.array(rate, dtype=float)
    totals, denominator = _energy_totals(background)
    counted = (totals > 0) & (denominator > 0)
    mean = np.zeros(len(totals))
    np.divide(totals, denominator, out=mean, where=counted)
    slices = rate.reshape(len(totals), -1)  # a view: filling it fills ``rate``
    empty = (slices <= 0) & counted[:, np.newaxis]
    slices[empty] = np.broadcast_to(mean[:, np.newaxis], slices.shape)[empty]
    if rate.shape[0] > 1:
        for outer, inner in ((0, 1), (-1, -2)):
            if rate[outer].any() and not rate[inner].any():
                rate[inner] = rate[outer]
    return rate


def assemble_background(
    pieces: list, geometry: Any, conditions: list | None = None, target_conditions: Any = None, model: Any = None
) -> AssembledBackground:
    """Sum pieces of one geometry into an `AssembledBackground`.

    Without a model the counts and exposures are summed exactly. With a
    `~bkgdb.makers.condition_model.ConditionModel`, each piece is first moved to the target's conditions:
    its counts are shifted in energy and multiplied by a rate factor ``w``; the exposure (per
    spatial bin) is not touched, so the rate is ``sum(w * counts') / sum(exposure)``. The model
    may have been fitted on another geometry with the same energy bins (e.g. the 2D binning of
    the same exclusion setting, applied to 3D pieces).

    Parameters
    ----------
    pieces : list of `~bkgdb.makers.piece.BackgroundPiece`
        The selected runs' pieces (same geometry and exclusion setting).
    geometry : `~bkgdb.geometry.PieceGeometry`
        Their geometry; a config binning is accepted (its ``geometry``, or its 2D edges).
    conditions : list of `~bkgdb.makers.condition_model.RunConditions`, optional
        Each piece's run conditions (needed with ``model``).
    target_conditions : `~bkgdb.makers.condition_model.RunConditions`, optional
        The target run's conditions (needed with ``model``).
    model : `~bkgdb.makers.condition_model.ConditionModel`, optional
        Default is None: plain summation.
    """
    geometry = PieceGeometry.of(geometry)
    if not pieces:
        raise BkgdbError("no pieces to assemble")
    for piece in pieces:
        if piece.counts.shape != geometry.shape:
            raise BkgdbError(f"piece of shape {piece.counts.shape} does not fit the geometry's {geometry.shape}")
    return assemble_stacked(
        np.array([p.counts for p in pieces]),
        np.array([p.exposure_s for p in pieces]),
        [p.ontime_s for p in pieces],
        geometry,
        conditions,
        target_conditions,
        model,
    )


def assemble_stacked(
    counts: np.ndarray,
    exposure_s: np.ndarray,
    ontimes_s: list,
    geometry: Any,
    conditions: list | None = None,
    target_conditions: Any = None,
    model: Any = None,
) -> AssembledBackground:
    """`assemble_background` of pieces given as stacked arrays: counts (n, *shape), exposure (n, *spatial).

    The counts may be of any integer dtype (as stored): they are summed, or moved, as int64.

    What a build reads from the catalogue comes stacked (`~bkgdb.store.pieces.stacked_array`):
    no per-piece objects are made to be summed.
    """
    geometry = PieceGeometry.of(geometry)
    if not len(counts):
        raise BkgdbError("no pieces to assemble")
    if counts.shape[1:] != geometry.shape:
        raise BkgdbError(f"piece of shape {counts.shape[1:]} does not fit the geometry's {geometry.shape}")
    # Added one piece after the other, so that the float sum is the same to the last bit whatever
    # the number of pieces: an accumulation is sequential where a sum is pairwise.
    exposure = np.add.accumulate(np.asarray(exposure_s, dtype=np.float64), axis=0)[-1]
    ontime = float(sum(ontimes_s))
    n = len(counts)
    if model is None:
        # Integers: the stacked sum is exact, whatever its order.
        return AssembledBackground(geometry, counts.sum(axis=0, dtype=np.int64), exposure, ontime, n, np.ones(n))
    if conditions is None or target_conditions is None:
        raise BkgdbError("condition-aware assembly needs the conditions of every piece and of the target")
    if any(c.zenith_deg is None for c in conditions) or target_conditions.zenith_deg is None:
        raise BkgdbError("condition-aware assembly needs the zenith angle of every run and of the target")
    moved, weights = model.apply(counts.astype(np.int64), geometry.energy_edges, conditions, target_conditions)
    return AssembledBackground(geometry, moved.sum(axis=0), exposure, ontime, n, weights, model)
