"""Per-run normalisation of a background model: scale it to the target run's own conditions.

A model summed from similar runs has their mean rate; one run may differ (atmosphere, trigger
threshold, broken pixels). Two ways to estimate that run's scale, both optional
(``background_selection.normalisation`` in the config):

- ``control-ring``: the target's own counts in an outer offset ring, with the exclusion regions
  already cut (its stored piece: counts and accepted exposure per offset bin), divided by what the
  model predicts there (rate x the piece's exposure x energy width x solid angle);
- ``monitor``: the ratio of a catalogue column of the target (a trigger rate, a transparency
  coefficient) to the ontime-weighted mean of that column over the runs that built the model.

Plain numpy: the builder (`bkgdb.background`) loads what these functions need.
"""

import logging
from dataclasses import dataclass

import numpy as np

from bkgdb.errors import BkgdbError

__all__ = ["Normalisation", "NormalisationError", "NORMALISATION_METHODS", "ring_bins", "control_ring_normalisation",
           "monitor_normalisation", "NO_NORMALISATION"]

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

    def as_dict(self):
        return {"method": self.method, "factor": self.factor, "error": self.error, "region": self.region}


NO_NORMALISATION = Normalisation()


def ring_bins(offset_edges, offset_min, offset_max):
    """Boolean mask of the offset bins lying wholly inside [offset_min, offset_max] (deg)."""
    edges = np.asarray(offset_edges, float)
    return (edges[:-1] >= offset_min - EDGE_TOLERANCE_DEG) & (edges[1:] <= offset_max + EDGE_TOLERANCE_DEG)


def control_ring_normalisation(rate, energy_edges_tev, offset_edges_deg, counts, exposure_s, offset_min,
                               offset_max, model_counts=None, energy_range_tev=None,
                               model_scatter=None) -> Normalisation:
    """Scale of a model from the target's own counts in an outer offset ring.

    Parameters
    ----------
    rate : `~numpy.ndarray`
        The model, s-1 MeV-1 sr-1 per (energy, offset) bin, as bin averages.
    energy_edges_tev, offset_edges_deg : `~numpy.ndarray`
        The binning.
    counts : `~numpy.ndarray`
        The target's kept counts per (energy, offset) bin (its own piece: exclusions applied).
    exposure_s : `~numpy.ndarray`
        The target's accepted exposure per offset bin (ontime x kept fraction), s.
    offset_min, offset_max : float
        The ring, deg; the offset bins wholly inside it are used.
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
    rate = np.asarray(rate, float)
    offset_edges = np.asarray(offset_edges_deg, float)
    ring = ring_bins(offset_edges, offset_min, offset_max)
    if not ring.any():
        raise NormalisationError(f"no offset bin lies within the control ring {offset_min:g}-{offset_max:g} deg")
    edges = np.radians(offset_edges)
    solid_angle = 2 * np.pi * (np.cos(edges[:-1]) - np.cos(edges[1:]))
    energy_width_mev = np.diff(np.asarray(energy_edges_tev, float)) * 1e6
    predicted_per_bin = rate * np.outer(energy_width_mev, np.asarray(exposure_s, float) * solid_angle)
    use = (rate > 0) & ring[np.newaxis, :]
    energy_edges = np.asarray(energy_edges_tev, float)
    if energy_range_tev is not None:
        low, high = energy_range_tev
        in_range = (energy_edges[:-1] >= low * (1 - 1e-9)) & (energy_edges[1:] <= high * (1 + 1e-9))
        if not in_range.any():
            raise NormalisationError(f"no energy bin lies within the control ring's {low:g}-{high:g} TeV")
        use &= in_range[:, np.newaxis]
    observed = float(np.asarray(counts)[use].sum())
    predicted = float(predicted_per_bin[use].sum())
    region = f"offset {offset_edges[:-1][ring].min():.2f}-{offset_edges[1:][ring].max():.2f} deg"
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
        weight_ring, weight_model = error ** -2, model_scatter ** -2
        factor = (weight_ring * factor + weight_model) / (weight_ring + weight_model)
        error = (weight_ring + weight_model) ** -0.5
        region += f", combined with model scatter {model_scatter:g}"
    return Normalisation("control-ring", float(factor), float(error), region)


def monitor_normalisation(target_value, values, ontimes_s, column) -> Normalisation:
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


def _as_float(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return np.nan
