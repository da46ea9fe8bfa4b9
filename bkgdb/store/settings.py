"""Stored settings: binning and exclusion rows, found by their content hash, and the geometry of a binning.

A binning or exclusion setting is stored once, as its parameters and the SHA-256 of them
(`~bkgdb.store.models.HashedSettings`); pieces and backgrounds refer to the rows. This module is
the one place that finds, creates and resolves those rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from bkgdb.errors import BkgdbError
from bkgdb.geometry import PieceGeometry
from bkgdb.store.models import BinningRow, ExclusionRow, HashedSettings
from bkgdb.store.upsert import insert_if_missing

__all__ = [
    "SettingRow",
    "setting_rows",
    "stored_setting",
    "get_or_create_setting",
    "setting_by_prefix",
    "geometry_from_params",
]


class HashedSetting(Protocol):
    """A binning or exclusion setting of a config: its parameters and their hash."""

    @property
    def hash(self) -> str: ...

    @property
    def params(self) -> dict: ...


@dataclass(frozen=True)
class SettingRow:
    """A stored setting as plain values, usable after the session that found it is closed."""

    id: int
    hash: str
    params: dict


def _plain(row: HashedSettings) -> SettingRow:
    return SettingRow(id=row.id, hash=row.hash, params=dict(row.params or {}))


def stored_setting(session: Session, model: type[HashedSettings], digest: str) -> SettingRow | None:
    """The row of ``model`` (`BinningRow` or `ExclusionRow`) whose hash is ``digest``, or None."""
    row = session.scalars(sa.select(model).where(model.hash == digest)).one_or_none()
    return None if row is None else _plain(row)


def setting_rows(session: Session, binning: HashedSetting, exclusion: HashedSetting) -> tuple[SettingRow, SettingRow]:
    """The stored (binning, exclusion) rows of a config's binning and exclusion setting.

    Raises
    ------
    BkgdbError
        Either was never stored: no run was indexed with them.
    """
    binning_row = stored_setting(session, BinningRow, binning.hash)
    exclusion_row = stored_setting(session, ExclusionRow, exclusion.hash)
    if binning_row is None or exclusion_row is None:
        raise BkgdbError(
            "the catalogue has no pieces for this config's binning and exclusion setting: "
            "run `bkgdb index DATASTORE --config FILE` first"
        )
    return binning_row, exclusion_row


def get_or_create_setting(session: Session, model: type[HashedSettings], digest: str, params: dict) -> Any:
    """The ORM row of ``model`` with hash ``digest``, inserted first when missing.

    An upsert, not "select, then add": another indexer may store the same setting at any moment.
    """
    insert_if_missing(session, model, ["hash"], {"hash": digest, "params": params})
    return session.scalars(sa.select(model).where(model.hash == digest)).one()


def setting_by_prefix(session: Session, model: type[HashedSettings], prefix: str, what: str) -> SettingRow:
    """The one stored setting whose hash starts with ``prefix`` (as `bkgdb cache` shows them).

    Raises
    ------
    BkgdbError
        No setting or several settings have that prefix.
    """
    column = model.hash
    matches = session.scalars(sa.select(model).where(column.startswith(prefix, autoescape=True))).all()
    if not matches:
        raise BkgdbError(f"no {what} whose hash starts with {prefix!r} (see `bkgdb cache`)")
    if len(matches) > 1:
        raise BkgdbError(f"{what} hash prefix {prefix!r} is ambiguous: give more characters")
    return _plain(matches[0])


def geometry_from_params(params: dict) -> PieceGeometry:
    """The `~bkgdb.geometry.PieceGeometry` of a stored binning's parameters.

    2D binnings have ``off_min, off_max, off_bins``; 3D ones ``fov_max`` (half-width of the square
    FoV, deg), ``fov_bins`` (pixels per axis) and ``fov_alignment``. Both have ``e_min, e_max,
    e_bins`` (TeV, log-spaced), as `bkgdb.config` writes them.
    """
    energy = np.geomspace(float(params["e_min"]), float(params["e_max"]), int(params["e_bins"]) + 1)
    if "fov_bins" in params:
        half = float(params["fov_max"])
        edges = np.linspace(-half, half, int(params["fov_bins"]) + 1)
        return PieceGeometry.fov(energy, edges, edges, str(params.get("fov_alignment") or "ALTAZ"))
    offset = np.linspace(float(params["off_min"]), float(params["off_max"]), int(params["off_bins"]) + 1)
    return PieceGeometry.offset(energy, offset)
