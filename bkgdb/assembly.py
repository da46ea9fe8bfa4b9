"""Summing pieces into a background rate, and turning it into gammapy objects."""

import logging
from dataclasses import dataclass

import numpy as np

from .errors import BkgdbError

__all__ = [
    "AssembledBackground", "assemble_background", "fill_empty_bins", "bin_average_to_centre",
    "local_spectral_index", "RATE_UNIT",
]

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
    """

    binning: object
    counts: np.ndarray
    exposure_s: np.ndarray
    ontime_s: float
    n_runs: int

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


def assemble_background(pieces, binning):
    """Sum pieces of one binning into an `AssembledBackground`.

    Parameters
    ----------
    pieces : list of `~bkgdb.pieces.BackgroundPiece`
        The selected runs' pieces (same binning and exclusion setting).
    binning : `~bkgdb.config.Binning`
        Their binning.
    """
    if not pieces:
        raise BkgdbError("no pieces to assemble")
    counts = np.zeros(binning.shape, dtype=np.int64)
    exposure = np.zeros(binning.off_bins)
    for piece in pieces:
        if piece.counts.shape != binning.shape:
            raise BkgdbError(f"piece of shape {piece.counts.shape} does not fit binning {binning.shape}")
        counts += piece.counts
        exposure += piece.exposure_s
    return AssembledBackground(binning, counts, exposure, float(sum(p.ontime_s for p in pieces)), len(pieces))
