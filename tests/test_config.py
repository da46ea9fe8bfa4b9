from pathlib import Path

import numpy as np
import pytest

from bkgdb.config import Binning, ConfigWarning, ExclusionSettings, load_config
from bkgdb.errors import ConfigError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


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
    config = load_config(write(tmp_path, """
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
"""))
    assert config.binnings == [Binning(0.2, 50, 12, 0, 2.0, 8)]
    assert config.njobs == 3
    regions = config.exclusion.exclude_regions
    assert (regions[0].ra, regions[0].dec, regions[0].radius) == (287.1, 6.39, 0.5)
    assert regions[1].name == "mine"


def test_several_binnings(tmp_path):
    config = load_config(write(tmp_path, """
binning:
  - {e_bins: 10}
  - {e_bins: 20, off_max: 2.0}
exclusion: {gammacat: none, hawc: none, star_cat: none}
"""))
    assert [b.e_bins for b in config.binnings] == [10, 20]


def test_unknown_keys_warn_with_their_name(tmp_path):
    with pytest.warns(ConfigWarning, match="binning.e_bin"):
        load_config(write(tmp_path, "binning: {e_bin: 10}\nexclusion: {gammacat: none, hawc: none, star_cat: none}\n"))
    with pytest.warns(ConfigWarning, match="'bakground_selection'"):
        load_config(write(tmp_path, "bakground_selection: {}\nexclusion: {gammacat: none, hawc: none, star_cat: none}\n"))


@pytest.mark.parametrize("text, message", [
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
    ("- binning\n- exclusion", "must hold a mapping of sections .* got a list"),
    ("just an exclusion", "must hold a mapping of sections .* got a str"),
    ("\xff", None),
])
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
    with pytest.raises(ConfigError, match=r"config.yaml:4:3: not valid YAML: duplicate key 'e_bins' "
                                          r"\(first given on line 2\)"):
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
    assert message.startswith("exclusion.gammacat: catalogue file $GAMMAPY_DATA/catalogs/gammacat/gammacat.fits.gz "
                              "not found because GAMMAPY_DATA is not set: set GAMMAPY_DATA to gammapy's data folder")
    assert "or give an explicit path, or none to use no such catalogue" in message
    monkeypatch.setenv("GAMMAPY_DATA", str(tmp_path))  # set, but without the catalogue: a plain "not found"
    with pytest.raises(ConfigError, match=f"exclusion.gammacat: catalogue file not found: {tmp_path}/catalogs"):
        load_config(CONFIGS / "hess-dr1.yaml")


def test_source_radii_and_named_sources_load_and_change_the_hash(tmp_path):
    from bkgdb.simulate import write_source_catalogue

    catalogue = write_source_catalogue(tmp_path / "cat.fits", [{"name": "PKS 2155-304", "ra_deg": 329.7,
                                                                 "dec_deg": -30.2}])
    base = f"exclusion: {{gammacat: {catalogue}, hawc: none, star_cat: none"
    plain = load_config(write(tmp_path, base + "}\n")).exclusion
    radii = load_config(write(tmp_path, base + ", source_radii: {pks2155-304: 0.6}}\n")).exclusion
    assert radii.source_radii == (("pks2155-304", 0.6),)
    assert radii.radius_for_name("PKS 2155-304") == 0.6 and plain.radius_for_name("PKS 2155-304") is None
    named = load_config(write(tmp_path, base + ", exclude_source_name: [PKS 2155-304, [PKS2155-304, 0.8], "
                                               "{name: pks 2155-304, radius: 0.5}]}\n")).exclusion
    assert named.exclude_source_name == (("PKS 2155-304", None), ("PKS2155-304", 0.8), ("pks 2155-304", 0.5))
    hashes = {plain.hash, radii.hash, named.hash,
              load_config(write(tmp_path, base + ", source_radii: {PKS 2155-304: 0.7}}\n")).exclusion.hash}
    assert len(hashes) == 4
    # Without the new keys, the parameters (and so every stored piece's hash) are as before.
    assert "source_radii" not in plain.params and "exclude_source_name" not in plain.params
    with pytest.raises(ConfigError, match=r"exclusion.source_radii: no source named 'PKS 2155-305' in gamma-cat; "
                                          r"did you mean 'PKS 2155-304'\?"):
        load_config(write(tmp_path, base + ", source_radii: {PKS 2155-305: 0.6}}\n"))


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


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
