"""Source and star catalogues: the positions and exclusion radii of their entries, and names.

gamma-cat (FITS) and 3HWC (ECSV) sources and Hipparcos stars are read once per process; a source
is found by any of its names, compared case- and white-space-insensitively.
"""

import difflib
import logging
import re
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from bkgdb.errors import ConfigError
from bkgdb.makers.sphere import unit_vectors

__all__ = [
    "Catalogue",
    "NamedSource",
    "SOURCE_CATALOGUES",
    "load_catalogue",
    "load_source_names",
    "normalise_source_name",
    "find_named_sources",
    "read_source_table",
]

log = logging.getLogger(__name__)

EXTENDED_MORPHOLOGIES = ("gauss", "shell", "disk")


@dataclass(frozen=True)
class Catalogue:
    """Positions (unit vectors), names and exclusion radii of one catalogue's entries."""

    names: np.ndarray
    vectors: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    radius: np.ndarray
    kind: str


@cache
def read_source_table(kind: str, path: str) -> Any:
    """A gamma-cat (FITS) or 3HWC (ECSV) file as a table, read once per process."""
    from astropy.table import Table

    # The format is named, as for 3HWC: astropy's guess fails on a file that is not FITS with an
    # IORegistryError listing every format it knows.
    try:
        return Table.read(path, format="fits") if kind == "gammacat" else Table.read(path, format="ascii.ecsv")
    except (OSError, KeyError, ValueError) as exc:
        # astropy's advice to pass ignore_missing_simple=True is for its callers, not for a config.
        reason = str(exc).split(" If this is really a FITS file")[0]
        raise ConfigError(f"cannot read {kind} catalogue {path}: {reason}") from None


@cache
def load_catalogue(
    kind: str,
    path: str,
    source_radius: float = 0.35,
    extended_factor: float = 3.0,
    star_radius: float = 0.35,
    star_mag_max: float = 8.0,
) -> "Catalogue":
    """Read a gamma-cat, 3HWC or Hipparcos file once per process and give each entry its radius."""
    try:
        if kind == "gammacat":
            table = read_source_table(kind, path)
            names = np.asarray(table["common_name"]).astype(str)
            sigma = np.nan_to_num(np.ma.filled(np.asarray(table["morph_sigma"], float), np.nan), nan=0.0)
            if "morph_sigma2" in table.colnames:
                sigma2: np.ndarray = np.ma.filled(np.ma.asarray(table["morph_sigma2"], float), np.nan)
                sigma = np.maximum(sigma, np.nan_to_num(sigma2, nan=0.0))
            morph = np.char.strip(np.asarray(table["morph_type"]).astype(str))
            extended = np.isin(morph, EXTENDED_MORPHOLOGIES) & (sigma > 0)
            radius = np.where(extended, extended_factor * sigma, source_radius)
            kind_label = "source"
        elif kind == "hawc":
            table = read_source_table(kind, path)
            names = np.asarray(table["source_name"]).astype(str)
            extension = np.nan_to_num(np.asarray(table["search_radius"], float), nan=0.0)
            radius = np.where(extension > 0, extended_factor * extension, source_radius)
            kind_label = "source"
        elif kind == "stars":
            # Tab-separated: RA, Dec (J2000, deg), HIP number, V magnitude, B-V; one header line.
            data = np.loadtxt(path, skiprows=1, usecols=(0, 1, 2, 3), ndmin=2)
            data = data[data[:, 3] < star_mag_max]
            table = {"ra": data[:, 0], "dec": data[:, 1]}
            names = np.array([f"HIP {int(hip)}" for hip in data[:, 2]])
            radius = np.full(len(data), star_radius)
            kind_label = "star"
        else:
            raise ValueError(kind)
        ra, dec = np.asarray(table["ra"], float), np.asarray(table["dec"], float)
    except (OSError, KeyError, ValueError) as exc:
        raise ConfigError(f"cannot read {kind} catalogue {path}: {exc}") from None
    log.debug("loaded %d entries from %s", len(ra), path)
    return Catalogue(names, unit_vectors(ra, dec), ra, dec, np.asarray(radius, float), kind_label)


def normalise_source_name(name: object) -> str:
    """A source name as names are compared: case-folded, without any white space.

    "PKS 2155-304", "pks2155-304" and " PKS  2155-304 " are the same name.
    """
    return re.sub(r"\s+", "", str(name)).casefold()


#: Catalogue labels as the config names them, and in error messages.
SOURCE_CATALOGUES = {"gammacat": "gamma-cat", "hawc": "3HWC"}


@dataclass(frozen=True)
class NamedSource:
    """A catalogue entry found by name: which catalogue, its row, its name and position (deg)."""

    catalogue: str
    index: int
    name: str
    ra: float
    dec: float


@cache
def load_source_names(kind: str, path: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every name of each entry of a gamma-cat or 3HWC file, read once per process.

    gamma-cat entries are known by ``common_name``, the comma-separated ``other_names`` and
    ``gamma_names``, and ``source_id``; 3HWC entries by ``source_name``. Files written by
    `bkgdb.simulate.write_source_catalogue` carry ``common_name`` only.

    Returns
    -------
    names : dict
        Normalised name (see `normalise_source_name`) to (row indices, the name as written).
    """
    try:
        table = read_source_table(kind, path)
        if kind == "gammacat":
            columns = [column for column in ("common_name", "other_names", "gamma_names") if column in table.colnames]
            main = "common_name"
        elif kind == "hawc":
            columns, main = ["source_name"], "source_name"
        else:
            raise ValueError(f"no source names in a {kind} catalogue")
        texts = {column: np.ma.filled(np.ma.asarray(table[column]).astype(str), "") for column in columns}
        ids = np.asarray(table["source_id"]) if "source_id" in table.colnames else None
        main_names = texts[main]
    except (OSError, KeyError, ValueError) as exc:
        raise ConfigError(f"cannot read {kind} catalogue {path}: {exc}") from None
    names: dict[str, tuple[tuple[int, ...], str]] = {}
    for row in range(len(main_names)):
        spellings = [str(main_names[row]).strip()]
        for column in columns:
            if column != main:
                spellings += [part.strip() for part in str(texts[column][row]).split(",")]
        if ids is not None:
            spellings.append(str(int(ids[row])))
        for spelling in spellings:
            key = normalise_source_name(spelling)
            if key and key != "--":
                rows, written = names.get(key, ((), spelling))
                if row not in rows:
                    names[key] = (rows + (row,), written)
    return names


def _source_catalogue_paths(settings: Any) -> list[tuple[str, str]]:
    return [(kind, getattr(settings, kind)) for kind in SOURCE_CATALOGUES if getattr(settings, kind)]


def find_named_sources(settings: Any, name: str, label: str = "exclusion") -> list["NamedSource"]:
    """The entries of the configured source catalogues (gamma-cat, 3HWC) known by ``name``.

    Names are compared case- and white-space-insensitively (see `normalise_source_name`).

    Parameters
    ----------
    settings : `~bkgdb.config.ExclusionSettings`
        Gives the catalogue files.
    name : str
        A name as written in the config.
    label : str
        The config key, for error messages.

    Returns
    -------
    sources : list of `NamedSource`
        One per matching entry (a source can be in both catalogues).

    Raises
    ------
    ConfigError
        No source catalogue is configured, or none knows the name (with the closest names).
    """
    paths = _source_catalogue_paths(settings)
    if not paths:
        raise ConfigError(
            f"{label}: cannot look up {name!r}: no source catalogue is configured (exclusion.gammacat, exclusion.hawc)"
        )
    key = normalise_source_name(name)
    found = []
    for kind, path in paths:
        rows, _ = load_source_names(kind, path).get(key, ((), None))
        if rows:
            catalogue = load_catalogue(kind, path)
            found += [
                NamedSource(kind, row, str(catalogue.names[row]), float(catalogue.ra[row]), float(catalogue.dec[row]))
                for row in rows
            ]
    if not found:
        known, entry_of = {}, {}
        for kind, path in paths:
            for normalised, (rows, written) in load_source_names(kind, path).items():
                known[normalised], entry_of[normalised] = written, (kind, rows)
        # Names holding what was typed ("crab" in "Crab nebula"), then names spelled alike; one
        # name per source.
        candidates = [known_key for known_key in sorted(known) if len(key) >= 3 and key in known_key]
        candidates += difflib.get_close_matches(key, list(known), n=10, cutoff=0.6)
        close: list[str] = []
        entries: set[tuple[str, tuple[int, ...]]] = set()
        for candidate in candidates:
            if entry_of[candidate] not in entries and len(close) < 5:
                close.append(candidate)
                entries.add(entry_of[candidate])
        searched = " and ".join(SOURCE_CATALOGUES[kind] for kind, _ in paths)
        hint = f"; did you mean {', '.join(repr(known[match]) for match in close)}?" if close else ""
        raise ConfigError(f"{label}: no source named {name!r} in {searched}{hint}")
    return found
