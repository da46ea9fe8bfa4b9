"""Directions on the sphere as unit vectors, where every containment test of bkgdb is made.

A point lies in a circle when its angular distance to the centre, the arc-cosine of the dot
product of their unit vectors, is at most the radius: exact anywhere on the sky, poles and the
RA wrap included.
"""

import numpy as np

__all__ = ["unit_vectors", "angular_distance_deg"]


def unit_vectors(lon_deg: np.ndarray | float, lat_deg: np.ndarray | float) -> np.ndarray:
    """Cartesian unit vectors (..., 3) of spherical positions (RA/Dec, or FoV lon/lat) in deg."""
    lon, lat = np.radians(np.asarray(lon_deg, float)), np.radians(np.asarray(lat_deg, float))
    cos_lat = np.cos(lat)
    return np.stack([cos_lat * np.cos(lon), cos_lat * np.sin(lon), np.sin(lat)], axis=-1)


def angular_distance_deg(vectors: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Angle in deg between unit vectors (..., 3) and one unit vector (3,)."""
    return np.degrees(np.arccos(np.clip(vectors @ centre, -1.0, 1.0)))
