"""One geometry for 2D and 3D pieces: shapes, solid angles, histograms and the gammapy IRFs."""

import numpy as np
import pytest

from bkgdb.geometry import PieceGeometry

ENERGY = np.geomspace(0.1, 100, 21)


def test_offset_rings_cover_the_cap_they_span():
    geometry = PieceGeometry.offset(ENERGY, np.linspace(0, 2.5, 11))
    cap = 2 * np.pi * (1 - np.cos(np.radians(2.5)))
    assert geometry.shape == (20, 10) and geometry.spatial_shape == (10,)
    assert geometry.solid_angle_sr.sum() == pytest.approx(cap, rel=1e-12)
    assert geometry.spatial_offset_deg == pytest.approx(np.arange(10) * 0.25 + 0.125)


def test_fov_pixel_solid_angles_match_a_monte_carlo_of_the_sphere():
    # A wide field, where pixels bounded by FoV meridians and parallels are far from flat squares.
    geometry = PieceGeometry.fov(ENERGY, np.linspace(-40, 40, 5), np.linspace(-40, 40, 5), "RADEC")
    rng = np.random.default_rng(1)
    # Uniform directions in a cap of 60 deg around the FoV centre, as FoV lon/lat (lon = atan2(y, x)).
    n = 2_000_000
    cos_theta = rng.uniform(np.cos(np.radians(60)), 1, n)
    phi = rng.uniform(0, 2 * np.pi, n)
    sin_theta = np.sqrt(1 - cos_theta**2)
    x, y, z = cos_theta, sin_theta * np.cos(phi), sin_theta * np.sin(phi)
    lon, lat = np.degrees(np.arctan2(y, x)), np.degrees(np.arcsin(z))
    hits = np.histogram2d(lon, lat, bins=geometry.spatial_edges)[0]
    cap = 2 * np.pi * (1 - np.cos(np.radians(60)))
    expected = geometry.solid_angle_sr / cap * n
    assert np.all(np.abs(hits - expected) < 5 * np.sqrt(expected))
    flat = np.outer(np.diff(np.radians(geometry.fov_lon_edges)), np.diff(np.radians(geometry.fov_lat_edges)))
    assert np.any(np.abs(hits - flat / cap * n) > 20 * np.sqrt(expected))  # the flat-sky area is wrong here
    assert geometry.spatial_offset_deg[2, 2] == pytest.approx(np.degrees(np.arccos(np.cos(np.radians(10)) ** 2)))


def test_histogram_bins_energy_first_then_space():
    geometry = PieceGeometry.fov(ENERGY, np.linspace(-2, 2, 5), np.linspace(-2, 2, 5))
    counts = geometry.histogram([1.0, 1.0, 50.0, 1000.0], [-1.5, 1.5, 0.5, 0.0], [0.5, 0.5, -1.5, 0.0])
    assert counts.shape == (20, 4, 4) and counts.sum() == 3  # 1000 TeV is outside the energy range
    energy_bin = np.searchsorted(ENERGY, 1.0, side="right") - 1
    assert counts[energy_bin, 0, 2] == 1 and counts[energy_bin, 3, 2] == 1
    with pytest.raises(ValueError, match="3d geometry bins energy and 2 spatial"):
        geometry.histogram([1.0], [0.0])


def test_denominator_is_exposure_times_energy_width_times_solid_angle():
    geometry = PieceGeometry.fov(ENERGY, np.linspace(-2, 2, 5), np.linspace(-2, 2, 5))
    exposure = np.full(geometry.spatial_shape, 1800.0)
    denominator = geometry.denominator(exposure)
    assert denominator.shape == geometry.shape
    assert denominator[3, 1, 2] == pytest.approx(1800 * (ENERGY[4] - ENERGY[3]) * 1e6 * geometry.solid_angle_sr[1, 2])


@pytest.mark.parametrize("alignment", ["ALTAZ", "RADEC"])
def test_gammapy_irf_keeps_axes_values_and_alignment(alignment):
    geometry = PieceGeometry.fov(ENERGY, np.linspace(-2.5, 2.5, 25), np.linspace(-2.5, 2.5, 25), alignment)
    rate = np.random.default_rng(2).uniform(1, 2, geometry.shape)
    irf = geometry.to_irf(rate)
    assert irf.fov_alignment.name == alignment
    assert [axis.name for axis in irf.axes] == ["energy", "fov_lon", "fov_lat"]
    assert irf.data == pytest.approx(rate)
    two_d = PieceGeometry.offset(ENERGY, np.linspace(0, 2.5, 11)).to_irf(np.ones((20, 10)))
    assert [axis.name for axis in two_d.axes] == ["energy", "offset"]
    with pytest.raises(ValueError, match="does not fit"):
        geometry.to_irf(np.ones((20, 10)))


def test_invalid_geometries_are_refused():
    with pytest.raises(ValueError, match="increasing"):
        PieceGeometry.offset(ENERGY, [0.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="alignment"):
        PieceGeometry.fov(ENERGY, [-1, 1], [-1, 1], "GALACTIC")
    assert PieceGeometry.fov(ENERGY, [-1, 1], [-2, 2]).max_offset_deg == pytest.approx(
        np.degrees(np.arccos(np.cos(np.radians(1)) * np.cos(np.radians(2))))
    )
