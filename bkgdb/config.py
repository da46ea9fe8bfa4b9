"""Configuration files: binnings, exclusion settings and (later) background selection.

The layout follows the VERITAS gammapy-tools configs (``binning``, ``exclusion``, ``config``,
``background_selection``, ``io``), so their files load here; sections bkgdb does not use
(``run_selection``, ``spectrum``, ``sky_map``, ...) are ignored. Unknown keys inside the sections
bkgdb reads give a warning naming the key; invalid values raise `ConfigError`.

Binnings and exclusion settings are identified by a hash of their parameters, so two analyses
with the same settings share the pieces stored for them.
"""

import hashlib
import json
import logging
import os
import re
import warnings
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from bkgdb.errors import ConfigError
from bkgdb.makers.piece import EXPOSURE_METHODS
from bkgdb.makers.smoothing import SMOOTHING_METHODS

__all__ = [
    "ConfigWarning", "Binning", "ExclusionSettings", "CircleRegion", "SelectionSettings", "IOSettings", "BkgdbConfig",
    "load_config", "EXPOSURE_METHODS", "SMOOTHING_METHODS", "default_catalogue_path",
    "MAX_ENERGY_BINS", "MAX_OFFSET_BINS", "MAX_BINS_PER_PIECE", "ENERGY_LIMITS_TEV", "MAX_RADIUS_DEG", "MAX_JOBS",
]

log = logging.getLogger(__name__)

#: What a background resting on fewer than min_runs runs or min_ontime hours does.
MIN_STATISTICS_ACTIONS = ("warn", "error")
#: Sections of gammapy-tools configs that bkgdb reads none of.
FOREIGN_SECTIONS = {"run_selection", "spectrum", "lightcurve", "sky_map", "analysis_selection",
                    "results_file", "plot_names"}


class ConfigWarning(UserWarning):
    """A configuration key bkgdb does not know (a typo?), or a default it cannot fill."""


def content_hash(params):
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


def file_digest(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def default_catalogue_path(relative):
    """``$GAMMAPY_DATA/catalogs/<relative>``, or None (with a warning) when GAMMAPY_DATA is not set."""
    root = os.environ.get("GAMMAPY_DATA")
    if not root:
        warnings.warn(f"GAMMAPY_DATA is not set and no path is configured for {relative}: "
                      "that catalogue is not used for exclusion", ConfigWarning, stacklevel=2)
        return None
    return str(Path(root, "catalogs", relative))


#: Whole numbers in a config are bounded: a value beyond this is a typo, and SQL integers stop here.
MAX_CONFIG_INT = 2**31 - 1


def _number(section, key, value, kind=float, minimum=None, strictly=False, maximum=None):
    """A finite number from a config value, with optional bounds; a `ConfigError` naming the key otherwise.

    Non-finite values (``.inf``, ``.nan``, ``1e999``) and whole numbers beyond `MAX_CONFIG_INT`
    are refused for every key, so junk never reaches a binning, a radius or an SQL parameter.
    """
    label = f"{section}.{key}"
    try:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, int) and abs(value) > MAX_CONFIG_INT:
            raise ConfigError(f"{label} must be at most {MAX_CONFIG_INT} in size, got {_shown(value)}")
        number = float(value.strip() if isinstance(value, str) else value)
        if not np.isfinite(number):
            raise ConfigError(f"{label} must be a finite number, got {_shown(value)}")
        if kind is int:
            if not number.is_integer():
                raise ValueError
            number = int(number) if not isinstance(value, int) else value
            if abs(number) > MAX_CONFIG_INT:
                raise ConfigError(f"{label} must be at most {MAX_CONFIG_INT} in size, got {_shown(value)}")
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{label} must be a {'whole ' if kind is int else ''}number, got {_shown(value)}") from None
    if minimum is not None and (number < minimum or (strictly and number == minimum)):
        raise ConfigError(f"{label} must be {'>' if strictly else '>='} {minimum}, got {_shown(value)}")
    if maximum is not None and number > maximum:
        raise ConfigError(f"{label} must be <= {maximum}, got {_shown(value)}")
    return number


def _shown(value, limit=60):
    """A config value as shown in an error message: its repr, on one line and shortened."""
    try:
        text = repr(value)
    except ValueError:  # an integer too long to print
        return "a number too large to show"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _mapping(section, values):
    """A config section as a dict: None is empty, anything but a mapping is an error."""
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{section} must be a mapping of keys to values, "
                          f"got {type(values).__name__} {_shown(values)}")
    return dict(values)


def _sequence(section, key, value):
    """A config list: None is empty, a single mapping or scalar is an error."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{section}.{key} must be a list, got {type(value).__name__} {_shown(value)}")
    return list(value)


def _check_keys(section, values, known):
    for key in values:
        if key not in known:
            warnings.warn(f"unknown key {section}.{key} in config (ignored)", ConfigWarning, stacklevel=3)


#: Limits of a binning: bins per axis and per piece (a piece's arrays are stored per run), and the
#: energy range in TeV that any IACT binning fits in.
MAX_ENERGY_BINS = 1000
MAX_OFFSET_BINS = 1000
MAX_BINS_PER_PIECE = 100_000
ENERGY_LIMITS_TEV = (1e-4, 1e4)


@dataclass(frozen=True)
class Binning:
    """Energy (log-spaced, TeV) times FoV offset (linear, deg) bins of a background piece."""

    e_min: float = 0.1
    e_max: float = 100.0
    e_bins: int = 20
    off_min: float = 0.0
    off_max: float = 2.5
    off_bins: int = 10

    KEYS = ("e_min", "e_max", "e_bins", "off_min", "off_max", "off_bins")

    def __post_init__(self):
        # One spelling per value, so 100 and 100.0 give the same hash.
        for key in self.KEYS:
            kind = int if key.endswith("bins") else float
            object.__setattr__(self, key, _number("binning", key, getattr(self, key), kind))
        low, high = ENERGY_LIMITS_TEV
        if not low <= self.e_min < self.e_max <= high:
            raise ConfigError(f"binning needs {low:g} <= e_min < e_max <= {high:g} (TeV), "
                              f"got e_min={self.e_min:g}, e_max={self.e_max:g}")
        if not 0 <= self.off_min < self.off_max <= 180:
            raise ConfigError(f"binning needs 0 <= off_min < off_max <= 180 (deg), "
                              f"got {self.off_min:g}, {self.off_max:g}")
        if self.e_bins < 1 or self.off_bins < 1:
            raise ConfigError("binning needs at least one energy and one offset bin")
        if self.e_bins > MAX_ENERGY_BINS:
            raise ConfigError(f"binning.e_bins must be at most {MAX_ENERGY_BINS}, got {self.e_bins}")
        if self.off_bins > MAX_OFFSET_BINS:
            raise ConfigError(f"binning.off_bins must be at most {MAX_OFFSET_BINS}, got {self.off_bins}")
        if self.e_bins * self.off_bins > MAX_BINS_PER_PIECE:
            raise ConfigError(f"binning has {self.e_bins} x {self.off_bins} = {self.e_bins * self.off_bins} bins; "
                              f"at most {MAX_BINS_PER_PIECE} per piece")

    @classmethod
    def from_dict(cls, values, section="binning"):
        if not isinstance(values, dict):
            raise ConfigError(f"{section} must be a mapping of {', '.join(cls.KEYS)}")
        _check_keys(section, values, cls.KEYS)
        defaults = cls()
        return cls(
            e_min=_number(section, "e_min", values.get("e_min", defaults.e_min), minimum=0, strictly=True),
            e_max=_number(section, "e_max", values.get("e_max", defaults.e_max), minimum=0, strictly=True),
            e_bins=_number(section, "e_bins", values.get("e_bins", defaults.e_bins), int, minimum=1,
                           maximum=MAX_ENERGY_BINS),
            off_min=_number(section, "off_min", values.get("off_min", defaults.off_min), minimum=0),
            off_max=_number(section, "off_max", values.get("off_max", defaults.off_max), minimum=0, strictly=True),
            off_bins=_number(section, "off_bins", values.get("off_bins", defaults.off_bins), int, minimum=1,
                             maximum=MAX_OFFSET_BINS),
        )

    @property
    def params(self):
        return {key: getattr(self, key) for key in self.KEYS}

    @property
    def hash(self):
        return content_hash(self.params)

    @property
    def energy_edges(self):
        """Energy bin edges in TeV."""
        return np.geomspace(self.e_min, self.e_max, self.e_bins + 1)

    @property
    def offset_edges(self):
        """Offset bin edges in deg."""
        return np.linspace(self.off_min, self.off_max, self.off_bins + 1)

    @property
    def shape(self):
        return (self.e_bins, self.off_bins)


CATALOGUE_KEYS = ("gammacat", "hawc", "star_cat")


def _path(value, resolve=False):
    """A configured path with ``$VARIABLES`` and ``~`` expanded."""
    path = Path(os.path.expandvars(str(value))).expanduser()
    try:
        return str(path.resolve() if resolve else path)
    except (OSError, RuntimeError, ValueError) as exc:  # NUL bytes, symlink loops
        raise ConfigError(f"unusable path {_shown(str(value))}: {exc}") from None


def _is_file(path):
    """Whether a file exists; a path the OS cannot even look up (too long, NUL byte) does not."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def _missing_file_message(label, what, path):
    """Why a configured file is missing, telling the user to set an unset variable the path names."""
    unset = sorted({name for name in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", str(path))
                    if name not in os.environ})
    if unset:
        variables = ", ".join(unset)
        hint = ("set GAMMAPY_DATA to gammapy's data folder (the one holding catalogs/)"
                if unset == ["GAMMAPY_DATA"] else f"set {variables}")
        return (f"{label}: {what} {path} not found because {variables} is not set: {hint}, "
                "or give an explicit path" + (", or none to use no such catalogue" if what == "catalogue file" else ""))
    return f"{label}: {what} not found: {path}"


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
    exclude_regions: tuple = ()
    region_files: tuple = ()
    exposure_method: str = "geometric"
    #: (name, radius in deg) pairs: catalogue sources of that name get that radius instead of the
    #: one `source_radius` / `extended_factor` give them (a bright source's halo, an over-large extension).
    source_radii: tuple = ()
    #: (name, radius in deg or None) pairs: sources excluded by name (gammapy-tools'
    #: ``exclude_source_name``), found in the configured catalogues; None means the source's
    #: `source_radii` value, else `source_radius`.
    exclude_source_name: tuple = ()

    KEYS = ("gammacat", "hawc", "star_cat", "search_radius", "source_radius", "extended_factor",
            "star_mag_max", "star_radius", "exclude_regions", "region_files", "exposure_method",
            "source_radii", "exclude_source_name")
    #: Keys left out of `params` while they are empty, so settings without them keep their hash.
    OPTIONAL_KEYS = ("source_radii", "exclude_source_name")

    def __post_init__(self):
        if self.exposure_method not in EXPOSURE_METHODS:
            raise ConfigError(f"exclusion.exposure_method must be one of {', '.join(EXPOSURE_METHODS)}, "
                              f"got {_shown(self.exposure_method)}")
        for key, maximum in (("search_radius", MAX_RADIUS_DEG), ("source_radius", MAX_RADIUS_DEG),
                             ("star_radius", MAX_RADIUS_DEG), ("extended_factor", None), ("star_mag_max", None)):
            minimum = None if key == "star_mag_max" else 0
            _number("exclusion", key, getattr(self, key), minimum=minimum, maximum=maximum)
        for name in CATALOGUE_KEYS:
            path = getattr(self, name)
            if path is not None and not _is_file(path):
                raise ConfigError(_missing_file_message(f"exclusion.{name}", "catalogue file", path))
        for path in self.region_files:
            if not _is_file(path):
                raise ConfigError(_missing_file_message("exclusion.region_files", "region file", path))
        if self.source_radii or self.exclude_source_name:
            from bkgdb.makers.exclusion import find_named_sources

            for key in self.OPTIONAL_KEYS:
                for name, _ in getattr(self, key):
                    find_named_sources(self, name, f"exclusion.{key}")

    @classmethod
    def from_dict(cls, values, section="exclusion"):
        values = _mapping(section, values)
        _check_keys(section, values, cls.KEYS)
        kwargs = {}
        for key in CATALOGUE_KEYS:
            if key in values:
                value = values[key]
                if isinstance(value, str) and value.strip().lower() in ("none", ""):
                    value = None
                if value is not None and value is not False and not isinstance(value, (str, os.PathLike)):
                    raise ConfigError(f"{section}.{key} must be a file path or none, got {_shown(value)}")
                kwargs[key] = None if value in (None, False) else _path(value)
        for key in ("search_radius", "source_radius", "star_radius"):
            if key in values:
                kwargs[key] = _number(section, key, values[key], minimum=0, maximum=MAX_RADIUS_DEG)
        if "extended_factor" in values:
            kwargs["extended_factor"] = _number(section, "extended_factor", values["extended_factor"], minimum=0)
        if "star_mag_max" in values:
            kwargs["star_mag_max"] = _number(section, "star_mag_max", values["star_mag_max"])
        if "exposure_method" in values:
            kwargs["exposure_method"] = str(values["exposure_method"])
        regions = []
        for number, entry in enumerate(_sequence(section, "exclude_regions", values.get("exclude_regions"))):
            regions.append(_circle(section, number, entry))
        kwargs["exclude_regions"] = tuple(regions)
        region_files = []
        for number, path in enumerate(_sequence(section, "region_files", values.get("region_files"))):
            if not isinstance(path, str):
                raise ConfigError(f"{section}.region_files[{number}] must be a file path, got {_shown(path)}")
            region_files.append(_path(path, resolve=True))
        kwargs["region_files"] = tuple(region_files)
        kwargs["source_radii"] = _source_radii(section, values.get("source_radii"))
        kwargs["exclude_source_name"] = _named_sources(section, values.get("exclude_source_name"))
        return cls(**kwargs)

    @cached_property
    def params(self):
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
    def hash(self):
        """Hash of the parameters and file contents, not file paths: the same catalogues in another
        folder (another machine's $GAMMAPY_DATA) share pieces."""
        def without_paths(value):
            if isinstance(value, dict):
                return {key: without_paths(item) for key, item in value.items() if key != "path"}
            if isinstance(value, list):
                return [without_paths(item) for item in value]
            return value

        return content_hash(without_paths(self.params))

    def search_radius_for(self, binning):
        """The source search radius, never smaller than the binning's largest offset."""
        return max(self.search_radius, binning.off_max)

    def radius_for_name(self, name):
        """The radius `source_radii` gives a source name (any spelling), or None."""
        from bkgdb.makers.exclusion import normalise_source_name

        key = normalise_source_name(name)
        for configured, radius in self.source_radii:
            if normalise_source_name(configured) == key:
                return radius
        return None


def _source_name(label, value):
    """A source name from the config: text, or a whole number (a gamma-cat source_id)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{label} must be a source name, got {_shown(value)}")
    return value.strip()


def _source_radii(section, values):
    """``source_radii: {name: radius}`` as sorted (name, radius) pairs, one per source."""
    from bkgdb.makers.exclusion import normalise_source_name

    pairs = {}
    for name, radius in _mapping(f"{section}.source_radii", values).items():
        name = _source_name(f"{section}.source_radii key", name)
        key = normalise_source_name(name)
        if key in pairs:
            raise ConfigError(f"{section}.source_radii names {pairs[key][0]!r} and {name!r}: the same source twice")
        pairs[key] = (name, _number(f"{section}.source_radii", repr(name), radius, minimum=0, strictly=True,
                                    maximum=MAX_RADIUS_DEG))
    return tuple(pairs[key] for key in sorted(pairs))


def _named_sources(section, values):
    """``exclude_source_name``: names, ``[name, radius]`` or ``{name:, radius:}``, as (name, radius or None)."""
    if isinstance(values, str):
        values = [values]
    entries = []
    for number, entry in enumerate(_sequence(section, "exclude_source_name", values)):
        label = f"{section}.exclude_source_name[{number}]"
        radius = None
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
            radius = _number(label, "radius", radius, minimum=0, strictly=True, maximum=MAX_RADIUS_DEG)
        entries.append((name, radius))
    return tuple(entries)


def _circle(section, number, entry):
    label = f"{section}.exclude_regions[{number}]"
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
    values = []
    for key, value in (("ra", ra), ("dec", dec), ("radius", radius)):
        if isinstance(value, str):
            value = value.replace("deg", "").strip()
        values.append(_number(label, key, value))
    ra, dec, radius = values
    if not -90 <= dec <= 90 or not 0 < radius <= MAX_RADIUS_DEG:
        raise ConfigError(f"{label} needs -90 <= dec <= 90 and 0 < radius <= {MAX_RADIUS_DEG:g}, got {_shown(entry)}")
    return CircleRegion(ra % 360.0, dec, radius, name or f"region {number}")




def _optional(section, values, key, kind=float, minimum=None):
    return None if values.get(key) is None else _number(section, key, values[key], kind, minimum)


def _date(section, key, value):
    from datetime import date, datetime

    if isinstance(value, datetime):  # YAML reads "2024-01-01 12:00" as a datetime: its day counts
        return value.date()
    try:
        return value if isinstance(value, date) else date.fromisoformat(str(value))
    except ValueError:
        raise ConfigError(f"{section}.{key} needs dates as YYYY-MM-DD, got {_shown(value)}") from None


def _conditions(section, value):
    """``where``: one condition or a list of them, each checked for its form (``NAME OP VALUE``)."""
    conditions = [value] if isinstance(value, str) else _sequence(section, "where", value)
    if conditions:
        from bkgdb.store.conditions import condition_expression, parse_condition, typed_column
        from bkgdb.errors import ConditionError
    for number, condition in enumerate(conditions):
        if not isinstance(condition, str):
            raise ConfigError(f"{section}.where[{number}] must be a condition such as 'zenith<30', "
                              f"got {_shown(condition)}")
        try:
            parsed = parse_condition(condition)
            if typed_column(parsed.name) is not None:  # obs-index columns are known once a catalogue is open
                condition_expression(parsed)
        except ConditionError as exc:
            raise ConfigError(f"{section}.where[{number}]: {exc}") from None
    return tuple(conditions)


@dataclass(frozen=True)
class SelectionSettings:
    """How the runs that build a target's background are chosen (``background_selection``).

    Every criterion is relative to the target run; None switches a criterion off.
    """

    #: Largest |1/cos(zenith) - 1/cos(zenith_target)| (airmass difference).
    el_diff: float | None = 0.15
    #: Largest azimuth difference in deg, wrapping at 360.
    az_diff: float | None = 45.0
    nsb_diff: float | None = None
    #: Largest |start time difference| in days.
    time_max: float | None = None
    #: Only runs of the target's season; seasons are [start, end] date pairs.
    same_szn: bool = False
    seasons: tuple = ()
    n_tels: int | None = None
    el_min: float | None = None
    el_max: float | None = None
    #: Only runs with |Galactic latitude| above this (deg); 0 disables.
    gal_lat_min: float = 10.0
    #: Extra ``--where`` conditions on catalogue columns.
    where: tuple = ()
    #: Hours of ontime wanted: the most similar runs are taken until it is reached.
    time_request: float | None = None
    KL_DIV: bool = False
    smooth_method: str = "none"
    smooth_sigma: float = 1.0
    poly_degree: int = 3
    spline_smoothing: float | None = None
    #: Empty bins of energy slices with counts get the slice's mean rate (see `fill_empty_bins`).
    fill_empty_bins: bool = True
    #: Write rates at the energy bins' centres, as gammapy reads them (see `bin_average_to_centre`).
    bin_centre_correction: bool = True
    #: ``condition``: move each piece to the target's zenith, azimuth and optical efficiency with a
    #: model fitted on the archive before summing; ``sum``: plain summation.
    assembly: str = "sum"
    #: Per-run normalisation (`bkgdb.makers.normalisation`): none, control-ring (offsets in
    #: ``normalisation_ring``, deg) or monitor (ratio of catalogue column ``normalisation_column``).
    normalisation: str = "none"
    normalisation_ring: tuple = (2.0, 2.5)
    normalisation_column: str | None = None
    #: Energies (TeV) of the control ring; None: the whole binning.
    normalisation_energy: tuple | None = None
    #: The model's run-to-run scatter: the control ring is combined with it by inverse variance.
    normalisation_model_scatter: float | None = None
    #: Fewest runs and hours of ontime a background may rest on; below them, warn or fail (min_statistics).
    min_runs: int | None = None
    min_ontime: float | None = None
    min_statistics: str = "warn"

    KEYS = ("el_diff", "az_diff", "nsb_diff", "time_max", "same_szn", "seasons", "n_tels", "n_tel", "el_min",
            "el_max", "gal_lat_min", "where", "time_request", "KL_DIV", "smooth", "smooth_method",
            "smooth_sigma", "poly_degree", "spline_smoothing", "fill_empty_bins", "bin_centre_correction",
            "normalisation", "assembly", "min_runs", "min_ontime", "min_statistics")
    #: gammapy-tools keys that bkgdb reads but does not use.
    UNUSED = ("store_KL", "bkg_runlist")

    def __post_init__(self):
        from bkgdb.makers.assembly import ASSEMBLY_METHODS

        if self.assembly not in ASSEMBLY_METHODS:
            raise ConfigError(f"background_selection.assembly must be one of {', '.join(ASSEMBLY_METHODS)}, "
                              f"got {self.assembly!r}")
        if self.smooth_method not in SMOOTHING_METHODS:
            raise ConfigError(f"background_selection.smooth_method must be one of {', '.join(SMOOTHING_METHODS)}, "
                              f"got {self.smooth_method!r}")
        _check_normalisation(self.normalisation, self.normalisation_ring, self.normalisation_column,
                             self.normalisation_energy)

    @classmethod
    def from_dict(cls, values, section="background_selection"):
        values = _mapping(section, values)
        _check_keys(section, values, cls.KEYS + cls.UNUSED)
        kwargs = {}
        for key in ("el_diff", "az_diff", "nsb_diff", "time_max", "el_min", "el_max", "time_request",
                    "spline_smoothing"):
            if key in values:
                kwargs[key] = _optional(section, values, key, minimum=0)
        if "gal_lat_min" in values:
            kwargs["gal_lat_min"] = _number(section, "gal_lat_min", values["gal_lat_min"] or 0, minimum=0)
        n_tels = values.get("n_tels", values.get("n_tel"))
        if n_tels is not None:
            kwargs["n_tels"] = _number(section, "n_tels", n_tels, int, minimum=0)
        for key in ("same_szn", "KL_DIV", "fill_empty_bins", "bin_centre_correction"):
            if key in values:
                if not isinstance(values[key], bool):
                    raise ConfigError(f"{section}.{key} must be true or false, got {values[key]!r}")
                kwargs[key] = values[key]
        seasons = []
        for number, season in enumerate(_sequence(section, "seasons", values.get("seasons"))):
            if not isinstance(season, (list, tuple)) or len(season) != 2:
                raise ConfigError(f"{section}.seasons[{number}] must be [start, end] dates")
            start, end = (_date(section, f"seasons[{number}]", day) for day in season)
            if end < start:
                raise ConfigError(f"{section}.seasons[{number}] ends before it starts")
            seasons.append((start.isoformat(), end.isoformat()))
        kwargs["seasons"] = tuple(seasons)
        if kwargs.get("same_szn") and not seasons:
            raise ConfigError(f"{section}.same_szn needs {section}.seasons: a list of [start, end] dates")
        kwargs["where"] = _conditions(section, values.get("where"))
        method = values.get("smooth_method")
        if method is None:
            method = "gauss" if values.get("smooth") else "none"  # gammapy-tools: smooth: true
        kwargs["smooth_method"] = str(method)
        if "assembly" in values:
            kwargs["assembly"] = str(values["assembly"])
        if "smooth_sigma" in values:
            kwargs["smooth_sigma"] = _number(section, "smooth_sigma", values["smooth_sigma"], minimum=0, strictly=True)
        if "poly_degree" in values:
            kwargs["poly_degree"] = _number(section, "poly_degree", values["poly_degree"], int, minimum=0)
        kwargs.update(_normalisation_from_dict(f"{section}.normalisation", values.get("normalisation")))
        if values.get("min_runs") is not None:
            kwargs["min_runs"] = _number(section, "min_runs", values["min_runs"], int, minimum=1)
        if "min_ontime" in values:
            kwargs["min_ontime"] = _optional(section, values, "min_ontime", minimum=0)
        if "min_statistics" in values:
            if values["min_statistics"] not in MIN_STATISTICS_ACTIONS:
                raise ConfigError(f"{section}.min_statistics must be one of {', '.join(MIN_STATISTICS_ACTIONS)}, "
                                  f"got {values['min_statistics']!r}")
            kwargs["min_statistics"] = values["min_statistics"]
        return cls(**kwargs)

    @property
    def params(self):
        return {key: getattr(self, key) for key in self.__dataclass_fields__}


def _normalisation_from_dict(section, values):
    """SelectionSettings keyword arguments of a ``normalisation`` mapping (method, offset_min, offset_max, column)."""
    if values is None:
        return {}
    if isinstance(values, str):
        values = {"method": values}
    if not isinstance(values, dict):
        raise ConfigError(f"{section} must be a mapping of method, offset_min, offset_max, column")
    _check_keys(section, values, ("method", "offset_min", "offset_max", "column", "e_min", "e_max", "model_scatter"))
    ring = tuple(_number(section, key, values.get(key, default), minimum=0)
                 for key, default in (("offset_min", 2.0), ("offset_max", 2.5)))
    energy = None
    if values.get("e_min") is not None or values.get("e_max") is not None:
        energy = (_number(section, "e_min", values.get("e_min", 0.0), minimum=0),
                  _number(section, "e_max", values.get("e_max", 1e9), minimum=0))
    column = values.get("column")
    scatter = values.get("model_scatter")
    if scatter is not None:
        scatter = _number(section, "model_scatter", scatter, minimum=0, strictly=True)
    return {"normalisation": str(values.get("method") or "none"), "normalisation_ring": ring,
            "normalisation_column": None if column is None else str(column), "normalisation_energy": energy,
            "normalisation_model_scatter": scatter}


def _check_normalisation(method, ring, column, energy=None):
    from bkgdb.makers.normalisation import NORMALISATION_METHODS

    section = "background_selection.normalisation"
    if method not in NORMALISATION_METHODS:
        raise ConfigError(f"{section}.method must be one of {', '.join(NORMALISATION_METHODS)}, got {method!r}")
    low, high = ring
    if not (np.isfinite(low) and np.isfinite(high) and 0 <= low < high):
        raise ConfigError(f"{section} needs finite 0 <= offset_min < offset_max, got {low!r}, {high!r}")
    if energy is not None and not (np.all(np.isfinite(energy)) and 0 <= energy[0] < energy[1]):
        raise ConfigError(f"{section} needs finite 0 <= e_min < e_max, got {energy[0]!r}, {energy[1]!r}")
    if method == "monitor" and not column:
        raise ConfigError(f"{section}: method monitor needs a column (a catalogue column such as a trigger rate)")


@dataclass(frozen=True)
class IOSettings:
    """The ``io`` section: where backgrounds come from and go to."""

    #: Build each run's background from its own piece only.
    from_run: bool = False
    #: Only runs of this datastore are candidates (default: every datastore in the catalogue).
    search_datastore: str | None = None
    in_dir: str | None = None
    out_dir: str | None = None

    KEYS = ("from_run", "search_datastore", "in_dir", "out_dir")
    UNUSED = ("runlist", "results_dir", "from_runlist")

    @classmethod
    def from_dict(cls, values, section="io"):
        values = _mapping(section, values)
        _check_keys(section, values, cls.KEYS + cls.UNUSED)
        from_run = values.get("from_run", False)
        if not isinstance(from_run, bool):
            raise ConfigError(f"{section}.from_run must be true or false, got {from_run!r}")
        paths = {}
        for key in ("search_datastore", "in_dir", "out_dir"):
            if values.get(key) is not None:
                if not isinstance(values[key], str):
                    raise ConfigError(f"{section}.{key} must be a folder path, got {_shown(values[key])}")
                paths[key] = _path(values[key])
        return cls(from_run=from_run, **paths)


#: Most worker processes a config may ask for.
MAX_JOBS = 256


@dataclass
class BkgdbConfig:
    """A whole configuration: binnings, exclusion settings, selection, io and worker count."""

    binnings: list = field(default_factory=lambda: [Binning()])
    exclusion: ExclusionSettings = field(default_factory=ExclusionSettings)
    selection: SelectionSettings = field(default_factory=SelectionSettings)
    io: IOSettings = field(default_factory=IOSettings)
    njobs: int = 1

    def __post_init__(self):
        from bkgdb.makers.normalisation import ring_bins

        if self.selection.normalisation == "control-ring":
            low, high = self.selection.normalisation_ring
            binning = self.binning
            if low < binning.off_min or high > binning.off_max or not ring_bins(binning.offset_edges, low, high).any():
                raise ConfigError(f"background_selection.normalisation: the control ring {low:g}-{high:g} deg must "
                                  f"hold whole offset bins of the binning ({binning.off_min:g}-{binning.off_max:g} "
                                  f"deg in {binning.off_bins} bins)")
            energy, edges = self.selection.normalisation_energy, binning.energy_edges
            if energy and not np.any((edges[:-1] >= energy[0] * (1 - 1e-9)) & (edges[1:] <= energy[1] * (1 + 1e-9))):
                raise ConfigError(f"background_selection.normalisation: no energy bin of the binning lies within "
                                  f"e_min {energy[0]:g} and e_max {energy[1]:g} TeV")

    @property
    def binning(self):
        """The binning backgrounds are assembled with: the first configured one."""
        return self.binnings[0]

    @classmethod
    def from_dict(cls, values):
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise ConfigError(f"a config must be a mapping of sections (binning, exclusion, ...), "
                              f"got {type(values).__name__} {_shown(values)}")
        known = {"binning", "exclusion", "config", "background_selection", "io"}
        for key in values:
            if key not in known and key not in FOREIGN_SECTIONS:
                warnings.warn(f"unknown config section {key!r} (ignored)", ConfigWarning, stacklevel=2)
        binning = values.get("binning")
        if isinstance(binning, list):
            if not binning:
                raise ConfigError("binning is an empty list: give one binning or a list of them")
            binnings = [Binning.from_dict(item, f"binning[{n}]") for n, item in enumerate(binning)]
        else:
            binnings = [Binning.from_dict(_mapping("binning", binning))]
        settings = _mapping("config", values.get("config"))
        _check_keys("config", settings, ("njobs",))
        njobs = _number("config", "njobs", settings.get("njobs", 1), int, maximum=MAX_JOBS)
        if njobs < 1:
            # gammapy-tools' -1 ("all cores") would silently load a shared machine fully.
            raise ConfigError(f"config.njobs must be a number of worker processes from 1 to {MAX_JOBS}, got {njobs} "
                              f"(this machine has {os.cpu_count() or 1} cores)")
        return cls(binnings=binnings, exclusion=ExclusionSettings.from_dict(values.get("exclusion")),
                   selection=SelectionSettings.from_dict(values.get("background_selection")),
                   io=IOSettings.from_dict(values.get("io")), njobs=njobs)


def _yaml_loader():
    """A safe YAML loader that refuses a key given twice in one mapping (the last would win silently)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:
                    continue  # an unhashable key: the base class reports it
                if first is not key_node:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {_shown(key)} (first given on line {first.start_mark.line + 1})",
                        key_node.start_mark)
            return super().construct_mapping(node, deep)

    return UniqueKeyLoader


def _yaml_error_message(path, exc):
    """One line: file, line and column, and what is wrong."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    text = f"{context}: {problem}" if context and problem else problem
    return f"{where}: not valid YAML: {' '.join(str(text).split())}"


def load_config(path):
    """Read a YAML config file.

    Parameters
    ----------
    path : str or `~pathlib.Path`
        The file.

    Returns
    -------
    config : `BkgdbConfig`

    Raises
    ------
    ConfigError
        The file is missing, empty, not YAML (with line and column), has a key twice, or holds an
        invalid value; always one line.
    """
    import yaml

    path = Path(path).expanduser()
    if not _is_file(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        values = yaml.load(text, Loader=_yaml_loader())
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_error_message(path, exc)) from None
    except (ValueError, OverflowError, RecursionError) as exc:  # e.g. an integer of 5000 digits
        raise ConfigError(f"{path}: invalid YAML value: {_shown(str(exc), 120)}") from None
    if values is None:
        raise ConfigError(f"{path} is empty: a config needs at least one section (binning, exclusion, ...)")
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (binning, exclusion, ...), "
                          f"got a {type(values).__name__}")
    return BkgdbConfig.from_dict(values)
