"""Exclusion regions: known gamma-ray sources, bright stars and custom regions around a run.

All containment tests are done on the sphere: positions become unit vectors and a point lies in
a circle when its angular distance to the centre (the arc-cosine of their dot product) is below
the radius. Catalogues are read once per process.
"""

import difflib
import logging
import re
from dataclasses import asdict, dataclass, replace
from functools import lru_cache

import numpy as np

from bkgdb.errors import ConfigError

__all__ = ["ExclusionRegion", "ExclusionFinder", "unit_vectors", "annulus_grid", "load_catalogue",
           "NamedSource", "normalise_source_name", "find_named_sources", "load_source_names"]

log = logging.getLogger(__name__)

EXTENDED_MORPHOLOGIES = ("gauss", "shell", "disk")
#: Pointings whose accepted fractions an `ExclusionFinder` keeps.
_FRACTION_CACHE_SIZE = 256


def unit_vectors(ra_deg, dec_deg):
    """Cartesian unit vectors (..., 3) of ICRS positions given in deg."""
    ra, dec = np.radians(np.asarray(ra_deg, float)), np.radians(np.asarray(dec_deg, float))
    cos_dec = np.cos(dec)
    return np.stack([cos_dec * np.cos(ra), cos_dec * np.sin(ra), np.sin(dec)], axis=-1)


def angular_distance_deg(vectors, centre):
    """Angle in deg between unit vectors (..., 3) and one unit vector (3,)."""
    return np.degrees(np.arccos(np.clip(vectors @ centre, -1.0, 1.0)))


@dataclass(frozen=True)
class ExclusionRegion:
    """A circle excluded from a run: a source, a star or a custom region (deg, ICRS)."""

    name: str
    kind: str
    ra: float
    dec: float
    radius: float

    def as_dict(self):
        return asdict(self)


@dataclass(frozen=True)
class ShapedRegion:
    """A non-circular sky region from a regions file (ellipse, polygon, ...)."""

    name: str
    region: object

    def as_dict(self):
        return {"name": self.name, "kind": "custom", "shape": type(self.region).__name__}


@dataclass(frozen=True)
class Catalogue:
    """Positions (unit vectors), names and exclusion radii of one catalogue's entries."""

    names: np.ndarray
    vectors: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    radius: np.ndarray
    kind: str


@lru_cache(maxsize=None)
def read_source_table(kind, path):
    """A gamma-cat (FITS) or 3HWC (ECSV) file as a table, read once per process."""
    from astropy.table import Table

    try:
        return Table.read(path) if kind == "gammacat" else Table.read(path, format="ascii.ecsv")
    except (OSError, KeyError, ValueError) as exc:
        raise ConfigError(f"cannot read {kind} catalogue {path}: {exc}") from None


@lru_cache(maxsize=None)
def load_catalogue(kind, path, source_radius=0.35, extended_factor=3.0, star_radius=0.35, star_mag_max=8.0):
    """Read a gamma-cat, 3HWC or Hipparcos file once per process and give each entry its radius."""
    try:
        if kind == "gammacat":
            table = read_source_table(kind, path)
            names = np.asarray(table["common_name"]).astype(str)
            sigma = np.nan_to_num(np.ma.filled(np.asarray(table["morph_sigma"], float), np.nan), nan=0.0)
            if "morph_sigma2" in table.colnames:
                sigma2 = np.ma.filled(np.ma.asarray(table["morph_sigma2"], float), np.nan)
                sigma = np.maximum(sigma, np.nan_to_num(sigma2, nan=0.0))
            morph = np.char.strip(np.asarray(table["morph_type"]).astype(str))
            extended = np.isin(morph, EXTENDED_MORPHOLOGIES) & (sigma > 0)
            radius = np.where(extended, extended_factor * sigma, source_radius)
            kind_label = "source"
        elif kind == "hawc":
            table = read_source_table(kind, path)
            names = np.asarray(table["source_name"]).astype(str)
            extension = np.nan_to_num(np.asarray(table["search_radius"], float), nan=0.0)
            radius = np.where(extension > 0, extended_factor * extension, source_radius)
            kind_label = "source"
        elif kind == "stars":
            # Tab-separated: RA, Dec (J2000, deg), HIP number, V magnitude, B-V; one header line.
            data = np.loadtxt(path, skiprows=1, usecols=(0, 1, 2, 3), ndmin=2)
            data = data[data[:, 3] < star_mag_max]
            table = {"ra": data[:, 0], "dec": data[:, 1]}
            names = np.array([f"HIP {int(hip)}" for hip in data[:, 2]])
            radius = np.full(len(data), star_radius)
            kind_label = "star"
        else:
            raise ValueError(kind)
        ra, dec = np.asarray(table["ra"], float), np.asarray(table["dec"], float)
    except (OSError, KeyError, ValueError) as exc:
        raise ConfigError(f"cannot read {kind} catalogue {path}: {exc}") from None
    log.debug("loaded %d entries from %s", len(ra), path)
    return Catalogue(names, unit_vectors(ra, dec), ra, dec, np.asarray(radius, float), kind_label)


def normalise_source_name(name):
    """A source name as names are compared: case-folded, without any white space.

    "PKS 2155-304", "pks2155-304" and " PKS  2155-304 " are the same name.
    """
    return re.sub(r"\s+", "", str(name)).casefold()


#: Catalogue labels as the config names them, and in error messages.
SOURCE_CATALOGUES = {"gammacat": "gamma-cat", "hawc": "3HWC"}


@dataclass(frozen=True)
class NamedSource:
    """A catalogue entry found by name: which catalogue, its row, its name and position (deg)."""

    catalogue: str
    index: int
    name: str
    ra: float
    dec: float


@lru_cache(maxsize=None)
def load_source_names(kind, path):
    """Every name of each entry of a gamma-cat or 3HWC file, read once per process.

    gamma-cat entries are known by ``common_name``, the comma-separated ``other_names`` and
    ``gamma_names``, and ``source_id``; 3HWC entries by ``source_name``. Files written by
    `bkgdb.simulate.write_source_catalogue` carry ``common_name`` only.

    Returns
    -------
    names : dict
        Normalised name (see `normalise_source_name`) to (row indices, the name as written).
    """
    try:
        table = read_source_table(kind, path)
        if kind == "gammacat":
            columns = [column for column in ("common_name", "other_names", "gamma_names") if column in table.colnames]
            main = "common_name"
        elif kind == "hawc":
            columns, main = ["source_name"], "source_name"
        else:
            raise ValueError(f"no source names in a {kind} catalogue")
        texts = {column: np.ma.filled(np.ma.asarray(table[column]).astype(str), "") for column in columns}
        ids = np.asarray(table["source_id"]) if "source_id" in table.colnames else None
        main_names = texts[main]
    except (OSError, KeyError, ValueError) as exc:
        raise ConfigError(f"cannot read {kind} catalogue {path}: {exc}") from None
    names = {}
    for row in range(len(main_names)):
        spellings = [str(main_names[row]).strip()]
        for column in columns:
            if column != main:
                spellings += [part.strip() for part in str(texts[column][row]).split(",")]
        if ids is not None:
            spellings.append(str(int(ids[row])))
        for spelling in spellings:
            key = normalise_source_name(spelling)
            if key and key != "--":
                rows, written = names.get(key, ((), spelling))
                if row not in rows:
                    names[key] = (rows + (row,), written)
    return names


def _source_catalogue_paths(settings):
    return [(kind, getattr(settings, kind)) for kind in SOURCE_CATALOGUES if getattr(settings, kind)]


def find_named_sources(settings, name, label="exclusion"):
    """The entries of the configured source catalogues (gamma-cat, 3HWC) known by ``name``.

    Names are compared case- and white-space-insensitively (see `normalise_source_name`).

    Parameters
    ----------
    settings : `~bkgdb.config.ExclusionSettings`
        Gives the catalogue files.
    name : str
        A name as written in the config.
    label : str
        The config key, for error messages.

    Returns
    -------
    sources : list of `NamedSource`
        One per matching entry (a source can be in both catalogues).

    Raises
    ------
    ConfigError
        No source catalogue is configured, or none knows the name (with the closest names).
    """
    paths = _source_catalogue_paths(settings)
    if not paths:
        raise ConfigError(f"{label}: cannot look up {name!r}: no source catalogue is configured "
                          "(exclusion.gammacat, exclusion.hawc)")
    key = normalise_source_name(name)
    found = []
    for kind, path in paths:
        rows, _ = load_source_names(kind, path).get(key, ((), None))
        if rows:
            catalogue = load_catalogue(kind, path)
            found += [NamedSource(kind, row, str(catalogue.names[row]), float(catalogue.ra[row]),
                                  float(catalogue.dec[row])) for row in rows]
    if not found:
        known, entry_of = {}, {}
        for kind, path in paths:
            for normalised, (rows, written) in load_source_names(kind, path).items():
                known[normalised], entry_of[normalised] = written, (kind, rows)
        # Names holding what was typed ("crab" in "Crab nebula"), then names spelled alike; one
        # name per source.
        candidates = [known_key for known_key in sorted(known) if len(key) >= 3 and key in known_key]
        candidates += difflib.get_close_matches(key, list(known), n=10, cutoff=0.6)
        close, entries = [], set()
        for candidate in candidates:
            if entry_of[candidate] not in entries and len(close) < 5:
                close.append(candidate)
                entries.add(entry_of[candidate])
        searched = " and ".join(SOURCE_CATALOGUES[kind] for kind, _ in paths)
        hint = f"; did you mean {', '.join(repr(known[match]) for match in close)}?" if close else ""
        raise ConfigError(f"{label}: no source named {name!r} in {searched}{hint}")
    return found


@lru_cache(maxsize=None)
def load_region_file(path):
    """Sky regions of a DS9 region file; circles become `ExclusionRegion`, others stay shapes."""
    from regions import CircleSkyRegion, Regions, SkyRegion

    try:
        regions = Regions.read(path, format="ds9")
    except Exception as exc:  # regions raises its own parser errors
        raise ConfigError(f"cannot read region file {path}: {exc}") from None
    circles, shapes = [], []
    for number, region in enumerate(regions):
        name = region.meta.get("text") or f"{path.rsplit('/', 1)[-1]}[{number}]"
        if isinstance(region, CircleSkyRegion):
            centre = region.center.icrs
            circles.append(ExclusionRegion(name, "custom", float(centre.ra.deg), float(centre.dec.deg),
                                           float(region.radius.to_value("deg"))))
        elif isinstance(region, SkyRegion):
            shapes.append(ShapedRegion(name, region))
        else:
            raise ConfigError(f"{path}: region {number} is in pixel coordinates; bkgdb needs sky regions")
    return tuple(circles), tuple(shapes)


@lru_cache(maxsize=256)
def annulus_grid(offset_lo, offset_hi, n_theta=24, n_phi=720):
    """An equal-area grid of directions in an annulus around the +z axis: (n, 3) unit vectors.

    Made once per annulus and process (the same for every run); the array is read-only.
    """
    grid = _annulus_grid(offset_lo, offset_hi, n_theta, n_phi)
    grid.flags.writeable = False
    return grid


@lru_cache(maxsize=4096)
def _circle_test(ra_deg, dec_deg, radius_deg):
    """The centre's unit vector and the cosine of the radius of a circle, made once per process."""
    return unit_vectors(ra_deg, dec_deg), np.cos(np.radians(radius_deg))


#: Slack (deg) when skipping circles that cannot reach an annulus: rounding never drops a circle.
_REACH_MARGIN_DEG = 1e-6


def _annulus_grid(offset_lo, offset_hi, n_theta, n_phi):
    cos_edges = np.linspace(np.cos(np.radians(offset_lo)), np.cos(np.radians(offset_hi)), n_theta + 1)
    cos_theta = 0.5 * (cos_edges[1:] + cos_edges[:-1])
    phi = (np.arange(n_phi) + 0.5) * 2 * np.pi / n_phi
    sin_theta = np.sqrt(1 - cos_theta ** 2)
    return np.stack([
        np.outer(sin_theta, np.cos(phi)).ravel(),
        np.outer(sin_theta, np.sin(phi)).ravel(),
        np.repeat(cos_theta, n_phi),
    ], axis=-1)


def rotation_to(ra_deg, dec_deg):
    """Matrix turning the +z axis onto the direction (ra, dec)."""
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    z = unit_vectors(ra_deg, dec_deg)
    x = np.array([np.sin(dec) * np.cos(ra), np.sin(dec) * np.sin(ra), -np.cos(dec)])
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=-1)


class ExclusionFinder:
    """Finds the exclusion regions of a run and tells which directions they cover.

    Parameters
    ----------
    settings : `~bkgdb.config.ExclusionSettings`
        Catalogues, radii and custom regions.
    """

    def __init__(self, settings):
        self.settings = settings
        s = settings
        self.catalogues = []
        sources = {kind: load_catalogue(kind, getattr(s, kind), s.source_radius, s.extended_factor)
                   for kind in SOURCE_CATALOGUES if getattr(s, kind)}
        # Per-source radii replace the radius a source's catalogue entry would get.
        for name, radius in s.source_radii:
            for source in find_named_sources(s, name, "exclusion.source_radii"):
                catalogue = sources[source.catalogue]
                radii = catalogue.radius.copy()
                radii[source.index] = radius
                sources[source.catalogue] = replace(catalogue, radius=radii)
        self.catalogues.extend(sources.values())
        if s.star_cat:
            self.catalogues.append(load_catalogue("stars", s.star_cat, star_radius=s.star_radius,
                                                  star_mag_max=s.star_mag_max))
        self.custom = [ExclusionRegion(r.name, "custom", r.ra, r.dec, r.radius) for r in s.exclude_regions]
        # Sources excluded by name: the entry's radius, else the source's configured radius.
        for name, radius in s.exclude_source_name:
            if radius is None:
                radius = s.radius_for_name(name)
            for source in find_named_sources(s, name, "exclusion.exclude_source_name"):
                self.custom.append(ExclusionRegion(source.name, "source", source.ra, source.dec,
                                                   float(radius if radius is not None else s.source_radius)))
        #: Accepted fractions per (pointing, edges, regions): runs on one pointing share them.
        self._fractions = {}
        self.shapes = []
        for path in s.region_files:
            circles, shapes = load_region_file(path)
            self.custom.extend(circles)
            self.shapes.extend(shapes)

    def regions(self, ra_deg, dec_deg, search_radius):
        """Circles that reach within ``search_radius`` (deg) of the pointing, nearest first.

        Returns
        -------
        regions : list of `ExclusionRegion`
        """
        pointing = unit_vectors(ra_deg, dec_deg)
        found = []
        for catalogue in self.catalogues:
            distance = angular_distance_deg(catalogue.vectors, pointing)
            for index in np.flatnonzero(distance - catalogue.radius < search_radius):
                found.append((distance[index], ExclusionRegion(
                    str(catalogue.names[index]), catalogue.kind, float(catalogue.ra[index]),
                    float(catalogue.dec[index]), float(catalogue.radius[index]))))
        for region in self.custom:
            distance = angular_distance_deg(unit_vectors(region.ra, region.dec), pointing)
            if distance - region.radius < search_radius:
                found.append((float(distance), region))
        found.sort(key=lambda item: item[0])
        # A source both found in its catalogue and excluded by name is one circle, the larger.
        largest = {}
        for _, region in found:
            key = (region.kind, region.name, region.ra, region.dec)
            if key not in largest or region.radius > largest[key].radius:
                largest[key] = region
        return [region for _, region in found if largest[(region.kind, region.name, region.ra, region.dec)] is region]

    def excluded(self, vectors, regions, ra_deg=None, dec_deg=None):
        """Which of the unit vectors (n, 3) lie in any region (and in any shaped custom region)."""
        mask = np.zeros(len(vectors), dtype=bool)
        for region in regions:
            centre, cos_radius = _circle_test(region.ra, region.dec, region.radius)
            mask |= vectors @ centre >= cos_radius
        if self.shapes:
            mask |= self._in_shapes(vectors, ra_deg, dec_deg)
        return mask

    def _in_shapes(self, vectors, ra_deg, dec_deg):
        from astropy import units as u
        from astropy.coordinates import SkyCoord
        from astropy.wcs import WCS

        # A local gnomonic projection centred on the pointing, where region shapes are drawn.
        wcs = WCS(naxis=2)
        wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        wcs.wcs.crval = [ra_deg, dec_deg]
        wcs.wcs.crpix = [0.0, 0.0]
        wcs.wcs.cdelt = [-0.01, 0.01]
        ra = np.degrees(np.arctan2(vectors[:, 1], vectors[:, 0])) % 360
        dec = np.degrees(np.arcsin(np.clip(vectors[:, 2], -1, 1)))
        coords = SkyCoord(ra * u.deg, dec * u.deg, frame="icrs")
        mask = np.zeros(len(vectors), dtype=bool)
        for shape in self.shapes:
            mask |= np.asarray(shape.region.contains(coords, wcs), dtype=bool)
        return mask

    def outside_fraction(self, ra_deg, dec_deg, offset_edges, regions, n_theta=24, n_phi=720):
        """Fraction of each offset annulus' solid angle that lies outside all regions.

        Parameters
        ----------
        ra_deg, dec_deg : float
            The pointing.
        offset_edges : array
            Annulus edges in deg.
        regions : list of `ExclusionRegion`
            The run's regions.

        Returns
        -------
        fraction : `~numpy.ndarray`
            One value in [0, 1] per annulus.
        """
        edges = tuple(float(edge) for edge in offset_edges)
        key = (float(ra_deg), float(dec_deg), edges, tuple(regions), n_theta, n_phi)
        cached = self._fractions.get(key)
        if cached is not None:  # another run on the same pointing (wobble positions repeat)
            return cached.copy()
        rotation = rotation_to(ra_deg, dec_deg)
        pointing = unit_vectors(ra_deg, dec_deg)
        # A circle at distance d from the pointing covers offsets d - r ... d + r only; the
        # others cannot touch an annulus and are not tested against its grid.
        reach = np.array([[angular_distance_deg(_circle_test(r.ra, r.dec, r.radius)[0], pointing) - r.radius,
                           angular_distance_deg(_circle_test(r.ra, r.dec, r.radius)[0], pointing) + r.radius]
                          for r in regions]).reshape(-1, 2)
        fractions = []
        for lo, hi in zip(edges[:-1], edges[1:]):
            near = [region for region, (closest, farthest) in zip(regions, reach)
                    if closest < hi + _REACH_MARGIN_DEG and farthest > lo - _REACH_MARGIN_DEG]
            if not near and not self.shapes:
                fractions.append(1.0)
                continue
            vectors = annulus_grid(lo, hi, n_theta, n_phi) @ rotation.T
            fractions.append(1.0 - self.excluded(vectors, near, ra_deg, dec_deg).mean())
        fractions = np.array(fractions)
        if len(self._fractions) >= _FRACTION_CACHE_SIZE:
            self._fractions.pop(next(iter(self._fractions)))
        self._fractions[key] = fractions
        return fractions.copy()
