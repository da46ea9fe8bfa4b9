"""``--where`` conditions: ``zenith<30``, ``object=Crab Nebula``, ``MUONEFF>=0.8``.

A condition is parsed into a SQLAlchemy expression on the runs table; the user's text only ever
becomes a bound parameter, never SQL. A name is a typed catalogue column (by its own name, its
obs-index name or a short alias), otherwise a column of the obs-index kept in ``Run.extra``.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import FunctionElement

from bkgdb.errors import ConditionError
from bkgdb.store.models import RUN_SELECTABLE_COLUMNS, Run

if TYPE_CHECKING:
    from sqlalchemy.orm import InstrumentedAttribute
    from sqlalchemy.sql.compiler import SQLCompiler

__all__ = [
    "Condition",
    "parse_condition",
    "COLUMN_ALIASES",
    "SELECTABLE_COLUMNS",
    "typed_column",
    "condition_expression",
    "conditions_expression",
]

log = logging.getLogger(__name__)

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
    "ra": "ra_deg",
    "ra_pnt": "ra_deg",
    "dec": "dec_deg",
    "dec_pnt": "dec_deg",
    "glon": "glon_deg",
    "glon_pnt": "glon_deg",
    "glat": "glat_deg",
    "glat_pnt": "glat_deg",
    "alt": "alt_deg",
    "alt_pnt": "alt_deg",
    "elevation": "alt_deg",
    "zenith": "zenith_deg",
    "zen": "zenith_deg",
    "zen_pnt": "zenith_deg",
    "az": "az_deg",
    "azimuth": "az_deg",
    "az_pnt": "az_deg",
    "date": "date_obs",
    "ontime": "ontime_s",
    "livetime": "livetime_s",
    "deadtime": "deadtime_fraction",
    "telescop": "instrument",
    "n_tels": "n_tels",
    "tellist": "tellist",
    "object": "object_name",
    "target": "object_name",
    "nsblevel": "nsb_level",
    "nsb": "nsb_level",
    "muoneff": "muon_eff",
    "event_count": "event_count",
    "events": "event_count",
}
#: Typed columns a condition may name: the model declares them (`~bkgdb.store.models.RUN_SELECTABLE_COLUMNS`).
SELECTABLE_COLUMNS = list(RUN_SELECTABLE_COLUMNS)


#: Range of the integer column types, beyond which a number is compared as a float (the drivers
#: cannot bind such an integer, and no row can hold it).
INTEGER_RANGES = {sa.BigInteger: 2**63 - 1, sa.SmallInteger: 2**15 - 1, sa.Integer: 2**31 - 1}
#: Words that read as non-finite floats but are text values of obs-index columns.
NON_FINITE_WORD = re.compile(r"[+-]?(nan|inf|infinity)", re.IGNORECASE)


def _shown(text: object, limit: int = 60) -> str:
    """User text as quoted in an error message: on one line and shortened."""
    text = repr(text)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def _check_text(text: str) -> None:
    """Refuse text no database stores: NUL characters (PostgreSQL) and unpaired surrogates (UTF-8)."""
    if "\x00" in text:
        raise ConditionError(f"condition {_shown(text)} holds a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ConditionError(f"condition {_shown(text)} is not valid unicode text") from None


@dataclass(frozen=True)
class Condition:
    """One parsed condition: ``name op value``."""

    name: str
    op: str
    value: str


def parse_condition(text: object) -> Condition:
    """Parse ``NAME OP VALUE`` with OP one of ``< <= > >= = == != ~``.

    Raises
    ------
    ConditionError
        The text is not of that form.
    """
    if not isinstance(text, str):
        raise ConditionError(f"a condition must be text such as 'zenith<30', got {type(text).__name__}")
    _check_text(text)
    match = CONDITION_PATTERN.match(text)
    if not match or match.group(3) == "":
        raise ConditionError(
            f"cannot parse condition {_shown(text)}: expected NAME OP VALUE with OP one of "
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
def _json_number_postgresql(element: json_number, compiler: SQLCompiler, **kw: Any) -> str:
    column, key = list(element.clauses)
    is_number = sa.func.jsonb_typeof(column.op("->")(key)) == "number"
    value = sa.cast(column.op("->>")(key), sa.Float)
    return compiler.process(sa.case((is_number, value), else_=sa.null()), **kw)


@compiles(json_number)
def _json_number_sqlite(element: json_number, compiler: SQLCompiler, **kw: Any) -> str:
    column, key = list(element.clauses)
    path = sa.literal('$."') + key + sa.literal('"')
    is_number = sa.func.json_type(column, path).in_(["integer", "real"])
    return compiler.process(sa.case((is_number, sa.func.json_extract(column, path)), else_=sa.null()), **kw)


def typed_column(name: str) -> Any:
    """The typed `Run` column (an ORM attribute) a user-facing name refers to, or None."""
    key = name.lower()
    key = COLUMN_ALIASES.get(key, key)
    return getattr(Run, key) if key in SELECTABLE_COLUMNS else None


def _number(condition: Condition, integer_limit: int | None = None) -> int | float:
    """The condition's value as a finite number: an int when it is a whole number within
    ``integer_limit`` (an integer column's range), a float otherwise."""
    text = condition.value.strip()
    number: int | float | None
    try:
        number = int(text)
    except ValueError:  # not a whole number, or more digits than Python converts
        number = None
    if number is None or (integer_limit is not None and abs(number) > integer_limit):
        try:
            number = float(text)
        except ValueError:
            raise ConditionError(f"{condition.name} needs a number, got {_shown(condition.value)}") from None
        if not math.isfinite(number):
            raise ConditionError(f"{condition.name} needs a finite number, got {_shown(condition.value)}")
        if integer_limit is not None and number.is_integer() and abs(number) <= integer_limit:
            number = int(number)
    elif integer_limit is None:
        try:
            number = float(number)
        except OverflowError:  # a whole number beyond any float: as infinite as `1e999`
            raise ConditionError(f"{condition.name} needs a finite number, got {_shown(condition.value)}") from None
    return number


def _convert(condition: Condition, column: InstrumentedAttribute[Any]) -> date | int | float | str:
    python_type = column.type.python_type
    if python_type is date:
        try:
            return date.fromisoformat(condition.value)
        except ValueError:
            raise ConditionError(f"{condition.name} needs a date (YYYY-MM-DD), got {_shown(condition.value)}") from None
    if python_type is int:
        limit = next(limit for kind, limit in INTEGER_RANGES.items() if isinstance(column.type, kind))
        return _number(condition, limit)
    if python_type is float:
        return _number(condition)
    return condition.value


def condition_expression(condition: Condition | str, extra_keys: Collection[str] = ()) -> sa.ColumnElement[bool]:
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
    _check_text(condition.value)
    column = typed_column(condition.name)
    if column is not None:
        python_type = column.type.python_type
        if condition.op == "~":
            if python_type is not str:
                raise ConditionError(f"'~' (contains) needs a text column, {condition.name} is not one")
            return column.icontains(condition.value, autoescape=True)
        if column is Run.instrument:  # stored upper-case (`~bkgdb.gadf.runfacts.normalise_instrument`)
            return OPERATORS[condition.op](column, condition.value.strip().upper())
        return OPERATORS[condition.op](column, _convert(condition, column))

    keys = {key.lower(): key for key in extra_keys}
    key = keys.get(condition.name.lower())
    if key is None:
        known = sorted(set(SELECTABLE_COLUMNS) | set(extra_keys))
        raise ConditionError(f"unknown column {condition.name!r}; known columns: {', '.join(known)}")
    element = Run.extra[key]
    if condition.op == "~":
        return element.as_string().icontains(condition.value, autoescape=True)
    if NON_FINITE_WORD.fullmatch(condition.value.strip()):
        return OPERATORS[condition.op](element.as_string(), condition.value)
    try:
        value = _number(condition)
    except ConditionError as exc:
        if "finite" in str(exc):
            raise  # a number too large, such as 1e400
        return OPERATORS[condition.op](element.as_string(), condition.value)
    return OPERATORS[condition.op](json_number(Run.extra, sa.literal(key)), value)


def conditions_expression(
    conditions: Iterable[Condition | str], extra_keys: Collection[str] = ()
) -> sa.ColumnElement[bool]:
    """All conditions joined with AND (true when there are none)."""
    return sa.and_(sa.true(), *[condition_expression(c, extra_keys) for c in conditions])
