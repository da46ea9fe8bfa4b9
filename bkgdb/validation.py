"""Judging a background configuration the way an analysis uses it: gammapy's FoV background fit.

`fov_background_norm` fits one observation with the background model it carries. `validate_runs`
does it for every suitable run of a datastore: each run's background is built from the other runs
(the selection never takes the target itself), the counts map is made once, and the
`FoVBackgroundMaker` scale norm is computed with bkgdb's model and, where the run file has one,
with the file's own model, on the same pixels (the run's safe energy range, offsets below 2 deg,
the exclusion regions of the run's pieces cut out). A norm of 1 means the model predicts the
counts. Builds need the database and stay in the main process; the gammapy part runs in worker
processes.
"""

import logging
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from bkgdb.errors import BkgdbError

__all__ = ["fov_background_norm", "FitSettings", "FitJob", "FitResult", "ValidationReport", "validate_runs",
           "fit_run", "target_runs", "summarise", "outside_circles", "rows_file_format", "report_rows_to_file",
           "ZENITH_BANDS", "ROW_COLUMNS", "SUMMARY_COLUMNS"]

log = logging.getLogger(__name__)

#: Zenith bands of the summary, deg: [low, high).
ZENITH_BANDS = ((0.0, 30.0, "<30"), (30.0, 45.0, "30-45"), (45.0, 90.0, ">=45"))
#: Columns of a validation row, in output order.
ROW_COLUMNS = [
    "obs_id", "object", "zenith_deg", "az_deg", "status", "runs_used", "ontime_used_h", "normalisation",
    "norm_factor", "norm_factor_error", "norm_region", "e_min_tev", "e_max_tev", "counts", "predicted", "norm",
    "norm_error", "file_predicted", "file_norm", "file_norm_error", "reason",
]
SUMMARY_COLUMNS = ["model", "zenith", "runs", "mean", "std", "median", "mean_error"]


def fov_background_norm(observation, excluded, energy_range_tev=(0.1, 10.0), n_energy=8, offset_max_deg=2.0,
                        binsz_deg=0.05, aeff_safe_mask=False):
    """Norm of a `FoVBackgroundMaker` scale fit of one observation with its own background model.

    A norm of 1 means the model predicts the counts outside the excluded regions.

    Parameters
    ----------
    observation : `gammapy.data.Observation`
        The run, with its background model.
    excluded : list of (ra, dec, radius)
        Circles (deg) left out of the fit, e.g. the known sources.
    energy_range_tev : tuple, optional
        Reconstructed-energy range of the fit. Default is (0.1, 10).
    n_energy : int, optional
        Energy bins. Default is 8.
    offset_max_deg : float, optional
        Pixels further from the pointing are not used. Default is 2.
    binsz_deg : float, optional
        Pixel size. Default is 0.05.
    aeff_safe_mask : bool, optional
        Also apply gammapy's default effective-area energy threshold (needs the run's IRFs).
        Default is False.

    Returns
    -------
    norm : `gammapy.modeling.Parameter`
        Its ``value`` and ``error``.
    """
    from astropy import units as u
    from astropy.coordinates import SkyCoord
    from gammapy.datasets import MapDataset
    from gammapy.makers import FoVBackgroundMaker, MapDatasetMaker, SafeMaskMaker
    from gammapy.maps import MapAxis, WcsGeom
    from regions import CircleSkyRegion

    energy = MapAxis.from_energy_bounds(*energy_range_tev, nbin=n_energy, unit="TeV")
    geom = WcsGeom.create(skydir=observation.pointing.fixed_icrs, binsz=binsz_deg,
                          width=(2 * offset_max_deg, 2 * offset_max_deg), frame="icrs", axes=[energy])
    selection, methods, extra = ["counts", "background"], ["offset-max"], {}
    if aeff_safe_mask:
        selection.append("exposure")
        methods.append("aeff-default")
        extra["energy_axis_true"] = MapAxis.from_energy_bounds(
            energy_range_tev[0] / 2, energy_range_tev[1] * 2, nbin=20, unit="TeV", name="energy_true")
    dataset = MapDataset.create(geom, name=str(observation.obs_id), **extra)
    dataset = MapDatasetMaker(selection=selection).run(dataset, observation)
    dataset = SafeMaskMaker(methods=methods, offset_max=offset_max_deg * u.deg).run(dataset, observation)
    regions = [CircleSkyRegion(SkyCoord(ra * u.deg, dec * u.deg), radius * u.deg) for ra, dec, radius in excluded]
    mask = geom.region_mask(regions, inside=False)
    dataset = FoVBackgroundMaker(method="scale", exclusion_mask=mask).run(dataset)
    return dataset.background_model.spectral_model.norm


# -- validating a config on many runs ------------------------------------------------------------


@dataclass(frozen=True)
class FitSettings:
    """The gammapy fit of `validate_runs`: reconstructed energies, offsets and pixels."""

    energy_range_tev: tuple = (0.5, 10.0)
    n_energy: int = 8
    offset_max_deg: float = 2.0
    binsz_deg: float = 0.05


@dataclass
class FitJob:
    """What a worker needs to fit one run: where it is, bkgdb's model and the regions to cut out."""

    obs_id: int
    datastore: str
    model: object
    excluded: list
    shapes: list = field(default_factory=list)
    settings: FitSettings = field(default_factory=FitSettings)


@dataclass
class FitResult:
    """Counts, predictions and scale norms of one run, with bkgdb's model and with the file's."""

    obs_id: int
    counts: float = math.nan
    predicted: float = math.nan
    norm: float = math.nan
    norm_error: float = math.nan
    file_predicted: float = math.nan
    file_norm: float = math.nan
    file_norm_error: float = math.nan
    e_min_tev: float = math.nan
    e_max_tev: float = math.nan
    error: str | None = None


@lru_cache(maxsize=8)
def _datastore(path):
    from gammapy.data import DataStore

    return DataStore.from_dir(path)


def fit_run(job: FitJob) -> FitResult:
    """`FoVBackgroundMaker` scale norms of one run with bkgdb's model and with the run file's own.

    The counts map is made once; each model only adds its background map. Both fits use the same
    pixels: inside the run's safe energy range (``aeff-default`` where the IRF carries thresholds)
    and ``offset_max_deg``, outside the exclusion regions, where both models are positive.
    """
    try:
        return _fit_run(job)
    except Exception as exc:  # noqa: BLE001 -- one unreadable run is reported, the others go on
        log.warning("run %s: fit failed: %s", job.obs_id, exc)
        return FitResult(job.obs_id, error=f"fit failed: {type(exc).__name__}: {exc}")


def _fit_run(job):
    from astropy import units as u
    from gammapy.datasets import MapDataset
    from gammapy.makers import FoVBackgroundMaker, MapDatasetMaker, SafeMaskMaker
    from gammapy.maps import Map, MapAxis, WcsGeom

    settings = job.settings
    observation = _datastore(job.datastore).obs(job.obs_id, required_irf="all-optional")
    energy = MapAxis.from_energy_bounds(*settings.energy_range_tev, nbin=settings.n_energy, unit="TeV")
    width = 2 * settings.offset_max_deg
    geom = WcsGeom.create(skydir=observation.pointing.fixed_icrs, binsz=settings.binsz_deg, width=(width, width),
                          frame="icrs", axes=[energy])
    maker = MapDatasetMaker()
    counts = maker.make_counts(geom, observation)
    methods = ["offset-max"]
    aeff = observation.aeff
    if aeff is not None and aeff.meta.get("LO_THRES") is not None:
        methods.append("aeff-default")
    safe = SafeMaskMaker(methods=methods, offset_max=settings.offset_max_deg * u.deg).run(
        MapDataset(counts=counts, name=str(job.obs_id)), observation).mask_safe.data
    exclusion = outside_circles(geom, job.excluded)
    if job.shapes:
        exclusion &= geom.region_mask(list(job.shapes), inside=False)
    mask = safe & exclusion.data

    file_model = observation.bkg
    backgrounds = {}
    if file_model is not None:
        backgrounds["file"] = maker.make_background(geom, observation)
    observation.bkg = job.model
    backgrounds["bkgdb"] = maker.make_background(geom, observation)
    for background in backgrounds.values():
        mask &= np.isfinite(background.data) & (background.data > 0)

    result = FitResult(job.obs_id, counts=float(counts.data[mask].sum()))
    energies = energy.edges.to_value("TeV")
    used = np.flatnonzero(mask.any(axis=(1, 2)))
    if len(used):
        result.e_min_tev, result.e_max_tev = float(energies[used[0]]), float(energies[used[-1] + 1])
    for label, background in backgrounds.items():
        dataset = MapDataset(counts=counts, background=background, name=str(job.obs_id),
                             mask_safe=Map.from_geom(geom, data=mask, dtype=bool))
        predicted = float(background.data[mask].sum())
        dataset = FoVBackgroundMaker(method="scale", exclusion_mask=exclusion).run(dataset)
        norm = dataset.background_model.spectral_model.norm
        value, error = (float(norm.value), float(norm.error)) if dataset.mask_safe.data.any() else (math.nan, math.nan)
        if label == "bkgdb":
            result.predicted, result.norm, result.norm_error = predicted, value, error
        else:
            result.file_predicted, result.file_norm, result.file_norm_error = predicted, value, error
    if not np.isfinite(result.norm):
        result.error = f"fit failed: {result.counts:g} counts and {result.predicted:.3g} predicted in the fit region"
    return result


def outside_circles(geom, circles):
    """Boolean `~gammapy.maps.Map` on ``geom``: pixel centres outside every (ra, dec, radius) circle (deg).

    Angular distances on the sphere, as the pieces were cut; much faster than one
    `regions` mask per circle (H.E.S.S. fields have dozens of stars).
    """
    from gammapy.maps import Map

    from bkgdb.makers.exclusion import unit_vectors

    image = geom.to_image()
    coords = image.get_coord(frame="icrs")
    pixels = unit_vectors(coords.lon.to_value("deg"), coords.lat.to_value("deg"))
    inside = np.zeros(image.data_shape, dtype=bool)
    for ra, dec, radius in circles:
        inside |= pixels @ unit_vectors(ra, dec) >= np.cos(np.radians(radius))
    return Map.from_geom(geom, data=np.broadcast_to(~inside, geom.data_shape).copy(), dtype=bool)


def target_runs(catalogue, config, datastore, where=()):
    """The runs of ``datastore`` a config is validated on: ``where`` conditions and the config's
    absolute criteria (|b| > ``gal_lat_min``, ``n_tels``, ``el_min``, ``el_max``).

    Returns
    -------
    runs : list of `~bkgdb.store.models.Run`
        Ordered by OBS_ID.
    """
    import sqlalchemy as sa

    from bkgdb.store.conditions import conditions_expression
    from bkgdb.store.models import RUN_STATUS_OK, Datastore, Run

    s = config.selection
    query = (sa.select(Run).join(Datastore, Datastore.id == Run.datastore_id)
             .where(Datastore.at(datastore), Run.status == RUN_STATUS_OK).order_by(Run.obs_id))
    where = list(where or [])
    if where:
        query = query.where(conditions_expression(where, catalogue.extra_keys()))
    if s.gal_lat_min:
        query = query.where(sa.or_(Run.glat_deg > s.gal_lat_min, Run.glat_deg < -s.gal_lat_min))
    if s.n_tels is not None:
        query = query.where(Run.n_tels >= s.n_tels)
    if s.el_min is not None:
        query = query.where(Run.alt_deg >= s.el_min)
    if s.el_max is not None:
        query = query.where(Run.alt_deg <= s.el_max)
    with catalogue.session() as session:
        return list(session.scalars(query).all())


def _finite(values):
    values = np.asarray([value for value in values if value is not None], float)
    return values[np.isfinite(values)]


def summarise(rows):
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
            norms = _finite(row[key] for row in rows
                            if row["zenith_deg"] is not None and low <= row["zenith_deg"] < high)
            entry = {"model": model, "zenith": label, "runs": int(len(norms)), "mean": math.nan, "std": math.nan,
                     "median": math.nan, "mean_error": math.nan}
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
    rows: list
    summary: list
    #: The config's per-run normalisation: method and ring or column.
    normalisation: str

    @property
    def without_background(self):
        """(obs_id, reason) of the runs that got no background or no fit."""
        return [(row["obs_id"], row["reason"]) for row in self.rows if row["status"] != "ok"]


def _normalisation_label(selection):
    if selection.normalisation == "control-ring":
        low, high = selection.normalisation_ring
        energy, scatter = selection.normalisation_energy, selection.normalisation_model_scatter
        return (f"control-ring (offset {low:g}-{high:g} deg" + (f", {energy[0]:g}-{energy[1]:g} TeV" if energy else "")
                + (f", combined with model scatter {scatter:g})" if scatter else ")"))
    if selection.normalisation == "monitor":
        return f"monitor (column {selection.normalisation_column})"
    return "none"


def _excluded_regions(session, run_id, binning_id, exclusion_id):
    """Circles (ra, dec, radius) stored with the target's own piece, or None without a piece."""
    import sqlalchemy as sa

    from bkgdb.store.models import PieceRow

    regions = session.scalar(sa.select(PieceRow.regions).where(
        PieceRow.run_id == run_id, PieceRow.binning_id == binning_id, PieceRow.exclusion_id == exclusion_id))
    if regions is None:
        return None
    return [(region["ra"], region["dec"], region["radius"]) for region in regions
            if all(key in region for key in ("ra", "dec", "radius"))]


def _shaped_regions(exclusion):
    """Non-circular regions of the config's region files (the pieces store only their names)."""
    from bkgdb.makers.exclusion import load_region_file

    shapes = []
    for path in exclusion.region_files:
        shapes += [shape.region for shape in load_region_file(path)[1]]
    return shapes


def validate_runs(catalogue, config, datastore, where=(), jobs=1, progress=None,
                  settings: FitSettings | None = None, three_d: bool | None = None) -> ValidationReport:
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
    from sqlalchemy.orm import Session

    from bkgdb.background import BackgroundBuilder

    settings = settings or FitSettings()
    datastore = str(Path(datastore).expanduser().resolve())
    targets = target_runs(catalogue, config, datastore, where)
    if not targets:
        raise BkgdbError(f"no target runs in {datastore}: check --where and the config's gal_lat_min, n_tels, "
                         "el_min, el_max (and that the datastore is indexed)")
    builder = BackgroundBuilder(catalogue, config, three_d=three_d)
    shapes = _shaped_regions(config.exclusion)
    label = _normalisation_label(config.selection)
    rows = {}
    jobs_to_fit = []
    total = len(targets)
    done = 0

    def advance():
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    with Session(catalogue.engine, expire_on_commit=False) as session:
        for run in targets:
            row = {column: None for column in ROW_COLUMNS}
            row.update(obs_id=int(run.obs_id), object=run.object_name, zenith_deg=run.zenith_deg, az_deg=run.az_deg,
                       normalisation=label)
            rows[run.obs_id] = row
            try:
                built = builder.build(run.obs_id, datastore, session=session)
            except BkgdbError as exc:
                row.update(status="no background", reason=str(exc))
                advance()
                continue
            normalisation = built.normalisation
            row.update(runs_used=len(built.selection.obs_ids), ontime_used_h=built.assembled.ontime_s / 3600.0,
                       norm_factor=normalisation.factor, norm_factor_error=normalisation.error,
                       norm_region=normalisation.region or None)
            excluded = _excluded_regions(session, run.id, built.binning_id, built.exclusion_id)
            if excluded is None:
                row.update(status="no background", reason=f"run {run.obs_id} has no piece of its own, so its "
                                                          "exclusion regions are unknown: index it with --config")
                advance()
                continue
            jobs_to_fit.append(FitJob(int(run.obs_id), datastore, built.model, excluded, shapes, settings))

    for result in _run_fits(jobs_to_fit, jobs):
        row = rows[result.obs_id]
        row.update({key: getattr(result, key) for key in (
            "counts", "predicted", "norm", "norm_error", "file_predicted", "file_norm", "file_norm_error",
            "e_min_tev", "e_max_tev")})
        row.update(status="ok" if result.error is None else "fit failed", reason=result.error)
        advance()
    ordered = [rows[run.obs_id] for run in targets]
    return ValidationReport(datastore, ordered, summarise([row for row in ordered if row["status"] == "ok"]), label)


def _run_fits(jobs_to_fit, workers):
    """`fit_run` results in completion order, in ``workers`` processes."""
    if workers <= 1 or len(jobs_to_fit) <= 1:
        for job in jobs_to_fit:
            yield fit_run(job)
        return
    from bkgdb.parallel.processes import WorkerPool

    # The same pool as indexing: workers die with the command, even after kill -9.
    with WorkerPool(workers) as pool:
        yield from pool.imap_unordered(fit_run, jobs_to_fit)


def rows_file_format(path, fmt=None):
    """``csv`` or ``json``: ``fmt`` if given, else the file's suffix.

    Raises
    ------
    BkgdbError
        Neither says which.
    """
    suffix = Path(path).suffix.lower().lstrip(".")
    fmt = fmt or (suffix if suffix in ("csv", "json") else None)
    if fmt not in ("csv", "json"):
        raise BkgdbError(f"cannot tell the format of {path}: name it .csv or .json, or give --format csv|json")
    return fmt


def report_rows_to_file(report, path, fmt=None):
    """Write the per-run rows as CSV or JSON (by ``fmt``, else by the file's suffix)."""
    import csv
    import json

    path = Path(path)
    fmt = rows_file_format(path, fmt)
    if fmt == "json":
        # NaN is not JSON: missing values are null.
        clean = [{key: (None if isinstance(value, float) and not math.isfinite(value) else value)
                  for key, value in row.items()} for row in report.rows]
        path.write_text(json.dumps(clean, indent=1) + "\n")
    else:
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=ROW_COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(report.rows)
    return path
