"""Commands that build backgrounds: background, attach, validate.

Each parses its options, calls one method of `bkgdb.catalogue.Catalogue` and prints the result.
"""

from pathlib import Path
from typing import Any

import typer

from bkgdb.cli.catalogue import SCHEDULER_HELP, WHERE_HELP
from bkgdb.cli.common import (
    Smoothing,
    err,
    open_catalogue,
    out,
    print_index_report,
    printed_warnings,
    progress_steps,
    reports_errors,
    warnings_once,
)
from bkgdb.cli.output import OutputFormat, render_rows

__all__ = ["register", "THREE_D_HELP"]

THREE_D_HELP = "3D (FoV) background with the config's 3D binning, or 2D. Default: the config's io.3d_bkg."


@reports_errors
def background(
    obs_id: int = typer.Argument(..., help="OBS_ID of the target run (indexed)."),
    config: Path = typer.Option(..., "--config", help="YAML config (binning, exclusion, background_selection)."),
    output: Path = typer.Option(..., "--output", "-o", help="FITS file to write."),
    datastore: Path = typer.Option(None, "--datastore", help="The target's datastore, if its OBS_ID is in several."),
    smooth: Smoothing = typer.Option(None, "--smooth", help="Smoothing method; default: the config's."),
    where: list[str] = typer.Option(None, "--where", "-w", metavar="COND", help=WHERE_HELP),
    three_d: bool = typer.Option(None, "--3d/--2d", help=THREE_D_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
) -> None:
    """Build the background of one run from similar runs' pieces and write it as FITS."""
    from bkgdb.store.selection import describe_funnel

    catalogue = open_catalogue(readonly="auto", config=config)
    with printed_warnings("bkgdb.store.selection"):
        built = catalogue.write_background(
            obs_id,
            output,
            datastore=datastore,
            smooth=smooth.value if smooth else None,
            where=where or [],
            three_d=three_d,
            overwrite=overwrite,
        )
    selection: Any = built.selection  # a bkgdb.store.selection.Selection
    out.print(f"selection: {describe_funnel(selection.funnel)}", highlight=False)
    requested = f" of {selection.requested_s / 3600:g} h requested" if selection.requested_s else ""
    out.print(
        f"run {obs_id}: background from {len(selection.obs_ids)} runs ({selection.ontime_s / 3600:.2f} h "
        f"ontime{requested}, ranked by {selection.ranking}), smoothing {built.smoothing} -> {output}",
        highlight=False,
    )
    if built.condition_model:
        from bkgdb.makers.condition_model import ConditionModel

        record = built.condition_model
        out.print(
            f"condition model ({record['n_runs']} archive runs, {'cached' if record['cached'] else 'fitted'}): "
            f"{ConditionModel.from_params(record).describe()}",
            highlight=False,
            markup=False,
        )
    else:
        out.print("assembly: plain sum", highlight=False)


@reports_errors
def attach(
    target: Path = typer.Argument(None, help="DL3 datastore whose runs get backgrounds. Default: io.in_dir."),
    out_dir: Path = typer.Option(None, "--out", help="New datastore folder. Default: io.out_dir."),
    config: Path = typer.Option(..., "--config", help="YAML config."),
    jobs: int = typer.Option(None, "--jobs", "-j", min=1, help="Workers for indexing the target."),
    scheduler: str = typer.Option(None, "--scheduler", metavar="ADDRESS", help=SCHEDULER_HELP),
    where: list[str] = typer.Option(None, "--where", "-w", metavar="COND", help=WHERE_HELP),
    three_d: bool = typer.Option(None, "--3d/--2d", help=THREE_D_HELP),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Write into an earlier attach's --out, replacing its files. A --out holding any other "
        "file, and files of the target or of catalogued datastores, are never written to.",
    ),
) -> None:
    """Write a copy of a datastore whose runs carry bkgdb backgrounds (gammapy opens it as is)."""
    catalogue = open_catalogue(config=config)
    with warnings_once(), progress_steps() as step:
        result = catalogue.attach(
            target,
            out_dir,
            jobs=jobs,
            scheduler=scheduler,
            where=where or [],
            three_d=three_d,
            overwrite=overwrite,
            progress=step("attaching"),
            index_progress=step("indexing"),
        )
    print_index_report(result.indexed)
    for obs_id, reason in result.attached.skipped:
        err.print(f"no background: run {obs_id}: {reason}", highlight=False, markup=False)
    out.print(result.attached.summary(), highlight=False)


def _number_text(value: float | None, digits: int = 3) -> str:
    return "" if value is None or value != value else f"{value:.{digits}f}"


def _norm_text(value: float | None, error: float) -> str:
    return "" if value is None or value != value else f"{value:.3f} +- {error:.3f}"


def _table_row(row: dict[str, Any]) -> dict[str, Any]:
    """One target's validation row as shown in the terminal."""
    scale = row["normalisation"]
    if row["norm_region"]:
        scale = f"x{row['norm_factor']:.3f} ({row['norm_region']})"
    return {
        "obs_id": row["obs_id"],
        "zenith": _number_text(row["zenith_deg"], 1),
        "az": _number_text(row["az_deg"], 1),
        "runs": row["runs_used"] or "",
        "ontime_h": _number_text(row["ontime_used_h"], 2),
        "normalisation": scale,
        "counts": _number_text(row["counts"], 0),
        "predicted": _number_text(row["predicted"], 1),
        "norm": _norm_text(row["norm"], row["norm_error"]),
        "file_predicted": _number_text(row["file_predicted"], 1),
        "file_norm": _norm_text(row["file_norm"], row["file_norm_error"]),
        "status": row["status"] if row["status"] == "ok" else f"{row['status']}: {row['reason']}",
    }


TABLE_COLUMNS = [
    "obs_id",
    "zenith",
    "az",
    "runs",
    "ontime_h",
    "normalisation",
    "counts",
    "predicted",
    "norm",
    "file_predicted",
    "file_norm",
    "status",
]


@reports_errors
def validate(
    datastore: Path = typer.Argument(
        ...,
        help="DL3 datastore (indexed first if needed). Its runs passing --where "
        "and the config's gal_lat_min, n_tels, el_min, el_max are the targets; each is "
        "fitted at 0.5-10 TeV within its safe range, offsets below 2 deg, exclusion "
        "regions cut, with bkgdb's model and the model in its file, if any.",
    ),
    config: Path = typer.Option(..., "--config", help="YAML config to judge."),
    where: list[str] = typer.Option(
        None, "--where", "-w", metavar="COND", help="Condition on the target runs, e.g. 'zenith<40'; repeat to AND."
    ),
    jobs: int = typer.Option(
        None, "--jobs", "-j", min=1, help="Worker processes for the gammapy fits and indexing. Default: config.njobs."
    ),
    scheduler: str = typer.Option(
        None,
        "--scheduler",
        metavar="ADDRESS",
        help="Index on a Dask cluster (the fits stay local): the scheduler's address, "
        "e.g. tcp://host:8786 (needs the dask extra).",
    ),
    three_d: bool = typer.Option(None, "--3d/--2d", help=THREE_D_HELP),
    output: Path = typer.Option(None, "--output", "-o", help="Write the per-run rows to this .csv or .json file."),
    fmt: OutputFormat = typer.Option(
        None, "--format", "-f", help="Format of the per-run rows (stdout: table by default; -o: by suffix)."
    ),
    report_dir: Path = typer.Option(
        None,
        "--report",
        metavar="DIR",
        help="Also write DIR/index.html: summary, figures, the worst runs' model and "
        "selection plots, and the rows as CSV.",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an existing -o file, and an earlier report in --report DIR."
    ),
) -> None:
    """Judge a config: each target's background from the other runs, and its FoVBackgroundMaker norm (1 is right)."""
    from bkgdb.validation import ROW_COLUMNS, SUMMARY_COLUMNS

    catalogue = open_catalogue(config=config)
    with progress_steps() as step:
        result = catalogue.validate(
            datastore,
            where=where or [],
            jobs=jobs,
            scheduler=scheduler,
            three_d=three_d,
            rows_file=output,
            rows_format=None if fmt in (None, OutputFormat.table) else fmt.value,
            report_dir=report_dir,
            progress=step("validating"),
            index_progress=step("indexing"),
            overwrite=overwrite,
        )
    for obs_id, reason in result.indexed.failures:
        err.print(f"failed: run {obs_id}: {reason}", highlight=False, markup=False)
    report = result.report
    rows_as_data = output is None and fmt in (OutputFormat.csv, OutputFormat.json)
    if result.rows_file is not None:
        err.print(f"{len(report.rows)} runs written to {result.rows_file}", highlight=False, markup=False)
    elif rows_as_data:
        render_rows(report.rows, ROW_COLUMNS, fmt, out)
    else:
        render_rows(
            [_table_row(row) for row in report.rows],
            TABLE_COLUMNS,
            OutputFormat.table,
            out,
            title=f"{len(report.rows)} runs of {report.datastore}",
        )
    # The summary always; on stderr when stdout carries CSV or JSON rows, so they stay parseable.
    console = err if rows_as_data else out
    summary = [
        {key: (_number_text(value) if isinstance(value, float) else value) for key, value in entry.items()}
        for entry in report.summary
    ]
    render_rows(
        summary,
        SUMMARY_COLUMNS,
        OutputFormat.table,
        console,
        title=f"FoV background norms (1: the model predicts the counts); normalisation: {report.normalisation}",
    )
    fitted = sum(row["status"] == "ok" for row in report.rows)
    console.print(
        f"{len(report.rows)} target runs, {fitted} fitted, {len(report.without_background)} without "
        f"background or fit; model 'file' is the background model in the run files",
        highlight=False,
        markup=False,
    )
    for obs_id, reason in report.without_background:
        console.print(f"no background: run {obs_id}: {reason}", highlight=False, markup=False)
    if result.report_page is not None:
        err.print(f"report written to {result.report_page}", highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    """Add these commands to ``app``."""
    for command in (background, attach, validate):
        app.command()(command)
