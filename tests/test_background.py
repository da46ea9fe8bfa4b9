"""Building, writing and attaching backgrounds: against a known truth, and opened by gammapy."""

import shutil

import numpy as np
import pytest
import sqlalchemy as sa
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import Table
from gammapy.data import DataStore
from gammapy.irf import Background2D
from sqlalchemy.orm import Session

from bkgdb.background import BackgroundBuilder
from bkgdb.config import Binning, BkgdbConfig, ExclusionSettings, IOSettings, SelectionSettings
from bkgdb.errors import BkgdbError, ConfigError
from bkgdb.fov_fit import fov_background_dataset, fov_background_norm
from bkgdb.gadf.attach import attach_backgrounds
from bkgdb.gadf.destination import UnsafeDestination
from bkgdb.makers.assembly import loglog_bin_means
from bkgdb.simulate import BackgroundTruth, DatastoreSimulator, PointSource, write_source_catalogue
from bkgdb.store.models import BackgroundInput, BackgroundRow

BINNING = Binning(e_min=0.1, e_max=100, e_bins=12, off_min=0, off_max=2.5, off_bins=10)
SOURCE = PointSource(ra_deg=200.0, dec_deg=40.0, rate_per_s=0.6, psf_sigma_deg=0.08, name="Bright source")
TRUTH = BackgroundTruth()


@pytest.fixture(scope="session")
def fields(tmp_path_factory):
    """12 runs on empty fields and 8 wobbling around a bright source, one known background rate."""
    folder = tmp_path_factory.mktemp("fields")
    centre = SkyCoord(SOURCE.ra_deg * u.deg, SOURCE.dec_deg * u.deg)
    wobbles = centre.directional_offset_by(np.arange(8) % 4 * 90 * u.deg, 0.7 * u.deg)
    pointings = [(180.0, 50.0)] * 6 + [(220.0, 30.0)] * 6 + list(zip(wobbles.ra.deg, wobbles.dec.deg, strict=True))
    DatastoreSimulator(truth=TRUTH, pointings=pointings, source=SOURCE, ontime_s=1500.0, seed=11, first_obs_id=100).run(
        folder / "datastore"
    )
    write_source_catalogue(folder / "catalogue.fits", [SOURCE])
    write_source_catalogue(folder / "empty-catalogue.fits", [{"name": "elsewhere", "ra_deg": 10.0, "dec_deg": -60.0}])
    return folder


def make_config(catalogue, **selection):
    settings = dict(el_diff=None, az_diff=None, gal_lat_min=10)
    settings.update(selection)
    return BkgdbConfig(
        binnings=[BINNING],
        exclusion=ExclusionSettings(gammacat=str(catalogue), hawc=None, star_cat=None),
        selection=SelectionSettings(**settings),
        io=IOSettings(),
    )


def truth_comparison(built):
    """What gammapy integrates from the model over each bin against the truth's mean over the bin.

    The written values are nodes at the bins' log centres whose log-log interpolation gammapy
    integrates (`~bkgdb.makers.assembly.loglog_bin_means`). Returns the pulls in bins with more
    than 20 counts (error 1/sqrt(counts)) and the ratio model / truth in every bin.
    """
    counts = built.assembled.counts
    geometry = built.assembled.geometry
    model_mean = np.exp(loglog_bin_means(np.log(np.maximum(built.model.data, 1e-300)), geometry.energy_edges))
    ontime = 1e4  # any: the truth's expected counts over their denominator is its mean rate
    truth_mean = TRUTH.expected_counts(geometry.energy_edges, geometry.offset_edges, ontime) / geometry.denominator(
        np.full(geometry.spatial_shape, ontime)
    )
    ratio = model_mean / truth_mean
    use = counts > 20
    return (ratio[use] - 1) * np.sqrt(counts[use]), ratio


@pytest.mark.parametrize(
    "which, exclude, target",
    [
        ("empty fields only", True, 100),
        ("source excluded", True, 119),
    ],
)
def test_model_recovers_the_truth(catalogue, fields, which, exclude, target):
    config = make_config(fields / "catalogue.fits")
    catalogue.index(fields / "datastore", config=config)
    built = BackgroundBuilder(catalogue, config).build(target)
    assert len(built.selection.obs_ids) == 19
    pulls, _ = truth_comparison(built)
    ndof = len(pulls)
    assert abs(pulls.mean()) < 4 / np.sqrt(ndof), which
    assert np.sum(pulls**2) < ndof + 5 * np.sqrt(2 * ndof), which


def test_source_not_excluded_biases_the_model(catalogue, fields):
    """The negative control: without the source in the catalogue, its photons enter the background."""
    config = make_config(fields / "empty-catalogue.fits")
    catalogue.index(fields / "datastore", config=config)
    built = BackgroundBuilder(catalogue, config).build(100)
    _, ratio = truth_comparison(built)
    counts = built.assembled.counts
    near_source = np.sum(ratio[:, 2:4] * counts[:, 2:4]) / counts[:, 2:4].sum()  # 0.5-1.0 deg
    assert near_source > 1.1


def test_written_file_opens_in_gammapy_with_provenance(catalogue, fields, tmp_path):
    config = make_config(fields / "catalogue.fits", time_request=2.0)
    catalogue.index(fields / "datastore", config=config)
    builder = BackgroundBuilder(catalogue, config)
    built = builder.write(119, tmp_path / "bkg.fits")
    model = Background2D.read(tmp_path / "bkg.fits")
    assert model.data.shape == BINNING.shape and model.unit == u.Unit("s-1 MeV-1 sr-1")
    assert np.allclose(model.data, built.model.data)
    header = fits.getheader(tmp_path / "bkg.fits", "BACKGROUND")
    runs = Table.read(tmp_path / "bkg.fits", hdu="BKGDB_RUNS")
    assert header["BKG_TGT"] == 119 and header["BKG_NRUN"] == len(runs) == 5  # 2 h of 25-min runs
    assert header["BKG_TBAS"] == "ONTIME"
    assert 119 not in runs["OBS_ID"]
    with pytest.raises(BkgdbError, match="exists"):
        builder.write(119, tmp_path / "bkg.fits")
    with pytest.raises(ConfigError, match="no 3D binning"):
        BackgroundBuilder(catalogue, config, three_d=True)

    with Session(catalogue.engine) as session:
        stored = session.scalars(sa.select(BackgroundRow).order_by(BackgroundRow.id)).first()
        used = session.scalars(
            sa.select(BackgroundInput.obs_id)
            .where(BackgroundInput.background_id == stored.id)
            .order_by(BackgroundInput.id)
        ).all()
        assert stored.target_obs_id == 119 and used == list(runs["OBS_ID"])
        assert stored.selection["settings"]["time_request"] == 2.0
        assert stored.output_path == str((tmp_path / "bkg.fits").resolve())


@pytest.mark.parametrize("smooth", ["gauss", "poly", "spline"])
def test_smoothed_models_stay_close_to_the_truth(catalogue, fields, smooth):
    config = make_config(fields / "catalogue.fits")
    catalogue.index(fields / "datastore", config=config)
    built = BackgroundBuilder(catalogue, config, smooth=smooth).build(100)
    assert built.smoothing == smooth and np.all(built.model.data >= 0)
    _, ratio = truth_comparison(built)
    core = built.assembled.counts > 200
    assert np.median(np.abs(ratio[core] - 1)) < 0.1


def test_attach_writes_a_datastore_gammapy_opens(catalogue, fields, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(fields / "datastore", source)
    before = {path.name: path.read_bytes() for path in (source / "data").iterdir()}
    config = make_config(fields / "catalogue.fits")
    catalogue.index(source, config=config)
    report = BackgroundBuilder(catalogue, config).attach(source, tmp_path / "out")
    assert len(report.written) == 20 and report.skipped == []
    store = DataStore.from_dir(tmp_path / "out")
    assert sorted(store.obs_ids) == list(range(100, 120))
    observation = store.obs(105, required_irf=["bkg"])
    assert isinstance(observation.bkg, Background2D) and observation.bkg.data.sum() > 0
    assert len(observation.events.table) == len(fits.getdata(source / "data" / "run_000105.fits.gz", "EVENTS"))
    assert {path.name: path.read_bytes() for path in (source / "data").iterdir()} == before  # untouched
    # Again into the same folder (which needs overwrite): the background is replaced, not added twice.
    with pytest.raises(UnsafeDestination, match="is not empty: pass --overwrite"):
        BackgroundBuilder(catalogue, config).attach(source, tmp_path / "out")
    attach_backgrounds(BackgroundBuilder(catalogue, config), source, tmp_path / "out", overwrite=True)
    with fits.open(tmp_path / "out" / "data" / "run_000105.fits.gz") as hdul:
        assert [hdu.name for hdu in hdul].count("BKG") == 1


def test_gammapy_predicts_the_counts_with_the_ontime_time_base(catalogue, fields, tmp_path):
    """gammapy's makers with the attached models predict what was simulated (dead time 10 %).

    The FoV background norm, averaged over every run, is 1: gammapy multiplies the rate by the
    ontime (a model per second of livetime would give 0.9) and reads it at the bin centres (bin
    averages would give about 0.975 here).
    """
    config = make_config(fields / "catalogue.fits")
    catalogue.index(fields / "datastore", config=config)
    BackgroundBuilder(catalogue, config).attach(fields / "datastore", tmp_path / "out")
    store = DataStore.from_dir(tmp_path / "out")
    first = store.obs(100)  # full-enclosure IRFs and our BKG
    assert first.observation_live_time_duration < 0.95 * first.observation_time_duration
    excluded = [(SOURCE.ra_deg, SOURCE.dec_deg, 0.4)]
    norms = [fov_background_norm(store.obs(obs_id), excluded) for obs_id in store.obs_ids]
    weights = np.array([1 / norm.error**2 for norm in norms])
    mean = np.sum(weights * [norm.value for norm in norms]) / weights.sum()
    error = 1 / np.sqrt(weights.sum())
    assert abs(mean - 1) < 3 * error, (mean, error)
    assert error < 0.006


def test_attach_replaces_an_existing_background_hdu(catalogue, fields, tmp_path):
    out = tmp_path / "first"
    config = make_config(fields / "catalogue.fits")
    catalogue.index(fields / "datastore", config=config)
    BackgroundBuilder(catalogue, config).attach(fields / "datastore", out)
    # The attached datastore becomes the target: its BKG HDU is replaced by the new one.
    catalogue.index(out, config=config)
    report = BackgroundBuilder(catalogue, make_config(fields / "catalogue.fits", time_request=1.0)).attach(
        out, tmp_path / "second"
    )
    assert len(report.written) == 20
    with fits.open(tmp_path / "second" / "data" / "run_000100.fits.gz") as hdul:
        names = [hdu.name for hdu in hdul]
        assert names.count("BKG") == 1 and names.count("BKGDB_RUNS") == 1
        assert hdul["BKG"].header["BKG_NRUN"] < 19


def test_runs_without_background_are_reported(catalogue, fields, tmp_path):
    config = make_config(fields / "catalogue.fits", where=("obs_id<105",))
    catalogue.index(fields / "datastore", config=config)
    report = BackgroundBuilder(catalogue, config).attach(fields / "datastore", tmp_path / "out")
    assert len(report.written) == 20  # every run has other runs below 105 ...
    strict = make_config(fields / "catalogue.fits", where=("obs_id<101",))
    report = BackgroundBuilder(catalogue, strict).attach(fields / "datastore", tmp_path / "strict")
    assert [obs_id for obs_id, _ in report.skipped] == [100]  # ... but run 100 has only itself
    assert report.skipped[0][1].endswith("obs_id<101 removed 19 (0 left)")
    assert sorted(DataStore.from_dir(tmp_path / "strict").obs_ids) == list(range(101, 120))


def test_from_run_builds_from_the_targets_own_piece_only(catalogue, fields):
    config = make_config(fields / "catalogue.fits")
    config.io = IOSettings(from_run=True)
    catalogue.index(fields / "datastore", config=config)
    built = BackgroundBuilder(catalogue, config).build(110)
    assert built.selection.obs_ids == [110] and built.selection.ranking == "from_run"


def test_missing_pieces_and_unknown_runs_are_errors(catalogue, fields):
    config = make_config(fields / "catalogue.fits")
    catalogue.index(fields / "datastore")  # no pieces
    with pytest.raises(BkgdbError, match="no pieces for this config"):
        BackgroundBuilder(catalogue, config).build(100)
    catalogue.index(fields / "datastore", config=config)
    with pytest.raises(BkgdbError, match="not in the catalogue"):
        BackgroundBuilder(catalogue, config).build(99999)


# -- real data -----------------------------------------------------------------------------------

CRAB = (83.633, 22.014)
CRAB_RUNS = [23523, 23526, 23559, 23592]
#: Run-to-run spread of the FoV norm with the shipped config on the 61 DR1 runs at |b| > 10 deg
#: (`bkgdb validate`, README): how far from 1 a run's norm may be expected to fall.
SPREAD_DR1 = 0.117


@pytest.fixture(scope="module")
def hess_attached(tmp_path_factory):
    """DR1 indexed with configs/hess-dr1.yaml and every run attached: (builder, attached folder)."""
    from pathlib import Path

    from conftest import gammapy_data_path

    from bkgdb.config import load_config
    from bkgdb.store.catalogue import RunCatalogue

    hess_dr1 = gammapy_data_path("hess-dl3-dr1")
    gammapy_data_path("catalogs")
    folder = tmp_path_factory.mktemp("hess")
    config = load_config(Path(__file__).resolve().parent.parent / "configs" / "hess-dr1.yaml")
    catalogue = RunCatalogue.open(str(folder / "hess.sqlite"))
    catalogue.index(hess_dr1, config=config, jobs=2)
    builder = BackgroundBuilder(catalogue, config)
    report = builder.attach(hess_dr1, folder / "attached")
    yield builder, report, folder / "attached"
    catalogue.engine.dispose()


def test_hess_dr1_every_run_gets_a_background_gammapy_opens(hess_attached):
    builder, report, attached = hess_attached
    assert report.skipped == [] and len(report.written) == 105
    store = DataStore.from_dir(attached)
    assert len(store.obs_ids) == 105
    assert isinstance(store.obs(23523).bkg, Background2D)
    built = builder.build(23523)
    used = [run for run in builder.catalogue.select_runs() if run.obs_id in built.selection.obs_ids]
    assert len(used) == len(built.selection.obs_ids) > 0 and all(abs(run.glat_deg) > 10 for run in used)


def ring_and_energy_chi2(dataset, pointing):
    """chi2 of the counts against the fitted background, summed per energy bin and per 0.25 deg
    offset ring over the fitted pixels: how well the model's shape predicts the counts.

    Returns
    -------
    chi2 : float
    ndof : int
        Energy bins and rings with a prediction, less one for the fitted norm.
    """
    mask = dataset.mask_safe.data & dataset.mask_fit.data
    counts, predicted = dataset.counts.data, dataset.npred_background().data
    offset = dataset.counts.geom.to_image().get_coord().skycoord.separation(pointing).deg
    layer = np.arange(mask.shape[0])[:, None, None]
    groups = [mask & (layer == i) for i in range(mask.shape[0])]
    groups += [mask & ((offset >= low) & (offset < low + 0.25))[None] for low in np.arange(0, 2, 0.25)]
    sums = np.array([(counts[group].sum(), predicted[group].sum()) for group in groups])
    sums = sums[sums[:, 1] > 0]
    return float(np.sum((sums[:, 0] - sums[:, 1]) ** 2 / sums[:, 1])), len(sums) - 1


def test_hess_dr1_crab_counts_predicted_as_well_as_by_hess_bkg_3d(hess_attached, hess_dr1):
    """The four Crab runs, fitted with bkgdb's attached model and with H.E.S.S.'s own bkg_3d on the
    same pixels (Crab masked 0.4 deg, 0.7-50 TeV, offsets < 2 deg, aeff safe threshold).

    Scale: bkgdb's mean FoV norm is no further from 1 than H.E.S.S.'s plus the run-to-run spread
    that `validate` measures for this config (0.117). Measured: bkgdb 1.117, 1.206, 1.061, 1.096
    (mean 1.120), H.E.S.S. 0.937, 1.032, 0.896, 0.938 (mean 0.951): 0.120 <= 0.049 + 0.117. A 10 %
    scale error (e.g. a rate per livetime) gives about 1.24 and fails.

    Shape: after the norm, bkgdb's chi2 over energy bins and offset rings is within 2 sqrt(2 ndof)
    (two standard deviations of a chi2) of H.E.S.S.'s. Measured: 25.7 vs 25.1, 7.1 vs 5.8,
    35.8 vs 33.8, 34.3 vs 27.7 (ndof 14-15, allowance about 11).
    """
    _, _, attached = hess_attached
    ours_store, theirs_store = DataStore.from_dir(attached), DataStore.from_dir(hess_dr1)
    fit = dict(excluded=[(*CRAB, 0.4)], energy_range_tev=(0.7, 50), binsz_deg=0.02, aeff_safe_mask=True)
    norms = {"bkgdb": [], "hess": []}
    for obs_id in CRAB_RUNS:
        chi2 = {}
        for label, store in (("bkgdb", ours_store), ("hess", theirs_store)):
            observation = store.obs(obs_id)
            dataset = fov_background_dataset(observation, **fit)
            norms[label].append(dataset.background_model.spectral_model.norm.value)
            chi2[label] = ring_and_energy_chi2(dataset, observation.pointing.fixed_icrs)
        (ours, ndof), (theirs, _) = chi2["bkgdb"], chi2["hess"]
        assert ndof >= 12 and ours <= theirs + 2 * np.sqrt(2 * ndof), (obs_id, ours, theirs, ndof)
    ours, theirs = np.mean(norms["bkgdb"]), np.mean(norms["hess"])
    assert abs(ours - 1) <= abs(theirs - 1) + SPREAD_DR1, norms
