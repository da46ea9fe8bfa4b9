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
import warnings
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from .errors import ConfigError

__all__ = [
    "ConfigWarning", "Binning", "ExclusionSettings", "CircleRegion", "SelectionSettings", "IOSettings", "BkgdbConfig",
    "load_config", "EXPOSURE_METHODS", "SMOOTHING_METHODS", "default_catalogue_path",
]

log = logging.getLogger(__name__)

EXPOSURE_METHODS = ("geometric", "counts-ratio")
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


def _number(section, key, value, kind=float, minimum=None, strictly=False):
    try:
        if isinstance(value, bool):
            raise ValueError
        number = kind(value)
        if kind is int and float(value) != number:
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"{section}.{key} must be a {'whole ' if kind is int else ''}number, got {value!r}") from None
    if minimum is not None and (number < minimum or (strictly and number == minimum)):
        raise ConfigError(f"{section}.{key} must be {'>' if strictly else '>='} {minimum}, got {value!r}")
    return number


def _check_keys(section, values, known):
    for key in values:
        if key not in known:
            warnings.warn(f"unknown key {section}.{key} in config (ignored)", ConfigWarning, stacklevel=3)


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
            object.__setattr__(self, key, int(getattr(self, key)) if key.endswith("bins") else float(getattr(self, key)))
        if not 0 < self.e_min < self.e_max:
            raise ConfigError(f"binning needs 0 < e_min < e_max, got e_min={self.e_min}, e_max={self.e_max}")
        if not 0 <= self.off_min < self.off_max <= 180:
            raise ConfigError(f"binning needs 0 <= off_min < off_max, got {self.off_min}, {self.off_max}")
        if self.e_bins < 1 or self.off_bins < 1:
            raise ConfigError("binning needs at least one energy and one offset bin")

    @classmethod
    def from_dict(cls, values, section="binning"):
        if not isinstance(values, dict):
            raise ConfigError(f"{section} must be a mapping of {', '.join(cls.KEYS)}")
        _check_keys(section, values, cls.KEYS)
        defaults = cls()
        return cls(
            e_min=_number(section, "e_min", values.get("e_min", defaults.e_min), minimum=0, strictly=True),
            e_max=_number(section, "e_max", values.get("e_max", defaults.e_max), minimum=0, strictly=True),
            e_bins=_number(section, "e_bins", values.get("e_bins", defaults.e_bins), int, minimum=1),
            off_min=_number(section, "off_min", values.get("off_min", defaults.off_min), minimum=0),
            off_max=_number(section, "off_max", values.get("off_max", defaults.off_max), minimum=0, strictly=True),
            off_bins=_number(section, "off_bins", values.get("off_bins", defaults.off_bins), int, minimum=1),
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
    return str(path.resolve() if resolve else path)


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

    KEYS = ("gammacat", "hawc", "star_cat", "search_radius", "source_radius", "extended_factor",
            "star_mag_max", "star_radius", "exclude_regions", "region_files", "exposure_method")

    def __post_init__(self):
        if self.exposure_method not in EXPOSURE_METHODS:
            raise ConfigError(f"exclusion.exposure_method must be one of {', '.join(EXPOSURE_METHODS)}, "
                              f"got {self.exposure_method!r}")
        for name in CATALOGUE_KEYS:
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"exclusion.{name}: catalogue file not found: {path}")
        for path in self.region_files:
            if not Path(path).is_file():
                raise ConfigError(f"exclusion.region_files: region file not found: {path}")

    @classmethod
    def from_dict(cls, values, section="exclusion"):
        values = dict(values or {})
        _check_keys(section, values, cls.KEYS)
        kwargs = {}
        for key in CATALOGUE_KEYS:
            if key in values:
                value = values[key]
                kwargs[key] = None if value in (None, False, "none", "") else _path(value)
        for key in ("search_radius", "source_radius", "extended_factor", "star_radius"):
            if key in values:
                kwargs[key] = _number(section, key, values[key], minimum=0)
        if "star_mag_max" in values:
            kwargs["star_mag_max"] = _number(section, "star_mag_max", values["star_mag_max"])
        if "exposure_method" in values:
            kwargs["exposure_method"] = str(values["exposure_method"])
        regions = []
        for number, entry in enumerate(values.get("exclude_regions") or []):
            regions.append(_circle(section, number, entry))
        kwargs["exclude_regions"] = tuple(regions)
        kwargs["region_files"] = tuple(_path(path, resolve=True) for path in values.get("region_files") or [])
        return cls(**kwargs)

    @cached_property
    def params(self):
        """Everything that changes which events are kept, with each file's path and SHA-256."""
        params = {key: getattr(self, key) for key in self.KEYS}
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
        text = str(value).replace("deg", "").strip()
        values.append(_number(label, key, text))
    ra, dec, radius = values
    if not -90 <= dec <= 90 or radius <= 0:
        raise ConfigError(f"{label} needs -90 <= dec <= 90 and radius > 0, got {entry!r}")
    return CircleRegion(ra % 360.0, dec, radius, name or f"region {number}")


SMOOTHING_METHODS = ("gauss", "poly", "spline", "none")


def _optional(section, values, key, kind=float, minimum=None):
    return None if values.get(key) is None else _number(section, key, values[key], kind, minimum)


def _date(section, key, value):
    from datetime import date

    try:
        return value if isinstance(value, date) else date.fromisoformat(str(value))
    except ValueError:
        raise ConfigError(f"{section}.{key} needs dates as YYYY-MM-DD, got {value!r}") from None


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
    #: Fewest runs and hours of ontime a background may rest on; below them, warn or fail (min_statistics).
    min_runs: int | None = None
    min_ontime: float | None = None
    min_statistics: str = "warn"

    KEYS = ("el_diff", "az_diff", "nsb_diff", "time_max", "same_szn", "seasons", "n_tels", "n_tel", "el_min",
            "el_max", "gal_lat_min", "where", "time_request", "KL_DIV", "smooth", "smooth_method",
            "smooth_sigma", "poly_degree", "spline_smoothing", "fill_empty_bins", "bin_centre_correction",
            "min_runs", "min_ontime", "min_statistics")
    #: gammapy-tools keys that bkgdb reads but does not use.
    UNUSED = ("store_KL", "bkg_runlist")

    def __post_init__(self):
        if self.smooth_method not in SMOOTHING_METHODS:
            raise ConfigError(f"background_selection.smooth_method must be one of {', '.join(SMOOTHING_METHODS)}, "
                              f"got {self.smooth_method!r}")

    @classmethod
    def from_dict(cls, values, section="background_selection"):
        values = dict(values or {})
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
        for number, season in enumerate(values.get("seasons") or []):
            if not isinstance(season, (list, tuple)) or len(season) != 2:
                raise ConfigError(f"{section}.seasons[{number}] must be [start, end] dates")
            start, end = (_date(section, f"seasons[{number}]", day) for day in season)
            if end < start:
                raise ConfigError(f"{section}.seasons[{number}] ends before it starts")
            seasons.append((start.isoformat(), end.isoformat()))
        kwargs["seasons"] = tuple(seasons)
        if kwargs.get("same_szn") and not seasons:
            raise ConfigError(f"{section}.same_szn needs {section}.seasons: a list of [start, end] dates")
        where = values.get("where") or []
        kwargs["where"] = tuple([where] if isinstance(where, str) else [str(item) for item in where])
        method = values.get("smooth_method")
        if method is None:
            method = "gauss" if values.get("smooth") else "none"  # gammapy-tools: smooth: true
        kwargs["smooth_method"] = str(method)
        if "smooth_sigma" in values:
            kwargs["smooth_sigma"] = _number(section, "smooth_sigma", values["smooth_sigma"], minimum=0, strictly=True)
        if "poly_degree" in values:
            kwargs["poly_degree"] = _number(section, "poly_degree", values["poly_degree"], int, minimum=0)
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
        values = dict(values or {})
        _check_keys(section, values, cls.KEYS + cls.UNUSED)
        from_run = values.get("from_run", False)
        if not isinstance(from_run, bool):
            raise ConfigError(f"{section}.from_run must be true or false, got {from_run!r}")
        paths = {key: _path(values[key]) for key in ("search_datastore", "in_dir", "out_dir") if values.get(key)}
        return cls(from_run=from_run, **paths)


@dataclass
class BkgdbConfig:
    """A whole configuration: binnings, exclusion settings, selection, io and worker count."""

    binnings: list = field(default_factory=lambda: [Binning()])
    exclusion: ExclusionSettings = field(default_factory=ExclusionSettings)
    selection: SelectionSettings = field(default_factory=SelectionSettings)
    io: IOSettings = field(default_factory=IOSettings)
    njobs: int = 1

    @property
    def binning(self):
        """The binning backgrounds are assembled with: the first configured one."""
        return self.binnings[0]

    @classmethod
    def from_dict(cls, values):
        values = values or {}
        if not isinstance(values, dict):
            raise ConfigError("a config file must hold a mapping of sections")
        known = {"binning", "exclusion", "config", "background_selection", "io"}
        for key in values:
            if key not in known and key not in FOREIGN_SECTIONS:
                warnings.warn(f"unknown config section {key!r} (ignored)", ConfigWarning, stacklevel=2)
        binning = values.get("binning", {})
        if isinstance(binning, list):
            binnings = [Binning.from_dict(item, f"binning[{n}]") for n, item in enumerate(binning)]
        else:
            binnings = [Binning.from_dict(binning or {})]
        settings = values.get("config") or {}
        _check_keys("config", settings, ("njobs",))
        njobs = _number("config", "njobs", settings.get("njobs", 1), int)
        if njobs < 1:
            njobs = os.cpu_count() or 1  # gammapy-tools: -1 means all cores
        return cls(binnings=binnings, exclusion=ExclusionSettings.from_dict(values.get("exclusion")),
                   selection=SelectionSettings.from_dict(values.get("background_selection")),
                   io=IOSettings.from_dict(values.get("io")), njobs=njobs)


def load_config(path):
    """Read a YAML config file.

    Raises
    ------
    ConfigError
        The file is missing, not YAML, or holds an invalid value.
    """
    import yaml

    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return BkgdbConfig.from_dict(values)
