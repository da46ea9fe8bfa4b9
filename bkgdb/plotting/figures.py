"""Figures of background models, run selections, validations and significance maps.

Every function takes real objects (a `~bkgdb.background.BuiltBackground`, a gammapy background,
validation rows, a gammapy observation), returns a `matplotlib.figure.Figure` and, given a path,
saves it (PNG, PDF or SVG by the suffix). matplotlib is imported here only, with figures made
without pyplot (no global state, no display needed), so importing bkgdb never pulls it in.
"""

import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from bkgdb.errors import BkgdbError

__all__ = ["ModelCurves", "model_curves", "model_curves_from_file", "reference_rate", "plot_model",
           "plot_model_3d", "plot_selection", "plot_validation", "read_validation_table", "significance_maps",
           "SignificanceMaps", "plot_significance", "li_ma_known_background", "plot_run_model", "plot_run_selection",
           "run_significance_maps", "run_start_times", "save_figure", "FIGURE_SUFFIXES", "RATE_LABEL"]

log = logging.getLogger(__name__)

FIGURE_SUFFIXES = (".png", ".pdf", ".svg")
RATE_LABEL = r"background rate (s$^{-1}$ MeV$^{-1}$ sr$^{-1}$)"
RATE_UNIT = "s-1 MeV-1 sr-1"
# Readable at a journal's column width once the figure is scaled down.
STYLE = {"font.size": 10, "axes.labelsize": 10, "axes.titlesize": 10, "legend.fontsize": 8,
         "xtick.labelsize": 9, "ytick.labelsize": 9}
MJD_EPOCH = datetime(1858, 11, 17)


def _figure(width, height, **kwargs):
    """A pyplot-free figure (Agg canvas) with the module's font sizes."""
    # The Agg canvas directly, not pyplot: no global figure state, and a user's pyplot backend is left alone.
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with matplotlib.rc_context(STYLE):
        figure = Figure(figsize=(width, height), **kwargs)
    FigureCanvasAgg(figure)
    return figure


def _styled(function):
    """Run a plot function with the module's font sizes in effect."""
    import functools

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context(STYLE):
            return function(*args, **kwargs)

    return wrapper


def save_figure(figure, path, dpi=100):
    """Save ``figure`` to ``path``: PNG, PDF or SVG by its suffix.

    Raises
    ------
    BkgdbError
        The suffix is none of `FIGURE_SUFFIXES`.
    """
    path = Path(path)
    if path.suffix.lower() not in FIGURE_SUFFIXES:
        raise BkgdbError(f"cannot tell the figure format of {path}: name it .png, .pdf or .svg")
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {"pil_kwargs": {"optimize": True}} if path.suffix.lower() == ".png" else {}
    figure.savefig(path, dpi=dpi, bbox_inches="tight", **extra)
    return path


def _finish(figure, path):
    if path is not None:
        save_figure(figure, path)
    return figure


def _spread(indices, count):
    """Up to ``count`` entries of ``indices``, evenly spread from first to last."""
    indices = list(indices)
    if len(indices) <= count:
        return indices
    picks = np.unique(np.round(np.linspace(0, len(indices) - 1, count)).astype(int))
    return [indices[i] for i in picks]


# -- background models -------------------------------------------------------------------------


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
    def energy_centres(self):
        return np.sqrt(self.energy_edges[1:] * self.energy_edges[:-1])

    @property
    def offset_centres(self):
        return 0.5 * (self.offset_edges[1:] + self.offset_edges[:-1])

    @property
    def relative_error(self):
        """Poisson error of each bin relative to its value, from the summed counts (1 for empty bins)."""
        if self.counts is None:
            return None
        return 1.0 / np.sqrt(np.maximum(np.asarray(self.counts, float), 1.0))


def model_curves(built) -> ModelCurves:
    """`ModelCurves` of a `~bkgdb.background.BuiltBackground`: its rate, counts and, when smoothed, the raw sum."""
    assembled = built.assembled
    binning = assembled.binning
    smoothed = built.smoothing not in (None, "none")
    selection = built.selection
    label = (f"run {built.target.obs_id}: bkgdb model from {len(selection.obs_ids)} runs "
             f"({assembled.ontime_s / 3600:.1f} h), smoothing {built.smoothing}")
    return ModelCurves(np.asarray(binning.energy_edges, float), np.asarray(binning.offset_edges, float),
                       np.asarray(built.rate, float), np.asarray(assembled.counts, float),
                       np.asarray(assembled.rate, float) if smoothed else None, label)


def _read_background(path):
    """The BACKGROUND (or first background) HDU of a file: a gammapy Background2D or Background3D and its header."""
    from astropy.io import fits
    from gammapy.irf import Background2D, Background3D

    path = Path(path)
    if not path.is_file():
        raise BkgdbError(f"background file {path} does not exist")
    try:
        with fits.open(path) as hdus:
            names = [hdu.name for hdu in hdus]
            name = next((n for n in ("BACKGROUND", "BKG") if n in names), None)
            if name is None:
                raise BkgdbError(f"{path} has no BACKGROUND or BKG HDU (it has {', '.join(names)})")
            header = hdus[name].header.copy()
            kind = header.get("HDUCLAS4", "")
    except OSError as exc:
        raise BkgdbError(f"cannot read {path}: {exc}") from None
    reader = Background3D if kind.upper() == "BKG_3D" else Background2D
    return reader.read(path, hdu=name), header


def model_curves_from_file(path):
    """A background FITS file (as `bkgdb background` writes): `ModelCurves` for a 2D model, else the Background3D.

    Returns
    -------
    model : `ModelCurves` or `gammapy.irf.Background3D`
    header : `astropy.io.fits.Header`
    """
    from gammapy.irf import Background3D

    model, header = _read_background(path)
    if isinstance(model, Background3D):
        return model, header
    energy = model.axes["energy"].edges.to_value("TeV")
    offset = model.axes["offset"].edges.to_value("deg")
    label = f"{Path(path).name}"
    if "BKG_TGT" in header:
        label = (f"run {header['BKG_TGT']}: bkgdb model from {header.get('BKG_NRUN', '?')} runs "
                 f"({header.get('BKG_ONT', 0) / 3600:.1f} h), smoothing {header.get('BKG_SMTH', '?')}")
    return ModelCurves(energy, offset, model.quantity.to_value(RATE_UNIT), label=label), header


def reference_rate(background, energy_tev, offset_deg, n_azimuth=36):
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


@_styled
def plot_model(curves: ModelCurves, reference=None, reference_label="model in the run file", path=None,
               n_curves=4):
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
    figure = _figure(10, 4.2)
    by_offset, by_energy = figure.subplots(1, 2)
    energies, offsets = curves.energy_centres, curves.offset_centres
    rate = curves.rate
    filled_e = [i for i in range(len(energies)) if (rate[i] > 0).sum() >= 2]
    if curves.counts is not None:
        # Energies with real statistics: filled-in bins below threshold or above the last events say little.
        counts = np.asarray(curves.counts, float)
        totals, covered = counts.sum(axis=1), (counts > 0).mean(axis=1)
        filled_e = [i for i in filled_e if totals[i] >= max(10.0, 1e-3 * totals.max()) and covered[i] >= 0.75] \
            or filled_e
    filled_o = [j for j in range(len(offsets)) if (rate[:, j] > 0).sum() >= 2]
    if not filled_e or not filled_o:
        raise BkgdbError("the model has no bins with a rate to plot")
    energy_picks, offset_picks = _spread(filled_e, n_curves), _spread(filled_o, n_curves)
    ref = reference_rate(reference, energies, offsets) if reference is not None else None
    relative = curves.relative_error
    colours = ["C0", "C1", "C2", "C3", "C4", "C5", "C6", "C8"]

    def draw(axes, x, rows, label_of, along):
        for colour, index in zip(colours, rows):
            y = rate[index] if along == "offset" else rate[:, index]
            shown = y > 0
            axes.plot(x[shown], y[shown], "-", color=colour, lw=1.5, label=label_of(index))
            if relative is not None:
                r = relative[index] if along == "offset" else relative[:, index]
                # Floored at a tenth of the value: a log axis cannot show a band down to 0.
                axes.fill_between(x[shown], (y * np.clip(1 - r, 0.1, None))[shown], (y * (1 + r))[shown],
                                  color=colour, alpha=0.2, lw=0)
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

    style = [Line2D([], [], color="k", lw=1.5,
                    label="bkgdb" + (" (band: 1$\\sigma$ counts)" if relative is not None else ""))]
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
    return _finish(figure, path)


@_styled
def plot_model_3d(background, path=None, title="", alignment=None, n_bands=6):
    """One FoV image per energy band of a `gammapy.irf.Background3D`, with the FoV alignment written on it."""
    from matplotlib.colors import LogNorm

    energy_axis = background.axes["energy"]
    lon = background.axes["fov_lon"].edges.to_value("deg")
    lat = background.axes["fov_lat"].edges.to_value("deg")
    data = background.quantity.to_value(RATE_UNIT)
    filled = [i for i in range(energy_axis.nbin) if (data[i] > 0).any()]
    if not filled:
        raise BkgdbError("the model has no bins with a rate to plot")
    picks = _spread(filled, n_bands)
    columns = min(3, len(picks))
    rows = math.ceil(len(picks) / columns)
    figure = _figure(3.4 * columns + 0.6, 3.1 * rows + 0.5)
    grid = figure.subplots(rows, columns, squeeze=False)
    alignment = alignment or getattr(getattr(background, "fov_alignment", None), "value", None) or "unknown"
    edges = energy_axis.edges.to_value("TeV")
    for axes in grid.flat[len(picks):]:
        axes.set_visible(False)
    for axes, index in zip(grid.flat, picks):
        image = data[index]
        positive = image[image > 0]
        norm = LogNorm(positive.min(), positive.max()) if positive.size and positive.max() > positive.min() else None
        shown = axes.pcolormesh(lon, lat, np.ma.masked_less_equal(image.T, 0), norm=norm, cmap="viridis",
                                shading="flat")
        figure.colorbar(shown, ax=axes, label=r"rate (s$^{-1}$ MeV$^{-1}$ sr$^{-1}$)", fraction=0.046, pad=0.03)
        axes.set_aspect("equal")
        axes.set_title(f"{edges[index]:.3g}-{edges[index + 1]:.3g} TeV")
        axes.set_xlabel("FoV lon (deg)")
        axes.set_ylabel("FoV lat (deg)")
        axes.text(0.03, 0.97, f"FoV alignment: {alignment}", transform=axes.transAxes, va="top", ha="left",
                  fontsize=8, color="white", bbox={"facecolor": "black", "alpha": 0.5, "lw": 0})
    figure.suptitle(title or "Background3D")
    figure.tight_layout()
    return _finish(figure, path)


# -- run selections ----------------------------------------------------------------------------


def _mjd_dates(values):
    return [MJD_EPOCH + timedelta(days=float(value)) for value in values]


@_styled
def plot_selection(picture, path=None):
    """Every candidate run in zenith/azimuth (polar) and in time, coloured by the criterion that removed it.

    Parameters
    ----------
    picture : `~bkgdb.store.funnel.FunnelPicture`
        The candidates, the first criterion each failed, the selected runs and the target.

    Returns
    -------
    figure : `matplotlib.figure.Figure`
    """
    figure = _figure(11, 5)
    sky = figure.add_subplot(1, 2, 1, projection="polar")
    timeline = figure.add_subplot(1, 2, 2)
    sky.set_theta_zero_location("N")
    sky.set_theta_direction(-1)
    groups = picture.groups()
    colours = {}
    palette = ["0.6", "C1", "C3", "C4", "C5", "C6", "C8", "C9", "C7", "C2"]
    for name, _ in groups:
        if name != picture.SELECTED:
            colours[name] = palette[len(colours) % len(palette)]
    zenith_max = 10.0
    for name, fates in groups:
        selected = name == picture.SELECTED
        with_pointing = [f for f in fates if f.zenith_deg is not None and f.az_deg is not None]
        style = ({"color": "C2", "marker": "o", "s": 26, "edgecolor": "k", "linewidths": 0.5, "zorder": 3}
                 if selected else {"color": colours[name], "marker": "o", "s": 12, "alpha": 0.8, "zorder": 2})
        label = f"{name} ({len(fates)})"
        sky.scatter(np.radians([f.az_deg for f in with_pointing]), [f.zenith_deg for f in with_pointing],
                    label=label, **style)
        zenith_max = max([zenith_max] + [f.zenith_deg for f in with_pointing])
        timed = [f for f in fates if f.tstart_mjd is not None and f.zenith_deg is not None]
        timeline.scatter(_mjd_dates([f.tstart_mjd for f in timed]), [f.zenith_deg for f in timed], **style)
    target = picture.target
    if target.zenith_deg is not None and target.az_deg is not None:
        sky.scatter([math.radians(target.az_deg)], [target.zenith_deg], marker="*", s=220, color="gold",
                    edgecolor="k", linewidths=0.8, zorder=4, label=f"target {target.obs_id}")
        zenith_max = max(zenith_max, target.zenith_deg)
    if target.tstart_mjd is not None and target.zenith_deg is not None:
        timeline.scatter(_mjd_dates([target.tstart_mjd]), [target.zenith_deg], marker="*", s=220, color="gold",
                         edgecolor="k", linewidths=0.8, zorder=4)
    sky.set_rlim(0, min(90.0, math.ceil(zenith_max / 10.0 + 0.2) * 10.0))
    sky.set_xlabel("azimuth (deg, N up, E right); radius: zenith angle (deg)")
    sky.set_title("zenith and azimuth", pad=14)
    timeline.set_xlabel("run start (UTC date)")
    timeline.set_ylabel("zenith angle (deg)")
    timeline.set_title("in time")
    timeline.grid(alpha=0.3, lw=0.5)
    timeline.invert_yaxis()
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator()
    timeline.xaxis.set_major_locator(locator)
    timeline.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    timeline.tick_params(axis="x", labelrotation=30)  # dates of a single night are long
    figure.legend(*sky.get_legend_handles_labels(), loc="lower center", ncol=min(4, len(groups) + 1), frameon=False,
                  title="first criterion that removed the run")
    figure.suptitle(picture.title)
    figure.tight_layout(rect=(0, 0.06 + 0.05 * math.ceil((len(groups) + 1) / 4), 1, 1))
    return _finish(figure, path)


# -- validation --------------------------------------------------------------------------------


def _number(value):
    if value is None or value == "":
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def read_validation_table(path):
    """Rows of a CSV or JSON file written by ``bkgdb validate -o``, numbers as floats (NaN when missing)."""
    import csv
    import json

    from bkgdb.validation import ROW_COLUMNS, rows_file_format

    path = Path(path)
    if not path.is_file():
        raise BkgdbError(f"validation table {path} does not exist")
    fmt = rows_file_format(path)
    try:
        if fmt == "json":
            rows = json.loads(path.read_text())
        else:
            with path.open(newline="") as handle:
                rows = list(csv.DictReader(handle))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BkgdbError(f"cannot read the validation table {path}: {exc}") from None
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise BkgdbError(f"{path} is not a list of validation rows")
    missing = [column for column in ("obs_id", "zenith_deg", "norm", "norm_error") if rows and column not in rows[0]]
    if missing:
        raise BkgdbError(f"{path} is not a bkgdb validation table: no column {', '.join(missing)}")
    text = {"object", "status", "normalisation", "norm_region", "reason"}
    clean = []
    for row in rows:
        entry = {key: (row.get(key) if key in text else _number(row.get(key))) for key in ROW_COLUMNS}
        entry["obs_id"] = int(entry["obs_id"]) if math.isfinite(entry["obs_id"]) else None
        clean.append(entry)
    return clean


@_styled
def plot_validation(rows, path=None, start_mjd=None, title=None):
    """Per-run FoV norms against zenith and time, and their histogram; bkgdb beside the file's model.

    Parameters
    ----------
    rows : list of dict
        Validation rows (`bkgdb.validation.ROW_COLUMNS`), e.g. from `read_validation_table`.
    start_mjd : dict, optional
        OBS_ID -> run start (MJD); without it the middle panel shows the norms in OBS_ID order.
    """
    def column(key, subset):
        return np.array([_number(row.get(key)) for row in subset], float)

    fitted = [row for row in rows if np.isfinite(_number(row.get("norm")))]
    if not fitted:
        raise BkgdbError("no run in the validation table has a fitted norm")
    figure = _figure(13, 4.2)
    by_zenith, by_time, histogram = figure.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1, 0.8]})
    zenith = column("zenith_deg", fitted)
    if start_mjd:
        when = np.array([start_mjd.get(row["obs_id"], math.nan) for row in fitted], float)
        x_time = np.array(_mjd_dates(np.nan_to_num(when)), dtype=object)
        time_ok = np.isfinite(when)
    else:
        x_time = np.array([row["obs_id"] for row in fitted], float)
        time_ok = np.ones(len(fitted), bool)
    series = [("bkgdb", "norm", "norm_error", "C0", "o")]
    if np.isfinite(column("file_norm", fitted)).any():
        series.append(("model in the run file", "file_norm", "file_norm_error", "C3", "s"))
    bins = None
    for number, (label, key, error_key, colour, marker) in enumerate(series):
        norm, error = column(key, fitted), column(error_key, fitted)
        good = np.isfinite(norm)
        shift = 0.4 * (number - (len(series) - 1) / 2)  # side by side, not on top of each other
        by_zenith.errorbar(zenith[good] + shift, norm[good], yerr=np.nan_to_num(error[good]), fmt=marker, ms=3.5,
                           color=colour, elinewidth=0.8, capsize=0, label=label)
        use = good & time_ok
        by_time.errorbar(x_time[use], norm[use], yerr=np.nan_to_num(error[use]), fmt=marker, ms=3.5, color=colour,
                         elinewidth=0.8, capsize=0)
        values = norm[good]
        if bins is None:
            low, high = min(values.min(), 0.8), max(values.max(), 1.2)
            bins = np.linspace(low - 0.02, high + 0.02, max(8, min(30, len(values) // 2)))
        spread = f"{values.mean():.3f}, std {values.std(ddof=1):.3f}" if len(values) > 1 else f"{values.mean():.3f}"
        histogram.hist(values, bins=bins, histtype="step", lw=1.5, color=colour,
                       label=f"{label}: {len(values)} runs,\nmean {spread}")
    for axes in (by_zenith, by_time):
        axes.axhline(1.0, color="k", lw=0.8, ls=":")
        axes.set_ylabel("FoV background norm")
        axes.grid(alpha=0.3, lw=0.5)
    histogram.axvline(1.0, color="k", lw=0.8, ls=":")
    by_zenith.set_xlabel("zenith angle (deg)")
    by_zenith.legend(frameon=False, loc="best")
    if start_mjd:
        import matplotlib.dates as mdates

        locator = mdates.AutoDateLocator()
        by_time.xaxis.set_major_locator(locator)
        by_time.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        by_time.tick_params(axis="x", labelrotation=30)  # dates of a single night are long
        by_time.set_xlabel("run start (UTC date)")
    else:
        by_time.set_xlabel("OBS_ID")
    histogram.set_xlabel("FoV background norm")
    histogram.set_ylabel("runs")
    histogram.legend(frameon=False, loc="upper left", fontsize=7)
    n_missing = len(rows) - len(fitted)
    figure.suptitle(title or f"FoV background norms of {len(fitted)} runs (1: the model predicts the counts)"
                    + (f"; {n_missing} without background or fit" if n_missing else ""))
    figure.tight_layout()
    return _finish(figure, path)


# -- significance ------------------------------------------------------------------------------


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
    energy_range_tev : tuple
    """

    geom: object
    counts: np.ndarray
    background: np.ndarray
    significance: np.ndarray
    usable: np.ndarray
    norm: float
    correlation_radius_deg: float
    energy_range_tev: tuple
    obs_id: int

    def distribution_fit(self):
        """(mean, width) of a Gaussian fitted to the significances of the usable pixels."""
        from scipy.stats import norm as gaussian

        values = self.significance[self.usable & np.isfinite(self.significance)]
        if values.size < 2:
            raise BkgdbError("too few usable pixels for a significance distribution")
        mean, width = gaussian.fit(values)
        return float(mean), float(width)


def li_ma_known_background(n_on, mu):
    """Li & Ma (1983) eq. 17 in the limit of a perfectly known background ``mu``: signed significance."""
    n_on, mu = np.asarray(n_on, float), np.asarray(mu, float)
    significance = np.full(n_on.shape, np.nan)
    ok = mu > 0
    n, m = n_on[ok], mu[ok]
    term = np.where(n > 0, n * np.log(np.where(n > 0, n, 1.0) / m), 0.0)
    significance[ok] = np.sign(n - m) * np.sqrt(np.maximum(2 * (term - (n - m)), 0.0))
    return significance


def significance_maps(observation, excluded, energy_range_tev=(0.5, 10.0), binsz_deg=0.02, offset_max_deg=2.0,
                      correlation_radius_deg=0.1) -> SignificanceMaps:
    """Counts against the background prediction of an observation, and the Li & Ma significance per pixel.

    The maps are made with gammapy's `MapDatasetMaker` (the observation's own ``bkg``, e.g. bkgdb's
    model), inside ``offset_max_deg`` and the effective area's safe energy range (as `bkgdb validate`
    fits); the background is scaled by a `FoVBackgroundMaker` norm
    fitted outside the ``excluded`` circles (ra, dec, radius in deg); counts and background are
    summed over a disk of ``correlation_radius_deg`` around each pixel.
    """
    from astropy import units as u
    from gammapy.datasets import MapDataset
    from gammapy.makers import FoVBackgroundMaker, MapDatasetMaker, SafeMaskMaker
    from gammapy.maps import MapAxis, WcsGeom
    from scipy.signal import fftconvolve

    from bkgdb.validation import outside_circles

    energy = MapAxis.from_energy_bounds(*energy_range_tev, nbin=8, unit="TeV")
    width = 2 * offset_max_deg + 2 * correlation_radius_deg
    geom = WcsGeom.create(skydir=observation.pointing.fixed_icrs, binsz=binsz_deg, width=(width, width), frame="icrs",
                          axes=[energy])
    dataset = MapDatasetMaker(selection=["counts", "background"]).run(
        MapDataset.create(geom, name=str(observation.obs_id)), observation)
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
    y, x = np.mgrid[-pixels:pixels + 1, -pixels:pixels + 1]
    disk = ((x ** 2 + y ** 2) * binsz_deg ** 2 <= correlation_radius_deg ** 2).astype(float)
    n_on = np.rint(fftconvolve(counts, disk, mode="same"))
    mu = fftconvolve(background, disk, mode="same")
    significance = li_ma_known_background(n_on, mu)
    significance[~safe] = np.nan
    usable = safe & outside.data[0]
    return SignificanceMaps(geom.to_image(), n_on, mu, significance, usable, norm, correlation_radius_deg,
                            tuple(energy_range_tev), int(observation.obs_id))


@_styled
def plot_significance(maps: SignificanceMaps, path=None, title=None):
    """Counts map, background map, significance map and the significance distribution with a Gaussian fit."""
    from matplotlib.colors import TwoSlopeNorm
    from scipy.stats import norm as gaussian

    figure = _figure(15, 4.0)
    panels = [figure.add_subplot(1, 4, i + 1, projection=maps.geom.wcs) for i in range(3)]
    histogram = figure.add_subplot(1, 4, 4)
    safe = np.isfinite(maps.significance)
    counts = np.ma.masked_where(~safe, maps.counts)
    background = np.ma.masked_where(~safe, maps.background)
    # A bright source would take the whole colour scale: scaled to the pixels outside the exclusions.
    usable_counts = maps.counts[maps.usable & safe]
    high = max(float(np.percentile(usable_counts, 99.5)) if usable_counts.size else 0.0, float(background.max()), 1.0)
    radius = f"{maps.correlation_radius_deg:g}" + r"$^\circ$"
    for axes, image, label in ((panels[0], counts, f"counts within {radius}"),
                               (panels[1], background, f"predicted background within {radius}")):
        shown = axes.imshow(image, origin="lower", cmap="magma", vmin=0, vmax=high)
        figure.colorbar(shown, ax=axes, label=label, fraction=0.046, pad=0.03)
    limit = max(5.0, float(np.nanmax(np.abs(maps.significance))) if safe.any() else 5.0)
    shown = panels[2].imshow(np.ma.masked_where(~safe, maps.significance), origin="lower", cmap="RdBu_r",
                             norm=TwoSlopeNorm(0.0, -limit, limit))
    figure.colorbar(shown, ax=panels[2], label=r"Li & Ma significance ($\sigma$)", fraction=0.046, pad=0.03)
    excluded = safe & ~maps.usable
    if excluded.any():
        panels[2].contour(excluded.astype(float), levels=[0.5], colors="k", linewidths=0.7)
    for axes, name in zip(panels, ("counts", "background (bkgdb, x FoV norm)", "significance (exclusions outlined)")):
        axes.set_title(name)
        axes.coords[0].set_format_unit("deg", decimal=True)
        axes.coords[0].set_axislabel("RA (deg)")
        axes.coords[1].set_axislabel("Dec (deg)")
    values = maps.significance[maps.usable & safe]
    mean, width = maps.distribution_fit()
    bins = np.linspace(min(-5.0, values.min()), max(5.0, values.max()), 60)
    filled, _, _ = histogram.hist(values, bins=bins, histtype="stepfilled", color="0.75",
                                  label=f"pixels outside exclusions ({values.size})")
    histogram.hist(maps.significance[excluded], bins=bins, histtype="step", color="C3",
                   label=f"excluded pixels ({int(excluded.sum())})")
    grid = np.linspace(bins[0], bins[-1], 300)
    scale = values.size * (bins[1] - bins[0])
    histogram.plot(grid, scale * gaussian.pdf(grid, mean, width), "C0-",
                   label=f"Gaussian fit: mean {mean:.2f}, width {width:.2f}")
    histogram.plot(grid, scale * gaussian.pdf(grid), "k--", lw=1, label="N(0, 1)")
    histogram.set_yscale("log")
    histogram.set_ylim(0.5, max(filled.max(), 1.0) * 300)  # room for the legend above the peak
    histogram.set_xlabel(r"significance ($\sigma$)")
    histogram.set_ylabel("pixels")
    histogram.legend(frameon=False, fontsize=7, loc="upper left")
    histogram.set_title(f"mean {mean:.2f}, width {width:.2f}")
    low, high = maps.energy_range_tev
    figure.suptitle(title or (f"run {maps.obs_id}: {low:g}-{high:g} TeV, correlation radius "
                              f"{maps.correlation_radius_deg:g} deg, FoV norm {maps.norm:.3f}"))
    figure.tight_layout()
    return _finish(figure, path)


# -- figures of one catalogued run (used by the CLI and the validation report) ---------------------


def _target_datastore(catalogue, target):
    """Folder of the datastore holding the catalogue row ``target``."""
    from bkgdb.store.targets import datastore_folder

    return datastore_folder(catalogue, target.datastore_id)


def _observation(datastore, obs_id):
    """The gammapy observation of a run, any IRF optional."""
    from bkgdb.fov_fit import open_datastore  # cached: a report opens one datastore for several runs

    try:
        return open_datastore(str(datastore)).obs(int(obs_id), required_irf="all-optional")
    except Exception as exc:  # noqa: BLE001 -- gammapy raises many kinds; one line says which run and why
        raise BkgdbError(f"gammapy cannot open run {obs_id} of {datastore}: {type(exc).__name__}: {exc}") from None


def plot_run_model(builder, obs_id: int, path=None, datastore=None, with_reference: bool = True):
    """Build run ``obs_id``'s background and plot it beside the model in its own file, if any.

    Returns
    -------
    figure : `matplotlib.figure.Figure`
    built : `~bkgdb.background.BuiltBackground`
    has_reference : bool
        Whether the run file's own model was drawn.
    """
    built = builder.build(obs_id, datastore)
    reference = None
    if with_reference:
        folder = _target_datastore(builder.catalogue, built.target)
        try:
            reference = _observation(folder, obs_id).bkg
        except BkgdbError as exc:
            log.warning("%s: plotted without the file's own model", exc)
    figure = plot_model(model_curves(built), reference=reference, path=path)
    return figure, built, reference is not None


def plot_run_selection(builder, obs_id: int, path=None, datastore=None):
    """The selection funnel of run ``obs_id``, candidate by candidate (`bkgdb.store.funnel`)."""
    from bkgdb.store.funnel import funnel_picture

    return plot_selection(funnel_picture(builder, obs_id, datastore), path=path)


def run_significance_maps(builder, obs_id: int, datastore=None, **kwargs) -> SignificanceMaps:
    """`significance_maps` of run ``obs_id`` with its bkgdb background, its pieces' exclusion regions masked."""
    from bkgdb.store.targets import piece_regions

    built = builder.build(obs_id, datastore)
    with builder.catalogue.session() as session:
        excluded = piece_regions(session, built.target.id, built.binning_id, built.exclusion_id)
    if excluded is None:
        raise BkgdbError(f"run {obs_id} has no piece of its own, so its exclusion regions are unknown: "
                         "index its datastore with --config")
    observation = _observation(_target_datastore(builder.catalogue, built.target), obs_id)
    observation.bkg = built.model
    return significance_maps(observation, excluded, **kwargs)


def run_start_times(catalogue, datastore, obs_ids):
    """OBS_ID -> run start (MJD) of the runs of ``datastore`` in the catalogue."""
    from bkgdb.store.targets import run_start_times as start_times

    return start_times(catalogue, datastore, obs_ids)
