"""Binnings of background pieces: energy x FoV offset (`Binning`, 2D) or energy x FoV pixels (`FovBinning`, 3D).

A binning is identified by the hash of its parameters: pieces stored for it are found again by
that hash, so the parameters of a 2D binning must never change. Each binning gives the
`~bkgdb.geometry.PieceGeometry` the rest of bkgdb works with.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

import numpy as np

from bkgdb.config.values import ConfigError, ConfigWarning, check_keys, content_hash, number
from bkgdb.geometry import FOV_ALIGNMENTS, PieceGeometry

__all__ = [
    "Binning",
    "FovBinning",
    "AnyBinning",
    "binning_from_dict",
    "binning_from_params",
    "derive_fov_binning",
    "MAX_ENERGY_BINS",
    "MAX_OFFSET_BINS",
    "MAX_FOV_BINS",
    "MAX_BINS_PER_PIECE",
    "MAX_BINS_PER_3D_PIECE",
    "ENERGY_LIMITS_TEV",
    "MAX_FOV_DEG",
]

#: Limits of a binning: bins per axis and per piece (a piece's arrays are stored per run), and the
#: energy range in TeV that any IACT binning fits in.
MAX_ENERGY_BINS = 1000
MAX_OFFSET_BINS = 1000
MAX_FOV_BINS = 1000
MAX_BINS_PER_PIECE = 100_000
#: A 3D piece stores one count per bin and run (8 bytes): 2,000,000 bins are 16 MB per run, already
#: 16 GB for an archive of 1000 runs, and hold e.g. 50 energies x 200 x 200 pixels of 0.025 deg,
#: finer than any IACT's angular resolution.
MAX_BINS_PER_3D_PIECE = 2_000_000
ENERGY_LIMITS_TEV = (1e-4, 1e4)
#: Largest half-width of a square FoV (deg): FoV latitudes end at the pole of the FoV frame.
MAX_FOV_DEG = 90.0
#: Narrowest offset ring or FoV pixel (deg), far below any IACT's angular resolution: narrower ones
#: (off_max: 1e-320) have solid angles that round to 0, and a rate divided by them is infinite.
MIN_BIN_WIDTH_DEG = 1e-4

ENERGY_KEYS = ("e_min", "e_max", "e_bins")
OFFSET_KEYS = ("off_min", "off_max", "off_bins")
FOV_KEYS = ("fov_max", "fov_bins", "fov_alignment")


def _check_energy(e_min: float, e_max: float, e_bins: int) -> None:
    low, high = ENERGY_LIMITS_TEV
    if not low <= e_min < e_max <= high:
        raise ConfigError(
            f"binning needs {low:g} <= e_min < e_max <= {high:g} (TeV), got e_min={e_min:g}, e_max={e_max:g}"
        )
    if e_bins > MAX_ENERGY_BINS:
        raise ConfigError(f"binning.e_bins must be at most {MAX_ENERGY_BINS}, got {e_bins}")


def _labelled(section: str, make: Any, **values: Any) -> Any:
    """``make(**values)``, its errors naming the binning's place in the file (``binning[1]``) as given."""
    try:
        return make(**values)
    except ConfigError as exc:
        message = str(exc)
        if section == "binning" or not message.startswith("binning"):
            raise
        raise ConfigError(section + message[len("binning") :]) from None


def _energy_edges(e_min: float, e_max: float, e_bins: int) -> np.ndarray:
    return np.geomspace(e_min, e_max, e_bins + 1)


class _HashedEnergyBins:
    """What both binnings share: the hash of their parameters and log-spaced energy edges."""

    e_min: float
    e_max: float
    e_bins: int

    @property
    def params(self) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def hash(self) -> str:
        return content_hash(self.params)

    @property
    def energy_edges(self) -> np.ndarray:
        """Energy bin edges in TeV."""
        return _energy_edges(self.e_min, self.e_max, self.e_bins)


def _energy_values(cls: type[AnyBinning], values: Any, section: str, defaults: AnyBinning) -> dict[str, Any]:
    """The energy keys of a binning's config mapping, checked; the mapping itself checked first."""
    if not isinstance(values, dict):
        raise ConfigError(f"{section} must be a mapping of {', '.join(cls.KEYS)}")
    check_keys(section, values, cls.KEYS)
    return {
        "e_min": number(section, "e_min", values.get("e_min", defaults.e_min), minimum=0, strictly=True),
        "e_max": number(section, "e_max", values.get("e_max", defaults.e_max), minimum=0, strictly=True),
        "e_bins": number(
            section, "e_bins", values.get("e_bins", defaults.e_bins), int, minimum=1, maximum=MAX_ENERGY_BINS
        ),
    }


@dataclass(frozen=True)
class Binning(_HashedEnergyBins):
    """Energy (log-spaced, TeV) times FoV offset (linear, deg) bins of a 2D background piece."""

    e_min: float = 0.1
    e_max: float = 100.0
    e_bins: int = 20
    off_min: float = 0.0
    off_max: float = 2.5
    off_bins: int = 10

    KEYS: ClassVar[tuple[str, ...]] = ENERGY_KEYS + OFFSET_KEYS
    is_3d: ClassVar[bool] = False
    kind: ClassVar[str] = "2d"

    def __post_init__(self) -> None:
        # One spelling per value, so 100 and 100.0 give the same hash.
        for key in self.KEYS:
            kind = int if key.endswith("bins") else float
            object.__setattr__(self, key, number("binning", key, getattr(self, key), kind))
        _check_energy(self.e_min, self.e_max, self.e_bins)
        if not 0 <= self.off_min < self.off_max <= 180:
            raise ConfigError(
                f"binning needs 0 <= off_min < off_max <= 180 (deg), got {self.off_min:g}, {self.off_max:g}"
            )
        if self.e_bins < 1 or self.off_bins < 1:
            raise ConfigError("binning needs at least one energy and one offset bin")
        if self.off_bins > MAX_OFFSET_BINS:
            raise ConfigError(f"binning.off_bins must be at most {MAX_OFFSET_BINS}, got {self.off_bins}")
        if (self.off_max - self.off_min) / self.off_bins < MIN_BIN_WIDTH_DEG:
            raise ConfigError(
                f"binning's offset bins would be narrower than {MIN_BIN_WIDTH_DEG:g} deg "
                f"({self.off_min:g} to {self.off_max:g} deg in {self.off_bins})"
            )
        if self.e_bins * self.off_bins > MAX_BINS_PER_PIECE:
            raise ConfigError(
                f"binning has {self.e_bins} x {self.off_bins} = {self.e_bins * self.off_bins} bins; "
                f"at most {MAX_BINS_PER_PIECE} per piece"
            )

    @classmethod
    def from_dict(cls, values: Any, section: str = "binning") -> Binning:
        """A 2D binning from a config mapping; missing keys take the defaults."""
        defaults = cls()
        binning = _labelled(
            section,
            cls,
            **_energy_values(cls, values, section, defaults),
            off_min=number(section, "off_min", values.get("off_min", defaults.off_min), minimum=0),
            off_max=number(section, "off_max", values.get("off_max", defaults.off_max), minimum=0, strictly=True),
            off_bins=number(
                section, "off_bins", values.get("off_bins", defaults.off_bins), int, minimum=1, maximum=MAX_OFFSET_BINS
            ),
        )
        if binning.e_bins == binning.off_bins:
            # Kept (catalogues hold pieces of such binnings) but said: the files are right, the log is not.
            warnings.warn(
                f"{section}: e_bins equals off_bins ({binning.e_bins}): gammapy logs 'Ambiguous axes "
                "order in Background fits files!' on every read of these models (bkgdb writes the axes in "
                "GADF order, so the models are read right); use off_bins "
                f"{binning.off_bins + 1} to avoid it",
                ConfigWarning,
                stacklevel=2,
            )
        return binning

    @property
    def params(self) -> dict[str, Any]:
        """The parameters that identify the binning (unchanged since the first catalogues: no kind marker)."""
        return {key: getattr(self, key) for key in self.KEYS}

    @property
    def offset_edges(self) -> np.ndarray:
        """Offset bin edges in deg."""
        return np.linspace(self.off_min, self.off_max, self.off_bins + 1)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.e_bins, self.off_bins)

    @cached_property
    def geometry(self) -> PieceGeometry:
        """The geometry of this binning's pieces: energy x offset rings."""
        return PieceGeometry.offset(self.energy_edges, self.offset_edges)


@dataclass(frozen=True)
class FovBinning(_HashedEnergyBins):
    """Energy (log-spaced, TeV) times square FoV pixels (linear in fov_lon and fov_lat, deg) of a 3D piece.

    The FoV spans -fov_max to fov_max in both FoV coordinates, in ``fov_bins`` pixels per axis, in
    the FoV frame aligned with Alt/Az (``ALTAZ``, where the rate changes toward the horizon) or RA/Dec.
    """

    e_min: float = 0.1
    e_max: float = 100.0
    e_bins: int = 20
    fov_max: float = 2.5
    fov_bins: int = 24
    fov_alignment: str = "ALTAZ"

    KEYS: ClassVar[tuple[str, ...]] = ENERGY_KEYS + FOV_KEYS
    is_3d: ClassVar[bool] = True
    kind: ClassVar[str] = "3d"

    def __post_init__(self) -> None:
        for key in self.KEYS[:-1]:
            kind = int if key.endswith("bins") else float
            object.__setattr__(self, key, number("binning", key, getattr(self, key), kind))
        alignment = self.fov_alignment.upper() if isinstance(self.fov_alignment, str) else self.fov_alignment
        if alignment not in FOV_ALIGNMENTS:
            raise ConfigError(
                f"binning.fov_alignment must be one of {', '.join(FOV_ALIGNMENTS)}, got {self.fov_alignment!r}"
            )
        object.__setattr__(self, "fov_alignment", alignment)
        _check_energy(self.e_min, self.e_max, self.e_bins)
        if not 0 < self.fov_max <= MAX_FOV_DEG:
            raise ConfigError(f"binning needs 0 < fov_max <= {MAX_FOV_DEG:g} (deg), got {self.fov_max:g}")
        if self.e_bins < 1 or self.fov_bins < 1:
            raise ConfigError("binning needs at least one energy bin and one FoV pixel per axis")
        if self.fov_bins > MAX_FOV_BINS:
            raise ConfigError(f"binning.fov_bins must be at most {MAX_FOV_BINS}, got {self.fov_bins}")
        if 2 * self.fov_max / self.fov_bins < MIN_BIN_WIDTH_DEG:
            raise ConfigError(
                f"binning's FoV pixels would be narrower than {MIN_BIN_WIDTH_DEG:g} deg "
                f"({2 * self.fov_max:g} deg in {self.fov_bins})"
            )
        size = self.e_bins * self.fov_bins**2
        if size > MAX_BINS_PER_3D_PIECE:
            raise ConfigError(
                f"binning has {self.e_bins} x {self.fov_bins} x {self.fov_bins} = {size} bins; "
                f"at most {MAX_BINS_PER_3D_PIECE} per 3D piece (16 MB of counts per run)"
            )
        if self.e_bins == self.fov_bins:
            raise ConfigError(
                f"binning.fov_bins equals e_bins ({self.e_bins}): gammapy cannot tell the energy "
                "axis from fov_lat in a cube whose axis lengths read the same reversed and logs "
                "'Ambiguous axes order in Background fits files!' on every read; use fov_bins "
                f"{self.fov_bins + 1} or e_bins {self.e_bins + 1}"
            )

    @classmethod
    def from_dict(cls, values: Any, section: str = "binning") -> FovBinning:
        """A 3D binning from a config mapping; missing keys take the defaults."""
        defaults = cls()
        energy = _energy_values(cls, values, section, defaults)
        alignment = values.get("fov_alignment", defaults.fov_alignment)
        if not isinstance(alignment, str):
            raise ConfigError(f"{section}.fov_alignment must be one of {', '.join(FOV_ALIGNMENTS)}, got {alignment!r}")
        return _labelled(
            section,
            cls,
            **energy,
            fov_max=number(
                section,
                "fov_max",
                values.get("fov_max", defaults.fov_max),
                minimum=0,
                strictly=True,
                maximum=MAX_FOV_DEG,
            ),
            fov_bins=number(
                section, "fov_bins", values.get("fov_bins", defaults.fov_bins), int, minimum=1, maximum=MAX_FOV_BINS
            ),
            fov_alignment=alignment,
        )

    @property
    def params(self) -> dict[str, Any]:
        """The parameters that identify the binning, marked as 3D so no 2D binning can share its hash."""
        return {"kind": self.kind, **{key: getattr(self, key) for key in self.KEYS}}

    @property
    def fov_edges(self) -> np.ndarray:
        """Pixel edges in deg, the same for fov_lon and fov_lat."""
        return np.linspace(-self.fov_max, self.fov_max, self.fov_bins + 1)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.e_bins, self.fov_bins, self.fov_bins)

    @cached_property
    def geometry(self) -> PieceGeometry:
        """The geometry of this binning's pieces: energy x FoV lon x FoV lat pixels."""
        return PieceGeometry.fov(self.energy_edges, self.fov_edges, self.fov_edges, self.fov_alignment)


AnyBinning = Binning | FovBinning


def binning_from_dict(values: Any, section: str = "binning") -> AnyBinning:
    """A 2D or 3D binning from one config mapping: any ``fov_*`` key makes it 3D.

    Raises
    ------
    ConfigError
        The mapping mixes offset and FoV keys, or holds an invalid value.
    """
    if not isinstance(values, dict):
        raise ConfigError(
            f"{section} must be a mapping of {', '.join(Binning.KEYS)} or of {', '.join(FovBinning.KEYS)}"
        )
    fov = [key for key in values if isinstance(key, str) and key.startswith("fov_")]
    if not fov:
        return Binning.from_dict(values, section)
    offset = [key for key in values if key in OFFSET_KEYS]
    if offset:
        raise ConfigError(
            f"{section} mixes 2D keys ({', '.join(offset)}) with 3D keys ({', '.join(fov)}): a binning "
            f"is energy x offset ({', '.join(OFFSET_KEYS)}) or energy x FoV pixels "
            f"({', '.join(FOV_KEYS)}); give each its own entry of a binning list"
        )
    return FovBinning.from_dict(values, section)


def binning_from_params(params: dict[str, Any]) -> AnyBinning:
    """The binning whose `params` these are (as stored with its pieces)."""
    values = dict(params)
    kind = values.pop("kind", "2d")
    return FovBinning(**values) if kind == "3d" else Binning(**values)


def derive_fov_binning(binning: Binning) -> FovBinning:
    """A 3D binning covering a 2D one: the same energies, fov_max = off_max, 2 x off_bins pixels, ALTAZ.

    The pixel count moves up by one if it equals the number of energy bins (see `FovBinning`).
    """
    fov_bins = 2 * binning.off_bins
    if fov_bins == binning.e_bins:
        fov_bins += 1
    return FovBinning(
        e_min=binning.e_min,
        e_max=binning.e_max,
        e_bins=binning.e_bins,
        fov_max=binning.off_max,
        fov_bins=fov_bins,
        fov_alignment="ALTAZ",
    )
