"""Summing pieces into a rate and smoothing it."""

import numpy as np
import pytest
from conftest import local_spectral_index, power_law_centre_rates

from bkgdb.config import Binning
from bkgdb.makers.assembly import assemble_background, energy_nodes_for_gammapy
from bkgdb.makers.piece import BackgroundPiece
from bkgdb.makers.smoothing import BackgroundSmoother
from bkgdb.simulate import BackgroundTruth

BINNING = Binning(e_min=0.1, e_max=100, e_bins=12, off_min=0, off_max=2.5, off_bins=10)


def piece(counts, fraction=1.0, ontime=1800.0):
    counts = np.asarray(counts, dtype=np.int64)
    return BackgroundPiece(counts, np.zeros_like(counts), np.full(counts.shape[1], ontime * fraction), ontime, ontime)


def poisson_pieces(truth, n_runs=20, ontime=1800.0, seed=3):
    rng = np.random.default_rng(seed)
    expected = truth.expected_counts(BINNING.energy_edges, BINNING.offset_edges, ontime)
    return [piece(rng.poisson(expected), ontime=ontime) for _ in range(n_runs)], expected * n_runs


def test_rate_is_counts_over_exposure_energy_and_solid_angle():
    counts = np.zeros(BINNING.shape, dtype=np.int64)
    counts[3, 2] = 100
    background = assemble_background([piece(counts, 0.5), piece(counts, 1.0)], BINNING)
    assert background.counts[3, 2] == 200 and background.exposure_s[2] == pytest.approx(2700.0)
    edges = np.radians(BINNING.offset_edges[2:4])
    solid_angle = 2 * np.pi * (np.cos(edges[0]) - np.cos(edges[1]))
    width_mev = (BINNING.energy_edges[4] - BINNING.energy_edges[3]) * 1e6
    assert background.rate[3, 2] == pytest.approx(200 / (2700.0 * width_mev * solid_angle))
    assert np.all(np.isfinite(background.rate)) and background.rate.sum() == background.rate[3, 2]


def test_empty_and_unexposed_bins_are_zero():
    counts = np.ones(BINNING.shape, dtype=np.int64)
    unexposed = BackgroundPiece(counts, np.zeros_like(counts), np.zeros(BINNING.off_bins), 1800.0, 1800.0)
    background = assemble_background([unexposed], BINNING)
    assert np.all(background.rate == 0)
    for method in BackgroundSmoother.available_methods:
        assert np.all(np.isfinite(BackgroundSmoother(method).run(background)))


def test_unsmoothed_rate_recovers_the_truth():
    truth = BackgroundTruth()
    pieces, expected = poisson_pieces(truth)
    background = assemble_background(pieces, BINNING)
    use = expected > 20
    pulls = (background.counts[use] - expected[use]) / np.sqrt(expected[use])
    assert abs(pulls.mean()) < 3 / np.sqrt(use.sum()) * 1.5
    assert np.sum(pulls**2) < use.sum() + 5 * np.sqrt(2 * use.sum())


@pytest.mark.parametrize("method", ["poly", "spline"])
def test_fitted_smoothing_reduces_noise(method):
    truth = BackgroundTruth()
    pieces, expected = poisson_pieces(truth, n_runs=2)
    background = assemble_background(pieces, BINNING)
    true_rate = expected / background.denominator
    smoothed = BackgroundSmoother(method, degree=4).run(background)
    rows = background.counts.sum(axis=1) > 200  # energy slices with something to smooth
    raw_error = np.sum(((background.rate - true_rate) / true_rate)[rows] ** 2)
    smooth_error = np.sum(((smoothed - true_rate) / true_rate)[rows] ** 2)
    assert smooth_error < raw_error
    assert np.all(smoothed >= 0)


@pytest.mark.parametrize("method", ["gauss", "gauss-seed"])
def test_gauss_smoothing_spreads_a_spike(method):
    truth = BackgroundTruth()
    pieces, _ = poisson_pieces(truth, n_runs=2)
    background = assemble_background(pieces, BINNING)
    smoothed = BackgroundSmoother(method, sigma=1.0).run(background)
    assert smoothed.shape == BINNING.shape and np.all(smoothed >= 0)
    # Smoothing spreads a single bright bin to its neighbours.
    spike = np.zeros(BINNING.shape, dtype=np.int64)
    spike[5, 4] = 1000
    spread = BackgroundSmoother(method, sigma=1.0).run(assemble_background([piece(spike)], BINNING))
    raw = assemble_background([piece(spike)], BINNING).rate
    assert spread[5, 3] > 0 and spread[5, 5] > 0 and spread[5, 4] < raw[5, 4]


def test_polynomial_degree_is_capped_below_the_number_of_bins():
    binning = Binning(e_bins=2, off_bins=3)
    counts = np.array([[50, 40, 10], [5, 4, 0]])
    background = assemble_background([BackgroundPiece(counts, 0 * counts, np.full(3, 100.0), 100.0, 90.0)], binning)
    smoothed = BackgroundSmoother("poly", degree=7).run(background)
    assert smoothed.shape == (2, 3) and np.all(smoothed >= 0)


def test_unknown_smoothing_method():
    with pytest.raises(ValueError, match="gauss, gauss-seed, poly, spline, none"):
        BackgroundSmoother("boxcar")


def test_filled_models_stay_finite_in_gammapy():
    """A sparse model with empty bins explodes in gammapy's log interpolation unless filled."""
    import astropy.units as u

    from bkgdb.makers.assembly import EMPTY_ENERGY_NODE_FRACTION, fill_empty_bins

    binning = Binning(e_min=0.1, e_max=100, e_bins=8, off_min=0, off_max=2.5, off_bins=5)
    counts = np.zeros(binning.shape, dtype=np.int64)
    counts[0] = [3, 0, 0, 2, 5]
    counts[2] = [1, 0, 0, 0, 1]
    counts[3] = [0, 4, 0, 0, 0]
    background = assemble_background([BackgroundPiece(counts, 0 * counts, np.full(5, 1800.0), 1800.0, 1600.0)], binning)
    energy = np.geomspace(0.1, 100, 60)[:, np.newaxis] * u.TeV
    offset = np.linspace(0, 2.5, 40) * u.deg
    ceiling = background.rate.max()
    with np.errstate(over="ignore"):
        raw = background.to_irf().evaluate(energy=energy, offset=offset).value
    assert np.nanmax(raw) > 1e10 * ceiling  # the hazard is real
    filled = fill_empty_bins(background.rate, background)
    model = background.to_irf(filled).evaluate(energy=energy, offset=offset).value
    # Finite; at most a bounded bump (the square root of 1 / EMPTY_ENERGY_NODE_FRACTION at the axis
    # edge) where the lowest counted slice is extrapolated toward an empty one above it.
    assert np.all(np.isfinite(model)) and model.max() < 100 * ceiling
    assert np.all(filled > 0)
    # Slices without counts get a small fraction of their neighbour toward the counts, per slice.
    np.testing.assert_allclose(filled[4:] / filled[3:-1], EMPTY_ENERGY_NODE_FRACTION)
    np.testing.assert_allclose(filled[1], EMPTY_ENERGY_NODE_FRACTION * np.sqrt(filled[0] * filled[2]))
    for index in (0, 2, 3):  # the counted slices still predict their counts
        assert (filled[index] * background.denominator[index]).sum() == pytest.approx(counts[index].sum())


def test_gadf_writer_matches_gammapy(tmp_path):
    from astropy.io import fits
    from gammapy.irf import Background2D

    from bkgdb.gadf.hdu import background_hdu

    rng = np.random.default_rng(5)
    rate = rng.uniform(0, 1e-3, size=BINNING.shape)
    background = assemble_background([piece(np.ones(BINNING.shape))], BINNING)
    ours = background_hdu(background.geometry, rate)
    theirs = background.to_irf(rate).to_table_hdu()
    for column in ("ENERG_LO", "ENERG_HI", "THETA_LO", "THETA_HI"):
        assert np.allclose(ours.data[column], theirs.data[column], rtol=1e-12, atol=0), column
    assert np.array_equal(ours.data["BKG"], theirs.data["BKG"])
    assert ours.columns["BKG"].dim == theirs.columns["BKG"].dim
    fits.HDUList([fits.PrimaryHDU(), ours]).writeto(tmp_path / "bkg.fits")
    read = Background2D.read(tmp_path / "bkg.fits")
    assert np.array_equal(read.data, rate)
    assert read.axes["offset"].edges.to_value("deg") == pytest.approx(BINNING.offset_edges)
    with pytest.raises(ValueError, match="does not fit"):
        background_hdu(background.geometry, rate.T)


@pytest.mark.parametrize("method", [power_law_centre_rates, energy_nodes_for_gammapy])
def test_bin_averages_become_centre_values_for_a_power_law(method):
    """gammapy reads values at the log centres; a summed model holds bin averages."""

    truth = BackgroundTruth(index=2.7)
    expected = truth.expected_counts(BINNING.energy_edges, BINNING.offset_edges, 1e6)
    background = assemble_background([piece(np.round(expected), ontime=1e6)], BINNING)
    index = local_spectral_index(background)
    assert index[:6] == pytest.approx(2.7, abs=0.01)
    centre_energy = np.sqrt(BINNING.energy_edges[1:] * BINNING.energy_edges[:-1])
    centre_offset = 0.5 * (BINNING.offset_edges[1:] + BINNING.offset_edges[:-1])
    true_centre = truth.rate(centre_energy[:, np.newaxis], centre_offset[np.newaxis, :])
    assert np.all(background.rate[:6] / true_centre[:6] > 1.02)  # the bin average is 2.3 % high
    corrected = method(background.rate, background)
    # What remains is the (much smaller) averaging over offset within an annulus.
    assert corrected[:6] / true_centre[:6] == pytest.approx(1.0, abs=0.005)
