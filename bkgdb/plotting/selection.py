"""The figure of a run selection: every candidate in zenith/azimuth and in time, by why it was removed."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bkgdb.plotting.style import finish, mjd_dates, new_figure, styled

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from matplotlib.projections.polar import PolarAxes

    from bkgdb.store.funnel import FunnelPicture

__all__ = ["plot_selection"]


@styled
def plot_selection(picture: FunnelPicture, path: str | Path | None = None) -> Figure:
    """Every candidate run in zenith/azimuth (polar) and in time, coloured by the criterion that removed it.

    Parameters
    ----------
    picture : `~bkgdb.store.funnel.FunnelPicture`
        The candidates, the first criterion each failed, the selected runs and the target.

    Returns
    -------
    figure : `matplotlib.figure.Figure`
    """
    figure = new_figure(11, 5)
    sky: PolarAxes = figure.add_subplot(1, 2, 1, projection="polar")  # type: ignore[assignment]
    timeline = figure.add_subplot(1, 2, 2)
    sky.set_theta_zero_location("N")
    sky.set_theta_direction(-1)
    groups = picture.groups()
    colours: dict[str, str] = {}
    palette = ["0.6", "C1", "C3", "C4", "C5", "C6", "C8", "C9", "C7", "C2"]
    for name, _ in groups:
        if name != picture.SELECTED:
            colours[name] = palette[len(colours) % len(palette)]
    zenith_max = 10.0
    for name, fates in groups:
        selected = name == picture.SELECTED
        # Runs without a pointing or a start time are counted in the legend but not drawn.
        pointing = np.array(
            [(f.az_deg, f.zenith_deg) for f in fates if f.zenith_deg is not None and f.az_deg is not None], float
        ).reshape(-1, 2)
        timed = np.array(
            [(f.tstart_mjd, f.zenith_deg) for f in fates if f.tstart_mjd is not None and f.zenith_deg is not None],
            float,
        ).reshape(-1, 2)
        style: dict[str, Any] = (
            {"color": "C2", "marker": "o", "s": 26, "edgecolor": "k", "linewidths": 0.5, "zorder": 3}
            if selected
            else {"color": colours[name], "marker": "o", "s": 12, "alpha": 0.8, "zorder": 2}
        )
        sky.scatter(np.radians(pointing[:, 0]), pointing[:, 1], label=f"{name} ({len(fates)})", **style)
        zenith_max = max([zenith_max, *pointing[:, 1]])
        timeline.scatter(mjd_dates(timed[:, 0]), timed[:, 1], **style)
    target = picture.target
    star: dict[str, Any] = {"marker": "*", "s": 220, "color": "gold", "edgecolor": "k", "linewidths": 0.8, "zorder": 4}
    if target.zenith_deg is not None and target.az_deg is not None:
        sky.scatter([math.radians(target.az_deg)], [target.zenith_deg], label=f"target {target.obs_id}", **star)
        zenith_max = max(zenith_max, target.zenith_deg)
    if target.tstart_mjd is not None and target.zenith_deg is not None:
        timeline.scatter(mjd_dates([target.tstart_mjd]), [target.zenith_deg], **star)
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
    figure.legend(
        *sky.get_legend_handles_labels(),
        loc="lower center",
        ncol=min(4, len(groups) + 1),
        frameon=False,
        title="first criterion that removed the run",
    )
    figure.suptitle(picture.title)
    figure.tight_layout(rect=(0, 0.06 + 0.05 * math.ceil((len(groups) + 1) / 4), 1, 1))
    return finish(figure, path)
