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
])
def test_invalid_values_are_one_line_errors(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message) as error:
        load_config(write(tmp_path, text + "\n"))
    assert "\n" not in str(error.value)


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
