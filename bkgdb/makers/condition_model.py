"""How a run's background changes with its observing conditions, fitted on the cached pieces.

A run observed at larger zenith angle (or with lower optical efficiency) sees the same cosmic-ray
background with a higher energy threshold and a different rate. `ConditionModel` moves a piece
taken under one set of conditions to a target's conditions:

- **energy**: the piece's counts are moved in energy by the factor
  ``(cos z_run / cos z_target)**energy_zenith * (muon_eff_run / muon_eff_target)**energy_muon
  * exp(energy_azimuth * (N_run - N_target))`` (re-binned in log-energy, see `shift_energy`);
  the exposure is per offset and does not move;
- **rate**: the moved counts are multiplied by
  ``w = (cos z_target / cos z_run)**rate_zenith * exp(rate_azimuth * (N_target - N_run))``,

with ``N = sin z cos az`` the pointing's northward component (azimuth wraps at 360 deg by
itself). The summed background is then ``sum(w * counts') / sum(exposure)``.
`ConditionModelFitter` finds the five numbers by minimising the Poisson deviance of every
archive run's counts predicted from all *other* runs (leave-one-out): each prediction uses the
others' pieces moved to that run's conditions, never its own counts. Pure numpy/scipy; no event
files.
"""

import logging
import math
from dataclasses import asdict, dataclass, replace

import numpy as np

from bkgdb.errors import BkgdbError

__all__ = ["RunConditions", "ConditionModel", "ConditionModelFitter", "ConditionFit", "shift_energy",
           "MODEL_KIND"]

log = logging.getLogger(__name__)

#: Value of ``condition_models.kind`` for this model's form (change it when the form changes).
MODEL_KIND = "shift-scale-v1"


@dataclass(frozen=True)
class RunConditions:
    """Observing conditions of one run: zenith and azimuth (deg), optical efficiency (None if unknown)."""

    zenith_deg: float
    az_deg: float | None = None
    muon_eff: float | None = None


def _cos_zenith(conditions):
    return np.cos(np.radians(np.array([c.zenith_deg for c in conditions], dtype=float)))


def _north(conditions):
    """Northward component of the pointing direction, sin(z) cos(az): azimuth matters less near the
    zenith (the geomagnetic field's angle to the showers changes less). cos wraps at 360 deg by
    itself; an unknown azimuth counts as 0."""
    values = np.array([np.nan if c.az_deg is None else c.az_deg for c in conditions], dtype=float)
    cos_az = np.where(np.isfinite(values), np.cos(np.radians(values)), 0.0)
    return cos_az * np.sin(np.radians(np.array([c.zenith_deg for c in conditions], dtype=float)))


def _log_muon(conditions):
    values = np.array([np.nan if c.muon_eff is None else c.muon_eff for c in conditions], dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(np.isfinite(values) & (values > 0), np.log(values), np.nan)


def shift_energy(counts, energy_edges, log_factor):
    """Counts of events whose energies are all multiplied by ``exp(log_factor)``, in the same bins.

    The number of events above each bin edge is interpolated between edges as a power law (exact
    for a power-law spectrum), or linearly where it reaches zero. Events moved beyond the last edge
    are lost; none come in from below the first edge (nothing is known there).

    Parameters
    ----------
    counts : `~numpy.ndarray`
        Shape (..., n_energy, n_offset): e.g. one piece, or a stack of pieces.
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
    above = np.concatenate([np.cumsum(counts[..., ::-1, :], axis=-2)[..., ::-1, :],
                            np.zeros(counts.shape[:-2] + (1, counts.shape[-1]))], axis=-2)
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
    """

    energy_zenith: float = 0.0
    energy_muon: float = 0.0
    rate_zenith: float = 0.0
    rate_azimuth: float = 0.0
    energy_azimuth: float = 0.0

    @property
    def params(self) -> dict:
        return {key: float(value) for key, value in asdict(self).items()}

    @classmethod
    def from_params(cls, params: dict) -> "ConditionModel":
        return cls(**{key: float(params.get(key, 0.0)) for key in cls.__dataclass_fields__})

    def describe(self) -> str:
        """One line: the five numbers."""
        return (f"energy x (cos z/cos z_t)^{self.energy_zenith:.3f} (muon_eff/muon_eff_t)^{self.energy_muon:.3f} "
                f"exp({self.energy_azimuth:.3f} dN), rate x (cos z_t/cos z)^{self.rate_zenith:.3f} "
                f"exp({self.rate_azimuth:.3f} dN); N = sin z cos az")

    def log_energy_factors(self, conditions, target) -> np.ndarray:
        """Natural log of the energy factor of each run moved to ``target``."""
        cos_z, cos_t = _cos_zenith(conditions), _cos_zenith([target])[0]
        log_factor = self.energy_zenith * (np.log(cos_z) - math.log(cos_t))
        log_factor = log_factor + self.energy_azimuth * (_north(conditions) - _north([target])[0])
        log_mu, log_mu_t = _log_muon(conditions), _log_muon([target])[0]
        muon = self.energy_muon * (log_mu - log_mu_t)
        return log_factor + np.where(np.isfinite(muon), muon, 0.0)

    def rate_factors(self, conditions, target) -> np.ndarray:
        """Factor multiplying each run's (moved) counts at ``target``'s conditions."""
        cos_z, cos_t = _cos_zenith(conditions), _cos_zenith([target])[0]
        log_rate = self.rate_zenith * (math.log(cos_t) - np.log(cos_z))
        log_rate += self.rate_azimuth * (_north([target])[0] - _north(conditions))
        return np.exp(log_rate)

    def apply(self, counts, energy_edges, conditions, target):
        """Counts of pieces moved to the target's conditions, and the rate factor used for each.

        Parameters
        ----------
        counts : `~numpy.ndarray`
            Shape (n_pieces, n_energy, n_offset).
        energy_edges : `~numpy.ndarray`
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
        if len(conditions) != counts.shape[0]:
            raise BkgdbError(f"{counts.shape[0]} pieces but {len(conditions)} run conditions")
        factors = self.rate_factors(conditions, target)
        shifted = shift_energy(counts, energy_edges, self.log_energy_factors(conditions, target))
        return shifted * factors[:, np.newaxis, np.newaxis], factors


@dataclass
class ConditionFit:
    """A fitted `ConditionModel` and how well it did (Poisson deviance per bin used, leave-one-out)."""

    model: ConditionModel
    n_runs: int
    deviance: float
    deviance_plain: float
    n_bins: int
    fit_muon: bool

    def as_dict(self):
        return {**self.model.params, "n_runs": self.n_runs, "deviance": self.deviance,
                "deviance_plain": self.deviance_plain, "n_bins": self.n_bins, "fit_muon": self.fit_muon}


class ConditionModelFitter:
    """Fits a `ConditionModel` to an archive of pieces by leave-one-out Poisson deviance.

    Every run's counts are predicted from the sum of all other runs, each moved to a common
    reference (the median conditions), and that sum moved to the run's conditions; the run's
    own counts never enter its prediction. The five parameters minimising the total deviance
    are found with Powell's method, polished with Nelder-Mead.

    Parameters
    ----------
    counts : `~numpy.ndarray`
        Shape (n_runs, n_energy, n_offset): the pieces' kept counts.
    exposure_s : `~numpy.ndarray`
        Shape (n_runs, n_offset): the pieces' accepted exposure.
    energy_edges : `~numpy.ndarray`
    conditions : list of `RunConditions`
    fit_muon : bool, optional
        Fit the optical-efficiency exponent. Default (None): when every run has one.
    """

    def __init__(self, counts, exposure_s, energy_edges, conditions, fit_muon=None):
        self.counts = np.asarray(counts, dtype=float)
        self.exposure = np.asarray(exposure_s, dtype=float)
        self.energy_edges = np.asarray(energy_edges, dtype=float)
        self.conditions = list(conditions)
        if self.counts.ndim != 3 or len(self.conditions) != self.counts.shape[0]:
            raise BkgdbError("condition model fit needs counts of shape (runs, energy, offset) and one "
                             "condition per run")
        if len(self.conditions) < 3:
            raise BkgdbError(f"condition model fit needs at least 3 runs, got {len(self.conditions)}")
        has_muon = bool(np.all(np.isfinite(_log_muon(self.conditions))))
        self.fit_muon = has_muon if fit_muon is None else bool(fit_muon and has_muon)
        cos_z = _cos_zenith(self.conditions)
        zenith = float(np.degrees(np.arccos(np.median(cos_z))))
        muon = float(np.exp(np.median(_log_muon(self.conditions)))) if has_muon else None
        self.reference = RunConditions(zenith, 90.0, muon)  # due east: northward component 0

    def deviance(self, model):
        """Leave-one-out Poisson deviance of all runs under ``model``, and the number of bins used."""
        to_reference, factors = self._move(model, inverse=True)
        total = to_reference.sum(axis=0)
        exposure_total = self.exposure.sum(axis=0)
        others = total[np.newaxis] - to_reference
        others_exposure = exposure_total[np.newaxis] - self.exposure
        rate = np.divide(others, others_exposure[:, np.newaxis, :], out=np.zeros_like(others),
                         where=others_exposure[:, np.newaxis, :] > 0)
        expected_reference = np.maximum(rate, 0.0) * self.exposure[:, np.newaxis, :]
        expected, _ = self._move(model, counts=expected_reference)
        n = self.counts
        use = expected > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            term = np.where(n > 0, n * np.log(n / expected), 0.0)
        deviance = 2.0 * np.sum((expected - n + term)[use])
        return float(deviance), int(use.sum())

    def _move(self, model, counts=None, inverse=False):
        """Move every run's counts to the reference (``inverse``) or the reference's to every run."""
        counts = self.counts if counts is None else counts
        log_energy = model.log_energy_factors(self.conditions, self.reference)
        factors = model.rate_factors(self.conditions, self.reference)
        if inverse:
            return shift_energy(counts, self.energy_edges, log_energy) * factors[:, None, None], factors
        return shift_energy(counts, self.energy_edges, -log_energy) / factors[:, None, None], factors

    def run(self) -> ConditionFit:
        """Fit the parameters; return the `ConditionFit`."""
        names = ["energy_zenith", "rate_zenith", "rate_azimuth", "energy_azimuth"]
        names += ["energy_muon"] if self.fit_muon else []
        plain, n_bins = self.deviance(ConditionModel())
        model = _minimise_deviance(self, ConditionModel(), names)
        deviance, n_bins = self.deviance(model)
        log.info("condition model from %d runs: %s (deviance %.1f, plain %.1f, %d bins)",
                 len(self.conditions), model.describe(), deviance, plain, n_bins)
        return ConditionFit(model, len(self.conditions), deviance, plain, n_bins, self.fit_muon)


def _minimise_deviance(fitter, start, names):
    """The model minimising ``fitter``'s deviance over parameters ``names``, from model ``start``.

    Powell's method finds the valley in a few hundred deviances; Nelder-Mead from there polishes
    (the deviance has kinks where a shift crosses a bin edge, so gradient methods stall).
    """
    from scipy.optimize import minimize

    def model_of(x):
        return replace(start, **dict(zip(names, (float(v) for v in np.clip(x, -10, 10)))))

    def deviance(x):
        return fitter.deviance(model_of(x))[0]

    x = np.array([getattr(start, name) for name in names], dtype=float)
    x = minimize(deviance, x, method="Powell", options={"xtol": 1e-3, "ftol": 1e-6}).x
    x = minimize(deviance, x, method="Nelder-Mead", options={"xatol": 1e-4, "fatol": 1e-4, "maxiter": 4000,
                                                            "initial_simplex": _simplex(x, 0.05)}).x
    return model_of(x)


def _simplex(start, step):
    return np.vstack([start, start + step * np.eye(len(start))])
