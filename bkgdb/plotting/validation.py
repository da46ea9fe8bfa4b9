"""The figure of a validation: per-run FoV norms against zenith and time, and their histogram.

`read_validation_table` reads the rows ``bkgdb validate -o`` wrote (CSV or JSON) back for it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bkgdb.errors import BkgdbError
from bkgdb.plotting.style import finish, mjd_dates, new_figure, styled

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["read_validation_table", "plot_validation"]


def _number(value: Any) -> float:
    if value is None or value == "":
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def read_validation_table(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a CSV or JSON file written by ``bkgdb validate -o``, numbers as floats (NaN when missing)."""
    import csv
    import json

    from bkgdb.validation import ROW_COLUMNS, rows_file_format

    path = Path(path)
    if not path.is_file():
        raise BkgdbError(f"validation table {path} does not exist")
    # No --format here (unlike validate's -o): the suffix alone says which.
    fmt = rows_file_format(path, remedy="give the .csv or .json table that `bkgdb validate -o FILE.csv|.json` writes")
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


@styled
def plot_validation(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path | None = None,
    start_mjd: Mapping[int, float] | None = None,
    title: str | None = None,
) -> Figure:
    """Per-run FoV norms against zenith and time, and their histogram; bkgdb beside the file's model.

    Parameters
    ----------
    rows : list of dict
        Validation rows (`bkgdb.validation.ROW_COLUMNS`), e.g. from `read_validation_table`.
    start_mjd : dict, optional
        OBS_ID -> run start (MJD); without it the middle panel shows the norms in OBS_ID order.
    """

    def column(key: str, subset: Sequence[Mapping[str, Any]]) -> np.ndarray:
        return np.array([_number(row.get(key)) for row in subset], float)

    fitted = [row for row in rows if np.isfinite(_number(row.get("norm")))]
    if not fitted:
        raise BkgdbError("no run in the validation table has a fitted norm")
    figure = new_figure(13, 4.2)
    by_zenith, by_time, histogram = figure.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1, 0.8]})
    zenith = column("zenith_deg", fitted)
    if start_mjd:
        when = np.array([start_mjd.get(row["obs_id"], math.nan) for row in fitted], float)
        x_time = np.array(mjd_dates(np.nan_to_num(when)), dtype=object)
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
        style: dict[str, Any] = {"fmt": marker, "ms": 3.5, "color": colour, "elinewidth": 0.8, "capsize": 0}
        by_zenith.errorbar(zenith[good] + shift, norm[good], yerr=np.nan_to_num(error[good]), label=label, **style)
        use = good & time_ok
        by_time.errorbar(x_time[use], norm[use], yerr=np.nan_to_num(error[use]), **style)
        values = norm[good]
        if bins is None:
            low, high = min(values.min(), 0.8), max(values.max(), 1.2)
            bins = np.linspace(low - 0.02, high + 0.02, max(8, min(30, len(values) // 2)))
        spread = f"{values.mean():.3f}, std {values.std(ddof=1):.3f}" if len(values) > 1 else f"{values.mean():.3f}"
        histogram.hist(
            values,
            bins=bins,
            histtype="step",
            lw=1.5,
            color=colour,
            label=f"{label}: {len(values)} runs,\nmean {spread}",
        )
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
    figure.suptitle(
        title
        or f"FoV background norms of {len(fitted)} runs (1: the model predicts the counts)"
        + (f"; {n_missing} without background or fit" if n_missing else "")
    )
    figure.tight_layout()
    return finish(figure, path)
