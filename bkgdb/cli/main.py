"""The ``bkgdb`` command line: each command parses, calls one library function and prints.

Heavy modules (astropy, gammapy) are imported inside the commands so ``bkgdb --help`` is quick.
"""

import contextlib
import functools
import os
import signal
import sys
import warnings
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from bkgdb.errors import BkgdbError, BkgdbWarning
from bkgdb.cli.output import OutputFormat, render_rows
from bkgdb.parallel.processes import sigterm_raises_interrupt

app = typer.Typer(
    help="bkgdb: a database of background-model pieces for IACT analyses with gammapy.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# Piped output (files, CI logs) gets wide tables instead of 80-column folding.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 240)
err = Console(stderr=True, soft_wrap=True)


class State:
    db = None


def _database_urls():
    """The database URL as given (option, then environment): the source of any password to hide."""
    from bkgdb.store.database import URL_ENV_VAR

    return [url for url in (State.db, os.environ.get(URL_ENV_VAR)) if url]


def _shown_database():
    from bkgdb.store.database import display_url, resolve_url

    try:
        return display_url(resolve_url(State.db))
    except BkgdbError:
        return "the database"


def _print_error(message):
    from bkgdb.store.database import hide_secrets

    one_line = " ".join(hide_secrets(message, *_database_urls()).split())
    err.print(f"[red]Error:[/red] {escape(one_line)}", highlight=False, soft_wrap=True)


def _database_error_message(exc):
    """One line for an unexpected SQLAlchemy database error: which database, what the driver said."""
    from bkgdb.store.database import is_readonly_error

    reason = str(exc.orig).strip().splitlines()[0] if getattr(exc, "orig", None) is not None else type(exc).__name__
    if is_readonly_error(exc):
        return f"database {_shown_database()} is read-only for this command, which needs to write: {reason}"
    return f"database {_shown_database()}: {reason}"


def reports_errors(command):
    """Run a command; a library or database error becomes one line on stderr and exit code 2.

    Ctrl-C and SIGTERM stop the command cleanly (what was committed stays) with one line and exit
    code 130 or 143 (128 + the signal's number), never a traceback.
    """

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from sqlalchemy.exc import DBAPIError

        try:
            with sigterm_raises_interrupt(), warnings.catch_warnings():
                warnings.showwarning = _show_warning
                return command(*args, **kwargs)
        except BkgdbError as exc:
            _print_error(str(exc))
            raise typer.Exit(2) from None
        except DBAPIError as exc:  # OperationalError, ProgrammingError, ...: never an SQL dump
            _print_error(_database_error_message(exc))
            raise typer.Exit(2) from None
        except KeyboardInterrupt as exc:
            signum = getattr(exc, "signum", int(signal.SIGINT))
            err.print(f"Interrupted by {signal.Signals(signum).name}: stopped; work committed so far is kept.",
                      highlight=False, markup=False)
            raise typer.Exit(128 + signum) from None

    return wrapper


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """bkgdb's own warnings as one line ``Warning: ...`` on stderr; others as Python shows them."""
    if issubclass(category, BkgdbWarning):
        from bkgdb.store.database import hide_secrets

        err.print(f"Warning: {hide_secrets(message, *_database_urls())}", highlight=False, markup=False)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


_python_show_warning = warnings.showwarning


@app.callback()
def main(
    db: str = typer.Option(
        None, "--db", metavar="URL",
        help="Database URL (sqlite:///FILE, postgresql://USER@HOST/DB) or SQLite file. "
             "Default: $BKGDB_URL, then ./bkgdb.sqlite.",
    ),
):
    State.db = db


def open_catalogue(readonly=False):
    """The catalogue of ``--db``.

    ``readonly=True`` for commands that only read: the database is opened read-only (works on a
    read-only copy or role); only when it does not exist yet or its schema is behind is it opened
    for writing, to be created or upgraded as on any first use, if that is allowed. ``"auto"`` for
    commands whose writes are optional (see `~bkgdb.store.catalogue.RunCatalogue.open`).
    """
    from bkgdb.store.catalogue import RunCatalogue
    from bkgdb.errors import DatabaseError, DatabaseNotReadyError

    if readonly is not True:
        return RunCatalogue.open(State.db, readonly=readonly)
    try:
        return RunCatalogue.open(State.db, readonly=True)
    except DatabaseNotReadyError as not_ready:
        try:
            return RunCatalogue.open(State.db)
        except DatabaseError:
            raise not_ready from None


def read_config(path):
    """Load a config file, printing its warnings (unknown keys) as one line each."""
    import warnings

    from bkgdb.config import ConfigWarning, load_config

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConfigWarning)
        config = load_config(path)
    for warning in caught:
        if issubclass(warning.category, ConfigWarning):
            err.print(f"Warning: {warning.message}", highlight=False, markup=False)
    return config


def with_conditions(config, where):
    """The config with ``--where`` conditions added to its background selection."""
    if where:
        import dataclasses

        from bkgdb.store.conditions import parse_condition

        for condition in where:
            parse_condition(condition)  # a typo fails here, before any work
        config.selection = dataclasses.replace(config.selection, where=config.selection.where + tuple(where))
    return config


@contextlib.contextmanager
def printed_warnings(logger_name):
    """Print a library logger's warnings as 'Warning: ...' lines on stderr, each once."""
    import logging

    seen = set()

    class Printer(logging.Handler):
        def emit(self, record):
            message = record.getMessage()
            if message not in seen:
                seen.add(message)
                err.print(f"Warning: {message}", highlight=False, markup=False)

    logger = logging.getLogger(logger_name)
    handler = Printer(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def progress_bar(label):
    """A progress bar on stderr when it is a terminal; otherwise one that shows nothing at all."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=err, transient=True, disable=not err.is_terminal)


@app.command()
@reports_errors
def init():
    """Create the database, or upgrade its schema to this version of bkgdb."""
    catalogue = open_catalogue()
    info = catalogue.info()
    out.print(f"Database {info['url']} is at schema revision {info['schema_revision']}.", highlight=False)


@app.command()
@reports_errors
def index(
    datastore: Path = typer.Argument(..., help="DL3 datastore folder (obs-index and hdu-index files)."),
    config: Path = typer.Option(None, "--config", help="YAML config: also compute background pieces "
                                "for its binnings and exclusion settings."),
    jobs: int = typer.Option(None, "--jobs", "-j", min=1, help="Worker processes. Default: config.njobs or 1."),    scheduler: str = typer.Option(None, "--scheduler", metavar="ADDRESS",
                                  help="Index on a Dask cluster: the scheduler's address, e.g. tcp://host:8786 "
                                       "(needs the dask extra; workers read the files, this process writes)."),
):
    """Index a DL3 datastore into the run catalogue (incremental: changed runs only)."""
    settings = read_config(config) if config else None
    index_with_progress(open_catalogue(), datastore, settings, jobs or (settings.njobs if settings else 1),
                        scheduler=scheduler)


def dask_executor(scheduler):
    """The executor of ``--scheduler ADDRESS``, or None (local processes) without one."""
    if not scheduler:
        return None
    from bkgdb.parallel.cluster import DaskExecutor

    return DaskExecutor(scheduler)


def index_with_progress(catalogue, datastore, settings, workers, scheduler=None):
    """`RunCatalogue.index` behind a progress bar; prints warnings, failures and the counts."""
    import warnings

    with progress_bar("indexing") as bar, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        task = bar.add_task("index", total=None)
        report = catalogue.index(datastore, config=settings, jobs=workers, executor=dask_executor(scheduler),
                                 progress=lambda done, total: bar.update(task, completed=done, total=total))
    for message in sorted({str(warning.message) for warning in caught}):
        err.print(f"Warning: {message}", highlight=False, markup=False)
    for obs_id, reason in report.failures:
        err.print(f"failed: run {obs_id}: {reason}", highlight=False, markup=False)
    out.print(f"{report.datastore}: {report.summary()}", highlight=False)
    return report


@app.command()
@reports_errors
def runs(
    where: list[str] = typer.Option(
        None, "--where", "-w", metavar="COND",
        help="Condition such as 'zenith<30', 'object=Crab Nebula', 'MUONEFF>=0.8'; repeat to AND. "
             "Operators: < <= > >= = != ~ (contains).",
    ),
    columns: str = typer.Option(None, "--columns", "-c", help="Comma-separated columns to show."),
    failed: bool = typer.Option(False, "--failed", help="List runs that could not be read, with reasons."),
    datastore: Path = typer.Option(None, "--datastore", help="Only runs of this datastore folder."),
    fmt: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f", help="Output format."),
):
    """List catalogued runs, filtered with --where conditions."""
    from bkgdb.store.catalogue import DEFAULT_RUN_COLUMNS

    catalogue = open_catalogue(readonly=True)
    status = "failed" if failed else "ok"
    selected = catalogue.select_runs(where or [], status=status, datastore=datastore)
    if columns:
        names = [name.strip() for name in columns.split(",") if name.strip()]
    else:
        names = ["obs_id", "datastore", "error"] if failed else DEFAULT_RUN_COLUMNS
    rows = catalogue.run_rows(selected, names)
    render_rows(rows, names, fmt, out, title=f"{len(rows)} {status} runs")


@app.command()
@reports_errors
def info(
    fmt: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f", help="Output format."),
):
    """Summarise the catalogue: database, datastores, runs and failed runs."""
    summary = open_catalogue(readonly=True).info()
    if fmt is OutputFormat.json:
        out.print_json(data=summary)
        return
    out.print(f"database: {summary['url']} (schema {summary['schema_revision']})", highlight=False)
    out.print(f"runs: {summary['runs']} indexed, {summary['failed_runs']} failed", highlight=False)
    columns = ["path", "runs", "failed_runs", "ontime_h", "events", "last_indexed_at"]
    render_rows(summary["datastores"], columns, fmt, out, title="datastores")


@app.command()
@reports_errors
def exclusions(
    obs_id: int = typer.Argument(..., help="OBS_ID of an indexed run."),
    datastore: Path = typer.Option(None, "--datastore", help="Only this datastore's run of that OBS_ID."),
    fmt: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f", help="Output format."),
):
    """List the exclusion regions applied to a run's background pieces."""
    from bkgdb.store.pieces import PieceCache

    found = PieceCache(open_catalogue(readonly=True).engine).exclusions(obs_id, datastore)
    if not found:
        raise BkgdbError(f"run {obs_id} has no background pieces: index it with --config first")
    columns = ["name", "kind", "ra", "dec", "radius"]
    for entry in found:
        rows = [{key: region.get(key) for key in columns} for region in entry["regions"]]
        title = (f"run {obs_id} of {entry['datastore']}: exclusion {entry['exclusion']} "
                 f"({entry['method']}), {len(rows)} regions")
        if fmt is OutputFormat.table:
            render_rows(rows, columns, fmt, out, title=title)
        else:
            render_rows([{**{k: entry[k] for k in ("datastore", "exclusion", "method")}, **row} for row in rows],
                        ["datastore", "exclusion", "method", *columns], fmt, out)


@app.command()
@reports_errors
def cache(
    drop_exclusion: str = typer.Option(None, "--drop-exclusion", metavar="HASH",
                                       help="Delete the pieces of the exclusion setting with this hash prefix."),
    drop_binning: str = typer.Option(None, "--drop-binning", metavar="HASH",
                                     help="Delete the pieces of the binning with this hash prefix."),
    fmt: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f", help="Output format."),
):
    """Show stored background pieces per binning and exclusion setting, or drop some."""
    from bkgdb.store.pieces import PieceCache

    pieces = PieceCache(open_catalogue(readonly=not (drop_exclusion or drop_binning)).engine)
    if drop_exclusion or drop_binning:
        deleted = pieces.drop(exclusion=drop_exclusion, binning=drop_binning)
        out.print(f"dropped {deleted} pieces", highlight=False)
        return
    rows = pieces.summary()
    columns = ["binning", "kind", "geometry", "exclusion", "method", "pieces", "bytes", "bytes_per_piece"]
    render_rows(rows, columns, fmt, out, title="background pieces")


# The same names as bkgdb.makers.smoothing.SMOOTHING_METHODS (tests/test_cli.py checks), without importing
# numpy just to print --help.
Smoothing = Enum("Smoothing", {name: name for name in ("gauss", "gauss-seed", "poly", "spline", "none")}, type=str)


@app.command()
@reports_errors
def background(
    obs_id: int = typer.Argument(..., help="OBS_ID of the target run (indexed)."),
    config: Path = typer.Option(..., "--config", help="YAML config (binning, exclusion, background_selection)."),
    output: Path = typer.Option(..., "--output", "-o", help="FITS file to write."),
    datastore: Path = typer.Option(None, "--datastore", help="The target's datastore, if its OBS_ID is in several."),
    smooth: Smoothing = typer.Option(None, "--smooth", help="Smoothing method; default: the config's."),
    where: list[str] = typer.Option(None, "--where", "-w", metavar="COND",
                                    help="Extra selection condition on catalogue columns; repeat to AND."),
    three_d: bool = typer.Option(False, "--3d", help="Write a Background3D instead of a Background2D."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
):
    """Build the background of one run from similar runs' pieces and write it as FITS."""
    from bkgdb.background import BackgroundBuilder
    from bkgdb.store.selection import describe_funnel

    settings = with_conditions(read_config(config), where)
    builder = BackgroundBuilder(open_catalogue(readonly="auto"), settings, smooth=smooth.value if smooth else None)
    with printed_warnings("bkgdb.store.selection"):
        built = builder.write(obs_id, output, datastore=datastore, three_d=three_d, overwrite=overwrite)
    selection = built.selection
    out.print(f"selection: {describe_funnel(selection.funnel)}", highlight=False)
    requested = f" of {selection.requested_s / 3600:.2f} h requested" if selection.requested_s else ""
    out.print(f"run {obs_id}: background from {len(selection.obs_ids)} runs ({selection.ontime_s / 3600:.2f} h "
              f"ontime{requested}, ranked by {selection.ranking}), smoothing {built.smoothing} -> {output}",
              highlight=False)
    if built.condition_model:
        from bkgdb.makers.condition_model import ConditionModel

        record = built.condition_model
        out.print(f"condition model ({record['n_runs']} archive runs, {'cached' if record['cached'] else 'fitted'}): "
                  f"{ConditionModel.from_params(record).describe()}", highlight=False, markup=False)
    else:
        out.print("assembly: plain sum", highlight=False)


@app.command()
@reports_errors
def attach(
    target: Path = typer.Argument(None, help="DL3 datastore whose runs get backgrounds. Default: io.in_dir."),
    out_dir: Path = typer.Option(None, "--out", help="New datastore folder. Default: io.out_dir."),
    config: Path = typer.Option(..., "--config", help="YAML config."),
    jobs: int = typer.Option(None, "--jobs", "-j", min=1, help="Workers for indexing the target."),
    scheduler: str = typer.Option(None, "--scheduler", metavar="ADDRESS",
                                  help="Index on a Dask cluster: the scheduler's address, e.g. tcp://host:8786 "
                                       "(needs the dask extra; workers read the files, this process writes)."),
    where: list[str] = typer.Option(None, "--where", "-w", metavar="COND",
                                    help="Extra selection condition on catalogue columns; repeat to AND."),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="Write into a non-empty --out, replacing an earlier attach's files. "
                                        "Files of the target or of catalogued datastores are never replaced."),
):
    """Write a copy of a datastore whose runs carry bkgdb backgrounds (gammapy opens it as is)."""
    from bkgdb.gadf.attach import attach_backgrounds, check_attach_destination
    from bkgdb.background import BackgroundBuilder

    settings = with_conditions(read_config(config), where)
    target = target or (Path(settings.io.in_dir) if settings.io.in_dir else None)
    out_dir = out_dir or (Path(settings.io.out_dir) if settings.io.out_dir else None)
    if target is None or out_dir is None:
        raise BkgdbError("give the target datastore and --out (or io.in_dir and io.out_dir in the config)")
    catalogue = open_catalogue()
    # Refuse an unsafe --out before the (possibly long) indexing.
    check_attach_destination(catalogue, target, out_dir, overwrite)
    # The target's runs need catalogue rows and pieces of their own (incremental, usually nothing to do).
    index_with_progress(catalogue, target, settings, jobs or settings.njobs, scheduler=scheduler)
    with progress_bar("attaching") as bar:
        task = bar.add_task("attach", total=None)
        result = attach_backgrounds(BackgroundBuilder(catalogue, settings), target, out_dir, overwrite=overwrite,
                                    progress=lambda done, total: bar.update(task, completed=done, total=total))
    for obs_id, reason in result.skipped:
        err.print(f"no background: run {obs_id}: {reason}", highlight=False, markup=False)
    out.print(result.summary(), highlight=False)


@app.command()
@reports_errors
def history(
    obs_id: int = typer.Argument(None, help="Only backgrounds built for this OBS_ID."),
    stale: bool = typer.Option(False, "--stale", help="Only backgrounds whose inputs changed since they were "
                               "built (to rebuild), with the reason."),
    fmt: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f", help="Output format."),
):
    """List the backgrounds built so far: target, runs summed, ontime, smoothing, output file."""
    if stale:
        from bkgdb.store.lineage import stale_backgrounds

        rows = stale_backgrounds(open_catalogue(readonly=True).engine)
        if obs_id is not None:
            rows = [row for row in rows if row["target"] == obs_id]
        columns = ["id", "target", "output", "created_at", "reason"]
        render_rows(rows, columns, fmt, out, title=f"{len(rows)} stale backgrounds")
        return
    from bkgdb.background import background_history

    rows = background_history(open_catalogue(readonly=True).engine, obs_id)
    columns = ["id", "target", "runs", "ontime_h", "smoothing", "ranking", "output", "created_at"]
    if fmt is not OutputFormat.table:
        columns.insert(3, "obs_ids")
    render_rows(rows, columns, fmt, out, title=f"{len(rows)} backgrounds")


def _number_text(value, digits=3):
    return "" if value is None or value != value else f"{value:.{digits}f}"


def _norm_text(value, error):
    return "" if value is None or value != value else f"{value:.3f} +- {error:.3f}"


@app.command()
@reports_errors
def validate(
    datastore: Path = typer.Argument(..., help="DL3 datastore (indexed first if needed). Its runs passing --where "
                                     "and the config's gal_lat_min, n_tels, el_min, el_max are the targets; each is "
                                     "fitted at 0.5-10 TeV within its safe range, offsets below 2 deg, exclusion "
                                     "regions cut, with bkgdb's model and the model in its file, if any."),
    config: Path = typer.Option(..., "--config", help="YAML config to judge."),
    where: list[str] = typer.Option(None, "--where", "-w", metavar="COND",
                                    help="Condition on the target runs, e.g. 'zenith<40'; repeat to AND."),
    jobs: int = typer.Option(None, "--jobs", "-j", min=1,
                             help="Worker processes for the gammapy fits and indexing. Default: config.njobs."),
    scheduler: str = typer.Option(None, "--scheduler", metavar="ADDRESS",
                                  help="Index on a Dask cluster (the fits stay local): the scheduler's address, e.g. tcp://host:8786 "
                                       "(needs the dask extra; workers read the files, this process writes)."),
    output: Path = typer.Option(None, "--output", "-o", help="Write the per-run rows to this .csv or .json file."),
    fmt: OutputFormat = typer.Option(None, "--format", "-f",
                                     help="Format of the per-run rows (stdout: table by default; -o: by suffix)."),
    report_dir: Path = typer.Option(None, "--report", metavar="DIR",
                                    help="Also write DIR/index.html: summary, figures, the worst runs' model and "
                                         "selection plots, and the rows as CSV."),
):
    """Judge a config: each target's background from the other runs, and its FoVBackgroundMaker norm (1 is right)."""
    from bkgdb.store.conditions import parse_condition
    from bkgdb.validation import ROW_COLUMNS, SUMMARY_COLUMNS, report_rows_to_file, rows_file_format, validate_runs

    row_format = None if fmt in (None, OutputFormat.table) else fmt.value
    if output is not None:
        row_format = rows_file_format(output, row_format)  # before any work
    if report_dir is not None and report_dir.exists() and not report_dir.is_dir():
        raise BkgdbError(f"report folder {report_dir} is a file")
    settings = read_config(config)
    for condition in where or []:
        parse_condition(condition)  # a typo fails here, before any work
    workers = jobs or settings.njobs
    catalogue = open_catalogue()
    with progress_bar("indexing") as bar:
        task = bar.add_task("index", total=None)
        indexed = catalogue.index(datastore, config=settings, jobs=workers, executor=dask_executor(scheduler),
                                  progress=lambda done, total: bar.update(task, completed=done, total=total))
    for obs_id, reason in indexed.failures:
        err.print(f"failed: run {obs_id}: {reason}", highlight=False, markup=False)
    with progress_bar("validating") as bar:
        task = bar.add_task("validate", total=None)
        report = validate_runs(catalogue, settings, datastore, where=where or [], jobs=workers,
                               progress=lambda done, total: bar.update(task, completed=done, total=total))

    rows_on_stdout = output is None
    if output is not None:
        written = report_rows_to_file(report, output, row_format)
        err.print(f"{len(report.rows)} runs written to {written}", highlight=False, markup=False)
    elif fmt in (OutputFormat.csv, OutputFormat.json):
        render_rows(report.rows, ROW_COLUMNS, fmt, out)
    else:
        columns = ["obs_id", "zenith", "az", "runs", "ontime_h", "normalisation", "counts", "predicted", "norm",
                   "file_predicted", "file_norm", "status"]
        table = []
        for row in report.rows:
            scale = row["normalisation"]
            if row["norm_region"]:
                scale = f"x{row['norm_factor']:.3f} ({row['norm_region']})"
            table.append({
                "obs_id": row["obs_id"], "zenith": _number_text(row["zenith_deg"], 1),
                "az": _number_text(row["az_deg"], 1), "runs": row["runs_used"] or "",
                "ontime_h": _number_text(row["ontime_used_h"], 2), "normalisation": scale,
                "counts": _number_text(row["counts"], 0), "predicted": _number_text(row["predicted"], 1),
                "norm": _norm_text(row["norm"], row["norm_error"]),
                "file_predicted": _number_text(row["file_predicted"], 1),
                "file_norm": _norm_text(row["file_norm"], row["file_norm_error"]),
                "status": row["status"] if row["status"] == "ok" else f"{row['status']}: {row['reason']}",
            })
        render_rows(table, columns, OutputFormat.table, out, title=f"{len(table)} runs of {report.datastore}")
    # The summary always; on stderr when stdout carries CSV or JSON rows, so they stay parseable.
    console = err if rows_on_stdout and fmt in (OutputFormat.csv, OutputFormat.json) else out
    summary = [{key: (_number_text(value) if isinstance(value, float) else value) for key, value in entry.items()}
               for entry in report.summary]
    render_rows(summary, SUMMARY_COLUMNS, OutputFormat.table, console,
                title=f"FoV background norms (1: the model predicts the counts); normalisation: {report.normalisation}")
    fitted = sum(row["status"] == "ok" for row in report.rows)
    console.print(f"{len(report.rows)} target runs, {fitted} fitted, {len(report.without_background)} without "
                  f"background or fit; model 'file' is the background model in the run files", highlight=False,
                  markup=False)
    for obs_id, reason in report.without_background:
        console.print(f"no background: run {obs_id}: {reason}", highlight=False, markup=False)
    if report_dir is not None:
        from bkgdb.background import BackgroundBuilder
        from bkgdb.plotting.report import write_validation_report

        page = write_validation_report(report, report_dir, BackgroundBuilder(catalogue, settings), config.name)
        err.print(f"report written to {page}", highlight=False, markup=False)


@app.command()
@reports_errors
def flag(
    obs_id: int = typer.Argument(..., help="OBS_ID of the run (every datastore's copy)."),
    reason: str = typer.Argument(None, help="Why (required with --bad)."),
    bad: bool = typer.Option(False, "--bad", help="Flag the run bad: it is never selected for a background."),
    good: bool = typer.Option(False, "--good", help="Flag the run good again."),
    by: str = typer.Option(None, "--by", help="Who flags it. Default: your login name."),
    fmt: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f", help="Output format."),
):
    """Flag a run bad or good (bkgdb flag 23523 --bad "camera 3 off"); alone, show its flag history."""
    from bkgdb.store.flags import flag_run, run_flags

    engine = open_catalogue(readonly=not (bad or good)).engine
    if bad and good:
        raise BkgdbError("give --bad or --good, not both")
    if bad or good:
        entry = flag_run(engine, obs_id, "bad" if bad else "good", reason, by)
        out.print(f"run {obs_id} flagged {entry['flag']} by {entry['author']}"
                  + (f": {entry['reason']}" if entry["reason"] else ""), highlight=False, markup=False)
        return
    if reason is not None:
        raise BkgdbError("a reason needs --bad or --good")
    rows = run_flags(engine, obs_id)
    render_rows(rows, ["flag", "reason", "author", "created_at", "in_force"], fmt, out,
                title=f"run {obs_id}: {len(rows)} flags")


@app.command()
@reports_errors
def lineage(
    obs_id: int = typer.Argument(..., help="OBS_ID of a run."),
    fmt: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f", help="Output format."),
):
    """List every background and attached file built from a run's pieces."""
    from bkgdb.store.lineage import background_lineage

    rows = background_lineage(open_catalogue(readonly=True).engine, obs_id)
    render_rows(rows, ["id", "target", "from_datastore", "output", "created_at"], fmt, out,
                title=f"{len(rows)} backgrounds built from run {obs_id}")


@app.command()
@reports_errors
def demo(
    folder: Path = typer.Argument(Path("bkgdb-demo"), help="Folder for everything the demo writes."),
    jobs: int = typer.Option(2, "--jobs", "-j", min=1, help="Worker processes for indexing."),
):
    """Simulate a datastore from a known background, index it, attach backgrounds, check the result."""
    from bkgdb.demo import run_demo

    report = run_demo(folder, url=State.db, jobs=jobs, progress=lambda line: err.print(line, highlight=False))
    lines = [
        f"simulated datastore  {report.datastore}  ({report.n_runs} runs)",
        f"database             {report.database_url}",
        f"config               {report.config}",
        f"index                {report.index_summary}",
        f"attach               {report.attach_summary}",
        f"check                run {report.target_obs_id}: background from {report.n_background_runs} runs; "
        f"model / truth at bin centres = {report.ratio:.3f} +- {report.ratio_error:.3f}, "
        f"chi2 = {report.chi2:.1f} for {report.ndof} bins",
        f"gammapy              FoVBackgroundMaker norm of run {report.target_obs_id} with it: "
        f"{report.fov_norm:.3f} +- {report.fov_norm_error:.3f} (1: it predicts the counts)",
        "",
        "Open it in gammapy:",
        "  from gammapy.data import DataStore",
        f"  DataStore.from_dir('{report.attached}').obs({report.target_obs_id}).bkg",
    ]
    out.print("\n".join(lines), highlight=False)


from bkgdb.cli.plot import bind_plot_app  # noqa: E402 -- its commands use this module's helpers, whatever its name

app.add_typer(bind_plot_app(sys.modules[__name__]), name="plot")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())

