"""Catalogue look-ups of validation and run figures: target runs, their pieces' regions, start times.

`bkgdb.validation` and `bkgdb.plotting` ask these questions of the database; the SQL lives here so
that only `bkgdb.store` imports SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.orm import Session

from bkgdb.store.conditions import conditions_expression
from bkgdb.store.models import RUN_STATUS_OK, Datastore, PieceRow, RegionSet, Run

if TYPE_CHECKING:
    from bkgdb.config import BkgdbConfig
    from bkgdb.store.catalogue import RunCatalogue

__all__ = ["target_runs", "piece_regions", "datastore_folder", "run_start_times"]


def target_runs(
    catalogue: RunCatalogue, config: BkgdbConfig, datastore: str | Path, where: Iterable[str] = ()
) -> list[Run]:
    """The runs of ``datastore`` a config is validated on: ``where`` conditions and the config's
    absolute criteria (|b| > ``gal_lat_min``, ``n_tels``, ``el_min``, ``el_max``).

    Returns
    -------
    runs : list of `~bkgdb.store.models.Run`
        Ordered by OBS_ID.
    """
    s = config.selection
    query = (
        sa.select(Run)
        .join(Datastore, Datastore.id == Run.datastore_id)
        .where(Datastore.at(datastore), Run.status == RUN_STATUS_OK)
        .order_by(Run.obs_id)
    )
    conditions = list(where or [])
    if conditions:
        query = query.where(conditions_expression(conditions, catalogue.extra_keys()))
    if s.gal_lat_min:
        query = query.where(sa.or_(Run.glat_deg > s.gal_lat_min, Run.glat_deg < -s.gal_lat_min))
    if s.n_tels is not None:
        query = query.where(Run.n_tels >= s.n_tels)
    if s.el_min is not None:
        query = query.where(Run.alt_deg >= s.el_min)
    if s.el_max is not None:
        query = query.where(Run.alt_deg <= s.el_max)
    with catalogue.session() as session:
        return list(session.scalars(query).all())


def piece_regions(
    session: Session, run_id: int, binning_id: int | None, exclusion_id: int | None
) -> list[tuple[float, float, float]] | None:
    """Circles (ra, dec, radius), deg, stored with a run's own piece, or None when it has no piece.

    Regions stored by name only (non-circular shapes of region files) are left out.
    """
    found = session.execute(
        sa.select(PieceRow.id, RegionSet.regions)
        .select_from(PieceRow)
        .outerjoin(RegionSet, RegionSet.id == PieceRow.region_set_id)
        .where(PieceRow.run_id == run_id, PieceRow.binning_id == binning_id, PieceRow.exclusion_id == exclusion_id)
    ).first()
    if found is None:
        return None
    regions = found.regions or []
    return [
        (region["ra"], region["dec"], region["radius"])
        for region in regions
        if all(key in region for key in ("ra", "dec", "radius"))
    ]


def datastore_folder(catalogue: RunCatalogue, datastore_id: int) -> str | None:
    """Folder of the catalogued datastore ``datastore_id``."""
    with catalogue.session() as session:
        return session.scalar(sa.select(Datastore.path).where(Datastore.id == datastore_id))


def run_start_times(catalogue: RunCatalogue, datastore: str | Path, obs_ids: Iterable[int | None]) -> dict[int, float]:
    """OBS_ID -> run start (MJD) of the runs of ``datastore`` in the catalogue."""
    wanted = {int(obs_id) for obs_id in obs_ids if obs_id is not None}
    with catalogue.session() as session:
        rows = session.execute(
            sa.select(Run.obs_id, Run.tstart_mjd)
            .join(Datastore, Datastore.id == Run.datastore_id)
            .where(Datastore.at(datastore))
        ).all()
    return {obs_id: start for obs_id, start in rows if obs_id in wanted and start is not None}


def catalogued_files(session: Session) -> tuple[list[str], Iterable[tuple[str, int, str]]]:
    """Folders of every catalogued datastore, and (file path, OBS_ID, folder) of every run with a file.

    What `bkgdb attach` must never overwrite; the rows are streamed (catalogues are large).
    """
    folders = list(session.scalars(sa.select(Datastore.path)))
    rows = session.execute(
        sa.select(Run.file_path, Run.obs_id, Datastore.path)
        .join(Datastore, Datastore.id == Run.datastore_id)
        .where(Run.file_path.is_not(None))
    )
    return folders, ((str(path), int(obs_id), str(folder)) for path, obs_id, folder in rows)
