"""`bkgdb validate`: gammapy FoV norms of every target run with its bkgdb background, against a known truth."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
import yaml
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from bkgdb.background import BackgroundBuilder
from bkgdb.cli.main import app
from bkgdb.config import BkgdbConfig
from bkgdb.errors import BkgdbError
from bkgdb.simulate import BackgroundTruth, DatastoreSimulator, PointSource, write_source_catalogue
from bkgdb.store.models import BackgroundRow
from bkgdb.store.targets import target_runs
from bkgdb.validation import ROW_COLUMNS, validate_runs

runner = CliRunner()
# Events from 0.3 TeV only: fewer to simulate, as many in the fit's 0.5-10 TeV.
TRUTH = BackgroundTruth(norm=1e-4, energy_range_tev=(0.3, 100.0))
SCALE = 1.2
SOURCE = PointSource(ra_deg=200.0, dec_deg=40.0, rate_per_s=1.0, psf_sigma_deg=0.08, name="Bright source")
# Fields at |b| > 10 deg, and one in the Galactic plane that the config's gal_lat_min keeps out.
EMPTY_FIELDS = [(180.0, 50.0), (220.0, 30.0)]
PLANE_FIELD = (266.4, -28.9)


@pytest.fixture(scope="session")
def fields(tmp_path_factory):
    """Datastore ``normal``: 8 empty-field runs, 4 wobbling around a bright source and 1 in the
    Galactic plane, all from `TRUTH`; datastore ``scaled``: 4 empty-field runs whose rate is 1.2 times
    higher; a monitoring column TRIGRATE proportional to each run's rate."""
    folder = tmp_path_factory.mktemp("validate")
    centre = SkyCoord(SOURCE.ra_deg * u.deg, SOURCE.dec_deg * u.deg)
    wobbles = centre.directional_offset_by(np.arange(4) * 90 * u.deg, 0.7 * u.deg)
    pointings = [EMPTY_FIELDS[0]] * 4 + [EMPTY_FIELDS[1]] * 4 + list(zip(wobbles.ra.deg, wobbles.dec.deg, strict=True))
    pointings.append(PLANE_FIELD)
    DatastoreSimulator(
        truth=TRUTH,
        pointings=pointings,
        source=SOURCE,
        ontime_s=2000.0,
        seed=5,
        first_obs_id=100,
        extra_columns={"TRIGRATE": [100.0] * len(pointings)},
    ).run(folder / "normal")
    scaled = BackgroundTruth(norm=TRUTH.norm * SCALE, energy_range_tev=TRUTH.energy_range_tev)
    DatastoreSimulator(
        truth=scaled,
        pointings=[EMPTY_FIELDS[1]] * 4,
        ontime_s=2000.0,
        seed=6,
        first_obs_id=200,
        extra_columns={"TRIGRATE": [100.0 * SCALE] * 4},
    ).run(folder / "scaled")
    write_source_catalogue(folder / "catalogue.fits", [SOURCE])
    return folder


def config_values(fields, **selection):
    values = {
        "binning": {"e_min": 0.3, "e_max": 100, "e_bins": 10, "off_min": 0, "off_max": 2.5, "off_bins": 10},
        "exclusion": {"gammacat": str(fields / "catalogue.fits"), "hawc": "none", "star_cat": "none"},
        "background_selection": {"el_diff": None, "az_diff": None, "gal_lat_min": 10, **selection},
    }
    return values


def make_config(fields, **selection):
    return BkgdbConfig.from_dict(config_values(fields, **selection))


def write_config(path, fields, **selection):
    path.write_text(yaml.safe_dump(config_values(fields, **selection)))
    return path


def test_mean_norm_is_one_within_statistics(catalogue, fields):
    """Each run's background from the others predicts its counts: FoV norms scatter around 1 by their errors."""
    config = make_config(fields)
    catalogue.index(fields / "normal", config=config)
    report = validate_runs(catalogue, config, fields / "normal")
    rows = report.rows
    assert [row["obs_id"] for row in rows] == list(range(100, 112))  # the Galactic-plane run 112 is no target
    assert all(row["status"] == "ok" and row["normalisation"] == "none" for row in rows)
    assert all(row["runs_used"] == 11 for row in rows)  # the 12 others, minus the Galactic-plane run
    norms = np.array([row["norm"] for row in rows])
    errors = np.array([row["norm_error"] for row in rows])
    counts = np.array([row["counts"] for row in rows])
    predicted = np.array([row["predicted"] for row in rows])
    # gammapy's scale method: norm = counts / predicted, error = sqrt(counts) / predicted.
    assert np.allclose(norms, counts / predicted) and np.allclose(errors, np.sqrt(counts) / predicted)
    assert np.all((errors > 0.01) & (errors < 0.06))
    weights = 1 / errors**2
    mean, mean_error = np.sum(weights * norms) / weights.sum(), 1 / np.sqrt(weights.sum())
    assert abs(mean - 1) < 3 * mean_error, (mean, mean_error)
    # The model's own statistics (11 runs summed) add about 10 % to each run's variance.
    chi2 = np.sum(((norms - 1) / errors) ** 2)
    assert chi2 < 1.1 * len(rows) + 5 * np.sqrt(2 * len(rows)), chi2
    # No model in the simulated files: no 'file' columns and no 'file' summary.
    assert all(np.isnan(row["file_norm"]) for row in rows)
    overall = report.summary[0]
    assert (overall["model"], overall["zenith"], overall["runs"]) == ("bkgdb", "all", 12)
    assert overall["mean"] == pytest.approx(norms.mean()) and overall["median"] == pytest.approx(np.median(norms))
    assert sum(entry["runs"] for entry in report.summary[1:]) == 12
    assert {entry["model"] for entry in report.summary} == {"bkgdb"}


def test_source_left_in_the_fit_shows_as_a_high_norm(catalogue, fields, monkeypatch):
    """The exclusion regions of the pieces reach the fit: without them the source runs' norms rise."""
    from bkgdb import validation

    config = make_config(fields)
    catalogue.index(fields / "normal", config=config)
    source_runs = ["obs_id>=108"]
    with_mask = validate_runs(catalogue, config, fields / "normal", where=source_runs)
    monkeypatch.setattr(validation, "_excluded_regions", lambda *args: [])
    without_mask = validate_runs(catalogue, config, fields / "normal", where=source_runs)
    masked = np.mean([row["norm"] for row in with_mask.rows])
    unmasked = np.mean([row["norm"] for row in without_mask.rows])
    assert abs(masked - 1) < 0.05 and unmasked > masked + 0.1, (masked, unmasked)


def test_control_ring_recovers_a_known_rate_scale(catalogue, fields):
    """Runs with a 1.2 times higher rate: the control ring (2.0-2.5 deg, outside the fit's 2 deg)
    measures the scale and brings their FoV norms back to 1."""
    catalogue.index(fields / "normal", config=make_config(fields))
    catalogue.index(fields / "scaled", config=make_config(fields))
    normal_runs = {"io": {"search_datastore": str(fields / "normal")}}
    plain = BkgdbConfig.from_dict({**config_values(fields), **normal_runs})
    ring_values = config_values(fields, normalisation={"method": "control-ring", "offset_min": 2.0, "offset_max": 2.5})
    ring = BkgdbConfig.from_dict({**ring_values, **normal_runs})

    before = validate_runs(catalogue, plain, fields / "scaled").rows
    after = validate_runs(catalogue, ring, fields / "scaled").rows
    assert len(before) == len(after) == 4
    for row in before:
        assert row["norm"] == pytest.approx(SCALE, abs=4 * row["norm_error"] + 0.03)
    factors = np.array([row["norm_factor"] for row in after])
    factor_errors = np.array([row["norm_factor_error"] for row in after])
    assert np.all(factor_errors < 0.06)
    assert np.all(np.abs(factors - SCALE) < 4 * factor_errors), factors
    assert all(row["normalisation"] == "control-ring (offset 2-2.5 deg)" for row in after)
    assert all(row["norm_region"] == "offset 2.00-2.50 deg" for row in after)
    norms = np.array([row["norm"] for row in after])
    errors = np.hypot([row["norm_error"] for row in after], factor_errors)
    assert abs(norms.mean() - 1) < 3 * np.sqrt(np.sum(errors**2)) / len(norms), norms
    # Equal but for the few empty bins that fill_empty_bins fills from the plain sums.
    assert after[0]["norm"] == pytest.approx(before[0]["norm"] / after[0]["norm_factor"], rel=1e-4)


def test_monitor_normalisation_scales_by_the_column_ratio(catalogue, fields, tmp_path):
    catalogue.index(fields / "normal", config=make_config(fields))
    catalogue.index(fields / "scaled", config=make_config(fields))
    config = make_config(fields, normalisation={"method": "monitor", "column": "TRIGRATE"}, where=["obs_id<200"])
    builder = BackgroundBuilder(catalogue, config)
    built = builder.build(200)
    assert built.normalisation.factor == pytest.approx(SCALE)
    assert built.normalisation.region == "column TRIGRATE"
    plain = BackgroundBuilder(catalogue, make_config(fields, where=["obs_id<200"])).build(200)
    # Bins with counts are scaled (fill_empty_bins fills the others from the plain sums).
    counted = plain.assembled.counts > 0
    assert np.allclose(built.rate[counted], plain.rate[counted] * SCALE)
    builder.write(200, tmp_path / "bkg.fits")
    header = fits.getheader(tmp_path / "bkg.fits", "BACKGROUND")
    assert header["BKG_NRMM"] == "monitor" and header["BKG_NRMF"] == pytest.approx(SCALE)
    with Session(catalogue.engine) as session:
        stored = session.scalars(sa.select(BackgroundRow)).one()
        assert stored.selection["normalisation"] == {
            "method": "monitor",
            "factor": pytest.approx(SCALE),
            "error": 0.0,
            "region": "column TRIGRATE",
        }
        assert stored.selection["settings"]["normalisation_column"] == "TRIGRATE"
    with pytest.raises(BkgdbError, match="no value of column 'NOSUCH'"):
        BackgroundBuilder(
            catalogue, make_config(fields, normalisation={"method": "monitor", "column": "NOSUCH"})
        ).build(200)


def test_run_without_background_is_reported(catalogue, fields):
    config = make_config(fields, where=["obs_id<101"])
    catalogue.index(fields / "normal", config=config)
    report = validate_runs(catalogue, config, fields / "normal", where=["obs_id<103"])
    statuses = {row["obs_id"]: row["status"] for row in report.rows}
    assert statuses == {100: "no background", 101: "ok", 102: "ok"}
    assert report.without_background == [(100, report.rows[0]["reason"])]
    assert report.rows[0]["reason"].endswith("obs_id<101 removed 11 (0 left)")
    assert report.rows[0]["norm"] is None and report.rows[0]["runs_used"] is None
    assert report.summary[0]["runs"] == 2


def test_no_targets_is_an_error(catalogue, fields):
    config = make_config(fields)
    catalogue.index(fields / "normal", config=config)
    with pytest.raises(BkgdbError, match="no target runs"):
        validate_runs(catalogue, config, fields / "normal", where=["obs_id>1000"])


def test_cli_writes_csv_and_json_and_prints_the_summary(db_url, fields, tmp_path):
    config = write_config(tmp_path / "config.yaml", fields)
    base = ["--db", db_url, "validate", str(fields / "normal"), "--config", str(config), "-w", "obs_id<104"]

    result = runner.invoke(app, base + ["-o", str(tmp_path / "rows.csv"), "--jobs", "2"])
    assert result.exit_code == 0, result.output
    assert "FoV background norms" in result.stdout and "4 target runs, 4 fitted" in result.stdout
    with (tmp_path / "rows.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["obs_id"]) for row in rows] == [100, 101, 102, 103]
    assert list(rows[0]) == ROW_COLUMNS and all(0.8 < float(row["norm"]) < 1.2 for row in rows)

    result = runner.invoke(app, base + ["-o", str(tmp_path / "rows.json")])
    assert result.exit_code == 0, result.output
    parsed = json.loads((tmp_path / "rows.json").read_text())
    assert [row["obs_id"] for row in parsed] == [100, 101, 102, 103]
    assert parsed[0]["file_norm"] is None  # NaN becomes null
    assert [row["norm"] for row in parsed] == pytest.approx([float(row["norm"]) for row in rows])

    # CSV on stdout stays parseable: the summary goes to stderr then.
    result = runner.invoke(app, base + ["--format", "csv"])
    assert result.exit_code == 0, result.output
    assert len(list(csv.DictReader(result.stdout.splitlines()))) == 4
    assert "FoV background norms" in result.stderr


def test_cli_reports_runs_without_background_and_errors(db_url, fields, tmp_path):
    config = write_config(tmp_path / "config.yaml", fields, where=["obs_id<101"])
    result = runner.invoke(
        app, ["--db", db_url, "validate", str(fields / "normal"), "--config", str(config), "-w", "obs_id<102"]
    )
    assert result.exit_code == 0, result.output
    assert "no background: run 100: no runs selected for run 100" in result.stdout
    table = result.stdout.split("FoV background norms")[0]  # the default: a table, then the summary
    assert "2 runs of" in table and "+-" in table and "no background: no runs selected" in table
    result = runner.invoke(
        app,
        ["--db", db_url, "validate", str(fields / "normal"), "--config", str(config), "-o", str(tmp_path / "rows.txt")],
    )
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1].startswith("Error: cannot tell the format of")
    result = runner.invoke(
        app, ["--db", db_url, "validate", str(fields / "normal"), "--config", str(config), "-w", "zenith<<3"]
    )
    assert result.exit_code == 2 and "Error:" in result.stderr


# -- real data -----------------------------------------------------------------------------------


def test_hess_dr1_targets_and_norms(hess_dr1, tmp_path):
    """configs/hess-dr1.yaml is judged on the 61 extragalactic DR1 runs; a few are fitted with both models."""
    from conftest import gammapy_data_path

    from bkgdb.config import load_config
    from bkgdb.store.catalogue import RunCatalogue

    gammapy_data_path("catalogs")
    config = load_config(Path(__file__).resolve().parent.parent / "configs" / "hess-dr1.yaml")
    catalogue = RunCatalogue.open(str(tmp_path / "hess.sqlite"))
    catalogue.index(hess_dr1, config=config, jobs=2)
    targets = target_runs(catalogue, config, hess_dr1)
    assert len(targets) == 61 and all(abs(run.glat_deg) > 10 and run.n_tels >= 3 for run in targets)
    report = validate_runs(catalogue, config, hess_dr1, where=["obs_id<20600"], jobs=1)
    assert [row["obs_id"] for row in report.rows] == [20275, 20339, 20561]
    for row in report.rows:
        assert row["status"] == "ok"
        assert np.isfinite(row["norm"]) and 0 < row["norm_error"] < 0.1
        assert np.isfinite(row["file_norm"]) and 0 < row["file_norm_error"] < 0.1
        assert row["e_min_tev"] >= 0.5 and row["e_max_tev"] <= 10.0 + 1e-9
    assert {entry["model"] for entry in report.summary} == {"bkgdb", "file"}
