"""``bkgdb plot``: figures of background models, run selections, validations and significance maps.

A typer sub-app registered by `bkgdb.cli.main`; matplotlib and gammapy are imported inside the
commands only, so ``bkgdb --help`` stays quick.
"""

import functools
import logging
from enum import Enum
from pathlib import Path

import typer

from bkgdb.errors import BkgdbError

__all__ = ["plot_app", "bind_plot_app"]

log = logging.getLogger(__name__)

Smoothing = Enum("Smoothing", {name: name for name in ("gauss", "gauss-seed", "poly", "spline", "none")}, type=str)
# The CLI module whose helpers (--db state, error reporting, consoles) the commands use. Bound by
# that module itself: run as ``python -m bkgdb.cli.main`` it is ``__main__``, and a fresh import of
# ``bkgdb.cli.main`` here would be a second copy without the --db given on the command line.
_cli = None


def bind_plot_app(cli_module):
    """The ``plot`` sub-app, its commands using ``cli_module``'s helpers (`bkgdb.cli.main`)."""
    global _cli
    _cli = cli_module
    return plot_app


def _helpers():
    if _cli is None:
        import importlib

        return importlib.import_module("bkgdb.cli.main")
    return _cli


def reports_errors(command):
    """`bkgdb.cli.main.reports_errors`, looked up when the command runs (no import cycle with the CLI module)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        return _helpers().reports_errors(command)(*args, **kwargs)

    return wrapper


def out():
    return _helpers().out


def err():
    return _helpers().err

plot_app = typer.Typer(help="Figures (PNG, PDF or SVG by the output suffix): models, selections, validations, "
                            "significance maps.", no_args_is_help=True)

OUTPUT_HELP = "Figure to write: .png, .pdf or .svg."


def _check_output(output):
    """Refuse an output suffix that is no figure format before any work."""
    from bkgdb.plotting import FIGURE_SUFFIXES

    if output.suffix.lower() not in FIGURE_SUFFIXES:
        raise BkgdbError(f"cannot tell the figure format of {output}: name it .png, .pdf or .svg")


def _builder(config, where, smooth=None):
    from bkgdb.background import BackgroundBuilder

    cli = _helpers()
    settings = cli.with_conditions(cli.read_config(config), where)
    return BackgroundBuilder(cli.open_catalogue(readonly="auto"), settings, smooth=smooth.value if smooth else None)


@plot_app.command("model")
@reports_errors
def model(
    target: str = typer.Argument(..., metavar="OBS_ID|BKG.fits",
                                 help="OBS_ID of an indexed run, or a background file written by `bkgdb background`."),
    output: Path = typer.Option(..., "--output", "-o", help=OUTPUT_HELP),
    config: Path = typer.Option(None, "--config", help="YAML config (needed with an OBS_ID)."),
    datastore: Path = typer.Option(None, "--datastore", help="The run's datastore, if its OBS_ID is in several."),
    smooth: Smoothing = typer.Option(None, "--smooth", help="Smoothing method; default: the config's."),
    where: list[str] = typer.Option(None, "--where", "-w", metavar="COND",
                                    help="Extra selection condition on catalogue columns; repeat to AND."),
    no_reference: bool = typer.Option(False, "--no-reference", help="Leave out the model in the run file."),
):
    """Rate against offset and energy with statistical bands, beside the run file's own model; 3D: FoV images."""
    _check_output(output)
    if not target.strip().lstrip("-").isdigit():
        from bkgdb.plotting import ModelCurves, model_curves_from_file, plot_model, plot_model_3d

        model_or_curves, header = model_curves_from_file(target)
        if isinstance(model_or_curves, ModelCurves):
            plot_model(model_or_curves, path=output)
        else:
            title = f"{Path(target).name}" + (f": run {header['BKG_TGT']}" if "BKG_TGT" in header else "")
            plot_model_3d(model_or_curves, path=output, title=title, alignment=header.get("FOVALIGN"))
        out().print(f"{target} -> {output}", highlight=False, markup=False)
        return
    if config is None:
        raise BkgdbError("plot model OBS_ID needs --config (or give a background FITS file instead)")
    from bkgdb.plotting import plot_run_model

    _, built, has_reference = plot_run_model(_builder(config, where, smooth), int(target), output, datastore,
                                             with_reference=not no_reference)
    beside = "beside the run file's model" if has_reference else "(the run file has no model of its own)"
    out().print(f"run {target}: model from {len(built.selection.obs_ids)} runs {beside} -> {output}",
              highlight=False, markup=False)


@plot_app.command("selection")
@reports_errors
def selection(
    obs_id: int = typer.Argument(..., help="OBS_ID of the target run."),
    config: Path = typer.Option(..., "--config", help="YAML config (background_selection)."),
    output: Path = typer.Option(..., "--output", "-o", help=OUTPUT_HELP),
    datastore: Path = typer.Option(None, "--datastore", help="The run's datastore, if its OBS_ID is in several."),
    where: list[str] = typer.Option(None, "--where", "-w", metavar="COND",
                                    help="Extra selection condition on catalogue columns; repeat to AND."),
):
    """Every candidate run in zenith/azimuth and time, coloured by the first criterion that removed it."""
    _check_output(output)
    from bkgdb.plotting import plot_selection
    from bkgdb.store.funnel import funnel_picture

    picture = funnel_picture(_builder(config, where), obs_id, datastore)
    plot_selection(picture, path=output)
    out().print(f"{picture.title} -> {output}", highlight=False, markup=False)


@plot_app.command("validation")
@reports_errors
def validation(
    table: Path = typer.Argument(..., help="CSV or JSON file written by `bkgdb validate -o`."),
    output: Path = typer.Option(..., "--output", "-o", help=OUTPUT_HELP),
    datastore: Path = typer.Option(None, "--datastore", help="The validated datastore: run start times are read "
                                   "from the catalogue (--db) for the norm-against-time panel; without it: OBS_ID."),
):
    """Per-run FoV norms against zenith and time, and their histogram; bkgdb beside the file's model."""
    _check_output(output)
    from bkgdb.plotting import plot_validation, read_validation_table, run_start_times

    rows = read_validation_table(table)
    times = None
    if datastore is not None:
        times = run_start_times(_helpers().open_catalogue(readonly=True), datastore, [row["obs_id"] for row in rows])
        if not times:
            err().print(f"Warning: no run of {datastore} in the catalogue: norms are shown against OBS_ID",
                      highlight=False, markup=False)
    plot_validation(rows, path=output, start_mjd=times or None)
    out().print(f"{len(rows)} runs of {table} -> {output}", highlight=False, markup=False)


@plot_app.command("significance")
@reports_errors
def significance(
    obs_id: int = typer.Argument(..., help="OBS_ID of the run."),
    config: Path = typer.Option(..., "--config", help="YAML config."),
    output: Path = typer.Option(..., "--output", "-o", help=OUTPUT_HELP),
    datastore: Path = typer.Option(None, "--datastore", help="The run's datastore, if its OBS_ID is in several."),
    e_min: float = typer.Option(0.5, "--e-min", min=1e-4, help="Lowest reconstructed energy, TeV."),
    e_max: float = typer.Option(10.0, "--e-max", max=1e4, help="Highest reconstructed energy, TeV."),
    radius: float = typer.Option(0.1, "--radius", min=0.005, max=1.0, help="Correlation radius, deg."),
    where: list[str] = typer.Option(None, "--where", "-w", metavar="COND",
                                    help="Extra selection condition on catalogue columns; repeat to AND."),
):
    """Counts against bkgdb's prediction, Li & Ma significance per pixel and its distribution beside N(0, 1)."""
    _check_output(output)
    if not e_min < e_max:
        raise BkgdbError(f"--e-min must be below --e-max, got {e_min:g} and {e_max:g}")
    from bkgdb.plotting import plot_significance, run_significance_maps

    maps = run_significance_maps(_builder(config, where), obs_id, datastore, energy_range_tev=(e_min, e_max),
                                 correlation_radius_deg=radius)
    plot_significance(maps, path=output)
    mean, width = maps.distribution_fit()
    out().print(f"run {obs_id}: significance outside exclusions: mean {mean:.3f}, width {width:.3f} "
              f"(FoV norm {maps.norm:.3f}) -> {output}", highlight=False, markup=False)
