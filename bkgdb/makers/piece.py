"""Background pieces: one run's exclusion-corrected histograms for one binning.

A piece holds the counts of the events kept after exclusion per (energy, offset) bin, the events
excluded, and the accepted exposure per offset bin, ``ontime * fraction``, in seconds. Pieces of
many runs are summed exactly (integers and seconds) before any division, so a background model is
``sum(counts) / (sum(exposure) * dE * dOmega)``.
"""

import logging
import zlib
from dataclasses import dataclass, field

import numpy as np

from bkgdb.makers.exclusion import ExclusionFinder, unit_vectors

__all__ = ["BackgroundPiece", "PieceMaker", "encode_array", "decode_array", "COUNTS_DTYPE", "EXPOSURE_DTYPE",
           "EXPOSURE_METHODS"]

log = logging.getLogger(__name__)

#: How the accepted exposure of a run is estimated (see `PieceMaker.make_fraction`).
EXPOSURE_METHODS = ("geometric", "counts-ratio")
COUNTS_DTYPE = "<i4"
EXPOSURE_DTYPE = "<f8"
#: Added to both counts of the counts-ratio method, as the seed tool did, so empty bins give 1.
COUNTS_RATIO_EPSILON = 1e-9


def encode_array(array, dtype):
    """Little-endian bytes of ``array`` as ``dtype``, zlib-compressed."""
    return zlib.compress(np.ascontiguousarray(array, dtype=dtype).tobytes(), 6)


def decode_array(blob, dtype, shape):
    return np.frombuffer(zlib.decompress(blob), dtype=dtype).reshape(shape)


@dataclass
class BackgroundPiece:
    """One run's contribution to a background model, for one binning and exclusion setting.

    Attributes
    ----------
    counts : `~numpy.ndarray`
        Kept events per (energy, offset) bin, integers.
    excluded_counts : `~numpy.ndarray`
        Events in the binning's range that fell in an exclusion region.
    exposure_s : `~numpy.ndarray`
        Accepted exposure per offset bin: ontime times the fraction kept, in s.
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
    regions: list = field(default_factory=list)

    @property
    def fraction(self):
        """Accepted fraction of each offset bin's exposure."""
        return self.exposure_s / self.ontime_s if self.ontime_s else np.zeros_like(self.exposure_s)

    @property
    def n_events(self):
        """All events in the binning's range, kept or excluded."""
        return int(self.counts.sum() + self.excluded_counts.sum())


class PieceMaker:
    """Makes the piece of a run for one binning and one exclusion setting.

    Parameters
    ----------
    binning : `~bkgdb.config.Binning`
        Energy and offset bins.
    exclusion : `~bkgdb.config.ExclusionSettings`
        Regions and the exposure-correction method, one of ``available_methods``.
    finder : `~bkgdb.makers.exclusion.ExclusionFinder`, optional
        Reused between makers of the same setting. Default makes one.
    """

    available_methods = EXPOSURE_METHODS

    def __init__(self, binning, exclusion, finder=None):
        if exclusion.exposure_method not in self.available_methods:
            raise ValueError(f"exposure method {exclusion.exposure_method!r} is not one of "
                             f"{', '.join(self.available_methods)}")
        self.binning = binning
        self.exclusion = exclusion
        self.finder = finder or ExclusionFinder(exclusion)

    def run(self, ra_deg, dec_deg, energy_tev, pointing_ra_deg, pointing_dec_deg, ontime_s, livetime_s=None):
        """The piece of one run.

        Parameters
        ----------
        ra_deg, dec_deg, energy_tev : `~numpy.ndarray`
            Event directions (ICRS, deg) and reconstructed energies (TeV).
        pointing_ra_deg, pointing_dec_deg : float
            The run's pointing.
        ontime_s, livetime_s : float
            The run's ontime and livetime in s.

        Returns
        -------
        piece : `BackgroundPiece`
        """
        regions = self.make_regions(pointing_ra_deg, pointing_dec_deg)
        vectors = unit_vectors(ra_deg, dec_deg)
        pointing = unit_vectors(pointing_ra_deg, pointing_dec_deg)
        offset = np.degrees(np.arccos(np.clip(vectors @ pointing, -1.0, 1.0)))
        excluded = self.finder.excluded(vectors, regions, pointing_ra_deg, pointing_dec_deg)
        kept_counts = self.make_counts(energy_tev[~excluded], offset[~excluded])
        excluded_counts = self.make_counts(energy_tev[excluded], offset[excluded])
        fraction = self.make_fraction(pointing_ra_deg, pointing_dec_deg, regions, offset, excluded)
        return BackgroundPiece(
            counts=kept_counts, excluded_counts=excluded_counts, exposure_s=float(ontime_s) * fraction,
            ontime_s=float(ontime_s), livetime_s=None if livetime_s is None else float(livetime_s),
            regions=[region.as_dict() for region in regions] + [shape.as_dict() for shape in self.finder.shapes],
        )

    def make_regions(self, ra_deg, dec_deg):
        return self.finder.regions(ra_deg, dec_deg, self.exclusion.search_radius_for(self.binning))

    def make_counts(self, energy_tev, offset_deg):
        counts, _, _ = np.histogram2d(
            np.asarray(energy_tev, float), offset_deg, bins=(self.binning.energy_edges, self.binning.offset_edges)
        )
        return counts.astype(np.int64)

    def make_fraction(self, ra_deg, dec_deg, regions, offset_deg, excluded):
        """Accepted fraction per offset bin, by the configured method."""
        if self.exclusion.exposure_method == "counts-ratio":
            # The seed tool's estimate: kept / all events per offset bin, events of any energy.
            edges = self.binning.offset_edges
            kept = np.histogram(offset_deg[~excluded], bins=edges)[0] + COUNTS_RATIO_EPSILON
            every = np.histogram(offset_deg, bins=edges)[0] + COUNTS_RATIO_EPSILON
            return kept / every
        if not regions and not self.finder.shapes:
            return np.ones(self.binning.off_bins)
        return self.finder.outside_fraction(ra_deg, dec_deg, self.binning.offset_edges, regions)
