"""Exclusion settings: which events are removed from a run before it enters a background.

Catalogues (gamma-cat, 3HWC, Hipparcos stars), named sources, circles and region files; the
settings' hash follows the catalogues' content, not where they lie.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from bkgdb.config.binning import AnyBinning
from bkgdb.config.values import (
    ConfigError,
    ConfigWarning,
    check_keys,
    config_path,
    content_hash,
    file_digest,
    is_file,
    mapping,
    missing_file_message,
    number,
    sequence,
    shown,
)
from bkgdb.makers.piece import EXPOSURE_METHODS

__all__ = ["CircleRegion", "ExclusionSettings", "default_catalogue_path", "MAX_RADIUS_DEG", "CATALOGUE_KEYS"]

CATALOGUE_KEYS = ("gammacat", "hawc", "star_cat")


def default_catalogue_path(relative: str) -> str | None:
    """``$GAMMAPY_DATA/catalogs/<relative>``, or None (with a warning) when GAMMAPY_DATA is not set."""
    root = os.environ.get("GAMMAPY_DATA")
    if not root:
        warnings.warn(
            f"GAMMAPY_DATA is not set and no path is configured for {relative}: "
            "that catalogue is not used for exclusion",
            ConfigWarning,
            stacklevel=2,
        )
        return None
    return str(Path(root, "catalogs", relative))


#: Largest radius of any exclusion circle and of the source search (deg): a hemisphere and more is junk.
MAX_RADIUS_DEG = 180.0


@dataclass(frozen=True)
class CircleRegion:
    """A circle on the sky to exclude: centre (ICRS, deg) and radius (deg)."""

    ra: float
    dec: float
    radius: float
    name: str = ""


@dataclass(frozen=True)
class ExclusionSettings:
    """Which events are removed from a run before it enters a background, and how exposure is corrected.

    Catalogue paths of None mean "not used"; by default they point into ``$GAMMAPY_DATA/catalogs``.
    """

    gammacat: str | None = field(default_factory=lambda: default_catalogue_path("gammacat/gammacat.fits.gz"))
    hawc: str | None = field(default_factory=lambda: default_catalogue_path("3HWC.ecsv"))
    star_cat: str | None = field(default_factory=lambda: default_catalogue_path("Hipparcos_MAG8_1997.dat"))
    #: Sources whose circle reaches within this distance of the pointing are excluded (deg).
    search_radius: float = 2.5
    #: Radius around a point-like source (deg).
    source_radius: float = 0.35
    #: An extended source is excluded out to this many times its extension.
    extended_factor: float = 3.0
    #: Stars brighter than (V magnitude below) this are excluded.
    star_mag_max: float = 8.0
    star_radius: float = 0.35
    exclude_regions: tuple[CircleRegion, ...] = ()
    region_files: tuple[str, ...] = ()
    exposure_method: str = "geometric"
    #: (name, radius in deg) pairs: catalogue sources of that name get that radius instead of the
    #: one `source_radius` / `extended_factor` give them (a bright source's halo, an over-large extension).
    source_radii: tuple[tuple[str, float], ...] = ()
    #: (name, radius in deg or None) pairs: sources excluded by name (gammapy-tools'
    #: ``exclude_source_name``), found in the configured catalogues; None means the source's
    #: `source_radii` value, else `source_radius`.
    exclude_source_name: tuple[tuple[str, float | None], ...] = ()

    KEYS = (
        "gammacat",
        "hawc",
        "star_cat",
        "search_radius",
        "source_radius",
        "extended_factor",
        "star_mag_max",
        "star_radius",
        "exclude_regions",
        "region_files",
        "exposure_method",
        "source_radii",
        "exclude_source_name",
    )
    #: Keys left out of `params` while they are empty, so settings without them keep their hash.
    OPTIONAL_KEYS = ("source_radii", "exclude_source_name")

    def __post_init__(self) -> None:
        if self.exposure_method not in EXPOSURE_METHODS:
            raise ConfigError(
                f"exclusion.exposure_method must be one of {', '.join(EXPOSURE_METHODS)}, "
                f"got {shown(self.exposure_method)}"
            )
        for key, maximum in (
            ("search_radius", MAX_RADIUS_DEG),
            ("source_radius", MAX_RADIUS_DEG),
            ("star_radius", MAX_RADIUS_DEG),
            ("extended_factor", None),
            ("star_mag_max", None),
        ):
            minimum = None if key == "star_mag_max" else 0
            number("exclusion", key, getattr(self, key), minimum=minimum, maximum=maximum)
        for name in CATALOGUE_KEYS:
            path = getattr(self, name)
            if path is not None and not is_file(path):
                raise ConfigError(missing_file_message(f"exclusion.{name}", "catalogue file", path))
        for path in self.region_files:
            if not is_file(path):
                raise ConfigError(missing_file_message("exclusion.region_files", "region file", path))
        if self.source_radii or self.exclude_source_name:
            from bkgdb.makers.sources import find_named_sources

            for key in self.OPTIONAL_KEYS:
                for name, _ in getattr(self, key):
                    find_named_sources(self, name, f"exclusion.{key}")

    @classmethod
    def from_dict(cls, values: Any, section: str = "exclusion") -> ExclusionSettings:
        """Exclusion settings from the ``exclusion`` section; missing keys take the defaults."""
        values = mapping(section, values)
        check_keys(section, values, cls.KEYS)
        kwargs: dict[str, Any] = {}
        for key in CATALOGUE_KEYS:
            if key in values:
                value = values[key]
                if isinstance(value, str) and value.strip().lower() in ("none", ""):
                    value = None
                if value is not None and value is not False and not isinstance(value, (str, os.PathLike)):
                    raise ConfigError(f"{section}.{key} must be a file path or none, got {shown(value)}")
                kwargs[key] = None if value in (None, False) else config_path(value)
        for key in ("search_radius", "source_radius", "star_radius"):
            if key in values:
                kwargs[key] = number(section, key, values[key], minimum=0, maximum=MAX_RADIUS_DEG)
        if "extended_factor" in values:
            kwargs["extended_factor"] = number(section, "extended_factor", values["extended_factor"], minimum=0)
        if "star_mag_max" in values:
            kwargs["star_mag_max"] = number(section, "star_mag_max", values["star_mag_max"])
        if "exposure_method" in values:
            kwargs["exposure_method"] = str(values["exposure_method"])
        regions: list[CircleRegion] = []
        for index, entry in enumerate(sequence(section, "exclude_regions", values.get("exclude_regions"))):
            regions.append(_circle(section, index, entry))
        kwargs["exclude_regions"] = tuple(regions)
        region_files: list[str] = []
        for index, path in enumerate(sequence(section, "region_files", values.get("region_files"))):
            if not isinstance(path, str):
                raise ConfigError(f"{section}.region_files[{index}] must be a file path, got {shown(path)}")
            region_files.append(config_path(path, resolve=True))
        kwargs["region_files"] = tuple(region_files)
        kwargs["source_radii"] = _source_radii(section, values.get("source_radii"))
        kwargs["exclude_source_name"] = _named_sources(section, values.get("exclude_source_name"))
        return cls(**kwargs)

    @property
    def files(self) -> list[Path]:
        """The catalogue and region files this setting reads (outputs never replace them)."""
        paths = [getattr(self, key) for key in CATALOGUE_KEYS]
        return [Path(path) for path in [*paths, *self.region_files] if path is not None]

    @cached_property
    def params(self) -> dict[str, Any]:
        """Everything that changes which events are kept, with each file's path and SHA-256."""
        params = {key: getattr(self, key) for key in self.KEYS}
        for key in self.OPTIONAL_KEYS:
            if not params[key]:
                del params[key]
            else:
                params[key] = [list(pair) for pair in params[key]]
        params["exclude_regions"] = [asdict(region) for region in self.exclude_regions]
        for key in CATALOGUE_KEYS:
            path = params[key]
            params[key] = None if path is None else {"path": path, "sha256": file_digest(path)}
        params["region_files"] = [{"path": path, "sha256": file_digest(path)} for path in self.region_files]
        return params

    @cached_property
    def hash(self) -> str:
        """Hash of the parameters and file contents, not file paths: the same catalogues in another
        folder (another machine's $GAMMAPY_DATA) share pieces."""

        def without_paths(value: Any) -> Any:
            if isinstance(value, dict):
                return {key: without_paths(item) for key, item in value.items() if key != "path"}
            if isinstance(value, list):
                return [without_paths(item) for item in value]
            return value

        return content_hash(without_paths(self.params))

    def search_radius_for(self, binning: AnyBinning) -> float:
        """The source search radius, never smaller than the largest offset any bin of the binning reaches
        (a 3D binning's FoV corners lie beyond its fov_max)."""
        return max(self.search_radius, binning.geometry.max_offset_deg)

    def radius_for_name(self, name: str) -> float | None:
        """The radius `source_radii` gives a source name (any spelling), or None."""
        from bkgdb.makers.sources import normalise_source_name

        key = normalise_source_name(name)
        for configured, radius in self.source_radii:
            if normalise_source_name(configured) == key:
                return radius
        return None


def _source_name(label: str, value: Any) -> str:
    """A source name from the config: text, or a whole number (a gamma-cat source_id)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{label} must be a source name, got {shown(value)}")
    return value.strip()


def _source_radii(section: str, values: Any) -> tuple[tuple[str, float], ...]:
    """``source_radii: {name: radius}`` as sorted (name, radius) pairs, one per source."""
    from bkgdb.makers.sources import normalise_source_name

    pairs: dict[str, tuple[str, float]] = {}
    for name, radius in mapping(f"{section}.source_radii", values).items():
        name = _source_name(f"{section}.source_radii key", name)
        key = normalise_source_name(name)
        if key in pairs:
            raise ConfigError(f"{section}.source_radii names {pairs[key][0]!r} and {name!r}: the same source twice")
        pairs[key] = (
            name,
            number(f"{section}.source_radii", repr(name), radius, minimum=0, strictly=True, maximum=MAX_RADIUS_DEG),
        )
    return tuple(pairs[key] for key in sorted(pairs))


def _named_sources(section: str, values: Any) -> tuple[tuple[str, float | None], ...]:
    """``exclude_source_name``: names, ``[name, radius]`` or ``{name:, radius:}``, as (name, radius or None)."""
    if isinstance(values, str):
        values = [values]
    entries: list[tuple[str, float | None]] = []
    for index, entry in enumerate(sequence(section, "exclude_source_name", values)):
        label = f"{section}.exclude_source_name[{index}]"
        radius: Any = None
        if isinstance(entry, dict):
            unknown = set(entry) - {"name", "radius"}
            if "name" not in entry or unknown:
                raise ConfigError(f"{label} must be a name, [name, radius] or a mapping of name and radius")
            name, radius = entry["name"], entry.get("radius")
        elif isinstance(entry, (list, tuple)):
            if len(entry) != 2:
                raise ConfigError(f"{label} must be a name, [name, radius] or a mapping of name and radius")
            name, radius = entry
        else:
            name = entry
        name = _source_name(label, name)
        if radius is not None:
            radius = number(label, "radius", radius, minimum=0, strictly=True, maximum=MAX_RADIUS_DEG)
        entries.append((name, radius))
    return tuple(entries)


def _circle(section: str, index: int, entry: Any) -> CircleRegion:
    label = f"{section}.exclude_regions[{index}]"
    if isinstance(entry, dict):
        try:
            ra, dec, radius = entry["ra"], entry["dec"], entry["radius"]
        except KeyError as exc:
            raise ConfigError(f"{label} needs ra, dec and radius (deg); missing {exc}") from None
        name = str(entry.get("name", ""))
    elif isinstance(entry, (list, tuple)) and len(entry) in (3, 4):
        ra, dec, radius = entry[:3]
        name = str(entry[3]) if len(entry) == 4 else ""
    else:
        raise ConfigError(f"{label} must be [ra, dec, radius] in deg or a mapping with those keys")
    numbers: list[float] = []
    for key, value in (("ra", ra), ("dec", dec), ("radius", radius)):
        if isinstance(value, str):
            value = value.replace("deg", "").strip()
        numbers.append(number(label, key, value))
    ra, dec, radius = numbers
    if not -90 <= dec <= 90 or not 0 < radius <= MAX_RADIUS_DEG:
        raise ConfigError(f"{label} needs -90 <= dec <= 90 and 0 < radius <= {MAX_RADIUS_DEG:g}, got {shown(entry)}")
    return CircleRegion(ra % 360.0, dec, radius, name or f"region {index}")
