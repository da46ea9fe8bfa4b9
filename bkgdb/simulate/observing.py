"""When and where simulated runs are observed: the site, run times, pointings that track a fixed
RA/Dec, and conversions between FoV and sky coordinates at each event's time.

Every sky <-> FoV conversion goes through gammapy's frames (`FoVAltAzFrame`, `FoVICRSFrame`) and
astropy's `AltAz`, with the pointing's Alt/Az computed as gammapy's `FixedPointingInfo` computes it,
so that what is simulated is what gammapy's makers later predict. Earth orientation comes from the
tables bundled with astropy: importing this module switches IERS downloads off (there may be no
network, and a download in the middle of a simulation would make it depend on the day it runs).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
from astropy import units as u
from astropy.coordinates import AltAz, EarthLocation, SkyCoord
from astropy.coordinates.erfa_astrom import ErfaAstromInterpolator, erfa_astrom
from astropy.time import Time
from astropy.utils import iers
from numpy.typing import ArrayLike

if TYPE_CHECKING:
    from gammapy.utils.coordinates import FoVAltAzFrame, FoVICRSFrame

iers.conf.auto_download = False

__all__ = [
    "MJDREF",
    "TIMESYS",
    "time_reference",
    "site_location",
    "offline_astrometry",
    "time_of_hour_angle",
    "radec_of_horizontal",
    "pointing_altaz",
    "fov_frame",
    "fov_to_radec",
    "radec_to_fov",
]

MJDREF = 51910.0  # 2001-01-01, as in H.E.S.S. and CTAO files
TIMESYS = "tt"
#: Solar seconds per sidereal hour.
SIDEREAL_HOUR_S = 3590.1704
#: Earth orientation is interpolated over this interval: well below an arcsecond, and a hundred
#: times faster for the thousands of event times of a run.
ASTROM_INTERPOLATION = 300 * u.s


def time_reference() -> Time:
    """The time TIME, TSTART and TSTOP count seconds from (MJDREFI + MJDREFF, TIMESYS)."""
    return Time(MJDREF, format="mjd", scale=TIMESYS)


def site_location(site: Mapping[str, float]) -> EarthLocation:
    """The observatory of a ``{"GEOLON", "GEOLAT", "ALTITUDE"}`` header mapping (deg, deg, m)."""
    return EarthLocation(lon=site["GEOLON"] * u.deg, lat=site["GEOLAT"] * u.deg, height=site.get("ALTITUDE", 0.0) * u.m)


@contextmanager
def offline_astrometry() -> Iterator[None]:
    """Earth orientation interpolated for many times, from the bundled tables (IERS downloads are off)."""
    iers.conf.auto_download = False
    with erfa_astrom.set(ErfaAstromInterpolator(ASTROM_INTERPOLATION)):
        yield


def time_of_hour_angle(ra_deg: float, hour_angle_h: float, near: Time, location: EarthLocation) -> Time:
    """The time closest to ``near`` at which a source at ``ra_deg`` is at ``hour_angle_h`` (hours, west positive)."""
    with offline_astrometry():
        time = near
        for _ in range(2):  # the second pass absorbs the difference between mean and apparent rates
            lst = time.sidereal_time("mean", longitude=location.lon).hour
            wanted = (ra_deg / 15.0 + hour_angle_h) % 24.0
            step_h = (wanted - lst + 12.0) % 24.0 - 12.0
            time = time + step_h * SIDEREAL_HOUR_S * u.s
    return time


def radec_of_horizontal(zenith_deg: float, az_deg: float, time: Time, location: EarthLocation) -> tuple[float, float]:
    """RA and Dec (deg) of the direction at ``zenith_deg``, ``az_deg`` at ``time``."""
    with offline_astrometry():
        frame = AltAz(obstime=time, location=location)
        icrs = SkyCoord(az=az_deg * u.deg, alt=(90.0 - zenith_deg) * u.deg, frame=frame).icrs
    return float(icrs.ra.deg), float(icrs.dec.deg)


def pointing_altaz(ra_deg: float, dec_deg: float, times: Time, location: EarthLocation) -> SkyCoord:
    """The Alt/Az of a pointing that tracks ``ra_deg``, ``dec_deg``, at ``times``, as gammapy computes it."""
    from gammapy.data import FixedPointingInfo

    with offline_astrometry():
        return FixedPointingInfo(fixed_icrs=SkyCoord(ra_deg * u.deg, dec_deg * u.deg)).get_altaz(times, location)


def fov_frame(
    alignment: str, ra_deg: float, dec_deg: float, times: Time, location: EarthLocation
) -> FoVAltAzFrame | FoVICRSFrame:
    """gammapy's FoV frame of a pointing at ``times``: `FoVAltAzFrame` (ALTAZ) or `FoVICRSFrame` (RADEC)."""
    from gammapy.utils.coordinates import FoVAltAzFrame, FoVICRSFrame

    if alignment == "RADEC":
        return FoVICRSFrame(origin=SkyCoord(ra_deg * u.deg, dec_deg * u.deg))
    if alignment != "ALTAZ":
        raise ValueError(f"unknown FoV alignment {alignment!r}")
    origin = pointing_altaz(ra_deg, dec_deg, times, location)
    return FoVAltAzFrame(origin=origin, location=location, obstime=times)


def fov_to_radec(
    fov_lon_deg: ArrayLike,
    fov_lat_deg: ArrayLike,
    times: Time,
    ra_deg: float,
    dec_deg: float,
    location: EarthLocation,
    alignment: str,
) -> tuple[np.ndarray, np.ndarray]:
    """RA and Dec (deg) of FoV coordinates seen at ``times`` (one per coordinate) from the pointing."""
    frame = fov_frame(alignment, ra_deg, dec_deg, times, location)
    with offline_astrometry():
        icrs = SkyCoord(
            fov_lon=np.asarray(fov_lon_deg) * u.deg, fov_lat=np.asarray(fov_lat_deg) * u.deg, frame=frame
        ).icrs
    return icrs.ra.deg, icrs.dec.deg


def radec_to_fov(
    ra: ArrayLike, dec: ArrayLike, times: Time, ra_deg: float, dec_deg: float, location: EarthLocation, alignment: str
) -> tuple[np.ndarray, np.ndarray]:
    """FoV lon and lat (deg) of sky positions ``ra``, ``dec`` (deg) seen at ``times`` from the pointing.

    ``times`` is one time (every position then) or one per position.
    """
    frame = fov_frame(alignment, ra_deg, dec_deg, times, location)
    with offline_astrometry():
        fov = SkyCoord(np.asarray(ra) * u.deg, np.asarray(dec) * u.deg).transform_to(frame)
    return fov.fov_lon.wrap_at(180 * u.deg).deg, fov.fov_lat.deg
