"""Runs whose files would break `attach` or bias every model using them are `failed`, with the reason.

A file cut off after its events (its GTI or IRFs missing), events with a NaN or infinite value (they
fall in no bin while the run keeps its exposure), an ONTIME that is not positive or disagrees with
the GTI sum that gammapy scales the background by. Each damaged file is made from the simulated
datastore: five runs of 600 s, OBS_IDs 1000-1004, each file its events, GTI and IRFs.
"""

import gzip
import io
import re

import numpy as np
import pytest
import yaml
from astropy.io import fits
from astropy.table import Table
from typer.testing import CliRunner

from bkgdb.background import BackgroundBuilder
from bkgdb.cli.main import app
from bkgdb.config import BkgdbConfig
from bkgdb.gadf.attach import attach_backgrounds

CONFIG = """
binning: {e_min: 0.1, e_max: 100, e_bins: 8, off_min: 0, off_max: 2.5, off_bins: 5}
exclusion: {gammacat: none, hawc: none, star_cat: none}
background_selection: {el_diff: null, az_diff: null, gal_lat_min: 10}
"""
#: Also a 3D binning aligned with Alt/Az: its pieces need the event times.
ALTAZ_CONFIG = CONFIG.replace(
    "binning: {e_min: 0.1, e_max: 100, e_bins: 8, off_min: 0, off_max: 2.5, off_bins: 5}",
    "binning:\n"
    "  - {e_min: 0.1, e_max: 100, e_bins: 8, off_min: 0, off_max: 2.5, off_bins: 5}\n"
    "  - {e_min: 0.1, e_max: 100, e_bins: 8, fov_max: 2.5, fov_bins: 10, fov_alignment: ALTAZ}",
)


@pytest.fixture
def config():
    return BkgdbConfig.from_dict(yaml.safe_load(CONFIG))


def run_file(datastore, obs_id):
    return datastore / "data" / f"run_{obs_id:06d}.fits.gz"


def uncompressed(datastore, obs_id, keep=None):
    """Replace a run's file by its uncompressed FITS (``run_00NNNN.fits``), cut to ``keep(fits bytes)``
    bytes if given, and point the hdu-index at it."""
    packed = run_file(datastore, obs_id)
    raw = gzip.decompress(packed.read_bytes())
    plain = packed.with_suffix("")
    plain.write_bytes(raw if keep is None else raw[: keep(raw)])
    packed.unlink()
    table = Table.read(datastore / "hdu-index.fits.gz")
    names = [name.strip() for name in np.char.decode(table["FILE_NAME"]).tolist()]
    table["FILE_NAME"] = [plain.name if name == packed.name else name for name in names]
    table.write(datastore / "hdu-index.fits.gz", overwrite=True)
    return plain


def start_of_hdu(raw, name):
    """Where the header of HDU ``name`` begins in FITS bytes."""
    with fits.open(io.BytesIO(raw)) as hdul:
        return hdul.fileinfo(hdul.index_of(name))["hdrLoc"]


def rewrite(path, change):
    """Rewrite a gzip run file after ``change(hdul)``."""
    with fits.open(path) as hdul:
        hdul.readall()
        change(hdul)
        buffer = io.BytesIO()
        hdul.writeto(buffer)
    path.write_bytes(gzip.compress(buffer.getvalue()))


def reasons(catalogue):
    return {run.obs_id: run.error for run in catalogue.select_runs(status="failed")}


# -- a file cut off after its events ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("keep", "reason"),
    [
        # The reviewer's cut: a third of the file ends inside the energy dispersion.
        (lambda raw: len(raw) // 3, r"file truncated: 40,320 of at least 72,640 bytes \(ENERGY DISPERSION cut off\)"),
        (lambda raw: len(raw) - 4000, r"file truncated: 116,960 of at least 120,288 bytes \(PSF_2D_TABLE cut off\)"),
        (
            lambda raw: start_of_hdu(raw, "GTI") + 80,
            r"file truncated: 14,480 of at least 17,280 bytes \(header of HDU 2 cut off\)",
        ),
        # Cut between two HDUs, the file looks whole: the hdu-index lists the HDU it lacks.
        (
            lambda raw: start_of_hdu(raw, "PSF_2D_TABLE"),
            r"no HDU named 'PSF_2D_TABLE' in run_001002.fits, which the hdu-index lists as its psf "
            r"\(file truncated at 74,880 bytes\?\)",
        ),
    ],
    ids=["a third", "last HDU", "GTI header", "between HDUs"],
)
def test_an_uncompressed_file_cut_off_after_its_events_is_a_failed_run(catalogue, datastore_copy, config, keep, reason):
    uncompressed(datastore_copy, 1002, keep)
    report = catalogue.index(datastore_copy, config=config)
    assert (report.new, report.failed) == (4, 1)
    assert re.fullmatch(reason, reasons(catalogue)[1002])


def test_a_whole_uncompressed_file_is_indexed(catalogue, datastore_copy, config):
    uncompressed(datastore_copy, 1002)
    report = catalogue.index(datastore_copy, config=config)
    assert (report.new, report.failed, report.pieces) == (5, 0, 5)


def test_attach_reports_a_cut_off_file_in_one_line(db_url, datastore_copy, tmp_path):
    """The reviewer's steps: index, then attach, with a file cut to a third (it crashed with a ValueError)."""
    uncompressed(datastore_copy, 1002, lambda raw: len(raw) // 3)
    (tmp_path / "config.yaml").write_text(CONFIG)
    runner = CliRunner()
    index = runner.invoke(
        app, ["--db", db_url, "index", str(datastore_copy), "--config", str(tmp_path / "config.yaml")]
    )
    assert index.exit_code == 0 and "4 new, 0 updated, 0 unchanged, 1 failed" in index.output
    result = runner.invoke(
        app,
        [
            "--db",
            db_url,
            "attach",
            str(datastore_copy),
            "--out",
            str(tmp_path / "out"),
            "--config",
            str(tmp_path / "config.yaml"),
        ],
    )
    assert result.exit_code == 0 and result.exception is None, result.output
    assert "no background: run 1002: run 1002 failed to index: file truncated: 40,320 of at least" in result.stderr
    assert "4 runs written" in result.stdout and "Traceback" not in result.output


def test_attach_skips_a_file_cut_off_since_the_index(catalogue, datastore_copy, config, tmp_path):
    """A file that changed after the index is checked before it is copied, not copied with a traceback."""
    plain = uncompressed(datastore_copy, 1002)
    catalogue.index(datastore_copy, config=config)
    plain.write_bytes(plain.read_bytes()[:50_000])
    report = attach_backgrounds(BackgroundBuilder(catalogue, config), datastore_copy, tmp_path / "out")
    assert report.written == [1000, 1001, 1003, 1004]
    assert report.skipped == [
        (1002, "cannot copy its file: file truncated: 50,000 of at least 72,640 bytes (ENERGY DISPERSION cut off)")
    ]


# -- events that can go in no bin ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "binnings"),
    [("ENERGY", CONFIG), ("RA", CONFIG), ("DEC", CONFIG), ("TIME", ALTAZ_CONFIG)],
)
def test_events_with_non_finite_values_make_a_failed_run(catalogue, datastore_copy, column, binnings):
    def spoil(hdul):
        values = hdul["EVENTS"].data[column]
        values[::2] = np.nan
        values[1] = np.inf

    rewrite(run_file(datastore_copy, 1001), spoil)
    n_events = len(fits.getdata(run_file(datastore_copy, 1001), "EVENTS"))
    report = catalogue.index(datastore_copy, config=BkgdbConfig.from_dict(yaml.safe_load(binnings)))
    assert (report.new, report.failed) == (4, 1)
    bad = (n_events + 1) // 2 + 1
    assert reasons(catalogue) == {1001: f"{bad:,} of {n_events:,} events have a non-finite {column}"}


def test_non_finite_times_do_not_matter_to_pieces_that_do_not_use_them(catalogue, datastore_copy, config):
    def spoil(hdul):
        hdul["EVENTS"].data["TIME"][:10] = np.nan

    rewrite(run_file(datastore_copy, 1001), spoil)
    assert catalogue.index(datastore_copy, config=config).failed == 0


# -- ONTIME ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ontime", "reason"),
    [
        (-600.0, "ONTIME -600.0 is not a positive number of seconds"),
        (0.0, "ONTIME 0.0 is not a positive number of seconds"),
        (300.0, "ONTIME 300 s differs from the GTI sum 600 s by 50 %"),
        (1200.0, "ONTIME 1,200 s differs from the GTI sum 600 s by 100 %"),
        (609.0, "ONTIME 609 s differs from the GTI sum 600 s by 1.5 %"),
        (603.0, None),  # 0.5 %: within ONTIME_GTI_TOLERANCE
    ],
)
@pytest.mark.parametrize("with_pieces", [True, False], ids=["pieces", "catalogue only"])
def test_an_ontime_not_positive_or_off_the_gti_sum_makes_a_failed_run(
    catalogue, datastore_copy, config, ontime, reason, with_pieces
):
    def set_ontime(hdul):
        hdul["EVENTS"].header["ONTIME"] = ontime

    rewrite(run_file(datastore_copy, 1003), set_ontime)
    report = catalogue.index(datastore_copy, config=config if with_pieces else None)
    assert reasons(catalogue) == ({} if reason is None else {1003: reason})
    assert report.pieces == (5 - report.failed if with_pieces else 0)


def test_the_ontime_is_compared_with_the_sum_of_all_gti_intervals(catalogue, datastore_copy, config):
    """Two intervals of 300 s: 600 s, the run's ONTIME."""

    def split_gti(hdul):
        (start, stop) = hdul["GTI"].data[0]
        middle = 0.5 * (start + stop)
        gti = fits.BinTableHDU(Table({"START": [start, middle + 1000], "STOP": [middle, stop + 1000]}), name="GTI")
        gti.header.update({key: hdul["GTI"].header[key] for key in ("MJDREFI", "MJDREFF", "TIMESYS")})
        hdul[hdul.index_of("GTI")] = gti

    rewrite(run_file(datastore_copy, 1003), split_gti)
    assert catalogue.index(datastore_copy, config=config).failed == 0


@pytest.mark.parametrize("value", ["NAN", "1E400"])
def test_an_ontime_card_that_is_no_finite_number_makes_a_failed_run(catalogue, datastore_copy, config, value):
    """Astropy writes no such card, but it cannot parse NAN: that stopped the whole index."""
    path = run_file(datastore_copy, 1003)
    raw = bytearray(gzip.decompress(path.read_bytes()))
    card = raw.find(b"ONTIME  = ")
    raw[card : card + 80] = f"ONTIME  = {value:>20}".ljust(80).encode()
    path.write_bytes(gzip.compress(bytes(raw)))
    report = catalogue.index(datastore_copy, config=config)
    assert (report.new, report.failed) == (4, 1)
    assert reasons(catalogue) == {1003: "ONTIME in the EVENTS header is not a finite number"}


@pytest.mark.parametrize(
    ("ontime", "reason"),
    [
        (300.0, "the obs-index ONTIME 300 s differs from the EVENTS header's 600 s by 50 %"),
        (590.0, "the obs-index ONTIME 590 s differs from the EVENTS header's 600 s by 1.7 %"),
        (597.0, None),  # 0.5 %: within ONTIME_GTI_TOLERANCE
    ],
)
def test_an_obs_index_ontime_off_the_headers_makes_a_failed_run(catalogue, datastore_copy, config, ontime, reason):
    """The catalogue's ontime (what time_request sums) is the obs-index's; pieces and gammapy use the header's."""
    table = Table.read(datastore_copy / "obs-index.fits.gz")
    table["ONTIME"][table["OBS_ID"] == 1003] = ontime
    table.write(datastore_copy / "obs-index.fits.gz", overwrite=True)
    report = catalogue.index(datastore_copy, config=config)
    assert reasons(catalogue) == ({} if reason is None else {1003: reason})
    assert report.pieces == 5 - report.failed


# -- a file holding another run's events ------------------------------------------------------------


def test_a_file_holding_another_runs_events_makes_a_failed_run(catalogue, datastore_copy, config):
    """A file copied under another run's name: indexed as that run, its events would be summed twice."""
    run_file(datastore_copy, 1003).write_bytes(run_file(datastore_copy, 1001).read_bytes())
    report = catalogue.index(datastore_copy, config=config)
    assert reasons(catalogue) == {
        1003: "the EVENTS header's OBS_ID 1001 differs from the index's 1003: the file holds another run's events"
    }
    assert report.pieces == 4
    built = BackgroundBuilder(catalogue, config).build(1000)
    assert sorted(built.selection.obs_ids) == [1001, 1002, 1004]


def test_a_catalogue_of_older_checks_finds_a_file_holding_another_runs_events(
    catalogue, datastore_copy, config, monkeypatch
):
    """Catalogued ok by a bkgdb without the OBS_ID check, the run is read again and fails (its file unchanged)."""
    import bkgdb.makers.run as run_checks
    import bkgdb.store.indexing as indexing

    run_file(datastore_copy, 1003).write_bytes(run_file(datastore_copy, 1001).read_bytes())
    with monkeypatch.context() as older:
        older.setattr(run_checks, "obs_id_problem", lambda header_obs_id, obs_id: None)
        older.setattr(indexing, "RUN_CHECKS_VERSION", 1)
        older.setattr(run_checks, "RUN_CHECKS_VERSION", 1)
        assert catalogue.index(datastore_copy, config=config).failed == 0
    report = catalogue.index(datastore_copy, config=config)
    assert (report.rechecked, report.failed, report.rechecked_failed) == (4, 1, 1)
    assert list(reasons(catalogue)) == [1003]


@pytest.mark.parametrize(
    ("header_obs_id", "problem"),
    [
        (1003, False),
        (np.int64(1003), False),
        (1003.0, False),
        ("1003", False),
        (" 1003 ", False),
        (None, False),
        ("run 7", False),
        (1003.5, False),
        ("1.003e3", False),
        (True, False),  # a logical card (OBS_ID = T)
        (np.bool_(True), False),
        (1001, True),
        (2**63 + 1003, True),
        ("1001", True),
        ("9007199254740993", True),
    ],
)
def test_which_header_obs_ids_name_another_run(header_obs_id, problem):
    from bkgdb.makers.run import obs_id_problem

    assert (obs_id_problem(header_obs_id, 1003) is not None) is problem


def test_a_run_number_beyond_a_floats_53_bits_is_read_exactly():
    from bkgdb.makers.run import obs_id_problem

    assert obs_id_problem("9007199254740993", 9007199254740993) is None
