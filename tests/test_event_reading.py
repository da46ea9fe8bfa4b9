"""Event files are read as astropy reads them: header values, and event columns bit for bit.

Plain binary tables are read straight from the file's bytes; the tables and headers astropy
must interpret (scaled columns, long strings, HIERARCH cards, ...) go through astropy. Both
must give what ``astropy.io.fits`` gives, on every public datastore and on files made here.
"""

import gzip
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from conftest import gammapy_data_path

from bkgdb.gadf.datastore import DL3Datastore, RunSource, json_safe
from bkgdb.gadf.events import RunReadError, _CardValues, read_events

PUBLIC_DATASTORES = [
    ("hess-dl3-dr1",),
    ("joint-crab", "dl3", "magic"),
    ("magic", "rad_max", "data"),
    ("veritas", "crab-point-like-ED"),
    ("cta-1dc", "index", "gps"),
]
#: Keys the catalogue reads from EVENTS headers, plus ones no header has.
KEYS = ["TSTART", "MJDREFF", "TIMESYS", "OBJECT", "RA_PNT", "N_TELS", "NAXIS2", "LONGSTR", "NO_SUCH_KEY"]


def astropy_events(path: Path, hdu_name: str) -> tuple[fits.Header, dict[str, np.ndarray]]:
    """The EVENTS header and the event columns (deg, TeV, s) as astropy reads them.

    RA, DEC and ENERGY are found as astropy finds columns (case-insensitively); TIME is read when
    a column has that very name.
    """
    units = {"RA": "deg", "DEC": "deg", "ENERGY": "TeV", "TIME": "s"}
    with fits.open(path, memmap=False) as hdul:
        hdu = hdul[hdu_name]
        columns = {}
        for name, unit in units.items():
            if name != "TIME" or name in hdu.columns.names:
                values = np.asarray(hdu.data[name], dtype=float)
                column_unit = hdu.columns[name].unit
                columns[name] = (values * u.Unit(column_unit)).to_value(unit) if column_unit else values
        return hdu.header.copy(), columns


def assert_read_as_astropy(source: RunSource, keys: list[str], from_bytes: bool) -> None:
    """Header values and event columns as astropy gives them; ``from_bytes``: read without astropy."""
    assert source.events_path is not None and source.events_hdu is not None
    header, columns = astropy_events(source.events_path, source.events_hdu)
    events = read_events(source, source.events_path.read_bytes(), with_events=True)
    assert isinstance(events.header, _CardValues) == from_bytes
    for key in keys:
        expected = json_safe(header[(key, header.count(key) - 1)]) if key in header else "missing"
        got = events.header.get(key, "missing")
        assert (type(got), got) == (type(expected), expected), key
    read = {"RA": events.ra_deg, "DEC": events.dec_deg, "ENERGY": events.energy_tev, "TIME": events.time_s}
    assert {name for name, values in read.items() if values is not None} == set(columns)
    for name, values in columns.items():
        got_values = read[name]
        assert got_values is not None and got_values.dtype == np.float64
        assert got_values.tobytes() == values.tobytes(), name


@pytest.mark.parametrize("parts", PUBLIC_DATASTORES, ids=lambda parts: parts[0])
def test_public_event_files_read_as_astropy_reads_them(parts: tuple[str, ...]) -> None:
    runs = DL3Datastore(gammapy_data_path(*parts)).runs()
    sources = [source for source in runs if source.events_path is not None and source.events_path.is_file()]
    assert sources
    for source in sources:
        with fits.open(source.events_path) as hdul:
            keys = sorted(set(hdul[source.events_hdu].header) - {"COMMENT", "HISTORY", ""})
        assert_read_as_astropy(source, keys + KEYS, from_bytes=True)


def write_events(path: Path, columns: list[fits.Column], cards: list[Any], before: list[Any] | None = None) -> None:
    """An event file: a primary HDU, any HDUs ``before`` the EVENTS table, then the table."""
    events = fits.BinTableHDU.from_columns(columns, name="EVENTS")
    for card in cards:
        events.header.append(card)
    fits.HDUList([fits.PrimaryHDU(), *(before or []), events]).writeto(path)


def source_of(path: Path) -> RunSource:
    return RunSource(1, {}, path, "events")


def event_columns(n: int = 50, time_format: str = "D", **time_options: Any) -> list[fits.Column]:
    rng = np.random.default_rng(1)
    return [
        fits.Column("EVENT_ID", "K", array=np.arange(n)),
        fits.Column("TIME", time_format, unit="s", array=rng.uniform(0, 1000, n), **time_options),
        fits.Column("RA", "E", unit="deg", array=rng.uniform(0, 360, n).astype(np.float32)),
        fits.Column("DEC", "E", unit="deg", array=rng.uniform(-90, 90, n).astype(np.float32)),
        fits.Column("ENERGY", "E", unit="TeV", array=rng.lognormal(0, 1, n).astype(np.float32)),
    ]


HEADER = [("TSTART", 100.5), ("MJDREFF", 7.428703703703703e-4), ("TIMESYS", "TT"), ("OBJECT", "It's a 'test'")]
CASES = {
    "plain": (event_columns(), HEADER, None),
    "gzip": (event_columns(), HEADER, None),
    "no events": (event_columns(0), HEADER, None),
    "image HDU first": (event_columns(), HEADER, [fits.ImageHDU(np.zeros((3, 5), np.float32), name="IMG")]),
    "energy in GeV, RA in rad": (
        [
            fits.Column("RA", "D", unit="rad", array=np.linspace(0, 6, 20)),
            fits.Column("DEC", "D", unit="rad", array=np.linspace(-1, 1, 20)),
            fits.Column("ENERGY", "J", unit="GeV", array=np.arange(100, 120)),
        ],
        HEADER,
        None,
    ),
    "scaled TIME": (event_columns(time_format="J", bzero=2**31), HEADER, None),
    "long string": (event_columns(), [*HEADER, ("LONGSTR", "word " * 30)], None),
    "HIERARCH card": (event_columns(), [*HEADER, ("HIERARCH ESO TEL ALT", 45.0)], None),
    "lower-case column": (
        [
            fits.Column("ra", "E", array=np.ones(3)),
            fits.Column("DEC", "E", array=np.ones(3)),
            fits.Column("ENERGY", "E", array=np.ones(3)),
        ],
        HEADER,
        None,
    ),
}


#: The cases read from the file's bytes; the others need astropy.
FROM_BYTES = {"plain", "gzip", "no events", "image HDU first", "energy in GeV, RA in rad"}


@pytest.mark.parametrize("case", CASES)
def test_event_files_read_as_astropy_reads_them(tmp_path: Path, case: str) -> None:
    columns, cards, before = CASES[case]
    path = tmp_path / "events.fits"
    write_events(path, columns, cards, before)
    if case == "gzip":
        path = tmp_path / "events.fits.gz"
        path.write_bytes(gzip.compress((tmp_path / "events.fits").read_bytes()))
    assert_read_as_astropy(source_of(path), KEYS + ["OBJECT", "ESO TEL ALT"], from_bytes=case in FROM_BYTES)


def test_truncated_event_table_is_a_read_error(tmp_path: Path) -> None:
    path = tmp_path / "events.fits"
    write_events(path, event_columns(500), HEADER)
    content = path.read_bytes()
    for cut in (len(content) - 2880, len(content) - 5000):
        with pytest.raises(RunReadError, match="truncated|cannot read"):
            read_events(source_of(path), content[:cut], with_events=False)


def test_missing_events_hdu_is_a_read_error(tmp_path: Path) -> None:
    path = tmp_path / "events.fits"
    write_events(path, event_columns(), HEADER)
    with pytest.raises(RunReadError, match="no HDU named 'EVENTZ'"):
        read_events(RunSource(1, {}, path, "EVENTZ"), path.read_bytes())


@pytest.mark.parametrize("after_events", ["IRF", "long-named HDU"], ids=["from bytes", "through astropy"])
def test_a_file_cut_off_after_its_events_is_a_read_error(tmp_path: Path, after_events: str) -> None:
    """An HDU after the events (IRFs, which gammapy reads and attach copies) must be whole too.

    A name longer than a card (CONTINUE cards) makes the HDUs astropy's to place.
    """
    events = fits.BinTableHDU.from_columns(event_columns(500), name="EVENTS")
    irf = fits.ImageHDU(np.zeros((100, 100), np.float32), name="IRF" if after_events == "IRF" else "IRF_" * 18)
    path = tmp_path / "events.fits"
    fits.HDUList([fits.PrimaryHDU(), events, irf]).writeto(path)
    content = path.read_bytes()
    cut = len(content) - 20_000
    with pytest.raises(RunReadError, match=rf"^file truncated: {cut:,} of at least {len(content) - 320:,} bytes"):
        read_events(source_of(path), content[:cut], with_events=True)
    # Bytes after the last HDU that begin no header are ignored, as astropy ignores them.
    assert len(read_events(source_of(path), content + b"\0" * 2880, with_events=True).energy_tev) == 500
