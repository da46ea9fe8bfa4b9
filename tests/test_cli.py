import csv
import io
import json
import re

import pytest
import yaml
from typer.testing import CliRunner

from bkgdb.catalogue import Catalogue
from bkgdb.cli.main import app
from bkgdb.demo import DEMO_MARKER, claim_demo_folder, demo_config, run_demo
from bkgdb.errors import BkgdbError

runner = CliRunner()


def bkgdb(*args, db=None):
    arguments = (["--db", db] if db else []) + [str(arg) for arg in args]
    return runner.invoke(app, arguments)


def _commands(group=app, prefix=()):
    """(words, callback) of every command, the plot sub-commands included."""
    for command in group.registered_commands:
        yield (*prefix, command.name or command.callback.__name__.replace("_", "-")), command.callback
    for sub in group.registered_groups:
        yield from _commands(sub.typer_instance, (*prefix, sub.name))


def test_every_command_has_help_text():
    commands = dict(_commands())
    assert {"index", "background", "attach", "validate", "demo", "plot model", "plot significance"} <= {
        " ".join(words) for words in commands
    }
    for words, callback in commands.items():
        result = bkgdb(*words, "--help")
        assert result.exit_code == 0, result.output
        summary = (callback.__doc__ or "").strip().splitlines()
        assert summary, f"{' '.join(words)} has no help text"
        # --help shows the summary, however rich wraps it into its box.
        shown = " ".join(result.output.replace("\u2502", " ").split())
        assert " ".join(summary[0].split()) in shown, (words, result.output)


def test_index_runs_info(db_url, simulated_datastore):
    result = bkgdb("index", simulated_datastore, db=db_url)
    assert result.exit_code == 0, result.output
    assert "5 new, 0 updated, 0 unchanged, 0 failed" in result.output
    assert "0 new, 0 updated, 5 unchanged, 0 failed" in bkgdb("index", simulated_datastore, db=db_url).output

    listing = json.loads(bkgdb("runs", "--where", "obs_id>=1003", "--format", "json", db=db_url).output)
    assert [row["obs_id"] for row in listing] == [1003, 1004]
    assert listing[0]["object_name"] == "SIM FIELD"

    rows = list(
        csv.DictReader(
            io.StringIO(
                bkgdb("runs", "-w", "obs_id<1002", "-c", "obs_id,DEADC,datastore", "-f", "csv", db=db_url).output
            )
        )
    )
    assert [row["obs_id"] for row in rows] == ["1000", "1001"]
    assert float(rows[0]["DEADC"]) == pytest.approx(0.9)
    assert rows[0]["datastore"] == str(simulated_datastore.resolve())

    table = bkgdb("runs", db=db_url).output
    assert "5 ok runs" in table and "1004" in table
    elsewhere = bkgdb("runs", "--datastore", simulated_datastore.parent, db=db_url)
    assert elsewhere.exit_code == 2
    assert f"is not in the catalogue: index it first (indexed datastores: {simulated_datastore.resolve()})" in (
        elsewhere.stderr
    )

    info = bkgdb("info", db=db_url)
    assert info.exit_code == 0
    assert "runs: 5 indexed, 0 failed" in info.output
    summary = json.loads(bkgdb("info", "--format", "json", db=db_url).output)
    assert summary["datastores"][0]["runs"] == 5


def test_failed_runs_are_listed_with_reasons(db_url, datastore_copy):
    (datastore_copy / "data" / "run_001002.fits.gz").write_bytes(b"SIMPLE  =  not really fits")
    result = bkgdb("index", datastore_copy, db=db_url)
    assert result.exit_code == 0
    assert "4 new, 0 updated, 0 unchanged, 1 failed" in result.output
    assert "failed: run 1002" in result.output
    listing = json.loads(bkgdb("runs", "--failed", "-f", "json", db=db_url).output)
    assert [row["obs_id"] for row in listing] == [1002]
    assert "cannot read" in listing[0]["error"]


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_password_is_hidden(db_url):
    # The test server trusts local connections, so any password is accepted and must not be shown.
    with_password = db_url.replace("://postgres@", "://postgres:topsecret@")
    for command in ("init", "info"):
        result = bkgdb(command, db=with_password)
        assert result.exit_code == 0, result.output
        assert "topsecret" not in result.output and "***" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["index", "/no/such/datastore"], "datastore folder does not exist"),
        (["index", "."], "no obs-index file"),
        (["--db", "postgresql://postgres@127.0.0.1:1/x", "info"], "cannot connect"),
        (["--db", "nonsense+what://", "info"], "unsupported database"),
        (["--db", "postgresql://user@host:notaport/db", "info"], "malformed"),
        (["runs", "--where", "zenith<<3"], "needs a number|cannot parse"),
        (["runs", "--where", "nosuch=1"], "unknown column"),
        (["runs", "--datastore", "/no/such/folder"], "datastore /no/such/folder is not in the catalogue"),
        (["exclusions", "23523", "--datastore", "/nonexistent"], "datastore /nonexistent is not in the catalogue"),
    ],
)
def test_user_errors_are_one_line_with_exit_code_2(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BKGDB_URL", raising=False)
    if args[0] in ("runs", "exclusions"):  # reading commands need a catalogue
        assert runner.invoke(app, ["init"]).exit_code == 0
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    assert "Traceback" not in result.output
    assert re.search(message, lines[0])


@pytest.mark.parametrize(
    "url", ["sqlite://", "sqlite:///:memory:", "sqlite:///file:x?mode=memory&uri=true", ":memory:"]
)
def test_an_in_memory_database_is_refused_as_it_would_keep_nothing(url, simulated_datastore, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for command in (["init"], ["index", simulated_datastore], ["runs"]):
        result = bkgdb(*command, db=url)
        assert result.exit_code == 2, result.output
        assert result.output.strip() == (
            f"Error: {url} is an in-memory SQLite database, gone when the command exits: "
            "give an SQLite file (--db FILE.sqlite) or a PostgreSQL URL"
        )
    monkeypatch.setenv("BKGDB_URL", url)
    assert bkgdb("init").exit_code == 2
    assert list(tmp_path.iterdir()) == []


def test_the_library_opens_an_in_memory_database():
    # A script's or a test's scratch catalogue: only the commands refuse one.
    with Catalogue.open("sqlite://") as catalogue:
        assert catalogue.init()["runs"] == 0


@pytest.mark.parametrize("obs_id", [2**63, 10**20, -1])
def test_an_obs_id_outside_64_bit_is_one_error_line(db_url, obs_id, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(
        "binning: {e_min: 0.1, e_max: 100, e_bins: 8, off_min: 0, off_max: 2.5, off_bins: 5}\n"
        "exclusion: {gammacat: none, hawc: none, star_cat: none}\n"
    )
    assert bkgdb("init", db=db_url).exit_code == 0
    figure = ["--config", config, "-o", tmp_path / "figure.png"]
    for command in (
        ["exclusions"],
        ["history"],
        ["lineage"],
        ["flag"],
        ["flag", "--bad", "--", obs_id, "broken"],
        ["background", "--config", config, "-o", tmp_path / "bkg.fits"],
        ["plot", "model", *figure],
        ["plot", "selection", *figure],
        ["plot", "significance", *figure],
    ):
        # The OBS_ID after "--" (if not given yet): a negative one is no option then.
        result = bkgdb(*command, *([] if "--" in command else ["--", obs_id]), db=db_url)
        assert result.exit_code == 2, (command, result.output)
        assert result.output.strip() == (
            f"Error: OBS_ID {obs_id} names no run: OBS_IDs are integers in 0 ... 2**63 - 1 (64-bit signed)"
        ), command
    assert not (tmp_path / "figure.png").exists() and not (tmp_path / "bkg.fits").exists()
    with pytest.raises(BkgdbError, match="names no run"):
        Catalogue.open(db_url, readonly=True).lineage(obs_id)


def test_exclusions_of_a_run_that_failed_to_index_say_why(db_url, datastore_copy, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(
        "binning: {e_min: 0.1, e_max: 100, e_bins: 10, off_min: 0, off_max: 2.5, off_bins: 5}\n"
        "exclusion: {gammacat: none, hawc: none, star_cat: none}\n"
    )
    (datastore_copy / "data" / "run_001002.fits.gz").unlink()
    assert (
        "4 new, 0 updated, 0 unchanged, 1 failed"
        in bkgdb("index", datastore_copy, "--config", config, db=db_url).output
    )
    failed = bkgdb("exclusions", "1002", db=db_url)
    assert failed.exit_code == 2
    assert failed.output.startswith("Error: run 1002 failed to index: ") and "run_001002.fits.gz" in failed.output
    unknown = bkgdb("exclusions", "999", db=db_url)
    assert unknown.exit_code == 2 and unknown.output.startswith("Error: run 999 is not in the catalogue")


def test_index_with_config_then_cache_and_exclusions(db_url, simulated_datastore, tmp_path):
    from bkgdb.simulate import write_source_catalogue

    catalogue = write_source_catalogue(
        tmp_path / "cat.fits", [{"name": "Known source", "ra_deg": 151.0, "dec_deg": 29.5}]
    )
    config = tmp_path / "config.yaml"
    config.write_text(f"""
binning: {{e_min: 0.1, e_max: 100, e_bins: 10, off_min: 0, off_max: 2.5, off_bins: 5, e_bin: 3}}
exclusion:
  gammacat: {catalogue}
  hawc: none
  star_cat: none
  exclude_regions: [[150.5, 30.0, 0.2, "my region"]]
""")
    result = bkgdb("index", simulated_datastore, "--config", config, "--jobs", "2", db=db_url)
    assert result.exit_code == 0, result.output
    assert "Warning: unknown key binning.e_bin" in result.output
    assert "5 new, 0 updated, 0 unchanged, 0 failed; 5 pieces computed" in result.output
    again = bkgdb("index", simulated_datastore, "--config", config, db=db_url)
    assert "0 new, 0 updated, 5 unchanged, 0 failed" in again.output and "pieces" not in again.output

    listing = json.loads(bkgdb("exclusions", "1001", "-f", "json", db=db_url).output)
    assert {row["name"] for row in listing} == {"Known source", "my region"}
    binning = json.loads(bkgdb("cache", "-f", "json", db=db_url).output)[0]["binning"]
    assert {row["binnings"] for row in listing} == {f"{binning} 2d"}  # which pieces carry the regions

    summary = json.loads(bkgdb("cache", "-f", "json", db=db_url).output)
    assert [row["pieces"] for row in summary] == [5]
    dropped = bkgdb("cache", "--drop-exclusion", summary[0]["exclusion"], db=db_url)
    assert "dropped 5 pieces" in dropped.output
    assert json.loads(bkgdb("cache", "-f", "json", db=db_url).output) == []
    missing = bkgdb("exclusions", "1001", db=db_url)
    assert missing.exit_code == 2 and "no background pieces" in missing.output


def test_config_errors_are_one_line(simulated_datastore, tmp_path):
    config = tmp_path / "bad.yaml"
    # No catalogues: without GAMMAPY_DATA the defaults would add warnings about them.
    config.write_text("exclusion: {exposure_method: guess, gammacat: none, hawc: none, star_cat: none}\n")
    result = bkgdb("index", simulated_datastore, "--config", config, db=str(tmp_path / "db.sqlite"))
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "Error: exclusion.exposure_method must be one of geometric, counts-ratio, got 'guess'"
    ]


@pytest.mark.parametrize(
    "name, content",
    [("gammacat.png", b"\x89PNG\r\n\x1a\n" + bytes(64)), ("gammacat.txt", b"ra dec\n1 2\n"), ("gammacat.fits", b"")],
    ids=["png", "text", "empty"],
)
def test_a_source_catalogue_that_is_not_fits_is_a_one_line_error(name, content, simulated_datastore, tmp_path):
    catalogue = tmp_path / name
    catalogue.write_bytes(content)
    config = tmp_path / "config.yaml"
    config.write_text(f"exclusion: {{gammacat: {catalogue}, hawc: none, star_cat: none}}\n")
    result = bkgdb("index", simulated_datastore, "--config", config, db=str(tmp_path / "db.sqlite"))
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: cannot read gammacat catalogue {catalogue}: "), lines


def test_background_and_attach_commands(db_url, simulated_datastore, tmp_path):
    from gammapy.data import DataStore
    from gammapy.irf import Background2D

    config = tmp_path / "config.yaml"
    config.write_text("""
binning: {e_min: 0.1, e_max: 100, e_bins: 8, off_min: 0, off_max: 2.5, off_bins: 5}
exclusion: {gammacat: none, hawc: none, star_cat: none}
background_selection: {el_diff: null, az_diff: null, gal_lat_min: 10, smooth: true, smooth_sigma: 1}
""")
    assert bkgdb("index", simulated_datastore, "--config", config, db=db_url).exit_code == 0
    result = bkgdb("background", "1002", "--config", config, "-o", tmp_path / "bkg.fits", db=db_url)
    assert result.exit_code == 0, result.output
    assert "run 1002: background from 4 runs" in result.output and "smoothing gauss" in result.output
    assert Background2D.read(tmp_path / "bkg.fits").data.shape == (8, 5)
    again = bkgdb("background", "1002", "--config", config, "-o", tmp_path / "bkg.fits", "--smooth", "none", db=db_url)
    assert again.exit_code == 2 and "exists" in again.output
    assert (
        bkgdb(
            "background",
            "1002",
            "--config",
            config,
            "-o",
            tmp_path / "bkg.fits",
            "--smooth",
            "poly",
            "--overwrite",
            db=db_url,
        ).exit_code
        == 0
    )

    attached = bkgdb("attach", simulated_datastore, "--out", tmp_path / "out", "--config", config, db=db_url)
    assert attached.exit_code == 0, attached.output
    assert "5 runs written to" in attached.output
    assert "0 new, 0 updated, 5 unchanged, 0 failed" in attached.output  # indexed first: up to date
    assert len(DataStore.from_dir(tmp_path / "out").obs_ids) == 5

    # Attaching indexed nothing new and recorded the runs' backgrounds: a background builds as before.
    again = bkgdb("background", "1002", "--config", config, "-o", tmp_path / "x.fits", db=db_url)
    assert again.exit_code == 0 and "run 1002: background from 4 runs" in again.output
    assert Background2D.read(tmp_path / "x.fits").data.shape == (8, 5)
    assert len(json.loads(bkgdb("history", "-f", "json", db=db_url).output)) == 2 + 5 + 1
    strict = tmp_path / "strict.yaml"
    strict.write_text(config.read_text().replace("gal_lat_min: 10", "gal_lat_min: 89"))
    failed = bkgdb("background", "1002", "--config", strict, "-o", tmp_path / "y.fits", db=db_url)
    assert failed.exit_code == 2
    assert "no runs selected for run 1002" in failed.output and "|b| > 89 deg removed 4 (0 left)" in failed.output


def test_background_3d_and_2d(db_url, simulated_datastore, tmp_path):
    from gammapy.irf import Background2D, Background3D

    config = tmp_path / "config.yaml"
    config.write_text("""
binning:
  - {e_min: 0.1, e_max: 100, e_bins: 8, off_min: 0, off_max: 2.5, off_bins: 5}
  - {e_min: 0.1, e_max: 100, e_bins: 8, fov_max: 2.5, fov_bins: 10, fov_alignment: RADEC}
exclusion: {gammacat: none, hawc: none, star_cat: none}
background_selection: {el_diff: null, az_diff: null, gal_lat_min: 10}
""")
    assert bkgdb("index", simulated_datastore, "--config", config, db=db_url).exit_code == 0
    three = bkgdb("background", "1002", "--config", config, "-o", tmp_path / "3d.fits", "--3d", db=db_url)
    assert three.exit_code == 0, three.output
    assert Background3D.read(tmp_path / "3d.fits", hdu="BACKGROUND").data.shape == (8, 10, 10)
    two = bkgdb("background", "1002", "--config", config, "-o", tmp_path / "2d.fits", "--2d", db=db_url)
    assert two.exit_code == 0, two.output
    assert Background2D.read(tmp_path / "2d.fits").data.shape == (8, 5)


def test_demo(tmp_path, monkeypatch):
    monkeypatch.delenv("GAMMAPY_DATA", raising=False)  # the demo needs nothing from outside
    result = bkgdb("demo", tmp_path / "demo")
    assert result.exit_code == 0, result.output
    assert "32 new, 0 updated, 0 unchanged, 0 failed; 32 pieces computed" in result.output
    assert "32 runs written to" in result.output
    ratio, chi2, bins = re.search(
        r"model / truth in gammapy = ([0-9.]+) \+- [0-9.]+, chi2 = ([0-9.]+) for (\d+) bins", result.output
    ).groups()
    assert abs(float(ratio) - 1) < 0.02
    # What gammapy integrates, bin by bin, is the truth within the counts' errors.
    assert float(chi2) < 1.5 * int(bins)
    norm, error = map(
        float, re.search(r"FoVBackgroundMaker norm of run \d+ with it: ([0-9.]+) \+- ([0-9.]+)", result.output).groups()
    )
    assert abs(norm - 1) < 3 * error
    assert (tmp_path / "demo" / "with-backgrounds" / "hdu-index.fits.gz").is_file()
    # Run again, it replaces its own output.
    again = bkgdb("demo", tmp_path / "demo")
    assert again.exit_code == 0, again.output
    assert "0 new, 0 updated, 32 unchanged, 0 failed" in again.output


def test_demo_never_writes_into_a_folder_it_did_not_make(tmp_path):
    folder = tmp_path / "analysis"
    (folder / "datastore").mkdir(parents=True)
    (folder / "catalogue.fits").write_bytes(b"my own catalogue")
    (folder / "datastore" / "obs-index.fits.gz").write_bytes(b"my own index")
    result = bkgdb("demo", folder)
    assert result.exit_code == 2
    assert "is not empty and was not made by `bkgdb demo`" in " ".join(result.output.split())
    assert sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*")) == [
        "catalogue.fits",
        "datastore",
        "datastore/obs-index.fits.gz",
    ]
    assert (folder / "catalogue.fits").read_bytes() == b"my own catalogue"
    assert (folder / "datastore" / "obs-index.fits.gz").read_bytes() == b"my own index"
    # With --db, in the folder or elsewhere, the database is not made either: the folder is refused first.
    for database in (folder / "demo.sqlite", tmp_path / "elsewhere.sqlite"):
        result = bkgdb("demo", folder, db=str(database))
        assert result.exit_code == 2
        assert "is not empty and was not made by `bkgdb demo`" in " ".join(result.output.split())
        assert not database.exists()
    assert len(list(folder.rglob("*"))) == 3


def test_the_demo_never_adds_its_runs_to_a_real_catalogue(simulated_datastore, tmp_path):
    real = tmp_path / "real.sqlite"
    assert bkgdb("index", simulated_datastore, db=str(real)).exit_code == 0
    before = json.loads(bkgdb("runs", "-f", "json", db=str(real)).output)
    result = bkgdb("demo", tmp_path / "demo", db=str(real))
    assert result.exit_code == 2
    assert " ".join(result.output.split()) == (
        f"Error: sqlite:///{real} catalogues {simulated_datastore}: the demo's simulated "
        f"runs would join them; give a new database, or no --db (the demo then keeps its own in {tmp_path / 'demo'})"
    )
    assert not (tmp_path / "demo").exists()  # refused before anything was written
    assert json.loads(bkgdb("runs", "-f", "json", db=str(real)).output) == before


def test_the_demo_takes_new_empty_and_earlier_demo_folders_only(tmp_path):
    new = tmp_path / "new"
    claim_demo_folder(new)
    assert (new / DEMO_MARKER).is_file()
    claim_demo_folder(new)  # its own, marked
    empty = tmp_path / "empty"
    empty.mkdir()
    claim_demo_folder(empty)
    # A demo of an earlier version left no mark: recognised by its files and its config.
    earlier = tmp_path / "earlier"
    (earlier / "datastore").mkdir(parents=True)
    (earlier / "bkgdb-demo.sqlite-wal").write_bytes(b"")
    (earlier / "bkgdb-demo.yaml").write_text(yaml.safe_dump(demo_config(earlier / "catalogue.fits")))
    claim_demo_folder(earlier)
    assert (earlier / DEMO_MARKER).is_file()
    other_config = tmp_path / "other-config"
    other_config.mkdir()
    (other_config / "bkgdb-demo.yaml").write_text("binning: {e_bins: 3}\n")
    other_files = tmp_path / "other-files"
    (other_files / "datastore").mkdir(parents=True)
    (other_files / "bkgdb-demo.yaml").write_text(yaml.safe_dump(demo_config(other_files / "catalogue.fits")))
    (other_files / "notes.txt").write_text("mine")
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    for refused in (other_config, other_files, a_file):
        with pytest.raises(BkgdbError):
            claim_demo_folder(refused)
    assert not (other_config / DEMO_MARKER).exists() and not (other_files / DEMO_MARKER).exists()
    # The demo's own folder with a user's file where its attach writes: refused before anything is
    # written (the attach would refuse it, after the datastore and database were made again).
    (new / "with-backgrounds").mkdir()
    (new / "with-backgrounds" / "notes.txt").write_text("mine")
    (new / "bkgdb-demo.yaml").write_text("kept")
    with pytest.raises(BkgdbError, match=r"with-backgrounds holds files bkgdb did not write \(notes.txt\)"):
        run_demo(new)
    assert sorted(path.name for path in new.iterdir()) == [DEMO_MARKER, "bkgdb-demo.yaml", "with-backgrounds"]
    assert (new / "bkgdb-demo.yaml").read_text() == "kept"
    # A file, not a folder, in its place: refused as early.
    (new / "with-backgrounds" / "notes.txt").unlink()
    (new / "with-backgrounds").rmdir()
    (new / "with-backgrounds").write_text("mine")
    with pytest.raises(BkgdbError, match=r"with-backgrounds is not a folder the demo made"):
        run_demo(new)
    assert sorted(path.name for path in new.iterdir()) == [DEMO_MARKER, "bkgdb-demo.yaml", "with-backgrounds"]


def test_where_on_the_command_line_and_history(db_url, simulated_datastore, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("""
binning: {e_min: 0.1, e_max: 100, e_bins: 8, off_min: 0, off_max: 2.5, off_bins: 5}
exclusion: {gammacat: none, hawc: none, star_cat: none}
background_selection: {el_diff: null, az_diff: null, gal_lat_min: 10}
""")
    assert bkgdb("index", simulated_datastore, "--config", config, db=db_url).exit_code == 0
    result = bkgdb("background", "1000", "--config", config, "-o", tmp_path / "a.fits", "-w", "obs_id>=1003", db=db_url)
    assert result.exit_code == 0, result.output
    assert "background from 2 runs" in result.output and "obs_id>=1003 removed 2 (2 left)" in result.output
    assert bkgdb("background", "1004", "--config", config, "-o", tmp_path / "b.fits", db=db_url).exit_code == 0
    bad = bkgdb("background", "1000", "--config", config, "-o", tmp_path / "c.fits", "-w", "obs_id>>3", db=db_url)
    assert bad.exit_code == 2 and "Error:" in bad.output

    history = json.loads(bkgdb("history", "-f", "json", db=db_url).output)
    assert [row["target"] for row in history] == [1004, 1000]
    assert history[1]["obs_ids"] == [1003, 1004] and history[1]["output"].endswith("a.fits")
    assert [row["target"] for row in json.loads(bkgdb("history", "1000", "-f", "json", db=db_url).output)] == [1000]


def test_smoothing_choices_are_the_library_methods():
    from bkgdb.cli.main import Smoothing
    from bkgdb.config import SMOOTHING_METHODS

    assert tuple(member.value for member in Smoothing) == SMOOTHING_METHODS


def test_every_listing_gives_the_same_rows_as_csv_and_as_json(db_url, simulated_datastore, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("""
binning: {e_min: 0.1, e_max: 100, e_bins: 8, off_min: 0, off_max: 2.5, off_bins: 5}
exclusion: {gammacat: none, hawc: none, star_cat: none, exclude_regions: [[150.5, 30.0, 0.2, "my region"]]}
background_selection: {el_diff: null, az_diff: null, gal_lat_min: 10}
""")
    assert bkgdb("index", simulated_datastore, "--config", config, db=db_url).exit_code == 0
    assert bkgdb("background", "1000", "--config", config, "-o", tmp_path / "a.fits", db=db_url).exit_code == 0
    assert bkgdb("flag", "1003", "--bad", "camera off", db=db_url).exit_code == 0  # background 1000 is stale

    listings = [
        ["runs"],
        ["runs", "--failed"],
        ["info"],
        ["cache"],
        ["history"],
        ["history", "--stale"],
        ["lineage", "1003"],
        ["flag", "1003"],
        ["exclusions", "1001"],
    ]
    for listing in listings:
        as_csv = bkgdb(*listing, "-f", "csv", db=db_url)
        as_json = bkgdb(*listing, "-f", "json", db=db_url)
        assert as_csv.exit_code == 0 and as_json.exit_code == 0, (listing, as_csv.output, as_json.output)
        # Only the rows on stdout: a summary line there would be read as the CSV header.
        rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
        entries = json.loads(as_json.stdout)
        if listing == ["info"]:  # the whole summary; the CSV has its datastores
            assert entries["runs"] == 5 and "runs: 5 indexed, 0 failed" in as_csv.stderr
            entries = entries["datastores"]
        assert len(rows) == len(entries) and (listing == ["runs", "--failed"] or rows), listing
        assert [set(row) for row in rows] == [set(entry) for entry in entries], listing
    flags = list(csv.DictReader(io.StringIO(bkgdb("flag", "1003", "-f", "csv", db=db_url).stdout)))
    assert [(row["obs_id"], row["flag"], row["reason"]) for row in flags] == [("1003", "bad", "camera off")]
