"""A run in field-of-view coordinates: its events and its exclusion regions in gammapy's FoV frames.

3D pieces bin events in (energy, fov_lon, fov_lat) of the frames gammapy applies a
``Background3D`` in (`gammapy.makers.utils.make_map_background_irf`):

- ``RADEC``: `~gammapy.utils.coordinates.FoVICRSFrame` centred on the pointing, a fixed rotation
  of the sky (`~bkgdb.makers.sphere.fov_matrix`);
- ``ALTAZ``: `~gammapy.utils.coordinates.FoVAltAzFrame` centred on the fixed ICRS pointing
  transformed to AltAz at each time (what ``FixedPointingInfo.get_altaz(times, location)``
  gives), so each event is seen at its own time.

fov_lon grows toward decreasing azimuth or right ascension (GADF). AltAz positions are astropy's
ICRS to AltAz transform (the ERFA calls it makes, with astropy's interpolated astrometry,
`~astropy.coordinates.erfa_astrom.ErfaAstromInterpolator`, and no IERS downloads).

Transforming every event to AltAz at its own time is costly, and nearly all of it is the turn of
the sky: the ALTAZ FoV of a tracking run is its RADEC FoV turned about the pointing by an angle
that changes over the run, and distorted by aberration by a few 1e-4 deg. An `AltAzTrack` holds
that map, fitted to the exact transform of a few probe directions at sample times (finer where
the sky turns fast) and interpolated in between; events and circles are carried by it.

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

from bkgdb.makers.sphere import fov_matrix, lon_lat_deg, unit_vectors

if TYPE_CHECKING:
    from astropy.coordinates import EarthLocation
    from astropy.time import Time

    from bkgdb.geometry import PieceGeometry
    from bkgdb.makers.exclusion import ExclusionFinder, ExclusionRegion

__all__ = [
    "FovError",
    "RunClock",
    "AltAzTrack",
    "altaz_track",
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
#: Seconds between the first samples of an `AltAzTrack`, before refining where the sky turns fast.
TRACK_SAMPLE_S = 120.0
#: The most samples of a track (a run through the zenith turns 180 deg in an instant).
MAX_TRACK_SAMPLES = 20000
#: The largest error (arcsec) of interpolating a track between its samples, at its radius.
TRACK_TOLERANCE_ARCSEC = 0.005
#: Time resolution of astropy's interpolated astrometry for many times.
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

    def event_seconds(self, select: np.ndarray | None = None) -> np.ndarray:
        """Times of the (selected) events in s after the run's start."""
        seconds = np.asarray(self._need("event times (a TIME column)", self.event_time_s), float)
        start = self._need("the run's start time (TSTART)", self.start_s)
        return (seconds if select is None else seconds[select]) - start


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


def _astrom(times: Time, location: EarthLocation) -> np.ndarray:
    """The ERFA astrometry context of astropy's ICRS to AltAz transform at ``times``, interpolated."""
    from astropy.coordinates import AltAz
    from astropy.coordinates.erfa_astrom import erfa_astrom

    with _astrometry():
        return erfa_astrom.get().apco(AltAz(obstime=times, location=location))


def _observed(
    ra_deg: np.ndarray | float, dec_deg: np.ndarray | float, astrom: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Azimuth, zenith distance, hour angle and declination (rad) of ICRS directions, as astropy's AltAz.

    astropy's ICRS to AltAz transform without its frame objects: ``atciqz`` then ``atioq``.
    """
    import erfa

    cirs_ra, cirs_dec = erfa.atciqz(np.radians(ra_deg), np.radians(dec_deg), astrom)
    az, zenith, hour_angle, dec, _ = erfa.atioq(cirs_ra, cirs_dec, astrom)
    return az, zenith, hour_angle, dec


def _altaz_fov_vectors(
    ra_deg: np.ndarray,
    dec_deg: np.ndarray,
    pointing_ra_deg: float,
    pointing_dec_deg: float,
    astrom: np.ndarray,
) -> np.ndarray:
    """Unit vectors (..., 3) in the ALTAZ FoV frame of ICRS directions; ``astrom`` broadcasts with them.

    The FoV centre at each time is the pointing's AltAz at that time.
    """
    az0, zenith0, _, _ = _observed(pointing_ra_deg, pointing_dec_deg, astrom)
    az, zenith, _, _ = _observed(ra_deg, dec_deg, astrom)
    rotation = fov_matrix(np.degrees(az0), 90.0 - np.degrees(zenith0))
    return (rotation @ unit_vectors(np.degrees(az), 90.0 - np.degrees(zenith))[..., None])[..., 0]


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

    The exact transform, point by point; ``times`` (ALTAZ) has the shape of the directions or
    broadcasts with them. Many events of one run are faster carried by an `AltAzTrack`.
    """
    ra, dec = np.asarray(ra_deg, float), np.asarray(dec_deg, float)
    if alignment == "RADEC":
        return lon_lat_deg(unit_vectors(ra, dec) @ fov_matrix(pointing_ra_deg, pointing_dec_deg).T)
    if alignment != "ALTAZ":
        raise ValueError(f"unknown FoV alignment {alignment!r}")
    if times is None or location is None:
        raise FovError("an ALTAZ FoV frame needs times and the observatory location")
    if ra.size == 0:  # astropy's interpolated astrometry needs at least one time
        return np.zeros(ra.shape), np.zeros(ra.shape)
    return lon_lat_deg(_altaz_fov_vectors(ra, dec, pointing_ra_deg, pointing_dec_deg, _astrom(times, location)))


def fov_to_sky(lon_deg: np.ndarray, lat_deg: np.ndarray, frame: Any) -> tuple[np.ndarray, np.ndarray]:
    """ICRS RA, Dec (deg) of FoV positions in ``frame``."""
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    with _astrometry():
        sky = SkyCoord(fov_lon=np.asarray(lon_deg) * u.deg, fov_lat=np.asarray(lat_deg) * u.deg, frame=frame).icrs
    return sky.ra.deg, sky.dec.deg


def _terms(vectors: np.ndarray) -> np.ndarray:
    """The terms (..., 6) of an `AltAzTrack`'s map: a mirrored vector's components and its quadratic ones.

    AltAz axes (north, east, up) are left-handed and ICRS axes right-handed: the ALTAZ FoV is a
    mirror image of the RADEC FoV, turned. With the mirror (y negated) in the terms, the
    rest of the map is a turn.
    """
    x, y, z = vectors[..., 0], -vectors[..., 1], vectors[..., 2]
    return np.stack([x, y, z, y * y, y * z, z * z], axis=-1)


def _turn_out(turn: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Vectors (..., 3, k) turned by ``-turn`` (rad) about the FoV centre (+x)."""
    cos, sin = np.cos(turn)[..., None], np.sin(turn)[..., None]
    y, z = vectors[..., 1, :], vectors[..., 2, :]
    return np.stack([vectors[..., 0, :], cos * y + sin * z, cos * z - sin * y], axis=-2)


@dataclass(frozen=True)
class AltAzTrack:
    """The ALTAZ FoV of a tracking run: its RADEC FoV mirrored and turned by a time-dependent angle.

    At each sample time the ALTAZ FoV vector of a direction with RADEC FoV vector ``v`` is
    ``turn(angle) @ coefficients @ terms(v)``, normalised: ``turn`` about the FoV centre,
    ``coefficients`` (near the identity) aberration's slight distortion across the FoV, ``terms``
    the components of ``v`` mirrored and their squares. The angle is the pointing's parallactic
    angle, from its hour angle and declination (nearly linear in time), plus a small correction
    (precession, nutation, aberration); all are interpolated linearly in time, so the turn stays
    right where the parallactic angle changes fast, near the zenith.

    Attributes
    ----------
    seconds : `~numpy.ndarray`
        Sample times in s after the run's start, increasing.
    hour_angle, declination : `~numpy.ndarray`
        The pointing's apparent hour angle (unwrapped) and declination at each sample (rad).
    latitude : float
        The site's latitude (rad).
    correction : `~numpy.ndarray`
        The angle minus the parallactic angle at each sample (unwrapped, rad).
    coefficients : `~numpy.ndarray`
        (n_samples, 3, 6) the rest of the map.
    radec : `~numpy.ndarray`
        The rotation (3, 3) of ICRS vectors into the RADEC FoV.
    """

    seconds: np.ndarray
    hour_angle: np.ndarray
    declination: np.ndarray
    latitude: float
    correction: np.ndarray
    coefficients: np.ndarray
    radec: np.ndarray

    def turn_at(self, seconds: np.ndarray) -> np.ndarray:
        """The angle (rad) at times (s after the start), continuous except through the zenith."""
        import erfa

        hour_angle = np.interp(seconds, self.seconds, self.hour_angle)
        declination = np.interp(seconds, self.seconds, self.declination)
        return erfa.hd2pa(hour_angle, declination, self.latitude) + np.interp(seconds, self.seconds, self.correction)

    def to_altaz(self, radec_vectors: np.ndarray, seconds: np.ndarray) -> np.ndarray:
        """ALTAZ FoV unit vectors (..., 3) of RADEC FoV vectors (..., 3) at times (...) in s after the start."""
        seconds = np.asarray(seconds, float)
        index = np.clip(np.searchsorted(self.seconds, seconds, side="right") - 1, 0, len(self.seconds) - 2)
        width = self.seconds[index + 1] - self.seconds[index]
        part = np.clip((seconds - self.seconds[index]) / width, 0.0, 1.0)[..., None]
        terms = _terms(radec_vectors)
        before, after = (np.einsum("...ij,...j->...i", self.coefficients[at], terms) for at in (index, index + 1))
        mapped = before + part * (after - before)
        altaz = _turn_out(-self.turn_at(seconds), mapped[..., None])[..., 0]
        return altaz / np.linalg.norm(altaz, axis=-1, keepdims=True)


@lru_cache(maxsize=16)
def _probes(radius_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """RADEC FoV vectors (n, 3) where a track is fitted, to ``radius_deg`` of the centre, and their solver (6, n)."""
    radius = np.array([0.0] + [radius_deg * part for part in (1 / 3, 2 / 3, 1.0) for _ in range(8)])
    angle = np.radians(np.concatenate([[0.0], np.tile(np.arange(8) * 45.0, 3)]))
    vectors = unit_vectors(radius * np.cos(angle), radius * np.sin(angle))
    solver = np.linalg.pinv(_terms(vectors))
    for array in (vectors, solver):
        array.flags.writeable = False
    return vectors, solver


def altaz_track(
    clock: RunClock,
    pointing_ra_deg: float,
    pointing_dec_deg: float,
    first_s: float,
    last_s: float,
    radius_deg: float,
) -> AltAzTrack:
    """The `AltAzTrack` of a run from ``first_s`` to ``last_s`` (s after its start), fitted to ``radius_deg``.

    Samples every `TRACK_SAMPLE_S` seconds, halved where interpolating between them could err by
    more than `TRACK_TOLERANCE_ARCSEC` at ``radius_deg`` (estimated from second differences).
    """
    import erfa
    from astropy import units as u

    start, location = clock.start(), clock.observatory()
    radec = fov_matrix(pointing_ra_deg, pointing_dec_deg)
    probes, solver = _probes(max(float(radius_deg), 0.1))
    probe_ra, probe_dec = lon_lat_deg(probes @ radec)
    latitude = 0.0

    def sample(seconds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        nonlocal latitude
        astrom = _astrom(start + seconds * u.s, location)
        latitude = float(np.arctan2(astrom["sphi"][0], astrom["cphi"][0]))
        _, _, hour_angle, declination = _observed(pointing_ra_deg, pointing_dec_deg, astrom)
        altaz = _altaz_fov_vectors(probe_ra, probe_dec, pointing_ra_deg, pointing_dec_deg, astrom[:, None])
        fitted = np.einsum("kn,tni->tik", solver, altaz)
        # The turn is the rotation in the (y, z) block of the linear terms.
        turn = np.arctan2(fitted[:, 2, 1] - fitted[:, 1, 2], fitted[:, 1, 1] + fitted[:, 2, 2])
        correction = np.angle(np.exp(1j * (turn - erfa.hd2pa(hour_angle, declination, latitude))))
        values = np.stack([hour_angle, declination, correction], axis=1)
        return values, _turn_out(turn, fitted)

    last_s = max(float(last_s), float(first_s) + 1.0)
    seconds = np.linspace(first_s, last_s, max(3, math.ceil((last_s - first_s) / TRACK_SAMPLE_S) + 1))
    values, coefficients = sample(seconds)
    values[:, [0, 2]] = np.unwrap(values[:, [0, 2]], axis=0)
    tolerance = math.radians(TRACK_TOLERANCE_ARCSEC / 3600)
    reach = math.sin(math.radians(radius_deg))
    while len(seconds) < MAX_TRACK_SAMPLES:
        # Error of linear interpolation over a step h: h**2 / 8 times the second derivative.
        error = np.concatenate([reach * values[:, 2:], coefficients.reshape(len(seconds), -1)], axis=1)
        width = np.diff(seconds)
        slope = np.diff(error, axis=0) / width[:, None]
        curvature = np.abs(np.diff(slope, axis=0)).max(axis=1) / (0.5 * (width[:-1] + width[1:]))
        curvature = np.maximum(np.append(curvature, curvature[-1]), np.insert(curvature, 0, curvature[0]))
        coarse = np.flatnonzero(width**2 / 8 * curvature > tolerance)[: MAX_TRACK_SAMPLES - len(seconds)]
        if not len(coarse):
            break
        middle = 0.5 * (seconds[coarse] + seconds[coarse + 1])
        middle_values, middle_coefficients = sample(middle)
        # Unwrapped next to the neighbours' mean: angles change by far less than 180 deg between them.
        expected = 0.5 * (values[coarse] + values[coarse + 1])
        middle_values += 2 * np.pi * np.round((expected - middle_values) / (2 * np.pi))
        order = np.argsort(np.concatenate([seconds, middle]), kind="stable")
        seconds = np.concatenate([seconds, middle])[order]
        values = np.concatenate([values, middle_values])[order]
        coefficients = np.concatenate([coefficients, middle_coefficients])[order]
    return AltAzTrack(seconds, values[:, 0], values[:, 1], latitude, values[:, 2], coefficients, radec)


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


def _turn_steps(track: AltAzTrack, duration_s: float, max_turn_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Middles (s after the start) and weights of steps over which the sky turns by at most ``max_turn_deg``.

    The turn is followed on times close enough that it turns by at most an eighth of a step
    between them (finer where it turns fast); steps cover equal turns, each represented by the
    time of its middle turn.
    """
    spacing = TRACK_SAMPLE_S
    while True:
        seconds = np.linspace(0.0, duration_s, max(2, math.ceil(duration_s / spacing) + 1))
        turn = np.degrees(np.abs(np.diff(np.unwrap(track.turn_at(seconds)))))
        if turn.max(initial=0.0) <= max_turn_deg / 8 or 4 * len(seconds) > MAX_TRACK_SAMPLES:
            break
        spacing /= 4
    turned = np.concatenate([[0.0], np.cumsum(turn)])
    n_steps = max(1, math.ceil(turned[-1] / max_turn_deg))
    # Strictly increasing (interpolation needs it) without moving the turn measurably.
    turned = turned + seconds * 1e-12
    edges = np.interp(np.linspace(0.0, turned[-1], n_steps + 1), turned, seconds)
    middles = np.interp((np.arange(n_steps) + 0.5) * turned[-1] / n_steps, turned, seconds)
    weights = np.diff(edges)
    return middles, weights / weights.sum()


def rotation_steps(
    clock: RunClock,
    duration_s: float,
    pointing_ra_deg: float,
    pointing_dec_deg: float,
    max_turn_deg: float,
    ra_deg: Sequence[float] = (),
    dec_deg: Sequence[float] = (),
    track: AltAzTrack | None = None,
) -> tuple[Time, np.ndarray, np.ndarray, np.ndarray]:
    """Cut a run into steps over which the sky turns by at most ``max_turn_deg`` in the ALTAZ FoV.

    Steps cover equal turns of the run's `AltAzTrack`, each represented by the time of its middle
    turn. The given sky points (region centres) are carried into the FoV frame at those times.

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

    points = unit_vectors(np.asarray(ra_deg, float), np.asarray(dec_deg, float))
    if track is None:
        centre = unit_vectors(pointing_ra_deg, pointing_dec_deg)
        radius = np.degrees(np.arccos(np.clip(points @ centre, -1.0, 1.0))).max(initial=1.0)
        track = altaz_track(clock, pointing_ra_deg, pointing_dec_deg, 0.0, duration_s, radius)
    middles, weights = _turn_steps(track, duration_s, max_turn_deg)
    lon, lat = lon_lat_deg(track.to_altaz((points @ track.radec.T)[None, :, :], middles[:, None]))
    return clock.start() + middles * u.s, weights, lon, lat


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


def _in_circles(
    samples: np.ndarray, centres: np.ndarray, reach: np.ndarray, circles: np.ndarray, radius: np.ndarray
) -> np.ndarray:
    """Which sample points (n_steps, n_pixels, n_samples) lie in any circle (n_steps, n_circles, 3) of their step.

    Only (pixel, step, circle) triples close enough to touch are tested.
    """
    n_steps, n_circles = circles.shape[:2]
    cos_touch = np.cos(np.radians(np.minimum(radius[None, :] + reach[:, None] + _REACH_MARGIN_DEG, 180.0)))
    # One product per step: products this small run on one BLAS thread, which is faster than
    # several when other processes (index workers) share the cores.
    distance = np.stack([centres @ step_circles.T for step_circles in circles], axis=1)
    pixel, step, circle = np.nonzero(distance >= cos_touch[:, None, :])
    excluded = np.zeros((n_steps, *samples.shape[:2]), dtype=bool)
    if len(pixel):
        cos_radius = np.cos(np.radians(radius))
        inside = (samples[pixel] @ circles[step, circle][:, :, None])[..., 0] >= cos_radius[circle, None]
        # Triples come sorted by (pixel, step): one "or" per run of equal pairs, on bits (8 times faster).
        pair = pixel * n_steps + step
        first = np.flatnonzero(np.concatenate([[True], pair[1:] != pair[:-1]]))
        packed = np.bitwise_or.reduceat(np.packbits(inside, axis=1), first, axis=0)
        excluded[step[first], pixel[first]] = np.unpackbits(packed, axis=1, count=inside.shape[1]).view(bool)
    return excluded


def fov_outside_fraction(
    geometry: PieceGeometry,
    pointing_ra_deg: float,
    pointing_dec_deg: float,
    regions: Sequence[ExclusionRegion],
    finder: ExclusionFinder | None = None,
    clock: RunClock | None = None,
    duration_s: float | None = None,
    per_axis: int = SAMPLES_PER_AXIS,
    track: AltAzTrack | None = None,
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
    track : `AltAzTrack`, optional
        The run's track (ALTAZ) over at least ``0 ... duration_s``. Default fits one.

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
    radec = fov_matrix(pointing_ra_deg, pointing_dec_deg)
    radius = np.array([region.radius for region in regions], dtype=float)
    ra = np.array([region.ra for region in regions], dtype=float)
    dec = np.array([region.dec for region in regions], dtype=float)
    circles = unit_vectors(ra, dec).reshape(-1, 3) @ radec.T
    # The FoV turns about its centre: a circle too far from it never touches a pixel.
    touch = circles[:, 0] >= np.cos(np.radians(np.minimum(geometry.max_offset_deg + radius + _REACH_MARGIN_DEG, 180)))
    circles, radius = circles[touch], radius[touch]
    # Every circle's centre at every step: (n_steps, n_circles, 3) FoV vectors.
    middles = None
    if alignment == "ALTAZ":
        if clock is None or duration_s is None:
            raise FovError("an ALTAZ 3D piece needs the run's times and location")
        if track is None:
            track = altaz_track(clock, pointing_ra_deg, pointing_dec_deg, 0.0, duration_s, geometry.max_offset_deg)
        middles, weights = _turn_steps(track, duration_s, max_rotation_deg(geometry))
        circles = track.to_altaz(circles[None, :, :], middles[:, None])
    else:
        weights, circles = np.ones(1), circles[None]
    excluded = _in_circles(samples, centres, reach, circles, radius)
    if shapes and finder is not None:
        for step in range(len(weights)):
            if middles is None or clock is None:
                sky = samples @ radec
            else:
                from astropy import units as u

                time = clock.start() + middles[step] * u.s
                frame = fov_frame(alignment, pointing_ra_deg, pointing_dec_deg, time, clock.observatory())
                sky = unit_vectors(*fov_to_sky(lonlat[0], lonlat[1], frame))
            inside = finder.in_shapes(sky.reshape(-1, 3), pointing_ra_deg, pointing_dec_deg)
            excluded[step] |= inside.reshape(excluded.shape[1:])
    # What is lost, so pixels no region reaches stay exactly 1.
    excluded_share = weights @ excluded.mean(axis=2)
    return np.clip(1.0 - excluded_share, 0.0, 1.0).reshape(geometry.spatial_shape)
