"""Exclusion regions are circles on the sphere, found once per process."""

import dataclasses

import numpy as np
import pytest
import sqlalchemy as sa
from astropy import units as u
from astropy.coordinates import SkyCoord
from sqlalchemy.orm import Session

from bkgdb.config import Binning, BkgdbConfig, CircleRegion, ExclusionSettings
from bkgdb.errors import ConfigError
from bkgdb.makers.exclusion import ExclusionFinder, ExclusionRegion
from bkgdb.makers.sources import find_named_sources, load_catalogue
from bkgdb.makers.sphere import unit_vectors
from bkgdb.simulate import BackgroundTruth, DatastoreSimulator, PointSource, write_source_catalogue
from bkgdb.store.models import ExclusionRow, PieceRow
from bkgdb.store.pieces import row_to_piece

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
    catalogue = write_source_catalogue(
        tmp_path / "cat.fits",
        [
            {"name": "point", "ra_deg": 10.0, "dec_deg": 0.5},
            {"name": "extended", "ra_deg": 11.0, "dec_deg": 0.0, "morph_sigma": 0.2},
            {"name": "far away", "ra_deg": 20.0, "dec_deg": 0.0},
        ],
    )
    stars = tmp_path / "stars.dat"
    stars.write_text(
        "#_RAJ2000\t_DEJ2000\tHIP\tVmag\tB-V\n10.5\t-0.5\t1\t5.0\t0.1\n9.5\t-0.5\t2\t9.0\t0.1\n"
    )  # too faint for the default cut
    settings = ExclusionSettings(gammacat=str(catalogue), hawc=None, star_cat=str(stars))
    regions = {region.name: region for region in ExclusionFinder(settings).regions(10.0, 0.0, 2.5)}
    assert set(regions) == {"point", "extended", "HIP 1"}
    assert regions["point"].radius == pytest.approx(0.35)
    assert regions["extended"].radius == pytest.approx(3 * 0.2)
    assert regions["HIP 1"].kind == "star"
    bigger = ExclusionSettings(
        gammacat=str(catalogue), hawc=None, star_cat=str(stars), source_radius=0.5, extended_factor=2, star_mag_max=10
    )
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
        "# Region file format: DS9\nicrs\ncircle(150.0,30.0,0.3) # text={my circle}\nellipse(151.0,30.0,0.4,0.1,0)\n"
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


# A source seen through a wide PSF: a fifth of its photons land beyond the usual 0.35 deg circle.
HALO_SOURCE = PointSource(ra_deg=200.0, dec_deg=-40.0, rate_per_s=0.6, psf_sigma_deg=0.2, name="Halo Source")
HALO_BINNING = Binning(e_min=0.1, e_max=100, e_bins=6, off_min=0, off_max=2.5, off_bins=10)


@pytest.fixture(scope="module")
def halo_field(tmp_path_factory):
    """Eight runs wobbling 1.2 deg around the wide-halo source, and a catalogue listing it."""
    folder = tmp_path_factory.mktemp("halo_field")
    centre = SkyCoord(HALO_SOURCE.ra_deg * u.deg, HALO_SOURCE.dec_deg * u.deg)
    around = centre.directional_offset_by(np.arange(8) % 4 * 90.0 * u.deg, 1.2 * u.deg)
    truth = BackgroundTruth()
    DatastoreSimulator(
        truth=truth,
        pointings=list(zip(around.ra.deg, around.dec.deg, strict=True)),
        source=HALO_SOURCE,
        ontime_s=1800.0,
        seed=11,
        object_name="Halo field",
        with_irfs=False,
    ).run(folder / "datastore")
    catalogue = write_source_catalogue(folder / "catalogue.fits", [HALO_SOURCE])
    return folder / "datastore", catalogue, truth


def offset_chi2(catalogue, exclusion_hash, truth):
    """chi2 of the kept counts per offset bin against the truth times the accepted exposure."""
    with Session(catalogue.engine) as session:
        rows = session.scalars(sa.select(PieceRow).join(ExclusionRow).where(ExclusionRow.hash == exclusion_hash)).all()
        pieces = [row_to_piece(row) for row in rows]
    counts = sum(piece.counts.sum(axis=0) for piece in pieces)
    exposure = sum(piece.exposure_s for piece in pieces)
    expected = truth.expected_counts(HALO_BINNING.energy_edges, HALO_BINNING.offset_edges, 1.0).sum(axis=0) * exposure
    return float(np.sum((counts - expected) ** 2 / expected)), pieces


def test_per_source_radius_removes_a_wide_halo(catalogue, halo_field):
    """With 0.35 deg the halo leaks into the background; the per-source radius removes it."""
    datastore, source_catalogue, truth = halo_field
    default = ExclusionSettings(gammacat=str(source_catalogue), hawc=None, star_cat=None)
    wider = ExclusionSettings(
        gammacat=str(source_catalogue), hawc=None, star_cat=None, source_radii=(("halosource", 0.9),)
    )  # another spelling of the name
    assert default.hash != wider.hash
    catalogue.index(datastore, config=BkgdbConfig(binnings=[HALO_BINNING], exclusion=default))
    report = catalogue.index(datastore, config=BkgdbConfig(binnings=[HALO_BINNING], exclusion=wider))
    assert report.pieces == 8  # new exclusion hash: every run gets a new piece

    leaking, _ = offset_chi2(catalogue, default.hash, truth)
    clean, pieces = offset_chi2(catalogue, wider.hash, truth)
    assert leaking > 60, (leaking, clean)  # the halo photons beyond 0.35 deg, counted as background
    assert clean < 30, (leaking, clean)  # chi2 for 10 bins: within statistics
    assert all(
        [(region["name"], region["radius"]) for region in piece.regions] == [("Halo Source", 0.9)] for piece in pieces
    )


def test_source_excluded_by_name_is_one_circle_of_its_radius(tmp_path):
    source_catalogue = write_source_catalogue(
        tmp_path / "cat.fits",
        [
            {"name": "Halo Source", "ra_deg": 200.0, "dec_deg": -40.0},
            {"name": "Other", "ra_deg": 201.0, "dec_deg": -40.0, "morph_sigma": 0.1},
        ],
    )
    common = dict(gammacat=str(source_catalogue), hawc=None, star_cat=None)

    def radii(**settings):
        regions = ExclusionFinder(ExclusionSettings(**common, **settings)).regions(200.5, -40.0, 2.5)
        return sorted((region.name, region.radius) for region in regions)

    assert radii() == [("Halo Source", 0.35), ("Other", pytest.approx(0.3))]
    assert radii(exclude_source_name=(("HALO SOURCE", 0.8),)) == [("Halo Source", 0.8), ("Other", pytest.approx(0.3))]
    # No radius in the entry: the source's configured radius, else source_radius.
    assert radii(exclude_source_name=(("halo source", None),), source_radius=0.5) == [
        ("Halo Source", 0.5),
        ("Other", pytest.approx(0.3)),
    ]
    assert radii(exclude_source_name=(("Halo Source", None),), source_radii=(("Halo Source", 0.7),)) == [
        ("Halo Source", 0.7),
        ("Other", pytest.approx(0.3)),
    ]
    # A per-source radius replaces an extended source's 3 x sigma too, smaller or larger.
    assert radii(source_radii=(("other", 0.2),)) == [("Halo Source", 0.35), ("Other", 0.2)]
    with pytest.raises(ConfigError, match=r"no source named 'Halo Sorce' in gamma-cat; did you mean 'Halo Source'\?"):
        ExclusionSettings(**common, exclude_source_name=(("Halo Sorce", None),))


def test_names_resolve_in_gammacat_and_3hwc():
    from conftest import gammapy_data_path

    gammapy_data_path("catalogs")
    settings = ExclusionSettings()
    for spelling in ("PKS 2155-304", "pks2155-304", "  PKS  2155-304 ", "HESS J2158-302", "147"):
        [source] = find_named_sources(settings, spelling)
        assert (source.catalogue, source.name) == ("gammacat", "PKS 2155-304"), spelling
        assert source.ra == pytest.approx(329.717, abs=1e-3) and source.dec == pytest.approx(-30.226, abs=1e-3)
    [hawc] = find_named_sources(settings, "3hwc j0534+220")
    assert (hawc.catalogue, hawc.name) == ("hawc", "3HWC J0534+220")
    with pytest.raises(ConfigError, match=r"no source named 'crab' in gamma-cat and 3HWC; did you mean 'Crab nebula'"):
        find_named_sources(settings, "crab")
    with pytest.raises(ConfigError, match="did you mean 'PKS 2155-304'"):
        find_named_sources(settings, "PKS 2155-305")


def test_names_need_a_source_catalogue():
    with pytest.raises(ConfigError, match="no source catalogue is configured"):
        ExclusionSettings(**NO_CATALOGUES, source_radii=(("PKS 2155-304", 0.6),))


def test_region_as_dict_has_every_field() -> None:
    region = ExclusionRegion("Crab", "source", 83.63, 22.01, 0.35)
    assert region.as_dict() == dataclasses.asdict(region)


def test_regions_of_a_pointing_found_again_are_the_same() -> None:
    circles = [CircleRegion(name=f"c{i}", ra=150.0 + 0.4 * i, dec=30.0, radius=0.2) for i in range(6)]
    finder = ExclusionFinder(ExclusionSettings(gammacat=None, hawc=None, star_cat=None, exclude_regions=tuple(circles)))
    first = finder.regions(150.5, 30.0, 1.0)
    first.pop()  # a caller's list is its own
    again = finder.regions(150.5, 30.0, 1.0)
    assert [region.name for region in again] == ["c1", "c2", "c0", "c3", "c4"]
    assert again == ExclusionFinder(finder.settings).regions(150.5, 30.0, 1.0)
    assert [region.name for region in finder.regions(150.5, 30.0, 0.4)] == ["c1", "c2", "c0"]
