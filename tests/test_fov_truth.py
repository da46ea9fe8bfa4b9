"""A background that is not radially symmetric in the FoV, simulated and recovered through gammapy.

Runs track fixed RA/Dec pointings from the H.E.S.S. site, so the sky turns in the Alt/Az FoV
during each run. The truth has a gradient fixed in the ALTAZ-aligned FoV (brighter toward the
horizon) or in the RADEC-aligned FoV. Every comparison is in sky pixels: the counts of a run
against gammapy's predicted background counts (`MapDatasetMaker` with ``fov_rotation_step``), summed
over the quadrants of the FoV in the truth's own frame (at mid-run) and over energy bands.

a. The simulation is right: the truth itself, written as a ``Background3D``, predicts the counts;
   the truth with its gradient reversed, and the truth labelled with the other alignment, do not.
b. bkgdb recovers it: the archive indexed with a 3D binning through the command line, the target's
   ``background --3d`` predicts the target's counts in the truth's alignment and not in the other.
"""

import dataclasses
import logging

import numpy as np
import pytest
import yaml
from astropy import units as u
from astropy.coordinates import AltAz, SkyCoord
from astropy.coordinates.erfa_astrom import ErfaAstromInterpolator, erfa_astrom
from astropy.io import fits
from astropy.table import Table
from typer.testing import CliRunner

from bkgdb.cli.main import app
from bkgdb.simulate import (
    BackgroundTruth,
    DatastoreSimulator,
    FoVBackgroundTruth,
    datastore_with_backgrounds,
    radec_to_fov,
)
from bkgdb.simulate.compare import pulls, quadrant_counts

#: Truths with gradients of 25-35 % per deg: brighter toward the horizon (ALTAZ) or toward lower
#: declination and west (RADEC). The ALTAZ one grows toward low energies.
TRUTHS = {
    "ALTAZ": FoVBackgroundTruth(
        norm=3e-4,
        index=2.4,
        energy_range_tev=(0.3, 100.0),
        alignment="ALTAZ",
        lat_gradient=-0.3,
        gradient_energy_index=0.15,
    ),
    "RADEC": FoVBackgroundTruth(
        norm=3e-4, index=2.4, energy_range_tev=(0.3, 100.0), alignment="RADEC", lon_gradient=0.2, lat_gradient=-0.25
    ),
}
OTHER = {"ALTAZ": "RADEC", "RADEC": "ALTAZ"}
#: (RA, Dec, hour angle h) of part a's runs: the parallactic angle is 80 and 147 deg, so the two
#: alignments differ by far more than the rotation during a run (3-7 deg).
FIELDS = [(100.0, -40.0, -3.0), (100.0, 10.0, -1.5)]
ONTIME_S = 1500.0
#: Energy bands of the comparisons (TeV); the last band holds few counts, so it weighs little.
BANDS = [0.3, 0.6, 1.2, 3.0, 30.0]
#: Within this offset (deg) of the pointing; events are drawn to 3 deg.
RADIUS_DEG = 2.4

runner = CliRunner()


def truth_geometry(truth):
    """A fine grid for the truth as a Background3D: 0.1 deg pixels, 15 energies per decade.

    Energies and pixels differ in number, so gammapy reads the axes in order without warnings.
    """
    return truth.geometry(np.geomspace(0.3, 100.0, 38), np.linspace(-3.5, 3.5, 71))


# ---------------------------------------------------------------------------------------------
# a. The simulation is right


@pytest.mark.parametrize("alignment", ["ALTAZ", "RADEC"])
def test_fov_draws_follow_the_expected_counts(alignment):
    """Events drawn in the FoV (a thinned Poisson process) have the truth's expected counts per bin,
    in a geometry whose first energy bin straddles the drawn range; the reversed gradient does not."""
    truth = TRUTHS[alignment]
    geometry = truth.geometry(np.geomspace(0.2, 30.0, 5), np.linspace(-3.0, 3.0, 13))
    energy, lon, lat = truth.draw_fov(np.random.default_rng(2), 3000.0)
    observed = geometry.histogram(energy, lon, lat)
    expected = truth.expected_counts_on(geometry, 3000.0)
    reversed_truth = dataclasses.replace(truth, lon_gradient=-truth.lon_gradient, lat_gradient=-truth.lat_gradient)
    use = expected > 10
    ndof = use.sum()
    chi2 = np.sum((observed[use] - expected[use]) ** 2 / expected[use])
    assert ndof > 200 and chi2 < ndof + 4 * np.sqrt(2 * ndof), (chi2, ndof)
    assert observed.sum() == pytest.approx(expected.sum(), rel=4 / np.sqrt(expected.sum()))
    wrong = reversed_truth.expected_counts_on(geometry, 3000.0)
    assert np.sum((observed[use] - wrong[use]) ** 2 / wrong[use]) > 3 * ndof


@pytest.fixture(scope="module", params=["ALTAZ", "RADEC"])
def simulated_field(request, tmp_path_factory):
    alignment = request.param
    path = tmp_path_factory.mktemp(f"field-{alignment.lower()}") / "datastore"
    simulator = DatastoreSimulator(
        truth=TRUTHS[alignment],
        pointings=[field[:2] for field in FIELDS],
        hour_angles=[field[2] for field in FIELDS],
        ontime_s=ONTIME_S,
        seed=3,
    )
    return alignment, path, simulator.run(path)


def test_tracking_runs_look_like_telescope_runs(simulated_field):
    """Headers as gammapy reads them; the pointing's Alt/Az at mid-run matches ALT_PNT/AZ_PNT; the
    sky turns in the Alt/Az FoV during a run."""
    from gammapy.data import DataStore

    alignment, path, obs_ids = simulated_field
    store = DataStore.from_dir(path)
    for obs_id, (ra, dec, _) in zip(obs_ids, FIELDS, strict=True):
        observation = store.obs(obs_id, required_irf=[])
        header = observation.events.table.meta
        assert {"GEOLON", "GEOLAT", "ALTITUDE", "MJDREFI", "MJDREFF", "TIMESYS", "ONTIME", "LIVETIME"} <= set(header)
        assert observation.observation_time_duration.to_value("s") == pytest.approx(ONTIME_S)
        times = observation.events.time
        assert times.min() >= observation.tstart and times.max() <= observation.tstop
        altaz = observation.get_pointing_altaz(observation.tmid)
        assert altaz.alt.deg == pytest.approx(header["ALT_PNT"], abs=1e-6)
        assert altaz.az.deg == pytest.approx(header["AZ_PNT"], abs=1e-6)
        assert 20 < altaz.alt.deg < 90
        # A fixed sky position moves in the Alt/Az FoV between start and end: the frame rotates.
        lon, lat = radec_to_fov(
            [ra + 1.0] * 2,
            [dec] * 2,
            observation.tstart + [0, ONTIME_S] * u.s,
            ra,
            dec,
            observation.observatory_earth_location,
            "ALTAZ",
        )
        turn = np.degrees(np.arctan2(lon, lat))
        assert 2.0 < abs(turn[1] - turn[0]) < 15.0
        # The gradient points the right way, judged without FoV frames: toward the horizon (events
        # below the pointing's altitude at their time), or toward lower declination and lower RA.
        events = observation.events.radec
        if alignment == "ALTAZ":
            with erfa_astrom.set(ErfaAstromInterpolator(300 * u.s)):
                frame = AltAz(obstime=times, location=observation.observatory_earth_location)
                below = events.transform_to(frame).alt < observation.get_pointing_altaz(times).alt
            assert np.mean(below) > 0.63  # 0.66 expected
        else:
            assert np.mean(events.dec.deg < dec) > 0.59 and np.mean(events.ra.deg < ra) > 0.57  # 0.62, 0.60 expected


def test_symmetric_truth_in_tracking_runs(tmp_path):
    """A radially symmetric truth drawn in the FoV of tracking runs keeps its offset profile and rate;
    a FoV truth without tracking is refused."""
    truth = BackgroundTruth(norm=3e-4, energy_range_tev=(0.3, 100.0))
    DatastoreSimulator(truth=truth, pointings=[(100.0, -30.0)], hour_angles=[1.0], ontime_s=600.0, with_irfs=False).run(
        tmp_path
    )
    events = Table.read(tmp_path / "data" / "run_001000.fits.gz", hdu="EVENTS")
    offsets = SkyCoord(100.0, -30.0, unit="deg").separation(SkyCoord(events["RA"], events["DEC"])).deg
    edges = [0.0, 1.0, 2.0, 3.0]
    expected = truth.expected_counts([0.3, 100.0], edges, 600.0).ravel()
    observed = np.histogram(offsets, edges)[0]
    assert np.all(np.abs(observed - expected) < 4 * np.sqrt(expected)), (observed, expected)
    assert offsets.max() <= truth.max_offset_deg + 1e-4
    with pytest.raises(ValueError, match="needs tracking runs"):
        DatastoreSimulator(truth=TRUTHS["ALTAZ"]).run(tmp_path / "refused")


def test_true_model_predicts_the_simulated_counts(simulated_field, tmp_path):
    """The truth, written with its alignment into a datastore, predicts the counts in every FoV
    quadrant and energy band; reversing its gradient or its alignment is many sigma off."""
    alignment, path, obs_ids = simulated_field
    truth = TRUTHS[alignment]
    geometry = truth_geometry(truth)
    reversed_truth = dataclasses.replace(truth, lon_gradient=-truth.lon_gradient, lat_gradient=-truth.lat_gradient)
    models = {
        "truth": truth.to_background3d(geometry),
        "reversed": reversed_truth.to_background3d(geometry),
        "other frame": truth.to_background3d(geometry, alignment=OTHER[alignment]),
    }
    found = {}
    for name, model in models.items():
        store = datastore_with_backgrounds(path, tmp_path / name.replace(" ", "-"), dict.fromkeys(obs_ids, model))
        counts, npred = quadrant_counts(store, obs_ids, alignment, BANDS, radius_deg=RADIUS_DEG)
        found[name] = pulls(counts, npred)

    # The gradient is seen: the quadrant it points to holds far more counts than the opposite one.
    quadrants = counts.sum(axis=1)
    assert quadrants.sum() > 10000 and quadrants.max() > 1.5 * quadrants.min()
    assert np.abs(found["truth"]).max() < 4.0, found["truth"]
    assert np.sum(found["truth"] ** 2) < 2.0 * found["truth"].size
    for name in ("reversed", "other frame"):
        assert np.abs(found[name]).max() > 8.0, (name, found[name])
        assert np.sum(found[name] ** 2) > 10.0 * found[name].size, (name, found[name])


# ---------------------------------------------------------------------------------------------
# b. bkgdb recovers it

#: (zenith, azimuth) of the archive runs at mid-run: all around the sky, so the parallactic angles
#: (the turn between the two alignments) cover the circle. The first run is the target.
ARCHIVE = [
    (30.0, 100.0),
    (25.0, 0.0),
    (35.0, 45.0),
    (30.0, 90.0),
    (40.0, 135.0),
    (25.0, 180.0),
    (35.0, 225.0),
    (30.0, 270.0),
    (40.0, 315.0),
    (20.0, 160.0),
    (45.0, 60.0),
]
ARCHIVE_ONTIME_S = 1800.0
#: Twice the rate of part a: the target's own counts limit how well a wrong model is told apart.
ARCHIVE_NORM = 6e-4
#: Bands within the model's energy centres, where the pieces hold enough counts per pixel.
MODEL_BANDS = [0.5, 1.0, 3.0]
#: Within the centres of the model's outermost pixels (2.5 - 5 / 48 deg).
MODEL_RADIUS_DEG = 2.3


def bkgdb(*args):
    result = runner.invoke(app, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output
    return result


def background_hdu_name(path):
    """The name of the file's background HDU (GADF: HDUCLAS2 = BKG)."""
    with fits.open(path) as hdus:
        names = [hdu.name for hdu in hdus[1:] if hdu.header.get("HDUCLAS2") == "BKG"]
    assert len(names) == 1, f"{path} holds {len(names)} background HDUs"
    return names[0]


def write_config(path, alignment):
    """2D and 3D binnings (the 3D one in ``alignment``), every other run selected, plain sums."""
    energy = {"e_min": 0.3, "e_max": 30.0, "e_bins": 5}
    config = {
        "binning": [
            {**energy, "off_min": 0.0, "off_max": 2.5, "off_bins": 10},
            {**energy, "fov_max": 2.5, "fov_bins": 24, "fov_alignment": alignment},
        ],
        "exclusion": {"gammacat": "none", "hawc": "none", "star_cat": "none", "exclude_regions": []},
        "background_selection": {
            "el_diff": None,
            "az_diff": None,
            "gal_lat_min": 0,
            "assembly": "sum",
            "smooth_method": "none",
        },
        "config": {"njobs": 1},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module", params=["ALTAZ", "RADEC"])
def archive(request, tmp_path_factory):
    alignment = request.param
    path = tmp_path_factory.mktemp(f"archive-{alignment.lower()}") / "datastore"
    truth = dataclasses.replace(TRUTHS[alignment], norm=ARCHIVE_NORM)
    simulator = DatastoreSimulator(
        truth=truth, horizontal=ARCHIVE, ontime_s=ARCHIVE_ONTIME_S, seed=8, first_obs_id=2000
    )
    return alignment, path, simulator.run(path)


def test_bkgdb_recovers_the_asymmetric_background(archive, tmp_path, caplog):
    """`bkgdb background --3d` from the other runs' 3D pieces predicts the target's counts through
    gammapy when its binning has the truth's alignment, and misses them when it has the other; gammapy
    reads the model without a warning (no ambiguous axes order) and with the binning's alignment."""
    from gammapy.irf import Background3D

    alignment, path, obs_ids = archive
    target, n_others = obs_ids[0], len(obs_ids) - 1
    found = {}
    for model_alignment in (alignment, OTHER[alignment]):
        name = model_alignment.lower()
        config = write_config(tmp_path / f"{name}.yaml", model_alignment)
        database = f"sqlite:///{tmp_path / name}.sqlite"
        bkgdb("--db", database, "index", path, "--config", config)
        output = tmp_path / f"model-{name}.fits"
        bkgdb("--db", database, "background", target, "--3d", "-o", output, "--config", config)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            model = Background3D.read(output, hdu=background_hdu_name(output))
        assert not caplog.records, "gammapy reads bkgdb's 3D model with complaints"
        assert model.fov_alignment.value == model_alignment
        assert model.data.shape == (5, 24, 24)
        store = datastore_with_backgrounds(path, tmp_path / f"with-{name}", {target: model})
        counts, npred = quadrant_counts(store, [target], alignment, MODEL_BANDS, radius_deg=MODEL_RADIUS_DEG)
        # The model's own noise: the other runs hold about n_others times the target's counts.
        found[model_alignment] = pulls(counts, npred, model_variance=1.0 / (n_others * npred))

    assert counts.sum() > 5000
    right, wrong = found[alignment], found[OTHER[alignment]]
    assert np.abs(right).max() < 4.0, right
    assert np.sum(right**2) < 2.0 * right.size + 4.0, right
    assert np.abs(wrong).max() > 6.0, wrong
