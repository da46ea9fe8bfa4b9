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

from bkgdb.store.catalogue import RunCatalogue
from bkgdb.simulate import BackgroundTruth, DatastoreSimulator

POSTGRES_URL = os.environ.get("BKGDB_TEST_POSTGRES_URL")
GAMMAPY_DATA = os.environ.get("GAMMAPY_DATA")
IN_CI = os.environ.get("CI", "").lower() == "true"


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
