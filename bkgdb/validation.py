"""Judging a background configuration the way an analysis uses it: gammapy's FoV background fit.

`validate_runs` fits every suitable run of a datastore: each run's background is built from the
other runs (the selection never takes the target itself), then `bkgdb.fov_fit.fit_run` computes the
`FoVBackgroundMaker` scale norm with bkgdb's model and, where the run file has one, with the file's
own model, on the same pixels (the run's safe energy range, offsets below 2 deg, the exclusion
regions of the run's pieces cut out). A norm of 1 means the model predicts the counts. Builds need
the database and stay in the main process; the gammapy part runs in worker processes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bkgdb.errors import BkgdbError
from bkgdb.fov_fit import FitJob, FitResult, FitSettings, fit_run

# The module-level name is what `validate_runs` calls (tests replace it to drop the regions).
from bkgdb.store.targets import piece_regions as _excluded_regions
from bkgdb.store.targets import target_runs

if TYPE_CHECKING:
    from bkgdb.config import BkgdbConfig, ExclusionSettings, SelectionSettings
    from bkgdb.store.catalogue import RunCatalogue

__all__ = [
    "ValidationReport",
    "validate_runs",
    "summarise",
    "rows_file_format",
    "report_rows_to_file",
    "ZENITH_BANDS",
    "ROW_COLUMNS",
    "SUMMARY_COLUMNS",
    "Row",
]

log = logging.getLogger(__name__)

#: One validation row: `ROW_COLUMNS` to values (None where unknown).
Row = dict[str, Any]

#: Zenith bands of the summary, deg: [low, high).
ZENITH_BANDS = ((0.0, 30.0, "<30"), (30.0, 45.0, "30-45"), (45.0, 90.0, ">=45"))
#: Columns of a validation row, in output order.
ROW_COLUMNS = [
    "obs_id",
    "object",
    "zenith_deg",
    "az_deg",
    "status",
    "runs_used",
    "ontime_used_h",
    "normalisation",
    "norm_factor",
    "norm_factor_error",
    "norm_region",
    "e_min_tev",
    "e_max_tev",
    "counts",
    "predicted",
    "norm",
    "norm_error",
    "file_predicted",
    "file_norm",
    "file_norm_error",
    "reason",
]
SUMMARY_COLUMNS = ["model", "zenith", "runs", "mean", "std", "median", "mean_error"]


def _finite(values: Iterable[float | None]) -> np.ndarray:
    array = np.asarray([value for value in values if value is not None], float)
    return array[np.isfinite(array)]


def summarise(rows: list[Row]) -> list[dict[str, Any]]:
    """Mean, std, median (and error of the mean) of the norms, for all runs and per zenith band.

    Returns
    -------
    summary : list of dict
        One row per model (``bkgdb``, ``file``) and zenith band (``all`` first); the file's model
        only where runs have one.
    """
    summary = []
    bands = [(-math.inf, math.inf, "all")] + list(ZENITH_BANDS)
    for model, key in (("bkgdb", "norm"), ("file", "file_norm")):
        if not len(_finite(row[key] for row in rows)):
            continue
        for low, high, label in bands:
            norms = _finite(
                row[key] for row in rows if row["zenith_deg"] is not None and low <= row["zenith_deg"] < high
            )
            entry: dict[str, Any] = {
                "model": model,
                "zenith": label,
                "runs": int(len(norms)),
                "mean": math.nan,
                "std": math.nan,
                "median": math.nan,
                "mean_error": math.nan,
            }
            if len(norms):
                entry.update(mean=float(norms.mean()), median=float(np.median(norms)))
            if len(norms) > 1:
                std = float(norms.std(ddof=1))
                entry.update(std=std, mean_error=std / math.sqrt(len(norms)))
            summary.append(entry)
    return summary


@dataclass
class ValidationReport:
    """What `validate_runs` found: one row per target run and the summary of the norms."""

    datastore: str
    #: One dict per target run (columns `ROW_COLUMNS`), ordered by OBS_ID.
    rows: list[Row]
    #: `summarise` of the rows that were fitted (columns `SUMMARY_COLUMNS`).
    summary: list[dict[str, Any]]
    #: The config's per-run normalisation: method and ring or column.
    normalisation: str

    @property
    def without_background(self) -> list[tuple[int, str]]:
        """(obs_id, reason) of the runs that got no background or no fit."""
        return [(row["obs_id"], row["reason"]) for row in self.rows if row["status"] != "ok"]


def _normalisation_label(selection: SelectionSettings) -> str:
    if selection.normalisation == "control-ring":
        low, high = selection.normalisation_ring
        energy, scatter = selection.normalisation_energy, selection.normalisation_model_scatter
        return (
            f"control-ring (offset {low:g}-{high:g} deg"
            + (f", {energy[0]:g}-{energy[1]:g} TeV" if energy else "")
            + (f", combined with model scatter {scatter:g})" if scatter else ")")
        )
    if selection.normalisation == "monitor":
        return f"monitor (column {selection.normalisation_column})"
    return "none"


def _shaped_regions(exclusion: ExclusionSettings) -> list:
    """Non-circular regions of the config's region files (the pieces store only their names)."""
    from bkgdb.makers.exclusion import load_region_file

    shapes = []
    for path in exclusion.region_files:
        shapes += [shape.region for shape in load_region_file(path)[1]]
    return shapes


def validate_runs(
    catalogue: RunCatalogue,
    config: BkgdbConfig,
    datastore: str | Path,
    where: Iterable[str] = (),
    jobs: int = 1,
    progress: Callable[[int, int], None] | None = None,
    settings: FitSettings | None = None,
    three_d: bool | None = None,
) -> ValidationReport:
    """Build each target run's background from the other runs and fit its FoV norm with gammapy.

    Parameters
    ----------
    catalogue : `~bkgdb.store.catalogue.RunCatalogue`
        Indexed with ``config`` (pieces of its binning and exclusion setting), ``datastore`` included.
    config : `~bkgdb.config.BkgdbConfig`
        The configuration judged.
    datastore : str or `~pathlib.Path`
        The datastore whose runs are the targets.
    where : list of str, optional
        Conditions on the targets (``--where``). Default is none.
    jobs : int, optional
        Worker processes for the gammapy fits; builds stay in this process. Default is 1.
    progress : callable, optional
        Called as ``progress(done, total)`` as runs finish. Default is None.
    settings : `FitSettings`, optional
        Energies, offsets and pixels of the fit. Default is 0.5-10 TeV, offsets < 2 deg.
    three_d : bool, optional
        Judge the config's 3D (FoV) backgrounds instead of its 2D ones. Default is the config's
        ``io.3d_bkg``.

    Returns
    -------
    report : `ValidationReport`
        Runs without a background (or whose fit failed) are rows with status and reason.
    """
    from bkgdb.background import BackgroundBuilder

    settings = settings or FitSettings()
    folder = str(Path(datastore).expanduser().resolve())
    targets = target_runs(catalogue, config, folder, where)
    if not targets:
        raise BkgdbError(
            f"no target runs in {folder}: check --where and the config's gal_lat_min, n_tels, "
            "el_min, el_max (and that the datastore is indexed)"
        )
    builder = BackgroundBuilder(catalogue, config, three_d=three_d)
    shapes = _shaped_regions(config.exclusion)
    label = _normalisation_label(config.selection)
    rows: dict[int, Row] = {}
    jobs_to_fit: list[FitJob] = []
    total = len(targets)
    done = 0

    def advance() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    with catalogue.session() as session:
        for run in targets:
            row: Row = {column: None for column in ROW_COLUMNS}
            row.update(
                obs_id=int(run.obs_id),
                object=run.object_name,
                zenith_deg=run.zenith_deg,
                az_deg=run.az_deg,
                normalisation=label,
            )
            rows[run.obs_id] = row
            try:
                built = builder.build(run.obs_id, folder, session=session)
            except BkgdbError as exc:
                row.update(status="no background", reason=str(exc))
                advance()
                continue
            normalisation = built.normalisation
            row.update(
                runs_used=len(built.selection.obs_ids),
                ontime_used_h=built.assembled.ontime_s / 3600.0,
                norm_factor=normalisation.factor,
                norm_factor_error=normalisation.error,
                norm_region=normalisation.region or None,
            )
            excluded = _excluded_regions(session, run.id, built.binning_id, built.exclusion_id)
            if excluded is None:
                row.update(
                    status="no background",
                    reason=f"run {run.obs_id} has no piece of its own, so its "
                    "exclusion regions are unknown: index it with --config",
                )
                advance()
                continue
            jobs_to_fit.append(FitJob(int(run.obs_id), folder, built.model, excluded, shapes, settings))

    for result in _run_fits(jobs_to_fit, jobs):
        row = rows[result.obs_id]
        # The fit's numbers (counts, predictions, norms, energy range) are row columns by name.
        row.update({key: value for key, value in dataclasses.asdict(result).items() if key in ROW_COLUMNS})
        row.update(status="ok" if result.error is None else "fit failed", reason=result.error)
        advance()
    ordered = [rows[run.obs_id] for run in targets]
    return ValidationReport(folder, ordered, summarise([row for row in ordered if row["status"] == "ok"]), label)


def _run_fits(jobs_to_fit: list[FitJob], workers: int) -> Iterator[FitResult]:
    """`fit_run` results in completion order, in ``workers`` processes."""
    if workers <= 1 or len(jobs_to_fit) <= 1:
        for job in jobs_to_fit:
            yield fit_run(job)
        return
    from bkgdb.parallel.processes import WorkerPool

    # The same pool as indexing: workers die with the command, even after kill -9.
    with WorkerPool(workers) as pool:
        yield from pool.imap_unordered(fit_run, jobs_to_fit)


def rows_file_format(
    path: str | Path, fmt: str | None = None, remedy: str = "name it .csv or .json, or give --format csv|json"
) -> str:
    """``csv`` or ``json``: ``fmt`` if given, else the file's suffix.

    Raises
    ------
    BkgdbError
        Neither says which; the message ends with ``remedy`` (what the caller's user can do).
    """
    suffix = Path(path).suffix.lower().lstrip(".")
    fmt = fmt or (suffix if suffix in ("csv", "json") else None)
    if fmt not in ("csv", "json"):
        raise BkgdbError(f"cannot tell the format of {path}: {remedy}")
    return fmt


def report_rows_to_file(
    report: ValidationReport, path: str | Path, fmt: str | None = None, overwrite: bool = True
) -> Path:
    """Write the per-run rows as CSV or JSON (by ``fmt``, else by the file's suffix).

    The file is put in place when complete (`~bkgdb.outputs.write_output`); without ``overwrite``
    only if none of that name exists by then.
    """
    import csv
    import json

    from bkgdb.outputs import write_output

    path = Path(path)
    fmt = rows_file_format(path, fmt)

    def write(temporary: Path) -> None:
        if fmt == "json":
            # NaN is not JSON: missing values are null.
            clean = [
                {
                    key: (None if isinstance(value, float) and not math.isfinite(value) else value)
                    for key, value in row.items()
                }
                for row in report.rows
            ]
            temporary.write_text(json.dumps(clean, indent=1) + "\n")
        else:
            with temporary.open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=ROW_COLUMNS, lineterminator="\n")
                writer.writeheader()
                writer.writerows(report.rows)

    return write_output(path, write, overwrite)
