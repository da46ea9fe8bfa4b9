"""Files written for the user (figures, models, tables, reports) never replace a file unless asked."""

import hashlib

import pytest
from astropy.io import fits
from typer.testing import CliRunner

import bkgdb
from bkgdb.cli.main import app
from bkgdb.errors import BkgdbError
from bkgdb.outputs import check_report_folder, write_output

runner = CliRunner()

CONFIG = """
binning: {e_min: 0.1, e_max: 100, e_bins: 8, off_min: 0, off_max: 2.5, off_bins: 5}
exclusion: {gammacat: none, hawc: none, star_cat: none}
"""
TABLE = "obs_id,zenith_deg,norm,norm_error\n1000,20,1.01,0.02\n1001,35,0.97,0.03\n"


def commands(tmp_path):
    """Every command that writes a file the user names, with that file."""
    config, table = tmp_path / "config.yaml", tmp_path / "rows.csv"
    config.write_text(CONFIG)
    table.write_text(TABLE)
    figure = tmp_path / "figure.png"
    return [
        (["plot", "model", "1000", "--config", config, "-o", figure], figure),
        (["plot", "model", tmp_path / "bkg.fits", "-o", figure], figure),
        (["plot", "selection", "1000", "--config", config, "-o", figure], figure),
        (["plot", "validation", table, "-o", figure], figure),
        (["plot", "significance", "1000", "--config", config, "-o", figure], figure),
        (["background", "1000", "--config", config, "-o", tmp_path / "bkg.fits"], tmp_path / "bkg.fits"),
        (["validate", tmp_path / "datastore", "--config", config, "-o", table], table),
    ]


@pytest.mark.parametrize("number", range(7))
def test_no_command_replaces_an_existing_file_without_overwrite(tmp_path, number):
    arguments, output = commands(tmp_path)[number]
    before = output.read_bytes() if output.exists() else b"the user's own file"
    output.write_bytes(before)
    result = runner.invoke(app, ["--db", str(tmp_path / "db.sqlite"), *map(str, arguments)])
    assert result.exit_code == 2, result.output
    assert f"{output} exists: remove it, give another name or pass --overwrite" in " ".join(result.output.split())
    assert output.read_bytes() == before


@pytest.fixture
def frozen_folder(tmp_path):
    """A folder in which nothing can be made, even by root (immutable; undone after the test)."""
    import subprocess

    folder = tmp_path / "frozen"
    folder.mkdir()
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported here: an unwritable folder cannot be made for root")
    yield folder
    subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_every_command_refuses_a_folder_it_cannot_write_in_before_any_work(
    tmp_path, frozen_folder, simulated_datastore
):
    config, table = tmp_path / "config.yaml", tmp_path / "rows.csv"
    config.write_text(CONFIG)
    table.write_text(TABLE)
    figure = frozen_folder / "figure.png"
    db = ["--db", str(tmp_path / "db.sqlite")]
    attempts = [
        (db + ["plot", "model", "1000", "--config", config, "-o", figure], frozen_folder),
        (["plot", "validation", table, "-o", figure], frozen_folder),
        (db + ["plot", "selection", "1000", "--config", config, "-o", figure], frozen_folder),
        (db + ["background", "1000", "--config", config, "-o", frozen_folder / "bkg.fits"], frozen_folder),
        (db + ["validate", tmp_path / "datastore", "--config", config, "-o", frozen_folder / "v.csv"], frozen_folder),
        (db + ["validate", tmp_path / "datastore", "--config", config, "--report", frozen_folder / "r"], frozen_folder),
        (db + ["attach", simulated_datastore, "--config", config, "--out", frozen_folder / "a"], frozen_folder),
        (["demo", frozen_folder / "demo"], frozen_folder),
    ]
    for arguments, folder in attempts:
        result = runner.invoke(app, list(map(str, arguments)))
        assert result.exit_code == 2, (arguments, result.output)
        shown = " ".join(result.output.split())
        assert shown.startswith(f"Error: cannot write in folder {folder}: Operation not permitted"), (arguments, shown)
    assert list(frozen_folder.iterdir()) == []


def test_an_output_never_takes_a_name_of_the_database_even_one_not_made_yet(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    catalogue = bkgdb.Catalogue.open(str(tmp_path / "catalogue.sqlite"), config=config)
    journal = tmp_path / "catalogue.sqlite-journal"
    # SQLite would take a file of that name for the database's journal, and delete or replay it.
    with pytest.raises(BkgdbError, match="catalogue.sqlite-journal is the file .* bkgdb never writes it"):
        catalogue.write_background(1001, journal)
    assert not journal.exists()


def test_overwrite_never_replaces_what_the_config_reads(indexed, tmp_path):
    catalogue, config, _ = indexed
    sources = tmp_path / "sources.fits"
    from bkgdb.simulate import write_source_catalogue

    write_source_catalogue(sources, [{"name": "elsewhere", "ra_deg": 10.0, "dec_deg": -60.0}])
    config.write_text(CONFIG.replace("gammacat: none", f"gammacat: {sources}"))
    before = digest(sources)
    reader = bkgdb.Catalogue.open(str(tmp_path / "catalogue.sqlite"), config=config)
    with pytest.raises(BkgdbError, match="sources.fits is the file .* bkgdb never writes it, even with --overwrite"):
        reader.write_background(1001, sources, overwrite=True)
    assert digest(sources) == before


def test_overwrite_replaces_a_figure(tmp_path):
    (table, figure) = (tmp_path / "rows.csv", tmp_path / "figure.png")
    table.write_text(TABLE)
    figure.write_bytes(b"an older figure")
    result = runner.invoke(app, ["plot", "validation", str(table), "-o", str(figure), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert figure.read_bytes().startswith(b"\x89PNG")


def test_a_report_goes_into_a_new_or_empty_folder_or_replaces_an_earlier_report(tmp_path):
    check_report_folder(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    check_report_folder(tmp_path / "empty")
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    for name in ("validation.csv", "validation.png", "run-23523-model.png", "run-23523-selection.png"):
        (earlier / name).write_bytes(b"")
    (earlier / "index.html").write_text("<html><head><title>bkgdb validation of hess-dr1.yaml</title>")
    with pytest.raises(BkgdbError, match="holds an earlier report: pass --overwrite"):
        check_report_folder(earlier)
    check_report_folder(earlier, overwrite=True)
    # A folder with anything else in it is not bkgdb's to write into, even with --overwrite: other
    # files, or a page of the same name that is not a report's.
    analysis = tmp_path / "analysis"
    analysis.mkdir()
    (analysis / "index.html").write_text("<html><head><title>My analysis</title>")
    (analysis / "validation.csv").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(BkgdbError, match=r"holds no bkgdb report page \(index.html\)"):
            check_report_folder(analysis, overwrite=overwrite)
    (analysis / "notes.txt").write_text("mine")
    with pytest.raises(BkgdbError, match=r"not a bkgdb report's \(notes.txt\)"):
        check_report_folder(analysis, overwrite=True)
    (tmp_path / "a-file").write_text("mine")
    with pytest.raises(BkgdbError, match="is a file"):
        check_report_folder(tmp_path / "a-file")
    # A report interrupted before its page: nothing shows bkgdb wrote the rest.
    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    (interrupted / "validation.csv").write_text("obs_id\n")
    with pytest.raises(BkgdbError, match="holds no bkgdb report page"):
        check_report_folder(interrupted, overwrite=True)
    # A temporary file of an interrupted write beside an earlier report is the report's.
    (earlier / ".run-23523-model.0123456789ab.partial.png").write_bytes(b"")
    check_report_folder(earlier, overwrite=True)


def test_an_output_needs_its_folder_and_a_dangling_link_is_a_file(tmp_path):
    table = tmp_path / "rows.csv"
    table.write_text(TABLE)
    result = runner.invoke(app, ["plot", "validation", str(table), "-o", str(tmp_path / "missing" / "figure.png")])
    assert result.exit_code == 2 and "does not exist: create it first" in " ".join(result.output.split())
    link = tmp_path / "figure.png"
    link.symlink_to(tmp_path / "nowhere.png")
    result = runner.invoke(app, ["plot", "validation", str(table), "-o", str(link)])
    assert result.exit_code == 2 and "exists: remove it" in " ".join(result.output.split())
    assert link.is_symlink() and not (tmp_path / "nowhere.png").exists()


def test_validate_refuses_a_report_folder_before_any_work(tmp_path):
    config, folder = tmp_path / "config.yaml", tmp_path / "analysis"
    config.write_text(CONFIG)
    folder.mkdir()
    (folder / "index.html").write_text("the user's page")
    result = runner.invoke(
        app,
        ["--db", str(tmp_path / "db.sqlite"), "validate", str(tmp_path / "missing"), "--config", str(config)]
        + ["--report", str(folder), "--overwrite"],
    )
    assert result.exit_code == 2
    assert "holds no bkgdb report page (index.html)" in " ".join(result.output.split())
    assert (folder / "index.html").read_text() == "the user's page"


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def indexed(datastore_copy, tmp_path):
    """A catalogue (SQLite) of a copy of the simulated datastore, its config file and the copy."""
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG + "background_selection: {el_diff: null, az_diff: null, gal_lat_min: 0}\n")
    catalogue = bkgdb.Catalogue.open(f"sqlite:///{tmp_path / 'catalogue.sqlite'}", config=config)
    catalogue.index(datastore_copy)
    return catalogue, config, datastore_copy


def test_overwrite_never_replaces_the_catalogue_its_datastores_or_the_config(indexed, tmp_path):
    catalogue, config, datastore = indexed
    run_file = sorted((datastore / "data").iterdir())[0]
    kept = [run_file, datastore / "obs-index.fits.gz", tmp_path / "catalogue.sqlite", config]
    before = [digest(path) for path in kept]
    for path in kept:
        with pytest.raises(BkgdbError, match="bkgdb never writes it, even with --overwrite"):
            catalogue.write_background(1001, path, overwrite=True)
    assert [digest(path) for path in kept] == before
    # Anywhere else, --overwrite replaces the file.
    (tmp_path / "bkg.fits").write_bytes(b"an older model")
    catalogue.write_background(1001, tmp_path / "bkg.fits", overwrite=True)
    assert fits.getheader(tmp_path / "bkg.fits", "BACKGROUND")["HDUCLAS4"] == "BKG_2D"


def test_overwrite_never_replaces_a_catalogued_file_outside_its_datastore_folder(datastore_copy, tmp_path):
    """CTA-1DC's layout: the index in its own folder, run files in ``../data``, IRFs in a calibration
    tree. Every file the hdu-index points to is kept, by every command that writes a file."""
    from astropy.table import Table

    index, data, caldb = tmp_path / "index", tmp_path / "data", tmp_path / "caldb"
    index.mkdir()
    datastore_copy.joinpath("data").rename(data)
    caldb.mkdir()
    irf = caldb / "irf_file.fits"
    irf.write_bytes(next(data.iterdir()).read_bytes())
    for name in ("obs-index.fits.gz", "hdu-index.fits.gz"):
        datastore_copy.joinpath(name).rename(index / name)
    hdu_table = Table.read(index / "hdu-index.fits.gz")
    irf_rows = [str(kind).strip() == "aeff" for kind in hdu_table["HDU_TYPE"]]
    hdu_table["FILE_DIR"] = ["../caldb" if is_irf else "../data" for is_irf in irf_rows]
    names = hdu_table["FILE_NAME"]
    hdu_table["FILE_NAME"] = [irf.name if is_irf else name for is_irf, name in zip(irf_rows, names, strict=True)]
    hdu_table.write(index / "hdu-index.fits.gz", overwrite=True)
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG + "background_selection: {el_diff: null, az_diff: null, gal_lat_min: 0}\n")
    catalogue = bkgdb.Catalogue.open(f"sqlite:///{tmp_path / 'catalogue.sqlite'}", config=config)
    catalogue.index(index)
    run_file = data / "run_001000.fits.gz"
    kept = [run_file, irf]
    before = [digest(path) for path in kept]
    for path in kept:
        with pytest.raises(BkgdbError, match=f"{path.name} is the file .* bkgdb never writes it"):
            catalogue.write_background(1001, path, overwrite=True)
        for arguments in (
            ["background", "1001", "--config", str(config), "-o", str(path), "--overwrite"],
            ["validate", str(index), "--config", str(config), "-o", str(path), "--format", "csv", "--overwrite"],
        ):
            result = runner.invoke(app, ["--db", str(tmp_path / "catalogue.sqlite"), *arguments])
            assert result.exit_code == 2, result.output
            assert "bkgdb never writes it, even with --overwrite" in " ".join(result.output.split())
    assert [digest(path) for path in kept] == before
    # With its hdu-index gone (moved, damaged), the runs' files are still known from the catalogue.
    (index / "hdu-index.fits.gz").rename(tmp_path / "hdu-index.fits.gz")
    with pytest.raises(BkgdbError, match=f"{run_file.name} is the file .* bkgdb never writes it"):
        catalogue.write_background(1001, run_file, overwrite=True)
    assert digest(run_file) == before[0]
    # A file beside them that no hdu-index names is the user's to replace.
    beside = data / "bkg-1001.fits"
    beside.write_bytes(b"an older model")
    catalogue.write_background(1001, beside, overwrite=True)
    assert fits.getheader(beside, "BACKGROUND")["HDUCLAS4"] == "BKG_2D"


def test_validate_keeps_its_target_datastore_before_it_is_catalogued(datastore_copy, tmp_path):
    """validate -o is checked before the target is indexed: the target's files are kept all the same."""
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    index_file = datastore_copy / "obs-index.fits.gz"
    before = digest(index_file)
    result = runner.invoke(
        app,
        ["--db", str(tmp_path / "db.sqlite"), "validate", str(datastore_copy), "--config", str(config)]
        + ["-o", str(index_file), "--format", "csv", "--overwrite"],
    )
    assert result.exit_code == 2
    # Named as what it is: a datastore, which validate is about to catalogue.
    assert f"is in the datastore {datastore_copy.resolve()}: bkgdb never writes it, even with --overwrite" in "".join(
        result.output.split("\n")
    )
    assert digest(index_file) == before


def test_overwrite_never_replaces_a_device_or_a_pipe(indexed, tmp_path):
    """``-o /dev/null --overwrite`` as root would replace the system's /dev/null by a file."""
    import os
    import stat

    catalogue, _, _ = indexed
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    for path in (pipe, "/dev/null"):
        for overwrite in (False, True):  # without --overwrite too: not told to pass it
            with pytest.raises(BkgdbError) as raised:
                catalogue.write_background(1001, path, overwrite=overwrite)
            assert str(raised.value) == f"{path} is not a regular file (a device, pipe or socket): give a file's name"
    assert stat.S_ISFIFO(os.stat(pipe).st_mode) and stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_a_failed_write_leaves_the_earlier_file_whole(indexed, tmp_path, monkeypatch):
    catalogue, _, _ = indexed
    output = tmp_path / "bkg.fits"
    catalogue.write_background(1001, output)
    before = digest(output)

    def full_disk(self, path, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"SIMPLE  =   half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fits.HDUList, "writeto", full_disk)
    with pytest.raises(BkgdbError, match="cannot write .*No space left on device"):
        catalogue.write_background(1001, output, overwrite=True)
    assert digest(output) == before
    assert sorted(path.name for path in tmp_path.iterdir() if "bkg" in path.name) == ["bkg.fits"]


def test_a_file_made_while_the_work_ran_is_not_replaced(tmp_path):
    output = tmp_path / "rows.csv"

    def write_while_another_job_makes_it(temporary):
        temporary.write_text("ours")
        output.write_text("another job's")

    with pytest.raises(BkgdbError, match="rows.csv exists"):
        write_output(output, write_while_another_job_makes_it)
    assert output.read_text() == "another job's"
    assert [path.name for path in tmp_path.iterdir()] == ["rows.csv"]
    write_output(output, lambda temporary: temporary.write_text("ours"), overwrite=True)
    assert output.read_text() == "ours"


def test_without_hard_links_a_file_is_still_never_replaced_nor_left_half_written(tmp_path, monkeypatch):
    import errno
    import os
    import shutil

    def no_links(source, target):
        raise OSError(errno.EPERM, "hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    write_output(tmp_path / "rows.csv", lambda temporary: temporary.write_text("ours"))
    with pytest.raises(BkgdbError, match="exists"):
        write_output(tmp_path / "rows.csv", lambda temporary: temporary.write_text("again"))
    assert (tmp_path / "rows.csv").read_text() == "ours"

    def full_disk(source, target):
        target.write(b"hal")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copyfileobj", full_disk)
    with pytest.raises(BkgdbError, match="cannot write .*other.csv: No space left"):
        write_output(tmp_path / "other.csv", lambda temporary: temporary.write_text("half"))
    assert [path.name for path in tmp_path.iterdir()] == ["rows.csv"]


def test_a_figure_that_appears_while_it_is_drawn_is_not_replaced(tmp_path, monkeypatch):
    import bkgdb.plotting

    table, figure = tmp_path / "rows.csv", tmp_path / "figure.png"
    table.write_text(TABLE)
    draw = bkgdb.plotting.plot_validation

    def draw_while_another_job_writes(*args, **kwargs):
        figure.write_bytes(b"another job's figure")
        return draw(*args, **kwargs)

    monkeypatch.setattr(bkgdb.plotting, "plot_validation", draw_while_another_job_writes)
    with pytest.raises(BkgdbError, match="figure.png exists"):
        bkgdb.Catalogue(f"sqlite:///{tmp_path / 'unused.sqlite'}").plot_validation(table, figure)
    assert figure.read_bytes() == b"another job's figure"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["figure.png", "rows.csv"]


def test_the_files_an_hdu_index_names_are_found_by_their_name_alone(tmp_path):
    """An output is compared with the hdu-index's files of the same name only: a name in a subfolder
    or padded with blanks is found, a longer name that ends like it is not."""
    import numpy as np
    from astropy.table import Table

    from bkgdb.gadf.datastore import referenced_files

    names = ["bkg.fits", "sub/bkg.fits", " bkg.fits  ", "xbkg.fits", "bkg.fits.gz", "run.fits"]
    table = Table(
        {
            "OBS_ID": np.arange(len(names)),
            "HDU_TYPE": np.array(["events"] * len(names), dtype="S6"),
            "FILE_DIR": np.array(["data", "data", "other"] + ["data"] * (len(names) - 3), dtype="S8"),
            "FILE_NAME": np.array(names, dtype="S16"),  # bytes, as FITS tables give them
        }
    )
    found = referenced_files(tmp_path, table, {"bkg.fits"})
    assert sorted(found.values()) == ["run 0, events", "run 1, events", "run 2, events"]
    every = referenced_files(tmp_path, table)
    assert found == {path: what for path, what in every.items() if path.name == "bkg.fits"}
    assert referenced_files(tmp_path, table, {"other.fits"}) == {}
