"""Per-run normalisation of a background model: scale it to the target run's own conditions.

A model summed from similar runs has their mean rate; one run may differ (atmosphere, trigger
threshold, broken pixels). Two ways to estimate that run's scale, both optional
(``background_selection.normalisation`` in the config):

- ``control-ring``: the target's own counts in an outer offset ring, with the exclusion regions
  already cut (its stored piece: counts and accepted exposure per offset ring or FoV pixel), divided
  by what the model predicts there (rate x the piece's exposure x energy width x solid angle);
- ``monitor``: the ratio of a catalogue column of the target (a trigger rate, a transparency
  coefficient) to the ontime-weighted mean of that column over the runs that built the model.

Plain numpy: the builder (`bkgdb.background`) loads what these functions need.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from bkgdb.errors import BkgdbError
from bkgdb.geometry import PieceGeometry

__all__ = [
    "Normalisation",
    "NormalisationError",
    "NORMALISATION_METHODS",
    "ring_bins",
    "ring_mask",
    "control_ring_normalisation",
    "monitor_normalisation",
    "NO_NORMALISATION",
]

log = logging.getLogger(__name__)

NORMALISATION_METHODS = ("none", "control-ring", "monitor")
#: Bin edges closer than this (deg) to a ring edge count as on it.
EDGE_TOLERANCE_DEG = 1e-6


class NormalisationError(BkgdbError):
    """A per-run normalisation cannot be computed for this run (no counts in the ring, no column value)."""


@dataclass(frozen=True)
class Normalisation:
    """The factor a model was multiplied by, its error and where it came from.

    ``region`` says what it was measured on, e.g. ``offset 2.00-2.50 deg`` or ``column TRIGRATE``.
    """

    method: str = "none"
    factor: float = 1.0
    error: float = 0.0
    region: str = ""

    def as_dict(self) -> dict:
        return {"method": self.method, "factor": self.factor, "error": self.error, "region": self.region}


NO_NORMALISATION = Normalisation()


def ring_bins(offset_edges: np.ndarray, offset_min: float, offset_max: float) -> np.ndarray:
    """Boolean mask of the offset bins lying wholly inside [offset_min, offset_max] (deg)."""
    edges = np.asarray(offset_edges, float)
    return (edges[:-1] >= offset_min - EDGE_TOLERANCE_DEG) & (edges[1:] <= offset_max + EDGE_TOLERANCE_DEG)


def ring_mask(geometry: PieceGeometry, offset_min: float, offset_max: float) -> np.ndarray:
    """Boolean mask of the spatial bins of the control ring [offset_min, offset_max] (deg).

    2D: the offset bins lying wholly inside (`ring_bins`). 3D: the FoV pixels whose centre's
    angular distance from the FoV centre (``geometry.spatial_offset_deg``) lies inside; square
    pixels cannot tile a ring, and centres give a ring of the right mean offset and area.
    """
    if not geometry.is_3d:
        return ring_bins(np.asarray(geometry.offset_edges, float), offset_min, offset_max)
    offset = geometry.spatial_offset_deg
    return (offset >= offset_min - EDGE_TOLERANCE_DEG) & (offset <= offset_max + EDGE_TOLERANCE_DEG)


def _ring_region(geometry: PieceGeometry, ring: np.ndarray) -> str:
    if not geometry.is_3d:
        edges = np.asarray(geometry.offset_edges, float)
        return f"offset {edges[:-1][ring].min():.2f}-{edges[1:][ring].max():.2f} deg"
    offset = geometry.spatial_offset_deg[ring]
    return f"offset {offset.min():.2f}-{offset.max():.2f} deg ({int(ring.sum())} pixel centres)"


def control_ring_normalisation(
    rate: np.ndarray,
    geometry: Any,
    counts: np.ndarray,
    exposure_s: np.ndarray,
    offset_min: float,
    offset_max: float,
    model_counts: np.ndarray | None = None,
    energy_range_tev: tuple[float, float] | None = None,
    model_scatter: float | None = None,
) -> Normalisation:
    """Scale of a model from the target's own counts in an outer offset ring.

    Parameters
    ----------
    rate : `~numpy.ndarray`
        The model, s-1 MeV-1 sr-1 per bin of ``geometry.shape``, as bin averages.
    geometry : `~bkgdb.geometry.PieceGeometry`
        The bins (2D offset rings or 3D FoV pixels; a config binning is accepted).
    counts : `~numpy.ndarray`
        The target's kept counts per bin (its own piece: exclusions applied).
    exposure_s : `~numpy.ndarray`
        The target's accepted exposure per spatial bin (ontime x kept fraction), s.
    offset_min, offset_max : float
        The ring, deg: the bins of `ring_mask` are used.
    model_counts : `~numpy.ndarray`, optional
        Counts the model was summed from, for its share of the error. Default is None (ignored).
    energy_range_tev : tuple, optional
        Only the energy bins wholly inside (e_min, e_max), TeV. Default is None: every bin.
    model_scatter : float, optional
        The un-normalised model's run-to-run scatter (the std of the norms `bkgdb validate`
        measures). Given, the ring's factor is combined with the model's own "factor 1" by inverse
        variance, so a ring with few counts moves the model less than a ring with many. Default is
        None: the ring's factor as it is.

    Returns
    -------
    normalisation : `Normalisation`
        ``factor`` = counts / predicted counts in the ring (energy bins where the model is
        positive), ``error`` from Poisson statistics of both; with ``model_scatter``, their
        inverse-variance combination with 1 +- ``model_scatter``.

    Raises
    ------
    NormalisationError
        No bin in the ring, or nothing counted or predicted there.
    """
    geometry = PieceGeometry.of(geometry)
    rate = np.asarray(rate, float)
    ring = ring_mask(geometry, offset_min, offset_max)
    if not ring.any():
        raise NormalisationError(
            f"no {'pixel centre' if geometry.is_3d else 'offset bin'} lies within the "
            f"control ring {offset_min:g}-{offset_max:g} deg"
        )
    predicted_per_bin = rate * geometry.denominator(exposure_s)
    use = (rate > 0) & ring[np.newaxis]
    energy_edges = geometry.energy_edges
    if energy_range_tev is not None:
        low, high = energy_range_tev
        in_range = (energy_edges[:-1] >= low * (1 - 1e-9)) & (energy_edges[1:] <= high * (1 + 1e-9))
        if not in_range.any():
            raise NormalisationError(f"no energy bin lies within the control ring's {low:g}-{high:g} TeV")
        use &= in_range.reshape((-1,) + (1,) * len(geometry.spatial_shape))
    observed = float(np.asarray(counts)[use].sum())
    predicted = float(predicted_per_bin[use].sum())
    region = _ring_region(geometry, ring)
    if energy_range_tev is not None:
        region += f", {energy_edges[:-1][in_range].min():.3g}-{energy_edges[1:][in_range].max():.3g} TeV"
    if observed <= 0 or predicted <= 0:
        raise NormalisationError(f"control ring {region}: {observed:g} counts observed, {predicted:.3g} predicted")
    factor = observed / predicted
    relative = 1.0 / observed
    if model_counts is not None:
        in_model = float(np.asarray(model_counts)[use].sum())
        relative += 1.0 / in_model if in_model > 0 else 0.0
    error = factor * np.sqrt(relative)
    if model_scatter is not None:
        # A noisy ring alone would replace the model's scatter with its own Poisson noise.
        weight_ring, weight_model = error**-2, model_scatter**-2
        factor = (weight_ring * factor + weight_model) / (weight_ring + weight_model)
        error = (weight_ring + weight_model) ** -0.5
        region += f", combined with model scatter {model_scatter:g}"
    return Normalisation("control-ring", float(factor), float(error), region)


def monitor_normalisation(target_value: Any, values: Any, ontimes_s: Any, column: str) -> Normalisation:
    """Scale of a model from a monitoring column: target's value / ontime-weighted mean of the runs used.

    Parameters
    ----------
    target_value : float
        The target run's value of ``column``.
    values, ontimes_s : sequence of float
        The values and ontimes of the runs the model was built from; runs without a value are
        left out of the mean.
    column : str
        Its name, for messages and the record.

    Raises
    ------
    NormalisationError
        The target has no finite value, or no run used has one, or the mean is not positive.
    """
    try:
        target_value = float(target_value)
    except (TypeError, ValueError):
        if isinstance(target_value, str):  # a text column (object name, telescope list...) or "n/a"
            raise NormalisationError(
                f"monitor normalisation: the target's value of column {column!r} is not a number "
                f"({target_value[:40]!r}): it needs a numeric column"
            ) from None
        target_value = np.nan
    if not np.isfinite(target_value):
        raise NormalisationError(f"monitor normalisation: the target has no value of column {column!r}")
    values = np.array([np.nan if value is None else _as_float(value) for value in values], float)
    ontimes = np.asarray(ontimes_s, float)
    use = np.isfinite(values) & np.isfinite(ontimes) & (ontimes > 0)
    if not use.any():
        raise NormalisationError(f"monitor normalisation: no run used has a value of column {column!r}")
    mean = float(np.sum(values[use] * ontimes[use]) / ontimes[use].sum())
    if mean <= 0:
        raise NormalisationError(f"monitor normalisation: the mean of column {column!r} is {mean:g}, not positive")
    return Normalisation("monitor", target_value / mean, 0.0, f"column {column}")


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return np.nan
