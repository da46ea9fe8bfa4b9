"""Commands on the catalogue: init, index, runs, info, exclusions, cache, flag, lineage, history.

Each parses its options, calls one method of `bkgdb.catalogue.Catalogue` and prints the result.
"""

from pathlib import Path

import typer

from bkgdb.cli.common import err, open_catalogue, out, print_index_report, progress_bar, reports_errors, warnings_once
from bkgdb.cli.output import OutputFormat, render_rows
from bkgdb.errors import BkgdbError

__all__ = ["register", "JOBS_HELP", "SCHEDULER_HELP", "WHERE_HELP"]

JOBS_HELP = "Worker processes. Default: config.njobs or 1."
SCHEDULER_HELP = (
    "Index on a Dask cluster: the scheduler's address, e.g. tcp://host:8786 "
    "(needs the dask extra; workers read the files, this process writes)."
)
WHERE_HELP = "Extra selection condition on catalogue columns; repeat to AND."
FORMAT_HELP = "Output format."


@reports_errors
def init() -> None:
    """Create the database, or upgrade its schema to this version of bkgdb."""
    info = open_catalogue().init()
    out.print(f"Database {info['url']} is at schema revision {info['schema_revision']}.", highlight=False)


@reports_errors
def index(
    datastore: Path = typer.Argument(..., help="DL3 datastore folder (obs-index and hdu-index files)."),
    config: Path = typer.Option(
        None, "--config", help="YAML config: also compute background pieces for its binnings and exclusion settings."
    ),
    jobs: int = typer.Option(None, "--jobs", "-j", min=1, help=JOBS_HELP),
    scheduler: str = typer.Option(None, "--scheduler", metavar="ADDRESS", help=SCHEDULER_HELP),
) -> None:
    """Index a DL3 datastore into the run catalogue (incremental: changed runs only)."""
    catalogue = open_catalogue(config=config)
    with warnings_once(), progress_bar("indexing") as progress:
        report = catalogue.index(datastore, jobs=jobs, scheduler=scheduler, progress=progress)
    print_index_report(report)


@reports_errors
def runs(
    where: list[str] = typer.Option(
        None,
        "--where",
        "-w",
        metavar="COND",
        help="Condition such as 'zenith<30', 'object=Crab Nebula', 'MUONEFF>=0.8'; repeat to AND. "
        "Operators: < <= > >= = != ~ (contains).",
    ),
    columns: str = typer.Option(None, "--columns", "-c", help="Comma-separated columns to show."),
    failed: bool = typer.Option(False, "--failed", help="List runs that could not be read, with reasons."),
    datastore: Path = typer.Option(None, "--datastore", help="Only runs of this datastore folder."),
    fmt: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f", help=FORMAT_HELP),
) -> None:
    """List catalogued runs, filtered with --where conditions."""
    names = [name.strip() for name in columns.split(",") if name.strip()] if columns else None
    rows = open_catalogue(readonly=True).runs(where or [], failed=failed, datastore=datastore, columns=names)
    render_rows(rows, rows.columns, fmt, out, title=f"{len(rows)} {'failed' if failed else 'ok'} runs")


@reports_errors
def info(
    fmt: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f", help=FORMAT_HELP),
) -> None:
    """Summarise the catalogue: database, datastores (with their runs' instruments), runs and failed runs."""
    summary = open_catalogue(readonly=True).info()
    if fmt is OutputFormat.json:  # the whole summary as data
        out.print_json(data=summary)
        return
    # With CSV the datastores' rows are the data: the summary lines go to stderr, as validate's do.
    console = out if fmt is OutputFormat.table else err
    console.print(f"database: {summary['url']} (schema {summary['schema_revision']})", highlight=False, markup=False)
    console.print(f"runs: {summary['runs']} indexed, {summary['failed_runs']} failed", highlight=False, markup=False)
    columns = ["path", "runs", "failed_runs", "instruments", "ontime_h", "events", "last_indexed_at"]
    render_rows(summary["datastores"], columns, fmt, out, title="datastores")


@reports_errors
def exclusions(
    obs_id: int = typer.Argument(..., help="OBS_ID of an indexed run."),
    datastore: Path = typer.Option(None, "--datastore", help="Only this datastore's run of that OBS_ID."),
    fmt: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f", help=FORMAT_HELP),
) -> None:
    """List the exclusion regions applied to a run's background pieces."""
    found = open_catalogue(readonly=True).exclusions(obs_id, datastore)
    columns = ["name", "kind", "ra", "dec", "radius"]
    for entry in found:
        rows = [{key: region.get(key) for key in columns} for region in entry["regions"]]
        binnings = ", ".join(entry["binnings"])
        title = (
            f"run {obs_id} of {entry['datastore']}: exclusion {entry['exclusion']} "
            f"({entry['method']}), binning {binnings}: {len(rows)} regions"
        )
        if fmt is OutputFormat.table:
            render_rows(rows, columns, fmt, out, title=title)
        else:
            setting = {key: entry[key] for key in ("datastore", "exclusion", "method")}
            setting["binnings"] = binnings
            render_rows([{**setting, **row} for row in rows], [*setting, *columns], fmt, out)


@reports_errors
def cache(
    drop_exclusion: str = typer.Option(
        None,
        "--drop-exclusion",
        metavar="HASH",
        help="Delete the pieces of the exclusion setting with this hash prefix.",
    ),
    drop_binning: str = typer.Option(
        None, "--drop-binning", metavar="HASH", help="Delete the pieces of the binning with this hash prefix."
    ),
    fmt: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f", help=FORMAT_HELP),
) -> None:
    """Show stored background pieces per binning and exclusion setting, or drop some."""
    if drop_exclusion or drop_binning:
        deleted = open_catalogue().drop_pieces(exclusion=drop_exclusion, binning=drop_binning)
        out.print(f"dropped {deleted} pieces", highlight=False)
        return
    rows = open_catalogue(readonly=True).cache()
    render_rows(rows, rows.columns, fmt, out, title="background pieces")


@reports_errors
def history(
    obs_id: int = typer.Argument(None, help="Only backgrounds built for this OBS_ID."),
    stale: bool = typer.Option(
        False,
        "--stale",
        help="Only backgrounds whose inputs changed since they were built (to rebuild), with the reason.",
    ),
    fmt: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f", help=FORMAT_HELP),
) -> None:
    """List the backgrounds built so far: target, runs summed, ontime, smoothing, output file."""
    rows = open_catalogue(readonly=True).history(obs_id, stale=stale)
    columns = rows.columns
    if fmt is OutputFormat.table:
        columns = [name for name in columns if name != "obs_ids"]  # one long list per row: JSON and CSV only
    render_rows(rows, columns, fmt, out, title=f"{len(rows)} {'stale ' if stale else ''}backgrounds")


@reports_errors
def flag(
    obs_id: int = typer.Argument(..., help="OBS_ID of the run (every datastore's copy)."),
    reason: str = typer.Argument(None, help="Why (required with --bad)."),
    bad: bool = typer.Option(False, "--bad", help="Flag the run bad: it is never selected for a background."),
    good: bool = typer.Option(False, "--good", help="Flag the run good again."),
    by: str = typer.Option(None, "--by", help="Who flags it. Default: your login name."),
    fmt: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f", help=FORMAT_HELP),
) -> None:
    """Flag a run bad or good (bkgdb flag 23523 --bad "camera 3 off"); alone, show its flag history."""
    if bad and good:
        raise BkgdbError("give --bad or --good, not both")
    if bad or good:
        entry = open_catalogue().flag(obs_id, "bad" if bad else "good", reason, by)
        out.print(
            f"run {obs_id} flagged {entry['flag']} by {entry['author']}"
            + (f": {entry['reason']}" if entry["reason"] else ""),
            highlight=False,
            markup=False,
        )
        return
    if reason is not None:
        raise BkgdbError("a reason needs --bad or --good")
    rows = open_catalogue(readonly=True).flags(obs_id)
    render_rows(rows, rows.columns, fmt, out, title=f"run {obs_id}: {len(rows)} flags")


@reports_errors
def lineage(
    obs_id: int = typer.Argument(..., help="OBS_ID of a run."),
    fmt: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f", help=FORMAT_HELP),
) -> None:
    """List every background and attached file built from a run's pieces."""
    rows = open_catalogue(readonly=True).lineage(obs_id)
    render_rows(rows, rows.columns, fmt, out, title=f"{len(rows)} backgrounds built from run {obs_id}")


def register(app: typer.Typer) -> None:
    """Add these commands to ``app``."""
    for command in (init, index, runs, info, exclusions, cache, history, flag, lineage):
        app.command()(command)
