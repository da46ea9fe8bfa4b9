"""How a run's background changes with its observing conditions, fitted on the cached pieces.

A run observed at larger zenith angle (or with lower optical efficiency) sees the same cosmic-ray
background with a higher energy threshold and a different rate. `ConditionModel` moves a piece
taken under one set of conditions to a target's conditions:

- **energy**: the piece's counts are moved in energy by the factor
  ``(cos z_run / cos z_target)**energy_zenith * (muon_eff_run / muon_eff_target)**energy_muon
  * exp(energy_azimuth * (N_run - N_target))`` (re-binned in log-energy, see `shift_energy`);
  the exposure (per offset ring or FoV pixel) does not move;
- **rate**: the moved counts are multiplied by
  ``w = (cos z_target / cos z_run)**rate_zenith * exp(rate_azimuth * (N_target - N_run))``,

with ``N = sin z cos az`` the pointing's northward component (azimuth wraps at 360 deg by
itself). The summed background is then ``sum(w * counts') / sum(exposure)``.
`~bkgdb.makers.condition_fit.ConditionModelFitter` finds the five numbers on the archive's
pieces. Pure numpy/scipy; no event files.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bkgdb.errors import BkgdbError

__all__ = [
    "RunConditions",
    "ConditionModel",
    "shift_energy",
    "MODEL_KIND",
]

log = logging.getLogger(__name__)

#: Value of ``condition_models.kind`` for this model's form (change it when the form changes).
MODEL_KIND = "shift-scale-v1"


@dataclass(frozen=True)
class RunConditions:
    """Observing conditions of one run: zenith and azimuth (deg), optical efficiency (None if unknown)."""

    zenith_deg: float
    az_deg: float | None = None
    muon_eff: float | None = None


def _cos_zenith(conditions: Sequence[RunConditions]) -> np.ndarray:
    return np.cos(np.radians(np.array([c.zenith_deg for c in conditions], dtype=float)))


def _north(conditions: Sequence[RunConditions]) -> np.ndarray:
    """Northward component of the pointing direction, sin(z) cos(az): azimuth matters less near the
    zenith (the geomagnetic field's angle to the showers changes less). cos wraps at 360 deg by
    itself; an unknown azimuth counts as 0."""
    values = np.array([np.nan if c.az_deg is None else c.az_deg for c in conditions], dtype=float)
    cos_az = np.where(np.isfinite(values), np.cos(np.radians(values)), 0.0)
    return cos_az * np.sin(np.radians(np.array([c.zenith_deg for c in conditions], dtype=float)))


def _log_muon(conditions: Sequence[RunConditions]) -> np.ndarray:
    values = np.array([np.nan if c.muon_eff is None else c.muon_eff for c in conditions], dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(np.isfinite(values) & (values > 0), np.log(values), np.nan)


def shift_energy(counts: np.ndarray, energy_edges: np.ndarray, log_factor: float | np.ndarray) -> np.ndarray:
    """Counts of events whose energies are all multiplied by ``exp(log_factor)``, in the same bins.

    The number of events above each bin edge is interpolated between edges as a power law (exact
    for a power-law spectrum), or linearly where it reaches zero. Events moved beyond the last edge
    are lost; none come in from below the first edge (nothing is known there).

    Parameters
    ----------
    counts : `~numpy.ndarray`
        Shape (..., n_energy, n_spatial): e.g. one 2D piece, or a stack of pieces (3D pieces
        with their pixels flattened into one axis).
    energy_edges : `~numpy.ndarray`
        The n_energy + 1 energy edges (any unit).
    log_factor : float or `~numpy.ndarray`
        Natural log of the energy factor; shape broadcastable to ``counts.shape[:-2]``.

    Returns
    -------
    shifted : `~numpy.ndarray`
        Same shape as ``counts``, float.
    """
    counts = np.asarray(counts, dtype=float)
    log_edges = np.log(np.asarray(energy_edges, dtype=float))
    n_energy = len(log_edges) - 1
    # Events above each edge: shape (..., n_energy + 1, n_offset).
    above = np.concatenate(
        [np.cumsum(counts[..., ::-1, :], axis=-2)[..., ::-1, :], np.zeros(counts.shape[:-2] + (1, counts.shape[-1]))],
        axis=-2,
    )
    log_factor = np.broadcast_to(np.asarray(log_factor, dtype=float), counts.shape[:-2])
    # Above edge e after the shift = above e / factor before it.
    query = log_edges[np.newaxis, :] - log_factor.reshape(-1, 1)  # (runs, edges)
    index = np.clip(np.searchsorted(log_edges, query, side="right") - 1, 0, n_energy - 1)
    fraction = (query - log_edges[index]) / (log_edges[index + 1] - log_edges[index])
    flat = above.reshape((-1,) + above.shape[-2:])
    runs = np.arange(flat.shape[0])[:, np.newaxis]
    low, high = flat[runs, index], flat[runs, index + 1]  # (runs, edges, offsets)
    t = np.clip(fraction, 0.0, 1.0)[..., np.newaxis]
    with np.errstate(divide="ignore", invalid="ignore"):
        power_law = low * np.exp(t * np.log(high / low))
    value = np.where((low > 0) & (high > 0), power_law, low + t * (high - low))
    value = np.where(query[..., np.newaxis] < log_edges[0], flat[:, :1, :], value)
    value = np.where(query[..., np.newaxis] >= log_edges[-1], 0.0, value)
    shifted = value[:, :-1, :] - value[:, 1:, :]
    return np.maximum(shifted, 0.0).reshape(counts.shape)


#: The five fitted numbers of a `ConditionModel`, as stored in ``condition_models.params``.
PARAM_NAMES = ("energy_zenith", "energy_muon", "rate_zenith", "rate_azimuth", "energy_azimuth")


def _same_edges(a: np.ndarray, b: np.ndarray) -> bool:
    return len(a) == len(b) and bool(np.allclose(a, b, rtol=1e-9, atol=0))


@dataclass(frozen=True)
class ConditionModel:
    """Energy shift and rate factor that move a piece to a target's conditions (see the module text).

    Parameters
    ----------
    energy_zenith : float
        Energy factor exponent of cos(zenith) ratio (run / target).
    energy_muon : float
        Energy factor exponent of the optical efficiency ratio (run / target); used only when
        both runs have one.
    rate_zenith : float
        Rate factor exponent of cos(zenith) ratio (target / run).
    rate_azimuth : float
        Rate factor coefficient of the northward pointing component difference (target - run).
    energy_azimuth : float
        Energy factor coefficient of the northward pointing component difference (run - target).
    energy_edges : tuple of float, optional
        The energy edges (TeV) of the pieces it was fitted on. The parameters are global (no
        spatial dependence), so a model fitted on one geometry moves pieces of any other with the
        same energy bins (e.g. fitted on the 2D binning, applied to 3D pieces); `apply` refuses
        other energy bins. Default is None: not checked.
    """

    energy_zenith: float = 0.0
    energy_muon: float = 0.0
    rate_zenith: float = 0.0
    rate_azimuth: float = 0.0
    energy_azimuth: float = 0.0
    energy_edges: tuple[float, ...] | None = None

    @property
    def params(self) -> dict[str, float]:
        """The five fitted numbers by name."""
        return {key: float(getattr(self, key)) for key in PARAM_NAMES}

    @classmethod
    def from_params(cls, params: dict, energy_edges: Any = None) -> ConditionModel:
        """The model of stored ``params`` (missing numbers are 0), fitted on ``energy_edges``."""
        edges = None if energy_edges is None else tuple(float(e) for e in np.asarray(energy_edges, float))
        return cls(**{key: float(params.get(key, 0.0)) for key in PARAM_NAMES}, energy_edges=edges)

    def describe(self) -> str:
        """One line: the five numbers."""
        return (
            f"energy x (cos z/cos z_t)^{self.energy_zenith:.3f} (muon_eff/muon_eff_t)^{self.energy_muon:.3f} "
            f"exp({self.energy_azimuth:.3f} dN), rate x (cos z_t/cos z)^{self.rate_zenith:.3f} "
            f"exp({self.rate_azimuth:.3f} dN); N = sin z cos az"
        )

    def log_energy_factors(self, conditions: list[RunConditions], target: RunConditions) -> np.ndarray:
        """Natural log of the energy factor of each run moved to ``target``."""
        cos_z, cos_t = _cos_zenith(conditions), _cos_zenith([target])[0]
        log_factor = self.energy_zenith * (np.log(cos_z) - math.log(cos_t))
        log_factor = log_factor + self.energy_azimuth * (_north(conditions) - _north([target])[0])
        log_mu, log_mu_t = _log_muon(conditions), _log_muon([target])[0]
        muon = self.energy_muon * (log_mu - log_mu_t)
        return log_factor + np.where(np.isfinite(muon), muon, 0.0)

    def rate_factors(self, conditions: list[RunConditions], target: RunConditions) -> np.ndarray:
        """Factor multiplying each run's (moved) counts at ``target``'s conditions."""
        cos_z, cos_t = _cos_zenith(conditions), _cos_zenith([target])[0]
        log_rate = self.rate_zenith * (math.log(cos_t) - np.log(cos_z))
        log_rate += self.rate_azimuth * (_north([target])[0] - _north(conditions))
        return np.exp(log_rate)

    def apply(
        self, counts: np.ndarray, energy_edges: np.ndarray, conditions: list[RunConditions], target: RunConditions
    ) -> tuple[np.ndarray, np.ndarray]:
        """Counts of pieces moved to the target's conditions, and the rate factor used for each.

        Parameters
        ----------
        counts : `~numpy.ndarray`
            Shape (n_pieces, n_energy, ...): pieces of any geometry (offset rings or FoV pixels).
        energy_edges : `~numpy.ndarray`
            The pieces' energy edges; must be those the model was fitted on, if it knows them.
        conditions : list of `RunConditions`
            One per piece.
        target : `RunConditions`

        Returns
        -------
        moved : `~numpy.ndarray`
            Shifted counts times the rate factor, same shape as ``counts``.
        factors : `~numpy.ndarray`
            The rate factor of each piece.
        """
        counts = np.asarray(counts, dtype=float)
        edges = np.asarray(energy_edges, dtype=float)
        if counts.ndim < 3 or counts.shape[1] != len(edges) - 1:
            raise BkgdbError(f"pieces of shape {counts.shape[1:]} do not have the {len(edges) - 1} energy bins given")
        if self.energy_edges is not None and not _same_edges(np.asarray(self.energy_edges), edges):
            raise BkgdbError(
                f"the condition model was fitted on {len(self.energy_edges) - 1} energy bins "
                f"{self.energy_edges[0]:g}-{self.energy_edges[-1]:g} TeV; the pieces have "
                f"{len(edges) - 1} bins {edges[0]:g}-{edges[-1]:g} TeV: it moves pieces only "
                "with the energy bins it was fitted on"
            )
        if len(conditions) != counts.shape[0]:
            raise BkgdbError(f"{counts.shape[0]} pieces but {len(conditions)} run conditions")
        factors = self.rate_factors(conditions, target)
        # shift_energy works on one spatial axis: flatten the FoV pixels into it.
        flat = counts.reshape(counts.shape[:2] + (-1,))
        shifted = shift_energy(flat, edges, self.log_energy_factors(conditions, target)).reshape(counts.shape)
        return shifted * factors.reshape((-1,) + (1,) * (counts.ndim - 1)), factors
