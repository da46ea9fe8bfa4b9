"""Figures of background models, selections, validations and significance maps, and the HTML report.

One module per kind of figure (`models`, `selection`, `validation`, `significance`), `runs` for the
figures of one catalogued run built on the way, `style` for what they share and `report` for the
validation report. The public names are importable from here. matplotlib is imported only when a
figure is made.
"""

from bkgdb.plotting.models import (
    ModelCurves,
    model_curves,
    model_curves_from_file,
    plot_model,
    plot_model_3d,
    reference_rate,
)
from bkgdb.plotting.runs import plot_run_model, plot_run_selection, run_significance_maps, run_start_times
from bkgdb.plotting.selection import plot_selection
from bkgdb.plotting.significance import SignificanceMaps, li_ma_known_background, plot_significance, significance_maps
from bkgdb.plotting.style import FIGURE_SUFFIXES, RATE_LABEL, save_figure
from bkgdb.plotting.validation import plot_validation, read_validation_table

__all__ = [
    "ModelCurves",
    "model_curves",
    "model_curves_from_file",
    "reference_rate",
    "plot_model",
    "plot_model_3d",
    "plot_selection",
    "plot_validation",
    "read_validation_table",
    "significance_maps",
    "SignificanceMaps",
    "plot_significance",
    "li_ma_known_background",
    "plot_run_model",
    "plot_run_selection",
    "run_significance_maps",
    "run_start_times",
    "save_figure",
    "FIGURE_SUFFIXES",
    "RATE_LABEL",
]
