"""``--where`` conditions: ``zenith<30``, ``object=Crab Nebula``, ``MUONEFF>=0.8``.

A condition is parsed into a SQLAlchemy expression on the runs table; the user's text only ever
becomes a bound parameter, never SQL. A name is a typed catalogue column (by its own name, its
obs-index name or a short alias), otherwise a column of the obs-index kept in ``Run.extra``.
"""

import re
from dataclasses import dataclass
from datetime import date

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import FunctionElement

from .errors import ConditionError
from .models import Run

__all__ = [
    "Condition", "parse_condition", "COLUMN_ALIASES", "SELECTABLE_COLUMNS", "typed_column",
    "condition_expression", "conditions_expression",
]

OPERATORS = {
    "<=": lambda column, value: column <= value,
    ">=": lambda column, value: column >= value,
    "!=": lambda column, value: column != value,
    "==": lambda column, value: column == value,
    "=": lambda column, value: column == value,
    "<": lambda column, value: column < value,
    ">": lambda column, value: column > value,
}
# "~": case-insensitive substring match on text columns.
CONDITION_PATTERN = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_\-]*)\s*(<=|>=|!=|==|=|<|>|~)\s*(.*?)\s*$")

#: Other names accepted for typed columns (case-insensitive): obs-index names and short forms.
COLUMN_ALIASES = {
    "obs_id": "obs_id",
    "ra": "ra_deg", "ra_pnt": "ra_deg",
    "dec": "dec_deg", "dec_pnt": "dec_deg",
    "glon": "glon_deg", "glon_pnt": "glon_deg",
    "glat": "glat_deg", "glat_pnt": "glat_deg",
    "alt": "alt_deg", "alt_pnt": "alt_deg", "elevation": "alt_deg",
    "zenith": "zenith_deg", "zen": "zenith_deg", "zen_pnt": "zenith_deg",
    "az": "az_deg", "azimuth": "az_deg", "az_pnt": "az_deg",
    "date": "date_obs",
    "ontime": "ontime_s", "livetime": "livetime_s",
    "deadtime": "deadtime_fraction",
    "n_tels": "n_tels", "tellist": "tellist",
    "object": "object_name", "target": "object_name",
    "nsblevel": "nsb_level", "nsb": "nsb_level",
    "muoneff": "muon_eff",
    "event_count": "event_count", "events": "event_count",
}
SELECTABLE_COLUMNS = [
    "obs_id", "ra_deg", "dec_deg", "glon_deg", "glat_deg", "alt_deg", "zenith_deg", "az_deg",
    "tstart_mjd", "tstop_mjd", "date_obs", "ontime_s", "livetime_s", "deadtime_fraction", "n_tels",
    "tellist", "object_name", "nsb_level", "muon_eff", "event_count", "file_path", "file_size_bytes",
    "file_sha256", "status", "error",
]


@dataclass(frozen=True)
class Condition:
    """One parsed condition: ``name op value``."""

    name: str
    op: str
    value: str


def parse_condition(text):
    """Parse ``NAME OP VALUE`` with OP one of ``< <= > >= = == != ~``.

    Raises
    ------
    ConditionError
        The text is not of that form.
    """
    match = CONDITION_PATTERN.match(text)
    if not match or match.group(3) == "":
        raise ConditionError(
            f"cannot parse condition {text!r}: expected NAME OP VALUE with OP one of "
            "< <= > >= = != ~ (e.g. 'zenith<30', 'object=Crab Nebula')"
        )
    value = match.group(3)
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    return Condition(match.group(1), match.group(2), value)


class json_number(FunctionElement):
    """The number stored under a key of a JSON column, or NULL where it holds something else.

    A plain cast fails on PostgreSQL as soon as one run holds text under that key; a CASE on the
    value's JSON type keeps a numeric comparison to the runs where it means something.
    """

    type = sa.Float()
    inherit_cache = True
    name = "json_number"


@compiles(json_number, "postgresql")
def _json_number_postgresql(element, compiler, **kw):
    column, key = list(element.clauses)
    is_number = sa.func.jsonb_typeof(column.op("->")(key)) == "number"
    value = sa.cast(column.op("->>")(key), sa.Float)
    return compiler.process(sa.case((is_number, value), else_=sa.null()), **kw)


@compiles(json_number)
def _json_number_sqlite(element, compiler, **kw):
    column, key = list(element.clauses)
    path = sa.literal('$."') + key + sa.literal('"')
    is_number = sa.func.json_type(column, path).in_(["integer", "real"])
    return compiler.process(sa.case((is_number, sa.func.json_extract(column, path)), else_=sa.null()), **kw)


def typed_column(name):
    """The typed `Run` column a user-facing name refers to, or None."""
    key = name.lower()
    key = COLUMN_ALIASES.get(key, key)
    return getattr(Run, key) if key in SELECTABLE_COLUMNS else None


def _convert(condition, python_type):
    try:
        if python_type is date:
            return date.fromisoformat(condition.value)
        if python_type is int:
            number = float(condition.value)
            return int(number) if number.is_integer() else number
        if python_type is float:
            return float(condition.value)
    except ValueError:
        kind = "a date (YYYY-MM-DD)" if python_type is date else "a number"
        raise ConditionError(f"{condition.name} needs {kind}, got {condition.value!r}") from None
    return condition.value


def condition_expression(condition, extra_keys=()):
    """A SQLAlchemy boolean expression on `Run` for one condition.

    Parameters
    ----------
    condition : `Condition` or str
        The condition.
    extra_keys : iterable of str
        The obs-index column names kept in ``Run.extra`` in this catalogue; a name that is neither
        a typed column nor one of these is an error naming the known columns.
    """
    if isinstance(condition, str):
        condition = parse_condition(condition)
    column = typed_column(condition.name)
    if column is not None:
        python_type = column.type.python_type
        if condition.op == "~":
            if python_type is not str:
                raise ConditionError(f"'~' (contains) needs a text column, {condition.name} is not one")
            return column.icontains(condition.value, autoescape=True)
        return OPERATORS[condition.op](column, _convert(condition, python_type))

    keys = {key.lower(): key for key in extra_keys}
    key = keys.get(condition.name.lower())
    if key is None:
        known = sorted(set(SELECTABLE_COLUMNS) | set(extra_keys))
        raise ConditionError(f"unknown column {condition.name!r}; known columns: {', '.join(known)}")
    element = Run.extra[key]
    if condition.op == "~":
        return element.as_string().icontains(condition.value, autoescape=True)
    try:
        value = float(condition.value)
    except ValueError:
        return OPERATORS[condition.op](element.as_string(), condition.value)
    return OPERATORS[condition.op](json_number(Run.extra, sa.literal(key)), value)


def conditions_expression(conditions, extra_keys=()):
    """All conditions joined with AND (true when there are none)."""
    return sa.and_(sa.true(), *[condition_expression(c, extra_keys) for c in conditions])
