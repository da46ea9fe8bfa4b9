"""3D pieces: FoV coordinates, exposure fractions over a turning sky, agreement with 2D and with gammapy.

Every expectation is computed independently of bkgdb's code path: AltAz positions with astropy,
offsets with `SkyOffsetFrame`, exclusion by `SkyCoord.separation` of Monte Carlo points drawn
at random times, and H.E.S.S. DR1 events in gammapy's own ``Observation.get_fov_frame``.
"""

from dataclasses import dataclass

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import AltAz, EarthLocation, SkyCoord, SkyOffsetFrame, angular_separation
from astropy.time import Time
from astropy.utils import iers

from bkgdb.config import Binning, CircleRegion, ExclusionSettings
from bkgdb.geometry import PieceGeometry
from bkgdb.makers.fov import FovError, RunClock, fov_frame, fov_outside_fraction, rotation_steps, sky_to_fov
from bkgdb.makers.piece import PieceMaker

iers.conf.auto_download = False

SITE = EarthLocation(lon=16.5002 * u.deg, lat=-23.2718 * u.deg, height=1835 * u.m)
REFERENCE = Time(51910, 0.00074287037037, format="mjd", scale="tt")
#: A run that passes 5 deg from the zenith around its middle: the sky turns fast in the ALTAZ FoV.
TRANSIT = Time("2021-03-01T21:00:00", scale="utc")


@dataclass(frozen=True)
class GeometryBinning:
    """A binning as configs give it: something with a ``geometry`` (hashable, as index jobs need)."""

    geometry: PieceGeometry


def no_catalogues(circles=(), method="geometric"):
    return ExclusionSettings(
        gammacat=None, hawc=None, star_cat=None, exclude_regions=tuple(circles), exposure_method=method
    )


def maker_for(geometry, circles=(), method="geometric"):
    return PieceMaker(GeometryBinning(geometry), no_catalogues(circles, method))


def fov_geometry(alignment, n_pixels=24, half_width=2.5, n_energy=20):
    edges = np.linspace(-half_width, half_width, n_pixels + 1)
    return PieceGeometry.fov(np.geomspace(0.1, 100, n_energy + 1), edges, edges, alignment)


def transiting_pointing(offset_from_zenith_deg=5.0):
    """An ICRS pointing that culminates ``offset_from_zenith_deg`` north of the zenith at TRANSIT."""
    zenith = SkyCoord(alt=90 * u.deg, az=0 * u.deg, frame=AltAz(obstime=TRANSIT, location=SITE)).icrs
    return float(zenith.ra.deg), float(zenith.dec.deg + offset_from_zenith_deg)


def clock_around(middle, duration_s, event_time_s=None):
    start_s = float((middle - REFERENCE).to_value(u.s)) - duration_s / 2
    return RunClock(reference=REFERENCE, start_s=start_s, event_time_s=event_time_s, location=SITE)


# -- sign conventions ----------------------------------------------------------------------------


def test_radec_fov_lon_decreases_toward_east():
    ra0, dec0 = 83.63, 22.01
    east = SkyCoord(ra0 * u.deg, dec0 * u.deg).directional_offset_by(90 * u.deg, 1 * u.deg)  # larger RA
    north = SkyCoord(ra0 * u.deg, dec0 * u.deg).directional_offset_by(0 * u.deg, 1 * u.deg)
    lon, lat = sky_to_fov(
        np.array([east.ra.deg, north.ra.deg]), np.array([east.dec.deg, north.dec.deg]), "RADEC", ra0, dec0
    )
    assert east.ra.deg > ra0
    np.testing.assert_allclose(lon, [-1.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(lat, [0.0, 1.0], atol=1e-9)
    # gammapy's SkyOffsetFrame-based helper, a different code path, agrees.
    from gammapy.utils.coordinates import sky_to_fov as gammapy_sky_to_fov

    g_lon, g_lat = gammapy_sky_to_fov(east.ra, east.dec, ra0 * u.deg, dec0 * u.deg)
    assert lon[0] == pytest.approx(g_lon.to_value(u.deg), abs=1e-9)
    assert lat[0] == pytest.approx(g_lat.to_value(u.deg), abs=1e-9)


def test_altaz_fov_lon_decreases_with_azimuth_and_lat_grows_with_altitude():
    ra0, dec0 = 83.63, 22.01
    times = Time("2004-12-04T23:00:00", scale="utc") + np.array([0.0, 600.0, 1200.0]) * u.s
    frame = AltAz(obstime=times, location=SITE)
    pointing = SkyCoord(ra0 * u.deg, dec0 * u.deg).transform_to(frame)
    # Events 1 deg toward larger azimuth and 1 deg higher, in the horizontal frame itself.
    larger_az = pointing.directional_offset_by(90 * u.deg, 1 * u.deg)
    higher = pointing.directional_offset_by(0 * u.deg, 1 * u.deg)
    assert np.all((larger_az.az - pointing.az).wrap_at(180 * u.deg) > 0) and np.all(higher.alt > pointing.alt)
    for event, expected_lon, expected_lat in ((larger_az, -1.0, 0.0), (higher, 0.0, 1.0)):
        icrs = event.icrs
        lon, lat = sky_to_fov(icrs.ra.deg, icrs.dec.deg, "ALTAZ", ra0, dec0, times, SITE)
        np.testing.assert_allclose(lon, expected_lon, atol=1e-6)
        np.testing.assert_allclose(lat, expected_lat, atol=1e-6)
        # The same from an astropy SkyOffsetFrame around the pointing's AltAz (lon reversed).
        offset = icrs.transform_to(frame).transform_to(SkyOffsetFrame(origin=pointing))
        np.testing.assert_allclose(lon, -offset.lon.deg, atol=1e-6)
        np.testing.assert_allclose(lat, offset.lat.deg, atol=1e-6)


def test_event_fov_coordinates_use_each_event_time():
    ra0, dec0 = transiting_pointing()
    clock = clock_around(TRANSIT, 1800.0)
    star = SkyCoord(ra0 * u.deg, dec0 * u.deg).directional_offset_by(0 * u.deg, 1.5 * u.deg)
    times = clock.start() + np.array([0.0, 900.0, 1800.0]) * u.s
    lon, lat = sky_to_fov(np.full(3, star.ra.deg), np.full(3, star.dec.deg), "ALTAZ", ra0, dec0, times, SITE)
    angle = np.degrees(np.arctan2(lat, lon))
    turn = np.abs((angle[-1] - angle[0] + 180) % 360 - 180)
    assert turn > 30  # near the zenith a fixed star turns by tens of degrees in half an hour
    np.testing.assert_allclose(from_centre(lon, lat), 1.5, atol=1e-3)  # at a fixed offset


# -- exposure fractions --------------------------------------------------------------------------


def monte_carlo_fraction(geometry, ra0, dec0, excluded, clock=None, duration_s=None, per_pixel=300, seed=1):
    """Fraction of each pixel outside the regions: random points (equal area) at random times.

    ``excluded(sky)`` tells which ICRS positions lie in a region.
    """
    rng = np.random.default_rng(seed)
    lon_edges, lat_edges = geometry.fov_lon_edges, geometry.fov_lat_edges
    n_lon, n_lat = geometry.spatial_shape
    i, j = np.meshgrid(np.arange(n_lon), np.arange(n_lat), indexing="ij")
    i, j = np.repeat(i.ravel(), per_pixel), np.repeat(j.ravel(), per_pixel)
    lon = lon_edges[i] + rng.uniform(size=len(i)) * np.diff(lon_edges)[i]
    sin_lo, sin_hi = np.sin(np.radians(lat_edges[j])), np.sin(np.radians(lat_edges[j + 1]))
    lat = np.degrees(np.arcsin(sin_lo + rng.uniform(size=len(i)) * (sin_hi - sin_lo)))
    times = None
    if geometry.alignment == "ALTAZ":
        times = clock.start() + rng.uniform(0, duration_s, len(i)) * u.s
    frame = fov_frame(geometry.alignment, ra0, dec0, times, SITE)
    inside = excluded(SkyCoord(fov_lon=lon * u.deg, fov_lat=lat * u.deg, frame=frame).icrs)
    return 1.0 - inside.reshape(n_lon, n_lat, per_pixel).mean(axis=-1)


def in_circles(circles):
    def excluded(sky):
        inside = np.zeros(sky.shape, bool)
        for circle in circles:
            inside |= sky.separation(SkyCoord(circle.ra * u.deg, circle.dec * u.deg)).deg < circle.radius
        return inside

    return excluded


def from_centre(lon_deg, lat_deg):
    """Angular distance (deg) of FoV positions from the FoV centre, on the sphere."""
    return np.degrees(np.arccos(np.cos(np.radians(lon_deg)) * np.cos(np.radians(lat_deg))))


def disc_pixels(geometry, radius_deg):
    """Pixels wholly inside, and pixels touching, the disc of ``radius_deg`` around the FoV centre."""
    lon, lat = geometry.fov_centres
    half_lon, half_lat = np.diff(geometry.fov_lon_edges)[0] / 2, np.diff(geometry.fov_lat_edges)[0] / 2
    farthest = from_centre(np.abs(lon) + half_lon, np.abs(lat) + half_lat)
    nearest = from_centre(np.clip(np.abs(lon) - half_lon, 0, None), np.clip(np.abs(lat) - half_lat, 0, None))
    return farthest < radius_deg * (1 - 1e-9), nearest < radius_deg * (1 + 1e-9)


def circle_at(ra0, dec0, angle_deg, offset_deg, radius_deg, name):
    centre = SkyCoord(ra0 * u.deg, dec0 * u.deg).directional_offset_by(angle_deg * u.deg, offset_deg * u.deg)
    return CircleRegion(float(centre.ra.deg), float(centre.dec.deg), radius_deg, name)


@pytest.mark.parametrize("alignment", ["RADEC", "ALTAZ"])
def test_exclusion_fraction_matches_monte_carlo(alignment):
    ra0, dec0 = transiting_pointing()
    geometry = fov_geometry(alignment, n_pixels=10, half_width=2.0, n_energy=1)
    circles = [circle_at(ra0, dec0, 30, 1.2, 0.4, "a"), circle_at(ra0, dec0, 200, 0.5, 0.25, "b")]
    clock, duration = clock_around(TRANSIT, 1200.0), 1200.0
    maker = maker_for(geometry, circles)
    regions = maker.make_regions(ra0, dec0)
    assert sorted(region.name for region in regions) == ["a", "b"]
    fraction = fov_outside_fraction(geometry, ra0, dec0, regions, maker.finder, clock, duration)
    expected = monte_carlo_fraction(geometry, ra0, dec0, in_circles(circles), clock, duration)
    error = np.sqrt(np.clip(expected * (1 - expected), 0.02, None) / 300)
    assert np.all(np.abs(fraction - expected) < 4 * error + 0.02), np.round(fraction - expected, 3)
    assert np.abs(fraction - expected).mean() < 0.01
    assert fraction.min() < 0.9  # the circles do remove exposure


@pytest.mark.parametrize("alignment", ["RADEC", "ALTAZ"])
def test_shaped_region_fraction_matches_monte_carlo(alignment, tmp_path):
    """An ellipse from a region file: sample points are carried to the sky at each step."""
    from bkgdb.makers.sphere import unit_vectors

    ra0, dec0 = transiting_pointing()
    centre = SkyCoord(ra0 * u.deg, dec0 * u.deg).directional_offset_by(60 * u.deg, 1.2 * u.deg)
    region_file = tmp_path / "ellipse.reg"
    region_file.write_text(f"# Region file format: DS9\nicrs\nellipse({centre.ra.deg},{centre.dec.deg},0.6,0.2,30)\n")
    geometry = fov_geometry(alignment, n_pixels=8, half_width=2.0, n_energy=1)
    maker = PieceMaker(
        GeometryBinning(geometry),
        ExclusionSettings(gammacat=None, hawc=None, star_cat=None, region_files=(str(region_file),)),
    )
    assert maker.make_regions(ra0, dec0) == [] and len(maker.finder.shapes) == 1
    clock, duration = clock_around(TRANSIT, 1200.0), 1200.0
    fraction = fov_outside_fraction(geometry, ra0, dec0, [], maker.finder, clock, duration)
    # Monte Carlo: random points at random times, carried to the sky by astropy, tested by the shape.
    per_pixel = 200
    expected = monte_carlo_fraction(
        geometry,
        ra0,
        dec0,
        lambda sky: maker.finder.excluded(unit_vectors(sky.ra.deg, sky.dec.deg), [], ra0, dec0),
        clock,
        duration,
        per_pixel,
        seed=2,
    )
    error = np.sqrt(np.clip(expected * (1 - expected), 0.02, None) / per_pixel)
    assert np.all(np.abs(fraction - expected) < 4 * error + 0.02), np.round(fraction - expected, 3)
    assert fraction.min() < 0.8 and np.sum(fraction == 1.0) > 30


def test_no_regions_give_exactly_the_ontime():
    ra0, dec0 = transiting_pointing()
    geometry = fov_geometry("ALTAZ", n_pixels=6)
    rng = np.random.default_rng(3)
    clock = clock_around(TRANSIT, 1500.0, event_time_s=None)
    times = clock.start_s + rng.uniform(0, 1500, 500)
    events = SkyCoord(ra0 * u.deg, dec0 * u.deg).directional_offset_by(
        rng.uniform(0, 360, 500) * u.deg, rng.uniform(0, 3, 500) * u.deg
    )
    piece = maker_for(geometry).run(
        events.ra.deg,
        events.dec.deg,
        np.full(500, 1.0),
        ra0,
        dec0,
        1500.0,
        1400.0,
        clock=RunClock(REFERENCE, clock.start_s, times, SITE),
    )
    assert piece.exposure_s.shape == geometry.spatial_shape
    assert np.all(piece.exposure_s == 1500.0)
    assert piece.excluded_counts.sum() == 0 and piece.counts.shape == geometry.shape


def test_a_circle_carried_over_a_turning_run_smears_along_its_arc():
    ra0, dec0 = transiting_pointing()
    geometry = fov_geometry("ALTAZ", n_pixels=24)
    circle = circle_at(ra0, dec0, 0, 1.8, 0.3, "star")
    maker = maker_for(geometry, [circle])
    regions = maker.make_regions(ra0, dec0)
    clock, duration = clock_around(TRANSIT, 1800.0), 1800.0
    times, weights, _, _ = rotation_steps(clock, duration, ra0, dec0, 5.0)
    assert len(times) > 5 and weights.sum() == pytest.approx(1.0)
    turning = fov_outside_fraction(geometry, ra0, dec0, regions, maker.finder, clock, duration)
    snapshot = fov_outside_fraction(geometry, ra0, dec0, regions, maker.finder, clock_around(TRANSIT, 1.0), 1.0)
    solid_angle = geometry.solid_angle_sr
    circle_area = 2 * np.pi * (1 - np.cos(np.radians(0.3)))
    # The same area is lost, spread over the arc the circle draws: more pixels, none lost fully.
    assert np.sum((1 - turning) * solid_angle) == pytest.approx(circle_area, rel=0.03)
    assert np.sum((1 - snapshot) * solid_angle) == pytest.approx(circle_area, rel=0.03)
    assert np.sum(turning < 1) > 3 * np.sum(snapshot < 1)
    assert snapshot.min() == 0.0 and turning.min() > 0.3
    # The arc: the circle's FoV positions at the start and the end are both partly excluded.
    for time in (clock.start() + 60 * u.s, clock.start() + (duration - 60) * u.s):
        lon, lat = sky_to_fov(np.array([circle.ra]), np.array([circle.dec]), "ALTAZ", ra0, dec0, time, SITE)
        i = np.searchsorted(geometry.fov_lon_edges, lon[0]) - 1
        j = np.searchsorted(geometry.fov_lat_edges, lat[0]) - 1
        assert turning[i, j] < 0.95
    # The same run in RADEC does not turn: the circle stays where the snapshot has it.
    radec = fov_outside_fraction(fov_geometry("RADEC"), ra0, dec0, regions, maker.finder)
    assert np.sum(radec < 1) < 2 * np.sum(snapshot < 1)


def test_a_run_through_the_zenith_is_cut_finely_where_the_sky_turns_fast():
    ra0, dec0 = transiting_pointing(offset_from_zenith_deg=0.2)
    geometry = fov_geometry("ALTAZ", n_pixels=12, half_width=2.0, n_energy=1)
    clock, duration = clock_around(TRANSIT, 600.0), 600.0
    times, weights, _, _ = rotation_steps(clock, duration, ra0, dec0, 5.0)
    seconds = (times - clock.start()).to_value(u.s)
    # Near the zenith passage the sky turns by ~150 deg within a minute: short steps there only.
    assert len(times) > 25 and np.all(np.diff(seconds) > 0)
    shortest = seconds[np.argmin(weights)]
    assert abs(shortest - duration / 2) < 30 and weights.max() > 5 * weights.min()
    maker = maker_for(geometry, [circle_at(ra0, dec0, 0, 1.2, 0.3, "star")])
    fraction = fov_outside_fraction(geometry, ra0, dec0, maker.make_regions(ra0, dec0), maker.finder, clock, duration)
    circle_area = 2 * np.pi * (1 - np.cos(np.radians(0.3)))
    assert np.sum((1 - fraction) * geometry.solid_angle_sr) == pytest.approx(circle_area, rel=0.03)
    assert np.sum(fraction < 1) > 20


def test_altaz_piece_without_location_or_times_is_a_clear_error():
    geometry = fov_geometry("ALTAZ", n_pixels=4)
    maker = maker_for(geometry)
    args = (np.array([83.6]), np.array([22.0]), np.array([1.0]), 83.6, 22.5, 1000.0)
    with pytest.raises(FovError, match="observatory location"):
        maker.run(*args, clock=RunClock(REFERENCE, 0.0, np.array([10.0]), None))
    with pytest.raises(FovError, match="event times"):
        maker.run(*args, clock=RunClock(REFERENCE, 0.0, None, SITE))
    # RADEC needs neither.
    piece = maker_for(fov_geometry("RADEC", n_pixels=4)).run(*args)
    assert piece.counts.sum() == 1


def test_run_without_location_fails_with_the_reason(datastore_copy):
    from astropy.io import fits

    from bkgdb.gadf.datastore import DL3Datastore
    from bkgdb.makers.run import RunJob, process_run

    store = DL3Datastore(datastore_copy)
    source = store.runs()[0]
    with fits.open(source.events_path) as hdul:
        for key in ("GEOLON", "GEOLAT", "ALTITUDE"):
            del hdul["EVENTS"].header[key]
        hdul.writeto(source.events_path, overwrite=True)
    meta = {key: value for key, value in store.meta.items() if not key.startswith(("GEO", "ALTITUDE"))}
    binning_3d = GeometryBinning(fov_geometry("ALTAZ", n_pixels=4))
    specs = [(Binning(), no_catalogues()), (binning_3d, no_catalogues())]
    result = process_run(RunJob(source, meta, specs=specs))
    assert result.pieces == [] and "observatory location" in result.error
    # With the obs-index header's location the run has both pieces.
    result = process_run(RunJob(source, store.meta, specs=specs))
    assert result.error is None and len(result.pieces) == 2


def test_counts_ratio_method_works_per_pixel():
    ra0, dec0 = 83.6, 22.0
    geometry = fov_geometry("RADEC", n_pixels=4, half_width=2.0, n_energy=2)
    rng = np.random.default_rng(5)
    events = SkyCoord(ra0 * u.deg, dec0 * u.deg).directional_offset_by(
        rng.uniform(0, 360, 4000) * u.deg, 2 * np.sqrt(rng.uniform(size=4000)) * u.deg
    )
    circle = circle_at(ra0, dec0, 45, 1.0, 0.4, "c")
    piece = maker_for(geometry, [circle], "counts-ratio").run(
        events.ra.deg, events.dec.deg, np.ones(4000), ra0, dec0, 100.0
    )
    kept, every = piece.counts.sum(axis=0), (piece.counts + piece.excluded_counts).sum(axis=0)
    np.testing.assert_allclose(piece.fraction, (kept + 1e-9) / (every + 1e-9), rtol=1e-12)
    assert piece.fraction.min() < 0.8


# -- H.E.S.S. DR1 ---------------------------------------------------------------------------------


def test_hess_crab_run_3d_altaz_piece(hess_dr1):
    from conftest import gammapy_data_path
    from gammapy.data import DataStore
    from gammapy.irf import FoVAlignment

    from bkgdb.gadf.datastore import DL3Datastore
    from bkgdb.gadf.events import read_events
    from bkgdb.makers.run import run_clock

    catalogs = gammapy_data_path("catalogs")
    exclusion = ExclusionSettings(gammacat=str(catalogs / "gammacat" / "gammacat.fits.gz"), hawc=None, star_cat=None)
    store = DL3Datastore(hess_dr1)
    source = next(run for run in store.runs() if run.obs_id == 23523)
    events = read_events(source, source.events_path.read_bytes(), with_events=True)
    header = events.header
    geometry = fov_geometry("ALTAZ")
    binning_2d = Binning()
    pointing = (header.get("RA_PNT"), header.get("DEC_PNT"))
    args = (events.ra_deg, events.dec_deg, events.energy_tev, *pointing, header.get("ONTIME"), header.get("LIVETIME"))
    clock = run_clock(events, source, store.meta)
    piece_3d = PieceMaker(GeometryBinning(geometry), exclusion).run(*args, clock=clock)
    piece_2d = PieceMaker(binning_2d, exclusion).run(*args)

    # Every event binned by gammapy itself, in the frame its MapDatasetMaker applies an ALTAZ model in.
    observation = DataStore.from_dir(hess_dr1).obs(23523)
    table = observation.events
    fov = table.radec.transform_to(observation.get_fov_frame(table.time, FoVAlignment.ALTAZ))
    expected = geometry.histogram(table.energy.to_value(u.TeV), fov.fov_lon.wrap_at(180 * u.deg).deg, fov.fov_lat.deg)
    difference = np.abs(piece_3d.counts + piece_3d.excluded_counts - expected)
    assert difference.sum() <= 2  # only events on a pixel edge (float32 positions) may move

    # Within the common FoV (the 2.5 deg disc inside the +-2.5 deg square) the totals agree.
    lon, lat = geometry.fov_centres
    inside, touching = disc_pixels(geometry, 2.5)
    for counts_3d, counts_2d in (
        (piece_3d.counts, piece_2d.counts),
        (piece_3d.excluded_counts, piece_2d.excluded_counts),
    ):
        assert counts_3d[:, inside].sum() <= counts_2d.sum() <= counts_3d[:, touching].sum()
    assert piece_3d.counts[:, inside].sum() > 0.8 * piece_2d.counts.sum()

    # The Crab's exclusion circle passes 0.5 deg from the centre: exposure is lost along its arc.
    assert "Crab nebula" in {region["name"] for region in piece_3d.regions}
    crab = SkyCoord(83.633 * u.deg, 22.0145 * u.deg)
    middle = clock.start() + header.get("ONTIME") / 2 * u.s
    crab_lon, crab_lat = sky_to_fov(
        np.array([crab.ra.deg]), np.array([crab.dec.deg]), "ALTAZ", *pointing, middle, clock.observatory()
    )
    i = np.searchsorted(geometry.fov_lon_edges, crab_lon[0]) - 1
    j = np.searchsorted(geometry.fov_lat_edges, crab_lat[0]) - 1
    assert piece_3d.fraction[i, j] < 0.2
    # Pixels no circle reaches at any time of the run keep all their exposure.
    times = clock.start() + np.linspace(0, header.get("ONTIME"), 21)[:, None] * u.s
    regions = piece_3d.regions
    ra, dec = np.array([[r["ra"] for r in regions]]), np.array([[r["dec"] for r in regions]])
    arc_lon, arc_lat = sky_to_fov(
        *np.broadcast_arrays(ra, dec, times.mjd)[:2], "ALTAZ", *pointing, times, clock.observatory()
    )
    radius = np.array([r["radius"] for r in regions])
    distance = (
        angular_separation(
            lon[..., None, None] * u.deg, lat[..., None, None] * u.deg, arc_lon * u.deg, arc_lat * u.deg
        ).to_value(u.deg)
        - radius
    )
    far = distance.min(axis=(-2, -1)) > 0.2  # beyond a pixel's half-diagonal (0.15 deg) everywhere
    assert far.sum() > 200
    assert np.all(piece_3d.fraction[far] == 1.0)
    assert np.all(piece_3d.fraction[distance.min(axis=(-2, -1)) < -0.2] < 1.0)
    assert piece_3d.exposure_s.max() == header.get("ONTIME")
