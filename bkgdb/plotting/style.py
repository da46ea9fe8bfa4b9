"""What every bkgdb figure shares: a pyplot-free figure, font sizes, saving by suffix, rate units.

Figures are made on the Agg canvas directly, not with pyplot: no global figure state, no display
needed, and a user's pyplot backend is left alone. matplotlib is imported inside the functions,
so importing bkgdb never pulls it in.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import numpy as np

from bkgdb.errors import BkgdbError
from bkgdb.outputs import write_output

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "FIGURE_SUFFIXES",
    "RATE_LABEL",
    "RATE_UNIT",
    "STYLE",
    "new_figure",
    "styled",
    "save_figure",
    "finish",
    "spread_picks",
    "mjd_dates",
]

FIGURE_SUFFIXES = (".png", ".pdf", ".svg")
RATE_LABEL = r"background rate (s$^{-1}$ MeV$^{-1}$ sr$^{-1}$)"
RATE_UNIT = "s-1 MeV-1 sr-1"
# Readable at a journal's column width once the figure is scaled down.
STYLE: dict[Any, Any] = {
    "font.size": 10,
    "axes.labelsize": 10,
    "axes.titlesize": 10,
    "legend.fontsize": 8,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
}
MJD_EPOCH = datetime(1858, 11, 17)

P = ParamSpec("P")
R = TypeVar("R")


def new_figure(width: float, height: float, **kwargs: Any) -> Figure:
    """A pyplot-free figure (Agg canvas) of ``width`` x ``height`` inches with bkgdb's font sizes."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with matplotlib.rc_context(STYLE):
        figure = Figure(figsize=(width, height), **kwargs)
    FigureCanvasAgg(figure)
    return figure


def styled(function: Callable[P, R]) -> Callable[P, R]:
    """Run a plot function with bkgdb's font sizes in effect."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        import matplotlib

        with matplotlib.rc_context(STYLE):
            return function(*args, **kwargs)

    return wrapper


def save_figure(figure: Figure, path: str | Path, dpi: int = 100, overwrite: bool = True) -> Path:
    """Save ``figure`` to ``path``: PNG, PDF or SVG by its suffix.

    Drawn beside ``path`` and then put in its place (`~bkgdb.outputs.write_output`): a failed drawing
    leaves an earlier figure whole, and without ``overwrite`` no file that exists by then is replaced.

    Raises
    ------
    BkgdbError
        The suffix is none of `FIGURE_SUFFIXES`.
    """
    path = Path(path)
    if path.suffix.lower() not in FIGURE_SUFFIXES:
        raise BkgdbError(f"cannot tell the figure format of {path}: name it .png, .pdf or .svg")
    path.parent.mkdir(parents=True, exist_ok=True)
    extra: dict[str, Any] = {"pil_kwargs": {"optimize": True}} if path.suffix.lower() == ".png" else {}
    return write_output(
        path, lambda temporary: figure.savefig(temporary, dpi=dpi, bbox_inches="tight", **extra), overwrite
    )


def finish(figure: Figure, path: str | Path | None) -> Figure:
    """``figure``, saved to ``path`` first unless it is None."""
    if path is not None:
        save_figure(figure, path)
    return figure


def spread_picks(indices: Iterable[int], count: int) -> list[int]:
    """Up to ``count`` entries of ``indices``, evenly spread from first to last."""
    indices = list(indices)
    if len(indices) <= count:
        return indices
    picks = np.unique(np.round(np.linspace(0, len(indices) - 1, count)).astype(int))
    return [indices[i] for i in picks]


def mjd_dates(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """UTC datetimes of MJD values (an object array matplotlib plots as dates)."""
    return np.array([MJD_EPOCH + timedelta(days=float(value)) for value in values], dtype=object)
