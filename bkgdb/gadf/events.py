"""Reading a run's event file: its EVENTS header and, for pieces, its event columns.

The file's bytes are read once by the caller (they are hashed too) and parsed here; a damaged or
truncated file is a `RunReadError` for that run only. Event times are seconds after the time
reference of the EVENTS header (``MJDREFI`` + ``MJDREFF`` in the ``TIMESYS`` scale), as gammapy
reads them; the observatory location comes from ``GEOLON``, ``GEOLAT`` and ``GEOALT`` or
``ALTITUDE``.
"""

from __future__ import annotations

import gzip
import io
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from bkgdb.gadf.datastore import RunSource, finite_number, json_safe

if TYPE_CHECKING:
    from astropy.coordinates import EarthLocation
    from astropy.io import fits
    from astropy.time import Time

__all__ = [
    "EventList",
    "RunReadError",
    "decompress_events",
    "read_events",
    "time_reference",
    "observatory_location",
]


class RunReadError(Exception):
    """A run's event file cannot be read; the message is the reason stored in the catalogue."""


class Values(Protocol):
    """Anything with a dict-like ``get``: a header, an obs-index row or its header meta."""

    def get(self, key: str, default: Any = None, /) -> Any: ...


def time_reference(values: Values) -> Time | None:
    """The epoch FITS times count from, or None when ``values`` give none.

    ``MJDREFI`` + ``MJDREFF`` (else ``MJDREF``) in the ``TIMESYS`` scale (TT when missing or
    unknown), as `gammapy.utils.time.time_ref_from_dict` reads it.
    """
    from astropy.time import Time

    scale = str(values.get("TIMESYS") or "tt").strip().lower()
    if scale not in Time.SCALES:
        scale = "tt"
    whole = finite_number(values.get("MJDREFI"))
    if whole is not None:
        return Time(whole, finite_number(values.get("MJDREFF")) or 0.0, format="mjd", scale=scale)
    mjdref = finite_number(values.get("MJDREF"))
    return None if mjdref is None else Time(mjdref, format="mjd", scale=scale)


def observatory_location(*sources: Values) -> EarthLocation | None:
    """The observatory of the first source giving ``GEOLON`` and ``GEOLAT``, or None.

    The height is ``GEOALT``, else ``ALTITUDE`` (m), else 0, as gammapy's
    ``earth_location_from_dict`` reads it.
    """
    from astropy import units as u
    from astropy.coordinates import EarthLocation

    for values in sources:
        lon, lat = finite_number(values.get("GEOLON")), finite_number(values.get("GEOLAT"))
        if lon is None or lat is None:
            continue
        height = finite_number(values.get("GEOALT"))
        if height is None:
            height = finite_number(values.get("ALTITUDE"))
        return EarthLocation(lon=lon * u.deg, lat=lat * u.deg, height=(height or 0.0) * u.m)
    return None


class _HeaderValues:
    """A FITS header's values as `json_safe` gives them, parsed only for the keys asked for.

    Parsing every card of an EVENTS header costs more than reading its events; a run needs a
    dozen keys. Like a dict of the cards, a repeated key gives its last value.
    """

    def __init__(self, header: fits.Header) -> None:
        self._header = header

    def get(self, key: str, default: Any = None) -> Any:
        if key in ("COMMENT", "HISTORY", "") or key not in self._header:
            return default
        return json_safe(self._header[(key, self._header.count(key) - 1)])


#: FITS blocks and cards are this many bytes.
_BLOCK, _CARD = 2880, 80
_COMMENTARY = ("COMMENT", "HISTORY", "")
_KEYWORD = re.compile(r"[A-Z0-9_-]{1,8}")
#: Values astropy reads as plain Python numbers and booleans (fixed and free format alike).
_INTEGER = re.compile(r"[+-]?\d+")
_REAL = re.compile(r"[+-]?(\.\d+|\d+(\.\d*)?)([DE][+-]?\d+)?")
#: A string astropy may take for a record-valued keyword card ('AXIS.1: 2'): left to astropy.
_RECORD_VALUE = re.compile(r"\s*[a-zA-Z_]\w*(\.\w+)*:\s")


def _card_value(image: str) -> Any:
    """The value of a ``KEYWORD= value / comment`` card, as astropy's ``Card.value`` gives it.

    The forms FITS writers use are parsed here; any other goes to astropy.
    """
    text = image[10:]
    body = text.lstrip()
    if body.startswith("'"):
        # Strings: '' is a quote; trailing blanks are insignificant.
        closing = body.find("'", 1)
        while 0 < closing < len(body) - 1 and body[closing + 1] == "'":
            closing = body.find("'", closing + 2)
        rest = body[closing + 1 :].lstrip() if closing > 0 else "?"
        if closing > 0 and (not rest or rest.startswith("/")):
            value = body[1:closing].replace("''", "'").rstrip()
            if not _RECORD_VALUE.match(value):
                return value
    else:
        body = body.split("/", 1)[0].strip()
        if body in ("T", "F"):
            return body == "T"
        if _INTEGER.fullmatch(body):
            return int(body)
        if _REAL.fullmatch(body):
            return float(body.replace("D", "E"))
    from astropy.io import fits

    return fits.Card.fromstring(image).value


class _CardValues:
    """The values of a header's cards as `json_safe` gives them, each parsed when asked for (not
    kept: a run's header is read for a few keys).

    For headers of plain ``KEYWORD= value`` cards (and commentary), which EVENTS headers are; a
    header with long strings (CONTINUE), HIERARCH or odd cards is read by astropy.
    """

    def __init__(self, cards: dict[str, str]) -> None:
        self._cards = cards

    def get(self, key: str, default: Any = None) -> Any:
        image = self._cards.get(key.upper()) if key not in _COMMENTARY else None
        return default if image is None else json_safe(_card_value(image))


def _header_cards(content: bytes, start: int) -> tuple[dict[str, str], int] | None:
    """The value cards (keyword to card image, the last of a repeated keyword) of the header at
    ``start`` and where its data begin; None for headers that need astropy."""
    offset = start
    cards: dict[str, str] = {}
    while offset + _BLOCK <= len(content):
        try:
            block = content[offset : offset + _BLOCK].decode("ascii")
        except UnicodeDecodeError:
            return None
        offset += _BLOCK
        for position in range(0, _BLOCK, _CARD):
            image = block[position : position + _CARD]
            keyword = image[:8].rstrip()
            if keyword == "END":
                return (cards, offset) if not image[3:].strip() else None
            if keyword in _COMMENTARY:
                continue
            if image[8:10] != "= " or not _KEYWORD.fullmatch(keyword):
                return None  # HIERARCH, CONTINUE, lower case, no value...
            cards[keyword] = image
    return None


def _data_size(cards: dict[str, str], primary: bool) -> int | None:
    """Bytes of an HDU's data (without the padding to whole blocks); None when astropy should decide."""
    try:
        n_axes = int(_card_value(cards["NAXIS"]))
        bitpix = int(_card_value(cards["BITPIX"]))
        axes = [int(_card_value(cards[f"NAXIS{axis}"])) for axis in range(1, n_axes + 1)]
        pcount = int(_card_value(cards["PCOUNT"])) if "PCOUNT" in cards else 0
        gcount = int(_card_value(cards["GCOUNT"])) if "GCOUNT" in cards else 1
    except (KeyError, TypeError, ValueError):
        return None
    if primary and "GROUPS" in cards:  # random groups
        return None
    return abs(bitpix) // 8 * gcount * (pcount + int(np.prod(axes))) if n_axes else 0


#: Bytes per element of binary table formats; big-endian numpy types of those read here.
_FORMAT_WIDTH = {"L": 1, "B": 1, "I": 2, "J": 4, "K": 8, "A": 1, "E": 4, "D": 8, "C": 8, "M": 16, "P": 8, "Q": 16}
_FORMAT_DTYPE = {"B": "u1", "I": ">i2", "J": ">i4", "K": ">i8", "E": ">f4", "D": ">f8"}
_TFORM = re.compile(r"\s*(\d*)([LXBIJKAEDCMPQ])(.*)")


@dataclass
class _Table:
    """Where a binary table's rows lie in the file and how its scalar numeric columns are laid out."""

    cards: dict[str, str]
    start: int
    row_bytes: int
    n_rows: int
    #: Every column's name.
    names: list
    #: Column name to (byte offset in a row, numpy type, unit) of the unscaled scalar numeric columns.
    columns: dict[str, tuple[int, str, str]]

    def column(self, content: bytes, name: str, unit: str) -> np.ndarray:
        """A column's values as floats in ``unit``, as `_column` reads them through astropy."""
        offset, dtype, column_unit = self.columns[name]
        if not self.n_rows:  # numpy takes no view at the very end of a buffer
            return _in_unit(np.empty(0), column_unit, unit)
        values = np.ndarray((self.n_rows,), dtype, content, self.start + offset, (self.row_bytes,))
        return _in_unit(np.asarray(values, dtype=float), column_unit, unit)


def _table_layout(cards: dict[str, str], start: int) -> _Table | None:
    """The layout of a binary table, or None if astropy should read it (scaled columns, ...)."""
    try:
        row_bytes, n_rows = int(_card_value(cards["NAXIS1"])), int(_card_value(cards["NAXIS2"]))
        n_fields = int(_card_value(cards["TFIELDS"]))
        columns: dict[str, tuple[int, str, str]] = {}
        names = []
        offset = 0
        for field_number in range(1, n_fields + 1):
            tform = _TFORM.fullmatch(str(_card_value(cards[f"TFORM{field_number}"])))
            if tform is None:
                return None
            repeat = int(tform.group(1) or 1)
            code = tform.group(2)
            width = (repeat + 7) // 8 if code == "X" else repeat * _FORMAT_WIDTH[code]
            name = _card_value(cards[f"TTYPE{field_number}"]) if f"TTYPE{field_number}" in cards else ""
            unit = _card_value(cards[f"TUNIT{field_number}"]) if f"TUNIT{field_number}" in cards else ""
            scaled = any(f"{key}{field_number}" in cards for key in ("TSCAL", "TZERO", "TDIM"))
            plain = not scaled and repeat == 1 and code in _FORMAT_DTYPE and not tform.group(3).strip()
            if plain and isinstance(name, str) and isinstance(unit, str):
                columns[name] = (offset, _FORMAT_DTYPE[code], unit)
            names.append(name)
            offset += width
    except (KeyError, TypeError, ValueError):
        return None
    if offset != row_bytes or n_rows < 0:
        return None
    for name in {name for name in names if names.count(name) > 1}:  # astropy decides which one
        columns.pop(name, None)
    return _Table(cards, start, row_bytes, n_rows, names, columns)


def _find_table(content: bytes, hdu_name: str | None) -> _Table | None:
    """The binary table HDU named ``hdu_name`` (as astropy matches names) when it is complete
    and plain; None otherwise: astropy then reads the file, and tells what is wrong with it."""
    if not isinstance(hdu_name, str) or not content.startswith(b"SIMPLE  ="):
        return None
    wanted = hdu_name.strip().upper()
    offset, number = 0, 0
    while offset < len(content):
        found = _header_cards(content, offset)
        if found is None:
            return None
        cards, data_start = found
        size = _data_size(cards, primary=number == 0)
        if size is None:
            return None
        extname = _card_value(cards["EXTNAME"]) if "EXTNAME" in cards else ("PRIMARY" if number == 0 else "")
        if str(extname).strip().upper() == wanted or (wanted == "PRIMARY" and number == 0):
            if number == 0 or "XTENSION" not in cards or _card_value(cards["XTENSION"]) != "BINTABLE":
                return None
            complete = data_start + size <= len(content)
            return _table_layout(cards, data_start) if complete else None
        offset, number = data_start + -(-size // _BLOCK) * _BLOCK, number + 1
    return None


@dataclass
class EventList:
    """What bkgdb needs of a run's EVENTS table: its header and, if asked, the event columns.

    Attributes
    ----------
    header : dict-like
        The EVENTS header's values (``get`` only).
    ra_deg, dec_deg, energy_tev : `~numpy.ndarray` or None
        Event directions (deg) and reconstructed energies (TeV).
    time_s : `~numpy.ndarray` or None
        Event times in s after the header's time reference (None if the table has no TIME).
    """

    header: Any
    ra_deg: np.ndarray | None = None
    dec_deg: np.ndarray | None = None
    energy_tev: np.ndarray | None = None
    time_s: np.ndarray | None = None


def _in_unit(values: np.ndarray, column_unit: str | None, unit: str) -> np.ndarray:
    if column_unit and column_unit != unit:  # the same unit: astropy would return the values as they are
        from astropy import units as u

        values = (values * u.Unit(column_unit)).to_value(unit)
    return values


def _column(hdu: fits.BinTableHDU, name: str, unit: str) -> np.ndarray:
    return _in_unit(np.asarray(hdu.data[name], dtype=float), hdu.columns[name].unit, unit)


#: The event columns read, and their units; TIME only when the table has it.
_EVENT_COLUMNS = (("ra_deg", "RA", "deg"), ("dec_deg", "DEC", "deg"), ("energy_tev", "ENERGY", "TeV"))
_TIME_COLUMN = ("time_s", "TIME", "s")


def _read_plain(table: _Table, content: bytes, with_events: bool) -> EventList | None:
    """The events of a plain table read straight from the file's bytes; None if astropy must read them."""
    events = EventList(_CardValues(table.cards))
    if not with_events:
        return events
    wanted = _EVENT_COLUMNS + ((_TIME_COLUMN,) if "TIME" in table.names else ())
    if any(name not in table.columns for _, name, _ in wanted):
        return None
    for attribute, name, unit in wanted:
        setattr(events, attribute, table.column(content, name, unit))
    return events


def _file_name(source: RunSource) -> str:
    """How a run's event file is named in messages."""
    return source.events_path.name if source.events_path is not None else str(source.obs_id)


def _unreadable(source: RunSource, exc: Exception) -> RunReadError:
    return RunReadError(f"cannot read {_file_name(source)}: {type(exc).__name__}: {exc}")


def decompress_events(source: RunSource, content: bytes) -> bytes:
    """A run's event file as FITS bytes: ``content`` itself, or decompressed if it is gzip.

    Apart from `read_events` so that the decompression (which releases the GIL) can run in
    another thread than the parsing.

    Raises
    ------
    RunReadError
        The gzip stream is damaged or truncated (the message `read_events` gives).
    """
    if content[:2] != b"\x1f\x8b":
        return content
    try:
        return gzip.decompress(content)
    except Exception as exc:  # BadGzipFile, EOFError, zlib.error...: all mean "unreadable"
        raise _unreadable(source, exc) from None


def read_events(source: RunSource, content: bytes, with_events: bool = False) -> EventList:
    """Parse a run's event file from its bytes and check its EVENTS table is complete.

    Parameters
    ----------
    source : `~bkgdb.gadf.datastore.RunSource`
        The run (for the HDU name and messages).
    content : bytes
        The file's bytes, gzip-compressed or not (`decompress_events` may have been applied:
        FITS bytes never look like gzip), read once by the caller.
    with_events : bool, optional
        Also return RA, Dec (deg), energy (TeV) and, when the table has it, TIME (s) of every
        event. Default is False.

    Returns
    -------
    events : `EventList`

    Raises
    ------
    RunReadError
        The file is damaged, truncated, or has no events table.
    """
    name = _file_name(source)
    try:
        content = decompress_events(source, content)
        # Most event files are plain binary tables, read here without astropy's table machinery
        # (which costs more than the reading); anything else, or anything wrong, goes to astropy.
        table = _find_table(content, source.events_hdu)
        plain = None if table is None else _read_plain(table, content, with_events)
        if plain is not None:
            return plain
        from astropy.io import fits

        with fits.open(io.BytesIO(content), memmap=False) as hdul:
            try:
                hdu = hdul[source.events_hdu]
            except KeyError:
                raise RunReadError(f"no HDU named {source.events_hdu!r} in {name}") from None
            header = hdu.header
            expected = int(header.get("NAXIS2", 0))
            found = 0 if hdu.data is None else len(hdu.data)
            if found != expected:
                raise RunReadError(f"event table truncated: {found} of {expected} rows readable")
            events = EventList(_HeaderValues(header))
            if with_events:
                events.ra_deg = _column(hdu, "RA", "deg")
                events.dec_deg = _column(hdu, "DEC", "deg")
                events.energy_tev = _column(hdu, "ENERGY", "TeV")
                if "TIME" in hdu.columns.names:
                    events.time_s = _column(hdu, "TIME", "s")
            return events
    except RunReadError:
        raise
    except Exception as exc:  # OSError, astropy's VerifyError...: all mean "unreadable"
        raise _unreadable(source, exc) from None
