import pytest

from bkgdb.errors import ConditionError
from bkgdb.store.conditions import Condition, parse_condition


@pytest.mark.parametrize(
    "text, expected",
    [
        ("zenith<30", Condition("zenith", "<", "30")),
        ("object=Crab Nebula", Condition("object", "=", "Crab Nebula")),
        ("MUONEFF >= 0.8", Condition("MUONEFF", ">=", "0.8")),
        ("DATE-OBS='2004-12-04'", Condition("DATE-OBS", "=", "2004-12-04")),
        ("object~crab", Condition("object", "~", "crab")),
    ],
)
def test_parse_condition(text, expected):
    assert parse_condition(text) == expected


@pytest.mark.parametrize("text", ["zenith", "<30", "zenith<", "1abc=3", "a; DROP TABLE runs"])
def test_unparseable_conditions(text):
    with pytest.raises(ConditionError, match="cannot parse"):
        parse_condition(text)


@pytest.fixture
def indexed(catalogue, simulated_datastore):
    catalogue.index(simulated_datastore)
    return catalogue


def ids(catalogue, *conditions):
    return [run.obs_id for run in catalogue.select_runs(list(conditions))]


def test_typed_and_extra_columns(indexed):
    all_runs = indexed.select_runs()
    every = [run.obs_id for run in all_runs]
    median_zenith = sorted(run.zenith_deg for run in all_runs)[2]
    below = ids(indexed, f"zenith<{median_zenith}")
    assert below == [run.obs_id for run in all_runs if run.zenith_deg < median_zenith]
    assert len(below) == 2
    assert ids(indexed, f"ZEN_PNT<{median_zenith}") == below  # obs-index name of a typed column
    # obs-index columns without a typed column, kept in `extra`: numbers and text.
    assert ids(indexed, "DEADC>0.89", "DEADC<0.91") == every
    assert ids(indexed, "DEADC>0.95") == []
    assert ids(indexed, "TELLIST=1,2,3,4") == every
    # A number against a column holding text matches nothing (PostgreSQL must not fail on a cast).
    assert ids(indexed, "TELLIST>3") == [] and ids(indexed, "OBJECT<=0") == []
    first_night = [run.obs_id for run in all_runs if run.date_obs.isoformat() == "2004-03-03"]
    assert 0 < len(first_night) < 5
    assert ids(indexed, "date>=2004-03-03", "date<2004-03-04") == first_night
    assert ids(indexed, "object~sim") == every
    assert ids(indexed, "obs_id!=1000", "obs_id<=1002") == every[1:3]


def test_user_text_is_a_value_not_sql(indexed):
    assert ids(indexed, "object=SIM FIELD' OR '1'='1") == []
    assert ids(indexed, "object~%") == []  # LIKE wildcards are escaped
    assert len(ids(indexed)) == 5  # and nothing was dropped


@pytest.mark.parametrize(
    "condition, message",
    [
        ("nosuchcolumn=3", "unknown column 'nosuchcolumn'; known columns: .*MUONEFF|unknown column"),
        ("zenith<low", "needs a number"),
        ("date>yesterday", "needs a date"),
        ("zenith~3", "needs a text column"),
    ],
)
def test_condition_errors(indexed, condition, message):
    with pytest.raises(ConditionError, match=message):
        indexed.select_runs([condition])


@pytest.mark.parametrize(
    "condition, message",
    [
        ("zenith<inf", "zenith needs a finite number, got 'inf'"),
        ("zenith>-Infinity", "zenith needs a finite number"),
        ("ra<NaN", "ra needs a finite number"),
        ("zenith<1e400", "zenith needs a finite number, got '1e400'"),
        ("zenith<1" + "0" * 400, "zenith needs a finite number, got"),
        ("DEADC>1e400", "DEADC needs a finite number"),
        ("object=SIM\x00FIELD", "holds a NUL character"),
        ("TELLIST~\x00", "holds a NUL character"),
        ("object=\ud800", "is not valid unicode text"),
        ("date>2004-02-30", "date needs a date"),
    ],
)
def test_hostile_values_are_condition_errors_on_both_databases(indexed, condition, message):
    with pytest.raises(ConditionError, match=message):
        indexed.select_runs([condition])


def test_numbers_beyond_integer_columns_and_words_in_text_columns(indexed):
    every = ids(indexed)
    assert ids(indexed, "obs_id<1e30") == every  # beyond BIGINT: compared as a float, not bound as an integer
    assert ids(indexed, "obs_id=99999999999999999999") == []
    assert ids(indexed, "n_tels<3000000000") == every  # beyond INTEGER
    assert ids(indexed, "event_count>-1e19") == every
    assert ids(indexed, "obs_id<=1001.0") == every[:2]
    assert ids(indexed, "TELLIST=nan", "OBJECT!=inf") == []  # words, compared as text
    assert ids(indexed, "OBJECT!=inf") == every
    assert ids(indexed, "object=SIM FIELD\u200b") == []  # unicode text is a value like any other
    assert ids(indexed, "date>=0001-01-01", "date<=9999-12-31") == every
