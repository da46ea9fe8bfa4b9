from pathlib import Path

import numpy as np
import pytest

from bkgdb.config import (
    Binning,
    BkgdbConfig,
    ConfigWarning,
    ExclusionSettings,
    FovBinning,
    binning_from_params,
    load_config,
)
from bkgdb.errors import ConfigError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
NO_CATALOGUES = "exclusion: {gammacat: none, hawc: none, star_cat: none}\n"


def write(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_binning_edges_and_hash():
    binning = Binning(e_min=0.1, e_max=100, e_bins=3, off_min=0, off_max=2, off_bins=4)
    assert np.allclose(binning.energy_edges, [0.1, 1, 10, 100])
    assert np.allclose(binning.offset_edges, [0, 0.5, 1, 1.5, 2])
    assert binning.hash == Binning(e_min=0.1, e_max=100.0, e_bins=3, off_min=0.0, off_max=2.0, off_bins=4).hash
    assert binning.hash != Binning(e_min=0.1, e_max=100, e_bins=4, off_min=0, off_max=2, off_bins=4).hash


def test_exclusion_hash_follows_catalogue_content(tmp_path):
    stars = tmp_path / "stars.dat"
    stars.write_text("#_RAJ2000\t_DEJ2000\tHIP\tVmag\tB-V\n1.0\t2.0\t3\t4.0\t0.0\n")
    settings = ExclusionSettings(gammacat=None, hawc=None, star_cat=str(stars))
    before = settings.hash
    stars.write_text("#_RAJ2000\t_DEJ2000\tHIP\tVmag\tB-V\n1.0\t2.5\t3\t4.0\t0.0\n")
    assert ExclusionSettings(gammacat=None, hawc=None, star_cat=str(stars)).hash != before


def test_gammapy_tools_layout_loads(tmp_path):
    config = load_config(
        write(
            tmp_path,
            """
io: {search_datastore: /data, from_run: false}
binning: {e_min: 0.2, e_max: 50, e_bins: 12, off_min: 0, off_max: 2.0, off_bins: 8}
config: {njobs: 3}
exclusion:
  star_cat: none
  gammacat: none
  hawc: none
  exclude_regions:
    - ["287.10", "6.39", "0.5"]
    - {ra: 10, dec: -70, radius: 0.3, name: mine}
run_selection: {source_name: Crab}
spectrum: {e_min: 0.2}
""",
        )
    )
    assert config.binnings == [Binning(0.2, 50, 12, 0, 2.0, 8)]
    assert config.njobs == 3
    regions = config.exclusion.exclude_regions
    assert (regions[0].ra, regions[0].dec, regions[0].radius) == (287.1, 6.39, 0.5)
    assert regions[1].name == "mine"


def test_several_binnings(tmp_path):
    config = load_config(
        write(
            tmp_path,
            """
binning:
  - {e_bins: 10}
  - {e_bins: 20, off_max: 2.0}
exclusion: {gammacat: none, hawc: none, star_cat: none}
""",
        )
    )
    assert [b.e_bins for b in config.binnings] == [10, 20]


def test_unknown_keys_warn_with_their_name(tmp_path):
    with pytest.warns(ConfigWarning, match="binning.e_bin"):
        load_config(write(tmp_path, "binning: {e_bin: 10}\n" + NO_CATALOGUES))
    with pytest.warns(ConfigWarning, match="'bakground_selection'"):
        load_config(write(tmp_path, "bakground_selection: {}\n" + NO_CATALOGUES))


@pytest.mark.parametrize(
    "text, message",
    [
        ("binning: {e_bins: ten}", "binning.e_bins must be a whole number"),
        ("binning: {e_min: 10, e_max: 1}", "e_min < e_max"),
        ("binning: {off_bins: 2.5}", "off_bins must be a whole number"),
        ("exclusion: {exposure_method: magic}", "exposure_method must be one of geometric, counts-ratio"),
        ("exclusion: {gammacat: /no/such/gammacat.fits}", "gammacat: catalogue file not found"),
        ("exclusion: {exclude_regions: [[1, 2]]}", r"exclude_regions\[0\] must be"),
        ("exclusion: {exclude_regions: [[1, 95, 1]]}", "-90 <= dec <= 90"),
        ("binning: [1, 2", "not valid YAML"),
        # Non-finite and absurd numbers, in every section.
        ("binning: {e_max: .inf}", r"binning.e_max must be a finite number, got inf"),
        ("binning: {e_min: .nan}", "binning.e_min must be a finite number"),
        ("binning: {e_max: 1.0e999}", "binning.e_max must be a finite number"),
        ("binning: {e_bins: 100000000}", "binning.e_bins must be <= 1000"),
        ("binning: {off_bins: 5000}", "binning.off_bins must be <= 1000"),
        ("binning: {e_bins: 1000, off_bins: 1000}", "1000 x 1000 = 1000000 bins; at most 100000 per piece"),
        ("binning: {e_bins: 99999999999999999999999}", "binning.e_bins must be at most 2147483647 in size"),
        ("binning: {e_min: 1.0e-9}", r"binning needs 0.0001 <= e_min < e_max <= 10000 \(TeV\), got e_min=1e-09"),
        ("binning: []", "binning is an empty list"),
        ("exclusion: {source_radius: .inf}", "exclusion.source_radius must be a finite number"),
        ("exclusion: {search_radius: 1000}", "exclusion.search_radius must be <= 180"),
        ("exclusion: {star_mag_max: .nan}", "exclusion.star_mag_max must be a finite number"),
        ("exclusion: {exclude_regions: [[.inf, 0, 1]]}", r"exclude_regions\[0\].ra must be a finite number"),
        ("exclusion: {exclude_regions: [[0, 0, .nan]]}", r"exclude_regions\[0\].radius must be a finite number"),
        ("exclusion: {exclude_regions: 5}", "exclusion.exclude_regions must be a list, got int 5"),
        ("exclusion: {source_radii: {PKS 2155-304: .inf}}", r"exclusion.source_radii.'PKS 2155-304' must be a finite"),
        ("exclusion: {source_radii: [PKS 2155-304]}", "exclusion.source_radii must be a mapping"),
        ("exclusion: {source_radii: {a: 1, A: 2}}", "names 'a' and 'A': the same source twice"),
        ("exclusion: {exclude_source_name: [[a, b, c]]}", r"exclude_source_name\[0\] must be a name, \[name, radius\]"),
        ("exclusion: {exclude_source_name: [[a, -1]]}", r"exclude_source_name\[0\].radius must be > 0"),
        ("background_selection: {time_request: .inf}", "background_selection.time_request must be a finite number"),
        ("background_selection: {time_request: 0}", "background_selection.time_request must be > 0, got 0"),
        ("background_selection: {time_request: -2}", "background_selection.time_request must be > 0, got -2"),
        ("background_selection: {el_diff: .nan}", "background_selection.el_diff must be a finite number"),
        ("background_selection: {smooth_sigma: .inf}", "background_selection.smooth_sigma must be a finite number"),
        ("background_selection: {n_tels: 1.0e300}", "background_selection.n_tels must be at most 2147483647"),
        ("background_selection: {seasons: 2024}", "background_selection.seasons must be a list"),
        ("background_selection: {where: [zenith]}", r"where\[0\]: cannot parse condition 'zenith'"),
        ("background_selection: {where: [{a: 1}]}", r"where\[0\] must be a condition"),
        ("background_selection: {where: ['zenith<30', 'zenith<inf']}", r"where\[1\]: zenith needs a finite number"),
        ("config: {njobs: 0}", "config.njobs must be a number of worker processes from 1 to 256, got 0"),
        ("config: {njobs: -1}", "config.njobs must be a number of worker processes from 1 to 256, got -1"),
        ("config: {njobs: .inf}", "config.njobs must be a finite number"),
        # Sections and files that are not mappings.
        ("exclusion: [a, b]", "exclusion must be a mapping of keys to values, got list"),
        ("exclusion: [[gammacat, none]]", "exclusion must be a mapping"),
        ("config: 3", "config must be a mapping of keys to values, got int 3"),
        ("io: {out_dir: [a]}", "io.out_dir must be a folder path"),
        # 3D binnings.
        ("binning: {fov_max: .inf}", "binning.fov_max must be a finite number, got inf"),
        ("binning: {fov_max: 0}", r"binning.fov_max must be > 0, got 0"),
        ("binning: {fov_max: 100}", "binning.fov_max must be <= 90.0, got 100"),
        ("binning: {fov_bins: ten}", "binning.fov_bins must be a whole number, got 'ten'"),
        ("binning: {fov_bins: 2000}", "binning.fov_bins must be <= 1000, got 2000"),
        ("binning: {fov_bins: 0}", "binning.fov_bins must be >= 1, got 0"),
        (
            "binning: {e_bins: 200, fov_bins: 101}",
            r"binning has 200 x 101 x 101 = 2040200 bins; at most 2000000 per 3D "
            r"piece \(16 MB of counts per run\)",
        ),
        ("binning: {fov_alignment: galactic}", "binning.fov_alignment must be one of ALTAZ, RADEC, got 'galactic'"),
        ("binning: {fov_alignment: [ALTAZ]}", r"binning.fov_alignment must be one of ALTAZ, RADEC, got \['ALTAZ'\]"),
        (
            "binning: {e_bins: 20, fov_bins: 20}",
            "binning.fov_bins equals e_bins \\(20\\): gammapy cannot tell the energy "
            "axis from fov_lat .* logs 'Ambiguous axes order in Background fits "
            "files!' on every read; use fov_bins 21 or e_bins 21",
        ),
        ("binning: [{e_bins: 10}, {e_bins: 10, fov_bins: 10}]", r"binning\[1\].fov_bins equals e_bins \(10\)"),
        ("binning: [{e_bins: 10}, {e_min: 10, e_max: 1}]", r"binning\[1\] needs 0.0001 <= e_min < e_max"),
        (
            "binning: {off_max: 2, off_bins: 4, fov_max: 2}",
            r"binning mixes 2D keys \(off_max, off_bins\) with 3D keys "
            r"\(fov_max\): a binning is energy x offset",
        ),
        (
            "binning: [{e_bins: 10}, {fov_bins: 12, off_min: 0}]",
            r"binning\[1\] mixes 2D keys \(off_min\) with 3D keys "
            r"\(fov_bins\)",
        ),
        ("io: {3d_bkg: yes please}", "io.3d_bkg must be true or false, got 'yes please'"),
        (
            "io: {3d_bkg: true}\nbinning: {e_bins: 20, off_bins: 600}",
            r"io.3d_bkg: cannot derive a 3D binning from the 2D one "
            r"\(binning.fov_bins must be at most 1000, got 1200\): "
            r"add a 3D binning \(fov_max, fov_bins\) to `binning:`",
        ),
        (
            "background_selection: {normalisation: {method: control-ring, offset_min: 3.6, offset_max: 4}}\n"
            "binning: {fov_max: 2.5}",
            "no pixel centre of the 3D binning .* lies in the control ring 3.6-4 deg",
        ),
        ("- binning\n- exclusion", "must hold a mapping of sections .* got a list"),
        ("just an exclusion", "must hold a mapping of sections .* got a str"),
        ("\xff", None),
    ],
)
def test_invalid_values_are_one_line_errors(tmp_path, text, message):
    if "exclusion" not in text:
        text += "\nexclusion: {gammacat: none, hawc: none, star_cat: none}"
    path = write(tmp_path, text + "\n")
    if message is None:  # not UTF-8 text
        path.write_bytes(text.encode("latin-1"))
        message = "cannot read config file"
    with pytest.raises(ConfigError, match=message) as error:
        load_config(path)
    assert "\n" not in str(error.value)


def test_duplicate_keys_name_the_key_and_both_lines(tmp_path):
    path = write(tmp_path, "binning:\n  e_bins: 10\n  off_bins: 4\n  e_bins: 20\n")
    with pytest.raises(
        ConfigError,
        match=r"config.yaml:4:3: not valid YAML: duplicate key 'e_bins' "
        r"\(first given on line 2\)",
    ):
        load_config(path)


def test_yaml_syntax_errors_give_file_line_and_column(tmp_path):
    path = write(tmp_path, "binning:\n  e_bins: 10\n e_max: 3\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value).startswith(f"{path}:3:2: not valid YAML: ")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("text", ["", "\n# only a comment\n", "---\n"])
def test_empty_config_files_are_errors(tmp_path, text):
    with pytest.raises(ConfigError, match="config.yaml is empty: a config needs at least one section"):
        load_config(write(tmp_path, text))


def test_catalogue_paths_need_gammapy_data(tmp_path, monkeypatch):
    monkeypatch.delenv("GAMMAPY_DATA", raising=False)
    with pytest.raises(ConfigError) as error:
        load_config(CONFIGS / "hess-dr1.yaml")
    message = str(error.value)
    assert message.startswith(
        "exclusion.gammacat: catalogue file $GAMMAPY_DATA/catalogs/gammacat/gammacat.fits.gz "
        "not found because GAMMAPY_DATA is not set: set GAMMAPY_DATA to gammapy's data folder"
    )
    assert "or give an explicit path, or none to use no such catalogue" in message
    monkeypatch.setenv("GAMMAPY_DATA", str(tmp_path))  # set, but without the catalogue: a plain "not found"
    with pytest.raises(ConfigError, match=f"exclusion.gammacat: catalogue file not found: {tmp_path}/catalogs"):
        load_config(CONFIGS / "hess-dr1.yaml")


def test_source_radii_and_named_sources_load_and_change_the_hash(tmp_path):
    from bkgdb.simulate import write_source_catalogue

    catalogue = write_source_catalogue(
        tmp_path / "cat.fits", [{"name": "PKS 2155-304", "ra_deg": 329.7, "dec_deg": -30.2}]
    )
    base = f"exclusion: {{gammacat: {catalogue}, hawc: none, star_cat: none"
    plain = load_config(write(tmp_path, base + "}\n")).exclusion
    radii = load_config(write(tmp_path, base + ", source_radii: {pks2155-304: 0.6}}\n")).exclusion
    assert radii.source_radii == (("pks2155-304", 0.6),)
    assert radii.radius_for_name("PKS 2155-304") == 0.6 and plain.radius_for_name("PKS 2155-304") is None
    named = load_config(
        write(
            tmp_path,
            base + ", exclude_source_name: [PKS 2155-304, [PKS2155-304, 0.8], {name: pks 2155-304, radius: 0.5}]}\n",
        )
    ).exclusion
    assert named.exclude_source_name == (("PKS 2155-304", None), ("PKS2155-304", 0.8), ("pks 2155-304", 0.5))
    hashes = {
        plain.hash,
        radii.hash,
        named.hash,
        load_config(write(tmp_path, base + ", source_radii: {PKS 2155-304: 0.7}}\n")).exclusion.hash,
    }
    assert len(hashes) == 4
    # Without the new keys, the parameters (and so every stored piece's hash) are as before.
    assert "source_radii" not in plain.params and "exclude_source_name" not in plain.params
    with pytest.raises(
        ConfigError,
        match=r"exclusion.source_radii: no source named 'PKS 2155-305' in gamma-cat; "
        r"did you mean 'PKS 2155-304'\?",
    ):
        load_config(write(tmp_path, base + ", source_radii: {PKS 2155-305: 0.6}}\n"))


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as raised:
        load_config(tmp_path)
    assert str(raised.value) == f"{tmp_path} is a folder: give the config's YAML file (e.g. configs/default.yaml)"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_load_without_warnings(name, recwarn, monkeypatch):
    from conftest import gammapy_data_path

    gammapy_data_path("catalogs")
    config = load_config(CONFIGS / name)
    assert config.binnings
    assert not [w for w in recwarn if issubclass(w.category, ConfigWarning)]


def test_exclusion_hash_ignores_where_the_catalogues_are(tmp_path):
    text = "#_RAJ2000\t_DEJ2000\tHIP\tVmag\tB-V\n1.0\t2.0\t3\t4.0\t0.0\n"
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "stars.dat").write_text(text)
    here = ExclusionSettings(gammacat=None, hawc=None, star_cat=str(tmp_path / "a" / "stars.dat"))
    there = ExclusionSettings(gammacat=None, hawc=None, star_cat=str(tmp_path / "b" / "stars.dat"))
    assert here.hash == there.hash
    assert here.params["star_cat"]["path"] != there.params["star_cat"]["path"]


#: The hash of the default 2D binning, as stored with every existing catalogue's pieces.
DEFAULT_BINNING_HASH = "b687e6377d812a977210bbe2055e428b310fa3ba9d0aa7ddabf88cec2dd886be"


def test_default_2d_binning_keeps_its_hash():
    binning = Binning()
    assert binning.params == {
        "e_min": 0.1,
        "e_max": 100.0,
        "e_bins": 20,
        "off_min": 0.0,
        "off_max": 2.5,
        "off_bins": 10,
    }
    assert binning.hash == DEFAULT_BINNING_HASH
    assert binning.geometry is binning.geometry  # computed once
    assert binning.hash == DEFAULT_BINNING_HASH and "geometry" not in binning.params


def test_2d_binning_geometry():
    binning = Binning(e_min=0.1, e_max=100, e_bins=3, off_min=0.5, off_max=2.5, off_bins=4)
    geometry = binning.geometry
    assert not geometry.is_3d and geometry.shape == binning.shape == (3, 4)
    assert np.allclose(geometry.energy_edges, [0.1, 1, 10, 100])
    assert np.allclose(geometry.offset_edges, [0.5, 1, 1.5, 2, 2.5])


def test_3d_binning_geometry_params_and_hash():
    binning = FovBinning(e_min=0.1, e_max=100, e_bins=3, fov_max=2, fov_bins=4, fov_alignment="radec")
    assert binning.fov_alignment == "RADEC" and binning.shape == (3, 4, 4)
    geometry = binning.geometry
    assert geometry.is_3d and geometry.alignment == "RADEC" and geometry.shape == (3, 4, 4)
    assert np.allclose(geometry.energy_edges, [0.1, 1, 10, 100])
    assert np.allclose(geometry.fov_lon_edges, [-2, -1, 0, 1, 2])
    assert np.allclose(geometry.fov_lat_edges, [-2, -1, 0, 1, 2])
    assert binning.params == {
        "kind": "3d",
        "e_min": 0.1,
        "e_max": 100.0,
        "e_bins": 3,
        "fov_max": 2.0,
        "fov_bins": 4,
        "fov_alignment": "RADEC",
    }
    same = FovBinning(e_min=0.1, e_max=100.0, e_bins=3, fov_max=2.0, fov_bins=4, fov_alignment="RADEC")
    assert binning.hash == same.hash
    altaz = FovBinning(e_min=0.1, e_max=100, e_bins=3, fov_max=2, fov_bins=4, fov_alignment="ALTAZ")
    assert len({binning.hash, altaz.hash, Binning(e_bins=3, off_max=2, off_bins=4).hash}) == 3
    for stored in (binning, altaz, Binning(e_bins=3)):
        assert binning_from_params(stored.params) == stored
        assert binning_from_params(stored.params).hash == stored.hash


def test_equal_axis_lengths_are_what_gammapy_calls_ambiguous(tmp_path, caplog):
    """The refusal of e_bins == fov_bins rests on gammapy: it logs an error reading such a cube, not ours."""
    from gammapy.irf import Background3D

    from bkgdb.geometry import PieceGeometry

    def read_back(geometry):
        path = tmp_path / f"bkg{geometry.shape[0]}.fits"
        geometry.to_irf(np.ones(geometry.shape)).write(path, overwrite=True)
        caplog.clear()
        irf = Background3D.read(path)
        return irf, [r.getMessage() for r in caplog.records if "Ambiguous axes order" in r.getMessage()]

    edges = np.linspace(-2.5, 2.5, 25)
    _, ambiguous = read_back(PieceGeometry.fov(np.geomspace(0.1, 100, 25), edges, edges))
    assert ambiguous  # 24 x 24 x 24: gammapy complains
    default = FovBinning()
    irf, ambiguous = read_back(default.geometry)
    assert not ambiguous and irf.data.shape == default.shape == (20, 24, 24)
    with pytest.raises(ConfigError, match="use fov_bins 25 or e_bins 25"):
        FovBinning(e_bins=24, fov_bins=24)


def test_2d_and_3d_binnings_in_one_config(tmp_path):
    config = load_config(
        write(
            tmp_path,
            """
binning:
  - {fov_max: 2.0, fov_bins: 16, fov_alignment: radec}
  - {e_bins: 12, off_max: 2.0, off_bins: 8}
  - {fov_bins: 24}
  - {e_bins: 10}
exclusion: {gammacat: none, hawc: none, star_cat: none}
""",
        )
    )
    assert [b.kind for b in config.binnings] == ["3d", "2d", "3d", "2d"]
    assert config.binning == Binning(e_bins=12, off_max=2.0, off_bins=8)  # the first 2D one, wherever it is
    assert config.binning_3d == FovBinning(fov_max=2.0, fov_bins=16, fov_alignment="RADEC")
    assert config.binning_for(False) is config.binning and config.binning_for(True) is config.binning_3d
    assert not config.io.three_d


def test_a_config_with_only_a_3d_binning_loads(tmp_path):
    config = load_config(
        write(
            tmp_path,
            """
binning: {fov_max: 2.5, fov_bins: 24}
exclusion: {gammacat: none, hawc: none, star_cat: none}
background_selection: {normalisation: {method: control-ring, offset_min: 2.0, offset_max: 2.5}}
""",
        )
    )
    assert config.binning is None and config.binning_3d == FovBinning()
    with pytest.raises(ConfigError, match=r"^this config has no 2D binning: add one to `binning:`$"):
        config.binning_for(False)
    # The control ring of a 3D binning: the pixels whose centre lies 2.0-2.5 deg from the FoV centre.
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    lon, lat = config.binning_3d.geometry.fov_centres
    offset = SkyCoord(lon * u.deg, lat * u.deg).separation(SkyCoord(0 * u.deg, 0 * u.deg)).deg
    assert np.allclose(config.binning_3d.geometry.spatial_offset_deg, offset)
    assert ((offset >= 2.0) & (offset < 2.5)).sum() == 164  # of 24 x 24 pixels of 0.21 deg
    assert config.exclusion.search_radius_for(config.binning_3d) == pytest.approx(2.5 * np.sqrt(2), rel=1e-3)


def test_a_2d_config_has_no_3d_binning(tmp_path):
    config = load_config(write(tmp_path, "binning: {e_bins: 10}\n" + NO_CATALOGUES))
    assert config.binning_3d is None
    with pytest.raises(ConfigError, match=r"^this config has no 3D binning: add one to `binning:`$"):
        config.binning_for(True)
    assert config.exclusion.search_radius_for(config.binning) == 2.5


@pytest.mark.parametrize("off_bins, e_bins, fov_bins", [(10, 20, 21), (8, 20, 16), (12, 20, 24)])
def test_3d_bkg_derives_a_3d_binning_from_the_2d_one(tmp_path, caplog, off_bins, e_bins, fov_bins):
    import logging

    caplog.set_level(logging.INFO, logger="bkgdb.config")
    config = load_config(
        write(
            tmp_path,
            f"""
io: {{3d_bkg: true}}
binning: {{e_min: 0.2, e_max: 50, e_bins: {e_bins}, off_max: 2.25, off_bins: {off_bins}}}
exclusion: {{gammacat: none, hawc: none, star_cat: none}}
""",
        )
    )
    assert config.io.three_d
    assert config.binning == Binning(0.2, 50, e_bins, 0, 2.25, off_bins)
    assert config.binning_3d == FovBinning(
        e_min=0.2, e_max=50, e_bins=e_bins, fov_max=2.25, fov_bins=fov_bins, fov_alignment="ALTAZ"
    )
    assert config.binnings == [config.binning, config.binning_3d]
    assert [r.levelname for r in caplog.records if "io.3d_bkg is true and no 3D binning" in r.getMessage()] == ["INFO"]


def test_3d_bkg_keeps_a_configured_3d_binning(tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="bkgdb.config")
    config = load_config(
        write(
            tmp_path,
            """
io: {3d_bkg: true, from_run: false}
binning: [{e_bins: 10}, {fov_bins: 12, fov_alignment: RADEC}]
exclusion: {gammacat: none, hawc: none, star_cat: none}
""",
        )
    )
    assert config.io.three_d and len(config.binnings) == 2
    assert config.binning_3d == FovBinning(fov_bins=12, fov_alignment="RADEC")
    assert not [r for r in caplog.records if "io.3d_bkg" in r.getMessage()]
    # Built in code rather than read: the same derivation.
    from bkgdb.config import IOSettings

    built = BkgdbConfig(binnings=[Binning()], exclusion=config.exclusion, io=IOSettings(three_d=True))
    assert built.binning_3d == FovBinning(fov_bins=21)
    with pytest.raises(ConfigError, match="a config needs at least one binning"):
        BkgdbConfig(binnings=[], exclusion=config.exclusion)


@pytest.mark.parametrize(
    "name, alignment, fov_bins",
    [("default.yaml", "ALTAZ", 24), ("hess-dr1.yaml", "RADEC", 25), ("veritas.yaml", "ALTAZ", 16)],
)
def test_shipped_configs_carry_a_3d_binning_beside_the_2d_one(name, alignment, fov_bins):
    from conftest import gammapy_data_path

    gammapy_data_path("catalogs")
    config = load_config(CONFIGS / name)
    binning = config.binning_for(True)
    assert (binning.fov_alignment, binning.fov_bins) == (alignment, fov_bins)
    assert binning.fov_max == config.binning.off_max
    assert binning.energy_edges == pytest.approx(config.binning.energy_edges)
    assert config.binnings[0] == config.binning  # the 2D binning stays the first: its pieces exist already
    assert not config.io.three_d  # 2D unless asked


def test_2d_binning_with_as_many_energies_as_offsets_warns_about_gammapy_log(tmp_path):
    path = tmp_path / "square.yaml"
    path.write_text("binning: {e_bins: 10, off_bins: 10}\n")
    with pytest.warns(ConfigWarning, match="use off_bins 11"):
        config = load_config(path)
    assert config.binning.shape == (10, 10)
