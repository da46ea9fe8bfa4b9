"""Shared fixtures: a fresh database per test on SQLite and PostgreSQL, and test datastores.

PostgreSQL cases need ``BKGDB_TEST_POSTGRES_URL`` (a server where the user may create databases,
e.g. ``postgresql://postgres@127.0.0.1:5432/postgres``); each test gets a database of its own.
Real-data cases need ``GAMMAPY_DATA``. Without them those cases skip, except in CI (``CI=true``),
where a missing PostgreSQL URL is an error.
"""

import os
import shutil
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from astropy import units as u
from astropy.coordinates import SkyCoord

from bkgdb.simulate import BackgroundTruth, DatastoreSimulator, PointSource, write_source_catalogue
from bkgdb.store.catalogue import RunCatalogue
from bkgdb.store.database import resolve_url
from bkgdb.store.models import PieceRow, RegionSet, Run

POSTGRES_URL = os.environ.get("BKGDB_TEST_POSTGRES_URL")
GAMMAPY_DATA = os.environ.get("GAMMAPY_DATA")
IN_CI = os.environ.get("CI", "").lower() == "true"
#: The known background and source of the `sim` datastore (figures and the validation report).
PLOT_TRUTH = BackgroundTruth(norm=1e-4, energy_range_tev=(0.3, 100.0))
PLOT_SOURCE = PointSource(ra_deg=200.0, dec_deg=40.0, rate_per_s=0.5, psf_sigma_deg=0.06, name="Bright source")


#: Run columns that differ between two indexes of the same files.
VOLATILE_RUN_COLUMNS = {"id", "datastore_id", "indexed_at"}


def index_into_sqlite(path, datastore, config, jobs=1):
    """(URL, report) of an index of ``datastore`` with ``config`` into a new SQLite file at ``path``."""
    url = f"sqlite:///{path}"
    catalogue = RunCatalogue.open(url)
    try:
        report = catalogue.index(datastore, config=config, jobs=jobs)
    finally:
        catalogue.engine.dispose()
    return url, report


def ctrl_c_as_in_a_terminal():
    """``preexec_fn`` for a process under test that gets Ctrl-C: SIGINT at its default, so that Python
    raises KeyboardInterrupt. A process started in the background by a shell without job control
    inherits SIGINT ignored, and so would the process under test (it then ran on to the end)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def one_error_line(result):
    """The one line ``Error: ...`` of a CLI result that failed as a user error should (exit code 2),
    with no traceback and no SQL."""
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output and "SELECT" not in result.output and "INSERT" not in result.output
    return lines[0]


def catalogue_content(url):
    """Runs by OBS_ID (without ids and timestamps) and the values and bytes of their pieces: what
    two indexes of the same files must agree on, whatever order they wrote the runs in."""
    engine = sa.create_engine(resolve_url(url))
    try:
        with engine.connect() as connection:
            runs = {
                row["obs_id"]: {key: value for key, value in row.items() if key not in VOLATILE_RUN_COLUMNS}
                for row in connection.execute(sa.select(Run.__table__)).mappings()
            }
            table = PieceRow.__table__
            # The regions themselves: the ids of their sets depend on the order runs were written in.
            columns = [
                column
                for column in table.c
                if column.name not in ("id", "run_id", "binning_id", "exclusion_id", "created_at", "region_set_id")
            ] + [RegionSet.regions]
            pieces = {}
            query = (
                sa.select(Run.obs_id, *columns)
                .join(Run, Run.id == table.c.run_id)
                .outerjoin(RegionSet, RegionSet.id == table.c.region_set_id)
            )
            for obs_id, *values in connection.execute(query):
                pieces.setdefault(obs_id, []).append(
                    tuple(bytes(v) if isinstance(v, memoryview) else v for v in values)
                )
    finally:
        engine.dispose()
    # A run's pieces (one per binning) in a fixed order: the order rows were written in is no content.
    return {"runs": runs, "pieces": {obs_id: sorted(rows, key=repr) for obs_id, rows in pieces.items()}}


def gammapy_data_path(*parts):
    """A path below $GAMMAPY_DATA, or skip the test with the reason."""
    if not GAMMAPY_DATA:
        pytest.skip("GAMMAPY_DATA is not set: real-data test skipped")
    path = Path(GAMMAPY_DATA, *parts)
    if not path.exists():
        pytest.skip(f"{path} does not exist: real-data test skipped")
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """URL of a new, empty database: an SQLite file, or a PostgreSQL database made for this test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'bkgdb.sqlite'}"
        return
    if not POSTGRES_URL:
        if IN_CI:
            pytest.fail("BKGDB_TEST_POSTGRES_URL must be set in CI: PostgreSQL tests may not skip there")
        pytest.skip("BKGDB_TEST_POSTGRES_URL is not set: PostgreSQL case skipped")
    from bkgdb.store.database import resolve_url

    admin = sa.create_engine(resolve_url(POSTGRES_URL), isolation_level="AUTOCOMMIT")
    name = f"bkgdb_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(resolve_url(POSTGRES_URL)).set(database=name)
    yield url.render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def catalogue(db_url):
    catalogue = RunCatalogue.open(db_url)
    yield catalogue
    catalogue.engine.dispose()


@pytest.fixture(scope="session")
def simulated_datastore(tmp_path_factory):
    """A small simulated datastore (5 runs); copy it before changing it."""
    path = tmp_path_factory.mktemp("sim") / "datastore"
    pointings = [(150.0 + i, 30.0 - 0.5 * i) for i in range(5)]
    DatastoreSimulator(truth=BackgroundTruth(norm=3e-6), pointings=pointings, ontime_s=600.0).run(path)
    return path


@pytest.fixture
def datastore_copy(simulated_datastore, tmp_path):
    """A private copy of the simulated datastore that a test may change."""
    path = tmp_path / "datastore"
    shutil.copytree(simulated_datastore, path)
    return path


@pytest.fixture
def hess_dr1():
    return gammapy_data_path("hess-dl3-dr1")


@pytest.fixture
def magic_joint_crab():
    return gammapy_data_path("joint-crab", "dl3", "magic")


@pytest.fixture(scope="session")
def sim(tmp_path_factory):
    """A datastore with a known background (`PLOT_TRUTH`), a source run and a catalogue of the source."""
    folder = tmp_path_factory.mktemp("plots")
    # OBS_IDs 300-306: four similar empty-field runs, one at high zenith, the source run, one in the Galactic plane.
    field, plane_field, zeniths = (180.0, 50.0), (266.4, -28.9), [20.0, 22.0, 24.0, 26.0, 55.0, 21.0, 23.0]
    centre = SkyCoord(PLOT_SOURCE.ra_deg * u.deg, PLOT_SOURCE.dec_deg * u.deg)
    wobble = centre.directional_offset_by(0 * u.deg, 0.7 * u.deg)
    pointings = [field] * 5 + [(float(wobble.ra.deg), float(wobble.dec.deg)), plane_field]
    DatastoreSimulator(
        truth=PLOT_TRUTH,
        pointings=pointings,
        source=PLOT_SOURCE,
        ontime_s=1500.0,
        seed=11,
        first_obs_id=300,
        zeniths=zeniths,
    ).run(folder / "datastore")
    write_source_catalogue(folder / "catalogue.fits", [PLOT_SOURCE])
    return folder


# -- the former bin-centre correction, a reference for the energy nodes ---------------------------


def local_spectral_index(background):
    """Spectral index per energy bin, from the spatially summed rates of its neighbours (log-log).

    Where a neighbour has no counts the one-sided slope is used; where neither has, 0.
    """
    import numpy as np

    n_energy = background.geometry.n_energy
    totals = background.counts.reshape(n_energy, -1).sum(axis=1)
    denominator = background.denominator.reshape(n_energy, -1).sum(axis=1)
    mean = np.zeros(n_energy)
    np.divide(totals, denominator, out=mean, where=(totals > 0) & (denominator > 0))
    log_centre = np.log(background.geometry.energy_centres)
    index = np.zeros(n_energy)
    for i in range(n_energy):
        around = [j for j in (i - 1, i, i + 1) if 0 <= j < n_energy and mean[j] > 0]
        if mean[i] > 0 and len(around) >= 2:
            lo, hi = around[0], around[-1]
            index[i] = -(np.log(mean[hi]) - np.log(mean[lo])) / (log_centre[hi] - log_centre[lo])
    return index


def power_law_centre_rates(rate, background):
    """Bin-averaged rates scaled to a power law's value at the bins' log centres, with the local
    index of `local_spectral_index`: bkgdb's correction before the energy nodes, exact for a power
    law only (near the threshold gammapy integrated it to 13-52 % fewer counts than were summed)."""
    import numpy as np

    geometry = background.geometry
    edges, centres = geometry.energy_edges, geometry.energy_centres
    index = np.clip(local_spectral_index(background), -10, 10)
    factor = []
    for lo, hi, centre, g in zip(edges[:-1], edges[1:], centres, index, strict=True):
        if abs(g - 1) < 1e-6:
            integral = centre * np.log(hi / lo)  # integral of (E / E_c)**-1
        else:
            integral = (hi ** (1 - g) - lo ** (1 - g)) / (1 - g) * centre**g
        factor.append((hi - lo) / integral)
    shape = (-1,) + (1,) * len(geometry.spatial_shape)
    return np.asarray(rate, float) * np.reshape(factor, shape)
