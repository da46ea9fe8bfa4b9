"""Background pieces: one run's exclusion-corrected histograms for one binning.

A piece holds the counts of the events kept after exclusion per bin of its geometry
(`~bkgdb.geometry.PieceGeometry`: energy x offset rings in 2D, energy x FoV lon/lat pixels in
3D), the events excluded, and the accepted exposure per spatial bin, ``ontime * fraction``, in
seconds. Pieces of many runs are summed exactly (integers and seconds) before any division, so a
background model is ``sum(counts) / (sum(exposure) * dE * dOmega)``.

The ``counts-ratio`` exposure method (kept over all events per spatial bin, events of any
energy) works on both geometries; in 3D its pixels hold few events, so it is noisier than in 2D.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bkgdb.geometry import PieceGeometry
from bkgdb.makers.exclusion import ExclusionFinder, ExclusionRegion
from bkgdb.makers.fov import RunClock, fov_outside_fraction, sky_to_fov
from bkgdb.makers.sphere import unit_vectors

__all__ = [
    "BackgroundPiece",
    "PieceMaker",
    "RunClock",
    "encode_array",
    "decode_array",
    "COUNTS_DTYPE",
    "EXPOSURE_DTYPE",
    "EXPOSURE_METHODS",
]

log = logging.getLogger(__name__)

#: How the accepted exposure of a run is estimated (see `PieceMaker.make_fraction`).
EXPOSURE_METHODS = ("geometric", "counts-ratio")
COUNTS_DTYPE = "<i4"
EXPOSURE_DTYPE = "<f8"
#: Added to both counts of the counts-ratio method, as the seed tool did, so empty bins give 1.
COUNTS_RATIO_EPSILON = 1e-9


def encode_array(array: np.ndarray, dtype: str) -> bytes:
    """Little-endian bytes of ``array`` as ``dtype``, zlib-compressed."""
    return zlib.compress(np.ascontiguousarray(array, dtype=dtype).tobytes(), 6)


def decode_array(blob: bytes, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(zlib.decompress(blob), dtype=dtype).reshape(shape)


@dataclass
class BackgroundPiece:
    """One run's contribution to a background model, for one binning and exclusion setting.

    Attributes
    ----------
    counts : `~numpy.ndarray`
        Kept events per bin of the geometry's shape, integers.
    excluded_counts : `~numpy.ndarray`
        Events in the binning's range that fell in an exclusion region.
    exposure_s : `~numpy.ndarray`
        Accepted exposure per spatial bin (the geometry's spatial shape): ontime times the
        fraction kept, in s.
    ontime_s, livetime_s : float
        The run's ontime (what gammapy multiplies a rate by) and livetime.
    regions : list of dict
        The exclusion regions applied (name, kind, ra, dec, radius).
    """

    counts: np.ndarray
    excluded_counts: np.ndarray
    exposure_s: np.ndarray
    ontime_s: float
    livetime_s: float | None
    regions: list[dict] = field(default_factory=list)

    @property
    def fraction(self) -> np.ndarray:
        """Accepted fraction of each spatial bin's exposure."""
        return self.exposure_s / self.ontime_s if self.ontime_s else np.zeros_like(self.exposure_s)

    @property
    def n_events(self) -> int:
        """All events in the binning's range, kept or excluded."""
        return int(self.counts.sum() + self.excluded_counts.sum())


#: Slack (deg) when choosing the events that can reach a FoV pixel.
_FOV_MARGIN_DEG = 1e-6


class PieceMaker:
    """Makes the piece of a run for one binning (any geometry) and one exclusion setting.

    Parameters
    ----------
    binning : `~bkgdb.config.Binning`, `~bkgdb.config.FovBinning` or `~bkgdb.geometry.PieceGeometry`
        The bins (a binning's ``geometry``).
    exclusion : `~bkgdb.config.ExclusionSettings`
        Regions and the exposure-correction method, one of ``available_methods``.
    finder : `~bkgdb.makers.exclusion.ExclusionFinder`, optional
        Reused between makers of the same setting. Default makes one.
    """

    available_methods = EXPOSURE_METHODS

    def __init__(self, binning: Any, exclusion: Any, finder: ExclusionFinder | None = None) -> None:
        if exclusion.exposure_method not in self.available_methods:
            raise ValueError(
                f"exposure method {exclusion.exposure_method!r} is not one of {', '.join(self.available_methods)}"
            )
        self.binning = binning
        self.geometry = PieceGeometry.of(binning)
        self.exclusion = exclusion
        self.finder = finder or ExclusionFinder(exclusion)

    def run(
        self,
        ra_deg: np.ndarray,
        dec_deg: np.ndarray,
        energy_tev: np.ndarray,
        pointing_ra_deg: float,
        pointing_dec_deg: float,
        ontime_s: float,
        livetime_s: float | None = None,
        clock: RunClock | None = None,
    ) -> BackgroundPiece:
        """The piece of one run.

        Parameters
        ----------
        ra_deg, dec_deg, energy_tev : `~numpy.ndarray`
            Event directions (ICRS, deg) and reconstructed energies (TeV).
        pointing_ra_deg, pointing_dec_deg : float
            The run's pointing.
        ontime_s, livetime_s : float
            The run's ontime and livetime in s.
        clock : `~bkgdb.makers.fov.RunClock`, optional
            Event times, start and observatory of the run: needed by ALTAZ 3D geometries.

        Returns
        -------
        piece : `BackgroundPiece`

        Raises
        ------
        FovError
            An ALTAZ 3D geometry and a run without event times, time reference or location.
        """
        regions = self.make_regions(pointing_ra_deg, pointing_dec_deg)
        vectors = unit_vectors(ra_deg, dec_deg)
        pointing = unit_vectors(pointing_ra_deg, pointing_dec_deg)
        offset = np.degrees(np.arccos(np.clip(vectors @ pointing, -1.0, 1.0)))
        excluded = self.finder.excluded(vectors, regions, pointing_ra_deg, pointing_dec_deg)
        energy = np.asarray(energy_tev, float)
        if self.geometry.is_3d:
            # Only events that can land in a pixel are carried into the FoV frame.
            reach = offset <= self.geometry.max_offset_deg + _FOV_MARGIN_DEG
            spatial: tuple[np.ndarray, ...] = self.make_fov_coordinates(
                np.asarray(ra_deg, float), np.asarray(dec_deg, float), reach, pointing_ra_deg, pointing_dec_deg, clock
            )
            energy, excluded = energy[reach], excluded[reach]
        else:
            spatial = (offset,)
        kept_counts = self.geometry.histogram(energy[~excluded], *(values[~excluded] for values in spatial))
        excluded_counts = self.geometry.histogram(energy[excluded], *(values[excluded] for values in spatial))
        fraction = self.make_fraction(
            pointing_ra_deg, pointing_dec_deg, regions, spatial, excluded, clock=clock, ontime_s=float(ontime_s)
        )
        return BackgroundPiece(
            counts=kept_counts,
            excluded_counts=excluded_counts,
            exposure_s=float(ontime_s) * fraction,
            ontime_s=float(ontime_s),
            livetime_s=None if livetime_s is None else float(livetime_s),
            regions=[region.as_dict() for region in regions] + [shape.as_dict() for shape in self.finder.shapes],
        )

    def make_regions(self, ra_deg: float, dec_deg: float) -> list[ExclusionRegion]:
        """The circles that reach the geometry around a pointing."""
        return self.finder.regions(ra_deg, dec_deg, max(self.exclusion.search_radius, self.geometry.max_offset_deg))

    def make_fov_coordinates(
        self,
        ra_deg: np.ndarray,
        dec_deg: np.ndarray,
        select: np.ndarray,
        pointing_ra_deg: float,
        pointing_dec_deg: float,
        clock: RunClock | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """FoV lon, lat (deg) of the selected events in the geometry's frame, each at its own time (ALTAZ)."""
        if self.geometry.alignment != "ALTAZ":
            return sky_to_fov(ra_deg[select], dec_deg[select], "RADEC", pointing_ra_deg, pointing_dec_deg)
        clock = clock or RunClock()
        return sky_to_fov(
            ra_deg[select],
            dec_deg[select],
            "ALTAZ",
            pointing_ra_deg,
            pointing_dec_deg,
            clock.event_times(select),
            clock.observatory(),
        )

    def make_counts(self, energy_tev: np.ndarray, *spatial_deg: np.ndarray) -> np.ndarray:
        """Events per bin of the geometry: offsets (2D) or FoV lon, lat (3D) in deg."""
        return self.geometry.histogram(energy_tev, *spatial_deg)

    def make_fraction(
        self,
        ra_deg: float,
        dec_deg: float,
        regions: list[ExclusionRegion],
        spatial_deg: tuple[np.ndarray, ...],
        excluded: np.ndarray,
        clock: RunClock | None = None,
        ontime_s: float | None = None,
    ) -> np.ndarray:
        """Accepted fraction per spatial bin, by the configured method."""
        edges = self.geometry.spatial_edges
        if self.exclusion.exposure_method == "counts-ratio":
            # The seed tool's estimate: kept / all events per spatial bin, events of any energy.
            def histogram(values: tuple[np.ndarray, ...]) -> np.ndarray:
                if len(values) == 1:
                    return np.histogram(values[0], bins=edges[0])[0]
                return np.histogramdd(np.stack(values, axis=-1).reshape(-1, len(edges)), bins=edges)[0]

            kept = histogram(tuple(values[~excluded] for values in spatial_deg)) + COUNTS_RATIO_EPSILON
            every = histogram(spatial_deg) + COUNTS_RATIO_EPSILON
            return kept / every
        if not regions and not self.finder.shapes:
            return np.ones(self.geometry.spatial_shape)
        if self.geometry.is_3d:
            return fov_outside_fraction(self.geometry, ra_deg, dec_deg, regions, self.finder, clock, ontime_s)
        return self.finder.outside_fraction(ra_deg, dec_deg, edges[0], regions)
