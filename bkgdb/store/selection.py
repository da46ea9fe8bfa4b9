"""Choosing the runs that build a target run's background.

Every criterion is an SQL condition on the catalogue, relative to the target run; ranges are
computed in Python so the database only compares indexed columns (no trigonometry in SQL).
Runs qualify only if they have a piece for the binning and exclusion setting in use, and never
when they are empty (no ontime, no events in range), flagged bad (`bkgdb.store.flags`), a second copy
of a run held by several datastores, or a copy of the target itself.
"""

import logging
from dataclasses import dataclass, field
from datetime import date
from types import SimpleNamespace

import numpy as np
import sqlalchemy as sa

from sqlalchemy.orm import aliased

from bkgdb.store.conditions import conditions_expression
from bkgdb.errors import BkgdbError
from bkgdb.store.flags import bad_obs_ids
from bkgdb.store.models import RUN_STATUS_OK, Datastore, PieceRow, Run

__all__ = ["RunSelector", "Selection", "NoRunsSelected", "TooLittleStatistics", "airmass", "zenith_range",
           "azimuth_condition", "kl_divergence", "kl_divergences", "rate_shape", "describe_funnel", "observation_second",
           "has_events", "is_ok", "airmass_then_time", "KL_POOL_FACTOR"]

log = logging.getLogger(__name__)

#: Airmass step of the similarity ranking: within a step, the run closest in time comes first.
AIRMASS_STEP = 0.01
#: With KL_DIV and time_request, KL ranks the runs nearest in airmass holding this many times the
#: requested ontime (`RunSelector.nearest_candidates`).
KL_POOL_FACTOR = 2.0
#: Airmass shells holding more candidates than this are not read one by one (their ids would be
#: too many to bind in one query).
SHELL_ROWS_MAX = 20000
#: Up to this many run ids or OBS_IDs (empty, flagged, repeated) are passed to the database as a
#: list of values, more as a subquery.
OBS_ID_LIST_MAX = 2000


class NoRunsSelected(BkgdbError):
    """No run passed the selection; the message says what each criterion removed."""


class TooLittleStatistics(NoRunsSelected):
    """The selected runs fall short of ``min_runs`` or ``min_ontime`` (with ``min_statistics: error``)."""


def observation_second(run=Run):
    """SQL expression: a run's observation start in whole seconds (MJD x 86400), -1 when unknown.

    With the OBS_ID it identifies an observation: two copies of one run in two datastores (even
    reprocessed ones) share both.
    """
    return sa.func.coalesce(sa.func.round(run.tstart_mjd * 86400.0), -1)


def has_events(piece=PieceRow):
    """SQL condition on a piece: its run has ontime and events in the binning's range.

    A run without events (``event_count`` 0) has none in range either, so the piece alone
    tells, and the check reads no catalogue row.
    """
    return sa.and_(piece.ontime_s > 0, piece.n_kept + piece.n_excluded > 0)


def is_ok(run=Run):
    """SQL condition: the run indexed fine.

    Written ``status || '' = 'ok'`` so that no plan scans the status index for it (nearly every
    run is ok): without table statistics SQLite would take that index over the zenith range.
    """
    return run.status.concat("") == RUN_STATUS_OK


def airmass(zenith_deg):
    return 1.0 / np.cos(np.radians(zenith_deg))


def zenith_range(zenith_deg, el_diff):
    """Zenith angles (deg) whose airmass lies within ``el_diff`` of the target's."""
    target = airmass(zenith_deg)
    low = max(1.0, target - el_diff)
    high = target + el_diff
    return float(np.degrees(np.arccos(1.0 / low))), float(np.degrees(np.arccos(1.0 / high)))


def azimuth_condition(column, azimuth_deg, az_diff):
    """Azimuths within ``az_diff`` deg of the target's, on the circle (355 and 5 are 10 apart)."""
    if az_diff >= 180:
        return sa.true()
    low, high = azimuth_deg - az_diff, azimuth_deg + az_diff
    if low < 0:
        return sa.or_(column > low + 360.0, column < high)
    if high > 360:
        return sa.or_(column > low, column < high - 360.0)
    return sa.and_(column > low, column < high)


def rate_shape(piece, pseudo=0.5):
    """A piece's rate per (energy, offset) bin, normalised to 1: counts (+ ``pseudo``) / exposure.

    Dividing by the accepted exposure removes the holes that exclusion regions cut, so runs with
    different stars in the field compare by their background alone.
    """
    exposure = np.where(piece.exposure_s > 0, piece.exposure_s, np.inf)
    shape = (np.asarray(piece.counts, float) + pseudo) / exposure[np.newaxis, :]
    return shape / shape.sum()


def kl_divergence(p, q):
    """Kullback-Leibler divergence D(p || q) of two normalised shapes (q > 0 where p > 0)."""
    p, q = np.asarray(p, float).ravel(), np.asarray(q, float).ravel()
    use = p > 0
    return float(np.sum(p[use] * np.log(p[use] / np.maximum(q[use], 1e-300))))


def describe_funnel(funnel):
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
    #: Datastore path of each selected run, filled when the pieces are loaded.
    datastores: list = field(default_factory=list)
    #: Warnings about the selection (too little statistics, requested ontime not reached).
    warnings: list = field(default_factory=list)

    def as_dict(self):
        return {"target_obs_id": self.target_obs_id, "obs_ids": self.obs_ids, "ontime_s": self.ontime_s,
                "funnel": self.funnel, "ranking": self.ranking, "requested_s": self.requested_s,
                "warnings": self.warnings}


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

    def __init__(self, settings, from_run=False, search_datastore=None):
        self.settings = settings
        self.from_run = from_run
        self.search_datastore = search_datastore

    def criteria(self, target, extra_keys=()):
        """(name, SQL condition) pairs for a target `~bkgdb.store.models.Run`."""
        s = self.settings
        criteria = []
        if s.el_diff is not None and target.zenith_deg is not None:
            low, high = zenith_range(target.zenith_deg, s.el_diff)
            criteria.append((f"airmass within {s.el_diff:g}", sa.and_(Run.zenith_deg >= low, Run.zenith_deg <= high)))
        if s.az_diff is not None and target.az_deg is not None:
            criteria.append((f"azimuth within {s.az_diff:g} deg", azimuth_condition(Run.az_deg, target.az_deg, s.az_diff)))
        if s.nsb_diff is not None and target.nsb_level is not None:
            criteria.append((f"NSB within {s.nsb_diff:g}",
                             sa.and_(Run.nsb_level > target.nsb_level - s.nsb_diff,
                                     Run.nsb_level < target.nsb_level + s.nsb_diff)))
        if s.time_max is not None and target.tstart_mjd is not None:
            criteria.append((f"within {s.time_max:g} days",
                             sa.and_(Run.tstart_mjd > target.tstart_mjd - s.time_max,
                                     Run.tstart_mjd < target.tstart_mjd + s.time_max)))
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
            criteria.append((f"|b| > {s.gal_lat_min:g} deg",
                             sa.or_(Run.glat_deg > s.gal_lat_min, Run.glat_deg < -s.gal_lat_min)))
        for condition in s.where:
            criteria.append((condition, conditions_expression([condition], extra_keys)))
        return criteria

    def season_of(self, target):
        day = target.date_obs
        for start, end in self.settings.seasons:
            if date.fromisoformat(start) <= day <= date.fromisoformat(end):
                return date.fromisoformat(start), date.fromisoformat(end)
        raise BkgdbError(f"run {target.obs_id} ({day}) is in none of the configured seasons")

    def run(self, session, target, binning_id, exclusion_id, extra_keys=()):
        """Select the runs for ``target``.

        Candidates are the ok runs with a piece (of ``io.search_datastore`` if set), other than
        the target; empty runs, runs flagged bad and duplicate copies are removed, then the
        criteria apply. The funnel records what each step left.

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
            has_piece = session.scalar(sa.select(sa.func.count(PieceRow.id)).where(
                PieceRow.run_id == target.id, PieceRow.binning_id == binning_id,
                PieceRow.exclusion_id == exclusion_id))
            if not has_piece:
                raise NoRunsSelected(f"from_run: run {target.obs_id} has no piece for this binning and exclusion "
                                     "setting; index its datastore with --config first")
            return Selection(target.obs_id, [target.id], [target.obs_id], target.ontime_s or 0.0,
                             [("from_run", 1)], ranking="from_run")

        base, search_id = self.candidates(session, target, binning_id, exclusion_id)
        integrity, (empty_ids, bad_ids, repeated_ids) = self.integrity_steps(session, target, binning_id, exclusion_id,
                                                                              search_id)
        criteria = self.criteria(target, extra_keys)
        steps = integrity + criteria
        if any(values is None for values in (empty_ids, bad_ids, repeated_ids)):
            counts = self.funnel_counts(session, base, [condition for _, condition in steps])
        else:
            counts = self.indexed_funnel_counts(session, base, target, binning_id, exclusion_id, search_id,
                                                [condition for _, condition in integrity],
                                                [condition for _, condition in criteria],
                                                empty_ids, list(bad_ids) + list(repeated_ids) + [target.obs_id])
        funnel = [("candidate runs with pieces", counts[0])]
        for number, (name, _) in enumerate(steps):
            left = counts[number + 1]
            if number >= len(integrity) or left != funnel[-1][1]:
                funnel.append((name, left))
        if funnel[-1][1] == 0:
            raise NoRunsSelected(f"no runs selected for run {target.obs_id}: {describe_funnel(funnel)}")
        query = base.where(*[condition for _, condition in steps])

        requested = None if self.settings.time_request is None else self.settings.time_request * 3600.0
        rows, query = self.nearest_candidates(session, query, target, requested)
        ranking, rows = self.rank(session, target, rows, binning_id, exclusion_id, query)
        chosen, ontime = [], 0.0
        for row in rows:
            if requested is not None and ontime >= requested:
                break
            chosen.append(row)
            ontime += row.ontime_s or 0.0
        warnings = []
        if requested is not None and ontime < requested:
            warnings.append(f"run {target.obs_id}: {ontime / 3600:.1f} h of the {requested / 3600:.1f} h "
                            "requested are available")
        shortfall = self.statistics_shortfall(len(chosen), ontime)
        if shortfall:
            message = (f"run {target.obs_id}: the background rests on {len(chosen)} "
                       f"run{'s' if len(chosen) != 1 else ''} ({ontime / 3600:.2f} h ontime), {shortfall}")
            if self.settings.min_statistics == "error":
                raise TooLittleStatistics(f"{message} ({describe_funnel(funnel)})")
            warnings.append(message)
        for message in warnings:
            log.warning("%s", message)
        return Selection(target.obs_id, [row.id for row in chosen], [row.obs_id for row in chosen], ontime,
                         funnel, ranking=ranking, requested_s=requested, warnings=warnings)

    def nearest_candidates(self, session, query, target, requested):
        """The candidates that can be chosen, read in airmass shells around the target, and their query.

        Runs are ranked by airmass step first (`rank`), so with ``time_request`` only the runs in
        the nearest steps holding the requested ontime can be chosen: shells of 1, 4, 16, ...
        steps are read (index range scans) until they hold it, instead of the whole airmass
        window. The result is the same as ranking every candidate. With ``KL_DIV`` the shells must
        hold `KL_POOL_FACTOR` times the requested ontime: the KL ranking orders that pool.
        """
        columns = (Run.id, Run.obs_id, Run.zenith_deg, Run.tstart_mjd, Run.ontime_s)
        s = self.settings
        if requested is not None and s.el_diff is not None and target.zenith_deg is not None:
            wanted = requested * (KL_POOL_FACTOR if s.KL_DIV else 1.0)
            target_airmass = airmass(target.zenith_deg)
            steps = 1
            while steps * AIRMASS_STEP < s.el_diff:
                # A hair wider than the steps, so that no run of them is missed by rounding.
                low, high = zenith_range(target.zenith_deg, steps * AIRMASS_STEP + 1e-9)
                shell = query.where(Run.zenith_deg >= low, Run.zenith_deg <= high)
                rows = session.execute(shell.with_only_columns(*columns)).all()
                zenith = np.array([row.zenith_deg for row in rows], dtype=float)
                inside = np.floor(np.abs(airmass(zenith) - target_airmass) / AIRMASS_STEP) < steps
                rows = [row for row, keep in zip(rows, inside) if keep]
                if len(rows) > SHELL_ROWS_MAX:  # as many as the whole window: read it with its query
                    break
                if sum(row.ontime_s or 0.0 for row in rows) >= wanted:
                    if s.KL_DIV:  # the pool: the nearest runs (airmass, then time) holding ``wanted``
                        rows = airmass_then_time(target, rows)
                        held = np.cumsum([row.ontime_s or 0.0 for row in rows])
                        rows = rows[:int(np.searchsorted(held, wanted)) + 1]
                    return rows, None
                steps *= 4
        return session.execute(query.with_only_columns(*columns)).all(), query

    def statistics_shortfall(self, n_runs, ontime_s):
        """'below min_runs 3 and min_ontime 2 h' when the selection rests on too little, else ''."""
        s = self.settings
        short = []
        if s.min_runs is not None and n_runs < s.min_runs:
            short.append(f"min_runs {s.min_runs}")
        if s.min_ontime is not None and ontime_s < s.min_ontime * 3600.0:
            short.append(f"min_ontime {s.min_ontime:g} h")
        return f"below {' and '.join(short)}" if short else ""

    def search_datastore_id(self, session):
        """Id of the ``io.search_datastore``; fails with the indexed datastores when it is not one of them."""
        found = session.scalar(sa.select(Datastore.id).where(Datastore.at(self.search_datastore)))
        if found is not None:
            return found
        from pathlib import Path

        indexed = session.scalars(sa.select(Datastore.path).order_by(Datastore.path)).all()
        raise BkgdbError(f"io.search_datastore {Path(self.search_datastore).expanduser().resolve()} is not in the "
                         f"catalogue; indexed datastores: {', '.join(indexed) or 'none'}")

    @staticmethod
    def funnel_counts(session, candidates, conditions):
        """[candidates, left after the 1st condition, after the 1st and 2nd, ...] in one query.

        Each condition is evaluated once per candidate (an inner 0/1 column), then summed.
        """
        if not conditions:
            return [session.scalar(sa.select(sa.func.count()).select_from(candidates.subquery()))]
        passes = candidates.with_only_columns(*[
            sa.case((condition, 1), else_=0).label(f"pass_{number}")
            for number, condition in enumerate(conditions)]).subquery("passes")
        columns, kept = [sa.func.count()], []
        for number in range(len(conditions)):
            kept.append(passes.c[f"pass_{number}"] == 1)
            columns.append(sa.func.coalesce(sa.func.sum(sa.case((sa.and_(*kept), 1), else_=0)), 0))
        return [int(value) for value in session.execute(sa.select(*columns).select_from(passes)).one()]

    @staticmethod
    def short_list(session, query):
        """The values of ``query`` when there are at most `OBS_ID_LIST_MAX`, else None."""
        values = session.scalars(query.limit(OBS_ID_LIST_MAX + 1)).all()
        return None if len(values) > OBS_ID_LIST_MAX else values

    @staticmethod
    def not_in_list(column, query, values):
        """SQL condition ``column NOT IN (values of query)``, with the ``values`` when they were listed.

        Short lists (usually none: few runs are empty or flagged) are passed as values, so the
        funnel and selection queries do not evaluate the subquery again for every candidate.
        """
        if values is None:
            return column.not_in(query)
        return column.not_in(values) if values else sa.true()

    @staticmethod
    def repeated_obs_ids(session):
        """OBS_IDs catalogued more than once (at most `OBS_ID_LIST_MAX`, else None).

        One datastore holds an OBS_ID once (a unique constraint), so a catalogue of one
        datastore has none and is not scanned.
        """
        if session.scalar(sa.select(sa.func.count(Datastore.id))) <= 1:
            return []
        other = aliased(Run)
        repeated = sa.select(other.obs_id).group_by(other.obs_id).having(sa.func.count(other.id) > 1)
        return RunSelector.short_list(session, repeated)

    def indexed_funnel_counts(self, session, candidates, target, binning_id, exclusion_id, search_id, integrity,
                              criteria, suspect_run_ids, suspect_obs_ids):
        """The counts of `funnel_counts`, from queries that each read an index range, not the catalogue.

        - all candidates: the setting's pieces (an index count) less those of runs not ok and the
          target's own;
        - after each integrity step: only suspects (candidates with an id or OBS_ID on one of the
          short lists) can fail one, so they alone are looked up (by primary key) and subtracted;
        - after each criterion: conditional counts over the runs passing the integrity steps and the
          first criterion (an index range scan, usually of zenith angles).
        """
        if search_id is None:
            of_setting = sa.and_(PieceRow.binning_id == binning_id, PieceRow.exclusion_id == exclusion_id)
            with_runs = sa.select(sa.func.count()).select_from(PieceRow).join(Run, Run.id == PieceRow.run_id)
            total, not_ok, n_runs = session.execute(sa.select(
                sa.select(sa.func.count()).select_from(PieceRow).where(of_setting).scalar_subquery(),
                sa.select(sa.func.count(Run.id)).where(Run.status != RUN_STATUS_OK).scalar_subquery(),
                sa.select(sa.func.count(Run.id)).scalar_subquery())).one()
            other_ok_runs = n_runs - not_ok - 1  # the target is ok
            if not_ok:  # runs that failed to index rarely have pieces: joined only when there are some
                total -= session.scalar(with_runs.where(of_setting, Run.status != RUN_STATUS_OK))
            total -= session.scalar(with_runs.where(of_setting, Run.status == RUN_STATUS_OK, Run.id == target.id))
        else:
            total = session.scalar(sa.select(sa.func.count()).select_from(candidates.subquery()))
            other_ok_runs = session.scalar(sa.select(sa.func.count(Run.id)).where(
                Run.datastore_id == search_id, Run.status == RUN_STATUS_OK, Run.id != target.id))
        suspects = set(suspect_run_ids) | set(session.scalars(
            sa.select(Run.id).where(Run.obs_id.in_(sorted(set(suspect_obs_ids))))))
        suspect_counts = self.funnel_counts(session, candidates.where(Run.id.in_(sorted(suspects))), integrity)
        counts = [total] + [total - (suspect_counts[0] - left) for left in suspect_counts[1:]]
        if criteria:
            # When every such run has a piece (the usual case) the pieces need not be joined and the
            # counts are read from the runs' selection index alone.
            if other_ok_runs == total:
                candidates = sa.select(Run.id).where(is_ok(), Run.id != target.id)
                if search_id is not None:
                    candidates = candidates.where(Run.datastore_id == search_id)
            counts += self.funnel_counts(session, candidates.where(*integrity, criteria[0]), criteria[1:])
        return counts

    @staticmethod
    def one_copy_condition(session, target, binning_id, exclusion_id, datastore_id=None, repeated_obs_ids=None):
        """SQL condition: the run is the preferred copy of its observation, and no copy of the target.

        An observation is its OBS_ID and start second (`observation_second`). Of several copies
        that are candidates (ok, with a non-empty piece), the one in the target's datastore is
        kept, else the one of the datastore indexed first (the lowest datastore id). Only runs
        whose OBS_ID is catalogued more than once are looked up (a correlated NOT EXISTS on the
        OBS_ID index), so an archive without copies pays almost nothing.
        """
        target_run = aliased(Run)
        # Asked once, compared as a value: a scalar subquery would keep the scan from the index.
        target_second = session.scalar(sa.select(observation_second(target_run)).where(target_run.id == target.id))
        not_target_copy = sa.not_(sa.and_(Run.obs_id == target.obs_id, observation_second() == target_second))
        other, other_piece = aliased(Run), aliased(PieceRow)
        repeated = sa.select(other.obs_id).group_by(other.obs_id).having(sa.func.count(other.id) > 1)
        # Asked once (`repeated_obs_ids`): inside the funnel's scan SQLite would evaluate it for every run.
        if repeated_obs_ids is None:
            repeated_obs_ids = session.scalars(repeated.limit(OBS_ID_LIST_MAX + 1)).all()
        if not repeated_obs_ids:
            return not_target_copy
        preferred_copy = (
            sa.select(other.id).join(other_piece, other_piece.run_id == other.id)
            .where(other.obs_id == Run.obs_id, other.id != Run.id, observation_second(other) == observation_second(),
                   other.status == RUN_STATUS_OK, other_piece.binning_id == binning_id,
                   other_piece.exclusion_id == exclusion_id, has_events(other_piece),
                   sa.or_(other.datastore_id == target.datastore_id,
                          sa.and_(Run.datastore_id != target.datastore_id, other.datastore_id < Run.datastore_id)))
        )
        if datastore_id is not None:
            preferred_copy = preferred_copy.where(other.datastore_id == datastore_id)
        single = Run.obs_id.not_in(repeated if len(repeated_obs_ids) > OBS_ID_LIST_MAX else list(repeated_obs_ids))
        return sa.and_(not_target_copy, sa.or_(single, ~preferred_copy.exists()))

    def candidates(self, session, target, binning_id, exclusion_id):
        """The query of candidate run ids (ok, with a piece of the setting, not the target) and the
        id of the search datastore (None: every datastore)."""
        # The setting's pieces are tested as ``binning_id + 0 = ?``: looked up per run (by the
        # (run, binning, exclusion) key), never scanned as a whole, even where SQLite has no statistics.
        base = (
            sa.select(Run.id).join(PieceRow, PieceRow.run_id == Run.id)
            .where((PieceRow.binning_id + 0) == binning_id, (PieceRow.exclusion_id + 0) == exclusion_id,
                   is_ok(), Run.id != target.id)
        )
        search_id = None
        if self.search_datastore:
            search_id = self.search_datastore_id(session)
            base = base.where(Run.datastore_id == search_id)
        return base, search_id

    def integrity_steps(self, session, target, binning_id, exclusion_id, search_id=None):
        """(name, condition) of the runs that must never build a background: empty, flagged bad,
        other copies of a run; and the short lists of ids they used (None where too long to list).

        Each list (empty, flagged, repeated OBS_IDs) is asked for once and passed as values.
        """
        empty_pieces = sa.select(PieceRow.run_id).where(
            PieceRow.binning_id == binning_id, PieceRow.exclusion_id == exclusion_id, sa.not_(has_events()))
        empty_ids = self.short_list(session, empty_pieces)
        bad_ids = self.short_list(session, bad_obs_ids())
        repeated_ids = self.repeated_obs_ids(session)
        steps = [("empty runs", self.not_in_list(Run.id, empty_pieces, empty_ids)),
                 ("flagged bad", self.not_in_list(Run.obs_id, bad_obs_ids(), bad_ids)),
                 ("duplicate copies", self.one_copy_condition(session, target, binning_id, exclusion_id,
                                                              search_id, repeated_ids))]
        return steps, (empty_ids, bad_ids, repeated_ids)

    def rank(self, session, target, rows, binning_id, exclusion_id, candidates):
        """Order candidates, most similar first: by KL divergence, or by airmass then time.

        KL ranking reads only the candidates' counts and exposure (with the target's, in one query
        joined to the selection, or by the rows' ids when ``candidates`` is None) and scores them
        all at once (`kl_divergences`).
        """
        if not rows:
            return ("kl_divergence" if self.settings.KL_DIV else "airmass_then_time"), []
        obs_ids = np.array([row.obs_id for row in rows], dtype=np.int64)
        if self.settings.KL_DIV:
            from bkgdb.makers.piece import decode_array

            found = session.execute(
                sa.select(PieceRow.run_id, PieceRow.n_energy, PieceRow.n_offset, PieceRow.counts_dtype,
                          PieceRow.exposure_dtype, PieceRow.counts, PieceRow.exposure_s).where(
                    PieceRow.binning_id == binning_id, PieceRow.exclusion_id == exclusion_id,
                    sa.or_(PieceRow.run_id == target.id, PieceRow.run_id.in_(
                        [row.id for row in rows] if candidates is None else candidates.scalar_subquery())))).all()
            arrays = {row.run_id: (decode_array(row.counts, row.counts_dtype, (row.n_energy, row.n_offset)),
                                   decode_array(row.exposure_s, row.exposure_dtype, (row.n_offset,)))
                      for row in found}
            if target.id not in arrays:
                raise BkgdbError(f"KL_DIV needs run {target.obs_id}'s own piece: index its datastore with --config")
            counts = np.stack([arrays[row.id][0] for row in rows])
            exposure = np.stack([arrays[row.id][1] for row in rows])
            reference = rate_shape(SimpleNamespace(counts=arrays[target.id][0], exposure_s=arrays[target.id][1]))
            scores = kl_divergences(reference, counts, exposure)
            order = np.lexsort((obs_ids, scores))
            return "kl_divergence", [rows[index] for index in order]

        return "airmass_then_time", airmass_then_time(target, rows)


def airmass_then_time(target, rows):
    """Rows (``zenith_deg``, ``tstart_mjd``, ``obs_id``) ordered by airmass step from the target's
    (`AIRMASS_STEP`; 0 where a zenith is unknown), then by days from it, then by OBS_ID."""
    if not rows:
        return []
    obs_ids = np.array([row.obs_id for row in rows], dtype=np.int64)
    zenith = np.array([np.nan if row.zenith_deg is None else row.zenith_deg for row in rows], dtype=float)
    if target.zenith_deg is None:
        step = np.zeros(len(rows))
    else:
        with np.errstate(invalid="ignore"):
            step = np.floor(np.abs(airmass(zenith) - airmass(target.zenith_deg)) / AIRMASS_STEP)
        step[np.isnan(zenith)] = 0
    start = np.array([row.tstart_mjd or 0.0 for row in rows], dtype=float)
    days = np.abs(start - (target.tstart_mjd or 0.0))
    return [rows[index] for index in np.lexsort((obs_ids, days, step))]


def kl_divergences(reference, counts, exposure_s, pseudo=0.5):
    """`kl_divergence` of the reference shape from each piece's `rate_shape`, for a stack of pieces.

    Parameters
    ----------
    reference : `~numpy.ndarray`
        The target's normalised shape, (n_energy, n_offset).
    counts : `~numpy.ndarray`
        Shape (n_pieces, n_energy, n_offset).
    exposure_s : `~numpy.ndarray`
        Shape (n_pieces, n_offset).

    Returns
    -------
    divergences : `~numpy.ndarray`
        One per piece, equal to the one-piece functions' values.
    """
    exposure = np.where(exposure_s > 0, exposure_s, np.inf)
    shapes = (np.asarray(counts, float) + pseudo) / exposure[:, np.newaxis, :]
    flat = shapes.reshape(len(shapes), -1)
    flat = flat / flat.sum(axis=1)[:, np.newaxis]
    p = np.asarray(reference, float).ravel()
    use = p > 0
    q = np.ascontiguousarray(flat[:, use])
    return np.sum(p[use] * np.log(p[use] / np.maximum(q, 1e-300)), axis=1)
