"""Figures rendered from real objects (simulated runs with a known truth, H.E.S.S. DR1) and checked as files."""

import struct
import subprocess
import sys

import numpy as np
import pytest
import yaml
from astropy import units as u
from astropy.coordinates import SkyCoord
from conftest import PLOT_SOURCE as SOURCE
from conftest import PLOT_TRUTH as TRUTH
from typer.testing import CliRunner

from bkgdb.background import BackgroundBuilder
from bkgdb.cli.main import app
from bkgdb.config import BkgdbConfig, load_config
from bkgdb.errors import BkgdbError
from bkgdb.plotting import (
    li_ma_known_background,
    model_curves,
    plot_model,
    plot_model_3d,
    plot_run_model,
    plot_selection,
    reference_rate,
    run_significance_maps,
    save_figure,
)
from bkgdb.store.flags import flag_run
from bkgdb.store.funnel import FunnelPicture, funnel_picture

runner = CliRunner()
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DPI = 100
# OBS_IDs 300-306 of the `sim` fixture (conftest): four similar empty-field runs, one at high zenith,
# the source run, one in the Galactic plane.
HIGH_ZENITH, SOURCE_RUN, PLANE_RUN, FLAGGED = 304, 305, 306, 303


def png_size(path):
    """(width, height) from a PNG's IHDR chunk, after checking the signature."""
    data = path.read_bytes()[:24]
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def assert_png(path, figsize_inches, dpi=DPI):
    """A valid, non-blank PNG about the figure's size (bbox 'tight' trims or adds a little)."""
    from matplotlib.image import imread

    width, height = png_size(path)
    expected_width, expected_height = figsize_inches[0] * dpi, figsize_inches[1] * dpi
    assert 0.6 * expected_width < width < 1.25 * expected_width, (width, expected_width)
    assert 0.6 * expected_height < height < 1.35 * expected_height, (height, expected_height)
    pixels = imread(path)
    assert pixels.shape[:2] == (height, width)
    assert pixels[..., :3].std() > 0.05, f"{path} looks blank"


def assert_pdf(path):
    assert path.read_bytes()[:5] == b"%PDF-"
    assert path.stat().st_size > 5000


def config_values(sim, **selection):
    return {
        "binning": [
            {"e_min": 0.3, "e_max": 100, "e_bins": 10, "off_min": 0, "off_max": 2.5, "off_bins": 8},
            {"e_min": 0.3, "e_max": 100, "e_bins": 10, "fov_max": 2.5, "fov_bins": 12, "fov_alignment": "RADEC"},
        ],
        "exclusion": {
            "gammacat": str(sim / "catalogue.fits"),
            "hawc": "none",
            "star_cat": "none",
            "source_radius": 0.3,
        },
        "background_selection": {"el_diff": 0.2, "az_diff": None, "gal_lat_min": 10, **selection},
    }


def write_config(path, sim, **selection):
    path.write_text(yaml.safe_dump(config_values(sim, **selection)))
    return path


@pytest.fixture
def indexed(catalogue, sim):
    config = BkgdbConfig.from_dict(config_values(sim))
    catalogue.index(sim / "datastore", config=config)
    return catalogue, config


def test_funnel_names_the_first_criterion_that_removed_each_run(indexed):
    """Per candidate, the first failed step (flagged, airmass, |b|); the counts agree with the selection's funnel."""
    catalogue, config = indexed
    flag_run(catalogue.engine, FLAGGED, "bad", "camera off", author="test")
    builder = BackgroundBuilder(catalogue, config)
    picture = funnel_picture(builder, 300)
    removed = {fate.obs_id: fate.removed_by for fate in picture.fates}
    assert removed == {
        301: None,
        302: None,
        303: "flagged bad",
        304: "airmass within 0.2",
        305: None,
        306: "|b| > 10 deg",
    }
    built = builder.build(300)
    assert picture.selected_run_ids == built.selection.run_ids
    assert sorted(fate.obs_id for fate in picture.fates if fate.run_id in picture.selected_run_ids) == [301, 302, 305]
    # What each step removed, counted from the fates, is what the selection's funnel says.
    left = len(picture.fates)
    for name, after in built.selection.funnel[1:]:
        left -= sum(fate.removed_by == name for fate in picture.fates)
        assert left == after, name
    groups = dict(picture.groups())
    assert [fate.obs_id for fate in groups[FunnelPicture.SELECTED]] == [301, 302, 305]
    assert "selected" in picture.title and "3 of 6 candidates" in picture.title


def test_selection_plot_and_its_command(indexed, sim, tmp_path, db_url):
    catalogue, config = indexed
    picture = funnel_picture(BackgroundBuilder(catalogue, config), 302)
    assert_png(save_figure(plot_selection(picture), tmp_path / "selection.png"), (11, 5))
    config_file = write_config(tmp_path / "config.yaml", sim)
    result = runner.invoke(
        app,
        [
            "--db",
            db_url,
            "plot",
            "selection",
            "302",
            "--config",
            str(config_file),
            "-o",
            str(tmp_path / "selection.pdf"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "run 302: 4 of 6 candidates selected" in result.output
    assert_pdf(tmp_path / "selection.pdf")


def test_model_plot_from_a_built_background(indexed, sim, tmp_path):
    """The plotted model is the built rate; a smoothed model keeps the summed rate for the points."""
    catalogue, config = indexed
    built = BackgroundBuilder(catalogue, config, smooth="gauss").build(300)
    curves = model_curves(built)
    assert np.array_equal(curves.rate, built.rate)
    assert np.array_equal(curves.unsmoothed, built.assembled.rate)
    assert np.array_equal(curves.counts, built.assembled.counts)
    assert np.allclose(curves.relative_error[curves.counts > 0], 1 / np.sqrt(curves.counts[curves.counts > 0]))
    # The model recovers the simulated truth at the bin centres within its statistics, so the picture shows it.
    unsmoothed = model_curves(BackgroundBuilder(catalogue, config, smooth="none").build(300))
    centre = unsmoothed.energy_centres[2], unsmoothed.offset_centres[1]
    truth = TRUTH.rate(*centre)
    assert unsmoothed.rate[2, 1] == pytest.approx(truth, rel=4 * unsmoothed.relative_error[2, 1])
    figure = plot_model(curves, reference=built.model.to_3d(), path=tmp_path / "model.png")
    assert_png(tmp_path / "model.png", (10, 4.2))
    axes = figure.axes[0]
    assert axes.get_xlabel() == "FoV offset (deg)" and "MeV" in axes.get_ylabel()
    assert_pdf(save_figure(figure, tmp_path / "model.pdf"))


def test_reference_3d_is_averaged_over_azimuth(indexed):
    """A radially symmetric Background3D averaged over FoV azimuth gives back the 2D model it came from."""
    catalogue, config = indexed
    model = BackgroundBuilder(catalogue, config).build(300).model
    energy = np.array([0.5, 1.0, 3.0])
    offset = np.array([0.3, 0.9, 1.4])
    direct = reference_rate(model, energy, offset)
    averaged = reference_rate(model.to_3d(), energy, offset, n_azimuth=72)
    assert direct.shape == averaged.shape == (3, 3)
    # to_3d samples the 2D model on a 0.2-deg grid: equal within the interpolation between its nodes.
    assert np.allclose(averaged, direct, rtol=0.15)


def test_model_command_on_a_run_and_on_files(indexed, sim, tmp_path, db_url):
    """OBS_ID with --config, and the 2D and --3d files `bkgdb background` writes (3D: FoV images, alignment shown)."""
    config_file = write_config(tmp_path / "config.yaml", sim)
    result = runner.invoke(
        app, ["--db", db_url, "plot", "model", "300", "--config", str(config_file), "-o", str(tmp_path / "run.png")]
    )
    assert result.exit_code == 0, result.output
    assert "run 300: model from 4 runs (the run file has no model of its own)" in result.output
    assert_png(tmp_path / "run.png", (10, 4.2))
    for name, extra in (("bkg2d.fits", []), ("bkg3d.fits", ["--3d"])):
        result = runner.invoke(
            app, ["--db", db_url, "background", "300", "--config", str(config_file), "-o", str(tmp_path / name), *extra]
        )
        assert result.exit_code == 0, result.output
        figure_path = tmp_path / name.replace(".fits", ".png")
        result = runner.invoke(app, ["plot", "model", str(tmp_path / name), "-o", str(figure_path)])
        assert result.exit_code == 0, result.output
        assert figure_path.exists()
    # A file is drawn as it is: options of a run's build are refused, not ignored.
    result = runner.invoke(app, ["plot", "model", str(tmp_path / "bkg2d.fits"), "--3d", "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 2
    assert result.output.strip() == (
        "Error: --3d applies to an OBS_ID: a background file is drawn as it is (2D: rate curves, 3D: FoV images)"
    )
    assert not (tmp_path / "x.png").exists()
    assert_png(tmp_path / "bkg2d.png", (10, 4.2))
    from gammapy.irf import Background3D

    background = Background3D.read(tmp_path / "bkg3d.fits", hdu="BACKGROUND")
    figure = plot_model_3d(background, title="3D", path=tmp_path / "again.png")
    texts = [text.get_text() for axes in figure.axes for text in axes.texts]
    assert texts and all(text == f"FoV alignment: {background.fov_alignment.value}" for text in texts)
    width, height = png_size(tmp_path / "bkg3d.png")
    assert (width, height) == png_size(tmp_path / "again.png")


def test_model_command_on_a_run_in_3d(indexed, sim, tmp_path, db_url):
    """plot model OBS_ID --3d draws the run's 3D background as FoV images, as the file of `background --3d`."""
    config_file = write_config(tmp_path / "config.yaml", sim)
    arguments = ["plot", "model", "300", "--config", str(config_file), "--3d", "-o", str(tmp_path / "a.png")]
    result = runner.invoke(app, ["--db", db_url, *arguments])
    assert result.exit_code == 0, result.output
    assert "run 300: model from 4 runs as FoV images" in result.output
    catalogue, config = indexed
    builder = BackgroundBuilder(catalogue, config, three_d=True)
    figure, built, has_reference = plot_run_model(builder, 300, tmp_path / "b.png")
    assert built.assembled.geometry.is_3d and not has_reference
    assert {axes.get_xlabel() for axes in figure.axes if axes.get_visible() and axes.get_title()} == {"FoV lon (deg)"}
    texts = [text.get_text() for axes in figure.axes for text in axes.texts]
    assert texts and set(texts) == {"FoV alignment: RADEC"}
    assert png_size(tmp_path / "a.png") == png_size(tmp_path / "b.png")


def test_significance_of_a_known_source_and_of_empty_sky(indexed):
    """Li & Ma per pixel: the simulated source stands out; outside the exclusions the distribution is N(0, 1)."""
    catalogue, config = indexed
    maps = run_significance_maps(BackgroundBuilder(catalogue, config), SOURCE_RUN, correlation_radius_deg=0.1)
    mean, width = maps.distribution_fit()
    assert abs(mean) < 0.2 and abs(width - 1) < 0.15, (mean, width)
    assert abs(maps.norm - 1) < 0.1
    column, row = (
        int(np.ravel(index)[0])
        for index in maps.geom.coord_to_idx(SkyCoord(SOURCE.ra_deg * u.deg, SOURCE.dec_deg * u.deg))
    )
    assert maps.significance[row, column] > 8, maps.significance[row, column]
    assert np.nanargmax(maps.significance) in np.ravel_multi_index(
        np.mgrid[row - 3 : row + 4, column - 3 : column + 4].reshape(2, -1), maps.significance.shape
    )
    assert not maps.usable[row, column]  # the source is in an exclusion region


def test_li_ma_known_background_limit():
    """Li & Ma eq. 17 with alpha -> 0: signed, 0 at n = mu, -sqrt(2 mu) for n = 0, NaN without background."""
    values = li_ma_known_background([100, 140, 60, 0, 5], [100.0, 100.0, 100.0, 8.0, 0.0])
    assert values[0] == 0
    assert values[1] == pytest.approx(np.sqrt(2 * (140 * np.log(1.4) - 40)))
    assert values[2] < 0 and values[3] == pytest.approx(-4.0)
    assert np.isnan(values[4])


def test_significance_command(indexed, sim, tmp_path, db_url):
    config_file = write_config(tmp_path / "config.yaml", sim)
    result = runner.invoke(
        app,
        [
            "--db",
            db_url,
            "plot",
            "significance",
            str(SOURCE_RUN),
            "--config",
            str(config_file),
            "-o",
            str(tmp_path / "significance.png"),
            "--radius",
            "0.1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"run {SOURCE_RUN}: significance outside exclusions: mean" in result.output
    assert_png(tmp_path / "significance.png", (15, 4.0))


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["model", "300", "-o", "x.jpg"], "cannot tell the figure format of x.jpg: name it .png, .pdf or .svg"),
        (["model", "missing.fits", "-o", "x.png"], "background file missing.fits does not exist"),
        (["model", "300", "-o", "x.png"], "plot model OBS_ID needs --config"),
        (["validation", "missing.csv", "-o", "x.png"], "validation table missing.csv does not exist"),
        (
            ["significance", "300", "--config", "c.yaml", "-o", "x.png", "--e-min", "5", "--e-max", "1"],
            "--e-min must be below --e-max",
        ),
    ],
)
def test_plot_errors_are_one_line(tmp_path, monkeypatch, arguments, message):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["--db", str(tmp_path / "db.sqlite"), "plot", *arguments])
    assert result.exit_code == 2
    assert result.output.count("Error:") == 1 and message in result.output
    assert "Traceback" not in result.output


def test_a_cut_off_or_folder_background_file_is_named_as_such(tmp_path):
    """plot model FILE: a truncated FITS or gzip file is said to be one, not a file without a background HDU."""
    import gzip

    from gammapy.irf import Background2D
    from gammapy.maps import MapAxis

    energy = MapAxis.from_energy_bounds(0.1, 100, 4, unit="TeV", name="energy")
    offset = MapAxis.from_bounds(0, 2.5, 5, unit="deg", name="offset")
    whole = tmp_path / "whole.fits"
    Background2D(axes=[energy, offset], data=np.ones((4, 5)), unit="s-1 MeV-1 sr-1").write(whole)
    content = whole.read_bytes()
    (tmp_path / "cut.fits").write_bytes(content[:5000])  # inside the BACKGROUND HDU's header
    (tmp_path / "cut.fits.gz").write_bytes(gzip.compress(content)[:300])
    (tmp_path / "folder.fits").mkdir()
    expected = {
        "cut.fits": "cannot read {path}: truncated or damaged: 5,000 bytes, not whole 2880-byte FITS blocks",
        "cut.fits.gz": "cannot read {path}: damaged or truncated gzip data (Compressed file ended before the "
        "end-of-stream marker was reached)",
        "folder.fits": "{path} is a folder: give a background FITS file (as `bkgdb background -o` writes)",
    }
    for name, message in expected.items():
        path = tmp_path / name
        result = runner.invoke(app, ["plot", "model", str(path), "-o", str(tmp_path / "x.png")])
        assert result.exit_code == 2, name
        assert result.output.strip() == "Error: " + message.format(path=path), name
    assert not (tmp_path / "x.png").exists()
    result = runner.invoke(app, ["plot", "model", str(whole), "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 0, result.output
    assert_png(tmp_path / "x.png", (10, 4.2))


def test_validation_table_that_is_not_one(tmp_path):
    table = tmp_path / "other.csv"
    table.write_text("a,b\n1,2\n")
    result = runner.invoke(app, ["plot", "validation", str(table), "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 2
    assert "is not a bkgdb validation table: no column obs_id, zenith_deg, norm, norm_error" in result.output


def test_validation_table_neither_csv_nor_json_says_what_plot_validation_reads(tmp_path):
    figure = tmp_path / "earlier.png"
    figure.write_bytes(b"\x89PNG\r\n\x1a\n")
    result = runner.invoke(app, ["plot", "validation", str(figure), "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"Error: cannot tell the format of {figure}: give the .csv or .json table that "
        "`bkgdb validate -o FILE.csv|.json` writes"
    ]


def test_cli_import_stays_light():
    """`bkgdb --help` imports neither matplotlib nor gammapy."""
    code = (
        "import sys, bkgdb.cli.main; heavy = [m for m in ('matplotlib', 'gammapy') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hess_crab_model_beside_the_hess_model(catalogue, hess_dr1, tmp_path, monkeypatch):
    """Crab run 23523 with configs/hess-dr1.yaml: 9 runs, drawn beside H.E.S.S.'s own bkg_3d (averaged over azimuth)."""
    from pathlib import Path

    from bkgdb.plotting import plot_run_model, plot_run_selection

    monkeypatch.setenv("GAMMAPY_DATA", str(hess_dr1.parent))
    config = load_config(Path(__file__).parents[1] / "configs" / "hess-dr1.yaml")
    catalogue.index(hess_dr1, config=config, jobs=2)
    builder = BackgroundBuilder(catalogue, config)
    figure, built, has_reference = plot_run_model(builder, 23523, tmp_path / "crab.png")
    assert has_reference and len(built.selection.obs_ids) == 9
    assert_png(tmp_path / "crab.png", (10, 4.2))
    # Solid (bkgdb) and dashed (bkg_3d) curves in both panels.
    for axes in figure.axes[:2]:
        styles = {line.get_linestyle() for line in axes.get_lines()}
        assert {"-", "--"} <= styles
    from gammapy.data import DataStore

    hess_model = DataStore.from_dir(hess_dr1).obs(23523).bkg
    curves = model_curves(built)
    # The dashed curves are the same quantity: H.E.S.S.'s rate over bkgdb's, 1-10 TeV and offsets < 2 deg,
    # is 1.21 (10-90 %: 1.10-1.37), as the Crab FoV norms say (test_background: 1.12 with bkgdb's, 0.94
    # with H.E.S.S.'s model); a unit slip (MeV/TeV, sr/deg2) would be a factor 1e3 or more off.
    use = np.ix_((curves.energy_centres > 1) & (curves.energy_centres < 10), curves.offset_centres < 2)
    reference = reference_rate(hess_model, curves.energy_centres, curves.offset_centres)
    ratio = float(np.median(reference[use] / curves.rate[use]))
    assert 0.8 < ratio < 1.4, ratio
    picture_figure = plot_run_selection(builder, 23523, tmp_path / "crab-selection.png")
    assert_png(tmp_path / "crab-selection.png", (11, 5))
    assert "9 of 104 candidates selected" in picture_figure._suptitle.get_text()


def test_save_figure_refuses_unknown_suffix(tmp_path):
    from bkgdb.plotting.style import new_figure

    with pytest.raises(BkgdbError, match="cannot tell the figure format of .*x.gif"):
        save_figure(new_figure(2, 2), tmp_path / "x.gif")
    assert not (tmp_path / "x.gif").exists()
