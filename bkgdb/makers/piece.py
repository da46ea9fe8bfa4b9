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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bkgdb.geometry import PieceGeometry
from bkgdb.makers.exclusion import ExclusionFinder, ExclusionRegion, remember
from bkgdb.makers.fov import AltAzTrack, RunClock, altaz_track, fov_outside_fraction
from bkgdb.makers.sphere import fov_matrix, lon_lat_deg, unit_vectors

__all__ = [
    "BackgroundPiece",
    "EncodedPiece",
    "PieceMaker",
    "RunClock",
    "encode_array",
    "decode_array",
    "stored_payloads",
    "counts_dtype",
    "EXPOSURE_DTYPE",
    "EXPOSURE_METHODS",
]

log = logging.getLogger(__name__)

#: How the accepted exposure of a run is estimated (see `PieceMaker.make_fraction`).
EXPOSURE_METHODS = ("geometric", "counts-ratio")
#: Counts are stored in the smallest of these that holds them (`counts_dtype`).
COUNTS_DTYPES = ("<u1", "<u2", "<i4", "<i8")
EXPOSURE_DTYPE = "<f8"
#: Added to both counts of the counts-ratio method, as the seed tool did, so empty bins give 1.
COUNTS_RATIO_EPSILON = 1e-9


#: Arrays up to this many bytes that are compressed (excluded counts, and counts or exposure from
#: `STORED_MAX_BYTES` up) use zlib's fixed Huffman code: for a few hundred bytes, building the
#: dynamic code dominates decompression (twice as fast for 16 % more bytes). Larger (3D) arrays
#: gain nothing from it.
FIXED_CODE_MAX_BYTES = 4096
#: The arrays every build reads (counts and exposure) are not compressed up to this many bytes: the
#: zlib stream holds them as they are (one stored block, with its checksum), which decodes four
#: times faster than the fixed Huffman code (0.34 against 1.35 us for a 2D piece's 400 bytes of
#: counts) for about twice the bytes. Excluded counts, read for plots and checks, stay compressed.
STORED_MAX_BYTES = 2048


def encode_array(array: np.ndarray, dtype: str, store_small: bool = False) -> bytes:
    """Little-endian bytes of ``array`` as ``dtype`` in a zlib stream (any zlib decoder reads them).

    Compressed, or, with ``store_small``, stored as they are up to `STORED_MAX_BYTES`.
    """
    raw = np.ascontiguousarray(array, dtype=dtype).tobytes()
    if store_small and len(raw) <= STORED_MAX_BYTES:
        return zlib.compress(raw, 0)
    if len(raw) > FIXED_CODE_MAX_BYTES:
        return zlib.compress(raw, 6)
    compressor = zlib.compressobj(6, zlib.DEFLATED, zlib.MAX_WBITS, 9, zlib.Z_FIXED)
    return compressor.compress(raw) + compressor.flush()


def counts_dtype(*arrays: np.ndarray) -> str:
    """The smallest of `COUNTS_DTYPES` that holds every value of ``arrays`` (counts: integers).

    A 2D piece's counts mostly fit in 16 bits and a 3D piece's in 8: half or a quarter of the bytes
    to store and read, and compressed 3D counts decompress four times faster than as 32-bit ones.
    The dtype is stored with each piece, so pieces of one setting may differ
    (`~bkgdb.store.pieces.stacked_array` reads them together).
    """
    low = min((int(array.min()) for array in arrays if array.size), default=0)
    high = max((int(array.max()) for array in arrays if array.size), default=0)
    for dtype in COUNTS_DTYPES:
        limits = np.iinfo(np.dtype(dtype))
        if limits.min <= low and high <= limits.max:
            return dtype
    raise ValueError(f"counts from {low} to {high} do not fit in 64-bit integers")


def decode_array(blob: bytes, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(zlib.decompress(blob), dtype=dtype).reshape(shape)


#: The modulus of zlib's Adler-32 checksum (the largest prime below 2**16).
ADLER_MODULUS = 65521
#: Bytes around the data of a zlib stream holding it as one stored block: the stream's header (2),
#: the block's (5: final and stored, the length and its complement) and the checksum (4).
STORED_FRAME_BYTES = 11


def stored_payloads(blobs: Sequence[bytes]) -> np.ndarray | None:
    """The data of zlib streams that each hold it as one stored block of the same length, checked.

    That is how `encode_array` stores small arrays. The streams' headers and Adler-32 checksums are
    verified all at once, instead of a `zlib.decompress` per stream, which for a thousand 2D pieces
    cost most of their decoding.

    Returns
    -------
    payloads : `~numpy.ndarray` or None
        The data, bytes of shape (len(blobs), length); None when a stream is not such a block or
        the streams differ in length (decode those with zlib, which reports what is wrong) or a
        checksum does not match.
    """
    # A final stored block's header byte is 1: compressed streams are left before being joined.
    if not blobs or blobs[0][2:3] != b"\x01":
        return None
    joined = b"".join(blobs)
    if len(joined) % len(blobs):
        return None
    length = len(joined) // len(blobs) - STORED_FRAME_BYTES
    if not 0 <= length <= 0xFFFF:
        return None
    streams = np.frombuffer(joined, np.uint8).reshape(len(blobs), length + STORED_FRAME_BYTES)
    # zlib's header at level 0, then a final stored block of ``length`` bytes (LEN, ~LEN little-endian).
    frame = (
        zlib.compress(b"", 0)[:2] + bytes([1]) + length.to_bytes(2, "little") + (0xFFFF - length).to_bytes(2, "little")
    )
    if not (streams[:, : len(frame)] == np.frombuffer(frame, np.uint8)).all():
        return None
    data = streams[:, len(frame) : len(frame) + length].copy()
    # Adler-32: A = 1 + sum of the bytes, B = sum of the A after each byte = length + sum of
    # (length - i) * byte i; both mod ADLER_MODULUS. Sums of bytes are exact in float64 below 2**53.
    weights = np.stack([np.ones(length), np.arange(length, 0, -1, dtype=np.float64)], axis=1)
    sums = (data.astype(np.float64) @ weights).astype(np.int64)
    adler = ((length + sums[:, 1]) % ADLER_MODULUS) << 16 | (1 + sums[:, 0]) % ADLER_MODULUS
    stored = np.ascontiguousarray(streams[:, -4:]).view(">u4").ravel()
    return data if np.array_equal(adler, stored) else None


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


@dataclass(frozen=True)
class EncodedPiece:
    """A `BackgroundPiece` as stored: its arrays encoded (`encode_array`), the rest as it is.

    Made where the piece is made (a worker process): what travels to the process that writes the
    catalogue is then a few kB instead of the arrays (about 200 kB for a 3D piece, pickled), and
    the writer compresses nothing. The arrays are decoded again on access.
    """

    shape: tuple[int, ...]
    counts_dtype: str
    encoded_counts: bytes
    encoded_excluded_counts: bytes
    exposure_dtype: str
    encoded_exposure: bytes
    ontime_s: float
    livetime_s: float | None
    n_kept: int
    n_excluded: int
    regions: list[dict]

    @classmethod
    def of(cls, piece: BackgroundPiece) -> EncodedPiece:
        """The encoding of ``piece``: counts in the smallest integer type that holds them (`counts_dtype`)."""
        dtype = counts_dtype(piece.counts, piece.excluded_counts)
        return cls(
            shape=tuple(int(n) for n in piece.counts.shape),
            counts_dtype=dtype,
            encoded_counts=encode_array(piece.counts, dtype, store_small=True),
            encoded_excluded_counts=encode_array(piece.excluded_counts, dtype),
            exposure_dtype=EXPOSURE_DTYPE,
            encoded_exposure=encode_array(piece.exposure_s, EXPOSURE_DTYPE, store_small=True),
            ontime_s=piece.ontime_s,
            livetime_s=piece.livetime_s,
            n_kept=int(piece.counts.sum()),
            n_excluded=int(piece.excluded_counts.sum()),
            regions=piece.regions,
        )

    @property
    def counts(self) -> np.ndarray:
        return decode_array(self.encoded_counts, self.counts_dtype, self.shape)

    @property
    def excluded_counts(self) -> np.ndarray:
        return decode_array(self.encoded_excluded_counts, self.counts_dtype, self.shape)

    @property
    def exposure_s(self) -> np.ndarray:
        return decode_array(self.encoded_exposure, self.exposure_dtype, self.shape[1:])


#: Slack (deg) when choosing the events that can reach a FoV pixel.
_FOV_MARGIN_DEG = 1e-6


def _bin_index(edges: list[np.ndarray], values: list[np.ndarray]) -> np.ndarray:
    """Flat bin index (C order) of each sample, -1 outside: the bins of `numpy.histogramdd`.

    Each bin holds its lower edge; the last also holds the upper edge.
    """
    index = np.zeros(len(values[0]), dtype=np.int64)
    outside = np.zeros(len(values[0]), dtype=bool)
    for axis_edges, axis_values in zip(edges, values, strict=True):
        n_bins = len(axis_edges) - 1
        axis_index = np.searchsorted(axis_edges, axis_values, side="right") - 1
        axis_index[axis_values == axis_edges[-1]] = n_bins - 1
        outside |= (axis_index < 0) | (axis_index >= n_bins)
        index = index * n_bins + axis_index
    index[outside] = -1
    return index


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
        self._region_dicts: dict[tuple[float, float], list[dict]] = {}
        self._radec_fractions: dict[tuple, np.ndarray] = {}

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
        excluded = self.finder.excluded(vectors, regions, pointing_ra_deg, pointing_dec_deg)
        energy = np.asarray(energy_tev, float)
        track = None
        if self.geometry.is_3d:
            fov = vectors @ fov_matrix(pointing_ra_deg, pointing_dec_deg).T
            # Only events that can land in a pixel are carried into the FoV frame (x: cos of the offset).
            reach = fov[:, 0] >= np.cos(np.radians(self.geometry.max_offset_deg + _FOV_MARGIN_DEG))
            fov, energy, excluded = fov[reach], energy[reach], excluded[reach]
            if self.geometry.alignment == "ALTAZ":
                clock = clock or RunClock()
                seconds = clock.event_seconds(reach)
                track = self.make_track(clock, pointing_ra_deg, pointing_dec_deg, float(ontime_s), seconds)
                fov = track.to_altaz(fov, seconds)
            spatial: tuple[np.ndarray, ...] = lon_lat_deg(fov)
        else:
            pointing = unit_vectors(pointing_ra_deg, pointing_dec_deg)
            spatial = (np.degrees(np.arccos(np.clip(vectors @ pointing, -1.0, 1.0))),)
        index = _bin_index([self.geometry.energy_edges, *self.geometry.spatial_edges], [energy, *spatial])
        n_bins = int(np.prod(self.geometry.shape))
        kept_counts, excluded_counts = (
            np.bincount(index[(index >= 0) & (excluded == side)], minlength=n_bins).reshape(self.geometry.shape)
            for side in (False, True)
        )
        fraction = self.make_fraction(
            pointing_ra_deg,
            pointing_dec_deg,
            regions,
            spatial,
            excluded,
            clock=clock,
            ontime_s=float(ontime_s),
            track=track,
        )
        return BackgroundPiece(
            counts=kept_counts,
            excluded_counts=excluded_counts,
            exposure_s=float(ontime_s) * fraction,
            ontime_s=float(ontime_s),
            livetime_s=None if livetime_s is None else float(livetime_s),
            regions=self.region_dicts(pointing_ra_deg, pointing_dec_deg),
        )

    def make_regions(self, ra_deg: float, dec_deg: float) -> list[ExclusionRegion]:
        """The circles that reach the geometry around a pointing (the finder keeps them per pointing)."""
        return self.finder.regions(ra_deg, dec_deg, max(self.exclusion.search_radius, self.geometry.max_offset_deg))

    def region_dicts(self, ra_deg: float, dec_deg: float) -> list[dict]:
        """The regions of a pointing as a piece lists them: its circles, then the shaped regions."""
        key = (float(ra_deg), float(dec_deg))
        dicts = self._region_dicts.get(key)
        if dicts is None:
            regions = self.make_regions(ra_deg, dec_deg)
            listed = [region.as_dict() for region in regions] + [shape.as_dict() for shape in self.finder.shapes]
            dicts = remember(self._region_dicts, key, listed)
        return [dict(entry) for entry in dicts]

    def make_track(
        self, clock: RunClock, ra_deg: float, dec_deg: float, ontime_s: float, seconds: np.ndarray
    ) -> AltAzTrack:
        """The `~bkgdb.makers.fov.AltAzTrack` of a run over its ontime and its events' times (s after the start)."""
        first = min(0.0, float(seconds.min(initial=0.0)))
        last = max(ontime_s, float(seconds.max(initial=0.0)))
        return altaz_track(clock, ra_deg, dec_deg, first, last, self.geometry.max_offset_deg + _FOV_MARGIN_DEG)

    def make_fraction(
        self,
        ra_deg: float,
        dec_deg: float,
        regions: list[ExclusionRegion],
        spatial_deg: tuple[np.ndarray, ...],
        excluded: np.ndarray,
        clock: RunClock | None = None,
        ontime_s: float | None = None,
        track: AltAzTrack | None = None,
    ) -> np.ndarray:
        """Accepted fraction per spatial bin, by the configured method.

        RADEC fractions depend on the pointing alone: runs on one pointing share them.
        """
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
        if self.geometry.alignment == "RADEC":
            key = (float(ra_deg), float(dec_deg), tuple(regions))
            fraction = self._radec_fractions.get(key)
            if fraction is None:
                fraction = fov_outside_fraction(self.geometry, ra_deg, dec_deg, regions, self.finder)
                fraction.flags.writeable = False
                remember(self._radec_fractions, key, fraction)
            return fraction.copy()
        if self.geometry.is_3d:
            return fov_outside_fraction(
                self.geometry, ra_deg, dec_deg, regions, self.finder, clock, ontime_s, track=track
            )
        return self.finder.outside_fraction(ra_deg, dec_deg, edges[0], regions)
