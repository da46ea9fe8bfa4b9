"""Properties of 3D pieces for random fields, pointings anywhere on the sky and exclusion circles.

(a) Summed over a ring, the pixels of a 3D piece hold the ring's 2D counts, to bin boundaries.
(b) RADEC: kept + excluded per pixel are the events gammapy's own (SkyOffsetFrame-based)
    ``sky_to_fov`` places in the pixel, and the excluded ones are those inside a circle.
"""

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fov_pieces import REFERENCE, SITE, TRANSIT, circle_at, clock_around, disc_pixels, maker_for

from bkgdb.geometry import PieceGeometry
from bkgdb.makers.fov import RunClock


@st.composite
def fields(draw):
    ra = draw(st.floats(0, 360, exclude_max=True))
    dec = draw(st.floats(-89.5, 89.5))
    half_width = draw(st.floats(0.5, 3.0))
    n_pixels = draw(st.integers(2, 16))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_events = draw(st.integers(0, 400))
    events = SkyCoord(ra * u.deg, dec * u.deg).directional_offset_by(
        rng.uniform(0, 360, n_events) * u.deg, half_width * 1.6 * np.sqrt(rng.uniform(0, 1, n_events)) * u.deg
    )
    energy = np.exp(rng.uniform(np.log(0.05), np.log(200), n_events))
    circles = [
        circle_at(
            ra, dec, draw(st.floats(0, 360)), draw(st.floats(0, half_width)), draw(st.floats(0.05, 0.5)), f"c{number}"
        )
        for number in range(draw(st.integers(0, 2)))
    ]
    return ra, dec, half_width, n_pixels, events.ra.deg, events.dec.deg, energy, circles


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fields(), st.sampled_from(["RADEC", "ALTAZ"]))
def test_pixels_summed_over_a_ring_recover_the_ring_counts(field, alignment):
    ra, dec, half_width, n_pixels, ev_ra, ev_dec, energy, circles = field
    energy_edges = np.geomspace(0.1, 100, 6)
    edges = np.linspace(-half_width, half_width, n_pixels + 1)
    geometry_3d = PieceGeometry.fov(energy_edges, edges, edges, alignment)
    geometry_2d = PieceGeometry.offset(energy_edges, [0.0, half_width])  # the disc inside the square
    clock = clock_around(TRANSIT, 1000.0, event_time_s=None)
    clock = RunClock(REFERENCE, clock.start_s, clock.start_s + np.linspace(0, 1000, len(energy)), SITE)
    piece_3d = maker_for(geometry_3d, circles).run(ev_ra, ev_dec, energy, ra, dec, 1000.0, clock=clock)
    piece_2d = maker_for(geometry_2d, circles).run(ev_ra, ev_dec, energy, ra, dec, 1000.0)
    # Pixels wholly inside the disc hold at most the ring's events; pixels touching it at least.
    inside, touching = disc_pixels(geometry_3d, half_width)
    for counts_3d, counts_2d in (
        (piece_3d.counts, piece_2d.counts),
        (piece_3d.excluded_counts, piece_2d.excluded_counts),
    ):
        assert np.all(counts_3d[:, inside].sum(axis=1) <= counts_2d[:, 0])
        assert np.all(counts_2d[:, 0] <= counts_3d[:, touching].sum(axis=1))
    # All events of the disc lie in the square: kept + excluded add up in both.
    in_disc = piece_2d.n_events
    assert piece_3d.n_events >= in_disc
    assert piece_3d.exposure_s.shape == geometry_3d.spatial_shape
    assert np.all((piece_3d.exposure_s >= 0) & (piece_3d.exposure_s <= 1000.0))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fields())
def test_kept_and_excluded_pixels_are_the_events_gammapy_places_there(field):
    """RADEC: bin by bin, kept + excluded is the histogram of gammapy's SkyOffsetFrame-based FoV coordinates."""
    from gammapy.utils.coordinates import sky_to_fov as gammapy_sky_to_fov

    ra, dec, half_width, n_pixels, ev_ra, ev_dec, energy, circles = field
    edges = np.linspace(-half_width, half_width, n_pixels + 1)
    geometry = PieceGeometry.fov(np.geomspace(0.1, 100, 4), edges, edges, "RADEC")
    piece = maker_for(geometry, circles).run(ev_ra, ev_dec, energy, ra, dec, 100.0)
    lon, lat = gammapy_sky_to_fov(ev_ra * u.deg, ev_dec * u.deg, ra * u.deg, dec * u.deg)
    expected = geometry.histogram(energy, lon.wrap_at(180 * u.deg).deg, lat.deg)
    np.testing.assert_array_equal(piece.counts + piece.excluded_counts, expected)
    in_circle = np.zeros(len(energy), bool)
    for circle in circles:
        in_circle |= (
            SkyCoord(ev_ra * u.deg, ev_dec * u.deg).separation(SkyCoord(circle.ra * u.deg, circle.dec * u.deg)).deg
            <= circle.radius
        )
    assert (
        piece.excluded_counts.sum()
        == geometry.histogram(energy[in_circle], lon.deg[in_circle], lat.deg[in_circle]).sum()
    )
