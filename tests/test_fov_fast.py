"""3D pieces without per-event astropy transforms, checked against astropy's transforms.

RADEC FoV coordinates are a rotation of the sky; ALTAZ ones come from a run's `AltAzTrack`,
the sky's turn fitted on a few directions and interpolated. The references here are astropy's
own frame transforms into gammapy's ``FoVICRSFrame`` and ``FoVAltAzFrame`` (with astropy's
interpolated astrometry, as bkgdb used event by event), H.E.S.S. DR1 events, and brute-force
exclusion fractions (every sample point against every circle).

Measured on all 105 DR1 runs (994,849 events within the 24 x 24 pixels of +-2.5 deg): the track
differs from astropy's event-by-event ALTAZ transform by at most 0.0006 arcsec and no event
changes pixel; the bounds below leave a margin of 15 (position) and state the pixel criterion.
"""

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import AltAz, EarthLocation, SkyCoord, angular_separation
from astropy.coordinates.erfa_astrom import ErfaAstromInterpolator, erfa_astrom
from astropy.time import Time
from gammapy.utils.coordinates import FoVAltAzFrame, FoVICRSFrame
from test_fov_pieces import REFERENCE, SITE, TRANSIT, GeometryBinning, clock_around, fov_geometry, transiting_pointing

from bkgdb.config import ExclusionSettings
from bkgdb.geometry import PieceGeometry
from bkgdb.makers.fov import (
    RunClock,
    altaz_track,
    fov_outside_fraction,
    max_rotation_deg,
    pixel_samples,
    rotation_steps,
    sky_to_fov,
)
from bkgdb.makers.piece import PieceMaker, _bin_index
from bkgdb.makers.sphere import fov_matrix, lon_lat_deg, unit_vectors

#: The largest difference (arcsec) between the track and astropy's event-by-event transform.
MAX_TRACK_ERROR_ARCSEC = 0.01
#: The largest share of events whose 24 x 24 pixel the track changes.
MAX_PIXEL_CHANGES = 1e-4


def astropy_fov(
    ra_deg: np.ndarray,
    dec_deg: np.ndarray,
    alignment: str,
    ra0: float,
    dec0: float,
    times: Time | None = None,
    location: EarthLocation | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """FoV lon, lat (deg) by astropy frame transforms into gammapy's frames, event by event."""
    pointing = SkyCoord(ra0 * u.deg, dec0 * u.deg)
    with erfa_astrom.set(ErfaAstromInterpolator(300 * u.s)):
        if alignment == "RADEC":
            frame = FoVICRSFrame(origin=pointing)
        else:
            origin = pointing.transform_to(AltAz(obstime=times, location=location))
            frame = FoVAltAzFrame(origin=origin, location=location, obstime=times)
        fov = SkyCoord(ra_deg * u.deg, dec_deg * u.deg).transform_to(frame)
    return fov.fov_lon.wrap_at(180 * u.deg).deg, fov.fov_lat.deg


def separation_arcsec(lon_a: np.ndarray, lat_a: np.ndarray, lon_b: np.ndarray, lat_b: np.ndarray) -> np.ndarray:
    return angular_separation(lon_a * u.deg, lat_a * u.deg, lon_b * u.deg, lat_b * u.deg).to_value(u.arcsec)


def pixel_of(lon: np.ndarray, lat: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.searchsorted(edges, lon), np.searchsorted(edges, lat)


@pytest.fixture(scope="module")
def dr1_runs() -> list[tuple]:
    """Events, pointing and clock of 15 DR1 runs: the 4 lowest, the 4 highest (2.5 deg from the zenith), 7 others."""
    from conftest import gammapy_data_path

    from bkgdb.gadf.datastore import DL3Datastore
    from bkgdb.gadf.events import read_events
    from bkgdb.makers.run import run_clock

    store = DL3Datastore(gammapy_data_path("hess-dl3-dr1"))
    by_altitude = sorted(store.runs(), key=lambda source: float(source.row["ALT_PNT"]))
    chosen = by_altitude[:4] + by_altitude[-4:] + by_altitude[10:-10:14]
    runs = []
    for source in chosen:
        assert source.events_path is not None
        events = read_events(source, source.events_path.read_bytes(), with_events=True)
        header = events.header
        runs.append(
            (
                source.obs_id,
                events,
                float(header.get("RA_PNT")),
                float(header.get("DEC_PNT")),
                float(header.get("ONTIME")),
                run_clock(events, source, store.meta),
            )
        )
    return runs


def test_radec_fov_coordinates_are_astropys_on_dr1_events(dr1_runs: list[tuple]) -> None:
    for _, events, ra0, dec0, _, _ in dr1_runs:
        lon, lat = sky_to_fov(events.ra_deg, events.dec_deg, "RADEC", ra0, dec0)
        lon_a, lat_a = astropy_fov(events.ra_deg, events.dec_deg, "RADEC", ra0, dec0)
        assert np.abs(lon - lon_a).max() < 1e-9 and np.abs(lat - lat_a).max() < 1e-9


def test_altaz_track_is_astropys_event_by_event_transform_on_dr1(dr1_runs: list[tuple]) -> None:
    geometry = fov_geometry("ALTAZ")
    edges = geometry.fov_lon_edges
    n_events = n_changed = 0
    for obs_id, events, ra0, dec0, ontime, clock in dr1_runs:
        fov = unit_vectors(events.ra_deg, events.dec_deg) @ fov_matrix(ra0, dec0).T
        near = fov[:, 0] >= np.cos(np.radians(geometry.max_offset_deg))
        seconds = clock.event_seconds(near)
        track = altaz_track(clock, ra0, dec0, min(0.0, seconds.min()), max(ontime, seconds.max()), 3.6)
        lon, lat = lon_lat_deg(track.to_altaz(fov[near], seconds))
        lon_a, lat_a = astropy_fov(
            events.ra_deg[near], events.dec_deg[near], "ALTAZ", ra0, dec0, clock.event_times(near), clock.observatory()
        )
        assert separation_arcsec(lon, lat, lon_a, lat_a).max() < MAX_TRACK_ERROR_ARCSEC, obs_id
        # bkgdb's exact transform (ERFA calls without astropy's frames) is astropy's.
        first = np.flatnonzero(near)[:500]
        times, site = clock.event_times(first), clock.observatory()
        lon_e, lat_e = sky_to_fov(events.ra_deg[first], events.dec_deg[first], "ALTAZ", ra0, dec0, times, site)
        assert separation_arcsec(lon_e, lat_e, lon_a[:500], lat_a[:500]).max() < 1e-6
        changed = np.not_equal(pixel_of(lon, lat, edges), pixel_of(lon_a, lat_a, edges)).any(axis=0)
        n_events, n_changed = n_events + len(lon), n_changed + changed.sum()
    assert n_events > 100_000
    assert n_changed / n_events < MAX_PIXEL_CHANGES


@pytest.mark.parametrize("from_zenith_deg", [5.0, 0.05])
def test_altaz_track_follows_a_run_through_the_zenith(from_zenith_deg: float) -> None:
    """Near the zenith the sky turns by 180 deg within minutes; the parallactic angle carries the track."""
    ra0, dec0 = transiting_pointing(from_zenith_deg)
    rng = np.random.default_rng(4)
    duration, n = 1800.0, 5000
    seconds = rng.uniform(0, duration, n)
    start_s = clock_around(TRANSIT, duration).start_s
    clock = RunClock(REFERENCE, start_s, start_s + seconds, SITE)
    events = SkyCoord(ra0 * u.deg, dec0 * u.deg).directional_offset_by(
        rng.uniform(0, 360, n) * u.deg, 3.5 * np.sqrt(rng.uniform(size=n)) * u.deg
    )
    track = altaz_track(clock, ra0, dec0, 0.0, duration, 3.6)
    turned = np.ptp(np.unwrap(track.turn_at(np.linspace(0, duration, 1000))))
    assert np.degrees(turned) > (170 if from_zenith_deg < 1 else 60)
    fov = unit_vectors(events.ra.deg, events.dec.deg) @ track.radec.T
    lon, lat = lon_lat_deg(track.to_altaz(fov, seconds))
    lon_a, lat_a = astropy_fov(events.ra.deg, events.dec.deg, "ALTAZ", ra0, dec0, clock.event_times(), SITE)
    assert separation_arcsec(lon, lat, lon_a, lat_a).max() < MAX_TRACK_ERROR_ARCSEC


def dr1_maker(alignment: str) -> PieceMaker:
    from conftest import gammapy_data_path

    catalogs = gammapy_data_path("catalogs")
    exclusion = ExclusionSettings(
        gammacat=str(catalogs / "gammacat" / "gammacat.fits.gz"),
        hawc=None,
        star_cat=str(catalogs / "Hipparcos_MAG8_1997.dat"),
        star_mag_max=8,
        star_radius=0.35,
    )
    return PieceMaker(GeometryBinning(fov_geometry(alignment)), exclusion)


def brute_force_excluded(
    geometry: PieceGeometry, regions: list, circle_lon: np.ndarray, circle_lat: np.ndarray
) -> np.ndarray:
    """Which sample points of every pixel lie in any circle, the circles' centres in FoV lon, lat."""
    samples = pixel_samples(geometry)[0].reshape(-1, 3)
    centres = unit_vectors(circle_lon, circle_lat)
    cos_radius = np.cos(np.radians([region.radius for region in regions]))
    return (samples @ centres.T >= cos_radius).any(axis=1).reshape(len(pixel_samples(geometry)[0]), -1)


def test_radec_fraction_is_the_brute_force_fraction_and_shared_by_runs_on_a_pointing(dr1_runs: list[tuple]) -> None:
    maker = dr1_maker("RADEC")
    geometry = maker.geometry
    _, events, ra0, dec0, ontime, _ = dr1_runs[0]
    regions = maker.make_regions(ra0, dec0)
    assert len(regions) > 10  # stars and sources
    lon, lat = astropy_fov(np.array([r.ra for r in regions]), np.array([r.dec for r in regions]), "RADEC", ra0, dec0)
    expected = 1.0 - brute_force_excluded(geometry, regions, lon, lat).mean(axis=1).reshape(geometry.spatial_shape)
    piece = maker.run(events.ra_deg, events.dec_deg, events.energy_tev, ra0, dec0, ontime)
    np.testing.assert_allclose(piece.fraction, expected, rtol=0, atol=1e-12)
    assert piece.fraction.min() < 0.5
    np.testing.assert_array_equal(fov_outside_fraction(geometry, ra0, dec0, regions, maker.finder), expected)
    # Another run on the pointing gets the same fractions, a copy of its own.
    first = maker.make_fraction(ra0, dec0, regions, (), np.zeros(0, bool))
    np.testing.assert_array_equal(first, expected)
    first[:] = 0.0
    np.testing.assert_array_equal(maker.make_fraction(ra0, dec0, regions, (), np.zeros(0, bool)), expected)


def test_altaz_fraction_is_the_brute_force_fraction_over_the_steps(dr1_runs: list[tuple]) -> None:
    maker = dr1_maker("ALTAZ")
    geometry = maker.geometry
    _, _, ra0, dec0, ontime, clock = dr1_runs[-1]  # 2.5 deg from the zenith: the sky turns fast
    regions = maker.make_regions(ra0, dec0)
    track = altaz_track(clock, ra0, dec0, 0.0, ontime, geometry.max_offset_deg)
    fraction = fov_outside_fraction(geometry, ra0, dec0, regions, maker.finder, clock, ontime, track=track)
    times, weights, _, _ = rotation_steps(clock, ontime, ra0, dec0, max_rotation_deg(geometry), track=track)
    assert len(weights) > 10
    ra, dec = np.array([r.ra for r in regions]), np.array([r.dec for r in regions])
    lost = np.zeros(geometry.spatial_shape)
    for time, weight in zip(times, weights, strict=True):
        lon, lat = astropy_fov(ra, dec, "ALTAZ", ra0, dec0, time, clock.observatory())
        lost += weight * brute_force_excluded(geometry, regions, lon, lat).mean(axis=1).reshape(lost.shape)
    # Circle centres within a few 1e-3 arcsec of astropy's: a sample point may flip, rarely.
    assert np.abs(fraction - (1 - lost)).max() <= 1 / 64 * weights.max() + 1e-12
    assert np.abs(fraction - (1 - lost)).mean() < 1e-4
    assert fraction.min() < 0.9


def test_bins_are_numpy_histogramdd_bins_including_edges() -> None:
    edges = [np.array([0.1, 1.0, 10.0]), np.array([-2.0, 0.0, 2.0, 4.0])]
    energy = np.array([0.1, 1.0, 10.0, 0.05, 11.0, 5.0, np.nan, 0.5, 0.5, 0.5])
    lon = np.array([-2.0, 0.0, 4.0, 1.0, 1.0, 4.0000001, 1.0, np.nan, -2.0000001, 3.999999])
    index = _bin_index(edges, [energy, lon])
    expected, _ = np.histogramdd(np.stack([energy, lon], axis=-1), bins=edges)
    counts = np.bincount(index[index >= 0], minlength=expected.size).reshape(expected.shape)
    np.testing.assert_array_equal(counts, expected)
    assert list(index[:3]) == [0, 4, 5] and np.all(index[3:-1] == -1)
