"""``bkgdb plot``: figures of background models, run selections, validations and significance maps.

A typer sub-app registered by `bkgdb.cli.main`; each command calls one method of
`bkgdb.catalogue.Catalogue`, which imports matplotlib and gammapy only when it draws.
"""

from pathlib import Path
from typing import Any

import typer

from bkgdb.cli.catalogue import WHERE_HELP
from bkgdb.cli.common import Smoothing, open_catalogue, out, reports_errors
from bkgdb.errors import BkgdbError

__all__ = ["plot_app"]

plot_app = typer.Typer(
    help="Figures (PNG, PDF or SVG by the output suffix): models, selections, validations, significance maps.",
    no_args_is_help=True,
)

OUTPUT_HELP = "Figure to write: .png, .pdf or .svg."
OVERWRITE_HELP = "Replace an existing output file."
DATASTORE_HELP = "The run's datastore, if its OBS_ID is in several."


@plot_app.command("model")
@reports_errors
def model(
    target: str = typer.Argument(
        ...,
        metavar="OBS_ID|BKG.fits",
        help="OBS_ID of an indexed run, or a background file written by `bkgdb background`.",
    ),
    output: Path = typer.Option(..., "--output", "-o", help=OUTPUT_HELP),
    config: Path = typer.Option(None, "--config", help="YAML config (needed with an OBS_ID)."),
    datastore: Path = typer.Option(None, "--datastore", help=DATASTORE_HELP),
    smooth: Smoothing = typer.Option(None, "--smooth", help="Smoothing method; default: the config's."),
    where: list[str] = typer.Option(None, "--where", "-w", metavar="COND", help=WHERE_HELP),
    no_reference: bool = typer.Option(False, "--no-reference", help="Leave out the model in the run file."),
    three_d: bool = typer.Option(
        False, "--3d", help="With an OBS_ID: its 3D background (the config's 3D binning) as FoV images per energy band."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Rate against offset and energy with statistical bands, beside the run file's own model; 3D: FoV images."""
    from bkgdb.catalogue import Catalogue
    from bkgdb.figures import check_figure_output

    check_figure_output(output, overwrite)  # option mistakes first, before the config is read
    if not target.strip().lstrip("-").isdigit():
        given = {
            "--config": config is not None,
            "--datastore": datastore is not None,
            "--smooth": smooth is not None,
            "--where": bool(where),
            "--no-reference": no_reference,
            "--3d": three_d,
        }
        ignored = [name for name, used in given.items() if used]
        if ignored:
            raise BkgdbError(
                f"{', '.join(ignored)} {'applies' if len(ignored) == 1 else 'apply'} to an OBS_ID: a background "
                "file is drawn as it is (2D: rate curves, 3D: FoV images)"
            )
        Catalogue.plot_model_file(target, output, overwrite)
        out.print(f"{target} -> {output}", highlight=False, markup=False)
        return
    if config is None:
        raise BkgdbError("plot model OBS_ID needs --config (or give a background FITS file instead)")
    built, has_reference = open_catalogue(readonly="auto", config=config).plot_model(
        int(target),
        output,
        datastore,
        smooth=smooth.value if smooth else None,
        where=where or [],
        with_reference=not no_reference,
        three_d=three_d,
        overwrite=overwrite,
    )
    selected: Any = built.selection  # a bkgdb.store.selection.Selection
    beside = "beside the run file's model" if has_reference else "(the run file has no model of its own)"
    if three_d:
        beside = "as FoV images"
    out.print(
        f"run {target}: model from {len(selected.obs_ids)} runs {beside} -> {output}", highlight=False, markup=False
    )


@plot_app.command("selection")
@reports_errors
def selection(
    obs_id: int = typer.Argument(..., help="OBS_ID of the target run."),
    config: Path = typer.Option(..., "--config", help="YAML config (background_selection)."),
    output: Path = typer.Option(..., "--output", "-o", help=OUTPUT_HELP),
    datastore: Path = typer.Option(None, "--datastore", help=DATASTORE_HELP),
    where: list[str] = typer.Option(None, "--where", "-w", metavar="COND", help=WHERE_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Every candidate run in zenith/azimuth and time, coloured by the first criterion that removed it."""
    from bkgdb.figures import check_figure_output

    check_figure_output(output, overwrite)
    picture = open_catalogue(readonly="auto", config=config).plot_selection(
        obs_id, output, datastore, where=where or [], overwrite=overwrite
    )
    out.print(f"{picture.title} -> {output}", highlight=False, markup=False)


@plot_app.command("validation")
@reports_errors
def validation(
    table: Path = typer.Argument(..., help="CSV or JSON file written by `bkgdb validate -o`."),
    output: Path = typer.Option(..., "--output", "-o", help=OUTPUT_HELP),
    datastore: Path = typer.Option(
        None,
        "--datastore",
        help="The validated datastore: run start times are read "
        "from the catalogue (--db) for the norm-against-time panel; without it: OBS_ID.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Per-run FoV norms against zenith and time, and their histogram; bkgdb beside the file's model."""
    rows = open_catalogue(readonly=True).plot_validation(table, output, datastore, overwrite=overwrite)
    out.print(f"{len(rows)} runs of {table} -> {output}", highlight=False, markup=False)


@plot_app.command("significance")
@reports_errors
def significance(
    obs_id: int = typer.Argument(..., help="OBS_ID of the run."),
    config: Path = typer.Option(..., "--config", help="YAML config."),
    output: Path = typer.Option(..., "--output", "-o", help=OUTPUT_HELP),
    datastore: Path = typer.Option(None, "--datastore", help=DATASTORE_HELP),
    e_min: float = typer.Option(0.5, "--e-min", min=1e-4, help="Lowest reconstructed energy, TeV."),
    e_max: float = typer.Option(10.0, "--e-max", max=1e4, help="Highest reconstructed energy, TeV."),
    radius: float = typer.Option(0.1, "--radius", min=0.005, max=1.0, help="Correlation radius, deg."),
    where: list[str] = typer.Option(None, "--where", "-w", metavar="COND", help=WHERE_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Counts against bkgdb's prediction, Li & Ma significance per pixel and its distribution beside N(0, 1)."""
    from bkgdb.figures import check_energy_range, check_figure_output

    check_figure_output(output, overwrite)
    check_energy_range(e_min, e_max)
    maps = open_catalogue(readonly="auto", config=config).plot_significance(
        obs_id,
        output,
        datastore,
        energy_range_tev=(e_min, e_max),
        correlation_radius_deg=radius,
        where=where or [],
        overwrite=overwrite,
    )
    mean, width = maps.distribution_fit()
    out.print(
        f"run {obs_id}: significance outside exclusions: mean {mean:.3f}, width {width:.3f} "
        f"(FoV norm {maps.norm:.3f}) -> {output}",
        highlight=False,
        markup=False,
    )
