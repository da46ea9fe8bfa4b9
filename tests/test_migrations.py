import subprocess
import sys
from importlib import resources
from pathlib import Path

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from bkgdb.store.database import (
    SCHEMA_HEAD, create_engine, current_revision, downgrade_schema, head_revision, upgrade_schema,
)
from bkgdb.store.models import Base


def test_models_and_migrations_agree(db_url):
    engine = create_engine(db_url)
    upgrade_schema(engine)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []
    engine.dispose()


def test_upgrade_downgrade_upgrade(db_url):
    engine = create_engine(db_url)
    upgrade_schema(engine)
    assert current_revision(engine) == head_revision(engine) == SCHEMA_HEAD
    assert {"runs", "datastores"} <= set(sa.inspect(engine).get_table_names())
    downgrade_schema(engine)
    assert current_revision(engine) is None
    assert not {"runs", "datastores"} & set(sa.inspect(engine).get_table_names())
    upgrade_schema(engine)
    assert current_revision(engine) == head_revision(engine)
    engine.dispose()


def test_migrations_ship_with_the_package():
    assert Path(str(resources.files("bkgdb.migrations")), "env.py").is_file()


def test_init_works_from_any_folder(tmp_path):
    """`bkgdb init` as installed, run away from the source tree."""
    result = subprocess.run(
        [sys.executable, "-m", "bkgdb.cli.main", "--db", "fresh.sqlite", "init"],
        cwd=tmp_path, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "schema revision" in result.stdout
    engine = create_engine(str(tmp_path / "fresh.sqlite"))
    assert current_revision(engine) == head_revision(engine)


def test_an_older_database_is_upgraded_on_first_use(db_url):
    from bkgdb.store.catalogue import RunCatalogue

    engine = create_engine(db_url)
    upgrade_schema(engine, "0001")
    assert "pieces" not in sa.inspect(engine).get_table_names()
    RunCatalogue.open(db_url)
    assert current_revision(engine) == SCHEMA_HEAD
    assert "pieces" in sa.inspect(engine).get_table_names()
    engine.dispose()
