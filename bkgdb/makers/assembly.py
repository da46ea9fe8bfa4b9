"""Summing pieces into a background rate on any `~bkgdb.geometry.PieceGeometry`, and turning it into gammapy objects.

Everything here works on arrays of ``geometry.shape``: energy first, then one offset axis (2D)
or the FoV lon and lat axes (3D). The SQL that finds the archive a condition model is fitted on
lives in `bkgdb.store.condition_models`.
"""

from __future__ import annotations

import functools
import logging
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
    "offset_rings",
    "energy_nodes_for_gammapy",
    "solve_energy_nodes",
    "loglog_bin_means",
    "EMPTY_ENERGY_NODE_FRACTION",
    "RATE_UNIT",
    "ASSEMBLY_METHODS",
]

log = logging.getLogger(__name__)

#: ``background_selection.assembly``: move pieces to the target's conditions first, or sum them.
ASSEMBLY_METHODS = ("condition", "sum")

RATE_UNIT = "s-1 MeV-1 sr-1"


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


#: An energy slice without counts (below the threshold, above the last counts) gets this fraction
#: of its neighbour toward the counted slices, per slice of distance. gammapy interpolates in log
#: scale: a 0 there would pull the lower half of the first counted bin to nothing. With 1e-3 the
#: empty slice predicts about 0.1 % of its neighbour's counts (a simulated turn-on: 0.23 counts
#: beside 323; 2.3 with 1e-2, 23 with 1e-1), which stays compatible with the 0 observed for
#: neighbours of up to about 2,000 counts, while the counted bin next to it integrates exactly.
EMPTY_ENERGY_NODE_FRACTION = 1e-3
#: A bin whose rate is below this fraction of its offset ring's mean is filled as if empty
#: (`fill_empty_bins`): for integer counts that takes a single count among rings of thousands, which
#: Poisson never gives; a smoothed rate never falls so steeply between neighbours. Where the ring is
#: that bin alone (2D), its slice's mean is the reference, and the bin must also hold less than this
#: many counts (a fraction of a count, as condition-aware assembly leaves).
NEAR_EMPTY_FRACTION = 1e-3
#: The most counts `fill_empty_bins` gives an offset ring that holds none in an energy slice: the
#: 95 % upper limit of a Poisson mean when 0 is observed. (1 count, the 68 % limit, also cut rings
#: that were empty by chance in sparse slices: rings of 2-3 expected counts got 0.9.)
EMPTY_RING_MAX_COUNTS = 3.0
#: What a value that would underflow becomes (after about 100 empty slices in a row): the smallest
#: normal float, which gammapy's log interpolation also puts for 0, but a model never holds 0 there.
SMALLEST_VALUE = float(np.finfo(float).tiny)


def _log_relative_expm1(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``log(expm1(z) / z)`` (0 at z = 0) and its derivative, without overflow for large ``|z|``."""
    z = np.asarray(z, float)
    small = np.abs(z) < 1e-6
    safe = np.where(small, 1.0, z)
    size = np.abs(safe)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        value = np.maximum(safe, 0.0) + np.log1p(-np.exp(-size)) - np.log(size)
        # d/dz: 1 / (1 - exp(-z)) - 1 / z, written for either sign without overflow.
        first = np.where(safe > 0, 1.0 / -np.expm1(-size), np.exp(-size) / np.expm1(-size))
        slope = first - 1.0 / safe
    return np.where(small, 0.5 * z, value), np.where(small, 0.5 + z / 12.0, slope)


@functools.lru_cache(maxsize=32)
def _loglog_grid(energy_edges: tuple[float, ...]) -> tuple[np.ndarray, ...]:
    """What `_loglog_means_and_slopes` needs of the energy axis, as columns (computed once per axis)."""
    log_edges = np.log(np.asarray(energy_edges, float))
    log_centres = 0.5 * (log_edges[:-1] + log_edges[1:])
    spacing = np.diff(log_centres)[:, np.newaxis]
    half_lo = (log_centres - log_edges[:-1])[:, np.newaxis]
    half_hi = (log_edges[1:] - log_centres)[:, np.newaxis]
    log_halves = np.log(np.concatenate([half_lo, half_hi], axis=0))
    width = np.log(np.diff(np.exp(log_edges)))[:, np.newaxis]
    below_spacing = np.concatenate([spacing[:1], spacing], axis=0)
    above_spacing = np.concatenate([spacing, spacing[-1:]], axis=0)
    return spacing, half_lo, half_hi, log_halves, log_centres[:, np.newaxis] - width, below_spacing, above_spacing


def _loglog_means_and_slopes(log_nodes: np.ndarray, energy_edges: np.ndarray) -> tuple[np.ndarray, ...]:
    """`loglog_bin_means` and its derivatives by the nodes below, at and above each bin."""
    spacing, half_lo, half_hi, log_halves, offset, below_spacing, above_spacing = _loglog_grid(
        tuple(np.asarray(energy_edges, float).tolist())
    )
    n = len(log_nodes)
    slopes = np.diff(log_nodes, axis=0) / spacing  # per segment between nodes
    lower = np.concatenate([slopes[:1], slopes], axis=0)
    upper = np.concatenate([slopes, slopes[-1:]], axis=0)
    # With u = log(E / E_i): E * value = E_i * node_i * exp((slope + 1) u), integrated over u.
    # The lower halves of the bins, then the upper ones, in one call.
    values, slopes_of = _log_relative_expm1(np.concatenate([-(lower + 1) * half_lo, (upper + 1) * half_hi], axis=0))
    parts = log_halves + values
    lower_part, upper_part = parts[:n], parts[n:]
    halves = np.logaddexp(lower_part, upper_part)
    log_mean = log_nodes + offset + halves
    # d log_mean / d slope of the lower and of the upper segment.
    by_lower = -np.exp(lower_part - halves) * half_lo * slopes_of[:n]
    by_upper = np.exp(upper_part - halves) * half_hi * slopes_of[n:]
    # Interior bins: lower slope (x_i - x_(i-1)) / d, upper slope (x_(i+1) - x_i) / d.
    by_below = -by_lower / below_spacing
    by_above = by_upper / above_spacing
    by_itself = 1.0 - by_below - by_above
    # The first and last bins follow one segment on both halves.
    both = by_lower + by_upper
    by_below[0], by_itself[0], by_above[0] = 0.0, 1.0 - both[0] / spacing[0], both[0] / spacing[0]
    by_below[-1], by_itself[-1], by_above[-1] = -both[-1] / spacing[-1], 1.0 + both[-1] / spacing[-1], 0.0
    return log_mean, by_below, by_itself, by_above


def loglog_bin_means(log_nodes: np.ndarray, energy_edges: np.ndarray) -> np.ndarray:
    """Log of the mean over each energy bin of gammapy's log-log interpolation of node values.

    gammapy places each node at its bin's log centre, interpolates ``log(value)`` linearly in
    ``log(E)`` between nodes, extrapolates the first and last segments to the axis edges and
    integrates that interpolant (exactly, for map bins much finer than the model's). So the
    lower half of bin ``i`` follows the power law between nodes ``i - 1`` and ``i`` (the first
    segment for the first bin) and its upper half the one between ``i`` and ``i + 1``.

    Parameters
    ----------
    log_nodes : `~numpy.ndarray`
        Natural log of the node values, energy first (n_energy, n_columns); n_energy >= 2.
        gammapy clips a 0 node to the smallest positive float before its log: pass that log.
    energy_edges : `~numpy.ndarray`
        The energy bin edges (any unit).

    Returns
    -------
    log_mean : `~numpy.ndarray`
        Log of the interpolant's integral over each bin divided by the bin's width, same shape.
    """
    return _loglog_means_and_slopes(log_nodes, energy_edges)[0]


def _solve_tridiagonal(below: np.ndarray, diagonal: np.ndarray, above: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Solve tridiagonal systems along axis 0, one per column, in one LAPACK call (``gtsv``).

    The columns are laid end to end as one system with no coupling between them: a loop over the
    energies in Python cost five times more for the systems of a build. Row ``i`` reads
    ``below[i] x[i - 1] + diagonal[i] x[i] + above[i] x[i + 1] = right[i]``.
    """
    from scipy.linalg import lapack

    n, m = diagonal.shape
    sub = below.T.copy()
    sub[:, 0] = 0.0  # a column's first row has no row below it
    sup = above.T.copy()
    sup[:, -1] = 0.0
    *_, solution, info = lapack.dgtsv(sub.ravel()[1:], diagonal.T.ravel(), sup.ravel()[:-1], right.T.ravel())
    if info != 0:  # singular: a step of NaN, which the damped Newton iteration rejects
        return np.full_like(right, np.nan)
    return solution.reshape(m, n).T


def _empty_energy_rows(populated: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weights of the lower and upper neighbour that each empty energy bin's log node follows.

    An empty bin takes ``EMPTY_ENERGY_NODE_FRACTION`` times the node of its neighbour toward the
    nearest counted bin (the geometric mean of both neighbours halfway between two counted bins),
    so its node is that fraction to the power of its distance times the counted bin's.
    ``populated`` is (n_energy, n_columns), each column with a counted bin; rows of counted bins
    get weights 0.
    """
    n = populated.shape[0]
    big = n + 1  # no counted bin on that side
    index = np.arange(n)[:, np.newaxis]
    nearest_below = np.maximum.accumulate(np.where(populated, index, -big), axis=0)
    nearest_above = np.minimum.accumulate(np.where(populated, index, 2 * big)[::-1], axis=0)[::-1]
    below = np.full(populated.shape, big)  # distance to the nearest counted bin below
    above = np.full(populated.shape, big)
    below[1:] = np.minimum(index[1:] - nearest_below[:-1], big)
    above[:-1] = np.minimum(nearest_above[1:] - index[:-1], big)
    empty = ~populated
    with_lower = empty & (below < above)
    with_upper = empty & (above < below)
    halfway = empty & (below == above) & (below < big)
    lower = np.where(with_lower, 1.0, 0.0) + np.where(halfway, 0.5, 0.0)
    upper = np.where(with_upper, 1.0, 0.0) + np.where(halfway, 0.5, 0.0)
    return lower, upper


def energy_nodes_for_gammapy(rate: np.ndarray, background: AssembledBackground) -> np.ndarray:
    """Node values whose gammapy energy integral over each bin gives back the bin's rate x width.

    ``rate`` holds bin averages (counts / exposure / width / solid angle). gammapy reads a
    background's values as nodes at the bins' log centres and integrates their log-log
    interpolation (`loglog_bin_means`); where the spectrum bends (the turn-on at the energy
    threshold) no power-law scale per bin makes that integral right. Each spatial bin's spectrum
    is solved for the nodes whose interpolant has each bin's mean (`solve_energy_nodes`), so
    gammapy's energy integral at each bin's centre gives its summed counts for map energy bins fine
    enough to follow the interpolant (``MapDatasetMaker(background_oversampling=...)``). Between
    the centres gammapy interpolates in space too: `~bkgdb.makers.fov_nodes.fov_nodes_for_gammapy`,
    applied before, sees to that.

    (Solving the spectrum of each offset ring and scaling its pixels alike was tried for 3D: it
    leaves the noise of single pixels to gammapy's log interpolation, whose mean of two nodes is
    below their average, and predicted 1-12 % too few counts above 1 TeV on DR1 for fine map bins.)

    Bins with rate 0 get ``EMPTY_ENERGY_NODE_FRACTION`` of their neighbour's node toward the
    counted bins; spatial bins without counts at any energy stay 0.
    """
    geometry = background.geometry
    rate = np.asarray(rate, float)
    if geometry.n_energy < 2:  # one energy node: gammapy takes it as constant over the bin
        return rate.copy()
    return solve_energy_nodes(rate.reshape(geometry.n_energy, -1), geometry.energy_edges).reshape(rate.shape)


def solve_energy_nodes(
    columns: np.ndarray, energy_edges: np.ndarray, tolerance: float = 1e-10, max_iterations: int = 60
) -> np.ndarray:
    """Node values whose gammapy energy integral over each bin is the bin's mean, per column.

    Newton's method on the log nodes (the Jacobian is tridiagonal) until every counted bin's
    `loglog_bin_means` matches its value to ``tolerance``. Bins of value 0 get
    ``EMPTY_ENERGY_NODE_FRACTION`` of their neighbour's node toward the counted bins
    (`_empty_energy_rows`); columns without a counted bin stay 0.

    Parameters
    ----------
    columns : `~numpy.ndarray`
        Bin-averaged values, (n_energy, n_columns), n_energy >= 2.
    energy_edges : `~numpy.ndarray`
    tolerance : float, optional
        Largest accepted ``|log(integral / content)|``. Default is 1e-10.
    max_iterations : int, optional
        Newton steps at most. Default is 60.
    """
    columns = np.asarray(columns, float)
    populated = columns > 0
    solved = populated.any(axis=0)
    nodes = np.zeros_like(columns)
    if not solved.any():
        return nodes
    edges = energy_edges
    target = np.log(np.where(populated, columns, 1.0))[:, solved]
    populated = populated[:, solved]
    lower, upper = _empty_energy_rows(populated)
    step_of_empty = np.log(EMPTY_ENERGY_NODE_FRACTION)

    def residual(log_nodes: np.ndarray) -> tuple[np.ndarray, ...]:
        """Mismatch of every row and its derivatives by the node below, itself and above."""
        shifted_down = np.concatenate([log_nodes[:1], log_nodes[:-1]], axis=0)  # node i - 1
        shifted_up = np.concatenate([log_nodes[1:], log_nodes[-1:]], axis=0)  # node i + 1
        empty_rows = log_nodes - lower * shifted_down - upper * shifted_up - step_of_empty
        log_mean, by_below, by_itself, by_above = _loglog_means_and_slopes(log_nodes, edges)
        return (
            np.where(populated, log_mean - target, empty_rows),
            np.where(populated, by_below, -lower),
            np.where(populated, by_itself, 1.0),
            np.where(populated, by_above, -upper),
        )

    # Start from the bin averages, empty bins a fraction below the smallest counted one.
    start = target.min(axis=0, where=populated, initial=np.inf) + step_of_empty
    log_nodes = np.where(populated, target, start[np.newaxis, :])
    current, *jacobian = residual(log_nodes)
    for _ in range(max_iterations):
        worst = np.abs(current).max(axis=0)
        if worst.max() < tolerance:
            break
        newton = _solve_tridiagonal(jacobian[0], jacobian[1], jacobian[2], current)
        # Damped: a column takes half steps until its largest residual no longer grows.
        scale = np.ones(log_nodes.shape[1])
        for _ in range(30):
            trial = log_nodes - scale * newton
            trial_current, *trial_jacobian = residual(trial)
            worse = ~(np.abs(trial_current).max(axis=0) <= worst)
            if not worse.any():
                break
            scale[worse] *= 0.5
        log_nodes, current, jacobian = trial, trial_current, trial_jacobian
    else:
        if np.abs(current).max() >= tolerance:  # the last step may have been the one that converged
            log.warning("energy nodes: largest log mismatch %.2g after %d steps", np.abs(current).max(), max_iterations)
    # Far from the counted bins the fractions underflow: the smallest normal float stands for them.
    nodes[:, solved] = np.maximum(np.exp(log_nodes), SMALLEST_VALUE)
    return nodes


def offset_rings(geometry: PieceGeometry) -> np.ndarray:
    """Index of the offset ring each spatial bin lies in, of the spatial shape.

    2D: each offset bin is its own ring. 3D: pixels by their centre's offset, in rings one pixel
    wide (the pixels that share an expected rate when the background is radial).
    """
    if not geometry.is_3d:
        return np.arange(geometry.spatial_shape[0])
    pixel_deg = float(np.degrees(np.sqrt(np.mean(geometry.solid_angle_sr))))
    return np.floor(geometry.spatial_offset_deg / pixel_deg).astype(int)


def _fraction_of(neighbour: np.ndarray) -> np.ndarray:
    """``EMPTY_ENERGY_NODE_FRACTION`` of a neighbouring slice's positive rates, at least `SMALLEST_VALUE`."""
    return np.where(neighbour > 0, np.maximum(EMPTY_ENERGY_NODE_FRACTION * neighbour, SMALLEST_VALUE), 0.0)


def fill_empty_bins(rate: np.ndarray, background: AssembledBackground) -> np.ndarray:
    """Give empty bins a positive rate without adding counts to any energy slice.

    A bin with exposure and no counts is a valid estimate of a low rate, but gammapy interpolates
    the model in log scale: a 0 pulls its neighbours' interpolation to nothing (a likelihood fit
    with a zero background breaks), and beside a non-zero outermost bin the extrapolation to the
    axis edge explodes (1e50 and more). So, per energy slice with counts:

    - empty bins get an estimate of the rate at their offset: the mean rate of their offset ring
      (`offset_rings`) in the slice where the ring has counts, else the slice's level on a radial
      profile fitted to the counts of the slice and its two neighbours in energy
      (`~bkgdb.makers.smoothing.reference_profile`, capped at its largest value on exposed bins);
    - then each ring with counts is scaled so that rate x exposure x width x solid angle summed
      over it is what it was, and the slice likewise (which takes the share of rings without
      counts from the others): the filled bins' share is taken from their neighbours, and every
      ring and slice predicts its counts. (Raising empty bins to the slice's mean instead adds
      about P(0) x mean per bin: +44 % at 0.6 expected counts per bin.)

    Bins without exposure (outside the FoV, excluded in every run) get the same estimate, where
    their ring has exposed pixels with counts, else the profile's: nothing was measured there,
    and gammapy interpolates between them and exposed bins.
    Energy slices without counts get ``EMPTY_ENERGY_NODE_FRACTION`` of the rate of their
    neighbour toward the counted slices, per slice of distance, so that a slice next to them is
    not interpolated to nothing; they then predict about that fraction of the neighbour's counts.
    """
    from bkgdb.makers.smoothing import reference_profile

    rate = np.array(rate, dtype=float)
    geometry = background.geometry
    n = geometry.n_energy
    slices = rate.reshape(n, -1)  # a view: filling it fills ``rate``
    denominator = background.denominator.reshape(n, -1)
    exposed = denominator > 0
    totals = np.where(exposed, slices * denominator, 0.0).sum(axis=1)
    counted = totals > 0
    if not counted.any():
        return rate
    rings = offset_rings(geometry).ravel()
    n_rings = int(rings.max()) + 1
    # Every slice's ring sums in one bincount: slice i's ring r is i * n_rings + r.
    slot = (rings + n_rings * np.arange(n)[:, np.newaxis]).ravel()
    ring_exposures = np.bincount(slot, denominator.ravel(), n * n_rings).reshape(n, n_rings)
    ring_rates = np.bincount(slot, np.where(exposed, slices * denominator, 0.0).ravel(), n * n_rings).reshape(
        n, n_rings
    ) / np.maximum(ring_exposures, np.finfo(float).tiny)
    # Next to a bin whose rate is a tiny fraction of its ring's (the condition model moves parts of
    # 1e-8 of a count into bins), gammapy's log extrapolation at the FoV edge explodes as beside a 0.
    # A ring of one bin (each ring of a 2D model) cannot judge it: its slice's mean rate does, for a
    # bin holding a fraction of a count only (a measured bin of a few counts at a steep FoV edge
    # lies far below the slice's mean: 3 counts in 1e5).
    counts = np.asarray(background.counts, float).reshape(n, -1)
    alone = np.bincount(rings, minlength=n_rings)[rings] == 1
    slice_rates = totals / np.maximum(ring_exposures.sum(axis=1), np.finfo(float).tiny)
    reference = np.where(alone, slice_rates[:, np.newaxis], ring_rates[:, rings])
    tiny = (slices < NEAR_EMPTY_FRACTION * reference) & (~alone | (counts < NEAR_EMPTY_FRACTION))
    empty = (slices <= 0) | (counted[:, np.newaxis] & tiny)
    if (empty & counted[:, np.newaxis]).any():
        offset = np.ravel(geometry.spatial_offset_deg)
        for index in np.flatnonzero(counted & empty.any(axis=1)).tolist():
            held = np.where(exposed[index] & ~empty[index], slices[index] * denominator[index], 0.0)
            ring_total = np.bincount(rings, held, n_rings)
            ring_exposure = ring_exposures[index]
            # Within a ring that has counts, its own mean rate (a profile cannot follow the
            # camera's edge: +50 % in the FoV corners at 0.6-2 TeV on DR1).
            ring_mean = np.divide(ring_total, ring_exposure, out=np.zeros(n_rings), where=ring_total > 0)
            estimate = ring_mean[rings]
            if (estimate[empty[index]] <= 0).any():
                # The radial shape of this slice and its neighbours, for rings without counts
                # (fitted only when there are such): the acceptance widens with energy, so the
                # profile of all energies would put the counts of a high-energy slice toward the
                # FoV centre (x2.4 there, x0.7 at the edge on DR1 at 9-35 TeV, 3D).
                around = slice(max(index - 1, 0), index + 2)
                profile = reference_profile(counts[around].sum(axis=0), denominator[around].sum(axis=0), offset)
                level = totals[index] / (profile * denominator[index])[exposed[index]].sum()
                cap = profile[exposed[index]].max()
                estimate = np.where(estimate > 0, estimate, level * np.minimum(profile, cap))
                # A ring that saw no count is given at most EMPTY_RING_MAX_COUNTS: the profile,
                # widened by the next slice's acceptance, put 22 counts into an empty ring beside
                # one of 7 at a steep FoV edge (CTA 1DC at 0.05 TeV, 4.5-5 deg), which 0 observed
                # rules out.
                unseen = ring_total[rings] <= 0
                expected = np.bincount(
                    rings, np.where(unseen & exposed[index], estimate * denominator[index], 0.0), n_rings
                )
                ring_cap = np.minimum(1.0, EMPTY_RING_MAX_COUNTS / np.maximum(expected, np.finfo(float).tiny))
                estimate = np.where(unseen, estimate * ring_cap[rings], estimate)
            slices[index, empty[index]] = estimate[empty[index]]
            # Each ring keeps its total, and the slice its total (rings without counts get theirs
            # from the others).
            after = np.bincount(rings, np.where(exposed[index], slices[index] * denominator[index], 0.0), n_rings)
            ring_scale = np.divide(ring_total, after, out=np.ones(n_rings), where=ring_total > 0)
            slices[index] *= ring_scale[rings]
            filled = np.where(exposed[index], slices[index] * denominator[index], 0.0).sum()
            slices[index] *= totals[index] / filled
    # Whole slices without counts: a fraction of the nearest counted slice, per slice of distance.
    lower, upper = _empty_energy_rows(np.broadcast_to(counted[:, np.newaxis], (n, 1)))
    for index in range(n):  # upward from below, and the slices above the counts
        if lower[index, 0] == 1.0:
            slices[index] = _fraction_of(slices[index - 1])
    for index in range(n - 1, -1, -1):
        if upper[index, 0] == 1.0:
            slices[index] = _fraction_of(slices[index + 1])
    for index in range(n):
        if lower[index, 0] == 0.5:
            slices[index] = _fraction_of(np.sqrt(slices[index - 1] * slices[index + 1]))
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
