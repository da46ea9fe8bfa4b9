"""Reading a run's event file: its EVENTS header and, for pieces, its event columns.

The file's bytes are read once by the caller (they are hashed too) and parsed here; a damaged or
truncated file is a `RunReadError` for that run only: every HDU of the file must be whole (gammapy
reads its GTI and IRFs, attach copies them all) and every HDU the hdu-index lists in it present.
Event times are seconds after the time reference of the EVENTS header (``MJDREFI`` + ``MJDREFF``
in the ``TIMESYS`` scale), as gammapy reads them; the observatory location comes from ``GEOLON``,
``GEOLAT`` and ``GEOALT`` or ``ALTITUDE``.
"""

from __future__ import annotations

import gzip
import io
import math
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
    dozen keys. Like a dict of the cards, a repeated key gives its last value. A value astropy
    cannot parse (``ONTIME = NAN``) is None, as json_safe makes a NaN.
    """

    def __init__(self, header: fits.Header) -> None:
        self._header = header

    def get(self, key: str, default: Any = None) -> Any:
        if key in ("COMMENT", "HISTORY", "") or key not in self._header:
            return default
        try:
            value = self._header[(key, self._header.count(key) - 1)]
        except Exception:  # astropy's VerifyError: one bad card must not stop the index
            return None
        return json_safe(value)


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
        if image is None:
            return default
        try:
            value = _card_value(image)
        except Exception:  # astropy's VerifyError (``ONTIME = NAN``): None, as json_safe makes a NaN
            return None
        return json_safe(value)


class _CutOff(Exception):
    """The file ends inside a header: it needs at least ``needed`` bytes."""

    def __init__(self, needed: int) -> None:
        super().__init__(needed)
        self.needed = needed


def _header_cards(content: bytes, start: int) -> tuple[dict[str, str], int, bool] | None:
    """The value cards (keyword to card image, the last of a repeated keyword) of the header at
    ``start``, where its data begin, and whether it holds only such cards and commentary (else
    astropy reads it); None for headers that are not ASCII or whose END card is odd.

    Raises
    ------
    _CutOff
        The file ends before the END card.
    """
    offset = start
    cards: dict[str, str] = {}
    plain = True
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
                return (cards, offset, plain) if not image[3:].strip() else None
            if keyword in _COMMENTARY:
                continue
            if image[8:10] != "= " or not _KEYWORD.fullmatch(keyword):
                plain = False  # HIERARCH, CONTINUE, lower case, no value...
                continue
            cards[keyword] = image
    raise _CutOff(offset + _BLOCK)


_END_CARD = b"END" + b" " * (_CARD - 3)


def _card_image(header: bytes, keyword: str) -> str | None:
    """The first ``KEYWORD= value`` card of ``keyword`` in a header's bytes, or None."""
    key = f"{keyword:<8}= ".encode()
    position = header.find(key)
    while position >= 0 and position % _CARD:  # found inside another card
        position = header.find(key, position + 1)
    return None if position < 0 else header[position : position + _CARD].decode("ascii", "replace")


def _placing_cards(content: bytes, start: int) -> tuple[dict[str, str], int]:
    """The cards that place the HDU whose header is at ``start`` (XTENSION, BITPIX, NAXISn, PCOUNT,
    GCOUNT, GROUPS, EXTNAME) and where its data begin, found by searching its bytes: parsing
    every card costs more than reading the events, and most HDUs need only placing.

    Raises
    ------
    _CutOff
        The file ends before the block that holds the END card.
    """
    end = content.find(_END_CARD, start)
    while end >= 0 and (end - start) % _CARD:
        end = content.find(_END_CARD, end + 1)
    if end < 0:
        raise _CutOff(start + ((len(content) - start) // _BLOCK + 1) * _BLOCK)
    data_start = start + ((end - start) // _BLOCK + 1) * _BLOCK
    if data_start > len(content):
        raise _CutOff(data_start)
    header = content[start:end]
    cards = {}
    for keyword in ("XTENSION", "BITPIX", "NAXIS", "PCOUNT", "GCOUNT", "EXTNAME") + (("GROUPS",) if start == 0 else ()):
        image = _card_image(header, keyword)
        if image is not None:
            cards[keyword] = image
    try:
        n_axes = _integer(cards["NAXIS"])
    except (KeyError, TypeError, ValueError):
        n_axes = 0  # _data_size finds it missing
    for axis in range(1, n_axes + 1):
        image = _card_image(header, f"NAXIS{axis}")
        if image is not None:
            cards[f"NAXIS{axis}"] = image
    return cards, data_start


def _integer(image: str) -> int:
    """The value of an integer card (as `_card_value` reads it, faster)."""
    try:
        return int(image[10:].split("/", 1)[0])
    except ValueError:
        return int(_card_value(image))


def _data_size(cards: dict[str, str], primary: bool) -> int | None:
    """Bytes of an HDU's data (without the padding to whole blocks); None when astropy should decide."""
    try:
        n_axes = _integer(cards["NAXIS"])
        bitpix = _integer(cards["BITPIX"])
        axes = [_integer(cards[f"NAXIS{axis}"]) for axis in range(1, n_axes + 1)]
        pcount = _integer(cards["PCOUNT"]) if "PCOUNT" in cards else 0
        gcount = _integer(cards["GCOUNT"]) if "GCOUNT" in cards else 1
    except (KeyError, TypeError, ValueError):
        return None
    if primary and "GROUPS" in cards:  # random groups
        return None
    return abs(bitpix) // 8 * gcount * (pcount + math.prod(axes)) if n_axes else 0


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


@dataclass
class _Hdu:
    """Where one HDU of a file lies, as its header says."""

    number: int
    #: EXTNAME stripped and in upper case, as astropy matches names ("PRIMARY" for the first HDU).
    name: str
    cards: dict[str, str]
    #: Whether the header holds only ``KEYWORD= value`` cards and commentary (`_header_cards`);
    #: False also for HDUs of which only the placing cards were read.
    plain: bool
    data_start: int
    #: Bytes of data, without the padding to whole blocks.
    data_size: int


def _file_hdus(content: bytes, read: set[str]) -> list[_Hdu] | None:
    """Every HDU of a FITS file, in order, from its headers; None when astropy must place them.

    The headers of HDUs named as in ``read`` (stripped, upper case) are parsed whole, the others
    only for their placing cards. Bytes after the last HDU that do not begin a header are ignored,
    as astropy ignores them.

    Raises
    ------
    RunReadError
        The file ends inside an HDU: truncated.
    """
    if not content.startswith(b"SIMPLE  ="):
        return None
    hdus: list[_Hdu] = []
    offset = 0
    while offset < len(content):
        if hdus and not content.startswith(b"XTENSION=", offset):
            break
        try:
            cards, data_start = _placing_cards(content, offset)
            extname = _card_value(cards["EXTNAME"]) if "EXTNAME" in cards else ("PRIMARY" if not hdus else "")
            plain = False
            if str(extname).strip().upper() in read:
                found = _header_cards(content, offset)
                if found is None:
                    return None
                cards, data_start, plain = found
        except _CutOff as cut:
            if not hdus:  # no whole first header: not FITS, as far as can be told; astropy says why
                return None
            raise RunReadError(
                f"file truncated: {len(content):,} of at least {cut.needed:,} bytes (header of HDU {len(hdus)} cut off)"
            ) from None
        size = _data_size(cards, primary=not hdus)
        if size is None:
            return None
        if str(extname).endswith("&"):  # a long name continued on CONTINUE cards
            return None
        hdu = _Hdu(len(hdus), str(extname).strip().upper(), cards, plain, data_start, size)
        if data_start + size > len(content):
            # Also an HDU the run does not need: attach copies every HDU of the file.
            raise RunReadError(
                f"file truncated: {len(content):,} of at least {data_start + size:,} bytes "
                f"({hdu.name or f'HDU {hdu.number}'} cut off)"
            )
        hdus.append(hdu)
        offset = data_start + -(-size // _BLOCK) * _BLOCK
    return hdus


def _find_table(hdus: list[_Hdu], hdu_name: str | None) -> _Table | None:
    """The plain binary table HDU named ``hdu_name`` (the first, as astropy matches names); None
    otherwise: astropy then reads the file, and tells what is wrong with it."""
    if not isinstance(hdu_name, str):
        return None
    wanted = hdu_name.strip().upper()
    for hdu in hdus:
        if hdu.name == wanted or (wanted == "PRIMARY" and hdu.number == 0):
            if hdu.number == 0 or not hdu.plain or "XTENSION" not in hdu.cards:
                return None
            if _card_value(hdu.cards["XTENSION"]) != "BINTABLE":
                return None
            return _table_layout(hdu.cards, hdu.data_start)
    return None


def _check_listed(source: RunSource, names: set[str], size: int) -> None:
    """Raise if the file lacks an HDU the hdu-index lists in it for this run (a file truncated
    between two HDUs ends cleanly)."""
    for hdu_type, hdu_name in source.file_hdus.items():
        if hdu_name.strip().upper() not in names:
            raise RunReadError(
                f"no HDU named {hdu_name!r} in {_file_name(source)}, which the hdu-index lists as its "
                f"{hdu_type} (file truncated at {size:,} bytes?)"
            )


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
    gti_sum_s : float or None
        The sum of the run's GTI intervals (s), when the hdu-index puts its GTI table in this
        file: what gammapy takes as the observation time.
    """

    header: Any
    ra_deg: np.ndarray | None = None
    dec_deg: np.ndarray | None = None
    energy_tev: np.ndarray | None = None
    time_s: np.ndarray | None = None
    gti_sum_s: float | None = None


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


def _read_plain(source: RunSource, hdus: list[_Hdu], content: bytes, with_events: bool) -> EventList | None:
    """The events (and GTI) of plain tables read straight from the file's bytes; None if astropy must read them."""
    table = _find_table(hdus, source.events_hdu)
    if table is None:
        return None
    events = EventList(_CardValues(table.cards))
    gti_name = source.file_hdus.get("gti")
    if gti_name is not None:
        gti = _find_table(hdus, gti_name)
        if gti is None or "START" not in gti.columns or "STOP" not in gti.columns:
            return None
        events.gti_sum_s = float(np.sum(gti.column(content, "STOP", "s") - gti.column(content, "START", "s")))
    if not with_events:
        return events
    wanted = _EVENT_COLUMNS + ((_TIME_COLUMN,) if "TIME" in table.names else ())
    if any(name not in table.columns for _, name, _ in wanted):
        return None
    for attribute, name, unit in wanted:
        setattr(events, attribute, table.column(content, name, unit))
    return events


def _check_whole(hdul: fits.HDUList, size: int) -> None:
    """Raise if the data of an HDU astropy found in a file of ``size`` bytes end beyond it."""
    for number, hdu in enumerate(hdul):
        end = hdul.fileinfo(number)["datLoc"] + hdu.size
        if end > size:
            name = hdu.name or f"HDU {number}"
            raise RunReadError(f"file truncated: {size:,} of at least {end:,} bytes ({name} cut off)")


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
        event. Default is False. The GTI sum is read either way.

    Returns
    -------
    events : `EventList`

    Raises
    ------
    RunReadError
        The file is damaged or truncated (any of its HDUs), has no events table, or lacks an HDU
        the hdu-index lists in it (`RunSource.file_hdus <bkgdb.gadf.datastore.RunSource>`).
    """
    name = _file_name(source)
    try:
        content = decompress_events(source, content)
        # Every HDU must be whole: gammapy reads the GTI and IRFs of the file, attach copies them all.
        read = {hdu_name.strip().upper() for hdu_name in (source.events_hdu, source.file_hdus.get("gti")) if hdu_name}
        hdus = _file_hdus(content, read)
        if hdus is not None:
            _check_listed(source, {hdu.name for hdu in hdus} | {"PRIMARY"}, len(content))
            # Most event files are plain binary tables, read here without astropy's table machinery
            # (which costs more than the reading); anything else, or anything wrong, goes to astropy.
            plain = _read_plain(source, hdus, content, with_events)
            if plain is not None:
                return plain
        from astropy.io import fits

        with fits.open(io.BytesIO(content), memmap=False) as hdul:
            if hdus is None:
                _check_whole(hdul, len(content))
                _check_listed(source, {hdu.name.strip().upper() for hdu in hdul} | {"PRIMARY"}, len(content))
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
            gti_name = source.file_hdus.get("gti")
            if gti_name is not None:
                gti = hdul[gti_name]
                events.gti_sum_s = float(np.sum(_column(gti, "STOP", "s") - _column(gti, "START", "s")))
            return events
    except RunReadError:
        raise
    except Exception as exc:  # OSError, astropy's VerifyError...: all mean "unreadable"
        raise _unreadable(source, exc) from None
