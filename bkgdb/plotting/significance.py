"""Significance maps of one run: counts against the background prediction, Li & Ma per pixel.

A model that predicts the counts leaves, outside the exclusion regions, significances distributed
as N(0, 1); `plot_significance` draws the maps and that distribution with a Gaussian fit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bkgdb.errors import BkgdbError
from bkgdb.plotting.style import finish, new_figure, styled

if TYPE_CHECKING:
    from gammapy.data import Observation
    from gammapy.irf import BackgroundIRF
    from gammapy.maps import WcsGeom
    from matplotlib.figure import Figure

__all__ = ["SignificanceMaps", "li_ma_known_background", "significance_maps", "plot_significance"]


@dataclass
class SignificanceMaps:
    """Counts, predicted background and Li & Ma significance on one sky image.

    Attributes
    ----------
    geom : `gammapy.maps.WcsGeom`
        The image geometry (no energy axis).
    counts, background, significance : `~numpy.ndarray`
        Energy-summed counts and background (after the FoV norm) within the correlation radius of
        each pixel, and the Li & Ma significance of the one against the other.
    usable : `~numpy.ndarray`
        Pixels inside the safe region and outside every exclusion region.
    norm : float
        FoV background norm fitted outside the exclusions and applied to the background.
    correlation_radius_deg : float
    energy_range_tev : tuple of float
        TeV.
    obs_id : int
    """

    geom: WcsGeom
    counts: np.ndarray
    background: np.ndarray
    significance: np.ndarray
    usable: np.ndarray
    norm: float
    correlation_radius_deg: float
    energy_range_tev: tuple[float, float]
    obs_id: int

    def distribution_fit(self) -> tuple[float, float]:
        """(mean, width) of a Gaussian fitted to the significances of the usable pixels."""
        from scipy.stats import norm as gaussian

        values = self.significance[self.usable & np.isfinite(self.significance)]
        if values.size < 2:
            raise BkgdbError("too few usable pixels for a significance distribution")
        mean, width = gaussian.fit(values)
        return float(mean), float(width)


def li_ma_known_background(n_on: np.ndarray | Iterable[float], mu: np.ndarray | Iterable[float]) -> np.ndarray:
    """Li & Ma (1983) eq. 17 in the limit of a perfectly known background ``mu``: signed significance."""
    n_on, mu = np.asarray(n_on, float), np.asarray(mu, float)
    significance = np.full(n_on.shape, np.nan)
    ok = mu > 0
    n, m = n_on[ok], mu[ok]
    term = np.where(n > 0, n * np.log(np.where(n > 0, n, 1.0) / m), 0.0)
    significance[ok] = np.sign(n - m) * np.sqrt(np.maximum(2 * (term - (n - m)), 0.0))
    return significance


def significance_maps(
    observation: Observation,
    excluded: Iterable[tuple[float, float, float]],
    energy_range_tev: tuple[float, float] = (0.5, 10.0),
    binsz_deg: float = 0.02,
    offset_max_deg: float = 2.0,
    correlation_radius_deg: float = 0.1,
    model: BackgroundIRF | None = None,
) -> SignificanceMaps:
    """Counts against the background prediction of an observation, and the Li & Ma significance per pixel.

    The maps are made with gammapy's `MapDatasetMaker`, the background from ``model`` (e.g. bkgdb's)
    evaluated in its own FoV frame (`bkgdb.fov_fit.model_background`), or else from the observation's
    own ``bkg`` as gammapy reads it, inside ``offset_max_deg`` and the effective area's safe energy
    range (as `bkgdb validate` fits); the background is scaled by a `FoVBackgroundMaker` norm
    fitted outside the ``excluded`` circles (ra, dec, radius in deg); counts and background are
    summed over a disk of ``correlation_radius_deg`` around each pixel.
    """
    from astropy import units as u
    from gammapy.datasets import MapDataset
    from gammapy.makers import FoVBackgroundMaker, MapDatasetMaker, SafeMaskMaker
    from gammapy.maps import MapAxis, WcsGeom
    from scipy.signal import fftconvolve

    from bkgdb.fov_fit import model_background, outside_circles

    energy = MapAxis.from_energy_bounds(*energy_range_tev, nbin=8, unit="TeV")
    width = 2 * offset_max_deg + 2 * correlation_radius_deg
    geom = WcsGeom.create(
        skydir=observation.pointing.fixed_icrs, binsz=binsz_deg, width=(width, width), frame="icrs", axes=[energy]
    )
    maker = MapDatasetMaker(selection=["counts", "background"] if model is None else ["counts"])
    dataset = maker.run(MapDataset.create(geom, name=str(observation.obs_id)), observation)
    if model is not None:
        dataset.background = model_background(maker, geom, observation, model)
    # As `bkgdb validate`: below the effective area's safe threshold, where the IRF gives one, nothing counts.
    methods = ["offset-max"]
    if observation.aeff is not None and observation.aeff.meta.get("LO_THRES") is not None:
        methods.append("aeff-default")
    dataset = SafeMaskMaker(methods=methods, offset_max=offset_max_deg * u.deg).run(dataset, observation)
    outside = outside_circles(geom, excluded)
    fitted = FoVBackgroundMaker(method="scale", exclusion_mask=outside).run(dataset)
    norm = float(fitted.background_model.spectral_model.norm.value)
    safe = dataset.mask_safe.data.any(axis=0)
    counts = (dataset.counts.data * dataset.mask_safe.data).sum(axis=0).astype(float)
    background = (dataset.background.data * dataset.mask_safe.data).sum(axis=0) * norm
    pixels = int(math.ceil(correlation_radius_deg / binsz_deg))
    y, x = np.mgrid[-pixels : pixels + 1, -pixels : pixels + 1]
    disk = ((x**2 + y**2) * binsz_deg**2 <= correlation_radius_deg**2).astype(float)
    n_on = np.rint(fftconvolve(counts, disk, mode="same"))
    mu = fftconvolve(background, disk, mode="same")
    significance = li_ma_known_background(n_on, mu)
    significance[~safe] = np.nan
    usable = safe & outside.data[0]
    return SignificanceMaps(
        geom.to_image(),
        n_on,
        mu,
        significance,
        usable,
        norm,
        correlation_radius_deg,
        (float(energy_range_tev[0]), float(energy_range_tev[1])),
        int(observation.obs_id),
    )


@styled
def plot_significance(maps: SignificanceMaps, path: str | Path | None = None, title: str | None = None) -> Figure:
    """Counts map, background map, significance map and the significance distribution with a Gaussian fit."""
    from matplotlib.colors import TwoSlopeNorm
    from scipy.stats import norm as gaussian

    figure = new_figure(15, 4.0)
    panels = [figure.add_subplot(1, 4, i + 1, projection=maps.geom.wcs) for i in range(3)]
    histogram = figure.add_subplot(1, 4, 4)
    safe = np.isfinite(maps.significance)
    counts = np.ma.masked_where(~safe, maps.counts)
    background = np.ma.masked_where(~safe, maps.background)
    # A bright source would take the whole colour scale: scaled to the pixels outside the exclusions.
    usable_counts = maps.counts[maps.usable & safe]
    high = max(float(np.percentile(usable_counts, 99.5)) if usable_counts.size else 0.0, float(background.max()), 1.0)
    radius = f"{maps.correlation_radius_deg:g}" + r"$^\circ$"
    for axes, image, label in (
        (panels[0], counts, f"counts within {radius}"),
        (panels[1], background, f"predicted background within {radius}"),
    ):
        shown = axes.imshow(image, origin="lower", cmap="magma", vmin=0, vmax=high)
        figure.colorbar(shown, ax=axes, label=label, fraction=0.046, pad=0.03)
    limit = max(5.0, float(np.nanmax(np.abs(maps.significance))) if safe.any() else 5.0)
    shown = panels[2].imshow(
        np.ma.masked_where(~safe, maps.significance),
        origin="lower",
        cmap="RdBu_r",
        norm=TwoSlopeNorm(0.0, -limit, limit),
    )
    figure.colorbar(shown, ax=panels[2], label=r"Li & Ma significance ($\sigma$)", fraction=0.046, pad=0.03)
    excluded = safe & ~maps.usable
    if excluded.any():
        panels[2].contour(excluded.astype(float), levels=[0.5], colors="k", linewidths=0.7)
    for axes, name in zip(
        panels, ("counts", "background (bkgdb, x FoV norm)", "significance (exclusions outlined)"), strict=True
    ):
        axes.set_title(name)
        axes.coords[0].set_format_unit("deg", decimal=True)
        axes.coords[0].set_axislabel("RA (deg)")
        axes.coords[1].set_axislabel("Dec (deg)")
    values = maps.significance[maps.usable & safe]
    mean, width = maps.distribution_fit()
    bins = np.linspace(min(-5.0, values.min()), max(5.0, values.max()), 60).tolist()
    filled, _, _ = histogram.hist(
        values, bins=bins, histtype="stepfilled", color="0.75", label=f"pixels outside exclusions ({values.size})"
    )
    histogram.hist(
        maps.significance[excluded],
        bins=bins,
        histtype="step",
        color="C3",
        label=f"excluded pixels ({int(excluded.sum())})",
    )
    grid = np.linspace(bins[0], bins[-1], 300)
    scale = values.size * (bins[1] - bins[0])
    histogram.plot(
        grid, scale * gaussian.pdf(grid, mean, width), "C0-", label=f"Gaussian fit: mean {mean:.2f}, width {width:.2f}"
    )
    histogram.plot(grid, scale * gaussian.pdf(grid), "k--", lw=1, label="N(0, 1)")
    histogram.set_yscale("log")
    histogram.set_ylim(0.5, max(float(np.max(filled)), 1.0) * 300)  # room for the legend above the peak
    histogram.set_xlabel(r"significance ($\sigma$)")
    histogram.set_ylabel("pixels")
    histogram.legend(frameon=False, fontsize=7, loc="upper left")
    histogram.set_title(f"mean {mean:.2f}, width {width:.2f}")
    low, high = maps.energy_range_tev
    figure.suptitle(
        title
        or (
            f"run {maps.obs_id}: {low:g}-{high:g} TeV, correlation radius "
            f"{maps.correlation_radius_deg:g} deg, FoV norm {maps.norm:.3f}"
        )
    )
    figure.tight_layout()
    return finish(figure, path)
