"""Every public datastore is read as gammapy reads it, and damaged index tables give one-line errors.

The real-data cases index each datastore of ``$GAMMAPY_DATA`` with background pieces, check that
every run's event file is the one ``DataStore.from_dir(folder).obs(obs_id)`` opens, and that each
piece's kept + excluded counts are the events gammapy reads inside the binning's range. The other
cases damage a copy of the simulated datastore.
"""

import gzip
import re
import shutil
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import MaskedColumn, Table
from conftest import gammapy_data_path
from sqlalchemy.orm import Session

from bkgdb.config import load_config
from bkgdb.errors import DatastoreError
from bkgdb.gadf.datastore import DL3Datastore
from bkgdb.store.models import BinningRow, PieceRow, Run
from bkgdb.store.pieces import row_to_piece

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"

#: (folder below $GAMMAPY_DATA, runs indexed ok, {failed OBS_ID: part of its reason}).
PUBLIC_DATASTORES = [
    pytest.param(("hess-dl3-dr1",), 105, {}, id="hess-dl3-dr1"),
    # The joint-crab release lists two MAGIC runs but ships the file of one.
    pytest.param(("joint-crab", "dl3", "magic"), 1, {5029747: "event file not found"}, id="magic-joint-crab"),
    pytest.param(("magic", "rad_max", "data"), 2, {}, id="magic-rad-max"),
    # Its hdu-index has an empty (masked) FILE_DIR: the files are in the index's own folder.
    pytest.param(("veritas", "crab-point-like-ED"), 4, {}, id="veritas-crab"),
    # Index files in index/gps, event files in data/baseline/gps, IRFs in caldb.
    pytest.param(("cta-1dc", "index", "gps"), 4, {}, id="cta-1dc-gps"),
]


def events_location(observation):
    """The `HDULocation` an observation from `DataStore.obs` loads its events from."""
    from gammapy.utils.fits import HDULocation

    (location,) = [
        value for value in vars(observation).values() if isinstance(value, HDULocation) and value.hdu_class == "events"
    ]
    return location


@cache
def gammapy_datastore(folder):
    from gammapy.data import DataStore

    return DataStore.from_dir(folder)


#: What gammapy reads per (folder, OBS_ID): the path it opens and the events it finds in range.
_gammapy_cache = {}


def gammapy_events(folder, obs_id, binning):
    """The resolved path gammapy opens for a run's events, its event count, and its events in range."""
    key = (str(folder), obs_id, binning.hash)
    if key not in _gammapy_cache:
        observation = gammapy_datastore(folder).obs(obs_id, required_irf="all-optional")
        path = Path(events_location(observation).path()).resolve()
        table = observation.events.table
        header = observation.events.table.meta
        # Offsets from the pointing of the EVENTS header, computed with astropy (Vincenty).
        offset = (
            SkyCoord(table["RA"].quantity, table["DEC"].quantity)
            .separation(SkyCoord(float(header["RA_PNT"]) * u.deg, float(header["DEC_PNT"]) * u.deg))
            .deg
        )
        energy = observation.events.energy.to_value("TeV")
        energy_edges, offset_edges = binning.energy_edges, binning.offset_edges
        # Both ends inclusive: numpy's histograms count the upper edge in the last bin.
        in_range = (
            (energy >= energy_edges[0])
            & (energy <= energy_edges[-1])
            & (offset >= offset_edges[0])
            & (offset <= offset_edges[-1])
        )
        _gammapy_cache[key] = (path, len(table), int(in_range.sum()))
    return _gammapy_cache[key]


def stored_pieces(catalogue, binning):
    with Session(catalogue.engine) as session:
        rows = session.scalars(
            sa.select(PieceRow).join(Run).join(BinningRow).where(BinningRow.hash == binning.hash)
        ).all()
        return {row.run.obs_id: row_to_piece(row) for row in rows}


@pytest.mark.parametrize(("parts", "n_ok", "failures"), PUBLIC_DATASTORES)
def test_public_datastore_is_read_as_gammapy_reads_it(catalogue, parts, n_ok, failures):
    folder = gammapy_data_path(*parts)
    gammapy_data_path("catalogs")
    config = load_config(CONFIG)  # the catalogues of $GAMMAPY_DATA/catalogs: stars and sources excluded
    binning = config.binning

    report = catalogue.index(folder, config=config)
    # A piece per binning: the default config's 2D and 3D (ALTAZ: every public datastore has the times
    # and the site).
    assert len(config.binnings) == 2 and config.binning_3d.fov_alignment == "ALTAZ"
    assert (report.new, report.failed, report.pieces) == (n_ok, len(failures), 2 * n_ok), report.failures
    reasons = dict(report.failures)
    for obs_id, reason in failures.items():
        assert reason in reasons[obs_id]
    assert {run.obs_id: run.error for run in catalogue.select_runs(status="failed")} == reasons

    pieces = stored_pieces(catalogue, binning)
    runs = catalogue.select_runs()
    assert len(runs) == len(pieces) == n_ok
    for run in runs:
        path, n_events, n_in_range = gammapy_events(folder, run.obs_id, binning)
        assert Path(run.file_path) == path, run.obs_id
        assert run.event_count == n_events, run.obs_id
        assert pieces[run.obs_id].n_events == n_in_range, run.obs_id
        assert pieces[run.obs_id].counts.sum() > 0, run.obs_id


def test_failed_public_run_cannot_be_opened_by_gammapy_either(magic_joint_crab):
    from gammapy.data import DataStore

    observation = DataStore.from_dir(magic_joint_crab).obs(5029747, required_irf="all-optional")
    with pytest.raises(FileNotFoundError, match="run_05029747_DL3.fits"):
        _ = observation.events  # reading the events is what fails


def test_veritas_runs_get_backgrounds_that_gammapy_opens(catalogue, tmp_path):
    """The seed instrument's public runs, end to end: index, attach, open the result in gammapy."""
    import yaml
    from gammapy.data import DataStore

    from bkgdb.background import BackgroundBuilder
    from bkgdb.config import BkgdbConfig

    folder = gammapy_data_path("veritas", "crab-point-like-ED")
    gammapy_data_path("catalogs")
    values = yaml.safe_load(CONFIG.read_text())
    values["background_selection"]["gal_lat_min"] = 0  # the Crab is at b = -5.8 deg
    values["io"]["from_run"] = True  # four runs of one field: each run's own piece
    config = BkgdbConfig.from_dict(values)
    catalogue.index(folder, config=config)

    report = BackgroundBuilder(catalogue, config).attach(folder, tmp_path / "attached")
    assert (sorted(report.written), report.skipped) == ([64080, 64081, 64082, 64083], [])
    attached = DataStore.from_dir(tmp_path / "attached")
    for obs_id in report.written:
        observation = attached.obs(obs_id, required_irf="point-like")
        assert observation.bkg.data.shape == config.binning.shape
        assert observation.bkg.data.sum() > 0
        assert len(observation.events.table) == catalogue.select_runs([f"obs_id={obs_id}"])[0].event_count


# -- index tables as gammapy reads them -----------------------------------------------------------


def write_index(table, path):
    """Write an index table with its header keywords (BASE_DIR too), gzip-compressed."""
    table.write(path, format="fits", overwrite=True)


def test_index_table_quirks_are_read_as_gammapy_reads_them(catalogue, datastore_copy):
    """Empty FILE_DIR, a foreign BASE_DIR keyword, blanks, two events rows, an upper-case HDU_TYPE."""
    from gammapy.data import DataStore
    from gammapy.data.data_store import MissingRequiredHDU

    shutil.move(datastore_copy / "data" / "run_001000.fits.gz", datastore_copy / "run_001000.fits.gz")
    hdu_path = datastore_copy / "hdu-index.fits.gz"
    original = Table.read(hdu_path)
    rows = []
    for row in original:
        values = {name: row[name] for name in original.colnames}
        if values["OBS_ID"] == 1000:
            values["FILE_DIR"] = ""  # read back as masked, like VERITAS's index
        if values["OBS_ID"] == 1001:
            values["HDU_TYPE"] = " " + values["HDU_TYPE"]
            values["FILE_NAME"] = " " + values["FILE_NAME"]
        if values["OBS_ID"] == 1003 and values["HDU_TYPE"] == "events":
            values["HDU_TYPE"] = "EVENTS"
        rows.append(values)
        if values["OBS_ID"] == 1002 and values["HDU_TYPE"] == "events":
            rows.append({**values, "FILE_NAME": "run_999999.fits.gz"})  # a second events row: ignored
    table = Table(rows=rows, names=original.colnames)
    table.meta["BASE_DIR"] = "/nowhere/else"  # gammapy replaces it by the folder it opens
    write_index(table, hdu_path)
    assert np.ma.getmaskarray(Table.read(hdu_path)["FILE_DIR"]).sum() == 5

    report = catalogue.index(datastore_copy)
    assert (report.new, report.failed) == (4, 1)
    assert re.fullmatch(
        r"the hdu-index gives this run's events HDU_TYPE 'EVENTS'; "
        r"gammapy reads only 'events' \(lower case\)",
        dict(report.failures)[1003],
    )

    store = DataStore.from_dir(datastore_copy)
    for run in catalogue.select_runs():
        location = events_location(store.obs(run.obs_id, required_irf="all-optional"))
        assert Path(run.file_path) == Path(location.path()).resolve()
    assert Path(catalogue.select_runs(["obs_id=1000"])[0].file_path) == datastore_copy.resolve() / "run_001000.fits.gz"
    with pytest.raises(MissingRequiredHDU, match="events"):
        store.obs(1003, required_irf="all-optional")

    # attach and others see the hdu-index as gammapy holds it: filled, BASE_DIR the folder.
    source = DL3Datastore(datastore_copy)
    assert source.hdu_table.meta["BASE_DIR"] == str(datastore_copy.resolve())
    assert source.hdu_table["FILE_DIR"][0] == ""


def test_datastore_folder_with_variables(datastore_copy, monkeypatch):
    monkeypatch.setenv("BKGDB_TEST_FOLDER", str(datastore_copy.parent))
    assert DL3Datastore("$BKGDB_TEST_FOLDER/datastore").path == datastore_copy.resolve()


def test_events_row_without_file_name_fails_that_run(catalogue, datastore_copy):
    hdu_path = datastore_copy / "hdu-index.fits.gz"
    table = Table.read(hdu_path)
    events_1002 = (table["OBS_ID"] == 1002) & (table["HDU_TYPE"] == "events")
    table["FILE_NAME"] = MaskedColumn(table["FILE_NAME"], mask=events_1002)
    write_index(table, hdu_path)

    report = catalogue.index(datastore_copy)
    assert (report.new, report.failed) == (4, 1)
    assert report.failures == [(1002, "the hdu-index events row of this run has no FILE_NAME")]
    (failed,) = catalogue.select_runs(status="failed")
    assert failed.error == "the hdu-index events row of this run has no FILE_NAME"
    assert failed.file_path is None


def test_events_row_without_hdu_name_fails_that_run(catalogue, datastore_copy):
    hdu_path = datastore_copy / "hdu-index.fits.gz"
    table = Table.read(hdu_path)
    table["HDU_NAME"][(table["OBS_ID"] == 1004) & (table["HDU_TYPE"] == "events")] = ""
    write_index(table, hdu_path)
    report = catalogue.index(datastore_copy)
    assert report.failures == [(1004, "the hdu-index events row of this run has no HDU_NAME")]


# -- damaged index tables: one line, which file, what is wrong ------------------------------------


def damage_truncated_gzip(path):
    path.write_bytes(path.read_bytes()[:600])


def damage_garbage(path):
    path.write_bytes(b"this is not a FITS file\n" * 40)


def damage_empty(path):
    path.write_bytes(b"")


def damage_truncated_fits(path):
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: len(raw) - 2880]))


def damage_header(path):
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[2880:5760] = b"\0" * 2880  # the table's header
    path.write_bytes(gzip.compress(bytes(raw)))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (damage_truncated_gzip, "damaged or truncated gzip data"),
        (damage_garbage, "No SIMPLE card found"),
        (damage_empty, "the file is empty"),
        (damage_truncated_fits, "File may have been truncated"),
        (damage_header, "Header missing END card|no table HDU"),
    ],
)
@pytest.mark.parametrize("index_name", ["obs-index", "hdu-index"])
def test_damaged_index_file_is_a_one_line_error(datastore_copy, index_name, damage, reason):
    path = datastore_copy / f"{index_name}.fits.gz"
    damage(path)
    with pytest.raises(DatastoreError, match=f"cannot read the {index_name} ") as error:
        DL3Datastore(datastore_copy)
    message = str(error.value)
    assert "\n" not in message and len(message) < 400
    assert str(path) in message
    assert re.search(reason, message), message


def test_damaged_index_file_indexes_nothing(catalogue, datastore_copy):
    damage_truncated_fits(datastore_copy / "obs-index.fits.gz")
    with pytest.raises(DatastoreError, match="File may have been truncated"):
        catalogue.index(datastore_copy)
    assert catalogue.info()["runs"] == 0 and catalogue.info()["datastores"] == []


def test_damaged_index_file_on_the_command_line(datastore_copy, tmp_path):
    from typer.testing import CliRunner

    from bkgdb.cli.main import app

    damage_garbage(datastore_copy / "obs-index.fits.gz")
    result = CliRunner().invoke(app, ["--db", str(tmp_path / "cli.sqlite"), "index", str(datastore_copy)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: cannot read the obs-index "), result.output
    assert "Traceback" not in result.output


def rewrite_obs_ids(path, values, dtype=None):
    table = Table.read(path)
    table["OBS_ID"] = np.asarray(values, dtype=dtype)
    write_index(table, path)


@pytest.mark.parametrize(
    ("values", "dtype", "message"),
    [
        (
            [1000, 1001, 2**63 + 5, 1003, 1004],
            np.uint64,
            r"OBS_ID 9223372036854775813 in row 3 is outside 0 \.\.\. 2\*\*63 - 1",
        ),
        ([1000, 1001, 1002, -1003, 1004], np.int64, r"OBS_ID -1003 in row 4 is outside 0 \.\.\. 2\*\*63 - 1"),
        ([1000.0, 1001.5, 1002.0, 1003.0, 1004.0], np.float64, r"OBS_ID 1001\.5 in row 2 is not an integer"),
        ([1000.0, 1001.0, 1002.0, np.inf, 1004.0], np.float64, r"OBS_ID inf in row 4 is not an integer"),
        ([1000.0, np.nan, 1002.0, 1003.0, 1004.0], np.float64, r"row 2 has no OBS_ID$"),  # NaN is read as masked
        (
            ["1000", "1001", "a", "1003", "1004"],
            None,
            r"OBS_ID must be integers, the column holds text values "
            r"\(row 1: '1000'\)",
        ),
        ([1000, 1001, 1002, 1001, 1001], np.int64, r"OBS_ID 1001 is listed 3 times \(rows 2, 4, 5\)"),
    ],
)
def test_invalid_obs_ids_refuse_the_datastore(datastore_copy, values, dtype, message):
    """The OBS_ID is a run's key: a run with an invalid or ambiguous one cannot even be recorded as failed."""
    path = datastore_copy / "obs-index.fits.gz"
    rewrite_obs_ids(path, values, dtype)
    with pytest.raises(DatastoreError, match=message) as error:
        DL3Datastore(datastore_copy)
    assert str(error.value).startswith(f"obs-index {path}: ")
    assert "\n" not in str(error.value)


def test_obs_id_beyond_64_bits_indexes_nothing(catalogue, datastore_copy):
    rewrite_obs_ids(datastore_copy / "obs-index.fits.gz", [1000, 1001, 2**64 - 1, 1003, 1004], np.uint64)
    with pytest.raises(DatastoreError, match="OBS_ID 18446744073709551615 in row 3 is outside"):
        catalogue.index(datastore_copy)
    assert catalogue.info()["runs"] == 0 and catalogue.info()["datastores"] == []


def test_whole_number_float_obs_ids_are_accepted(catalogue, datastore_copy):
    rewrite_obs_ids(datastore_copy / "obs-index.fits.gz", [1000.0, 1001.0, 1002.0, 1003.0, 1004.0], np.float64)
    report = catalogue.index(datastore_copy)
    assert (report.new, report.failed) == (5, 0)
    assert [run.obs_id for run in catalogue.select_runs()] == [1000, 1001, 1002, 1003, 1004]


def test_masked_obs_id_in_the_hdu_index(datastore_copy):
    path = datastore_copy / "hdu-index.fits.gz"
    table = Table.read(path)
    table["OBS_ID"] = MaskedColumn(table["OBS_ID"], mask=np.arange(len(table)) == 7)
    write_index(table, path)
    with pytest.raises(DatastoreError, match=r"hdu-index .*: row 8 has no OBS_ID$"):
        DL3Datastore(datastore_copy)


def test_hdu_index_without_a_required_column(datastore_copy):
    path = datastore_copy / "hdu-index.fits.gz"
    table = Table.read(path)
    table.remove_column("FILE_DIR")
    write_index(table, path)
    with pytest.raises(DatastoreError, match=r"hdu-index .* has no FILE_DIR column \(it needs OBS_ID, "):
        DL3Datastore(datastore_copy)


# -- event times and the observatory, for FoV frames aligned with Alt/Az ------------------------------


@pytest.mark.parametrize("parts", [("hess-dl3-dr1",), ("veritas", "crab-point-like-ED")], ids=["hess", "veritas"])
def test_event_times_and_location_are_gammapys(parts):
    from gammapy.data import DataStore

    from bkgdb.gadf.events import read_events
    from bkgdb.makers.run import run_clock

    folder = gammapy_data_path(*parts)
    store = DL3Datastore(folder)
    source = store.runs()[0]
    events = read_events(source, source.events_path.read_bytes(), with_events=True)
    clock = run_clock(events, source, store.meta)
    observation = DataStore.from_dir(folder).obs(source.obs_id, required_irf=["aeff"])
    # Absolute event times as gammapy's EventList gives them, to a microsecond.
    difference = (clock.event_times() - observation.events.time).to_value(u.s)
    assert len(difference) == len(observation.events.table) and np.abs(difference).max() < 1e-6
    assert abs((clock.start() - observation.tstart).to_value(u.s)) < 1e-6
    expected = observation.observatory_earth_location
    assert clock.location is not None and expected is not None
    for mine, theirs in zip(clock.location.to_geodetic(), expected.to_geodetic(), strict=True):
        assert mine.value == pytest.approx(theirs.value, abs=1e-6)


def test_location_and_time_reference_fall_back_to_the_obs_index_header(datastore_copy):
    from astropy.io import fits

    from bkgdb.gadf.events import observatory_location, read_events, time_reference
    from bkgdb.makers.run import run_clock

    store = DL3Datastore(datastore_copy)
    source = store.runs()[0]
    with fits.open(source.events_path) as hdul:
        header = hdul["EVENTS"].header
        site = {key: header[key] for key in ("GEOLON", "GEOLAT", "ALTITUDE")}
        reference = time_reference(header)
        for key in ("GEOLON", "GEOLAT", "ALTITUDE", "MJDREFI", "MJDREFF"):
            del header[key]
        hdul.writeto(source.events_path, overwrite=True)
    events = read_events(source, source.events_path.read_bytes(), with_events=True)
    assert observatory_location(events.header) is None and time_reference(events.header) is None
    clock = run_clock(events, source, store.meta)  # the obs-index header has both
    assert clock.reference == reference and clock.location.lon.deg == pytest.approx(site["GEOLON"])
    assert clock.location.height.to_value(u.m) == pytest.approx(site["ALTITUDE"])
    height = observatory_location({"GEOLON": 1, "GEOLAT": 2, "GEOALT": 5, "ALTITUDE": 9}).height
    assert height.to_value(u.m) == pytest.approx(5)
    without = run_clock(events, source, {})
    assert without.location is None and without.reference is None
