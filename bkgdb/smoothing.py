"""Smoothing an assembled background rate, on demand (smoothed rates are never stored)."""

import logging

import numpy as np

from .config import SMOOTHING_METHODS

__all__ = ["BackgroundSmoother"]

log = logging.getLogger(__name__)


class BackgroundSmoother:
    """Smooths a background rate along offset; the result is never negative.

    Parameters
    ----------
    method : {"gauss", "poly", "spline", "none"}
        ``gauss``: gammapy-tools' method: the 2D rate is turned into a `Background3D`, each energy
        slice is filtered with a Gaussian of ``sigma`` bins and turned back into 2D.
        ``poly``: a polynomial in offset per energy slice, Poisson-weighted, of degree below the
        number of offset bins. ``spline``: a Poisson-weighted smoothing spline in offset per
        energy slice. ``none``: the rate as summed.
    sigma : float, optional
        Width of the Gaussian, in bins. Default is 1.
    degree : int, optional
        Polynomial degree (capped at offset bins - 1). Default is 3.
    spline_smoothing : float, optional
        The spline's smoothing factor ``s``. Default is the number of offset bins.
    """

    available_methods = SMOOTHING_METHODS

    def __init__(self, method="none", sigma=1.0, degree=3, spline_smoothing=None):
        if method not in self.available_methods:
            raise ValueError(f"smoothing method {method!r} is not one of {', '.join(self.available_methods)}")
        self.method = method
        self.sigma = sigma
        self.degree = degree
        self.spline_smoothing = spline_smoothing

    def run(self, background):
        """The smoothed rate (s-1 MeV-1 sr-1) of an `~bkgdb.assembly.AssembledBackground`."""
        rate = background.rate
        if self.method == "none":
            return rate
        smoothed = getattr(self, f"make_{self.method}")(background, rate)
        return np.clip(np.nan_to_num(smoothed, nan=0.0, posinf=0.0), 0.0, None)

    def make_gauss(self, background, rate):
        from scipy.ndimage import gaussian_filter

        from .assembly import fill_empty_bins

        # to_3d interpolates in log scale: empty bins would explode there, so fill them first.
        cube = background.to_background2d(fill_empty_bins(rate, background)).to_3d()
        data = cube.data
        for index in range(data.shape[0]):
            data[index] = gaussian_filter(data[index], self.sigma)
        cube.data = data
        return cube.to_2d().data

    def _slices(self, background, rate):
        """Energy slices worth fitting: (index, offset centres, rate, error, exposed-bin mask)."""
        centres = 0.5 * (background.binning.offset_edges[1:] + background.binning.offset_edges[:-1])
        error = background.rate_error
        for index in range(rate.shape[0]):
            exposed = error[index] > 0
            if background.counts[index].sum() == 0 or exposed.sum() < 2:
                continue
            yield index, centres, rate[index], error[index], exposed

    def make_poly(self, background, rate):
        smoothed = rate.copy()
        for index, x, y, sigma, use in self._slices(background, rate):
            degree = min(self.degree, use.sum() - 1)
            coefficients = np.polyfit(x[use], y[use], degree, w=1.0 / sigma[use])
            smoothed[index] = np.polyval(coefficients, x)
        return smoothed

    def make_spline(self, background, rate):
        from scipy.interpolate import UnivariateSpline

        smoothed = rate.copy()
        for index, x, y, sigma, use in self._slices(background, rate):
            n = int(use.sum())
            spline = UnivariateSpline(x[use], y[use], w=1.0 / sigma[use], k=min(3, n - 1),
                                      s=self.spline_smoothing if self.spline_smoothing is not None else n)
            smoothed[index] = spline(x)
        return smoothed
