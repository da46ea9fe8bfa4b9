"""The run catalogue: which runs exist, where their files are, and what they look like.

`RunCatalogue` is the entry point of the library: it opens (and migrates) the database, indexes
DL3 datastores into it and answers queries on the runs.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Collection, Iterable
from datetime import date
from operator import attrgetter
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from bkgdb.errors import (
    BkgdbError,
    ConditionError,
    DatabaseError,
    DatabaseNotReadyError,
    DatastoreError,
    LinkedDatabaseError,
    ReadOnlyWarning,
)
from bkgdb.store.conditions import Condition, conditions_expression, typed_column
from bkgdb.store.database import (
    SCHEMA_HEAD,
    catalogue_revision,
    create_engine,
    current_revision,
    display_url,
    hide_secrets,
    migrate_to_head,
    resolve_url,
    session_scope,
)
from bkgdb.store.indexing import DatastoreIndexer, IndexReport, refresh_statistics
from bkgdb.store.models import RUN_SELECTABLE_COLUMNS, RUN_STATUS_FAILED, RUN_STATUS_OK, Datastore, Run

__all__ = ["RunCatalogue", "DEFAULT_RUN_COLUMNS"]

log = logging.getLogger(__name__)

#: Columns `bkgdb runs` shows unless told otherwise.
DEFAULT_RUN_COLUMNS = [
    "obs_id",
    "object_name",
    "ra_deg",
    "dec_deg",
    "zenith_deg",
    "az_deg",
    "date_obs",
    "ontime_s",
    "livetime_s",
    "n_tels",
    "muon_eff",
    "nsb_level",
    "event_count",
]


def _extra_getter(key: str) -> Callable[[Run], Any]:
    """Reads obs-index column ``key`` of a run (from ``Run.extra``)."""
    return lambda run: (run.extra or {}).get(key)


class RunCatalogue:
    """The catalogue of indexed runs in one database.

    Parameters
    ----------
    engine : `sqlalchemy.engine.Engine`
        An engine on a database whose schema is up to date; `RunCatalogue.open` makes one.

    Examples
    --------
    >>> catalogue = RunCatalogue.open("sqlite:///bkgdb.sqlite")  # doctest: +SKIP
    >>> report = catalogue.index("$GAMMAPY_DATA/hess-dl3-dr1")  # doctest: +SKIP
    >>> runs = catalogue.select_runs(["zenith<30"])  # doctest: +SKIP
    """

    def __init__(self, engine: sa.engine.Engine, url: str | None = None) -> None:
        self.engine = engine
        self._url = url

    @classmethod
    def open(cls, url: str | None = None, upgrade: bool = True, readonly: bool | str = False) -> RunCatalogue:
        """Open the catalogue at ``url`` (see `~bkgdb.store.database.resolve_url`) and apply pending migrations.

        A database that holds tables and is not a bkgdb catalogue is refused, whatever ``readonly``
        says, and left as it is.

        Parameters
        ----------
        url : str, optional
            Database URL or SQLite file path. Default is ``$BKGDB_URL``, then ``./bkgdb.sqlite``.
        upgrade : bool, optional
            Create the schema of an empty database, or apply pending schema migrations (never
            when reading only). Default is True.
        readonly : bool or "auto", optional
            True: open for reading only, creating and migrating nothing (an SQLite file one may not
            write, a PostgreSQL role with SELECT only); a database that does not exist or whose
            schema is not current is an error. ``"auto"``: the same checks, then read-write when the
            database allows it, else read-only (for commands whose writes are optional). Default
            is False.

        Raises
        ------
        ForeignDatabaseError
            The database holds other tables.
        DatabaseError
            The database cannot be reached or migrated.
        DatabaseNotReadyError
            Read-only or ``"auto"``: the database does not exist or its schema is not current.
        """
        if readonly == "auto":
            # Checked read-only first: a read-write engine would create a missing SQLite file.
            reader = cls.open(url, readonly=True)
            try:
                writer = create_engine(url)
            except LinkedDatabaseError as exc:  # read-only for a reason the user would not guess
                warnings.warn(f"{exc}: opened read-only", ReadOnlyWarning, stacklevel=2)
                return reader
            except DatabaseError:
                return reader
            reader.engine.dispose()
            return cls(writer, reader._url)
        engine = create_engine(url, readonly=bool(readonly))
        # The URL as given: a read-only SQLite engine's is a ``file:`` URI.
        shown = display_url(resolve_url(url))
        try:
            revision = catalogue_revision(engine, shown)
        except BaseException:
            engine.dispose()
            raise
        if readonly:
            if revision != SCHEMA_HEAD:
                engine.dispose()
                # Revisions are numbered: a higher one is a newer bkgdb's, which init cannot undo.
                remedy = (
                    "it was written by a newer bkgdb: upgrade bkgdb"
                    if revision is not None and revision > SCHEMA_HEAD
                    else "run `bkgdb init` once with write access"
                )
                raise DatabaseNotReadyError(
                    f"{shown} is at schema revision {revision or 'none (an empty database)'}, this bkgdb "
                    f"needs {SCHEMA_HEAD}: {remedy}"
                )
            return cls(engine, shown)
        if upgrade and revision != SCHEMA_HEAD:
            try:
                migrate_to_head(engine)
            except sa.exc.DBAPIError as exc:
                engine.dispose()
                reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
                raise DatabaseError(f"cannot migrate {shown}: {hide_secrets(reason, str(url or ''))}") from None
            except Exception as exc:
                engine.dispose()
                if exc.__class__.__module__.startswith("alembic"):
                    raise DatabaseError(
                        f"cannot migrate {shown}: {hide_secrets(exc, str(url or ''))} "
                        "(was it written by a newer bkgdb?)"
                    ) from None
                raise
        return cls(engine, shown)

    @property
    def url(self) -> str:
        """The database URL as opened, with any password hidden (not a read-only SQLite engine's ``file:`` URI)."""
        return self._url or display_url(self.engine.url.render_as_string(hide_password=False))

    def session(self) -> Session:
        """A new session on the catalogue (`~bkgdb.store.database.session_scope`); use it as a context manager."""
        return session_scope(self.engine)

    # -- indexing -----------------------------------------------------------------------------

    def index(
        self,
        path: str | Path,
        config: Any = None,
        jobs: int = 1,
        progress: Callable[[int, int], None] | None = None,
        executor: Any = None,
    ) -> IndexReport:
        """Index a DL3 datastore: add new runs, update changed ones, skip unchanged ones.

        A run is unchanged when its event file has the same size and modification time (or,
        failing that, the same SHA-256) and its obs-index row is the same. A run whose file
        cannot be read is stored with status ``failed`` and its reason; the others are indexed.
        With a ``config``, the background pieces of every configured binning are computed in the
        same pass that reads each file; a run whose file changed gets new pieces, an unchanged run
        that has all its pieces is not read. Results are committed at least every 0.5 s (50 runs at most
        per commit), so an interrupted index keeps what it did up to then (with an ``executor``: one
        commit per ``executor.commit_batch`` runs or ``executor.commit_interval_s`` seconds, whichever
        comes first).

        Parameters
        ----------
        path : str or `~pathlib.Path`
            The datastore folder (with obs-index and hdu-index files).
        config : `~bkgdb.config.BkgdbConfig`, optional
            Binnings and exclusion settings whose pieces to compute. Default is None (no pieces).
        jobs : int, optional
            Worker processes that read files and make pieces. Default is 1 (no workers).
        progress : callable, optional
            Called as ``progress(done, total)`` after each run. Default is None.
        executor : object, optional
            Where the per-run work runs instead of ``jobs`` local processes, e.g. a
            `bkgdb.parallel.cluster.DaskExecutor`; results are still written here. Default is None.

        Returns
        -------
        report : `IndexReport`
        """
        report = DatastoreIndexer(self.engine).run(path, config, jobs=jobs, progress=progress, executor=executor)
        if report.changed:
            self.refresh_statistics()
        log.info("indexed %s: %s", report.datastore, report.summary())
        return report

    def refresh_statistics(self) -> None:
        """Update the query planner's table statistics after bulk changes.

        See `~bkgdb.store.indexing.refresh_statistics`.
        """
        refresh_statistics(self.engine)

    # -- queries ------------------------------------------------------------------------------

    def protected_paths(self, names: Collection[str] = (), about_to_index: Iterable[str | Path] = ()) -> list[Path]:
        """Files and folders an output of bkgdb never replaces: the database's file(s) and the
        catalogued datastores (`~bkgdb.outputs.catalogue_paths`), and, for outputs named as in
        ``names``, the catalogued runs' files and every file a catalogued datastore's hdu-index
        points to (IRFs too), which may lie outside its folder (``FILE_DIR`` ``../data``).

        ``about_to_index`` are datastore folders a command indexes after checking its outputs
        (``validate``): kept as if catalogued already.
        """
        from bkgdb.gadf.datastore import hdu_index_files
        from bkgdb.outputs import catalogue_paths

        database_file = None
        files: set[Path] = set()
        with self.session() as session:
            datastores = session.scalars(sa.select(Datastore.path)).all()
            if self.engine.dialect.name == "sqlite":
                # The file SQLite opened, whatever the form of the URL (a read-only one is a file: URI).
                database_file = next(
                    row[2] for row in session.execute(sa.text("PRAGMA database_list")) if row[1] == "main"
                )
            if names:
                # Compared by name in the database (a scan in SQL, not 100,000 rows in Python); stored
                # resolved, resolved again in case a link changed since the index.
                named = sa.or_(*(Run.file_path.endswith(f"{os.sep}{name}", autoescape=True) for name in names))
                paths = session.scalars(sa.select(Run.file_path).where(named)).all()
                files.update(Path(path).resolve() for path in paths if path)
        # A folder about to be indexed that is catalogued already is read once.
        datastores = list(dict.fromkeys([*datastores, *(str(Path(folder).resolve()) for folder in about_to_index)]))
        for folder in datastores if names else ():
            try:
                files.update(hdu_index_files(folder, names))
            except (DatastoreError, OSError):  # moved or damaged since: its runs' files are kept above
                continue
        return catalogue_paths(database_file, datastores) + sorted(files)

    def extra_keys(self) -> list[str]:
        """The obs-index column names kept in ``Run.extra`` across all datastores."""
        first_runs = sa.select(sa.func.min(Run.id)).group_by(Run.datastore_id)
        with self.session() as session:
            rows = session.scalars(sa.select(Run.extra).where(Run.id.in_(first_runs))).all()
        return sorted({key for extra in rows for key in (extra or {})})

    def select_runs(
        self,
        where: Iterable[str | Condition] = (),
        status: str | None = RUN_STATUS_OK,
        datastore: str | Path | None = None,
    ) -> list[Run]:
        """Runs matching all conditions, ordered by datastore and OBS_ID.

        Parameters
        ----------
        where : iterable of str or `~bkgdb.store.conditions.Condition`
            Conditions such as ``"zenith<30"`` or ``"object=Crab Nebula"``. Default is none.
        status : str or None, optional
            ``"ok"``, ``"failed"`` or None for both. Default is ``"ok"``.
        datastore : str or `~pathlib.Path`, optional
            Only runs of this datastore folder. Default is all.

        Returns
        -------
        runs : list of `~bkgdb.store.models.Run`
        """
        where = list(where)
        if datastore is not None:
            self.check_datastore(datastore)
        query = sa.select(Run).join(Run.datastore)
        if where:
            query = query.where(conditions_expression(where, self.extra_keys()))
        if status is not None:
            query = query.where(Run.status == status)
        if datastore is not None:
            query = query.where(Datastore.at(datastore))
        query = query.order_by(Datastore.path, Run.obs_id)
        with self.session() as session:
            runs = session.scalars(query).all()
            for run in runs:
                _ = run.datastore  # load it while the session is open
        return list(runs)

    def check_datastore(self, path: str | Path) -> None:
        """Fail unless datastore folder ``path`` is catalogued: asked for its runs, it would seem to have none.

        Raises
        ------
        BkgdbError
            It is not in the catalogue (the error names the indexed datastores).
        """
        with self.session() as session:
            if session.scalar(sa.select(Datastore.id).where(Datastore.at(path))) is not None:
                return
            indexed = session.scalars(sa.select(Datastore.path).order_by(Datastore.path)).all()
        raise BkgdbError(
            f"datastore {Path(path).expanduser().resolve()} is not in the catalogue: index it first "
            f"(indexed datastores: {', '.join(indexed) or 'none'})"
        )

    def run_rows(self, runs: Iterable[Run], columns: Iterable[str] | None = None) -> list[dict]:
        """Runs as dicts of the named columns (typed columns, ``datastore`` or obs-index columns)."""
        columns = list(columns or DEFAULT_RUN_COLUMNS)
        extra = {key.lower(): key for key in self.extra_keys()}
        getters: list[tuple[str, Callable[[Run], Any]]] = []
        for name in columns:
            if name == "datastore":
                getters.append((name, lambda run: run.datastore.path))
            elif typed_column(name) is not None:
                getters.append((name, attrgetter(typed_column(name).key)))
            elif name.lower() in extra:
                getters.append((name, _extra_getter(extra[name.lower()])))
            else:
                known = ", ".join(sorted(set(RUN_SELECTABLE_COLUMNS) | set(extra.values()) | {"datastore"}))
                raise ConditionError(f"unknown column {name!r}; known columns: {known}")
        rows = []
        for run in runs:
            row = {}
            for name, getter in getters:
                value = getter(run)
                row[name] = value.isoformat() if isinstance(value, date) else value
            rows.append(row)
        return rows

    def info(self) -> dict:
        """A summary of the catalogue: URL, schema revision, datastores with their run counts and instruments."""
        with self.session() as session:
            counts = session.execute(
                sa.select(
                    Datastore.path,
                    Datastore.last_indexed_at,
                    sa.func.count(Run.id).filter(Run.status == RUN_STATUS_OK),
                    sa.func.count(Run.id).filter(Run.status == RUN_STATUS_FAILED),
                    sa.func.coalesce(sa.func.sum(Run.ontime_s).filter(Run.status == RUN_STATUS_OK), 0.0),
                    sa.func.coalesce(sa.func.sum(Run.event_count).filter(Run.status == RUN_STATUS_OK), 0),
                )
                .outerjoin(Run, Run.datastore_id == Datastore.id)
                .group_by(Datastore.id, Datastore.path, Datastore.last_indexed_at)
                .order_by(Datastore.path)
            ).all()
            # Which instruments each datastore's ok runs are of: "none" for runs without one
            # (catalogued by an older bkgdb, or a file that names none).
            instruments: dict[str, list[str | None]] = {}
            for path, instrument in session.execute(
                sa.select(Datastore.path, Run.instrument)
                .join(Run, Run.datastore_id == Datastore.id)
                .where(Run.status == RUN_STATUS_OK)
                .group_by(Datastore.path, Run.instrument)
            ):
                instruments.setdefault(path, []).append(instrument)
        datastores = [
            {
                "path": path,
                "last_indexed_at": last.isoformat() if last else None,
                "runs": ok,
                "failed_runs": failed,
                # Sorted here: SQLite and PostgreSQL put NULLs at opposite ends.
                "instruments": ", ".join(
                    name or "none" for name in sorted(instruments.get(path, []), key=lambda name: (name is None, name))
                ),
                "ontime_h": float(ontime or 0.0) / 3600.0,
                "events": int(events or 0),
            }
            for path, last, ok, failed, ontime, events in counts
        ]
        return {
            "url": self.url,
            "schema_revision": current_revision(self.engine),
            "datastores": datastores,
            "runs": sum(d["runs"] for d in datastores),
            "failed_runs": sum(d["failed_runs"] for d in datastores),
        }
