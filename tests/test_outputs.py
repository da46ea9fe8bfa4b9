"""Files written for the user (figures, models, tables, reports) never replace a file unless asked."""

import pytest
from typer.testing import CliRunner

from bkgdb.cli.main import app
from bkgdb.errors import BkgdbError
from bkgdb.outputs import check_report_folder

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
        with pytest.raises(BkgdbError, match=r"holds files that are not a bkgdb report's \(index.html\)"):
            check_report_folder(analysis, overwrite=overwrite)
    (analysis / "notes.txt").write_text("mine")
    with pytest.raises(BkgdbError, match=r"not a bkgdb report's \(notes.txt\)"):
        check_report_folder(analysis, overwrite=True)
    (tmp_path / "a-file").write_text("mine")
    with pytest.raises(BkgdbError, match="is a file"):
        check_report_folder(tmp_path / "a-file")


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
    assert "holds files that are not a bkgdb report's (index.html)" in " ".join(result.output.split())
    assert (folder / "index.html").read_text() == "the user's page"
