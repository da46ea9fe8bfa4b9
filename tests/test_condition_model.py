"""Condition-aware assembly against a simulated truth whose rate depends on zenith."""

from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
import yaml
from astropy.io import fits
from sqlalchemy.orm import Session

from bkgdb.background import BackgroundBuilder
from bkgdb.cli.main import app
from bkgdb.config import Binning, BkgdbConfig, ExclusionSettings, IOSettings, SelectionSettings
from bkgdb.errors import BkgdbError, ConfigError
from bkgdb.makers.assembly import assemble_background
from bkgdb.makers.condition_fit import ConditionModelFitter
from bkgdb.makers.condition_model import ConditionModel, RunConditions, shift_energy
from bkgdb.makers.piece import BackgroundPiece
from bkgdb.simulate import BackgroundTruth, DatastoreSimulator, write_source_catalogue
from bkgdb.store.models import BackgroundInput, BackgroundRow, ConditionModelRow

BINNING = Binning(e_min=0.1, e_max=100, e_bins=20, off_min=0, off_max=2.5, off_bins=10)
TRUTH = BackgroundTruth(norm=1e-4, threshold_tev=0.3, threshold_zenith_index=2.5, rate_zenith_index=1.0)
#: What a fit must find for TRUTH (see `BackgroundTruth`).
TRUE_ENERGY_ZENITH = TRUTH.threshold_zenith_index
TRUE_RATE_ZENITH = TRUTH.rate_zenith_index + TRUTH.threshold_zenith_index * (TRUTH.index - 1)
ZENITHS = [10 + 50 * i / 23 for i in range(24)]  # 10 to 60 deg
TARGET_ZENITH = 45.0
ONTIME = 1200.0


def poisson_archive(zeniths, seed=1, ontime=1800.0):
    rng = np.random.default_rng(seed)
    counts = np.array(
        [rng.poisson(TRUTH.expected_counts(BINNING.energy_edges, BINNING.offset_edges, ontime, z)) for z in zeniths]
    )
    conditions = [RunConditions(z, float(rng.uniform(0, 360))) for z in zeniths]
    return counts, np.full((len(zeniths), BINNING.off_bins), ontime), conditions


def test_energy_shift_moves_a_power_law_exactly():
    edges = BINNING.energy_edges
    index = 2.7
    above = edges ** (1 - index)  # events above each edge, up to a constant

    def counts_between(lo, hi):
        return np.clip(lo, edges[0], None) ** (1 - index) - np.clip(hi, edges[0], None) ** (1 - index)

    counts = np.repeat(-np.diff(above)[:, np.newaxis], 3, axis=1)
    factor = 1.3
    shifted = shift_energy(counts, edges, np.log(factor))
    expected = counts_between(edges[:-1] / factor, edges[1:] / factor)
    # Bin 0 misses the events that would come from below the first edge. Elsewhere the power-law
    # interpolation is exact up to the cut at the last edge (negligible below 3 TeV); a linear
    # interpolation of the cumulative counts would be off by several per cent.
    low = edges[1:] < 3.0
    low[0] = False
    np.testing.assert_allclose(shifted[low, 0], expected[low], rtol=2e-3)
    assert shifted[0, 0] < counts[0, 0]
    np.testing.assert_allclose(shift_energy(counts, edges, 0.0), counts, rtol=1e-12)
    # Moved down, nothing is created: the total only loses what crossed the first edge.
    down = shift_energy(counts, edges, np.log(0.8))
    assert down.sum() == pytest.approx(counts.sum() - counts_between(edges[0], edges[0] / 0.8)[()] * 3, rel=1e-5)


def test_fit_recovers_the_simulated_parameters():
    counts, exposure, conditions = poisson_archive(np.linspace(10, 60, 40))
    fit = ConditionModelFitter(counts, exposure, BINNING.energy_edges, conditions).run()
    assert fit.model.energy_zenith == pytest.approx(TRUE_ENERGY_ZENITH, abs=0.25)
    assert fit.model.rate_zenith == pytest.approx(TRUE_RATE_ZENITH, abs=0.25)
    # The simulation has no azimuth dependence.
    assert abs(fit.model.rate_azimuth) < 0.1 and abs(fit.model.energy_azimuth) < 0.1
    assert fit.deviance < 0.5 * fit.deviance_plain
    # Deviance per bin near 1 (Poisson): the model describes the archive.
    assert fit.deviance / fit.n_bins < 1.3
    assert not fit.fit_muon and fit.model.energy_muon == 0.0


def test_model_moves_pieces_to_the_target_and_reports_weights():
    counts, exposure, conditions = poisson_archive([20.0, 50.0])
    model = ConditionModel(energy_zenith=TRUE_ENERGY_ZENITH, rate_zenith=TRUE_RATE_ZENITH)
    pieces = [BackgroundPiece(c, np.zeros_like(c), e, 1800.0, 1620.0) for c, e in zip(counts, exposure, strict=True)]
    target = RunConditions(TARGET_ZENITH, 10.0)
    moved = assemble_background(pieces, BINNING, conditions, target, model)
    plain = assemble_background(pieces, BINNING)
    cos_ratio = np.cos(np.radians(TARGET_ZENITH)) / np.cos(np.radians([20.0, 50.0]))
    np.testing.assert_allclose(moved.weights, cos_ratio**TRUE_RATE_ZENITH)
    np.testing.assert_array_equal(plain.weights, [1.0, 1.0])
    assert moved.condition_model is model and plain.condition_model is None
    np.testing.assert_allclose(moved.exposure_s, plain.exposure_s)
    # Azimuth wraps at 360 deg: 355 and 5 deg are the same direction to within 10 deg, 175 is not.
    tilted = ConditionModel(rate_azimuth=0.5, energy_azimuth=0.2)
    around = [RunConditions(40.0, 355.0), RunConditions(40.0, 5.0), RunConditions(40.0, 175.0)]
    factors = tilted.rate_factors(around, RunConditions(40.0, 0.0))
    assert factors[0] == pytest.approx(factors[1]) and factors[0] == pytest.approx(1.0, abs=0.01)
    assert factors[2] == pytest.approx(np.exp(0.5 * 2 * np.sin(np.radians(40.0))), rel=0.01)
    energies = tilted.log_energy_factors(around, RunConditions(40.0, 0.0))
    assert energies[0] == pytest.approx(energies[1]) and energies[2] < -0.2
    with pytest.raises(BkgdbError, match="needs the conditions of every piece"):
        assemble_background(pieces, BINNING, model=model)


def test_assembly_setting_is_checked():
    assert SelectionSettings.from_dict({"assembly": "sum"}).assembly == "sum"
    with pytest.raises(ConfigError, match="assembly must be one of condition, sum"):
        SelectionSettings.from_dict({"assembly": "weighted"})
    for name in ("default", "hess-dr1", "veritas"):
        # Only their selection: loading them whole needs $GAMMAPY_DATA's catalogues.
        values = yaml.safe_load((Path(__file__).parent.parent / "configs" / f"{name}.yaml").read_text())
        assert SelectionSettings.from_dict(values["background_selection"]).assembly == "condition"


@pytest.fixture(scope="module")
def zenith_archive(tmp_path_factory):
    """24 runs at zeniths 10-60 deg and one more run (added later) from TRUTH; an empty catalogue."""
    folder = tmp_path_factory.mktemp("zenith")
    pointings = [(30.0 + 7 * i, -30.0 + (i % 5)) for i in range(len(ZENITHS))]
    DatastoreSimulator(
        truth=TRUTH, pointings=pointings, zeniths=ZENITHS, ontime_s=ONTIME, seed=5, first_obs_id=500, with_irfs=False
    ).run(folder / "archive")
    DatastoreSimulator(
        truth=TRUTH,
        pointings=[(120.0, -40.0)],
        zeniths=[33.0],
        ontime_s=ONTIME,
        seed=6,
        first_obs_id=900,
        with_irfs=False,
    ).run(folder / "later")
    write_source_catalogue(folder / "catalogue.fits", [{"name": "elsewhere", "ra_deg": 250.0, "dec_deg": 60.0}])
    return folder


def make_config(folder, assembly):
    return BkgdbConfig(
        binnings=[BINNING],
        exclusion=ExclusionSettings(gammacat=str(folder / "catalogue.fits"), hawc=None, star_cat=None),
        selection=SelectionSettings(el_diff=None, az_diff=None, gal_lat_min=0, assembly=assembly),
        io=IOSettings(),
    )


def target_truth(built):
    """Expected counts of the target's conditions over the summed exposure, and the target's zenith."""
    zenith = built.target.zenith_deg
    per_second = TRUTH.expected_counts(BINNING.energy_edges, BINNING.offset_edges, 1.0, zenith)
    return per_second * built.assembled.exposure_s[np.newaxis, :], zenith


def test_condition_assembly_recovers_the_truth_where_plain_summation_is_biased(catalogue, zenith_archive):
    config = make_config(zenith_archive, "condition")
    catalogue.index(zenith_archive / "archive", config)
    target = 500 + min(range(len(ZENITHS)), key=lambda i: abs(ZENITHS[i] - TARGET_ZENITH))
    plain = BackgroundBuilder(catalogue, make_config(zenith_archive, "sum")).build(target)
    aware = BackgroundBuilder(catalogue, config).build(target)
    assert len(aware.selection.obs_ids) == len(ZENITHS) - 1  # all others selected
    expected, zenith = target_truth(plain)
    lo = BINNING.energy_edges[:-1]
    threshold = TRUTH.threshold(zenith)
    near = (lo >= threshold / 2) & (lo < 1.5 * threshold)  # the bins around the target's threshold
    use = expected > 20

    # Negative control: the plain sum holds the low-zenith runs' lower threshold.
    plain_pull = (plain.assembled.counts - expected) / np.sqrt(expected)
    assert np.max(plain_pull[near[:, np.newaxis] & use]) > 10
    assert plain.condition_model is None and np.all(plain.assembled.weights == 1)

    # Variance of the moved, weighted counts: sum over runs of weight x (weight x shifted counts).
    with Session(catalogue.engine) as session:
        rows = session.execute(sa.select(ConditionModelRow)).scalars().all()
    assert len(rows) == 1 and rows[0].n_runs == len(ZENITHS)
    model = ConditionModel.from_params(aware.condition_model)
    counts, conditions = selected_pieces(catalogue, aware)
    moved, _ = model.apply(counts, BINNING.energy_edges, conditions, RunConditions(zenith, aware.target.az_deg))
    factors = model.rate_factors(conditions, RunConditions(zenith, aware.target.az_deg))
    variance = np.sum(factors[:, np.newaxis, np.newaxis] * moved, axis=0)
    np.testing.assert_allclose(moved.sum(axis=0), aware.assembled.counts)
    good = use & (lo >= threshold / 2)[:, np.newaxis]
    pulls = (aware.assembled.counts - expected)[good] / np.sqrt(variance[good])
    n = good.sum()
    assert np.all(np.abs(pulls) < 4.5)
    assert np.sum(pulls**2) < n + 4 * np.sqrt(2 * n)
    assert abs(pulls.mean()) < 4 / np.sqrt(n)


def selected_pieces(catalogue, built):
    from bkgdb.store.models import PieceRow, Run
    from bkgdb.store.pieces import row_to_piece

    with Session(catalogue.engine) as session:
        rows = session.execute(
            sa.select(PieceRow, Run.obs_id, Run.zenith_deg, Run.az_deg)
            .join(Run, Run.id == PieceRow.run_id)
            .where(Run.obs_id.in_(built.selection.obs_ids))
        ).all()
    order = {obs_id: i for i, obs_id in enumerate(built.selection.obs_ids)}
    rows = sorted(rows, key=lambda row: order[row[1]])
    return (np.array([row_to_piece(row[0]).counts for row in rows]), [RunConditions(row[2], row[3]) for row in rows])


def test_model_is_cached_recorded_and_refitted_when_a_run_is_added(catalogue, zenith_archive, tmp_path):
    config = make_config(zenith_archive, "condition")
    catalogue.index(zenith_archive / "archive", config)
    first = BackgroundBuilder(catalogue, config).write(505, tmp_path / "first.fits")
    assert first.condition_model["cached"] is False
    second = BackgroundBuilder(catalogue, config).write(510, tmp_path / "second.fits")
    assert second.condition_model["cached"] is True
    assert second.condition_model["archive_digest"] == first.condition_model["archive_digest"]
    assert second.condition_model["energy_zenith"] == first.condition_model["energy_zenith"]

    catalogue.index(zenith_archive / "later", config)
    third = BackgroundBuilder(catalogue, config).build(505)
    assert third.condition_model["cached"] is False and third.condition_model["n_runs"] == len(ZENITHS) + 1
    assert third.condition_model["archive_digest"] != first.condition_model["archive_digest"]
    with Session(catalogue.engine) as session:
        assert session.scalar(sa.select(sa.func.count(ConditionModelRow.id))) == 2
        recorded = session.scalars(sa.select(BackgroundRow).where(BackgroundRow.target_obs_id == 510)).one()
        weights = session.scalars(
            sa.select(BackgroundInput.weight)
            .where(BackgroundInput.background_id == recorded.id)
            .order_by(BackgroundInput.id)
        ).all()
    assert recorded.selection["condition_model"]["rate_zenith"] == pytest.approx(second.condition_model["rate_zenith"])
    # Each piece's weight is recorded with its lineage row, in the order summed.
    assert weights == pytest.approx(list(second.assembled.weights))
    assert len(weights) == recorded.n_runs

    header = fits.getheader(tmp_path / "second.fits", "BACKGROUND")
    assert header["BKG_ASM"] == "condition"
    assert header["BKG_CMEZ"] == pytest.approx(second.condition_model["energy_zenith"], abs=1e-6)
    assert header["BKG_CMN"] == len(ZENITHS)


def test_the_archive_counts_each_observation_once_and_never_a_run_flagged_bad(catalogue, zenith_archive, tmp_path):
    import shutil

    from bkgdb.store.flags import flag_run

    config = make_config(zenith_archive, "condition")
    catalogue.index(zenith_archive / "archive", config)
    shutil.copytree(zenith_archive / "archive", tmp_path / "copy")
    catalogue.index(tmp_path / "copy", config)  # every run again, in a second datastore
    builder = BackgroundBuilder(catalogue, config)
    first = builder.build(505, datastore=zenith_archive / "archive").condition_model
    assert first["n_runs"] == len(ZENITHS)  # not twice as many: a copy would weigh its run twice

    flag_run(catalogue.engine, 510, "bad", reason="clouds")
    flagged = BackgroundBuilder(catalogue, config).build(505, datastore=zenith_archive / "archive").condition_model
    assert flagged["cached"] is False and flagged["n_runs"] == len(ZENITHS) - 1
    assert flagged["archive_digest"] != first["archive_digest"]
    flag_run(catalogue.engine, 510, "good", reason="checked")
    again = BackgroundBuilder(catalogue, config).build(505, datastore=zenith_archive / "archive").condition_model
    assert again["cached"] is True and again["archive_digest"] == first["archive_digest"]


def test_cli_background_prints_the_model(db_url, zenith_archive, tmp_path):
    from typer.testing import CliRunner

    config = {
        "binning": {"e_min": 0.1, "e_max": 100, "e_bins": 20, "off_min": 0, "off_max": 2.5, "off_bins": 10},
        "exclusion": {"gammacat": str(zenith_archive / "catalogue.fits"), "hawc": "none", "star_cat": "none"},
        "background_selection": {"el_diff": None, "az_diff": None, "gal_lat_min": 0, "assembly": "condition"},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    runner = CliRunner()
    assert (
        runner.invoke(app, ["--db", db_url, "index", str(zenith_archive / "archive"), "--config", str(path)]).exit_code
        == 0
    )
    result = runner.invoke(
        app, ["--db", db_url, "background", "505", "--config", str(path), "-o", str(tmp_path / "bkg.fits")]
    )
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("condition model"))
    assert f"({len(ZENITHS)} archive runs, fitted)" in line and "energy x (cos z/cos z_t)^" in line
