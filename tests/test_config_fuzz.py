"""Hostile input cannot crash bkgdb: random configs and random ``--where`` conditions.

Whatever a config file holds, `load_config` returns a config whose numbers are usable or raises a
one-line `ConfigError` (warnings: `ConfigWarning` only). Whatever a condition says, it becomes an
expression or a `ConditionError`, and ``bkgdb runs -w`` prints rows or one ``Error:`` line (exit
code 2) on SQLite and PostgreSQL, never a traceback.
"""

import math
import string
import warnings
from datetime import date

import numpy as np
import pytest
import sqlalchemy as sa
import yaml
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects import postgresql, sqlite
from typer.testing import CliRunner

from bkgdb.cli.main import app
from bkgdb.config import (
    MAX_BINS_PER_3D_PIECE,
    MAX_BINS_PER_PIECE,
    MAX_ENERGY_BINS,
    MAX_FOV_BINS,
    MAX_OFFSET_BINS,
    Binning,
    BkgdbConfig,
    ConfigWarning,
    ExclusionSettings,
    FovBinning,
    IOSettings,
    SelectionSettings,
    load_config,
)
from bkgdb.errors import ConditionError, ConfigError
from bkgdb.store.conditions import conditions_expression, parse_condition

SECTION_KEYS = {
    # 2D and 3D keys together: mixed entries must be refused, not crash.
    "binning": tuple(dict.fromkeys(Binning.KEYS + FovBinning.KEYS)),
    "exclusion": ExclusionSettings.KEYS,
    "background_selection": SelectionSettings.KEYS,
    "io": IOSettings.KEYS,
    "config": ("njobs",),
}
NO_CATALOGUES = {"gammacat": "none", "hawc": "none", "star_cat": "none"}

# Values of every YAML type, with the ones that broke things before: non-finite and huge numbers,
# odd text, dates, nesting.
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(),
    st.sampled_from([0, -1, 1, 2**31, 2**63, 10**400, 1e308, -1e308, 1e-320, math.inf, -math.inf, math.nan]),
)
texts = st.one_of(
    st.text(max_size=20),
    st.sampled_from(
        [
            "none",
            "",
            ".inf",
            "nan",
            "1e999",
            "-1",
            "0x10",
            "12 deg",
            "$GAMMAPY_DATA/x",
            "$NO_SUCH_VARIABLE/cat.fits",
            "~/x",
            "a\x00b",
            "/" * 5000,
            "x" * 300,
            "PKS 2155-304",
            "gauss",
            "geometric",
            "zenith<30",
            "zenith<<3",
            "ALTAZ",
            "radec",
        ]
    ),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts, st.dates(), st.datetimes())
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.one_of(texts, st.integers()), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def sections(draw, name):
    """A section with known keys (random values) and, sometimes, unknown keys."""
    keys = draw(st.lists(st.sampled_from(SECTION_KEYS[name]), max_size=5, unique=True))
    section = {key: draw(values) for key in keys}
    if name == "exclusion" and draw(st.booleans()):
        section.update(NO_CATALOGUES)  # get past the catalogue checks to the other keys
    if draw(st.integers(0, 4)) == 0:
        section[draw(texts)] = draw(values)
    return section


@st.composite
def documents(draw):
    """A config document: known sections (or junk in their place) and sometimes foreign ones."""
    names = draw(st.lists(st.sampled_from(sorted(SECTION_KEYS) + ["run_selection", "junk"]), max_size=5, unique=True))
    document = {}
    for name in names:
        document[name] = draw(st.one_of(sections(name), values)) if name in SECTION_KEYS else draw(values)
    if draw(st.booleans()):
        document.setdefault("exclusion", dict(NO_CATALOGUES))
    return document


yaml_tokens = st.sampled_from(
    [
        "binning:",
        "exclusion:",
        "config:",
        "background_selection:",
        "io:",
        "  e_bins: ",
        "  e_max: ",
        "  njobs: ",
        "  off_bins: ",
        "  source_radii: ",
        "  exclude_source_name: ",
        "  where: ",
        "  seasons: ",
        "  - ",
        "- ",
        "{",
        "}",
        "[",
        "]",
        ",",
        ": ",
        "&a ",
        "*a",
        "<<: *a",
        "!!python/object:os.system ",
        "!!binary ",
        "? ",
        "'",
        '"',
        "#",
        "\t",
        ".inf",
        ".nan",
        "-.inf",
        "1e999",
        "0o17",
        "0x1F",
        "~",
        "null",
        "yes",
        "2024-02-30",
        "9" * 40,
        "\x00",
        "\ufeff",
        "---",
        "...",
        "%YAML 1.1",
        "|",
        ">",
        "\n",
        "\n  ",
        "\n    ",
    ]
)
yaml_texts = st.one_of(
    st.lists(yaml_tokens, max_size=40).map("".join),
    st.text(max_size=200),
    st.binary(max_size=100),
)


def load_without_crash(path):
    """`load_config`, asserting that only ConfigError and ConfigWarning come out; the config or None."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            config = load_config(path)
        except ConfigError as error:
            message = str(error)
            assert message and "\n" not in message and "Traceback" not in message
            event("refused: " + message.split(":")[0][:40])
            config = None
    # A ResourceWarning here comes from the garbage collector finalising another test's objects.
    assert [w.category for w in caught if not issubclass(w.category, (ConfigWarning, ResourceWarning))] == []
    if config is not None:
        event("loaded")
        assert_usable(config)
    return config


def assert_usable(config):
    """A loaded config holds no junk: finite binnings within the limits, hashable settings."""
    assert isinstance(config, BkgdbConfig) and config.binnings
    for binning in config.binnings:
        assert binning.e_bins <= MAX_ENERGY_BINS
        if binning.is_3d:
            assert binning.fov_bins <= MAX_FOV_BINS and binning.fov_bins != binning.e_bins
            assert np.prod(binning.shape) <= MAX_BINS_PER_3D_PIECE
        else:
            assert binning.off_bins <= MAX_OFFSET_BINS and binning.e_bins * binning.off_bins <= MAX_BINS_PER_PIECE
        geometry = binning.geometry
        assert geometry.shape == binning.shape
        for edges in [geometry.energy_edges, *geometry.spatial_edges]:
            assert np.all(np.isfinite(edges)) and np.all(np.diff(edges) > 0)
        assert np.all(geometry.solid_angle_sr > 0)
    assert config.binning is not None or config.binning_3d is not None
    if config.io.three_d:
        assert config.binning_3d is not None
    exclusion = config.exclusion
    for key in ("search_radius", "source_radius", "star_radius", "extended_factor", "star_mag_max"):
        assert math.isfinite(getattr(exclusion, key))
    for region in exclusion.exclude_regions:
        assert all(math.isfinite(number) for number in (region.ra, region.dec, region.radius))
    assert len(exclusion.hash) == 64
    for key, value in config.selection.params.items():
        if isinstance(value, float):
            assert math.isfinite(value), key
    assert 1 <= config.njobs


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "config.yaml"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=documents())
def test_random_documents_load_or_fail_with_a_config_error(config_file, document):
    try:
        text = yaml.safe_dump(document, allow_unicode=True)
    except (yaml.YAMLError, ValueError):
        assume(False)
    config_file.write_text(text, encoding="utf-8")
    load_without_crash(config_file)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=yaml_texts)
@example(text="binning:\n  e_bins: 10\n  e_bins: 20\n")
@example(text="binning: {e_max: .inf}\n")
@example(text="- a\n- b\n")
@example(text="")
@example(text=b"\xff\xfe\x00")
@example(text="config: {njobs: " + "9" * 5000 + "}\n")
@example(text="exclusion: " + "[" * 2000 + "]" * 2000 + "\n")
def test_random_yaml_text_loads_or_fails_with_a_config_error(config_file, text):
    if isinstance(text, bytes):
        config_file.write_bytes(text)
    else:
        config_file.write_text(text, encoding="utf-8")
    load_without_crash(config_file)


@settings(max_examples=200, deadline=None)
@given(binning=st.dictionaries(st.sampled_from(SECTION_KEYS["binning"]), st.one_of(numbers, texts), max_size=6))
@example(binning={"off_max": 1e-320})  # found by this test: solid angles of 0
@example(binning={"fov_max": 1e-300, "fov_bins": 10})
def test_random_binnings_are_usable_or_refused(binning):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            config = BkgdbConfig.from_dict({"binning": binning, "exclusion": NO_CATALOGUES})
        except ConfigError as error:
            assert "\n" not in str(error)
            return
    assert_usable(config)


@settings(max_examples=200, deadline=None)
@given(
    e_bins=st.integers(-2, 1100),
    fov_bins=st.integers(-2, 1100),
    fov_max=st.one_of(st.floats(-1, 100), st.sampled_from([0, 90, 90.0001, math.inf, math.nan])),
    alignment=st.sampled_from(["ALTAZ", "RADEC", "altaz", "radec", "AltAz", "galactic", ""]),
)
def test_random_fov_binnings_are_unambiguous_or_refused(e_bins, fov_bins, fov_max, alignment):
    """Every accepted 3D binning fits the limits and has axis lengths gammapy can tell apart."""
    values = {"e_bins": e_bins, "fov_bins": fov_bins, "fov_max": fov_max, "fov_alignment": alignment}
    try:
        binning = BkgdbConfig.from_dict({"binning": values, "exclusion": NO_CATALOGUES}).binning_3d
    except ConfigError as error:
        assert "\n" not in str(error)
        return
    event("loaded")
    assert binning.shape != binning.shape[::-1]
    assert binning.fov_alignment in ("ALTAZ", "RADEC") and 0 < binning.fov_max <= 90
    assert np.prod(binning.shape) <= MAX_BINS_PER_3D_PIECE


# --where conditions: known names of every column type and random ones, every operator and
# random ones, values that are numbers, dates or hostile text.
condition_names = st.one_of(
    st.sampled_from(
        [
            "zenith",
            "obs_id",
            "n_tels",
            "event_count",
            "date",
            "object",
            "tellist",
            "DEADC",
            "TELLIST",
            "ZEN_PNT",
            "nosuch",
            "file_size_bytes",
            "tstart_mjd",
            "status",
        ]
    ),
    st.text(alphabet=string.ascii_letters + "_-0123456789", min_size=1, max_size=12),
    st.text(max_size=6),
)
operators = st.one_of(st.sampled_from(["<", "<=", ">", ">=", "=", "==", "!=", "~"]), st.text(max_size=3))
condition_values = st.one_of(
    numbers.map(str),
    st.dates(min_value=date(1, 1, 1), max_value=date(9999, 12, 31)).map(date.isoformat),
    st.sampled_from(
        [
            "0001-01-01",
            "9999-12-31",
            "99999-01-01",
            "2004-02-30",
            "inf",
            "-Infinity",
            "NaN",
            "1" + "0" * 5000,
            "1e400",
            "-1e400",
            "9" * 25,
            "1.5",
            "'quoted'",
            '"',
            "%",
            "_",
            "a\x00b",
            "\x00",
            "\ud800",
            "x\udcff",
            "Crab Nebula",
            "1,2,3,4",
            "SIM FIELD' OR '1'='1",
            "é中𝔘\u200b",
            "1_000",
            "٣",
            "x" * 2000,
        ]
    ),
    st.text(max_size=20),
)
conditions = st.one_of(
    st.tuples(condition_names, operators, condition_values).map("".join),
    st.text(max_size=40),
)
EXTRA_KEYS = ("DEADC", "TELLIST", "OBJECT", "DATE-OBS")


def check_condition(text):
    """A condition is parsed and compiled for both databases, or refused with a one-line error."""
    try:
        expression = conditions_expression([parse_condition(text)], EXTRA_KEYS)
    except ConditionError as error:
        assert "\n" not in str(error)
        return False
    for dialect in (sqlite.dialect(), postgresql.dialect()):
        sa.select(sa.literal(1)).where(expression).compile(dialect=dialect)
    return True


@settings(max_examples=500, deadline=None)
@given(text=conditions)
@example(text="zenith<inf")
@example(text="obs_id<1e30")
@example(text="object=a\x00b")
@example(text="object~\ud800")
def test_random_conditions_parse_or_fail_with_a_condition_error(text):
    check_condition(text)


@pytest.mark.parametrize(
    "text, message",
    [
        ("zenith<inf", "zenith needs a finite number"),
        ("zenith<1e400", "zenith needs a finite number"),
        ("DEADC>nan1", None),  # not a number: compared as text
        ("object=a\x00b", "NUL character"),
        ("object~x\ud800", "not valid unicode"),
        ("obs_id=" + "1" + "0" * 5000, "obs_id needs a finite number"),
    ],
)
def test_hostile_conditions_are_refused_or_text(text, message):
    if message is None:
        assert check_condition(text)
    else:
        with pytest.raises(ConditionError, match=message):
            conditions_expression([text], EXTRA_KEYS)


@pytest.fixture
def indexed_db(db_url, simulated_datastore):
    result = CliRunner().invoke(app, ["--db", db_url, "index", str(simulated_datastore)])
    assert result.exit_code == 0, result.output
    return db_url


def run_where(db_url, condition):
    return CliRunner().invoke(app, ["--db", db_url, "runs", "-w", condition, "-f", "csv", "-c", "obs_id"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=conditions)
@example(text="obs_id<1e30")
@example(text="obs_id=99999999999999999999")
@example(text="n_tels>3e9")
@example(text="event_count<-1e19")
@example(text="object=a\x00b")
@example(text="TELLIST=\x00")
@example(text="object~\udcff")
@example(text="date>9999-12-31")
@example(text="date<0001-01-01")
@example(text="DEADC>1e400")
@example(text="DEADC<inf")
def test_runs_where_gives_rows_or_one_error_line(indexed_db, text):
    result = run_where(indexed_db, text)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in (0, 2), result.output
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error:"), result.output


def test_out_of_range_integers_compare_as_numbers(indexed_db):
    """An integer beyond the column's type cannot be bound; it is compared as a float instead."""
    every = run_where(indexed_db, "obs_id<1e30").output.split()
    assert every[1:] == ["1000", "1001", "1002", "1003", "1004"]
    assert run_where(indexed_db, "obs_id>=99999999999999999999").output.split()[1:] == []
    assert run_where(indexed_db, "n_tels<3000000000").output.split()[1:] == every[1:]
