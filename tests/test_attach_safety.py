"""`bkgdb attach` never writes to a user's files, and an interrupted attach leaves nothing half-written."""

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits
from astropy.table import Table
from typer.testing import CliRunner

from bkgdb.background import BackgroundBuilder
from bkgdb.cli.main import app
from bkgdb.config import BkgdbConfig
from bkgdb.gadf.attach import NothingAttached, attach_backgrounds, write_fits
from bkgdb.gadf.destination import (
    ATTACH_MARKER,
    PARTIAL_SUFFIX,
    UnsafeDestination,
    check_attach_destination,
    partial_path,
)

CONFIG = """
binning: {e_min: 0.1, e_max: 100, e_bins: 8, off_min: 0, off_max: 2.5, off_bins: 5}
exclusion: {gammacat: none, hawc: none, star_cat: none}
background_selection: {el_diff: null, az_diff: null, gal_lat_min: 10}
"""

runner = CliRunner()


def bkgdb(*args, db):
    return runner.invoke(app, ["--db", db] + [str(arg) for arg in args])


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    return path


@pytest.fixture
def config(config_file):
    return BkgdbConfig.from_dict(yaml.safe_load(config_file.read_text()))


def snapshot(folder):
    """{relative path: sha256} of every file below ``folder``."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(Path(folder).rglob("*"))
        if path.is_file()
    }


def pointing_elsewhere(target, source, data_dir, base_dir=None):
    """Make ``target`` a datastore of the index files of ``source`` only, whose hdu-index points to ``data_dir``."""
    target.mkdir()
    shutil.copy(source / "obs-index.fits.gz", target / "obs-index.fits.gz")
    hdu_table = Table.read(source / "hdu-index.fits.gz")
    # gammapy ignores an hdu-index BASE_DIR keyword (it sets it to the folder opened), so does bkgdb.
    file_dir = str(data_dir) if base_dir is None else os.path.relpath(data_dir, target)
    hdu_table.replace_column("FILE_DIR", [file_dir] * len(hdu_table))
    if base_dir is not None:
        hdu_table.meta["BASE_DIR"] = base_dir
    hdu_table.write(target / "hdu-index.fits.gz")
    return target


def one_line_error(result):
    """The error a failed command printed on stderr: one line, no traceback."""
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


# -- where --out may be ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "where, message",
    [
        (lambda target: target, "is the target datastore"),
        (lambda target: target / "attached", "is inside the target datastore"),
        (lambda target: target.parent, "contains the target datastore"),
    ],
    ids=["target", "inside", "around"],
)
def test_out_is_never_the_target_inside_it_or_around_it(catalogue, datastore_copy, where, message):
    before = snapshot(datastore_copy)
    with pytest.raises(UnsafeDestination, match=message):
        check_attach_destination(catalogue, datastore_copy, where(datastore_copy), overwrite=True)
    assert snapshot(datastore_copy) == before and not (datastore_copy / "attached").exists()


@pytest.mark.parametrize(
    "base_dir", [None, "index-base"], ids=["absolute FILE_DIR", "relative FILE_DIR, BASE_DIR ignored"]
)
def test_out_where_the_target_hdu_index_points_is_refused_before_indexing(
    db_url, datastore_copy, config_file, tmp_path, base_dir
):
    """The tester's case: the target's run files live in folder X, and --out is X (here through a symlink)."""
    target = pointing_elsewhere(tmp_path / "indexes-only", datastore_copy, datastore_copy / "data", base_dir)
    if base_dir:
        (target / base_dir).mkdir()
    link = tmp_path / "link-to-x"
    link.symlink_to(datastore_copy)
    before = snapshot(datastore_copy)
    for extra in ([], ["--overwrite"]):
        result = bkgdb("attach", target, "--out", link, "--config", config_file, *extra, db=db_url)
        line = one_line_error(result)
        assert f"refusing to write {datastore_copy / 'data' / 'run_001000.fits.gz'}:" in line
        assert f"the hdu-index of the target {target} points to it (run 1000, events)" in line
    assert snapshot(datastore_copy) == before
    # Refused before the target was indexed.
    assert bkgdb("info", "-f", "json", db=db_url).output.count('"path"') == 0


def test_a_data_folder_linked_into_the_target_is_refused(catalogue, datastore_copy, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "data").symlink_to(datastore_copy / "data")
    with pytest.raises(
        UnsafeDestination,
        match=r"refusing to write .*/datastore/data/run_001000\.fits\.gz: "
        r"the hdu-index of the target",
    ):
        check_attach_destination(catalogue, datastore_copy, out, overwrite=True)


def test_an_existing_datastore_is_not_overwritten(db_url, simulated_datastore, datastore_copy, config_file):
    """--out into a copy of a datastore: refused without --overwrite, and with it too (bkgdb did not write it)."""
    target = simulated_datastore
    before = snapshot(datastore_copy)
    for extra in ([], ["--overwrite"]):
        line = one_line_error(
            bkgdb("attach", target, "--out", datastore_copy, "--config", config_file, *extra, db=db_url)
        )
        assert line == (
            f"Error: refusing to write into {datastore_copy}: it holds files bkgdb did not write "
            "(data/run_001000.fits.gz, data/run_001001.fits.gz, data/run_001002.fits.gz and 4 more); "
            "give a new or empty folder (--overwrite replaces only what an earlier attach wrote)"
        )
    # Once catalogued, its files are protected as such.
    assert bkgdb("index", datastore_copy, db=db_url).exit_code == 0
    line = one_line_error(
        bkgdb("attach", target, "--out", datastore_copy, "--config", config_file, "--overwrite", db=db_url)
    )
    assert line == (
        f"Error: refusing to write {datastore_copy / 'obs-index.fits.gz'}: it is an index file of the "
        f"catalogued datastore {datastore_copy}"
    )
    assert snapshot(datastore_copy) == before


def test_run_files_of_catalogued_datastores_are_protected(catalogue, simulated_datastore, datastore_copy, tmp_path):
    """A catalogued datastore keeps its run files in a folder without index files: --out there is refused."""
    for name in ("obs-index.fits.gz", "hdu-index.fits.gz"):
        (datastore_copy / name).unlink()
    elsewhere = pointing_elsewhere(tmp_path / "elsewhere", simulated_datastore, datastore_copy / "data")
    catalogue.index(elsewhere)
    with pytest.raises(
        UnsafeDestination,
        match=r"refusing to write .*/data/run_001000\.fits\.gz: it is the file "
        r"of run 1000 of the catalogued datastore .*/elsewhere$",
    ):
        check_attach_destination(catalogue, simulated_datastore, datastore_copy, overwrite=True)


def test_a_folder_of_a_users_files_is_refused_even_with_overwrite(db_url, simulated_datastore, config_file, tmp_path):
    """The reviewer's case: --out holds a copy of a run file and a README of the user's, no index files."""
    mine = tmp_path / "mine"
    (mine / "data").mkdir(parents=True)
    shutil.copy(simulated_datastore / "data" / "run_001002.fits.gz", mine / "data")
    (mine / "README").write_text("my notes on run 1002\n")
    before = snapshot(mine)
    for extra in ([], ["--overwrite"]):
        result = bkgdb("attach", simulated_datastore, "--out", mine, "--config", config_file, *extra, db=db_url)
        assert one_line_error(result) == (
            f"Error: refusing to write into {mine}: it holds files bkgdb did not write (README, "
            "data/run_001002.fits.gz); give a new or empty folder (--overwrite replaces only what an earlier "
            "attach wrote)"
        )
    assert snapshot(mine) == before


def test_overwrite_replaces_an_earlier_attach_and_clears_leftovers(catalogue, datastore_copy, config, tmp_path):
    catalogue.index(datastore_copy, config=config)
    builder = BackgroundBuilder(catalogue, config)
    out = tmp_path / "out"
    first = attach_backgrounds(builder, datastore_copy, out)
    assert first.written == [1000, 1001, 1002, 1003, 1004]
    reference = snapshot(out)
    # What a killed attach leaves: temporary files.
    leftovers = [partial_path(out / "data" / "run_001002.fits.gz"), partial_path(out / "hdu-index.fits.gz")]
    for path in leftovers:
        path.write_bytes(b"half a file")
    with pytest.raises(UnsafeDestination, match="is not empty: pass --overwrite"):
        attach_backgrounds(builder, datastore_copy, out)
    # A file of the user's there makes the folder no longer bkgdb's alone: refused, even with --overwrite.
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    with pytest.raises(UnsafeDestination, match=r"it holds files bkgdb did not write \(notes\.txt\)"):
        attach_backgrounds(builder, datastore_copy, out, overwrite=True)
    assert snapshot(out) == before
    (out / "notes.txt").unlink()
    assert attach_backgrounds(builder, datastore_copy, out, overwrite=True).written == first.written
    assert not any(path.exists() for path in leftovers)
    assert snapshot(out) == reference  # same bytes again


def test_an_interrupted_attach_is_known_by_its_marker(catalogue, datastore_copy, config, tmp_path):
    """Ctrl-C during a first attach leaves no index files; the marker it wrote before its first run file
    names the run files, so --overwrite takes the folder. Without the marker nothing tells it from a user's."""
    catalogue.index(datastore_copy, config=config)
    builder = BackgroundBuilder(catalogue, config)
    out = tmp_path / "out"

    def interrupt(done, total):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        attach_backgrounds(builder, datastore_copy, out, progress=interrupt)
    assert sorted(path.name for path in out.iterdir()) == [ATTACH_MARKER, "data"]
    assert (out / ATTACH_MARKER).read_text().splitlines()[1:] == ["data/run_001000.fits.gz", "data/run_001001.fits.gz"]

    unmarked = tmp_path / "unmarked"
    shutil.copytree(out, unmarked)
    (unmarked / ATTACH_MARKER).unlink()
    before = snapshot(unmarked)
    with pytest.raises(
        UnsafeDestination, match=r"holds files bkgdb did not write \(data/run_001000\.fits\.gz, data/run_001001"
    ):
        attach_backgrounds(builder, datastore_copy, unmarked, overwrite=True)
    assert snapshot(unmarked) == before

    with pytest.raises(UnsafeDestination, match="is not empty: pass --overwrite"):
        attach_backgrounds(builder, datastore_copy, out)
    assert attach_backgrounds(builder, datastore_copy, out, overwrite=True).written == [1000, 1001, 1002, 1003, 1004]
    assert sorted(path.name for path in out.iterdir()) == [
        ATTACH_MARKER,
        "data",
        "hdu-index.fits.gz",
        "obs-index.fits.gz",
    ]


def test_an_earlier_versions_output_is_known_by_its_index_files(catalogue, datastore_copy, config, tmp_path):
    """bkgdb before the marker left its index files (CREATOR bkgdb) and the run files they list: --overwrite
    takes them, not a file beside them; and the folder stays known as bkgdb's through an interrupted rerun."""
    catalogue.index(datastore_copy, config=config)
    builder = BackgroundBuilder(catalogue, config)
    out = tmp_path / "out"
    attach_backgrounds(builder, datastore_copy, out)
    (out / ATTACH_MARKER).unlink()  # as an earlier bkgdb wrote it
    reference = snapshot(out)

    shutil.copy(datastore_copy / "data" / "run_001000.fits.gz", out / "data" / "my-copy.fits.gz")
    before = snapshot(out)
    with pytest.raises(UnsafeDestination, match=r"holds files bkgdb did not write \(data/my-copy\.fits\.gz\)"):
        attach_backgrounds(builder, datastore_copy, out, overwrite=True)
    assert snapshot(out) == before
    (out / "data" / "my-copy.fits.gz").unlink()

    def interrupt(done, total):
        if done == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        attach_backgrounds(builder, datastore_copy, out, progress=interrupt, overwrite=True)
    assert sorted(path.name for path in out.iterdir()) == [ATTACH_MARKER, "data"]  # the index files are gone
    assert attach_backgrounds(builder, datastore_copy, out, overwrite=True).written == [1000, 1001, 1002, 1003, 1004]
    assert {name: digest for name, digest in snapshot(out).items() if name != ATTACH_MARKER} == reference


def test_an_interrupted_overwrite_leaves_no_index_files(catalogue, datastore_copy, config, tmp_path):
    """Ctrl-C after two runs of a rerun: the earlier index files are gone, so the folder is not taken as complete."""
    catalogue.index(datastore_copy, config=config)
    builder = BackgroundBuilder(catalogue, config)
    out = tmp_path / "out"
    attach_backgrounds(builder, datastore_copy, out)

    def interrupt(done, total):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        attach_backgrounds(builder, datastore_copy, out, progress=interrupt, overwrite=True)
    assert sorted(path.name for path in out.iterdir()) == [ATTACH_MARKER, "data"]  # the marker keeps it bkgdb's
    assert len(list((out / "data").iterdir())) == 5  # two replaced, three from before; all complete
    for path in (out / "data").iterdir():
        with fits.open(path) as hdul:
            hdul.verify("exception")
    assert len(attach_backgrounds(builder, datastore_copy, out, overwrite=True).written) == 5


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "run.fits.gz"
    write_fits(fits.HDUList([fits.PrimaryHDU(np.arange(3))]), path)
    before = path.read_bytes()
    broken = fits.HDUList([fits.PrimaryHDU(), fits.PrimaryHDU()])  # a second primary HDU: astropy refuses
    with pytest.raises(fits.VerifyError):
        write_fits(broken, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.fits.gz"]


# -- nothing to write -----------------------------------------------------------------------------


def test_nothing_attached_is_an_error_and_creates_no_folder(db_url, simulated_datastore, config_file, tmp_path):
    strict = tmp_path / "strict.yaml"
    strict.write_text(CONFIG.replace("gal_lat_min: 10", "gal_lat_min: 89"))
    out = tmp_path / "new" / "out"
    result = bkgdb("attach", simulated_datastore, "--out", out, "--config", strict, db=db_url)
    line = one_line_error(result)
    assert line.startswith(
        f"Error: no run of {simulated_datastore} got a background, nothing written (5 runs): "
        "run 1000: no runs selected for run 1000"
    )
    assert "|b| > 89 deg removed 4 (0 left); run 1001: " in line and line.endswith("; and 3 more runs")
    assert not (tmp_path / "new").exists()


def test_nothing_attached_keeps_an_earlier_attach(catalogue, datastore_copy, config, tmp_path):
    import dataclasses

    catalogue.index(datastore_copy, config=config)
    out = tmp_path / "out"
    attach_backgrounds(BackgroundBuilder(catalogue, config), datastore_copy, out)
    before = snapshot(out)
    config.selection = dataclasses.replace(config.selection, where=("obs_id<0",))
    with pytest.raises(NothingAttached, match=r"nothing written \(5 runs\)") as caught:
        attach_backgrounds(BackgroundBuilder(catalogue, config), datastore_copy, out, overwrite=True)
    assert [obs_id for obs_id, _ in caught.value.skipped] == [1000, 1001, 1002, 1003, 1004]
    assert snapshot(out) == before


# -- killed mid-way ------------------------------------------------------------------------------


def run_files(folder):
    """{name: (HDU names, BKG columns)} of the run files of an attached datastore."""
    result = {}
    for path in sorted((folder / "data").iterdir()):
        with fits.open(path) as hdul:
            bkg = hdul["BKG"].data
            result[path.name] = ([hdu.name for hdu in hdul], [np.array(bkg[name]) for name in bkg.names])
    return result


def test_killed_attach_then_rerun_with_overwrite(db_url, datastore_copy, config_file, config, tmp_path):
    """kill -9 a real `bkgdb attach` after its first files; the rerun gives what an uninterrupted attach gives."""
    from bkgdb.store.catalogue import RunCatalogue

    catalogue = RunCatalogue.open(db_url)
    catalogue.index(datastore_copy, config=config)
    reference = tmp_path / "reference"
    attach_backgrounds(BackgroundBuilder(catalogue, config), datastore_copy, reference)
    catalogue.engine.dispose()

    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "bkgdb.cli.main",
        "--db",
        db_url,
        "attach",
        str(datastore_copy),
        "--out",
        str(out),
        "--config",
        str(config_file),
        "--jobs",
        "1",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (
            (out / "data").is_dir() and any(not path.name.endswith(PARTIAL_SUFFIX) for path in (out / "data").iterdir())
        ):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "attach wrote nothing in 120 s"
            time.sleep(0.001)
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
        assert process.returncode == -signal.SIGKILL
        # Interrupted: no index files; every run file under its final name is complete.
        assert not (out / "obs-index.fits.gz").exists() and not (out / "hdu-index.fits.gz").exists()
        finished = [path for path in (out / "data").iterdir() if not path.name.endswith(PARTIAL_SUFFIX)]
        assert 1 <= len(finished) < 5
        for path in finished:
            with fits.open(path) as hdul:
                hdul.verify("exception")
                assert hdul["BKG"].data is not None and len(hdul["EVENTS"].data) > 0

        rerun = subprocess.run(command + ["--overwrite"], capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr
        assert "5 runs written to" in rerun.stdout and "Traceback" not in rerun.stderr
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=30)

    with pytest.raises(ProcessLookupError):  # nothing of the killed attach lives on
        os.killpg(process.pid, 0)
    assert sorted(snapshot(out)) == sorted(snapshot(reference))
    assert not list(out.rglob(f"*{PARTIAL_SUFFIX}"))
    ours, theirs = run_files(out), run_files(reference)
    assert list(ours) == list(theirs)
    for name, (hdus, bkg) in ours.items():
        assert hdus == theirs[name][0], name
        assert len(bkg) == 5 and all(np.array_equal(a, b) for a, b in zip(bkg, theirs[name][1], strict=True)), name
    assert list(Table.read(out / "obs-index.fits.gz")["OBS_ID"]) == [1000, 1001, 1002, 1003, 1004]
    from gammapy.data import DataStore

    assert DataStore.from_dir(out).obs(1003).bkg.data.sum() > 0
