"""SQLAlchemy ORM models of the bkgdb catalogue.

The schema is created and changed only by the alembic migrations in ``migrations/``;
``tests/test_migrations.py`` checks that these models and the migrations agree.
"""

from datetime import UTC, date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = [
    "Base",
    "Datastore",
    "Run",
    "BinningRow",
    "ExclusionRow",
    "PieceRow",
    "RegionSet",
    "BackgroundRow",
    "BackgroundInput",
    "RunFlag",
    "ConditionModelRow",
    "RUN_FACT_COLUMNS",
    "RUN_SELECTABLE_COLUMNS",
    "RUN_STATUS_OK",
    "RUN_STATUS_FAILED",
    "FLAG_BAD",
    "FLAG_GOOD",
]

RUN_STATUS_OK = "ok"
RUN_STATUS_FAILED = "failed"
FLAG_BAD = "bad"
FLAG_GOOD = "good"

# JSON on SQLite, JSONB (indexable, comparable) on PostgreSQL.
JSONType = sa.JSON().with_variant(JSONB(), "postgresql")

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        float: sa.Float(),
        int: sa.Integer(),
        str: sa.String(255),
        dict: JSONType,
        datetime: sa.DateTime(timezone=True),
        date: sa.Date(),
    }


class Datastore(Base):
    """A DL3 datastore folder that was indexed, identified by its absolute path."""

    __tablename__ = "datastores"

    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[str] = mapped_column(sa.String(1024), unique=True)
    #: Header of the obs-index table (MJDREF, GEOLON, ...): how to read the run columns.
    obs_index_meta: Mapped[dict] = mapped_column(default=dict)
    first_indexed_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_indexed_at: Mapped[datetime] = mapped_column(default=utcnow)

    runs: Mapped[list["Run"]] = relationship(
        back_populates="datastore", cascade="all, delete-orphan", passive_deletes=True
    )

    @classmethod
    def at(cls, path: Any) -> Any:
        """SQL condition: the datastore in folder ``path`` (as the user wrote it)."""
        from pathlib import Path

        return cls.path == str(Path(path).expanduser().resolve())


class Run(Base):
    """One observation run of one datastore, with the columns run selection needs.

    Angles are in degrees, times in seconds or MJD (UTC), as the column names say. ``extra`` holds
    the run's whole obs-index row, so instrument-specific columns can be selected on too.
    """

    __tablename__ = "runs"
    __table_args__ = (
        sa.UniqueConstraint("datastore_id", "obs_id"),
        # Selection criteria read from the index alone: the zenith range is scanned and the other
        # criteria are tested on index entries, so only passing runs' rows are read; what the
        # selection returns of a run (id, OBS_ID, datastore, zenith, start, ontime) is in it too.
        sa.Index(
            "ix_runs_selection",
            "zenith_deg",
            "az_deg",
            "glat_deg",
            "n_tels",
            "tstart_mjd",
            "status",
            "obs_id",
            "ontime_s",
            "datastore_id",
            "instrument",
        ),
        # An instrument's runs (``--where instrument=...``); the runs an older bkgdb catalogued, which
        # have none, counted from the index alone (`bkgdb.store.selection.RunSelector.instrument_warnings`).
        sa.Index("ix_runs_instrument", "instrument", "checks_version", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    datastore_id: Mapped[int] = mapped_column(sa.ForeignKey("datastores.id", ondelete="CASCADE"), index=True)
    obs_id: Mapped[int] = mapped_column(sa.BigInteger, index=True)
    status: Mapped[str] = mapped_column(sa.String(16), index=True)
    error: Mapped[str | None] = mapped_column(sa.Text)

    ra_deg: Mapped[float | None]
    dec_deg: Mapped[float | None]
    glon_deg: Mapped[float | None]
    glat_deg: Mapped[float | None] = mapped_column(index=True)
    alt_deg: Mapped[float | None]
    zenith_deg: Mapped[float | None]
    az_deg: Mapped[float | None] = mapped_column(index=True)

    tstart_mjd: Mapped[float | None] = mapped_column(index=True)
    tstop_mjd: Mapped[float | None]
    date_obs: Mapped[date | None] = mapped_column(index=True)
    ontime_s: Mapped[float | None]
    livetime_s: Mapped[float | None]
    deadtime_fraction: Mapped[float | None]

    #: ``TELESCOP``, from the obs-index row if it has the column, else the EVENTS header, upper-case:
    #: HESS, VERITAS, MAGIC, CTA. None when neither gives one, or the run was indexed before bkgdb read it.
    instrument: Mapped[str | None] = mapped_column(sa.String(64))
    n_tels: Mapped[int | None] = mapped_column(index=True)
    tellist: Mapped[str | None]
    object_name: Mapped[str | None] = mapped_column(index=True)
    nsb_level: Mapped[float | None] = mapped_column(index=True)
    muon_eff: Mapped[float | None] = mapped_column(index=True)
    event_count: Mapped[int | None] = mapped_column(sa.BigInteger)

    file_path: Mapped[str | None] = mapped_column(sa.String(2048))
    file_size_bytes: Mapped[int | None] = mapped_column(sa.BigInteger)
    file_mtime: Mapped[float | None]
    file_sha256: Mapped[str | None] = mapped_column(sa.String(64))
    #: Hash of the obs-index row: a changed row re-indexes the run even if its file did not change.
    row_sha256: Mapped[str | None] = mapped_column(sa.String(64))
    #: The version of the run checks (`bkgdb.makers.run.RUN_CHECKS_VERSION`) its status comes from;
    #: an older one (0: indexed before checks had versions) makes the next index read the run again,
    #: as does none (a row no index wrote).
    checks_version: Mapped[int | None]
    extra: Mapped[dict] = mapped_column(default=dict)
    indexed_at: Mapped[datetime] = mapped_column(default=utcnow)

    datastore: Mapped[Datastore] = relationship(back_populates="runs")


#: Columns of `Run` that record how and when it was indexed rather than the observation itself.
_RUN_BOOKKEEPING = (
    "id",
    "datastore_id",
    "obs_id",
    "status",
    "error",
    "file_path",
    "file_size_bytes",
    "file_mtime",
    "file_sha256",
    "row_sha256",
    "checks_version",
    "indexed_at",
)
#: The facts about a run read from its obs-index row and events header (`bkgdb.gadf.datastore.RunFacts`
#: has these fields), in column order: the model is where run columns are declared.
RUN_FACT_COLUMNS = tuple(column.key for column in Run.__table__.columns if column.key not in _RUN_BOOKKEEPING)
#: Columns a ``--where`` condition or ``bkgdb runs --columns`` may name directly.
RUN_SELECTABLE_COLUMNS = tuple(
    column.key
    for column in Run.__table__.columns
    if column.key not in ("id", "datastore_id", "file_mtime", "row_sha256", "extra", "indexed_at")
)


class HashedSettings:
    """Columns of a settings row identified by the SHA-256 of its parameters."""

    id: Mapped[int] = mapped_column(primary_key=True)
    hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    params: Mapped[dict]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BinningRow(HashedSettings, Base):
    """A stored binning."""

    __tablename__ = "binnings"


class ExclusionRow(HashedSettings, Base):
    """A stored exclusion setting (catalogues with their content hashes, radii, regions, method)."""

    __tablename__ = "exclusion_settings"


#: SQL of a piece without ontime or events in range (`bkgdb.store.integrity.has_events` negated).
EMPTY_PIECE = "NOT (ontime_s > 0 AND n_kept + n_excluded > 0)"


class RegionSet(Base):
    """A list of exclusion regions applied to pieces, stored once however many pieces share it.

    The runs of one field share their regions (every binning of one exclusion setting too): kept
    in each piece, the regions were most of a 2D piece's bytes and made every piece row span a
    database page, which a build reads a thousand of. ``sha256`` is
    `~bkgdb.store.regions.regions_digest`'s.
    """

    __tablename__ = "region_sets"

    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(sa.String(64), unique=True)
    regions: Mapped[list] = mapped_column(JSONType)


class PieceRow(Base):
    """One run's background piece for one binning and one exclusion setting.

    Arrays are zlib-compressed little-endian bytes; their dtypes and shape are columns, so a piece
    of any geometry (offset rings or FoV pixels) is stored the same way.
    ``file_sha256`` is the hash of the event file the piece was computed from.
    """

    __tablename__ = "pieces"
    __table_args__ = (
        sa.UniqueConstraint("run_id", "binning_id", "exclusion_id"),
        # A setting's pieces counted and checked for events (`bkgdb.store.integrity.has_events`) without
        # reading the rows and their arrays.
        sa.Index(
            "ix_pieces_setting_events", "binning_id", "exclusion_id", "ontime_s", "n_kept", "n_excluded", "run_id"
        ),
        # The few empty pieces of a setting found without going through the others (a setting of
        # 100,000 pieces took 7 ms per build to search for none); the condition is `has_events`'s.
        sa.Index(
            "ix_pieces_empty",
            "binning_id",
            "exclusion_id",
            "run_id",
            sqlite_where=sa.text(EMPTY_PIECE),
            postgresql_where=sa.text(EMPTY_PIECE),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    binning_id: Mapped[int] = mapped_column(sa.ForeignKey("binnings.id", ondelete="CASCADE"), index=True)
    exclusion_id: Mapped[int] = mapped_column(sa.ForeignKey("exclusion_settings.id", ondelete="CASCADE"), index=True)
    #: Shape of the counts arrays, energy first: ``[n_energy, n_offset]`` or ``[n_energy, n_lon, n_lat]``;
    #: the exposure has ``shape[1:]``.
    shape: Mapped[list] = mapped_column(JSONType)
    counts_dtype: Mapped[str] = mapped_column(sa.String(8))
    exposure_dtype: Mapped[str] = mapped_column(sa.String(8))
    counts: Mapped[bytes] = mapped_column(sa.LargeBinary)
    excluded_counts: Mapped[bytes] = mapped_column(sa.LargeBinary)
    exposure_s: Mapped[bytes] = mapped_column(sa.LargeBinary)
    ontime_s: Mapped[float]
    livetime_s: Mapped[float | None]
    n_kept: Mapped[int] = mapped_column(sa.BigInteger)
    n_excluded: Mapped[int] = mapped_column(sa.BigInteger)
    #: The exclusion regions applied (`regions`); None when there were none.
    region_set_id: Mapped[int | None] = mapped_column(sa.ForeignKey("region_sets.id"), index=True)
    file_sha256: Mapped[str | None] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    run: Mapped[Run] = relationship()
    binning: Mapped[BinningRow] = relationship()
    exclusion: Mapped[ExclusionRow] = relationship()
    # Loaded with the piece: pieces read as objects are few (a build reads its arrays as plain rows).
    region_set: Mapped[RegionSet | None] = relationship(lazy="joined")

    @property
    def regions(self) -> list:
        """The exclusion regions applied to this piece (name, kind, ra, dec, radius)."""
        return [] if self.region_set is None else list(self.region_set.regions)


class BackgroundRow(Base):
    """Provenance of one assembled background: target and settings; its runs are its `BackgroundInput` rows."""

    __tablename__ = "backgrounds"

    id: Mapped[int] = mapped_column(primary_key=True)
    target_run_id: Mapped[int | None] = mapped_column(sa.ForeignKey("runs.id", ondelete="SET NULL"), index=True)
    target_obs_id: Mapped[int] = mapped_column(sa.BigInteger, index=True)
    binning_id: Mapped[int | None] = mapped_column(sa.ForeignKey("binnings.id", ondelete="SET NULL"))
    exclusion_id: Mapped[int | None] = mapped_column(sa.ForeignKey("exclusion_settings.id", ondelete="SET NULL"))
    #: The selection settings and what the selection did (candidates left after each criterion).
    selection: Mapped[dict]
    n_runs: Mapped[int]
    ontime_s: Mapped[float]
    smoothing: Mapped[str] = mapped_column(sa.String(16))
    output_path: Mapped[str | None] = mapped_column(sa.String(2048))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BackgroundInput(Base):
    """One piece that went into a background: its lineage, kept when the piece or run is gone.

    ``file_sha256`` and ``piece_created_at`` are the piece's state when the background was built,
    so a background whose inputs were re-indexed since can be found (stale).
    """

    __tablename__ = "background_inputs"

    id: Mapped[int] = mapped_column(primary_key=True)
    background_id: Mapped[int] = mapped_column(sa.ForeignKey("backgrounds.id", ondelete="CASCADE"), index=True)
    piece_id: Mapped[int | None] = mapped_column(sa.ForeignKey("pieces.id", ondelete="SET NULL"), index=True)
    run_id: Mapped[int | None] = mapped_column(sa.ForeignKey("runs.id", ondelete="SET NULL"), index=True)
    obs_id: Mapped[int] = mapped_column(sa.BigInteger, index=True)
    file_sha256: Mapped[str | None] = mapped_column(sa.String(64))
    piece_created_at: Mapped[datetime | None]
    #: The piece's weight in the sum (1 for plain summation).
    weight: Mapped[float | None]


class RunFlag(Base):
    """A quality flag on a run (by OBS_ID, in every datastore), with who set it, when and why.

    Flags are a history: the newest row of an OBS_ID is in force. They live apart from ``runs``
    so re-indexing never touches them.
    """

    __tablename__ = "run_flags"

    id: Mapped[int] = mapped_column(primary_key=True)
    obs_id: Mapped[int] = mapped_column(sa.BigInteger, index=True)
    flag: Mapped[str] = mapped_column(sa.String(8))
    reason: Mapped[str | None] = mapped_column(sa.Text)
    author: Mapped[str | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ConditionModelRow(Base):
    """A fitted model of how the background changes with observing conditions, cached per archive state.

    ``archive_digest`` identifies the pieces it was fitted on; when the archive changes, the
    digest changes and the model is fitted anew.
    """

    __tablename__ = "condition_models"
    __table_args__ = (sa.UniqueConstraint("binning_id", "exclusion_id", "kind", "archive_digest"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    binning_id: Mapped[int] = mapped_column(sa.ForeignKey("binnings.id", ondelete="CASCADE"), index=True)
    exclusion_id: Mapped[int] = mapped_column(sa.ForeignKey("exclusion_settings.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(sa.String(32))
    archive_digest: Mapped[str] = mapped_column(sa.String(64))
    n_runs: Mapped[int]
    params: Mapped[dict]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
