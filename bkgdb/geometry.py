"""The geometry of a background piece: energy bins times FoV offset rings (2D) or FoV pixels (3D).

One `PieceGeometry` describes the bins of a piece, of the sum of pieces and of the written model,
so the rest of bkgdb never needs to know which kind it holds. Arrays are laid out as gammapy lays
out its background IRFs: ``(energy, offset)`` for ``Background2D`` and ``(energy, fov_lon,
fov_lat)`` for ``Background3D``. Counts have the full shape; exposures (time, independent of
energy) have the spatial shape only.

FoV coordinates follow GADF and gammapy (`gammapy.utils.coordinates.FoVAltAzFrame`,
`~gammapy.utils.coordinates.FoVICRSFrame`): spherical coordinates around the pointing, fov_lon
increasing toward decreasing azimuth (ALTAZ) or right ascension (RADEC), fov_lat toward increasing
altitude or declination.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from gammapy.irf import Background2D, Background3D
    from gammapy.maps import MapAxes
    from numpy.typing import ArrayLike

__all__ = ["PieceGeometry", "FOV_ALIGNMENTS", "log_centres"]

#: The FoV alignments of 3D geometries, as gammapy's ``FoVAlignment`` and the ``FOVALIGN`` keyword name them.
FOV_ALIGNMENTS = ("ALTAZ", "RADEC")


def log_centres(edges: np.ndarray) -> np.ndarray:
    """Geometric centres of log-spaced bins (energy), where gammapy places a bin's value."""
    edges = np.asarray(edges, float)
    return np.sqrt(edges[:-1] * edges[1:])


def _edges(values: ArrayLike, name: str) -> np.ndarray:
    edges = np.asarray(values, dtype=float)
    if edges.ndim != 1 or len(edges) < 2 or not np.all(np.diff(edges) > 0) or not np.all(np.isfinite(edges)):
        raise ValueError(f"{name} edges must be at least two increasing finite numbers")
    edges.flags.writeable = False
    return edges


@dataclass(frozen=True, eq=False)
class PieceGeometry:
    """Energy bins (TeV) times either offset rings or FoV lon/lat pixels (deg).

    Make one with `PieceGeometry.offset` or `PieceGeometry.fov`.

    Attributes
    ----------
    energy_edges : `~numpy.ndarray`
        Reconstructed-energy bin edges in TeV.
    offset_edges : `~numpy.ndarray` or None
        FoV offset ring edges in deg (2D geometries).
    fov_lon_edges, fov_lat_edges : `~numpy.ndarray` or None
        FoV pixel edges in deg (3D geometries).
    alignment : str or None
        ``"ALTAZ"`` or ``"RADEC"`` for 3D geometries.
    """

    energy_edges: np.ndarray
    offset_edges: np.ndarray | None = None
    fov_lon_edges: np.ndarray | None = None
    fov_lat_edges: np.ndarray | None = None
    alignment: str | None = None

    @classmethod
    def offset(cls, energy_edges: ArrayLike, offset_edges: ArrayLike) -> PieceGeometry:
        """A 2D geometry: energy times rings of FoV offset."""
        offset = _edges(offset_edges, "offset")
        if offset[0] < 0:
            raise ValueError("offset edges must not be negative")
        return cls(_edges(energy_edges, "energy"), offset_edges=offset)

    @classmethod
    def fov(
        cls, energy_edges: ArrayLike, fov_lon_edges: ArrayLike, fov_lat_edges: ArrayLike, alignment: str = "ALTAZ"
    ) -> PieceGeometry:
        """A 3D geometry: energy times FoV lon/lat pixels in the given alignment."""
        if alignment not in FOV_ALIGNMENTS:
            raise ValueError(f"FoV alignment must be one of {', '.join(FOV_ALIGNMENTS)}, got {alignment!r}")
        return cls(
            _edges(energy_edges, "energy"),
            fov_lon_edges=_edges(fov_lon_edges, "fov_lon"),
            fov_lat_edges=_edges(fov_lat_edges, "fov_lat"),
            alignment=alignment,
        )

    @classmethod
    def of(cls, binning: Any) -> PieceGeometry:
        """The geometry of a config binning (its ``geometry``), or ``binning`` itself if it is one."""
        if isinstance(binning, cls):
            return binning
        geometry = getattr(binning, "geometry", None)
        if not isinstance(geometry, cls):
            raise TypeError(f"{type(binning).__name__} has no piece geometry")
        return geometry

    @property
    def is_3d(self) -> bool:
        return self.offset_edges is None

    @property
    def _offset(self) -> np.ndarray:
        if self.offset_edges is None:
            raise ValueError("a 3D geometry has no offset rings")
        return self.offset_edges

    @property
    def _lon_lat(self) -> tuple[np.ndarray, np.ndarray]:
        if self.fov_lon_edges is None or self.fov_lat_edges is None:
            raise ValueError("a 2D geometry has no FoV pixels")
        return self.fov_lon_edges, self.fov_lat_edges

    @property
    def kind(self) -> str:
        """``"2d"`` or ``"3d"``, as configs and the command line say it."""
        return "3d" if self.is_3d else "2d"

    @property
    def n_energy(self) -> int:
        return len(self.energy_edges) - 1

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Shape of an exposure array: ``(n_offset,)`` or ``(n_lon, n_lat)``."""
        if self.is_3d:
            lon, lat = self._lon_lat
            return (len(lon) - 1, len(lat) - 1)
        return (len(self._offset) - 1,)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of a counts or rate array: energy first."""
        return (self.n_energy, *self.spatial_shape)

    @property
    def energy_centres(self) -> np.ndarray:
        """Log centres of the energy bins in TeV."""
        return log_centres(self.energy_edges)

    @property
    def energy_width_mev(self) -> np.ndarray:
        return np.diff(self.energy_edges) * 1e6

    @property
    def offset_centres(self) -> np.ndarray:
        """Centres of the offset rings in deg (2D)."""
        edges = self._offset
        return 0.5 * (edges[:-1] + edges[1:])

    @property
    def fov_centres(self) -> tuple[np.ndarray, np.ndarray]:
        """fov_lon and fov_lat of every pixel centre in deg, each of the spatial shape (3D)."""
        lon_edges, lat_edges = self._lon_lat
        lon = 0.5 * (lon_edges[:-1] + lon_edges[1:])
        lat = 0.5 * (lat_edges[:-1] + lat_edges[1:])
        lon_grid, lat_grid = np.meshgrid(lon, lat, indexing="ij")
        return lon_grid, lat_grid

    @property
    def spatial_offset_deg(self) -> np.ndarray:
        """Angular distance of each spatial bin's centre from the FoV centre in deg, of the spatial shape."""
        if not self.is_3d:
            return self.offset_centres
        lon, lat = np.radians(self.fov_centres)
        return np.degrees(np.arccos(np.clip(np.cos(lon) * np.cos(lat), -1.0, 1.0)))

    @property
    def solid_angle_sr(self) -> np.ndarray:
        """Solid angle of each spatial bin on the sphere, of the spatial shape.

        Offset rings: 2 pi (cos r_lo - cos r_hi). FoV pixels: d(lon) (sin lat_hi - sin lat_lo),
        exact for pixels bounded by meridians and parallels of the FoV frame.
        """
        if not self.is_3d:
            edges = np.radians(self._offset)
            return 2 * np.pi * (np.cos(edges[:-1]) - np.cos(edges[1:]))
        lon, lat = (np.radians(edges) for edges in self._lon_lat)
        return np.outer(np.diff(lon), np.diff(np.sin(lat)))

    def denominator(self, exposure_s: np.ndarray) -> np.ndarray:
        """Exposure x energy width x solid angle per bin in s MeV sr, of the full shape."""
        spatial = np.asarray(exposure_s, float) * self.solid_angle_sr
        return self.energy_width_mev.reshape((-1,) + (1,) * len(self.spatial_shape)) * spatial[np.newaxis]

    def histogram(self, energy_tev: np.ndarray, *spatial_deg: np.ndarray) -> np.ndarray:
        """Counts of events per bin (int64): energies and offsets (2D) or fov_lon, fov_lat (3D) in deg."""
        edges = [self.energy_edges, *self.spatial_edges]
        if len(spatial_deg) != len(edges) - 1:
            raise ValueError(f"a {self.kind} geometry bins energy and {len(edges) - 1} spatial coordinate(s)")
        sample = np.stack([np.asarray(energy_tev, float), *(np.asarray(c, float) for c in spatial_deg)], axis=-1)
        counts, _ = np.histogramdd(sample.reshape(-1, len(edges)), bins=edges)
        return counts.astype(np.int64)

    @property
    def spatial_edges(self) -> list[np.ndarray]:
        return list(self._lon_lat) if self.is_3d else [self._offset]

    @property
    def max_offset_deg(self) -> float:
        """The largest angular distance from the FoV centre any bin reaches."""
        if not self.is_3d:
            return float(self._offset[-1])
        lon, lat = (np.radians(np.abs(edges).max()) for edges in self._lon_lat)
        return float(np.degrees(np.arccos(np.cos(lon) * np.cos(lat))))

    def axes(self) -> MapAxes:
        """The gammapy `~gammapy.maps.MapAxes` of a background IRF on this geometry."""
        from astropy import units as u
        from gammapy.maps import MapAxes, MapAxis

        energy = MapAxis.from_energy_edges(self.energy_edges * u.TeV, name="energy")
        if not self.is_3d:
            return MapAxes([energy, MapAxis.from_edges(self._offset * u.deg, name="offset")])
        lon, lat = self._lon_lat
        return MapAxes(
            [energy, MapAxis.from_edges(lon * u.deg, name="fov_lon"), MapAxis.from_edges(lat * u.deg, name="fov_lat")]
        )

    def to_irf(self, rate: np.ndarray) -> Background2D | Background3D:
        """A gammapy ``Background2D`` or ``Background3D`` of ``rate`` in s-1 MeV-1 sr-1."""
        from gammapy.irf import Background2D, Background3D

        data = np.asarray(rate, dtype=float)
        if data.shape != self.shape:
            raise ValueError(f"rate of shape {data.shape} does not fit the geometry's {self.shape}")
        if not self.is_3d:
            return Background2D(axes=self.axes(), data=data, unit="s-1 MeV-1 sr-1")
        return Background3D(axes=self.axes(), data=data, unit="s-1 MeV-1 sr-1", fov_alignment=self.alignment)

    def describe(self) -> str:
        """One line for tables and logs."""
        energy = f"{self.energy_edges[0]:g}-{self.energy_edges[-1]:g} TeV x {self.n_energy}"
        if not self.is_3d:
            offset = self._offset
            return f"{energy}, offset {offset[0]:g}-{offset[-1]:g} deg x {len(offset) - 1}"
        lon, lat = self._lon_lat
        return (
            f"{energy}, FoV {self.alignment} lon {lon[0]:g}..{lon[-1]:g} x {len(lon) - 1}, "
            f"lat {lat[0]:g}..{lat[-1]:g} x {len(lat) - 1} deg"
        )
