"""gammapy's FoV background fit of one run: the scale norm of a background model against the counts.

`fov_background_norm` fits one observation with the background model it carries. `fit_run` is the
worker of `bkgdb.validation.validate_runs`: the counts map is made once and the `FoVBackgroundMaker`
scale norm is computed with bkgdb's model and, where the run file has one, with the file's own model,
on the same pixels (the run's safe energy range, offsets below ``offset_max_deg``, the exclusion
regions cut out). A norm of 1 means the model predicts the counts. Everything here is picklable and
free of the database, so it runs in worker processes.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from gammapy.data import DataStore, Observation
    from gammapy.datasets import MapDataset
    from gammapy.irf import Background2D, Background3D, BackgroundIRF
    from gammapy.makers import MapDatasetMaker
    from gammapy.maps import Map, WcsGeom
    from gammapy.modeling import Parameter
    from regions import SkyRegion

__all__ = [
    "fov_background_norm",
    "fov_background_dataset",
    "model_background",
    "FitSettings",
    "FitJob",
    "FitResult",
    "fit_run",
    "outside_circles",
    "open_datastore",
    "Circle",
]

log = logging.getLogger(__name__)

#: An exclusion circle: (ra, dec, radius), deg.
Circle = tuple[float, float, float]


def fov_background_norm(observation: Observation, excluded: Iterable[Circle], **options: Any) -> Parameter:
    """Norm of a `FoVBackgroundMaker` scale fit of one observation with its own background model, or ``model``.

    A norm of 1 means the model predicts the counts outside the excluded regions. ``options`` are
    the keyword parameters of `fov_background_dataset` (``model``: a model evaluated in its own frame).

    Returns
    -------
    norm : `gammapy.modeling.Parameter`
        Its ``value`` and ``error``.
    """
    return fov_background_dataset(observation, excluded, **options).background_model.spectral_model.norm


def fov_background_dataset(
    observation: Observation,
    excluded: Iterable[Circle],
    energy_range_tev: tuple[float, float] = (0.1, 10.0),
    n_energy: int = 8,
    offset_max_deg: float = 2.0,
    binsz_deg: float = 0.05,
    aeff_safe_mask: bool = False,
    model: BackgroundIRF | None = None,
) -> MapDataset:
    """The `MapDataset` of one observation after a `FoVBackgroundMaker` scale fit of its background model.

    Its ``mask_fit`` is the pixels outside the excluded regions and ``mask_safe`` the safe ones, so
    counts and ``npred_background()`` can be compared where the norm was fitted.

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
    model : `gammapy.irf.BackgroundIRF`, optional
        A background model evaluated in its own FoV frame (`model_background`) instead of the
        observation's ``bkg`` as gammapy reads it. Default is None.

    Returns
    -------
    dataset : `gammapy.datasets.MapDataset`
        Counts, the background model with its fitted norm, ``mask_safe`` and ``mask_fit``.
    """
    from astropy import units as u
    from astropy.coordinates import SkyCoord
    from gammapy.datasets import MapDataset
    from gammapy.makers import FoVBackgroundMaker, MapDatasetMaker, SafeMaskMaker
    from gammapy.maps import MapAxis, WcsGeom
    from regions import CircleSkyRegion

    energy = MapAxis.from_energy_bounds(*energy_range_tev, nbin=n_energy, unit="TeV")
    geom = WcsGeom.create(
        skydir=observation.pointing.fixed_icrs,
        binsz=binsz_deg,
        width=(2 * offset_max_deg, 2 * offset_max_deg),
        frame="icrs",
        axes=[energy],
    )
    selection, methods = ["counts", "background"], ["offset-max"]
    extra: dict[str, Any] = {}
    if aeff_safe_mask:
        selection.append("exposure")
        methods.append("aeff-default")
        extra["energy_axis_true"] = MapAxis.from_energy_bounds(
            energy_range_tev[0] / 2, energy_range_tev[1] * 2, nbin=20, unit="TeV", name="energy_true"
        )
    if model is not None:
        selection.remove("background")
    dataset = MapDataset.create(geom, name=str(observation.obs_id), **extra)
    maker = MapDatasetMaker(selection=selection)
    dataset = maker.run(dataset, observation)
    if model is not None:
        dataset.background = model_background(maker, geom, observation, model)
    dataset = SafeMaskMaker(methods=methods, offset_max=offset_max_deg * u.deg).run(dataset, observation)
    regions = [CircleSkyRegion(SkyCoord(ra * u.deg, dec * u.deg), radius * u.deg) for ra, dec, radius in excluded]
    mask = geom.region_mask(regions, inside=False)
    dataset = FoVBackgroundMaker(method="scale", exclusion_mask=mask).run(dataset)
    dataset.mask_fit = mask
    return dataset


@dataclass(frozen=True)
class FitSettings:
    """The gammapy fit of `validate_runs`: reconstructed energies, offsets and pixels."""

    energy_range_tev: tuple[float, float] = (0.5, 10.0)
    n_energy: int = 8
    offset_max_deg: float = 2.0
    binsz_deg: float = 0.05


@dataclass
class FitJob:
    """What a worker needs to fit one run: where it is, bkgdb's model and the regions to cut out."""

    obs_id: int
    datastore: str
    #: bkgdb's background model of the run.
    model: Background2D | Background3D
    excluded: list[Circle]
    #: Non-circular exclusion regions (sky regions), cut out as well.
    shapes: list[SkyRegion] = field(default_factory=list)
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
def open_datastore(path: str) -> DataStore:
    """The gammapy `~gammapy.data.DataStore` in folder ``path``, cached: a worker or a report opens it once."""
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


def _fit_run(job: FitJob) -> FitResult:
    from astropy import units as u
    from gammapy.datasets import MapDataset
    from gammapy.makers import FoVBackgroundMaker, MapDatasetMaker, SafeMaskMaker
    from gammapy.maps import Map, MapAxis, WcsGeom

    settings = job.settings
    observation = open_datastore(job.datastore).obs(job.obs_id, required_irf="all-optional")
    energy = MapAxis.from_energy_bounds(*settings.energy_range_tev, nbin=settings.n_energy, unit="TeV")
    width = 2 * settings.offset_max_deg
    geom = WcsGeom.create(
        skydir=observation.pointing.fixed_icrs,
        binsz=settings.binsz_deg,
        width=(width, width),
        frame="icrs",
        axes=[energy],
    )
    maker = MapDatasetMaker()
    counts = maker.make_counts(geom, observation)
    methods = ["offset-max"]
    aeff = observation.aeff
    if aeff is not None and aeff.meta.get("LO_THRES") is not None:
        methods.append("aeff-default")
    safe = (
        SafeMaskMaker(methods=methods, offset_max=settings.offset_max_deg * u.deg)
        .run(MapDataset(counts=counts, name=str(job.obs_id)), observation)
        .mask_safe.data
    )
    exclusion = outside_circles(geom, job.excluded)
    if job.shapes:
        exclusion &= geom.region_mask(list(job.shapes), inside=False)
    mask = safe & exclusion.data

    file_model = observation.bkg
    backgrounds: dict[str, Map] = {}
    if file_model is not None:  # as gammapy reads it, H.E.S.S.'s alignment rule included: what a user gets
        backgrounds["file"] = maker.make_background(geom, observation)
    backgrounds["bkgdb"] = model_background(maker, geom, observation, job.model)
    for background in backgrounds.values():
        mask &= np.isfinite(background.data) & (background.data > 0)

    result = FitResult(job.obs_id, counts=float(counts.data[mask].sum()))
    energies = energy.edges.to_value("TeV")
    used = np.flatnonzero(mask.any(axis=(1, 2)))
    if len(used):
        result.e_min_tev, result.e_max_tev = float(energies[used[0]]), float(energies[used[-1] + 1])
    for label, background in backgrounds.items():
        dataset = MapDataset(
            counts=counts,
            background=background,
            name=str(job.obs_id),
            mask_safe=Map.from_geom(geom, data=mask, dtype=bool),
        )
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


def model_background(maker: MapDatasetMaker, geom: WcsGeom, observation: Observation, model: BackgroundIRF) -> Map:
    """Predicted background counts of ``model`` for ``observation`` on ``geom``, in the model's own FoV frame.

    As ``maker.make_background`` with ``observation.bkg = model``, but not through gammapy's
    ``Observation.bkg``, which relabels any background of a H.E.S.S. SASH run as reversed RA/Dec
    (`bkgdb.gadf.sash`): an ALTAZ or RADEC model is evaluated as such whatever the run's header
    says. ``model`` is not changed.
    """
    from gammapy.makers.utils import make_map_background_irf

    if maker.background_interp_missing_data:
        model = copy.deepcopy(model)  # filled in place by gammapy
        model.interp_missing_data(axis_name="energy")
    if maker.background_pad_offset and model.has_offset_axis:
        model = model.pad(1, mode="edge", axis_name="offset")
    return make_map_background_irf(
        pointing=observation.pointing,
        ontime=observation.observation_time_duration,
        bkg=model,
        geom=geom,
        time_start=observation.tstart,
        fov_rotation_step=maker.fov_rotation_step,
        oversampling=maker.background_oversampling,
        use_region_center=getattr(maker, "use_region_center", True),
        location=observation.observatory_earth_location,
    )


def outside_circles(geom: WcsGeom, circles: Iterable[Circle]) -> Map:
    """Boolean `~gammapy.maps.Map` on ``geom``: pixel centres outside every (ra, dec, radius) circle (deg).

    Angular distances on the sphere, as the pieces were cut; much faster than one
    `regions` mask per circle (H.E.S.S. fields have dozens of stars).
    """
    from gammapy.maps import Map

    from bkgdb.makers.sphere import unit_vectors

    image = geom.to_image()
    coords = image.get_coord(frame="icrs")
    pixels = unit_vectors(coords.lon.to_value("deg"), coords.lat.to_value("deg"))
    inside = np.zeros(image.data_shape, dtype=bool)
    for ra, dec, radius in circles:
        inside |= pixels @ unit_vectors(ra, dec) >= np.cos(np.radians(radius))
    return Map.from_geom(geom, data=np.broadcast_to(~inside, geom.data_shape).copy(), dtype=bool)
