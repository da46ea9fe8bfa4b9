"""Exclusion regions are circles on the sphere, found once per process."""

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord

from bkgdb.config import CircleRegion, ExclusionSettings
from bkgdb.exclusion import ExclusionFinder, ExclusionRegion, load_catalogue, unit_vectors
from bkgdb.simulate import write_source_catalogue

NO_CATALOGUES = dict(gammacat=None, hawc=None, star_cat=None)


def test_circles_near_the_pole_are_circles_on_the_sky():
    """At Dec -70 a degree of RA is 0.34 deg on the sky: Euclidean RA/Dec would get this wrong."""
    centre = SkyCoord(100 * u.deg, -70 * u.deg)
    region = ExclusionRegion("test", "custom", 100.0, -70.0, 1.0)
    finder = ExclusionFinder(ExclusionSettings(**NO_CATALOGUES, exclude_regions=(CircleRegion(100, -70, 1.0),)))
    rng = np.random.default_rng(1)
    ra = 100 + rng.uniform(-4, 4, 5000)
    dec = -70 + rng.uniform(-1.5, 1.5, 5000)
    inside = finder.excluded(unit_vectors(ra, dec), [region])
    truth = SkyCoord(ra * u.deg, dec * u.deg).separation(centre).deg < 1.0
    euclidean = np.hypot(ra - 100, dec + 70) < 1.0
    assert np.array_equal(inside, truth)
    assert inside.sum() > 2 * euclidean.sum()  # the Euclidean circle misses most of the region


def test_excluded_solid_angle_matches_the_spherical_cap():
    """A circle of radius r removes 2 pi (1 - cos r) sr, shared between the annuli it crosses."""
    radius = 0.4
    pointing = (30.0, -70.0)
    centre = SkyCoord(*pointing, unit="deg").directional_offset_by(50 * u.deg, 1.0 * u.deg)
    region = ExclusionRegion("cap", "custom", centre.ra.deg, centre.dec.deg, radius)
    finder = ExclusionFinder(ExclusionSettings(**NO_CATALOGUES))
    edges = np.linspace(0, 2.0, 9)
    fraction = finder.outside_fraction(*pointing, edges, [region])
    annulus = 2 * np.pi * (np.cos(np.radians(edges[:-1])) - np.cos(np.radians(edges[1:])))
    removed = np.sum((1 - fraction) * annulus)
    assert removed == pytest.approx(2 * np.pi * (1 - np.cos(np.radians(radius))), rel=2e-3)
    assert np.all(fraction[:2] == 1) and np.all(fraction[-2:] == 1)  # annuli the cap does not reach


def test_sources_extended_sources_and_stars(tmp_path):
    catalogue = write_source_catalogue(tmp_path / "cat.fits", [
        {"name": "point", "ra_deg": 10.0, "dec_deg": 0.5},
        {"name": "extended", "ra_deg": 11.0, "dec_deg": 0.0, "morph_sigma": 0.2},
        {"name": "far away", "ra_deg": 20.0, "dec_deg": 0.0},
    ])
    stars = tmp_path / "stars.dat"
    stars.write_text("#_RAJ2000\t_DEJ2000\tHIP\tVmag\tB-V\n"
                     "10.5\t-0.5\t1\t5.0\t0.1\n"
                     "9.5\t-0.5\t2\t9.0\t0.1\n")  # too faint for the default cut
    settings = ExclusionSettings(gammacat=str(catalogue), hawc=None, star_cat=str(stars))
    regions = {region.name: region for region in ExclusionFinder(settings).regions(10.0, 0.0, 2.5)}
    assert set(regions) == {"point", "extended", "HIP 1"}
    assert regions["point"].radius == pytest.approx(0.35)
    assert regions["extended"].radius == pytest.approx(3 * 0.2)
    assert regions["HIP 1"].kind == "star"
    bigger = ExclusionSettings(gammacat=str(catalogue), hawc=None, star_cat=str(stars),
                               source_radius=0.5, extended_factor=2, star_mag_max=10)
    regions = {region.name: region for region in ExclusionFinder(bigger).regions(10.0, 0.0, 2.5)}
    assert regions["point"].radius == 0.5 and regions["extended"].radius == pytest.approx(0.4)
    assert "HIP 2" in regions


def test_catalogues_are_read_once_per_process(tmp_path):
    catalogue = write_source_catalogue(tmp_path / "once.fits", [{"name": "a", "ra_deg": 1.0, "dec_deg": 1.0}])
    settings = ExclusionSettings(gammacat=str(catalogue), hawc=None, star_cat=None)
    ExclusionFinder(settings)
    misses = load_catalogue.cache_info().misses
    for _ in range(3):
        ExclusionFinder(settings)
    assert load_catalogue.cache_info().misses == misses


def test_region_files(tmp_path):
    region_file = tmp_path / "mine.reg"
    region_file.write_text(
        "# Region file format: DS9\nicrs\n"
        "circle(150.0,30.0,0.3) # text={my circle}\n"
        "ellipse(151.0,30.0,0.4,0.1,0)\n"
    )
    settings = ExclusionSettings(**NO_CATALOGUES, region_files=(str(region_file),))
    finder = ExclusionFinder(settings)
    regions = finder.regions(150.5, 30.0, 2.5)
    assert [region.name for region in regions] == ["my circle"]
    assert len(finder.shapes) == 1
    ra = np.array([150.0, 151.0, 151.3, 151.0, 150.5])
    dec = np.array([30.0, 30.0, 30.0, 30.2, 30.0])
    # Centre of the circle, centre of the ellipse, inside its long axis, outside its short one, between.
    assert finder.excluded(unit_vectors(ra, dec), regions, 150.5, 30.0).tolist() == [True, True, True, False, False]
