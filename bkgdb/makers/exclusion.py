"""Exclusion regions: known gamma-ray sources, bright stars and custom regions around a run.

All containment tests are done on the sphere (`bkgdb.makers.sphere`): positions become unit
vectors and a point lies in a circle when its angular distance to the centre is below the
radius. Catalogues (`bkgdb.makers.sources`) are read once per process.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cache, lru_cache
from typing import Any

import numpy as np

from bkgdb.errors import ConfigError
from bkgdb.makers.sources import SOURCE_CATALOGUES, Catalogue, find_named_sources, load_catalogue
from bkgdb.makers.sphere import angular_distance_deg, unit_vectors

__all__ = [
    "ExclusionRegion",
    "ShapedRegion",
    "ExclusionFinder",
    "annulus_grid",
    "load_region_file",
    "rotation_to",
    "remember",
]

log = logging.getLogger(__name__)
#: Pointings whose regions and accepted fractions an `ExclusionFinder` (and a `PieceMaker`) keeps.
POINTING_CACHE_SIZE = 256


def remember(cache: dict, key: Any, value: Any) -> Any:
    """Keep ``value`` under ``key`` in a per-pointing cache, forgetting the oldest entry of a full one."""
    if len(cache) >= POINTING_CACHE_SIZE:
        cache.pop(next(iter(cache)))
    cache[key] = value
    return value


@dataclass(frozen=True)
class ExclusionRegion:
    """A circle excluded from a run: a source, a star or a custom region (deg, ICRS)."""

    name: str
    kind: str
    ra: float
    dec: float
    radius: float

    def as_dict(self) -> dict:
        # Written for every region of every piece: plain fields, no dataclasses.asdict recursion.
        return {"name": self.name, "kind": self.kind, "ra": self.ra, "dec": self.dec, "radius": self.radius}


@dataclass(frozen=True)
class ShapedRegion:
    """A non-circular sky region from a regions file (ellipse, polygon, ...)."""

    name: str
    region: Any

    def as_dict(self) -> dict:
        return {"name": self.name, "kind": "custom", "shape": type(self.region).__name__}


@cache
def load_region_file(path: str) -> tuple[tuple[ExclusionRegion, ...], tuple[ShapedRegion, ...]]:
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
            circles.append(
                ExclusionRegion(
                    name, "custom", float(centre.ra.deg), float(centre.dec.deg), float(region.radius.to_value("deg"))
                )
            )
        elif isinstance(region, SkyRegion):
            shapes.append(ShapedRegion(name, region))
        else:
            raise ConfigError(f"{path}: region {number} is in pixel coordinates; bkgdb needs sky regions")
    return tuple(circles), tuple(shapes)


@lru_cache(maxsize=256)
def annulus_grid(offset_lo: float, offset_hi: float, n_theta: int = 24, n_phi: int = 720) -> np.ndarray:
    """An equal-area grid of directions in an annulus around the +z axis: (n, 3) unit vectors.

    Made once per annulus and process (the same for every run); the array is read-only.
    """
    grid = _annulus_grid(offset_lo, offset_hi, n_theta, n_phi)
    grid.flags.writeable = False
    return grid


@lru_cache(maxsize=4096)
def _circle_test(ra_deg: float, dec_deg: float, radius_deg: float) -> tuple[np.ndarray, np.floating]:
    """The centre's unit vector and the cosine of the radius of a circle, made once per process."""
    return unit_vectors(ra_deg, dec_deg), np.cos(np.radians(radius_deg))


#: Slack (deg) when skipping circles that cannot reach an annulus: rounding never drops a circle.
_REACH_MARGIN_DEG = 1e-6


def _annulus_grid(offset_lo: float, offset_hi: float, n_theta: int, n_phi: int) -> np.ndarray:
    cos_edges = np.linspace(np.cos(np.radians(offset_lo)), np.cos(np.radians(offset_hi)), n_theta + 1)
    cos_theta = 0.5 * (cos_edges[1:] + cos_edges[:-1])
    phi = (np.arange(n_phi) + 0.5) * 2 * np.pi / n_phi
    sin_theta = np.sqrt(1 - cos_theta**2)
    return np.stack(
        [
            np.outer(sin_theta, np.cos(phi)).ravel(),
            np.outer(sin_theta, np.sin(phi)).ravel(),
            np.repeat(cos_theta, n_phi),
        ],
        axis=-1,
    )


def rotation_to(ra_deg: float, dec_deg: float) -> np.ndarray:
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

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        s = settings
        self.catalogues: list[Catalogue] = []
        sources = {
            kind: load_catalogue(kind, getattr(s, kind), s.source_radius, s.extended_factor)
            for kind in SOURCE_CATALOGUES
            if getattr(s, kind)
        }
        # Per-source radii replace the radius a source's catalogue entry would get.
        for name, radius in s.source_radii:
            for source in find_named_sources(s, name, "exclusion.source_radii"):
                catalogue = sources[source.catalogue]
                radii = catalogue.radius.copy()
                radii[source.index] = radius
                sources[source.catalogue] = replace(catalogue, radius=radii)
        self.catalogues.extend(sources.values())
        if s.star_cat:
            self.catalogues.append(
                load_catalogue("stars", s.star_cat, star_radius=s.star_radius, star_mag_max=s.star_mag_max)
            )
        self.custom = [ExclusionRegion(r.name, "custom", r.ra, r.dec, r.radius) for r in s.exclude_regions]
        # Sources excluded by name: the entry's radius, else the source's configured radius.
        for name, radius in s.exclude_source_name:
            if radius is None:
                radius = s.radius_for_name(name)
            for source in find_named_sources(s, name, "exclusion.exclude_source_name"):
                self.custom.append(
                    ExclusionRegion(
                        source.name,
                        "source",
                        source.ra,
                        source.dec,
                        float(radius if radius is not None else s.source_radius),
                    )
                )
        #: Accepted fractions per (pointing, edges, regions): runs on one pointing share them.
        self._fractions: dict[tuple, np.ndarray] = {}
        #: Regions per (pointing, search radius).
        self._regions: dict[tuple, tuple[ExclusionRegion, ...]] = {}
        self.shapes: list[ShapedRegion] = []
        for path in s.region_files:
            circles, shapes = load_region_file(path)
            self.custom.extend(circles)
            self.shapes.extend(shapes)

    def regions(self, ra_deg: float, dec_deg: float, search_radius: float) -> list[ExclusionRegion]:
        """Circles that reach within ``search_radius`` (deg) of the pointing, nearest first.

        Returns
        -------
        regions : list of `ExclusionRegion`
        """
        key = (float(ra_deg), float(dec_deg), float(search_radius))
        cached = self._regions.get(key)
        if cached is None:  # runs on one pointing (wobble positions repeat) and binnings share them
            cached = remember(self._regions, key, self._find_regions(*key))
        return list(cached)

    def _find_regions(self, ra_deg: float, dec_deg: float, search_radius: float) -> tuple[ExclusionRegion, ...]:
        pointing = unit_vectors(ra_deg, dec_deg)
        found = []
        for catalogue in self.catalogues:
            distance = angular_distance_deg(catalogue.vectors, pointing)
            for index in np.flatnonzero(distance - catalogue.radius < search_radius):
                found.append(
                    (
                        distance[index],
                        ExclusionRegion(
                            str(catalogue.names[index]),
                            catalogue.kind,
                            float(catalogue.ra[index]),
                            float(catalogue.dec[index]),
                            float(catalogue.radius[index]),
                        ),
                    )
                )
        for region in self.custom:
            distance = angular_distance_deg(unit_vectors(region.ra, region.dec), pointing)
            if distance - region.radius < search_radius:
                found.append((float(distance), region))
        found.sort(key=lambda item: item[0])
        # A source both found in its catalogue and excluded by name is one circle, the larger.
        largest: dict[tuple, ExclusionRegion] = {}
        for _, region in found:
            key = (region.kind, region.name, region.ra, region.dec)
            if key not in largest or region.radius > largest[key].radius:
                largest[key] = region
        return tuple(
            region for _, region in found if largest[(region.kind, region.name, region.ra, region.dec)] is region
        )

    def excluded(
        self,
        vectors: np.ndarray,
        regions: Sequence[ExclusionRegion],
        ra_deg: float | None = None,
        dec_deg: float | None = None,
    ) -> np.ndarray:
        """Which of the unit vectors (n, 3) lie in any region (and in any shaped custom region)."""
        mask = np.zeros(len(vectors), dtype=bool)
        for region in regions:
            centre, cos_radius = _circle_test(region.ra, region.dec, region.radius)
            mask |= vectors @ centre >= cos_radius
        if self.shapes:
            if ra_deg is None or dec_deg is None:
                raise ValueError("shaped regions are drawn around the pointing: give ra_deg and dec_deg")
            mask |= self.in_shapes(vectors, ra_deg, dec_deg)
        return mask

    def in_shapes(self, vectors: np.ndarray, ra_deg: float, dec_deg: float) -> np.ndarray:
        """Which of the unit vectors (n, 3) lie in any shaped region, drawn around the pointing (ra, dec)."""
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
            mask |= np.asarray(shape.region.contains(coords, wcs), dtype=np.bool_)
        return mask

    def outside_fraction(
        self,
        ra_deg: float,
        dec_deg: float,
        offset_edges: np.ndarray,
        regions: Sequence[ExclusionRegion],
        n_theta: int = 24,
        n_phi: int = 720,
    ) -> np.ndarray:
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
        reach = np.array(
            [
                [
                    angular_distance_deg(_circle_test(r.ra, r.dec, r.radius)[0], pointing) - r.radius,
                    angular_distance_deg(_circle_test(r.ra, r.dec, r.radius)[0], pointing) + r.radius,
                ]
                for r in regions
            ]
        ).reshape(-1, 2)
        values: list[float] = []
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            near = [
                region
                for region, (closest, farthest) in zip(regions, reach, strict=True)
                if closest < hi + _REACH_MARGIN_DEG and farthest > lo - _REACH_MARGIN_DEG
            ]
            if not near and not self.shapes:
                values.append(1.0)
                continue
            vectors = annulus_grid(lo, hi, n_theta, n_phi) @ rotation.T
            values.append(1.0 - self.excluded(vectors, near, ra_deg, dec_deg).mean())
        return remember(self._fractions, key, np.array(values)).copy()
