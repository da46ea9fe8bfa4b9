import csv
import io
import json
import re

import pytest
from typer.testing import CliRunner

from bkgdb.cli import app

runner = CliRunner()


def bkgdb(*args, db=None):
    arguments = (["--db", db] if db else []) + [str(arg) for arg in args]
    return runner.invoke(app, arguments)


def test_every_command_has_help_text():
    for command in app.registered_commands:
        name = command.name or command.callback.__name__
        result = bkgdb(name, "--help")
        assert result.exit_code == 0
        assert (command.callback.__doc__ or "").strip(), f"{name} has no help text"


def test_index_runs_info(db_url, simulated_datastore):
    result = bkgdb("index", simulated_datastore, db=db_url)
    assert result.exit_code == 0, result.output
    assert "5 new, 0 updated, 0 unchanged, 0 failed" in result.output
    assert "0 new, 0 updated, 5 unchanged, 0 failed" in bkgdb("index", simulated_datastore, db=db_url).output

    listing = json.loads(bkgdb("runs", "--where", "obs_id>=1003", "--format", "json", db=db_url).output)
    assert [row["obs_id"] for row in listing] == [1003, 1004]
    assert listing[0]["object_name"] == "SIM FIELD"

    rows = list(csv.DictReader(io.StringIO(
        bkgdb("runs", "-w", "obs_id<1002", "-c", "obs_id,DEADC,datastore", "-f", "csv", db=db_url).output)))
    assert [row["obs_id"] for row in rows] == ["1000", "1001"]
    assert float(rows[0]["DEADC"]) == pytest.approx(0.9)
    assert rows[0]["datastore"] == str(simulated_datastore.resolve())

    table = bkgdb("runs", db=db_url).output
    assert "5 ok runs" in table and "1004" in table

    info = bkgdb("info", db=db_url)
    assert info.exit_code == 0
    assert "runs: 5 indexed, 0 failed" in info.output
    summary = json.loads(bkgdb("info", "--format", "json", db=db_url).output)
    assert summary["datastores"][0]["runs"] == 5


def test_failed_runs_are_listed_with_reasons(db_url, datastore_copy):
    (datastore_copy / "data" / "run_001002.fits.gz").write_bytes(b"SIMPLE  =  not really fits")
    result = bkgdb("index", datastore_copy, db=db_url)
    assert result.exit_code == 0
    assert "4 new, 0 updated, 0 unchanged, 1 failed" in result.output
    assert "failed: run 1002" in result.output
    listing = json.loads(bkgdb("runs", "--failed", "-f", "json", db=db_url).output)
    assert [row["obs_id"] for row in listing] == [1002]
    assert "cannot read" in listing[0]["error"]


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_password_is_hidden(db_url):
    # The test server trusts local connections, so any password is accepted and must not be shown.
    with_password = db_url.replace("://postgres@", "://postgres:topsecret@")
    result = bkgdb("info", db=with_password)
    assert result.exit_code == 0, result.output
    assert "topsecret" not in result.output and "***" in result.output


@pytest.mark.parametrize("args, message", [
    (["index", "/no/such/datastore"], "datastore folder does not exist"),
    (["index", "."], "no obs-index file"),
    (["--db", "postgresql://postgres@127.0.0.1:1/x", "info"], "cannot connect"),
    (["--db", "nonsense+what://", "info"], "unsupported database"),
    (["--db", "postgresql://user@host:notaport/db", "info"], "malformed"),
    (["runs", "--where", "zenith<<3"], "needs a number|cannot parse"),
    (["runs", "--where", "nosuch=1"], "unknown column"),
])
def test_user_errors_are_one_line_with_exit_code_2(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BKGDB_URL", raising=False)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    assert "Traceback" not in result.output
    assert re.search(message, lines[0])


def test_index_with_config_then_cache_and_exclusions(db_url, simulated_datastore, tmp_path):
    from bkgdb.simulate import write_source_catalogue

    catalogue = write_source_catalogue(tmp_path / "cat.fits", [{"name": "Known source", "ra_deg": 151.0,
                                                                 "dec_deg": 29.5}])
    config = tmp_path / "config.yaml"
    config.write_text(f"""
binning: {{e_min: 0.1, e_max: 100, e_bins: 10, off_min: 0, off_max: 2.5, off_bins: 5, e_bin: 3}}
exclusion:
  gammacat: {catalogue}
  hawc: none
  star_cat: none
  exclude_regions: [[150.5, 30.0, 0.2, "my region"]]
""")
    result = bkgdb("index", simulated_datastore, "--config", config, "--jobs", "2", db=db_url)
    assert result.exit_code == 0, result.output
    assert "Warning: unknown key binning.e_bin" in result.output
    assert "5 new, 0 updated, 0 unchanged, 0 failed; 5 pieces computed" in result.output
    again = bkgdb("index", simulated_datastore, "--config", config, db=db_url)
    assert "0 new, 0 updated, 5 unchanged, 0 failed" in again.output and "pieces" not in again.output

    listing = json.loads(bkgdb("exclusions", "1001", "-f", "json", db=db_url).output)
    assert {row["name"] for row in listing} == {"Known source", "my region"}

    summary = json.loads(bkgdb("cache", "-f", "json", db=db_url).output)
    assert [row["pieces"] for row in summary] == [5]
    dropped = bkgdb("cache", "--drop-exclusion", summary[0]["exclusion"], db=db_url)
    assert "dropped 5 pieces" in dropped.output
    assert json.loads(bkgdb("cache", "-f", "json", db=db_url).output) == []
    missing = bkgdb("exclusions", "1001", db=db_url)
    assert missing.exit_code == 2 and "no background pieces" in missing.output


def test_config_errors_are_one_line(simulated_datastore, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("exclusion: {exposure_method: guess}\n")
    result = bkgdb("index", simulated_datastore, "--config", config, db=str(tmp_path / "db.sqlite"))
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "Error: exclusion.exposure_method must be one of geometric, counts-ratio, got 'guess'"]
