"""A run in field-of-view coordinates: its events and its exclusion regions in gammapy's FoV frames.

3D pieces bin events in (energy, fov_lon, fov_lat) of the frames gammapy applies a
``Background3D`` in (`gammapy.makers.utils.make_map_background_irf`):

- ``RADEC``: `~gammapy.utils.coordinates.FoVICRSFrame` centred on the pointing;
- ``ALTAZ``: `~gammapy.utils.coordinates.FoVAltAzFrame` centred on the fixed ICRS pointing
  transformed to AltAz at each time (what ``FixedPointingInfo.get_altaz(times, location)``
  gives), so each event is transformed at its own time.

fov_lon grows toward decreasing azimuth or right ascension (GADF). All transforms are astropy's;
with many event times they use astropy's interpolated astrometry
(`~astropy.coordinates.erfa_astrom.ErfaAstromInterpolator`, errors below a micro-arcsecond) and
never download IERS tables.

The accepted exposure of a FoV pixel is the run's ontime times the fraction of the pixel outside
the exclusion regions, averaged over the run. In ALTAZ the sky turns in the FoV during a run: the
run is cut into steps over which the sky turns by less than half a pixel at the FoV edge, each
weighted by its duration; at each step the circles' centres are carried into the FoV frame (a
rotation keeps a circle a circle of the same radius) and sub-pixel sample points are tested by
angular distance. Shaped regions are tested on the sample points carried to the sky.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from bkgdb.makers.sphere import unit_vectors

if TYPE_CHECKING:
    from astropy.coordinates import EarthLocation
    from astropy.time import Time

    from bkgdb.geometry import PieceGeometry
    from bkgdb.makers.exclusion import ExclusionFinder, ExclusionRegion

__all__ = [
    "FovError",
    "RunClock",
    "fov_frame",
    "sky_to_fov",
    "fov_to_sky",
    "max_rotation_deg",
    "rotation_steps",
    "fov_outside_fraction",
    "pixel_samples",
    "SAMPLES_PER_AXIS",
]

#: Sub-pixel sample points per pixel axis for exclusion fractions (equal-area: 64 per pixel).
SAMPLES_PER_AXIS = 8
#: Seconds between the samples of the sky's turn in an ALTAZ FoV frame over a run.
ROTATION_SAMPLE_S = 30.0
#: The most samples of the turn over a run (a run through the zenith turns 180 deg in an instant).
MAX_TURN_SAMPLES = 20000
#: Time resolution of astropy's interpolated astrometry for many event times.
ASTROMETRY_RESOLUTION_S = 300.0
#: Slack (deg) when skipping pixels a circle cannot reach.
_REACH_MARGIN_DEG = 1e-6


class FovError(ValueError):
    """A run lacks what its FoV coordinates need (event times, time reference, observatory location)."""


@dataclass(frozen=True)
class RunClock:
    """When and where a run was taken: what an ALTAZ FoV frame needs.

    Attributes
    ----------
    reference : `~astropy.time.Time` or None
        The epoch FITS times count from (``MJDREFI`` + ``MJDREFF``, ``TIMESYS``).
    start_s : float or None
        The run's start (``TSTART``) in s after ``reference``.
    event_time_s : `~numpy.ndarray` or None
        Event times (the ``TIME`` column) in s after ``reference``.
    location : `~astropy.coordinates.EarthLocation` or None
        The observatory.
    """

    reference: Time | None = None
    start_s: float | None = None
    event_time_s: np.ndarray | None = None
    location: EarthLocation | None = None

    def _need(self, what: str, value: Any) -> Any:
        if value is None:
            raise FovError(f"an ALTAZ 3D piece needs {what}")
        return value

    def observatory(self) -> EarthLocation:
        """The location, or a `FovError` saying the run has none."""
        return self._need("the observatory location (GEOLON, GEOLAT in the EVENTS or obs-index header)", self.location)

    def start(self) -> Time:
        """The run's start time."""
        from astropy import units as u

        reference = self._need("a time reference (MJDREFI/MJDREFF or MJDREF)", self.reference)
        return reference + self._need("the run's start time (TSTART)", self.start_s) * u.s

    def event_times(self, select: np.ndarray | None = None) -> Time:
        """Absolute times of the (selected) events."""
        from astropy import units as u

        reference = self._need("a time reference (MJDREFI/MJDREFF or MJDREF)", self.reference)
        seconds = self._need("event times (a TIME column)", self.event_time_s)
        return reference + (seconds if select is None else seconds[select]) * u.s


@contextmanager
def _astrometry() -> Iterator[None]:
    """Astropy's interpolated astrometry and no IERS downloads, for AltAz transforms at many times."""
    from astropy import units as u
    from astropy.coordinates.erfa_astrom import ErfaAstromInterpolator, erfa_astrom
    from astropy.utils import iers

    iers.conf.auto_download = False  # no network: astropy's bundled tables
    with erfa_astrom.set(ErfaAstromInterpolator(ASTROMETRY_RESOLUTION_S * u.s)):
        yield


def fov_frame(
    alignment: str,
    pointing_ra_deg: float,
    pointing_dec_deg: float,
    times: Time | None = None,
    location: EarthLocation | None = None,
) -> Any:
    """gammapy's FoV frame of a pointing, as ``make_map_background_irf`` builds it.

    Parameters
    ----------
    alignment : {"ALTAZ", "RADEC"}
        The FoV alignment.
    pointing_ra_deg, pointing_dec_deg : float
        The run's fixed ICRS pointing.
    times : `~astropy.time.Time`, optional
        Times of the frame (ALTAZ): one frame per time.
    location : `~astropy.coordinates.EarthLocation`, optional
        The observatory (ALTAZ).

    Returns
    -------
    frame : `~gammapy.utils.coordinates.FoVAltAzFrame` or `~gammapy.utils.coordinates.FoVICRSFrame`
    """
    from astropy import units as u
    from astropy.coordinates import AltAz, SkyCoord
    from gammapy.utils.coordinates import FoVAltAzFrame, FoVICRSFrame

    pointing = SkyCoord(pointing_ra_deg * u.deg, pointing_dec_deg * u.deg, frame="icrs")
    if alignment == "RADEC":
        return FoVICRSFrame(origin=pointing)
    if alignment != "ALTAZ":
        raise ValueError(f"unknown FoV alignment {alignment!r}")
    if times is None or location is None:
        raise FovError("an ALTAZ FoV frame needs times and the observatory location")
    origin = pointing.transform_to(AltAz(obstime=times, location=location))
    return FoVAltAzFrame(origin=origin, location=location, obstime=times)


def sky_to_fov(
    ra_deg: np.ndarray,
    dec_deg: np.ndarray,
    alignment: str,
    pointing_ra_deg: float,
    pointing_dec_deg: float,
    times: Time | None = None,
    location: EarthLocation | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """FoV lon and lat (deg, lon in -180...180) of ICRS directions, each at its time (ALTAZ).

    ``times`` (ALTAZ) has the shape of the directions or broadcasts with them.
    """
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    if np.size(ra_deg) == 0:  # astropy's interpolated astrometry needs at least one time
        return np.zeros(np.shape(ra_deg)), np.zeros(np.shape(ra_deg))
    with _astrometry():
        frame = fov_frame(alignment, pointing_ra_deg, pointing_dec_deg, times, location)
        fov = SkyCoord(
            np.asarray(ra_deg, float) * u.deg, np.asarray(dec_deg, float) * u.deg, frame="icrs"
        ).transform_to(frame)
    return fov.fov_lon.wrap_at(180 * u.deg).deg, fov.fov_lat.deg


def fov_to_sky(lon_deg: np.ndarray, lat_deg: np.ndarray, frame: Any) -> tuple[np.ndarray, np.ndarray]:
    """ICRS RA, Dec (deg) of FoV positions in ``frame``."""
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    with _astrometry():
        sky = SkyCoord(fov_lon=np.asarray(lon_deg) * u.deg, fov_lat=np.asarray(lat_deg) * u.deg, frame=frame).icrs
    return sky.ra.deg, sky.dec.deg


def _fov_edges(geometry: PieceGeometry) -> tuple[np.ndarray, np.ndarray]:
    if geometry.fov_lon_edges is None or geometry.fov_lat_edges is None:
        raise ValueError("a 2D geometry has no FoV pixels")
    return geometry.fov_lon_edges, geometry.fov_lat_edges


def _alignment(geometry: PieceGeometry) -> str:
    if geometry.alignment is None:
        raise ValueError("a 2D geometry has no FoV alignment")
    return geometry.alignment


def max_rotation_deg(geometry: PieceGeometry) -> float:
    """The largest turn of the sky (deg) that moves a point at the FoV edge by half a pixel."""
    lon_edges, lat_edges = _fov_edges(geometry)
    pixel = min(np.diff(lon_edges).min(), np.diff(lat_edges).min())
    return math.degrees(0.5 * pixel / geometry.max_offset_deg)


def rotation_steps(
    clock: RunClock,
    duration_s: float,
    pointing_ra_deg: float,
    pointing_dec_deg: float,
    max_turn_deg: float,
    ra_deg: Sequence[float] = (),
    dec_deg: Sequence[float] = (),
) -> tuple[Time, np.ndarray, np.ndarray, np.ndarray]:
    """Cut a run into steps over which the sky turns by at most ``max_turn_deg`` in the ALTAZ FoV.

    The turn is measured with astropy: the FoV position angle of a sky point 1 deg north of the
    pointing, sampled every `ROTATION_SAMPLE_S` seconds (finer where the sky turns fast). Steps
    cover equal turns; each is represented by the sample nearest its middle turn, within an
    eighth of a step's turn of it. The given sky points (region centres) are carried into the
    FoV frame in the same astropy transform.

    Returns
    -------
    times : `~astropy.time.Time`
        The time representing each step.
    weights : `~numpy.ndarray`
        Each step's duration over ``duration_s`` (they add up to 1).
    lon, lat : `~numpy.ndarray`
        FoV positions (deg) of the given points at each step: (n_steps, n_points).
    """
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    start, location = clock.start(), clock.observatory()
    probe = SkyCoord(pointing_ra_deg * u.deg, pointing_dec_deg * u.deg).directional_offset_by(0 * u.deg, 1 * u.deg)
    ra = np.concatenate([[probe.ra.deg], np.asarray(ra_deg, float)])
    dec = np.concatenate([[probe.dec.deg], np.asarray(dec_deg, float)])
    spacing = ROTATION_SAMPLE_S
    while True:
        seconds = np.linspace(0.0, duration_s, max(2, math.ceil(duration_s / spacing) + 1))
        shape = (len(seconds), len(ra))
        lon, lat = sky_to_fov(
            np.broadcast_to(ra, shape),
            np.broadcast_to(dec, shape),
            "ALTAZ",
            pointing_ra_deg,
            pointing_dec_deg,
            (start + seconds * u.s)[:, None],
            location,
        )
        turn = np.degrees(np.abs(np.diff(np.unwrap(np.arctan2(lat[:, 0], lon[:, 0])))))
        # Samples close enough that the nearest one to a step's middle lies well within the step.
        if turn.max(initial=0.0) <= max_turn_deg / 4 or 4 * len(seconds) > MAX_TURN_SAMPLES:
            break
        spacing /= 4
    turned = np.concatenate([[0.0], np.cumsum(turn)])
    n_steps = max(1, math.ceil(turned[-1] / max_turn_deg))
    # Strictly increasing (interpolation needs it) without moving the turn measurably.
    turned = turned + seconds * 1e-12
    edges = np.interp(np.linspace(0.0, turned[-1], n_steps + 1), turned, seconds)
    middles = np.interp((np.arange(n_steps) + 0.5) * turned[-1] / n_steps, turned, seconds)
    nearest = np.abs(seconds[None, :] - middles[:, None]).argmin(axis=1)
    weights = np.diff(edges)
    return start + seconds[nearest] * u.s, weights / weights.sum(), lon[nearest, 1:], lat[nearest, 1:]


@lru_cache(maxsize=32)
def _pixel_samples(
    lon_edges: tuple[float, ...], lat_edges: tuple[float, ...], per_axis: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    lon_edges_a, lat_edges_a = np.array(lon_edges), np.array(lat_edges)
    part = (np.arange(per_axis) + 0.5) / per_axis
    # Equal-area points: uniform in lon and in sin(lat) within each pixel.
    lon_grid = (lon_edges_a[:-1, None] + np.diff(lon_edges_a)[:, None] * part).reshape(-1, 1, per_axis, 1)
    sin_lo, sin_hi = np.sin(np.radians(lat_edges_a[:-1])), np.sin(np.radians(lat_edges_a[1:]))
    lat_grid = np.degrees(np.arcsin(sin_lo[:, None] + (sin_hi - sin_lo)[:, None] * part)).reshape(1, -1, 1, per_axis)
    n_pixels = (len(lon_edges) - 1) * (len(lat_edges) - 1)
    lon, lat = (values.reshape(n_pixels, per_axis**2) for values in np.broadcast_arrays(lon_grid, lat_grid))
    centre_lon, centre_lat = np.meshgrid(
        0.5 * (lon_edges_a[:-1] + lon_edges_a[1:]), 0.5 * (lat_edges_a[:-1] + lat_edges_a[1:]), indexing="ij"
    )
    centres = unit_vectors(centre_lon.ravel(), centre_lat.ravel())
    corners = [
        unit_vectors(
            *np.meshgrid(
                lon_edges_a[i : len(lon_edges_a) - 1 + i], lat_edges_a[j : len(lat_edges_a) - 1 + j], indexing="ij"
            )
        ).reshape(-1, 3)
        for i in (0, 1)
        for j in (0, 1)
    ]
    reach = np.max(
        [np.degrees(np.arccos(np.clip(np.sum(corner * centres, axis=1), -1, 1))) for corner in corners], axis=0
    )
    arrays = (unit_vectors(lon, lat), np.stack([lon, lat]), centres, reach)
    for array in arrays:
        array.flags.writeable = False
    return arrays


def pixel_samples(
    geometry: PieceGeometry, per_axis: int = SAMPLES_PER_AXIS
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Equal-area sample points of every FoV pixel, made once per geometry and process.

    Returns
    -------
    vectors : `~numpy.ndarray`
        Unit vectors (n_pixels, per_axis**2, 3) in the FoV frame's own Cartesian axes; pixels
        in C order of the spatial shape.
    lonlat : `~numpy.ndarray`
        FoV lon and lat (2, n_pixels, per_axis**2) of the points in deg.
    centres : `~numpy.ndarray`
        Unit vectors (n_pixels, 3) of the pixel centres.
    reach : `~numpy.ndarray`
        The largest angular distance (deg) of a pixel's corner from its centre.
    """
    lon_edges, lat_edges = _fov_edges(geometry)
    return _pixel_samples(tuple(map(float, lon_edges)), tuple(map(float, lat_edges)), per_axis)


def fov_outside_fraction(
    geometry: PieceGeometry,
    pointing_ra_deg: float,
    pointing_dec_deg: float,
    regions: Sequence[ExclusionRegion],
    finder: ExclusionFinder | None = None,
    clock: RunClock | None = None,
    duration_s: float | None = None,
    per_axis: int = SAMPLES_PER_AXIS,
) -> np.ndarray:
    """Fraction of each FoV pixel outside the exclusion regions, averaged over the run.

    Parameters
    ----------
    geometry : `~bkgdb.geometry.PieceGeometry`
        A 3D geometry (its alignment says which FoV frame).
    pointing_ra_deg, pointing_dec_deg : float
        The run's fixed ICRS pointing.
    regions : list of `~bkgdb.makers.exclusion.ExclusionRegion`
        The circles.
    finder : `~bkgdb.makers.exclusion.ExclusionFinder`, optional
        Tests the shaped regions of region files (its ``shapes``), if any.
    clock : `RunClock`, optional
        Start and location of the run (ALTAZ).
    duration_s : float, optional
        The run's ontime (ALTAZ): steps cover ``start ... start + duration``, as gammapy's.
    per_axis : int, optional
        Sample points per pixel axis.

    Returns
    -------
    fraction : `~numpy.ndarray`
        Values in [0, 1] of the geometry's spatial shape; exactly 1 where no region reaches.
    """
    shapes = list(finder.shapes) if finder is not None else []
    if not regions and not shapes:
        return np.ones(geometry.spatial_shape)
    samples, lonlat, centres, reach = pixel_samples(geometry, per_axis)
    alignment = _alignment(geometry)
    ra = [region.ra for region in regions]
    dec = [region.dec for region in regions]
    # Every circle's centre at every step: (n_steps, n_regions) FoV positions.
    if alignment == "ALTAZ":
        if clock is None or duration_s is None:
            raise FovError("an ALTAZ 3D piece needs the run's times and location")
        times, weights, lon, lat = rotation_steps(
            clock, duration_s, pointing_ra_deg, pointing_dec_deg, max_rotation_deg(geometry), ra, dec
        )
        location = clock.observatory()
    else:
        times, weights, location = None, np.ones(1), None
        lon, lat = (
            values[None, :]
            for values in sky_to_fov(np.array(ra), np.array(dec), alignment, pointing_ra_deg, pointing_dec_deg)
        )
    region_vectors = unit_vectors(lon, lat)
    radius = np.array([region.radius for region in regions], dtype=float)
    cos_radius = np.cos(np.radians(radius))
    n_steps = len(weights)
    excluded_share = np.zeros(len(centres))
    for step in range(n_steps):
        excluded = np.zeros(samples.shape[:2], dtype=bool)
        if regions:
            # (pixel, circle) pairs close enough to touch; only their sample points are tested.
            distance = np.degrees(np.arccos(np.clip(centres @ region_vectors[step].T, -1.0, 1.0)))
            pixel, circle = np.nonzero(distance <= radius + reach[:, None] + _REACH_MARGIN_DEG)
            inside = np.einsum("psk,pk->ps", samples[pixel], region_vectors[step][circle]) >= cos_radius[circle, None]
            np.logical_or.at(excluded, pixel, inside)
        if shapes and finder is not None:
            frame = fov_frame(
                alignment, pointing_ra_deg, pointing_dec_deg, None if times is None else times[step], location
            )
            ra_s, dec_s = fov_to_sky(lonlat[0], lonlat[1], frame)
            excluded |= finder.in_shapes(
                unit_vectors(ra_s, dec_s).reshape(-1, 3), pointing_ra_deg, pointing_dec_deg
            ).reshape(excluded.shape)
        # Accumulate what is lost, so pixels no region reaches stay exactly 1.
        excluded_share += weights[step] * excluded.mean(axis=1)
    return np.clip(1.0 - excluded_share, 0.0, 1.0).reshape(geometry.spatial_shape)
