"""Choosing the runs that build a target run's background.

Every criterion is an SQL condition on the catalogue, relative to the target run; ranges are
computed in Python so the database only compares indexed columns (no trigonometry in SQL).
Runs qualify only if they have a piece for the binning and exclusion setting in use, and never
when they are empty (no ontime, no events in range), flagged bad (`bkgdb.store.flags`), a second copy
of a run held by several datastores, or a copy of the target itself.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from itertools import compress
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from bkgdb.errors import BkgdbError, NoRunsSelected, TooLittleStatistics
from bkgdb.store.conditions import conditions_expression
from bkgdb.store.database import driver_rows
from bkgdb.store.funnel_counts import funnel_counts, indexed_funnel_counts
from bkgdb.store.integrity import integrity_key, integrity_steps, is_ok
from bkgdb.store.models import Datastore, PieceRow, Run
from bkgdb.store.pieces import PIECE_COLUMN_NAMES, PIECE_COLUMNS
from bkgdb.store.ranking import (
    AIRMASS_STEP,
    airmass,
    airmass_then_time,
    kl_ranking,
    known_or_zero,
    row_column,
)

__all__ = ["RunSelector", "Selection", "zenith_range", "azimuth_condition", "describe_funnel", "KL_POOL_FACTOR"]

log = logging.getLogger(__name__)

#: With KL_DIV and time_request, KL ranks the runs nearest in airmass holding this many times the
#: requested ontime (`RunSelector.nearest_candidates`).
KL_POOL_FACTOR = 2.0
#: How the airmass window is named in the funnel (the first criterion when there is one).
AIRMASS_CRITERION = "airmass within"
#: How the instrument criterion is named in the funnel, followed by the instrument: "same instrument (HESS)".
INSTRUMENT_CRITERION = "same instrument"
#: What to do about runs catalogued before bkgdb read their instrument.
REINDEX_ADVICE = "run `bkgdb index` on their datastores to read them again"
#: Airmass shells holding more candidates than this are not read one by one (their ids would be
#: too many to bind in one query).
SHELL_ROWS_MAX = 20000


#: What is read of each candidate: its run (ids, OBS_ID, what the ranking orders by) and the id of its
#: piece of the setting (from the candidates' join; the build reads the pieces by it).
CANDIDATE_COLUMNS = (
    Run.id,
    Run.obs_id,
    Run.datastore_id,
    Run.zenith_deg,
    Run.tstart_mjd,
    Run.ontime_s,
    PieceRow.id.label("piece_id"),
)
CANDIDATE_COLUMN_NAMES = tuple(column.name for column in CANDIDATE_COLUMNS)


def zenith_range(zenith_deg: float, el_diff: float) -> tuple[float, float]:
    """Zenith angles (deg) whose airmass lies within ``el_diff`` of the target's."""
    target = airmass(zenith_deg)
    low = max(1.0, target - el_diff)
    high = target + el_diff
    return float(np.degrees(np.arccos(1.0 / low))), float(np.degrees(np.arccos(1.0 / high)))


def azimuth_condition(column: Any, azimuth_deg: float, az_diff: float) -> Any:
    """Azimuths within ``az_diff`` deg of the target's, on the circle (355 and 5 are 10 apart)."""
    if az_diff >= 180:
        return sa.true()
    low, high = azimuth_deg - az_diff, azimuth_deg + az_diff
    if low < 0:
        return sa.or_(column > low + 360.0, column < high)
    if high > 360:
        return sa.or_(column > low, column < high - 360.0)
    return sa.and_(column > low, column < high)


def describe_funnel(funnel: list) -> str:
    """'104 candidates; airmass within 0.15 removed 91 (13 left); ...' for a list of (name, left)."""
    (name, first), steps = funnel[0], funnel[1:]
    parts = [f"{first} {name}"]
    previous = first
    for name, left in steps:
        parts.append(f"{name} removed {previous - left} ({left} left)")
        previous = left
    return "; ".join(parts)


@dataclass
class Selection:
    """The runs chosen for one target and how they were chosen."""

    target_obs_id: int
    run_ids: list
    obs_ids: list
    ontime_s: float
    #: (criterion, candidates left after it), in the order applied.
    funnel: list = field(default_factory=list)
    ranking: str = "none"
    requested_s: float | None = None
    #: Datastore id of each selected run.
    datastore_ids: list = field(default_factory=list)
    #: Id of each selected run's piece of the binning and exclusion setting: what the build sums.
    piece_ids: list = field(default_factory=list)
    #: The selected runs' pieces (`~bkgdb.store.pieces.PIECE_COLUMNS` by name) when they were read with
    #: the candidates (``RunSelector.run(..., with_pieces=True)``), else None.
    pieces: dict | None = field(default=None, repr=False, compare=False)
    #: Datastore path of each selected run, filled when the pieces are loaded.
    datastores: list = field(default_factory=list)
    #: Warnings about the selection (too little statistics, requested ontime not reached).
    warnings: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "target_obs_id": self.target_obs_id,
            "obs_ids": self.obs_ids,
            "ontime_s": self.ontime_s,
            "funnel": self.funnel,
            "ranking": self.ranking,
            "requested_s": self.requested_s,
            "warnings": self.warnings,
        }


class RunSelector:
    """Selects runs similar to a target run, in SQL over the catalogue.

    Parameters
    ----------
    settings : `~bkgdb.config.SelectionSettings`
        The ``background_selection`` criteria.
    from_run : bool, optional
        Use the target's own piece only. Default is False.
    search_datastore : str, optional
        Only runs of this datastore are candidates. Default is all.
    """

    def __init__(self, settings: Any, from_run: bool = False, search_datastore: str | None = None) -> None:
        self.settings = settings
        self.from_run = from_run
        self.search_datastore = search_datastore
        #: Statements and conditions kept for the next targets: the integrity funnel's
        #: (`~bkgdb.store.funnel_counts.indexed_funnel_counts`), the candidates' query (`candidates`)
        #: and the integrity conditions (`~bkgdb.store.integrity.integrity_steps`), each by its key.
        self._statements: dict = {}
        self._bases: dict = {}
        self._integrity: dict = {}
        self._search_id: int | None = None
        #: Ok runs catalogued by an older bkgdb, so without an instrument, by search datastore id
        #: (`instrument_warnings`): counted once per selector.
        self._unread: dict[int | None, int] = {}
        #: The instruments the runs name, per search datastore id (`known_instruments`).
        self._instruments: dict[int | None, list[str]] = {}

    def criteria(self, target: Run, extra_keys: Sequence[str] = ()) -> list[tuple[str, Any]]:
        """(name, SQL condition) pairs for a target `~bkgdb.store.models.Run`."""
        s = self.settings
        criteria = []
        if s.el_diff is not None and target.zenith_deg is not None:
            low, high = zenith_range(target.zenith_deg, s.el_diff)
            criteria.append(
                (f"{AIRMASS_CRITERION} {s.el_diff:g}", sa.and_(Run.zenith_deg >= low, Run.zenith_deg <= high))
            )
        # Second, so that the airmass window stays the range the selection scans (`nearest_candidates`).
        # Runs without an instrument fail it: whether they are of the target's is unknown.
        if s.same_instrument and target.instrument is not None:
            criteria.append((f"{INSTRUMENT_CRITERION} ({target.instrument})", Run.instrument == target.instrument))
        if s.az_diff is not None and target.az_deg is not None:
            criteria.append(
                (f"azimuth within {s.az_diff:g} deg", azimuth_condition(Run.az_deg, target.az_deg, s.az_diff))
            )
        if s.nsb_diff is not None and target.nsb_level is not None:
            criteria.append(
                (
                    f"NSB within {s.nsb_diff:g}",
                    sa.and_(
                        Run.nsb_level > target.nsb_level - s.nsb_diff, Run.nsb_level < target.nsb_level + s.nsb_diff
                    ),
                )
            )
        if s.time_max is not None and target.tstart_mjd is not None:
            criteria.append(
                (
                    f"within {s.time_max:g} days",
                    sa.and_(
                        Run.tstart_mjd > target.tstart_mjd - s.time_max, Run.tstart_mjd < target.tstart_mjd + s.time_max
                    ),
                )
            )
        if s.same_szn:
            start, end = self.season_of(target)
            criteria.append((f"season {start} to {end}", Run.date_obs.between(start, end)))
        if s.n_tels is not None:
            criteria.append((f"at least {s.n_tels} telescopes", Run.n_tels >= s.n_tels))
        if s.el_min is not None:
            criteria.append((f"elevation >= {s.el_min:g}", Run.alt_deg >= s.el_min))
        if s.el_max is not None:
            criteria.append((f"elevation <= {s.el_max:g}", Run.alt_deg <= s.el_max))
        if s.gal_lat_min:
            criteria.append(
                (f"|b| > {s.gal_lat_min:g} deg", sa.or_(Run.glat_deg > s.gal_lat_min, Run.glat_deg < -s.gal_lat_min))
            )
        for condition in s.where:
            criteria.append((condition, conditions_expression([condition], extra_keys)))
        return criteria

    def instrument_warnings(self, session: Session, target: Run, funnel: list, search_id: int | None) -> list[str]:
        """What ``same_instrument`` could not do: runs without an instrument.

        A target whose event files name none (no ``TELESCOP``) has every instrument's runs as
        candidates: said when other runs name one (`known_instruments`). Runs catalogued by an
        older bkgdb (an older ``checks_version``; a row without one was not written by an index)
        have no instrument until an index reads them again: as a target, every instrument's runs
        are its candidates; as candidates, a target of a known instrument leaves them out. They are
        counted (on ``ix_runs_instrument``) only when the criterion removed candidates of
        this ``funnel``, once per selector.
        """
        from bkgdb.makers.run import INSTRUMENT_CHECKS_VERSION

        if not self.settings.same_instrument:
            return []
        if target.instrument is None:
            if target.checks_version is None:
                return []  # not catalogued by an index
            # Without the OBS_ID: printed once for all such targets.
            if target.checks_version < INSTRUMENT_CHECKS_VERSION:
                return [
                    "targets catalogued by an older bkgdb have no instrument, so runs of every instrument "
                    f"are their candidates; {REINDEX_ADVICE}"
                ]
            known = self.known_instruments(session, search_id)
            if not known:
                return []  # no run names one: nothing tells instruments apart
            return [
                "targets whose event files name no instrument (no TELESCOP) take runs of every instrument as "
                f"candidates, here of {', '.join(known)}; keep them to one with io.search_datastore or a "
                f"where condition (e.g. instrument={known[0]})"
            ]
        removed = [
            before - left
            for (_, before), (name, left) in itertools.pairwise(funnel)
            if name.startswith(INSTRUMENT_CRITERION)
        ]
        if not any(removed):
            return []
        if search_id not in self._unread:
            query = sa.select(sa.func.count(Run.id)).where(
                Run.instrument.is_(None), is_ok(), Run.checks_version < INSTRUMENT_CHECKS_VERSION
            )
            if search_id is not None:
                query = query.where(Run.datastore_id == search_id)
            self._unread[search_id] = session.scalar(query) or 0
        unread = self._unread[search_id]
        if not unread:
            return []
        return [
            f"{unread} run{'s' if unread != 1 else ''} catalogued by an older bkgdb "
            f"{'have' if unread != 1 else 'has'} no instrument and cannot pass '{INSTRUMENT_CRITERION}'; "
            + REINDEX_ADVICE
        ]

    def known_instruments(self, session: Session, search_id: int | None) -> list[str]:
        """The instruments the ok runs (of the search datastore, if any) name, sorted; read once per selector."""
        if search_id not in self._instruments:
            query = sa.select(Run.instrument).where(Run.instrument.is_not(None), is_ok()).distinct()
            if search_id is not None:
                query = query.where(Run.datastore_id == search_id)
            self._instruments[search_id] = sorted(session.scalars(query))
        return self._instruments[search_id]

    def season_of(self, target: Run) -> tuple[date, date]:
        """The configured season (start, end) holding the target's observation date."""
        day = target.date_obs
        if day is None:
            raise BkgdbError(f"run {target.obs_id} has no observation date: same_szn cannot place it in a season")
        for start, end in self.settings.seasons:
            if date.fromisoformat(start) <= day <= date.fromisoformat(end):
                return date.fromisoformat(start), date.fromisoformat(end)
        raise BkgdbError(f"run {target.obs_id} ({day}) is in none of the configured seasons")

    def run(
        self,
        session: Session,
        target: Run,
        binning_id: int,
        exclusion_id: int,
        extra_keys: Sequence[str] = (),
        with_pieces: bool = False,
    ) -> Selection:
        """Select the runs for ``target``.

        Candidates are the ok runs with a piece (of ``io.search_datastore`` if set), other than
        the target; empty runs, runs flagged bad and duplicate copies are removed, then the
        criteria apply. The funnel records what each step left.

        With ``with_pieces``, when every candidate is chosen (no ``time_request``), their pieces
        are read with them, in the same statement, into ``Selection.pieces``: a build then needs no
        second read.

        Returns
        -------
        selection : `Selection`

        Raises
        ------
        NoRunsSelected
            Nothing passed; the message lists the candidates left after each criterion.
        TooLittleStatistics
            Fewer runs or hours than ``min_runs`` / ``min_ontime`` with ``min_statistics: error``.
        """
        if self.from_run:
            own_piece = session.scalar(
                sa.select(PieceRow.id).where(
                    PieceRow.run_id == target.id,
                    PieceRow.binning_id == binning_id,
                    PieceRow.exclusion_id == exclusion_id,
                )
            )
            if own_piece is None:
                raise NoRunsSelected(
                    f"from_run: run {target.obs_id} has no piece for this binning and exclusion "
                    "setting; index its datastore with --config first"
                )
            return Selection(
                target.obs_id,
                [target.id],
                [target.obs_id],
                target.ontime_s or 0.0,
                [("from_run", 1)],
                ranking="from_run",
                datastore_ids=[target.datastore_id],
                piece_ids=[own_piece],
            )

        base, search_id = self.candidates(session, target, binning_id, exclusion_id)
        integrity, (empty_ids, bad_ids, repeated_ids, parameters) = self.integrity_steps(
            session, target, binning_id, exclusion_id, search_id
        )
        criteria = self.criteria(target, extra_keys)
        steps = integrity + criteria
        if any(values is None for values in (empty_ids, bad_ids, repeated_ids)):
            counts = funnel_counts(session, base, [condition for _, condition in steps], parameters)
        else:
            counts = indexed_funnel_counts(
                session,
                base,
                target,
                binning_id,
                exclusion_id,
                search_id,
                [condition for _, condition in integrity],
                [condition for _, condition in criteria],
                empty_ids,
                list(bad_ids) + list(repeated_ids) + [target.obs_id],
                # Its integrity query is made once per setting and shape of the lists.
                memo=self._statements,
                key=integrity_key(binning_id, exclusion_id, search_id, empty_ids, bad_ids, repeated_ids),
                parameters=parameters,
            )
        funnel = [("candidate runs with pieces", counts[0])]
        for number, (name, _) in enumerate(steps):
            left = counts[number + 1]
            if number >= len(integrity) or left != funnel[-1][1]:
                funnel.append((name, left))
        warnings = self.instrument_warnings(session, target, funnel, search_id)
        if funnel[-1][1] == 0:
            raise NoRunsSelected(
                f"no runs selected for run {target.obs_id}: {describe_funnel(funnel)}"
                + "".join(f"; {message}" for message in warnings)
            )
        query = base.where(*[condition for _, condition in steps])
        # The same without the airmass window (the first criterion, when there is one), for the
        # airmass shells, which lie inside it: `nearest_candidates`.
        in_window = bool(criteria) and criteria[0][0].startswith(AIRMASS_CRITERION)
        around = base.where(*[condition for _, condition in integrity + criteria[1:]]) if in_window else None

        requested = None if self.settings.time_request is None else self.settings.time_request * 3600.0
        with_pieces = with_pieces and requested is None
        fields = CANDIDATE_COLUMN_NAMES + (PIECE_COLUMN_NAMES[1:] if with_pieces else ())
        rows, query = self.nearest_candidates(session, query, target, requested, around, with_pieces, parameters)
        ranking, rows = self.rank(session, target, rows, binning_id, exclusion_id, query, fields, parameters)
        # The ontime before each run, summed in order as one float after the other (cumsum is sequential):
        # runs are taken while it is short of the request.
        columns = dict(zip(fields, zip(*rows, strict=True), strict=True)) if rows else dict.fromkeys(fields, ())
        held = np.cumsum(np.concatenate([[0.0], known_or_zero(columns["ontime_s"])]))
        n_chosen = len(rows)
        if requested is not None:
            reached = np.flatnonzero(held[:-1] >= requested)
            n_chosen = int(reached[0]) if reached.size else len(rows)
        ontime = float(held[n_chosen])
        if requested is not None and ontime < requested:
            warnings.append(
                f"run {target.obs_id}: {ontime / 3600:.1f} h of the {requested / 3600:g} h requested are available"
            )
        shortfall = self.statistics_shortfall(n_chosen, ontime)
        if shortfall:
            message = (
                f"run {target.obs_id}: the background rests on {n_chosen} "
                f"run{'s' if n_chosen != 1 else ''} ({ontime / 3600:.2f} h ontime), {shortfall}"
            )
            if self.settings.min_statistics == "error":
                raise TooLittleStatistics(f"{message} ({describe_funnel(funnel)})")
            warnings.append(message)
        for message in warnings:
            log.warning("%s", message)
        return Selection(
            target.obs_id,
            list(columns["id"][:n_chosen]),
            list(columns["obs_id"][:n_chosen]),
            ontime,
            funnel,
            ranking=ranking,
            requested_s=requested,
            warnings=warnings,
            datastore_ids=list(columns["datastore_id"][:n_chosen]),
            piece_ids=list(columns["piece_id"][:n_chosen]),
            pieces={name: columns[name] for name in PIECE_COLUMN_NAMES} if with_pieces else None,
        )

    def nearest_candidates(
        self,
        session: Session,
        query: Any,
        target: Run,
        requested: float | None,
        around: Any = None,
        with_pieces: bool = False,
        parameters: dict | None = None,
    ) -> tuple[list, Any]:
        """The candidates that can be chosen (driver rows of `CANDIDATE_COLUMNS`), read in airmass shells
        around the target, and their query.

        Runs are ranked by airmass step first (`rank`), so with ``time_request`` only the runs in
        the nearest steps holding the requested ontime can be chosen: shells of 1, 4, 16, ...
        steps are read (index range scans) until they hold it, instead of the whole airmass
        window. The result is the same as ranking every candidate. With ``KL_DIV`` the shells must
        hold `KL_POOL_FACTOR` times the requested ontime: the KL ranking orders that pool.

        ``around`` is ``query`` without the airmass window: a shell is read with its own zenith range
        (within the window's) as the only one, since SQLite scans the first range a query puts on an
        indexed column, not the narrowest (at 100,000 runs a shell then took 6 ms instead of 0.6).
        With ``with_pieces`` (and no ``requested``) the rows also hold `~bkgdb.store.pieces.PIECE_COLUMNS`.
        The queries run with ``parameters`` (`integrity_steps`).
        """
        columns: tuple[Any, ...] = CANDIDATE_COLUMNS
        with_pieces = with_pieces and requested is None  # rows of one layout, whatever the shells hold
        s = self.settings
        if requested is not None and s.el_diff is not None and target.zenith_deg is not None:
            wanted = requested * (KL_POOL_FACTOR if s.KL_DIV else 1.0)
            target_airmass = airmass(target.zenith_deg)
            window_low, window_high = zenith_range(target.zenith_deg, s.el_diff)
            steps = 1
            while steps * AIRMASS_STEP < s.el_diff:
                # A hair wider than the steps, so that no run of them is missed by rounding; within the window.
                low, high = zenith_range(target.zenith_deg, steps * AIRMASS_STEP + 1e-9)
                within = (Run.zenith_deg >= max(low, window_low), Run.zenith_deg <= min(high, window_high))
                shell = (query if around is None else around).where(*within)
                rows = driver_rows(session, shell.with_only_columns(*columns), parameters)
                zenith = np.array(row_column(rows, "zenith_deg", CANDIDATE_COLUMN_NAMES), dtype=np.float64)
                inside = np.floor(np.abs(airmass(zenith) - target_airmass) / AIRMASS_STEP) < steps
                rows = list(compress(rows, inside.tolist()))
                if len(rows) > SHELL_ROWS_MAX:  # as many as the whole window: read it with its query
                    break
                if sum(known_or_zero(row_column(rows, "ontime_s", CANDIDATE_COLUMN_NAMES)).tolist()) >= wanted:
                    if s.KL_DIV:  # the pool: the nearest runs (airmass, then time) holding ``wanted``
                        rows = airmass_then_time(target, rows, CANDIDATE_COLUMN_NAMES)
                        held = np.cumsum(known_or_zero(row_column(rows, "ontime_s", CANDIDATE_COLUMN_NAMES)))
                        rows = rows[: int(np.searchsorted(held, wanted)) + 1]
                    return rows, None
                steps *= 4
        if with_pieces:
            columns += PIECE_COLUMNS[1:]  # the piece id is a candidate column
        return driver_rows(session, query.with_only_columns(*columns), parameters), query

    def statistics_shortfall(self, n_runs: int, ontime_s: float) -> str:
        """'below min_runs 3 and min_ontime 2 h' when the selection rests on too little, else ''."""
        s = self.settings
        short = []
        if s.min_runs is not None and n_runs < s.min_runs:
            short.append(f"min_runs {s.min_runs}")
        if s.min_ontime is not None and ontime_s < s.min_ontime * 3600.0:
            short.append(f"min_ontime {s.min_ontime:g} h")
        return f"below {' and '.join(short)}" if short else ""

    def search_datastore_id(self, session: Session) -> int:
        """Id of the ``io.search_datastore``; fails with the indexed datastores when it is not one of them.

        Looked up once per selector: a datastore's row keeps its id (datastores are never deleted).
        """
        if self._search_id is not None:
            return self._search_id
        found = session.scalar(sa.select(Datastore.id).where(Datastore.at(self.search_datastore)))
        if found is not None:
            self._search_id = found
            return found
        from pathlib import Path

        assert self.search_datastore is not None  # only asked for when one is configured
        indexed = session.scalars(sa.select(Datastore.path).order_by(Datastore.path)).all()
        raise BkgdbError(
            f"io.search_datastore {Path(self.search_datastore).expanduser().resolve()} is not in the "
            f"catalogue; indexed datastores: {', '.join(indexed) or 'none'}"
        )

    def candidates(self, session: Session, target: Run, binning_id: int, exclusion_id: int) -> tuple[Any, int | None]:
        """The query of candidate run ids (ok, with a piece of the setting, not the target) and the
        id of the search datastore (None: every datastore).

        The target's id is the parameter ``target_id``, without a value: the query is made once per
        setting and runs with the target's (`integrity_steps`' parameters).
        """
        search_id = self.search_datastore_id(session) if self.search_datastore else None
        key = (binning_id, exclusion_id, search_id)
        base = self._bases.get(key)
        if base is None:
            # The setting's pieces are tested as ``binning_id + 0 = ?``: looked up per run (by the
            # (run, binning, exclusion) key), never scanned as a whole, even where SQLite has no statistics.
            base = (
                sa.select(Run.id)
                .join(PieceRow, PieceRow.run_id == Run.id)
                .where(
                    (PieceRow.binning_id + 0) == binning_id,
                    (PieceRow.exclusion_id + 0) == exclusion_id,
                    is_ok(),
                    Run.id != sa.bindparam("target_id", type_=Run.id.type),
                )
            )
            if search_id is not None:
                base = base.where(Run.datastore_id == search_id)
            self._bases[key] = base
        return base, search_id

    def rank(
        self,
        session: Session,
        target: Run,
        rows: list,
        binning_id: int,
        exclusion_id: int,
        candidates: Any,
        fields: Sequence[str] = CANDIDATE_COLUMN_NAMES,
        parameters: dict | None = None,
    ) -> tuple[str, list]:
        """Order candidates (tuples of ``fields``), most similar first: by KL divergence, or by airmass
        then time.

        KL ranking reads only the candidates' counts and exposure (with the target's, in one query
        joined to the selection, or by the rows' ids when ``candidates`` is None) and scores them
        all at once (`kl_divergences`).
        """
        if not rows:
            return ("kl_divergence" if self.settings.KL_DIV else "airmass_then_time"), []
        if self.settings.KL_DIV:
            return "kl_divergence", kl_ranking(
                session, target, rows, binning_id, exclusion_id, candidates, fields, parameters
            )
        return "airmass_then_time", airmass_then_time(target, rows, fields)

    def integrity_steps(
        self, session: Session, target: Run, binning_id: int, exclusion_id: int, search_id: int | None = None
    ) -> tuple[list, tuple]:
        """The integrity steps of `~bkgdb.store.integrity.integrity_steps` (empty, flagged bad, copies)."""
        return integrity_steps(session, target, binning_id, exclusion_id, search_id, memo=self._integrity)
