"""Runs flagged bad and empty runs stay in the catalogue but never build a background."""

import json

import pytest
import sqlalchemy as sa
from astropy.io import fits
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from bkgdb.background import BackgroundBuilder
from bkgdb.cli.main import app
from bkgdb.config import Binning, BkgdbConfig, ExclusionSettings, IOSettings, SelectionSettings
from bkgdb.errors import BkgdbError
from bkgdb.store.flags import default_author, flag_run, run_flags
from bkgdb.store.models import Run, RunFlag

BINNING = Binning(e_min=0.1, e_max=100, e_bins=6, off_min=0, off_max=2.5, off_bins=4)
CONFIG_YAML = """
binning: {e_min: 0.1, e_max: 100, e_bins: 6, off_min: 0, off_max: 2.5, off_bins: 4}
exclusion: {gammacat: none, hawc: none, star_cat: none}
background_selection: {el_diff: null, az_diff: null, gal_lat_min: 10}
"""


def make_config():
    return BkgdbConfig(
        binnings=[BINNING],
        exclusion=ExclusionSettings(gammacat=None, hawc=None, star_cat=None),
        selection=SelectionSettings(el_diff=None, az_diff=None, gal_lat_min=10),
        io=IOSettings(),
    )


def rewrite_events(path, change):
    """Rewrite a run file with ``change(events_hdu)`` applied (astropy, as a user's tool would)."""
    with fits.open(path) as hdul:
        change(hdul["EVENTS"])
        hdul.writeto(path, overwrite=True)


def test_flagged_bad_is_never_selected_and_good_again_is(catalogue, simulated_datastore):
    config = make_config()
    catalogue.index(simulated_datastore, config=config)
    builder = BackgroundBuilder(catalogue, config)
    assert 1003 in builder.build(1000).selection.obs_ids

    entry = flag_run(catalogue.engine, 1003, "bad", "camera 2 off half the run", author="alice")
    assert (entry["flag"], entry["author"]) == ("bad", "alice")
    flagged = builder.build(1000)
    assert sorted(flagged.selection.obs_ids) == [1001, 1002, 1004]
    assert ("flagged bad", 3) in flagged.selection.funnel

    flag_run(catalogue.engine, 1003, "good", None)  # the newest flag is in force
    assert sorted(builder.build(1000).selection.obs_ids) == [1001, 1002, 1003, 1004]
    history = run_flags(catalogue.engine, 1003)
    assert [(row["flag"], row["reason"], row["in_force"]) for row in history] == [
        ("bad", "camera 2 off half the run", False),
        ("good", None, True),
    ]
    assert history[1]["author"] == default_author() != ""


def test_flags_need_a_known_run_and_a_reason(catalogue, simulated_datastore):
    catalogue.index(simulated_datastore)
    with pytest.raises(BkgdbError, match="run 4242 is not in the catalogue"):
        flag_run(catalogue.engine, 4242, "bad", "typo")
    with pytest.raises(BkgdbError, match="say why run 1001 is bad"):
        flag_run(catalogue.engine, 1001, "bad", "  ")
    with pytest.raises(BkgdbError, match="'bad' or 'good', got 'ugly'"):
        flag_run(catalogue.engine, 1001, "ugly", "x")
    with Session(catalogue.engine) as session:
        assert session.scalar(sa.select(sa.func.count(RunFlag.id))) == 0


def test_flag_survives_reindexing_a_changed_file(catalogue, datastore_copy):
    config = make_config()
    catalogue.index(datastore_copy, config=config)
    flag_run(catalogue.engine, 1002, "bad", "bad weather")
    rewrite_events(
        datastore_copy / "data" / "run_001002.fits.gz", lambda hdu: hdu.header.set("COMMENT", "recalibrated")
    )
    report = catalogue.index(datastore_copy, config=config)
    assert (report.updated, report.unchanged) == (1, 4)
    selection = BackgroundBuilder(catalogue, config).build(1000).selection
    assert 1002 not in selection.obs_ids and ("flagged bad", 3) in selection.funnel


def test_empty_run_is_catalogued_but_never_selected(catalogue, datastore_copy):
    rewrite_events(datastore_copy / "data" / "run_001003.fits.gz", lambda hdu: setattr(hdu, "data", hdu.data[:0]))
    config = make_config()
    report = catalogue.index(datastore_copy, config=config)
    assert (report.new, report.failed) == (5, 0)
    with Session(catalogue.engine) as session:
        empty = session.scalars(sa.select(Run).where(Run.obs_id == 1003)).one()
        assert (empty.status, empty.event_count) == ("ok", 0)
    selection = BackgroundBuilder(catalogue, config).build(1000).selection
    assert sorted(selection.obs_ids) == [1001, 1002, 1004]
    assert selection.funnel[:2] == [("candidate runs with pieces", 4), ("empty runs", 3)]


def test_flag_command(db_url, simulated_datastore, tmp_path):
    runner = CliRunner()
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG_YAML)

    def bkgdb(*args):
        return runner.invoke(app, ["--db", db_url, *map(str, args)])

    assert bkgdb("index", simulated_datastore, "--config", config).exit_code == 0
    result = bkgdb("flag", "1003", "--bad", "mirror alignment lost", "--by", "bob")
    assert result.exit_code == 0, result.output
    assert "run 1003 flagged bad by bob: mirror alignment lost" in result.output
    built = bkgdb("background", "1000", "--config", config, "-o", tmp_path / "bkg.fits")
    assert built.exit_code == 0, built.output
    assert "flagged bad removed 1 (3 left)" in built.output and "background from 3 runs" in built.output

    assert bkgdb("flag", "1003", "--good", "realigned").exit_code == 0
    history = json.loads(bkgdb("flag", "1003", "-f", "json").output)
    assert [(row["flag"], row["author"], row["in_force"]) for row in history] == [
        ("bad", "bob", False),
        ("good", default_author(), True),
    ]

    missing_reason = bkgdb("flag", "1003", "--bad")
    assert missing_reason.exit_code == 2 and "Error: say why run 1003 is bad" in missing_reason.output
    both = bkgdb("flag", "1003", "--bad", "--good", "x")
    assert both.exit_code == 2 and "Error: give --bad or --good, not both" in both.output
