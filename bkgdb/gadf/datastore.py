"""Reading a GADF DL3 datastore's index tables: which runs it holds and where their events are.

A datastore is a folder with ``obs-index.fits[.gz]`` and ``hdu-index.fits[.gz]``, the layout
`gammapy.data.DataStore.from_dir` opens. This module reads it with astropy only, so a broken
run file is reported for that run instead of stopping the whole index.

The index tables are read as gammapy reads them, so a run's event file is the one
``DataStore.from_dir(folder).obs(obs_id)`` opens:

- files are joined as ``folder / FILE_DIR / FILE_NAME``, ``folder`` being the folder given (the
  hdu-index's own ``BASE_DIR`` keyword is ignored, as gammapy overwrites it);
- a masked (empty) ``FILE_DIR`` means the folder itself;
- ``HDU_TYPE``, ``FILE_DIR``, ``FILE_NAME`` and ``HDU_NAME`` are stripped of blanks, and
  ``HDU_TYPE`` is compared with ``events`` as is: gammapy finds no ``EVENTS`` (upper case) row;
- when several events rows name one run, the first one counts.

An index whose OBS_IDs are not integers in 0 ... 2**63 - 1, or whose obs-index lists an OBS_ID
twice, is refused as a whole (`DatastoreError`): the OBS_ID is the run's key, so such a run
could not even be recorded as failed. A run whose events row lacks ``FILE_NAME`` or ``HDU_NAME``
is indexed as failed with that reason, and the other runs are indexed.

A run's event file is read by `bkgdb.gadf.events`; the facts the catalogue keeps of a run by
`bkgdb.gadf.runfacts`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import math
import os
import warnings
import zlib
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bkgdb.errors import DatastoreError
from bkgdb.obs_id import OBS_ID_LIMIT

if TYPE_CHECKING:  # imported where used: index workers, which never read tables, skip it
    from astropy.table import Table

__all__ = [
    "DL3Datastore",
    "RunSource",
    "read_index_table",
    "checked_obs_ids",
    "json_safe",
    "finite_number",
    "one_line",
    "NO_EVENTS_HDU",
]

log = logging.getLogger(__name__)

OBS_INDEX_NAMES = ("obs-index.fits.gz", "obs-index.fits")
HDU_INDEX_NAMES = ("hdu-index.fits.gz", "hdu-index.fits")
#: Columns gammapy needs in an hdu-index to locate an HDU.
HDU_INDEX_COLUMNS = ("OBS_ID", "HDU_TYPE", "HDU_CLASS", "FILE_DIR", "FILE_NAME", "HDU_NAME")
#: Why a run without an events row in the hdu-index cannot be read.
NO_EVENTS_HDU = "the hdu-index lists no events HDU for this run"
#: Longest error reason kept from a library's message.
REASON_LENGTH = 200


def json_safe(value: Any) -> Any:
    """Convert a FITS table or header value into something JSON (and JSONB) stores exactly."""
    if value is np.ma.masked or (isinstance(value, np.ma.MaskedArray) and value.mask.all()):
        return None
    if isinstance(value, np.ndarray):
        return [json_safe(item) for item in value.tolist()]
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode("ascii", errors="replace").strip()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return str(value)


def finite_number(value: Any) -> float | None:
    """``value`` as a finite float, or None when it is missing, not a number, NaN or infinite."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def one_line(text: object, limit: int = REASON_LENGTH) -> str:
    """The first non-empty line of a message, at most ``limit`` characters."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _find_index_file(folder: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise DatastoreError(f"{folder} has no {what} ({' or '.join(names)}): not a DL3 datastore")


def read_index_table(path: Path, what: str) -> Table:
    """Read the first table of an index file as gammapy does, or say in one line what is wrong.

    Parameters
    ----------
    path : `~pathlib.Path`
        The ``obs-index`` or ``hdu-index`` file, gzip-compressed or not.
    what : str
        Its name in messages (``"obs-index"``, ``"hdu-index"``).

    Returns
    -------
    table : `~astropy.table.Table`
        Masked where the file has empty (null) cells.

    Raises
    ------
    DatastoreError
        The file cannot be read, is truncated or holds no FITS table.
    """

    from astropy.table import Table

    def refuse(reason: object) -> DatastoreError:
        return DatastoreError(f"cannot read the {what} {path}: {one_line(reason)}")

    try:
        content = path.read_bytes()
    except OSError as exc:
        raise refuse(exc.strerror or exc) from None
    if content[:2] == b"\x1f\x8b":
        try:
            content = gzip.decompress(content)
        except (EOFError, OSError, zlib.error) as exc:
            raise refuse(f"damaged or truncated gzip data ({exc})") from None
    if not content:
        raise refuse("the file is empty")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # format="fits" as gammapy: astropy's format guessing would answer garbage with a table of
        # every format it knows.
        error: Exception | None = None
        try:
            table = Table.read(io.BytesIO(content), format="fits")
        except Exception as exc:  # astropy raises OSError, ValueError, TypeError... for bad FITS
            error = exc
    truncated = [str(w.message) for w in caught if "truncated" in str(w.message)]
    for warning in caught:
        log.debug("%s %s: %s", what, path, one_line(warning.message))
    if truncated:
        raise refuse(truncated[0])
    if error is not None:
        reason = one_line(error)
        if reason == "No table found":
            reason = "no table HDU in the file (damaged or truncated?)"
        raise refuse(f"{type(error).__name__}: {reason}")
    return table


def checked_obs_ids(table: Table, what: str, path: Path, unique: bool) -> np.ndarray:
    """The OBS_ID column as 64-bit integers, or a `DatastoreError` naming the first bad value.

    OBS_IDs must be whole numbers in 0 ... 2**63 - 1 (a float column of whole numbers is
    accepted); with ``unique``, each may appear once.
    """
    column = table["OBS_ID"]
    prefix = f"{what} {path}:"
    missing = np.flatnonzero(np.ma.getmaskarray(column))
    if len(missing):
        raise DatastoreError(f"{prefix} row {missing[0] + 1} has no OBS_ID")
    values = np.asarray(column)
    kind = values.dtype.kind
    if kind not in "iuf":
        sample = json_safe(values[0]) if len(values) else ""
        held = {"S": "text", "U": "text", "b": "boolean"}.get(kind, str(values.dtype))
        raise DatastoreError(f"{prefix} OBS_ID must be integers, the column holds {held} values (row 1: {sample!r})")
    if kind == "f":
        bad = np.flatnonzero(~np.isfinite(values) | (values != np.round(values)))
        if len(bad):
            raise DatastoreError(f"{prefix} OBS_ID {float(values[bad[0]])!r} in row {bad[0] + 1} is not an integer")
    # Compared as Python integers: uint64 values above 2**63 and int64 values below 0 both fail.
    out_of_range = [row for row, value in enumerate(values.tolist()) if not 0 <= int(value) < OBS_ID_LIMIT]
    if out_of_range:
        row = out_of_range[0]
        raise DatastoreError(
            f"{prefix} OBS_ID {int(values[row])} in row {row + 1} is outside 0 ... 2**63 - 1 "
            "(OBS_IDs are stored as 64-bit signed integers)"
        )
    obs_ids = values.astype(np.int64)
    if unique and len(obs_ids):
        found, counts = np.unique(obs_ids, return_counts=True)
        if (counts > 1).any():
            duplicate = found[counts > 1][0]
            rows = np.flatnonzero(obs_ids == duplicate) + 1
            raise DatastoreError(
                f"{prefix} OBS_ID {duplicate} is listed {len(rows)} times (rows "
                f"{', '.join(map(str, rows[:5]))}): which row describes the run?"
            )
    return obs_ids


def _text(value: Any) -> str | None:
    """A string cell stripped of blanks, or None when it is masked or empty."""
    if value is np.ma.masked:
        return None
    if isinstance(value, (bytes, np.bytes_)):
        value = value.decode("ascii", errors="replace")
    text = str(value).strip()
    return text or None


@dataclass
class RunSource:
    """One run as the datastore's index tables describe it."""

    obs_id: int
    #: The run's obs-index row, JSON-safe, keyed by the obs-index column names.
    row: dict
    #: The file holding the run's events, or None if the hdu-index names none.
    events_path: Path | None
    events_hdu: str | None
    #: Why ``events_path`` is None: what the hdu-index lacks for this run.
    events_problem: str | None = None
    #: HDU type to HDU name of the run's other hdu-index rows (GTI, IRFs) that name its events
    #: file, the first row of each type as gammapy takes it; without ``bkg``, which attach replaces.
    file_hdus: dict[str, str] = field(default_factory=dict)

    @property
    def row_sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.row, sort_keys=True).encode()).hexdigest()

    @property
    def missing_events_reason(self) -> str:
        """Why this run's events cannot be located (for a run whose ``events_path`` is None)."""
        return self.events_problem or NO_EVENTS_HDU


class DL3Datastore:
    """The index tables of a DL3 datastore folder, read as `gammapy.data.DataStore.from_dir` reads them.

    Parameters
    ----------
    path : str or `~pathlib.Path`
        The datastore folder (``$VARIABLES`` and ``~`` are expanded).

    Attributes
    ----------
    obs_table : `~astropy.table.Table`
        The obs-index as read (masked where cells are empty).
    hdu_table : `~astropy.table.Table`
        The hdu-index as gammapy holds it: filled (an empty ``FILE_DIR`` is ``""``) and with
        ``BASE_DIR`` set to the datastore folder.

    Raises
    ------
    DatastoreError
        The folder or an index file is missing or unreadable, a required column is missing, or
        an OBS_ID is invalid.
    """

    def __init__(self, path: str | Path) -> None:
        path = Path(os.path.expandvars(str(path))).expanduser()
        if not path.exists():
            raise DatastoreError(f"datastore folder does not exist: {path}")
        if not path.is_dir():
            raise DatastoreError(f"not a folder: {path}")
        self.path = path.resolve()
        self.obs_index_path = _find_index_file(self.path, OBS_INDEX_NAMES, "obs-index file")
        self.hdu_index_path = _find_index_file(self.path, HDU_INDEX_NAMES, "hdu-index file")
        self.obs_table = read_index_table(self.obs_index_path, "obs-index")
        hdu_table = read_hdu_index(self.hdu_index_path)
        if "OBS_ID" not in self.obs_table.colnames:
            raise DatastoreError(f"obs-index {self.obs_index_path} has no OBS_ID column")
        self.obs_ids = checked_obs_ids(self.obs_table, "obs-index", self.obs_index_path, unique=True)
        self._hdu_obs_ids = checked_obs_ids(hdu_table, "hdu-index", self.hdu_index_path, unique=False)
        self._resolved = path_resolver()
        self._locations, self._file_hdus = self._events_locations(hdu_table)
        base_dir = hdu_table.meta.get("BASE_DIR")
        if base_dir is not None:
            log.debug("hdu-index BASE_DIR %r ignored, as gammapy does: files are relative to %s", base_dir, self.path)
        if hasattr(hdu_table["FILE_DIR"], "fill_value"):
            hdu_table["FILE_DIR"].fill_value = ""
        hdu_table = hdu_table.filled()
        hdu_table.meta["BASE_DIR"] = str(self.path)
        self.hdu_table = hdu_table

    @property
    def meta(self) -> dict:
        """The obs-index header (MJDREF, TIMESYS, GEOLON, ...), JSON-safe."""
        return {
            key: json_safe(value)
            for key, value in self.obs_table.meta.items()
            if key not in ("comments", "history", "COMMENT", "HISTORY")
        }

    def _events_locations(
        self, hdu_table: Table
    ) -> tuple[dict[int, tuple[Path | None, str | None, str | None]], dict[int, dict[str, str]]]:
        """{obs_id: (path, hdu_name, problem)} from the hdu-index rows of HDU type ``events``, and
        each run's other HDUs in its events file (`RunSource.file_hdus`)."""
        locations: dict[int, tuple[Path | None, str | None, str | None]] = {}
        events_files: dict[int, tuple[str, str]] = {}
        other_case: dict[int, str] = {}
        obs_ids = self._hdu_obs_ids.tolist()
        # Column by column: row access in astropy costs microseconds a cell, and archives have
        # hundreds of thousands of hdu-index rows.
        hdu_types = [_text(value) for value in hdu_table["HDU_TYPE"]]
        for index, hdu_type in enumerate(hdu_types):
            if hdu_type is None or hdu_type.lower() != "events":
                continue
            obs_id = obs_ids[index]
            if hdu_type != "events":
                other_case.setdefault(obs_id, hdu_type)
                continue
            if obs_id in locations:
                log.warning(
                    "hdu-index %s lists several events HDUs for OBS_ID %s: the first one is used, as gammapy does",
                    self.hdu_index_path,
                    obs_id,
                )
                continue
            row = hdu_table[index]
            file_dir = _text(row["FILE_DIR"]) or ""
            file_name, hdu_name = _text(row["FILE_NAME"]), _text(row["HDU_NAME"])
            if file_name is None or hdu_name is None:
                missing = "FILE_NAME" if file_name is None else "HDU_NAME"
                locations[obs_id] = (None, None, f"the hdu-index events row of this run has no {missing}")
                continue
            locations[obs_id] = (self._resolved(self.path / file_dir / file_name), hdu_name, None)
            events_files[obs_id] = (file_dir, file_name)
        for obs_id, hdu_type in other_case.items():
            if obs_id not in locations:
                locations[obs_id] = (
                    None,
                    None,
                    f"the hdu-index gives this run's events HDU_TYPE {hdu_type!r}; "
                    "gammapy reads only 'events' (lower case)",
                )
        return locations, self._same_file_hdus(hdu_table, hdu_types, obs_ids, events_files)

    @staticmethod
    def _same_file_hdus(
        hdu_table: Table, hdu_types: list[str | None], obs_ids: list[int], events_files: dict[int, tuple[str, str]]
    ) -> dict[int, dict[str, str]]:
        """{obs_id: {hdu_type: hdu_name}} of the rows other than events and bkg naming the run's
        events file (by FILE_DIR and FILE_NAME as written: resolving every row's path costs more)."""
        file_hdus: dict[int, dict[str, str]] = {}
        columns = [hdu_table[name].tolist() for name in ("FILE_DIR", "FILE_NAME", "HDU_NAME")]
        for index, hdu_type in enumerate(hdu_types):
            if hdu_type in (None, "events", "bkg") or obs_ids[index] not in events_files:
                continue
            file_dir, file_name, hdu_name = (_text(column[index]) for column in columns)
            if hdu_name is not None and ((file_dir or ""), file_name) == events_files[obs_ids[index]]:
                file_hdus.setdefault(obs_ids[index], {}).setdefault(hdu_type, hdu_name)
        return file_hdus

    def runs(self) -> list[RunSource]:
        """The runs of the obs-index, in its order.

        Returns
        -------
        runs : list of `RunSource`
        """
        runs = []
        for obs_id, row in zip(self.obs_ids.tolist(), self.obs_table, strict=True):
            values = {name: json_safe(row[name]) for name in self.obs_table.colnames}
            events_path, events_hdu, problem = self._locations.get(obs_id, (None, None, None))
            file_hdus = dict(self._file_hdus.get(obs_id, {}))
            runs.append(RunSource(obs_id, values, events_path, events_hdu, problem, file_hdus))
        return runs

    def referenced_files(self, names: Collection[str] | None = None) -> dict[Path, str]:
        """`referenced_files` of its hdu-index."""
        return referenced_files(self.path, self.hdu_table, names)


def referenced_files(folder: Path, hdu_table: Table, names: Collection[str] | None = None) -> dict[Path, str]:
    """{resolved path: "run OBS_ID, HDU_TYPE"} of the files the hdu-index ``hdu_table`` of the
    datastore ``folder`` points to (events, IRFs).

    Only the files named as in ``names``, if given: resolving every path of a large archive to
    compare it with one output is wasted work.
    """
    files: dict[Path, str] = {}
    resolve = path_resolver()
    rows = np.arange(len(hdu_table))
    if names is not None:  # the names compared column-wise: archives have hundreds of thousands of rows
        raw = np.asarray(hdu_table["FILE_NAME"])
        # Rows holding a name anywhere, found in the column as read (bytes, as FITS gives them); only
        # those are converted and compared whole: converting 600,000 names took most of a check.
        wanted = [name.encode() if raw.dtype.kind == "S" else name for name in names]
        holds = np.zeros(len(raw), dtype=bool)
        for name in wanted:
            holds |= np.char.find(raw, name) >= 0
        rows = rows[holds]
        file_names = np.char.strip(np.asarray(raw[rows], dtype=str))
        rows = rows[np.isin(np.char.rpartition(file_names, "/")[:, 2], list(names))] if rows.size else rows
    columns = [hdu_table[name] for name in ("FILE_DIR", "FILE_NAME", "OBS_ID", "HDU_TYPE")]
    for file_dir, file_name, obs_id, hdu_type in zip(*(column[rows] for column in columns), strict=True):
        file_name = _text(file_name)
        if file_name is None:
            continue
        path = resolve(Path(folder, _text(file_dir) or "", file_name))
        files.setdefault(path, f"run {int(obs_id)}, {_text(hdu_type)}")
    return files


def path_resolver() -> Callable[[Path], Path]:
    """``Path.resolve`` that resolves each folder once (a run's file is usually among thousands)."""
    folders: dict[Path, Path] = {}

    def resolve(path: Path) -> Path:
        folder = folders.get(path.parent)
        if folder is None:
            folder = folders[path.parent] = path.parent.resolve()
        path = folder / path.name
        return path.resolve() if path.is_symlink() else path

    return resolve


def hdu_index_files(folder: str | Path, names: Collection[str] | None = None) -> dict[Path, str]:
    """`referenced_files` of the datastore ``folder``, reading only its hdu-index.

    Raises
    ------
    DatastoreError
        The hdu-index is missing or unreadable, or lacks a column.
    """
    folder = Path(folder)
    return referenced_files(folder, read_hdu_index(_find_index_file(folder, HDU_INDEX_NAMES, "hdu-index file")), names)


def read_hdu_index(path: Path) -> Table:
    """The hdu-index at ``path`` (`read_index_table`), with every column of `HDU_INDEX_COLUMNS`.

    Raises
    ------
    DatastoreError
        The file cannot be read or lacks a column.
    """
    table = read_index_table(path, "hdu-index")
    absent = [name for name in HDU_INDEX_COLUMNS if name not in table.colnames]
    if absent:
        raise DatastoreError(
            f"hdu-index {path} has no {', '.join(absent)} column"
            f"{'s' if len(absent) > 1 else ''} (it needs {', '.join(HDU_INDEX_COLUMNS)})"
        )
    return table
