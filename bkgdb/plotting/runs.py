"""Figures of one catalogued run, built on the way: its model, its selection, its significance maps.

Used by ``bkgdb plot`` and the validation report: each builds the run's background with a
`~bkgdb.background.BackgroundBuilder` and draws it with the figure modules.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bkgdb.errors import BkgdbError
from bkgdb.plotting.models import model_curves, plot_model, plot_model_3d
from bkgdb.plotting.selection import plot_selection
from bkgdb.plotting.significance import SignificanceMaps, significance_maps
from bkgdb.store.targets import run_start_times

if TYPE_CHECKING:
    from gammapy.data import Observation
    from matplotlib.figure import Figure

    from bkgdb.background import BackgroundBuilder
    from bkgdb.built import BuiltBackground
    from bkgdb.store.catalogue import RunCatalogue
    from bkgdb.store.models import Run

__all__ = ["plot_run_model", "plot_run_selection", "run_significance_maps", "run_start_times"]

log = logging.getLogger(__name__)


def _target_datastore(catalogue: RunCatalogue, target: Run) -> str:
    """Folder of the datastore holding the catalogue row ``target``."""
    from bkgdb.store.targets import datastore_folder

    folder = datastore_folder(catalogue, target.datastore_id)
    if folder is None:
        raise BkgdbError(f"run {target.obs_id}'s datastore is not in the catalogue")
    return folder


def _observation(datastore: str | Path, obs_id: int) -> Observation:
    """The gammapy observation of a run, any IRF optional."""
    from bkgdb.fov_fit import open_datastore  # cached: a report opens one datastore for several runs

    try:
        return open_datastore(str(datastore)).obs(int(obs_id), required_irf="all-optional")
    except Exception as exc:  # noqa: BLE001 -- gammapy raises many kinds; one line says which run and why
        raise BkgdbError(f"gammapy cannot open run {obs_id} of {datastore}: {type(exc).__name__}: {exc}") from None


def plot_run_model(
    builder: BackgroundBuilder,
    obs_id: int,
    path: str | Path | None = None,
    datastore: str | Path | None = None,
    with_reference: bool = True,
) -> tuple[Figure, BuiltBackground, bool]:
    """Build run ``obs_id``'s background and plot it beside the model in its own file, if any.

    A 3D background (the builder's ``three_d``) is drawn as FoV images per energy band, alone.

    Returns
    -------
    figure : `matplotlib.figure.Figure`
    built : `~bkgdb.background.BuiltBackground`
    has_reference : bool
        Whether the run file's own model was drawn.
    """
    built = builder.build(obs_id, datastore)
    geometry = built.assembled.geometry
    if geometry.is_3d:
        selection, assembled = built.selection, built.assembled
        title = (
            f"run {obs_id}: bkgdb model from {len(selection.obs_ids)} runs ({assembled.ontime_s / 3600:.1f} h), "
            f"smoothing {built.smoothing}"
        )
        return plot_model_3d(built.model, path=path, title=title, alignment=geometry.alignment), built, False
    reference = None
    if with_reference:
        folder = _target_datastore(builder.catalogue, built.target)
        try:
            reference = _observation(folder, obs_id).bkg
        except BkgdbError as exc:
            log.warning("%s: plotted without the file's own model", exc)
    figure = plot_model(model_curves(built), reference=reference, path=path)
    return figure, built, reference is not None


def plot_run_selection(
    builder: BackgroundBuilder, obs_id: int, path: str | Path | None = None, datastore: str | Path | None = None
) -> Figure:
    """The selection funnel of run ``obs_id``, candidate by candidate (`bkgdb.store.funnel`)."""
    from bkgdb.store.funnel import funnel_picture

    return plot_selection(funnel_picture(builder, obs_id, datastore), path=path)


def run_significance_maps(
    builder: BackgroundBuilder, obs_id: int, datastore: str | Path | None = None, **kwargs: Any
) -> SignificanceMaps:
    """`significance_maps` of run ``obs_id`` with its bkgdb background, its pieces' exclusion regions masked."""
    from bkgdb.store.targets import piece_regions

    built = builder.build(obs_id, datastore)
    with builder.catalogue.session() as session:
        excluded = piece_regions(session, built.target.id, built.binning_id, built.exclusion_id)
    if excluded is None:
        raise BkgdbError(
            f"run {obs_id} has no piece of its own, so its exclusion regions are unknown: "
            "index its datastore with --config"
        )
    observation = _observation(_target_datastore(builder.catalogue, built.target), obs_id)
    # Not set as observation.bkg: gammapy relabels any background of a H.E.S.S. SASH run (bkgdb.gadf.sash).
    return significance_maps(observation, excluded, model=built.model, **kwargs)
