"""A one-page HTML report of a validation: open ``index.html`` to judge a config.

The folder holds ``index.html``, the rows as ``validation.csv``, the validation figure, and the
model and selection figures of the worst runs (largest |norm - 1|). Plain HTML with relative
links: it opens from disk, can be copied or zipped, and needs no JavaScript.
"""

from __future__ import annotations

import html
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bkgdb import __version__
from bkgdb.errors import BkgdbError
from bkgdb.outputs import REPORT_FIGURE, REPORT_INDEX, REPORT_TABLE, write_output

if TYPE_CHECKING:
    from bkgdb.background import BackgroundBuilder
    from bkgdb.validation import ValidationReport

__all__ = ["write_validation_report", "worst_runs", "REPORT_INDEX", "REPORT_TABLE", "REPORT_FIGURE"]

log = logging.getLogger(__name__)

STYLE = """
body { font-family: sans-serif; margin: 1.5em auto; max-width: 1300px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }
th { background: #eee; }
td.text { text-align: left; }
img { max-width: 100%; border: 1px solid #ddd; box-sizing: border-box; }
.runs img { width: 48%; vertical-align: top; }
.note { color: #555; }
"""


def worst_runs(rows: Iterable[Mapping[str, Any]], count: int = 3) -> list[Mapping[str, Any]]:
    """The fitted rows with the largest |norm - 1|, worst first."""
    fitted = [row for row in rows if row.get("status") == "ok" and _finite(row.get("norm"))]
    return sorted(fitted, key=lambda row: (-abs(row["norm"] - 1.0), row["obs_id"]))[:count]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _text(value: Any, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else ""
    return html.escape(str(value))


def _norm(value: Any, error: Any) -> str:
    if not _finite(value):
        return ""
    return f"{value:.3f} &plusmn; {error:.3f}" if _finite(error) else f"{value:.3f}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], text_columns: Sequence[int] = ()) -> str:
    lines = ["<table>", "<tr>" + "".join(f"<th>{html.escape(name)}</th>" for name in header) + "</tr>"]
    for row in rows:
        cells = [
            f'<td class="text">{cell}</td>' if number in text_columns else f"<td>{cell}</td>"
            for number, cell in enumerate(row)
        ]
        lines.append("<tr>" + "".join(cells) + "</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def write_validation_report(
    report: ValidationReport, folder: str | Path, builder: BackgroundBuilder, config_name: str = "", n_worst: int = 3
) -> Path:
    """Write ``folder/index.html`` with the validation's summary, figures and worst runs.

    Parameters
    ----------
    report : `~bkgdb.validation.ValidationReport`
    folder : str or `~pathlib.Path`
        Created if needed; the report's files in it are replaced.
    builder : `~bkgdb.background.BackgroundBuilder`
        With the validated config: rebuilds the worst runs' models and selections for their figures.
    config_name : str, optional
        Shown in the title (e.g. the config file's name).
    n_worst : int, optional
        Worst runs with their own figures. Default is 3.

    Returns
    -------
    path : `~pathlib.Path`
        The ``index.html``.
    """
    from bkgdb.plotting import plot_run_model, plot_run_selection, plot_validation, run_start_times
    from bkgdb.validation import report_rows_to_file

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise BkgdbError(f"report folder {folder} is a file")
    folder.mkdir(parents=True, exist_ok=True)
    # The page comes first, saying the report is not finished: an interrupted report stays known as
    # bkgdb's (a rerun with --overwrite replaces it), and says so to whoever opens it.
    unfinished = _unfinished_page(config_name)
    write_output(folder / REPORT_INDEX, lambda temporary: temporary.write_text(unfinished, encoding="utf-8"), True)
    report_rows_to_file(report, folder / REPORT_TABLE, "csv")
    fitted = [row for row in report.rows if row["status"] == "ok" and _finite(row["norm"])]
    validation_figure = None
    if fitted:
        times = run_start_times(builder.catalogue, report.datastore, [row["obs_id"] for row in report.rows])
        plot_validation(report.rows, path=folder / REPORT_FIGURE, start_mjd=times or None)
        validation_figure = REPORT_FIGURE

    worst: list[dict[str, Any]] = []
    for row in worst_runs(report.rows, n_worst):
        obs_id = row["obs_id"]
        entry: dict[str, Any] = {
            "row": row,
            "model": f"run-{obs_id}-model.png",
            "selection": f"run-{obs_id}-selection.png",
            "problem": None,
        }
        try:
            plot_run_model(builder, obs_id, folder / entry["model"], report.datastore)
            plot_run_selection(builder, obs_id, folder / entry["selection"], report.datastore)
        except BkgdbError as exc:
            entry["problem"] = str(exc)
            log.warning("report: run %s: %s", obs_id, exc)
        worst.append(entry)

    page = _page(report, config_name, validation_figure, worst)
    path = write_output(folder / REPORT_INDEX, lambda temporary: temporary.write_text(page, encoding="utf-8"), True)
    log.info("validation report written to %s", path)
    return path


def _title(config_name: str) -> str:
    return f"bkgdb validation of {config_name or 'a config'}"  # REPORT_TITLE tells a report's folder


def _unfinished_page(config_name: str) -> str:
    """The page of a report being written: replaced by the report's own once its figures are made."""
    title = html.escape(_title(config_name))
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{title}</title>\n</head>\n'
        f"<body>\n<h1>{title}</h1>\n<p>This report is being written, or its writing was interrupted: run "
        "<code>bkgdb validate</code> again with <code>--report</code> and <code>--overwrite</code>.</p>\n"
        "</body>\n</html>\n"
    )


def _page(
    report: ValidationReport, config_name: str, validation_figure: str | None, worst: list[dict[str, Any]]
) -> str:
    rows = report.rows
    n_ok = sum(row["status"] == "ok" for row in rows)
    title = _title(config_name)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",  # starts with REPORT_TITLE
        f"<style>{STYLE}</style>",
        "</head>",
        "<body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Datastore <code>{html.escape(report.datastore)}</code>: {len(rows)} target runs, {n_ok} fitted, "
        f"{len(rows) - n_ok} without background or fit. Per-run normalisation: {html.escape(report.normalisation)}. "
        f'Rows: <a href="{REPORT_TABLE}">{REPORT_TABLE}</a>.</p>',
        '<p class="note">FoV background norm: gammapy <code>FoVBackgroundMaker</code> scale fit of each run with '
        "its background built from the other runs (1: the model predicts the counts); "
        "&ldquo;file&rdquo; is the model in the run file, fitted on the same pixels.</p>",
        "<h2>Summary</h2>",
    ]
    summary = [
        [
            html.escape(entry["model"]),
            html.escape(entry["zenith"]),
            entry["runs"],
            _text(entry["mean"]),
            _text(entry["std"]),
            _text(entry["median"]),
            _text(entry["mean_error"]),
        ]
        for entry in report.summary
    ]
    parts.append(
        _table(["model", "zenith (deg)", "runs", "mean", "std", "median", "error of mean"], summary, (0, 1))
        if summary
        else "<p>No run was fitted.</p>"
    )
    if validation_figure:
        parts += [
            "<h2>Norms</h2>",
            f'<p><a href="{validation_figure}"><img src="{validation_figure}" '
            'alt="FoV background norms against zenith and time, and their histogram"></a></p>',
        ]
    parts.append("<h2>Worst runs (largest |norm &minus; 1|)</h2>")
    if not worst:
        parts.append("<p>None.</p>")
    for entry in worst:
        row = entry["row"]
        parts.append(f'<h3 id="run-{row["obs_id"]}">Run {row["obs_id"]} ({_text(row["object"])})</h3>')
        parts.append(
            f"<p>zenith {_text(row['zenith_deg'], 1)} deg, azimuth {_text(row['az_deg'], 1)} deg; "
            f"background from {row['runs_used']} runs ({_text(row['ontime_used_h'], 2)} h); "
            f"norm {_norm(row['norm'], row['norm_error'])}"
            + (
                f", file's model {_norm(row['file_norm'], row['file_norm_error'])}"
                if _finite(row.get("file_norm"))
                else ""
            )
            + "</p>"
        )
        if entry["problem"]:
            parts.append(f"<p>No figures: {html.escape(entry['problem'])}</p>")
            continue
        parts.append(
            f'<p class="runs"><a href="{entry["model"]}"><img src="{entry["model"]}" '
            f'alt="background model of run {row["obs_id"]}"></a> '
            f'<a href="{entry["selection"]}"><img src="{entry["selection"]}" '
            f'alt="run selection of run {row["obs_id"]}"></a></p>'
        )
    failed = [row for row in rows if row["status"] != "ok"]
    if failed:
        parts.append("<h2>Runs without background or fit</h2>")
        parts.append(
            _table(
                ["OBS_ID", "status", "reason"],
                [[row["obs_id"], html.escape(row["status"]), html.escape(row["reason"] or "")] for row in failed],
                (1, 2),
            )
        )
    parts.append("<h2>All runs</h2>")
    parts.append(
        _table(
            ["OBS_ID", "object", "zenith (deg)", "azimuth (deg)", "runs", "ontime (h)", "norm", "file norm", "status"],
            [
                [
                    row["obs_id"],
                    _text(row["object"]),
                    _text(row["zenith_deg"], 1),
                    _text(row["az_deg"], 1),
                    row["runs_used"] or "",
                    _text(row["ontime_used_h"], 2),
                    _norm(row["norm"], row["norm_error"]),
                    _norm(row["file_norm"], row["file_norm_error"]),
                    html.escape(row["status"]),
                ]
                for row in rows
            ],
            (1, 8),
        )
    )
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts += [f'<p class="note">Written by bkgdb {html.escape(__version__)} on {stamp}.</p>', "</body>", "</html>"]
    return "\n".join(parts) + "\n"
