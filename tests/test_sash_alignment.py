"""H.E.S.S. (SASH) runs, whose every background gammapy reads as reversed RA/Dec (`bkgdb.gadf.sash`).

The archive is simulated twice from one seed, once with the EVENTS keys of H.E.S.S. exports
(``CREATOR = 'SASH FITS::EventListWriter'``, ``HDUVERS = '0.2'``) and once without: the same
events, so whatever bkgdb and gammapy predict for the one must hold for the other.

a. gammapy's rule, as `gammapy_reverses_lon` mirrors it, and the mirrored RADEC model it reads right.
b. An attached RADEC 3D model predicts the counts of a SASH run, per FoV quadrant, through gammapy.
c. An ALTAZ 3D model for a SASH run is refused, saying why and what to use instead; 2D is written.
d. validate's fit and `plot significance` evaluate bkgdb's model in its own frame on a SASH run.
"""

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from test_fov_truth import ARCHIVE, write_config
from typer.testing import CliRunner

from bkgdb.cli.main import app
from bkgdb.simulate import DatastoreSimulator, FoVBackgroundTruth
from bkgdb.simulate.compare import pulls, quadrant_counts

SASH_KEYS = {"CREATOR": "SASH FITS::EventListWriter", "HDUVERS": "0.2"}
#: A RA/Dec gradient of 20-25 % per deg (as tests/test_fov_truth.py's RADEC truth, twice its rate).
TRUTH = FoVBackgroundTruth(
    norm=6e-4, index=2.4, energy_range_tev=(0.3, 100.0), alignment="RADEC", lon_gradient=0.2, lat_gradient=-0.25
)
TARGET = 2000
BANDS = [0.5, 1.0, 3.0]
RADIUS_DEG = 2.3
REFUSED = "as RA/Dec aligned, so an ALTAZ 3D model would be misread: use a RADEC 3D binning"

runner = CliRunner()


def bkgdb(*args, exit_code=0):
    result = runner.invoke(app, [str(arg) for arg in args])
    assert result.exit_code == exit_code, result.output
    return result


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    """{"sash": path, "plain": path}: the same simulated runs with and without H.E.S.S.'s keys."""
    folder = tmp_path_factory.mktemp("sash")
    paths = {}
    for label, keys in (("sash", SASH_KEYS), ("plain", {})):
        paths[label] = folder / label
        DatastoreSimulator(
            truth=TRUTH,
            horizontal=ARCHIVE,
            ontime_s=1800.0,
            seed=8,
            first_obs_id=TARGET,
            extra_columns={key: [value] * len(ARCHIVE) for key, value in keys.items()},
        ).run(paths[label])
    # The twins differ in the keys only: what the comparisons rely on.
    name = "data/run_002000.fits.gz"
    sash, plain = (fits.getdata(paths[label] / name, "EVENTS") for label in ("sash", "plain"))
    np.testing.assert_array_equal(np.asarray(sash["ENERGY"]), np.asarray(plain["ENERGY"]))
    assert {key: fits.getheader(paths["sash"] / name, "EVENTS")[key] for key in SASH_KEYS} == SASH_KEYS
    assert fits.getheader(paths["plain"] / name, "EVENTS").get("CREATOR") != SASH_KEYS["CREATOR"]
    return paths


@pytest.fixture(scope="module")
def indexed(archives, tmp_path_factory):
    """(database URL, config) of each archive indexed with an ALTAZ 3D binning."""
    folder = tmp_path_factory.mktemp("indexed")
    config = write_config(folder / "altaz.yaml", "ALTAZ")
    found = {}
    for label, path in archives.items():
        database = f"sqlite:///{folder / label}.sqlite"
        bkgdb("--db", database, "index", path, "--config", config)
        found[label] = database, config
    return found


# ---------------------------------------------------------------------------------------------
# a. The rule and the mirrored model


@pytest.mark.parametrize(
    "header",
    [
        SASH_KEYS,
        {**SASH_KEYS, "HDUVERS": "0.3"},
        {**SASH_KEYS, "HDUVERS": 0.2},
        {"CREATOR": "SASH FITS::EventListWriter"},
        {"CREATOR": "another writer", "HDUVERS": "0.2"},
        {},
    ],
)
def test_rule_is_gammapys(header):
    """`gammapy_reverses_lon` says REVERSE_LON_RADEC exactly where gammapy's ``Observation.bkg`` does."""
    from gammapy.data import Observation
    from gammapy.data.metadata import ObservationMetaData

    from bkgdb.gadf.sash import gammapy_reverses_lon
    from bkgdb.geometry import PieceGeometry

    model = PieceGeometry.fov([1.0, 10.0], [-1.0, 0.0, 1.0], [-1.0, 1.0], "ALTAZ").to_irf(np.ones((1, 2, 1)))
    meta = ObservationMetaData()
    meta.optional = {"OBSERVER": "someone", **header}
    read_as = Observation(obs_id=1, bkg=model, meta=meta).bkg.fov_alignment.value
    assert gammapy_reverses_lon(header) == (read_as == "REVERSE_LON_RADEC"), read_as
    assert read_as in ("ALTAZ", "REVERSE_LON_RADEC")


def test_mirrored_model_reads_as_built(tmp_path):
    """A RADEC model written with ``reverse_lon`` (uneven longitude bins too) is, read and evaluated
    by gammapy as REVERSE_LON_RADEC, the model as built; `in_own_frame` gives it back; ALTAZ is refused."""
    from gammapy.irf import Background3D

    from bkgdb.gadf.hdu import background_hdu
    from bkgdb.gadf.sash import in_own_frame
    from bkgdb.geometry import PieceGeometry

    geometry = PieceGeometry.fov([0.5, 2.0, 8.0], [-2.0, -0.5, 0.3, 1.0, 2.5], [-1.5, 0.0, 1.5], "RADEC")
    rate = np.random.default_rng(1).uniform(1.0, 2.0, geometry.shape) * 1e-6
    path = tmp_path / "bkg.fits"
    fits.HDUList([fits.PrimaryHDU(), background_hdu(geometry, rate, "BKG", reverse_lon=True)]).writeto(path)
    read = Background3D.read(path, hdu="BKG")
    assert read.fov_alignment.value == "REVERSE_LON_RADEC"
    built = geometry.to_irf(rate)
    lon = [-1.9, -1.0, -0.4, 0.0, 0.6, 2.2] * u.deg
    lat = [[-1.0], [0.7]] * u.deg
    energy = 1.2 * u.TeV
    # gammapy evaluates a REVERSE_LON_RADEC model at minus the RA/Dec FoV longitude.
    as_read = read.evaluate(energy=energy, fov_lon=-lon, fov_lat=lat)
    np.testing.assert_allclose(as_read, built.evaluate(energy=energy, fov_lon=lon, fov_lat=lat), rtol=1e-12)
    own = in_own_frame(read)
    assert own.fov_alignment.value == "RADEC"
    np.testing.assert_array_equal(own.axes["fov_lon"].edges.to_value("deg"), geometry.fov_lon_edges)
    np.testing.assert_allclose(own.quantity.to_value("s-1 MeV-1 sr-1"), rate, rtol=1e-15)
    with pytest.raises(ValueError, match="only a RADEC 3D model"):
        background_hdu(PieceGeometry.fov([0.5, 8.0], [-1.0, 1.0], [-1.0, 1.0], "ALTAZ"), np.ones((1, 1, 1)), "B", True)


# ---------------------------------------------------------------------------------------------
# b. An attached RADEC model


def test_attached_radec_model_predicts_sash_counts(archives, tmp_path):
    """`attach --3d` with a RADEC binning on H.E.S.S.-style runs: gammapy reads the model as
    REVERSE_LON_RADEC and its predicted counts per FoV quadrant and band match the simulated ones
    (pulls as small as without the keys); `background --3d` writes the same model."""
    from gammapy.data import DataStore

    config = write_config(tmp_path / "radec.yaml", "RADEC")
    database = f"sqlite:///{tmp_path / 'radec.sqlite'}"
    out = tmp_path / "attached"
    bkgdb("--db", database, "attach", archives["sash"], "--out", out, "--config", config, "--3d")
    counts, npred = quadrant_counts(out, [TARGET], "RADEC", BANDS, radius_deg=RADIUS_DEG)
    found = pulls(counts, npred, model_variance=1.0 / ((len(ARCHIVE) - 1) * npred))
    assert counts.sum() > 5000
    quadrants = counts.sum(axis=1)
    assert quadrants.max() > 1.4 * quadrants.min()  # the gradient is there to be got wrong
    assert np.abs(found).max() < 4.0, found
    assert np.sum(found**2) < 2.0 * found.size + 4.0, found
    header = fits.getheader(out / "data" / "run_002000.fits.gz", "BKG")
    assert header["FOVALIGN"] == "REVERSE_LON_RADEC" and header["BKG_GEOM"] == "3D RADEC"
    assert DataStore.from_dir(out).obs(TARGET).bkg.fov_alignment.value == "REVERSE_LON_RADEC"
    output = tmp_path / "model.fits"
    bkgdb("--db", database, "background", TARGET, "--3d", "-o", output, "--config", config)
    written = fits.getdata(output, "BACKGROUND")
    attached = fits.getdata(out / "data" / "run_002000.fits.gz", "BKG")
    assert fits.getheader(output, "BACKGROUND")["FOVALIGN"] == "REVERSE_LON_RADEC"
    for column in ("DETX_LO", "DETX_HI", "BKG"):
        np.testing.assert_array_equal(written[column], attached[column])


# ---------------------------------------------------------------------------------------------
# c. ALTAZ refused, 2D written


def test_altaz_model_for_sash_runs_is_refused(archives, indexed, tmp_path):
    """`attach --3d` and `background --3d` with an ALTAZ binning refuse H.E.S.S.-style runs in one
    line saying why and to use RADEC, writing nothing; the same runs without the keys, and 2D, are written."""
    database, config = indexed["sash"]
    out = tmp_path / "attached"
    result = bkgdb("--db", database, "attach", archives["sash"], "--out", out, "--config", config, "--3d", exit_code=2)
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and REFUSED in lines[0] and "each for the same reason" in lines[0], result.output
    assert not out.exists()

    output = tmp_path / "model.fits"
    args = ("--db", database, "background", TARGET, "-o", output, "--config", config)
    result = bkgdb(*args, "--3d", exit_code=2)
    assert REFUSED in " ".join(result.output.split()), result.output
    assert not output.exists()
    bkgdb(*args, "--2d")
    assert fits.getheader(output, "BACKGROUND")["HDUCLAS4"] == "BKG_2D"

    plain_database, _ = indexed["plain"]
    bkgdb("--db", plain_database, "background", TARGET, "-o", tmp_path / "plain.fits", "--config", config, "--3d")
    assert fits.getheader(tmp_path / "plain.fits", "BACKGROUND")["FOVALIGN"] == "ALTAZ"


# ---------------------------------------------------------------------------------------------
# d. validate and plot significance


def test_validate_fit_uses_the_models_own_frame(archives, indexed):
    """validate's fit (`fit_run`) of a SASH run predicts with an ALTAZ model what it predicts for the
    same run without the keys, leaves the model's alignment as it was; so does `plot significance`."""
    from bkgdb import Catalogue
    from bkgdb.background import BackgroundBuilder
    from bkgdb.fov_fit import FitJob, fit_run
    from bkgdb.plotting.runs import run_significance_maps

    results, maps, alignments = {}, {}, {}
    for label, path in archives.items():
        database, config = indexed[label]
        with Catalogue.open(database, config=config) as catalogue:
            model = catalogue.build(TARGET, three_d=True).model
            assert model.fov_alignment.value == "ALTAZ"
            # A circle on one side of the field: a model turned in the FoV predicts other counts outside it.
            job = FitJob(TARGET, str(path), model, excluded=[(*north_of_pointing(path, 1.2), 0.8)])
            results[label] = fit_run(job)
            assert results[label].error is None, results[label].error
            alignments[label] = job.model.fov_alignment.value
            builder = BackgroundBuilder(catalogue.store, catalogue.config, three_d=True)
            maps[label] = run_significance_maps(builder, TARGET, binsz_deg=0.05)

    sash, plain = results["sash"], results["plain"]
    assert sash.counts == plain.counts
    assert sash.predicted == pytest.approx(plain.predicted, rel=1e-9)
    assert sash.norm == pytest.approx(plain.norm, rel=1e-9)
    np.testing.assert_allclose(maps["sash"].background, maps["plain"].background, rtol=1e-9, atol=1e-12)
    assert maps["sash"].norm == pytest.approx(maps["plain"].norm, rel=1e-9)
    assert alignments == {"sash": "ALTAZ", "plain": "ALTAZ"}


def north_of_pointing(path, distance_deg):
    """(RA, Dec) in deg ``distance_deg`` north of the target's pointing."""
    from astropy.table import Table

    table = Table.read(path / "obs-index.fits.gz")
    row = table[table["OBS_ID"] == TARGET][0]
    return float(row["RA_PNT"]), float(row["DEC_PNT"]) + distance_deg


@pytest.mark.parametrize("instrument", ["HESS", None, "SIM"])
def test_a_run_file_gone_since_the_index(archives, tmp_path, instrument):
    """`background --3d` for a run whose file has gone since the index: whether gammapy mirrors its
    model cannot be told. A H.E.S.S. run's is refused; a run of unknown instrument's is written as
    built with a warning; a run of another instrument's is written as built (only H.E.S.S. files are
    SASH exports)."""
    import shutil

    from astropy.table import Table

    path = tmp_path / "archive"
    shutil.copytree(archives["sash"], path)
    index = Table.read(path / "obs-index.fits.gz")
    if instrument is None:  # the header's TELESCOP too, as an instrument is read from either
        for name in sorted((path / "data").glob("*.fits.gz")):
            with fits.open(name) as hdul:
                hdus = fits.HDUList([hdu.copy() for hdu in hdul])
            hdus["EVENTS"].header.remove("TELESCOP")
            hdus.writeto(name, overwrite=True)
    else:
        index["TELESCOP"] = instrument  # the obs-index's comes first
    index.write(path / "obs-index.fits.gz", overwrite=True)
    config = write_config(tmp_path / "radec.yaml", "RADEC")
    database = f"sqlite:///{tmp_path / 'radec.sqlite'}"
    bkgdb("--db", database, "index", path, "--config", config)
    (path / "data" / "run_002000.fits.gz").rename(tmp_path / "moved.fits.gz")
    output = tmp_path / "model.fits"
    args = ("--db", database, "background", TARGET, "--3d", "-o", output, "--config", config)
    if instrument == "HESS":
        text = " ".join(bkgdb(*args, exit_code=2).output.split())
        assert text.startswith("Error: run 2000: cannot read the EVENTS header of "), text
        assert text.endswith("bkgdb cannot tell whether this run is one: restore the file, or write a 2D model"), text
        assert not output.exists()
        return
    result = bkgdb(*args)
    text = " ".join(result.output.split())
    warned = "Warning: run 2000: cannot read the EVENTS header" in text
    assert warned == (instrument is None), result.output
    if warned:
        assert "gammapy misreads if the run is a H.E.S.S. SASH export" in text, result.output
    assert fits.getheader(output, "BACKGROUND")["FOVALIGN"] == "RADEC"
