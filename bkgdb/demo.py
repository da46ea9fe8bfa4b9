"""`bkgdb demo`: the whole job on simulated data, with no files from elsewhere.

Simulates a datastore whose background follows a known rate (runs on three empty fields and
on a field with a bright point source listed in a small catalogue written here), indexes it with
background pieces, attaches backgrounds to every run, and compares one model with the truth.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from bkgdb.errors import BkgdbError
from bkgdb.geometry import PieceGeometry

if TYPE_CHECKING:
    from bkgdb.store.catalogue import RunCatalogue

__all__ = ["run_demo", "DemoReport", "claim_demo_folder", "claim_demo_database", "DEMO_MARKER"]

log = logging.getLogger(__name__)

SOURCE: dict[str, Any] = {"name": "Demo source", "ra_deg": 150.0, "dec_deg": 45.0}
#: The file that marks a folder as the demo's: a rerun replaces the demo's own files there.
DEMO_MARKER = ".bkgdb-demo"
#: The demo's own database in its folder (unless given another).
DEMO_DATABASE = "bkgdb-demo.sqlite"
#: What the demo writes in its folder (with the database's -wal, -shm or -journal files).
DEMO_FILES = ("datastore", "catalogue.fits", "bkgdb-demo.yaml", DEMO_DATABASE, "with-backgrounds")
EMPTY_FIELDS = [(160.0, 40.0), (175.0, 50.0), (190.0, 35.0)]


@dataclass
class DemoReport:
    """What `run_demo` wrote and how one run's model compares with the simulated truth."""

    folder: Path
    datastore: Path
    database_url: str
    config: Path
    attached: Path
    n_runs: int
    index_summary: str
    attach_summary: str
    target_obs_id: int
    n_background_runs: int
    ratio: float
    ratio_error: float
    chi2: float
    ndof: int
    fov_norm: float
    fov_norm_error: float


def _pointings() -> list[tuple[float, float]]:
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    pointings: list[tuple[float, float]] = []
    for ra, dec in EMPTY_FIELDS:
        pointings += [(ra, dec)] * 8
    source = SkyCoord(SOURCE["ra_deg"] * u.deg, SOURCE["dec_deg"] * u.deg)
    wobbles = source.directional_offset_by(np.arange(8) % 4 * 90 * u.deg, 0.7 * u.deg)
    pointings += [(float(ra), float(dec)) for ra, dec in zip(wobbles.ra.deg, wobbles.dec.deg, strict=True)]
    return pointings


def demo_config(catalogue: str | Path) -> dict[str, Any]:
    """The demo's config (as YAML would give it), with ``catalogue`` as its only source catalogue."""
    return {
        "binning": {"e_min": 0.1, "e_max": 100, "e_bins": 12, "off_min": 0, "off_max": 2.5, "off_bins": 10},
        "exclusion": {"gammacat": str(catalogue), "hawc": "none", "star_cat": "none", "source_radius": 0.35},
        "background_selection": {"el_diff": 0.15, "az_diff": None, "gal_lat_min": 10, "smooth_method": "none"},
        "config": {"njobs": 2},
    }


def claim_demo_folder(folder: Path) -> None:
    """Make ``folder`` the demo's, or refuse: the demo never writes over files that are not its own.

    A new or empty folder is taken (and marked with `DEMO_MARKER`), and so is a folder an earlier
    demo made: marked, or (demos before the mark) holding only what the demo writes, with the
    demo's config. Anything else, a user's analysis folder say, is refused before anything is written.

    Raises
    ------
    BkgdbError
        ``folder`` is a file, or a folder with files the demo did not write.
    """
    check_demo_folder(folder)
    _mark_demo_folder(folder)


def _mark_demo_folder(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / DEMO_MARKER).write_text("Made by `bkgdb demo`: running it again here replaces the demo's own files.\n")


def check_demo_folder(folder: Path) -> None:
    """Refuse ``folder`` for the demo unless `claim_demo_folder` would take it; writes nothing.

    Raises
    ------
    BkgdbError
        ``folder`` is a file, or a folder with files the demo did not write (also in the folder
        its attach writes, which that would refuse).
    """
    from bkgdb.outputs import check_writable_folder

    marker = folder / DEMO_MARKER
    if folder.exists() and not folder.is_dir():
        raise BkgdbError(f"{folder} is a file: give a folder for the demo (new or empty)")
    check_writable_folder(folder)
    if folder.is_dir() and not marker.is_file() and any(folder.iterdir()):
        names = {
            path.name.removesuffix("-wal").removesuffix("-shm").removesuffix("-journal") for path in folder.iterdir()
        }
        config = folder / "bkgdb-demo.yaml"
        earlier_demo = names <= set(DEMO_FILES) and config.is_file()
        if earlier_demo:
            try:
                written = yaml.safe_load(config.read_text())
            except (yaml.YAMLError, UnicodeDecodeError):
                written = None
            earlier_demo = written == demo_config(folder / "catalogue.fits")
        if not earlier_demo:
            raise BkgdbError(
                f"{folder} is not empty and was not made by `bkgdb demo`: give a new or empty folder "
                f"(the demo writes {', '.join(DEMO_FILES)} there)"
            )
    # The attach replaces only what an attach wrote there: anything else is refused now, not after
    # the datastore and database were made again.
    attached = folder / "with-backgrounds"
    if attached.is_symlink() or (attached.exists() and not attached.is_dir()):
        raise BkgdbError(f"{attached} is not a folder the demo made: move it, or give the demo a new folder")
    if attached.is_dir():
        from bkgdb.gadf.destination import bkgdb_files

        _, others = bkgdb_files(attached)
        if others:
            shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
            raise BkgdbError(
                f"{attached} holds files bkgdb did not write ({shown}): move them, or give the demo a new folder"
            )


def claim_demo_database(catalogue: RunCatalogue, datastore: Path) -> RunCatalogue:
    """``catalogue`` for the demo's simulated ``datastore``, or refused (and closed) if it catalogues
    any other datastore: the simulated runs would join a user's real ones.

    Raises
    ------
    BkgdbError
        The database catalogues another datastore.
    """
    import sqlalchemy as sa

    from bkgdb.store.models import Datastore

    with catalogue.session() as session:
        others = [path for path in session.scalars(sa.select(Datastore.path)) if Path(path) != datastore]
    if others:
        catalogue.engine.dispose()
        more = f" and {len(others) - 1} more" if len(others) > 1 else ""
        raise BkgdbError(
            f"{catalogue.url} catalogues {others[0]}{more}: the demo's simulated runs would join them; "
            f"give a new database, or no --db (the demo then keeps its own in {datastore.parent})"
        )
    return catalogue


def run_demo(
    folder: str | Path = "bkgdb-demo",
    url: str | None = None,
    jobs: int = 2,
    progress: Callable[[str], None] | None = None,
) -> DemoReport:
    """Simulate, index, attach and check; return a `DemoReport`.

    Parameters
    ----------
    folder : str or `~pathlib.Path`
        Where everything is written: a new or empty folder, or an earlier demo's (`claim_demo_folder`).
        Default is ``./bkgdb-demo``.
    url : str, optional
        Database URL. Default is an SQLite file in ``folder``.
    jobs : int
        Worker processes for indexing. Default is 2.
    progress : callable, optional
        Called with a line of text at each step.
    """
    from gammapy.data import DataStore

    from bkgdb.background import BackgroundBuilder
    from bkgdb.config import BkgdbConfig
    from bkgdb.fov_fit import fov_background_norm
    from bkgdb.gadf.attach import attach_backgrounds
    from bkgdb.simulate import BackgroundTruth, DatastoreSimulator, PointSource, write_source_catalogue
    from bkgdb.store.catalogue import RunCatalogue

    say = progress or (lambda text: None)
    folder = Path(folder).expanduser().resolve()
    datastore = folder / "datastore"
    # The folder, then a database given, are checked before anything is written (a new database is
    # made by opening it): the demo's runs go into no catalogue but its own.
    check_demo_folder(folder)
    catalogue = None if url is None else claim_demo_database(RunCatalogue.open(url), datastore)
    _mark_demo_folder(folder)
    truth = BackgroundTruth()
    source = PointSource(SOURCE["ra_deg"], SOURCE["dec_deg"], rate_per_s=0.3, name=SOURCE["name"])

    say(
        f"simulating {len(_pointings())} runs (background {truth.norm:g} s-1 MeV-1 sr-1 at 1 TeV, "
        f"index {truth.index}) and a bright source ..."
    )
    obs_ids = DatastoreSimulator(
        truth=truth, pointings=_pointings(), source=source, ontime_s=1200.0, seed=42, object_name="Demo field"
    ).run(datastore)
    catalogue_path = write_source_catalogue(folder / "catalogue.fits", [source])
    config_path = folder / "bkgdb-demo.yaml"
    config_path.write_text(yaml.safe_dump(demo_config(catalogue_path), sort_keys=False))
    config = BkgdbConfig.from_dict(yaml.safe_load(config_path.read_text()))

    if catalogue is None:
        catalogue = RunCatalogue.open(str(folder / DEMO_DATABASE))
    say("indexing with background pieces ...")
    index_report = catalogue.index(datastore, config=config, jobs=jobs)
    say("building and attaching backgrounds ...")
    attached = folder / "with-backgrounds"
    # A rerun of the demo replaces its own earlier output (never the simulated datastore's files).
    attach_report = attach_backgrounds(BackgroundBuilder(catalogue, config), datastore, attached, overwrite=True)

    # Check one source-field run against the truth, reading back what gammapy reads.
    target = obs_ids[-1]
    observation = DataStore.from_dir(attached).obs(target)
    model = observation.bkg
    built = BackgroundBuilder(catalogue, config).build(target)
    counts = built.assembled.counts
    geometry = built.geometry
    assert geometry.offset_edges is not None  # the demo's binning is 2D
    true_rate = truth.expected_counts(geometry.energy_edges, geometry.offset_edges, 1.0) / geometry.denominator(
        np.ones(geometry.spatial_shape)
    )
    model_rate = gammapy_bin_means(model, geometry)
    use = counts > 20
    # Bin means, as gammapy integrates the model's nodes; each bin's error is 1/sqrt(counts).
    ratio = float(np.sum(model_rate[use] * counts[use] / true_rate[use]) / counts[use].sum())
    chi2 = float(np.sum(counts[use] * (model_rate[use] / true_rate[use] - 1) ** 2))
    norm = fov_background_norm(observation, [(source.ra_deg, source.dec_deg, 0.4)])
    return DemoReport(
        folder=folder,
        datastore=datastore,
        database_url=catalogue.url,
        config=config_path,
        attached=attached,
        n_runs=len(obs_ids),
        index_summary=index_report.summary(),
        attach_summary=attach_report.summary(),
        target_obs_id=target,
        n_background_runs=len(built.selection.obs_ids),
        ratio=ratio,
        ratio_error=float(1 / np.sqrt(counts[use].sum())),
        chi2=chi2,
        ndof=int(use.sum()),
        fov_norm=float(norm.value),
        fov_norm_error=float(norm.error),
    )


def gammapy_bin_means(model: Any, geometry: PieceGeometry, samples: int = 16) -> np.ndarray:
    """The mean over each (energy, offset) bin of what gammapy reads from a `~gammapy.irf.Background2D`.

    Its log-log integral over each energy bin (``integrate_log_log`` on ``samples`` sub-bins) at
    ``samples`` offsets per ring, averaged by solid angle: what a map of fine pixels predicts.
    """
    from astropy import units as u

    n_energy, n_offset = geometry.shape
    assert geometry.offset_edges is not None, "a 2D geometry"
    steps = np.arange(n_energy * samples + 1) / samples
    energy = np.exp(np.interp(steps, np.arange(n_energy + 1), np.log(geometry.energy_edges)))
    energy[0], energy[-1] = energy[0] * (1 + 1e-12), energy[-1] * (1 - 1e-12)  # inside gammapy's axis
    edges = geometry.offset_edges
    offset = (edges[:-1, None] + np.diff(edges)[:, None] * (np.arange(samples) + 0.5) / samples).ravel()
    weight = np.sin(np.radians(offset)).reshape(n_offset, samples)
    integral = model.integrate_log_log(
        axis_name="energy", energy=energy[:, None] * u.TeV, offset=offset[None, :] * u.deg
    ).to_value("s-1 MeV-1 sr-1 TeV")
    per_energy = integral.reshape(n_energy, samples, -1).sum(axis=1) / np.diff(geometry.energy_edges)[:, None]
    return (per_energy.reshape(n_energy, n_offset, samples) * weight).sum(axis=2) / weight.sum(axis=1)
