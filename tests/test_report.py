"""`bkgdb validate --report DIR`: one HTML page with figures, opened in headless Chromium from disk."""

import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser

import pytest
from test_plotting import assert_pdf, assert_png, png_size, write_config
from typer.testing import CliRunner

from bkgdb.cli.main import app

runner = CliRunner()
IN_CI = os.environ.get("CI", "").lower() == "true"
# Marks the page title once the load event has fired and every image was looked at.
LOAD_CHECK = """<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (image) { return image.complete && image.naturalWidth > 0; });
  document.title = "IMAGES " + loaded.length + " OF " + images.length + " LOADED";
});
</script>
"""


def chromium():
    """The headless browser's path; skips without one (fails in CI, where it must be installed)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if IN_CI:
        pytest.fail("Chromium must be installed in CI (Debian package chromium): the report test may not skip there")
    pytest.skip("Chromium is not installed (apt-get install chromium): browser check of the report skipped")


def run_chromium(browser, profile, *arguments):
    # As root Chromium needs --no-sandbox; a private profile keeps runs independent.
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--allow-file-access-from-files",
        *arguments,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


class Links(HTMLParser):
    """Every href and img src of a page."""

    def __init__(self):
        super().__init__()
        self.hrefs, self.images = [], []

    def handle_starttag(self, tag, attributes):
        attributes = dict(attributes)
        if tag == "a" and "href" in attributes:
            self.hrefs.append(attributes["href"])
        if tag == "img":
            self.images.append(attributes["src"])


def validate(db_url, sim, tmp_path, *options):
    """``bkgdb validate`` of the simulated datastore with its config and ``options``."""
    config = str(write_config(tmp_path / "config.yaml", sim))
    return runner.invoke(app, ["--db", db_url, "validate", str(sim / "datastore"), "--config", config, *options])


@pytest.fixture
def validated(catalogue, sim, tmp_path, db_url):
    """A validation of the simulated datastore written with --report, and its rows as JSON."""
    report_dir = tmp_path / "report"
    result = validate(db_url, sim, tmp_path, "-o", str(tmp_path / "rows.json"), "--report", str(report_dir))
    assert result.exit_code == 0, result.output
    assert f"report written to {report_dir / 'index.html'}" in result.output
    return report_dir, json.loads((tmp_path / "rows.json").read_text())


def test_report_files_and_links(validated, tmp_path, db_url, sim):
    report_dir, rows = validated
    assert [row["obs_id"] for row in rows] == [300, 301, 302, 303, 304, 305]  # 306 lies in the Galactic plane
    fitted = [row for row in rows if row["status"] == "ok"]
    assert len(fitted) == 5 and rows[4]["status"] == "no background"  # nothing else at run 304's airmass
    worst = sorted(fitted, key=lambda row: -abs(row["norm"] - 1))[:3]
    page = (report_dir / "index.html").read_text()
    links = Links()
    links.feed(page)
    expected_figures = ["validation.png"] + [
        f"run-{row['obs_id']}-{kind}.png" for row in worst for kind in ("model", "selection")
    ]
    assert links.images == expected_figures
    assert set(links.hrefs) == {"validation.csv", *expected_figures}
    for target in links.hrefs + links.images:
        assert not target.startswith(("/", "http", "file:")) and (report_dir / target).is_file(), target
    assert "<script" not in page.lower()
    # The worst run is named first, with its norm; the run without background is listed with its reason.
    assert page.index(f"Run {worst[0]['obs_id']} ") < page.index(f"Run {worst[1]['obs_id']} ")
    assert f"{worst[0]['norm']:.3f} &plusmn; {worst[0]['norm_error']:.3f}" in page
    assert "no background" in page and "airmass within 0.2" in page
    assert_png(report_dir / "validation.png", (13, 4.2))
    for name in expected_figures[1:]:
        assert_png(report_dir / name, (10, 4.2) if "model" in name else (11, 5))
    csv_rows = (report_dir / "validation.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + len(rows) and csv_rows[0].startswith("obs_id,object,zenith_deg")
    # The same tables feed `bkgdb plot validation`: JSON, and CSV with run start times from the catalogue.
    result = runner.invoke(app, ["plot", "validation", str(tmp_path / "rows.json"), "-o", str(tmp_path / "v.pdf")])
    assert result.exit_code == 0, result.output
    assert_pdf(tmp_path / "v.pdf")
    # As a module (python -m bkgdb.cli.main): --db reaches the plot command, which finds the start times there.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bkgdb.cli.main",
            "--db",
            db_url,
            "plot",
            "validation",
            str(report_dir / "validation.csv"),
            "--datastore",
            str(sim / "datastore"),
            "-o",
            str(tmp_path / "v.png"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr and f"6 runs of {report_dir / 'validation.csv'}" in result.stdout
    assert png_size(tmp_path / "v.png") == png_size(report_dir / "validation.png")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the page does not depend on the database
def test_report_in_a_browser(validated, tmp_path):
    """Headless Chromium opens index.html from disk: every image loads, and the screenshot is not blank."""
    browser = chromium()
    report_dir, _ = validated
    page = (report_dir / "index.html").read_text()
    n_images = page.count("<img ")
    # A copy with a load check beside the page, so relative links resolve as in the page itself.
    checked = report_dir / "browser-check.html"
    checked.write_text(page.replace("</body>", LOAD_CHECK + "</body>"))
    dom = run_chromium(browser, tmp_path / "profile", "--virtual-time-budget=15000", "--dump-dom", checked.as_uri())
    assert f"<title>IMAGES {n_images} OF {n_images} LOADED</title>" in dom, dom[:500]

    shot = tmp_path / "screenshot.png"
    run_chromium(
        browser,
        tmp_path / "profile",
        "--virtual-time-budget=15000",
        "--window-size=1280,1600",
        f"--screenshot={shot}",
        (report_dir / "index.html").as_uri(),
    )
    assert png_size(shot) == (1280, 1600)
    from matplotlib.image import imread

    pixels = imread(shot)[..., :3]
    assert pixels.std() > 0.05  # text and figures, not a blank page
    # The validation figure sits in the first screen: a good share of the pixels is neither white nor uniform.
    assert (pixels.mean(axis=2) < 0.9).mean() > 0.02


def test_report_folder_that_is_a_file(catalogue, sim, tmp_path, db_url):
    (tmp_path / "taken").write_text("x")
    result = validate(db_url, sim, tmp_path, "-w", "obs_id=300", "--report", str(tmp_path / "taken"))
    assert result.exit_code == 2
    assert f"Error: report folder {tmp_path / 'taken'} is a file" in result.output


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_report_of_a_3d_validation_draws_the_3d_models(catalogue, sim, tmp_path, db_url):
    """With --3d the worst runs' model figures are the 3D models that were validated (FoV images)."""
    report_dir = tmp_path / "report"
    result = validate(db_url, sim, tmp_path, "--3d", "-w", "obs_id<=301", "--report", str(report_dir))
    assert result.exit_code == 0, result.output
    models = sorted(report_dir.glob("run-*-model.png"))
    assert [path.name for path in models] == ["run-300-model.png", "run-301-model.png"]
    # The same picture as `bkgdb plot model OBS_ID --3d`, not the 2D rate curves.
    config = str(tmp_path / "config.yaml")
    for name, extra in (("3d.png", ["--3d"]), ("2d.png", [])):
        arguments = ["plot", "model", "300", "--config", config, *extra, "-o", str(tmp_path / name)]
        result = runner.invoke(app, ["--db", db_url, *arguments])
        assert result.exit_code == 0, result.output
    assert png_size(models[0]) == png_size(tmp_path / "3d.png") != png_size(tmp_path / "2d.png")


def test_an_interrupted_report_says_so_and_is_replaced_by_the_next(catalogue, sim, tmp_path, db_url, monkeypatch):
    """Ctrl-C while the report's figures are drawn: the one line names what was left (the rows file,
    an unfinished report), and the report's page says it is unfinished. The folder stays bkgdb's, so
    the next validate with --overwrite replaces it (a folder of figures without a page was refused)."""
    import bkgdb.plotting

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    report_dir, rows = tmp_path / "report", tmp_path / "rows.csv"
    with monkeypatch.context() as patch:
        patch.setattr(bkgdb.plotting, "plot_run_model", interrupted)
        result = validate(db_url, sim, tmp_path, "-o", str(rows), "--report", str(report_dir))
    assert result.exit_code == 130
    assert " ".join(result.stderr.split()) == (
        f"Interrupted by SIGINT: stopped; work committed so far is kept; the rows are written to {rows}; "
        f"the report in {report_dir} is unfinished (--overwrite replaces it)."
    )
    assert "its writing was interrupted" in (report_dir / "index.html").read_text()
    again = validate(db_url, sim, tmp_path, "-o", str(rows), "--report", str(report_dir), "--overwrite")
    assert again.exit_code == 0, again.output
    assert "its writing was interrupted" not in (report_dir / "index.html").read_text()
