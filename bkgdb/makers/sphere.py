"""Directions on the sphere as unit vectors, where every containment test of bkgdb is made.

A point lies in a circle when its angular distance to the centre, the arc-cosine of the dot
product of their unit vectors, is at most the radius: exact anywhere on the sky, poles and the
RA wrap included.
"""

import numpy as np

__all__ = ["unit_vectors", "angular_distance_deg", "lon_lat_deg", "fov_matrix"]


def unit_vectors(lon_deg: np.ndarray | float, lat_deg: np.ndarray | float) -> np.ndarray:
    """Cartesian unit vectors (..., 3) of spherical positions (RA/Dec, or FoV lon/lat) in deg."""
    lon, lat = np.radians(np.asarray(lon_deg, float)), np.radians(np.asarray(lat_deg, float))
    cos_lat = np.cos(lat)
    return np.stack([cos_lat * np.cos(lon), cos_lat * np.sin(lon), np.sin(lat)], axis=-1)


def angular_distance_deg(vectors: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Angle in deg between unit vectors (..., 3) and one unit vector (3,)."""
    return np.degrees(np.arccos(np.clip(vectors @ centre, -1.0, 1.0)))


def lon_lat_deg(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Longitude (-180...180) and latitude in deg of vectors (..., 3), not necessarily of unit length.

    The formulas of astropy's Cartesian to spherical conversion, so positions agree with it to
    rounding.
    """
    x, y, z = vectors[..., 0], vectors[..., 1], vectors[..., 2]
    return np.degrees(np.arctan2(y, x)), np.degrees(np.arctan2(z, np.hypot(x, y)))


def fov_matrix(lon_deg: np.ndarray | float, lat_deg: np.ndarray | float) -> np.ndarray:
    """Rotation matrices (..., 3, 3) into gammapy's FoV frames centred on the given positions.

    ``fov_matrix(lon0, lat0) @ v`` are the FoV coordinates (as a vector) of the direction ``v``,
    expressed in the frame (ICRS or AltAz) of ``lon0, lat0``: the centre goes to +x, the
    latitude axis stays up and longitudes are reversed (fov_lon grows toward decreasing RA or
    azimuth), the matrix of gammapy's ``FoVICRSFrame`` and ``FoVAltAzFrame``.
    """
    lon, lat = np.radians(np.asarray(lon_deg, float)), np.radians(np.asarray(lat_deg, float))
    cos_lon, sin_lon, cos_lat, sin_lat = np.cos(lon), np.sin(lon), np.cos(lat), np.sin(lat)
    zero = np.zeros_like(lon)
    rows = [
        [cos_lat * cos_lon, cos_lat * sin_lon, sin_lat],
        [sin_lon, -cos_lon, zero],
        [-sin_lat * cos_lon, -sin_lat * sin_lon, cos_lat],
    ]
    return np.stack([np.stack(row, axis=-1) for row in rows], axis=-2)
