"""Figures of background models: rate against offset and energy (2D), FoV images per energy band (3D).

`ModelCurves` holds a 2D model as plotted; `model_curves` makes it from a built background,
`model_curves_from_file` from a file `bkgdb background` wrote. `reference_rate` evaluates another
gammapy model (e.g. the run file's own) at the same bin centres, so the two can be drawn together.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bkgdb.config.values import is_file, is_folder
from bkgdb.errors import BkgdbError
from bkgdb.plotting.style import RATE_LABEL, RATE_UNIT, finish, new_figure, spread_picks, styled

if TYPE_CHECKING:
    from astropy.io.fits import Header
    from gammapy.irf import Background2D, Background3D
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from bkgdb.built import BuiltBackground

__all__ = ["ModelCurves", "model_curves", "model_curves_from_file", "reference_rate", "plot_model", "plot_model_3d"]


@dataclass
class ModelCurves:
    """A 2D background model as plotted: rates per (energy, offset) bin and their statistics.

    Attributes
    ----------
    energy_edges : `~numpy.ndarray`
        TeV.
    offset_edges : `~numpy.ndarray`
        deg.
    rate : `~numpy.ndarray`
        The model, s-1 MeV-1 sr-1, shape (energy, offset).
    counts : `~numpy.ndarray` or None
        Summed counts per bin behind the model (gives the statistical band); None if unknown.
    unsmoothed : `~numpy.ndarray` or None
        The summed rate before smoothing, when the model is smoothed.
    label : str
        What the figure title says about the model.
    """

    energy_edges: np.ndarray
    offset_edges: np.ndarray
    rate: np.ndarray
    counts: np.ndarray | None = None
    unsmoothed: np.ndarray | None = None
    label: str = "bkgdb"

    @property
    def energy_centres(self) -> np.ndarray:
        """Geometric centres of the energy bins, TeV."""
        return np.sqrt(self.energy_edges[1:] * self.energy_edges[:-1])

    @property
    def offset_centres(self) -> np.ndarray:
        """Centres of the offset bins, deg."""
        return 0.5 * (self.offset_edges[1:] + self.offset_edges[:-1])

    @property
    def relative_error(self) -> np.ndarray | None:
        """Poisson error of each bin relative to its value, from the summed counts (1 for empty bins)."""
        if self.counts is None:
            return None
        return 1.0 / np.sqrt(np.maximum(np.asarray(self.counts, float), 1.0))


def model_curves(built: BuiltBackground) -> ModelCurves:
    """`ModelCurves` of a `~bkgdb.background.BuiltBackground`: its rate, counts and, when smoothed, the raw sum."""
    assembled, selection, target = built.assembled, built.selection, built.target
    geometry = assembled.geometry
    if geometry.is_3d:
        raise BkgdbError("rate curves need a 2D background: plot a 3D one from its file (bkgdb plot model FILE)")
    smoothed = built.smoothing not in (None, "none")
    label = (
        f"run {target.obs_id}: bkgdb model from {len(selection.obs_ids)} runs "
        f"({assembled.ontime_s / 3600:.1f} h), smoothing {built.smoothing}"
    )
    return ModelCurves(
        np.asarray(geometry.energy_edges, float),
        np.asarray(geometry.offset_edges, float),
        np.asarray(built.rate, float),
        np.asarray(assembled.counts, float),
        np.asarray(assembled.rate, float) if smoothed else None,
        label,
    )


def _read_background(path: str | Path) -> tuple[Background2D | Background3D, Header]:
    """The BACKGROUND (or first background) HDU of a file: a gammapy Background2D or Background3D and its header."""
    from astropy.io import fits
    from gammapy.irf import Background2D, Background3D

    path = Path(path)
    if is_folder(path):
        raise BkgdbError(f"{path} is a folder: give a background FITS file (as `bkgdb background -o` writes)")
    if not is_file(path):
        raise BkgdbError(f"background file {path} does not exist")
    try:
        # A cut-off file's warnings are left out: the error below says what is wrong.
        with warnings.catch_warnings(), fits.open(path) as hdus:
            warnings.simplefilter("ignore", fits.verify.VerifyWarning)
            names = [hdu.name for hdu in hdus]
            name = next((n for n in ("BACKGROUND", "BKG") if n in names), None)
            if name is None:
                # astropy reads a cut-off file as the HDUs it could parse: say why they are missing.
                damage = _truncation(path)
                if damage:
                    raise BkgdbError(f"cannot read {path}: {damage}")
                raise BkgdbError(f"{path} has no BACKGROUND or BKG HDU (it has {', '.join(names)})")
            header = hdus[name].header.copy()
            kind = header.get("HDUCLAS4", "")
    except OSError as exc:
        raise BkgdbError(f"cannot read {path}: {_truncation(path) or exc}") from None
    reader = Background3D if kind.upper() == "BKG_3D" else Background2D
    return reader.read(path, hdu=name), header


def _truncation(path: Path) -> str | None:
    """Why a FITS file (gzip-compressed or not) is cut off, or None when it holds whole 2880-byte blocks."""
    import gzip
    import zlib

    try:
        with path.open("rb") as handle:
            compressed = handle.read(2) == b"\x1f\x8b"
        if not compressed:
            size = path.stat().st_size
        else:
            with gzip.open(path) as stream:
                size = sum(len(chunk) for chunk in iter(lambda: stream.read(1 << 20), b""))
    except (EOFError, zlib.error) as exc:
        return f"damaged or truncated gzip data ({exc})"
    except OSError as exc:
        return f"damaged gzip data ({exc})" if compressed else None
    if size % 2880:
        return f"truncated or damaged: {size:,} bytes, not whole 2880-byte FITS blocks"
    return None


def model_curves_from_file(path: str | Path) -> tuple[ModelCurves | Background3D, Header]:
    """A background FITS file (as `bkgdb background` writes): `ModelCurves` for a 2D model, else the Background3D.

    Returns
    -------
    model : `ModelCurves` or `gammapy.irf.Background3D`
    header : `astropy.io.fits.Header`
    """
    from gammapy.irf import Background3D

    from bkgdb.gadf.sash import in_own_frame

    model, header = _read_background(path)
    if isinstance(model, Background3D):
        return in_own_frame(model), header  # a model written for a H.E.S.S. SASH run is shown in RA/Dec
    energy = model.axes["energy"].edges.to_value("TeV")
    offset = model.axes["offset"].edges.to_value("deg")
    label = f"{Path(path).name}"
    if "BKG_TGT" in header:
        label = (
            f"run {header['BKG_TGT']}: bkgdb model from {header.get('BKG_NRUN', '?')} runs "
            f"({header.get('BKG_ONT', 0) / 3600:.1f} h), smoothing {header.get('BKG_SMTH', '?')}"
        )
    return ModelCurves(energy, offset, model.quantity.to_value(RATE_UNIT), label=label), header


def reference_rate(
    background: Background2D | Background3D,
    energy_tev: Sequence[float] | np.ndarray,
    offset_deg: Sequence[float] | np.ndarray,
    n_azimuth: int = 36,
) -> np.ndarray:
    """A gammapy background model's rate (s-1 MeV-1 sr-1) at energies x offsets, shape (energy, offset).

    A `Background3D` is averaged over FoV azimuth on a circle of each offset.
    """
    from astropy import units as u
    from gammapy.irf import Background3D

    energy = np.asarray(energy_tev, float)[:, np.newaxis] * u.TeV
    offset = np.asarray(offset_deg, float)
    if isinstance(background, Background3D):
        phi = np.linspace(0, 2 * np.pi, n_azimuth, endpoint=False)
        lon = (offset[:, np.newaxis] * np.cos(phi))[np.newaxis] * u.deg
        lat = (offset[:, np.newaxis] * np.sin(phi))[np.newaxis] * u.deg
        values = background.evaluate(energy=energy[..., np.newaxis], fov_lon=lon, fov_lat=lat)
        return values.to_value(RATE_UNIT).mean(axis=-1)
    return background.evaluate(energy=energy, offset=offset[np.newaxis] * u.deg).to_value(RATE_UNIT)


@styled
def plot_model(
    curves: ModelCurves,
    reference: Background2D | Background3D | None = None,
    reference_label: str = "model in the run file",
    path: str | Path | None = None,
    n_curves: int = 4,
) -> Figure:
    """Rate against offset for a few energies and against energy for a few offsets.

    Parameters
    ----------
    curves : `ModelCurves`
        The bkgdb model; its counts give 1-sigma statistical bands, its unsmoothed rate is drawn as points.
    reference : `gammapy.irf.Background2D` or `~gammapy.irf.Background3D`, optional
        Another model (e.g. the run file's own), evaluated at the same bin centres (3D: averaged
        over FoV azimuth), drawn dashed.
    path : str or `~pathlib.Path`, optional
        Save the figure there.
    n_curves : int, optional
        Energies and offsets shown. Default is 4.

    Returns
    -------
    figure : `matplotlib.figure.Figure`
    """
    figure = new_figure(10, 4.2)
    by_offset, by_energy = figure.subplots(1, 2)
    energies, offsets = curves.energy_centres, curves.offset_centres
    rate = curves.rate
    filled_e = [i for i in range(len(energies)) if (rate[i] > 0).sum() >= 2]
    if curves.counts is not None:
        # Energies with real statistics: filled-in bins below threshold or above the last events say little.
        counts = np.asarray(curves.counts, float)
        totals, covered = counts.sum(axis=1), (counts > 0).mean(axis=1)
        filled_e = [
            i for i in filled_e if totals[i] >= max(10.0, 1e-3 * totals.max()) and covered[i] >= 0.75
        ] or filled_e
    filled_o = [j for j in range(len(offsets)) if (rate[:, j] > 0).sum() >= 2]
    if not filled_e or not filled_o:
        raise BkgdbError("the model has no bins with a rate to plot")
    energy_picks, offset_picks = spread_picks(filled_e, n_curves), spread_picks(filled_o, n_curves)
    ref = reference_rate(reference, energies, offsets) if reference is not None else None
    relative = curves.relative_error
    colours = ["C0", "C1", "C2", "C3", "C4", "C5", "C6", "C8"]

    def draw(axes: Axes, x: np.ndarray, rows: Sequence[int], label_of: Callable[[int], str], along: str) -> None:
        for colour, index in zip(colours, rows, strict=False):
            y = rate[index] if along == "offset" else rate[:, index]
            shown = y > 0
            axes.plot(x[shown], y[shown], "-", color=colour, lw=1.5, label=label_of(index))
            if relative is not None:
                r = relative[index] if along == "offset" else relative[:, index]
                # Floored at a tenth of the value: a log axis cannot show a band down to 0.
                axes.fill_between(
                    x[shown],
                    (y * np.clip(1 - r, 0.1, None))[shown],
                    (y * (1 + r))[shown],
                    color=colour,
                    alpha=0.2,
                    lw=0,
                )
            if curves.unsmoothed is not None:
                raw = curves.unsmoothed[index] if along == "offset" else curves.unsmoothed[:, index]
                axes.plot(x[raw > 0], raw[raw > 0], "o", color=colour, ms=3.5, mfc="none")
            if ref is not None:
                other = ref[index] if along == "offset" else ref[:, index]
                axes.plot(x[other > 0], other[other > 0], "--", color=colour, lw=1.2)

    draw(by_offset, offsets, energy_picks, lambda i: f"{energies[i]:.2g} TeV", "offset")
    by_offset.set_xlabel("FoV offset (deg)")
    by_offset.set_yscale("log")
    by_offset.set_ylabel(RATE_LABEL)
    by_offset.set_title("against offset, at bin energies")
    draw(by_energy, energies, offset_picks, lambda j: f"{offsets[j]:.2f} deg", "energy")
    by_energy.set_xscale("log")
    by_energy.set_yscale("log")
    from matplotlib.ticker import NullFormatter

    by_energy.xaxis.set_minor_formatter(NullFormatter())
    by_energy.set_xlabel("energy (TeV)")
    by_energy.set_ylabel(RATE_LABEL)
    by_energy.set_title("against energy, at bin offsets")
    # Line styles explained once, below the colour legends.
    from matplotlib.lines import Line2D

    style = [
        Line2D(
            [], [], color="k", lw=1.5, label="bkgdb" + (" (band: 1$\\sigma$ counts)" if relative is not None else "")
        )
    ]
    if curves.unsmoothed is not None:
        style.append(Line2D([], [], color="k", marker="o", ls="none", mfc="none", ms=3.5, label="bkgdb unsmoothed"))
    if ref is not None:
        style.append(Line2D([], [], color="k", ls="--", lw=1.2, label=reference_label))
    shown_rates = [rate[i][rate[i] > 0] for i in energy_picks] + [rate[:, j][rate[:, j] > 0] for j in offset_picks]
    low = min(values.min() for values in shown_rates if values.size)
    high = max(values.max() for values in shown_rates if values.size)
    for axes in (by_offset, by_energy):
        axes.grid(alpha=0.3, which="major", lw=0.5)
        # A reference model far below bkgdb's range (e.g. ~0 under its threshold) must not squash the curves.
        axes.set_ylim(low / 30, high * 5)
        axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=4, frameon=False)
    figure.suptitle(curves.label)
    figure.tight_layout(rect=(0, 0.05, 1, 1))
    figure.legend(handles=style, loc="lower center", ncol=len(style), frameon=False)
    return finish(figure, path)


@styled
def plot_model_3d(
    background: Background3D,
    path: str | Path | None = None,
    title: str = "",
    alignment: str | None = None,
    n_bands: int = 6,
) -> Figure:
    """One FoV image per energy band of a `gammapy.irf.Background3D`, with the FoV alignment written on it."""
    from matplotlib.colors import LogNorm

    energy_axis = background.axes["energy"]
    lon = background.axes["fov_lon"].edges.to_value("deg")
    lat = background.axes["fov_lat"].edges.to_value("deg")
    data = background.quantity.to_value(RATE_UNIT)
    filled = [i for i in range(energy_axis.nbin) if (data[i] > 0).any()]
    if not filled:
        raise BkgdbError("the model has no bins with a rate to plot")
    picks = spread_picks(filled, n_bands)
    columns = min(3, len(picks))
    rows = math.ceil(len(picks) / columns)
    figure = new_figure(3.4 * columns + 0.6, 3.1 * rows + 0.5)
    grid = figure.subplots(rows, columns, squeeze=False)
    alignment = alignment or getattr(getattr(background, "fov_alignment", None), "value", None) or "unknown"
    edges = energy_axis.edges.to_value("TeV")
    for axes in grid.flat[len(picks) :]:
        axes.set_visible(False)
    for axes, index in zip(grid.flat, picks, strict=False):
        image = data[index]
        positive = image[image > 0]
        norm = LogNorm(positive.min(), positive.max()) if positive.size and positive.max() > positive.min() else None
        shown = axes.pcolormesh(
            lon, lat, np.ma.masked_less_equal(image.T, 0), norm=norm, cmap="viridis", shading="flat"
        )
        figure.colorbar(shown, ax=axes, label=r"rate (s$^{-1}$ MeV$^{-1}$ sr$^{-1}$)", fraction=0.046, pad=0.03)
        axes.set_aspect("equal")
        axes.set_title(f"{edges[index]:.3g}-{edges[index + 1]:.3g} TeV")
        axes.set_xlabel("FoV lon (deg)")
        axes.set_ylabel("FoV lat (deg)")
        axes.text(
            0.03,
            0.97,
            f"FoV alignment: {alignment}",
            transform=axes.transAxes,
            va="top",
            ha="left",
            fontsize=8,
            color="white",
            bbox={"facecolor": "black", "alpha": 0.5, "lw": 0},
        )
    figure.suptitle(title or "Background3D")
    figure.tight_layout()
    return finish(figure, path)
