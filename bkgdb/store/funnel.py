"""Which criterion removed each candidate run: the selection funnel run by run.

`RunSelector.run` counts what each criterion leaves; here every candidate gets the first step
that excluded it, evaluated with the same SQL conditions (`RunSelector.criteria` and the integrity
steps), in one query with one 0/1 column per step.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.orm import Session

from bkgdb.errors import NoRunsSelected
from bkgdb.store.backgrounds import find_target
from bkgdb.store.models import Run
from bkgdb.store.selection import RunSelector

if TYPE_CHECKING:
    from bkgdb.background import BackgroundBuilder

__all__ = ["CandidateFate", "FunnelPicture", "candidate_fates", "funnel_picture"]

log = logging.getLogger(__name__)


@dataclass
class CandidateFate:
    """One candidate run and the first selection step it failed (None: it passed every criterion)."""

    run_id: int
    obs_id: int
    zenith_deg: float | None
    az_deg: float | None
    tstart_mjd: float | None
    removed_by: str | None


@dataclass
class FunnelPicture:
    """The candidates of one target's selection, what removed each, and the runs chosen."""

    SELECTED = "selected"
    NOT_NEEDED = "passed, not needed (ranking, time_request)"

    #: The target run (`~bkgdb.store.models.Run`).
    target: Run
    fates: list[CandidateFate]
    selected_run_ids: list[int] = field(default_factory=list)
    #: Steps in the order applied (integrity first, then the config's criteria).
    steps: list[str] = field(default_factory=list)
    title: str = ""

    def label(self, fate: CandidateFate) -> str:
        """The group of ``fate``: selected, the step that removed it, or passed but not needed."""
        if fate.run_id in self.selected_run_ids:
            return self.SELECTED
        return fate.removed_by or self.NOT_NEEDED

    def groups(self) -> list[tuple[str, list[CandidateFate]]]:
        """[(label, fates)]: selected first, then by step order, then passed-but-not-needed; empty groups left out."""
        order = [self.SELECTED] + list(self.steps) + [self.NOT_NEEDED]
        grouped: dict[str, list[CandidateFate]] = {name: [] for name in order}
        for fate in self.fates:
            grouped.setdefault(self.label(fate), []).append(fate)
        return [(name, fates) for name, fates in grouped.items() if fates]


def candidate_fates(
    session: Session,
    selector: RunSelector,
    target: Run,
    binning_id: int,
    exclusion_id: int,
    extra_keys: Iterable[str] = (),
) -> tuple[list[CandidateFate], list[str]]:
    """Every candidate run of ``target``'s selection and the first step that excluded it.

    Candidates are those of `RunSelector.run`: ok runs with a piece of the binning and exclusion
    setting (of ``io.search_datastore`` if set), other than the target.

    Returns
    -------
    fates : list of `CandidateFate`
        Ordered by OBS_ID.
    steps : list of str
        The step names in the order applied.
    """
    base, search_id = selector.candidates(session, target, binning_id, exclusion_id)
    steps, (*_, parameters) = selector.integrity_steps(session, target, binning_id, exclusion_id, search_id)
    steps += selector.criteria(target, list(extra_keys))
    # A condition that is NULL for a run (missing column value) removes it, as in the funnel.
    passes = [sa.case((condition, 1), else_=0).label(f"pass_{number}") for number, (_, condition) in enumerate(steps)]
    query = base.with_only_columns(Run.id, Run.obs_id, Run.zenith_deg, Run.az_deg, Run.tstart_mjd, *passes)
    fates: list[CandidateFate] = []
    # The target's values are named parameters of the candidates' query and conditions.
    for row in session.execute(query.order_by(Run.obs_id, Run.id), parameters).all():
        failed = next((name for number, (name, _) in enumerate(steps) if not row[5 + number]), None)
        fates.append(CandidateFate(row[0], row[1], row[2], row[3], row[4], failed))
    return fates, [name for name, _ in steps]


def funnel_picture(builder: BackgroundBuilder, obs_id: int, datastore: str | Path | None = None) -> FunnelPicture:
    """The `FunnelPicture` of run ``obs_id`` with a `~bkgdb.background.BackgroundBuilder`'s config.

    The chosen runs are those `RunSelector.run` picks; when nothing passes, none are chosen and the
    picture shows what removed every candidate.
    """
    with builder.catalogue.session() as session:
        binning_row, exclusion_row = builder._setting_rows(session)
        target = find_target(session, obs_id, datastore)
        extra_keys = builder.catalogue.extra_keys()
        selector = builder.selector
        if selector.from_run:
            return FunnelPicture(target, [], [], ["from_run"], f"run {obs_id}: from_run, its own piece only")
        fates, steps = candidate_fates(session, selector, target, binning_row.id, exclusion_row.id, extra_keys)
        try:
            selection = selector.run(session, target, binning_row.id, exclusion_row.id, extra_keys)
            chosen = list(selection.run_ids)
            summary = (
                f"{len(chosen)} of {len(fates)} candidates selected "
                f"({selection.ontime_s / 3600:.1f} h, ranked by {selection.ranking})"
            )
        except NoRunsSelected:
            chosen, summary = [], f"none of {len(fates)} candidates selected"
        session.expunge(target)
    return FunnelPicture(target, fates, chosen, steps, f"run {obs_id}: {summary}")
