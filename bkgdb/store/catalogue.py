"""The run catalogue: which runs exist, where their files are, and what they look like.

`RunCatalogue` is the entry point of the library: it opens (and migrates) the database, indexes
DL3 datastores into it and answers queries on the runs.
"""

import logging
import time
from contextlib import closing
from dataclasses import dataclass, field
from datetime import date, datetime, timezone

import sqlalchemy as sa
from sqlalchemy.orm import Session

from bkgdb.store.conditions import SELECTABLE_COLUMNS, conditions_expression, typed_column
from bkgdb.store.database import SCHEMA_HEAD, create_engine, current_revision, display_url, hide_secrets, migrate_to_head
from bkgdb.gadf.datastore import DL3Datastore
from bkgdb.errors import ConditionError, DatabaseError, DatabaseNotReadyError
from bkgdb.makers.run import RunJob, exclusion_finder, process_run
from bkgdb.store.models import RUN_STATUS_FAILED, RUN_STATUS_OK, BinningRow, Datastore, ExclusionRow, PieceRow, Run
from bkgdb.makers.piece import COUNTS_DTYPE, EXPOSURE_DTYPE, encode_array
from bkgdb.parallel.processes import WorkerPool

__all__ = ["RunCatalogue", "IndexReport", "DEFAULT_RUN_COLUMNS", "run_jobs", "piece_row", "piece_values"]

log = logging.getLogger(__name__)

#: Columns `bkgdb runs` shows unless told otherwise.
DEFAULT_RUN_COLUMNS = [
    "obs_id", "object_name", "ra_deg", "dec_deg", "zenith_deg", "az_deg", "date_obs",
    "ontime_s", "livetime_s", "n_tels", "muon_eff", "nsb_level", "event_count",
]


@dataclass
class IndexReport:
    """What one `RunCatalogue.index` call did."""

    datastore: str
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    removed: int = 0
    #: Background pieces computed.
    pieces: int = 0
    #: (obs_id, reason) of each run that could not be read.
    failures: list = field(default_factory=list)

    def summary(self):
        return (f"{self.new} new, {self.updated} updated, {self.unchanged} unchanged, "
                f"{self.failed} failed" + (f", {self.removed} removed" if self.removed else "")
                + (f"; {self.pieces} pieces computed" if self.pieces else ""))


def _upsert_insert(session, table):
    """An INSERT on ``table`` with the ON CONFLICT clauses of the session's database."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)


def _insert_if_missing(session, model, key_columns, values):
    """Insert a row unless one with the same key exists; another indexer may add it at any moment."""
    statement = _upsert_insert(session, model.__table__).values(**values)
    session.execute(statement.on_conflict_do_nothing(index_elements=key_columns))


def _get_or_create(session, model, digest, params):
    _insert_if_missing(session, model, ["hash"], {"hash": digest, "params": params})
    return session.scalars(sa.select(model).where(model.hash == digest)).one()


def run_jobs(jobs, workers):
    """Results of `process_run` for each job, in completion order.

    ``workers`` is a number of local processes (1: this process), or an executor with the
    interface of `~bkgdb.parallel.processes.WorkerPool` (a context manager with ``imap_unordered``), such as
    `bkgdb.parallel.cluster.DaskExecutor`. Local workers die with this process (see
    `~bkgdb.parallel.processes.WorkerPool`). Close the generator (``contextlib.closing``) when leaving early,
    so that queued jobs are cancelled at once.
    """
    if not isinstance(workers, int):
        if not jobs:
            return
        with workers as executor:
            yield from executor.imap_unordered(process_run, jobs, name=lambda job: f"run {job.source.obs_id}")
        return
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield process_run(job)
        return
    with WorkerPool(min(workers, len(jobs))) as pool:
        yield from pool.imap_unordered(process_run, jobs)


def piece_values(piece, run_id, binning_id, exclusion_id, file_sha256):
    """The column values of a `~bkgdb.makers.piece.BackgroundPiece`'s database row."""
    n_energy, n_offset = piece.counts.shape
    return dict(
        run_id=run_id, binning_id=binning_id, exclusion_id=exclusion_id, n_energy=n_energy, n_offset=n_offset,
        counts_dtype=COUNTS_DTYPE, exposure_dtype=EXPOSURE_DTYPE,
        counts=encode_array(piece.counts, COUNTS_DTYPE),
        excluded_counts=encode_array(piece.excluded_counts, COUNTS_DTYPE),
        exposure_s=encode_array(piece.exposure_s, EXPOSURE_DTYPE),
        ontime_s=piece.ontime_s, livetime_s=piece.livetime_s,
        n_kept=int(piece.counts.sum()), n_excluded=int(piece.excluded_counts.sum()),
        regions=piece.regions, file_sha256=file_sha256,
    )


def piece_row(piece, run, binning_row, exclusion_row, file_sha256):
    """The database row of a `~bkgdb.makers.piece.BackgroundPiece`."""
    values = piece_values(piece, None, None, None, file_sha256)
    del values["run_id"], values["binning_id"], values["exclusion_id"]
    return PieceRow(run=run, binning=binning_row, exclusion=exclusion_row, **values)


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

    def __init__(self, engine):
        self.engine = engine

    @classmethod
    def open(cls, url=None, upgrade=True, readonly=False):
        """Open the catalogue at ``url`` (see `~bkgdb.store.database.resolve_url`) and apply pending migrations.

        Parameters
        ----------
        url : str, optional
            Database URL or SQLite file path. Default is ``$BKGDB_URL``, then ``./bkgdb.sqlite``.
        upgrade : bool, optional
            Apply pending schema migrations. Default is True.
        readonly : bool or "auto", optional
            True: open for reading only and migrate nothing (an SQLite file one may not write, a
            PostgreSQL role with SELECT only); a schema that is not current is an error.
            ``"auto"``: read-write when the database allows it, else read-only (for commands whose
            writes are optional). Default is False.

        Raises
        ------
        DatabaseError
            The database cannot be reached or migrated.
        DatabaseNotReadyError
            Read-only: the database does not exist or its schema is not current.
        """
        if readonly == "auto":
            try:
                return cls.open(url, upgrade=upgrade, readonly=False)
            except DatabaseError as first_error:
                try:
                    return cls.open(url, upgrade=upgrade, readonly=True)
                except DatabaseError:
                    raise first_error from None
        engine = create_engine(url, readonly=bool(readonly))
        shown = display_url(engine.url.render_as_string(hide_password=False))
        if readonly:
            revision = current_revision(engine)
            if revision != SCHEMA_HEAD:
                engine.dispose()
                raise DatabaseNotReadyError(
                    f"{shown} is at schema revision {revision or 'none (an empty database)'}, this bkgdb "
                    f"needs {SCHEMA_HEAD}: run `bkgdb init` once with write access"
                )
            return cls(engine)
        if upgrade and current_revision(engine) != SCHEMA_HEAD:
            try:
                migrate_to_head(engine)
            except sa.exc.DBAPIError as exc:
                engine.dispose()
                reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
                raise DatabaseError(f"cannot migrate {shown}: {hide_secrets(reason, str(url or ''))}") from None
            except Exception as exc:
                if exc.__class__.__module__.startswith("alembic"):
                    engine.dispose()
                    raise DatabaseError(
                        f"cannot migrate {shown}: {hide_secrets(exc, str(url or ''))} (was it written by a newer bkgdb?)"
                    ) from None
                raise
        return cls(engine)

    @property
    def url(self):
        """The database URL with any password hidden."""
        return display_url(self.engine.url.render_as_string(hide_password=False))

    def session(self):
        return Session(self.engine, expire_on_commit=False)

    # -- indexing -----------------------------------------------------------------------------

    def index(self, path, config=None, jobs=1, progress=None, executor=None):
        """Index a DL3 datastore: add new runs, update changed ones, skip unchanged ones.

        A run is unchanged when its event file has the same size and modification time (or,
        failing that, the same SHA-256) and its obs-index row is the same. A run whose file
        cannot be read is stored with status ``failed`` and its reason; the others are indexed.
        With a ``config``, the background pieces of every configured binning are computed in the
        same pass that reads each file; a run whose file changed gets new pieces, an unchanged run
        that has all its pieces is not read. Each run is committed on its own, so an interrupted
        index keeps what it did (with an ``executor``: one commit per ``executor.commit_batch`` runs or
        ``executor.commit_interval_s`` seconds, whichever comes first).

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
        store = DL3Datastore(path)
        sources = store.runs()
        report = IndexReport(datastore=str(store.path))
        meta = store.meta
        with self.session() as session:
            # Upserts and re-reads, not "select, then add": another indexer may be adding the same rows.
            _insert_if_missing(session, Datastore, ["path"], {"path": str(store.path), "obs_index_meta": meta})
            datastore = session.scalars(sa.select(Datastore).where(Datastore.path == str(store.path))).one()
            datastore.obs_index_meta = meta
            datastore.last_indexed_at = datetime.now(timezone.utc)
            specs = self._piece_specs(session, config)
            session.commit()

            existing = {run.obs_id: run for run in datastore.runs}
            have = self._existing_pieces(session, datastore)
            jobs_to_run = []
            for source in sources:
                run = existing.get(source.obs_id)
                if run is None:  # added to the session once its file has been read
                    run = existing[source.obs_id] = Run(datastore_id=datastore.id, obs_id=source.obs_id)
                job = self._plan_run(run, source, meta, specs, have)
                if job is None:
                    report.unchanged += 1
                else:
                    jobs_to_run.append(job)
            if progress is not None:
                progress(len(sources) - len(jobs_to_run), len(sources))

            by_obs_id = {source.obs_id: source for source in sources}
            # closing(): an exception here (Ctrl-C, SIGTERM) stops the workers at once; every run
            # committed so far stays committed.
            # Local: one commit per run. An executor may ask for batches (a commit per round trip
            # to a remote database costs more than a run) and for a longest wait between commits.
            commit_batch = getattr(executor, "commit_batch", 1)
            commit_interval_s = getattr(executor, "commit_interval_s", 0.0)
            uncommitted, last_commit = 0, time.monotonic()
            with closing(run_jobs(jobs_to_run, jobs if executor is None else executor)) as results:
                for done, result in enumerate(results, start=len(sources) - len(jobs_to_run) + 1):
                    outcome, run = self._store_result(session, existing[result.obs_id], by_obs_id[result.obs_id],
                                                      result, specs)
                    existing[result.obs_id] = run
                    setattr(report, outcome, getattr(report, outcome) + 1)
                    report.pieces += len(result.pieces)
                    if outcome == "failed":
                        report.failures.append((result.obs_id, run.error))
                    uncommitted += 1
                    if uncommitted >= commit_batch or time.monotonic() - last_commit >= commit_interval_s:
                        session.commit()
                        uncommitted, last_commit = 0, time.monotonic()
                    if progress is not None:
                        progress(done, len(sources))

            listed = {source.obs_id for source in sources}
            removed = [run.id for obs_id, run in existing.items() if obs_id not in listed and run.id is not None]
            if removed:  # a DELETE that may find nothing: another indexer may have removed them already
                session.execute(sa.delete(Run).where(Run.id.in_(removed)), execution_options={"synchronize_session": False})
                report.removed += len(removed)
            session.commit()
        if report.new or report.updated or report.removed or report.pieces:
            self.refresh_statistics()
        log.info("indexed %s: %s", report.datastore, report.summary())
        return report

    def refresh_statistics(self):
        """Update the query planner's table statistics after bulk changes.

        Right after thousands of rows arrive PostgreSQL still plans for empty tables (nested
        loops over every piece: seconds instead of milliseconds per background) until autovacuum
        runs; ANALYZE fixes that at once, and VACUUM marks the pages all-visible so the selection's
        covering indexes are read without visiting the tables. SQLite gets ``ANALYZE``.
        """
        if self.engine.dialect.name == "postgresql":
            # VACUUM cannot run inside a transaction.
            with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                connection.exec_driver_sql("VACUUM ANALYZE runs, pieces, datastores")
        else:
            with self.engine.begin() as connection:
                connection.exec_driver_sql("ANALYZE")

    @staticmethod
    def _piece_specs(session, config):
        """(binning, exclusion, binning_id, exclusion_id) of every configured pair, rows made as needed."""
        if config is None:
            return []
        exclusion = config.exclusion
        exclusion_finder(exclusion)  # read the catalogues here: a bad one fails before any worker starts
        exclusion_row = _get_or_create(session, ExclusionRow, exclusion.hash, exclusion.params)
        specs = []
        for binning in config.binnings:
            binning_row = _get_or_create(session, BinningRow, binning.hash, binning.params)
            specs.append((binning, exclusion, binning_row, exclusion_row))
        session.flush()
        return specs

    @staticmethod
    def _existing_pieces(session, datastore):
        rows = session.execute(
            sa.select(PieceRow.run_id, PieceRow.binning_id, PieceRow.exclusion_id)
            .join(Run, Run.id == PieceRow.run_id).where(Run.datastore_id == datastore.id)
        ).all()
        return set(map(tuple, rows))

    @staticmethod
    def _plan_run(run, source, meta, specs, have):
        """The work one run needs, or None when it is up to date."""
        missing = [(b, e) for b, e, b_row, e_row in specs if (run.id, b_row.id, e_row.id) not in have]
        path = source.events_path
        stat = path.stat() if path is not None and path.is_file() else None
        up_to_date = run.status == RUN_STATUS_OK and run.row_sha256 == source.row_sha256
        if (up_to_date and stat is not None and run.file_path == str(path)
                and run.file_size_bytes == stat.st_size and run.file_mtime == stat.st_mtime and not missing):
            return None
        return RunJob(source=source, meta=meta, known_sha256=run.file_sha256 if up_to_date else None,
                      specs=[(b, e) for b, e, _, _ in specs], missing_specs=missing)

    def _store_result(self, session, run, source, result, specs):
        """Write a worker's result into the run's row and its pieces; return the outcome and the row.

        Safe against another indexer of the same datastore: a new run's row is inserted unless
        present (then updated), pieces are upserted.
        """
        rows = {(b, e): (b_row, e_row) for b, e, b_row, e_row in specs}
        outcome = "new" if run.status is None else "updated"
        if run.id is None:
            key = {"datastore_id": run.datastore_id, "obs_id": run.obs_id}
            # Status is set below in this transaction; the placeholder is never committed.
            _insert_if_missing(session, Run, ["datastore_id", "obs_id"], {**key, "status": RUN_STATUS_FAILED})
            run = session.scalars(sa.select(Run).filter_by(**key)).one()
        if result.error is not None and not result.pieces:
            self._store_facts(run, source, result.facts)
            run.status, run.error = RUN_STATUS_FAILED, result.error
            run.file_size_bytes = run.file_mtime = run.file_sha256 = None
            session.execute(sa.delete(PieceRow).where(PieceRow.run_id == run.id))
            return "failed", run
        if not result.changed:
            outcome = "unchanged"
            run.file_mtime, run.file_path = result.mtime, str(source.events_path)  # touched, not changed
        else:
            self._store_facts(run, source, result.facts)
            run.status, run.error = RUN_STATUS_OK, None
            run.file_size_bytes, run.file_mtime, run.file_sha256 = result.size, result.mtime, result.sha256
            if run.id is not None:
                session.execute(sa.delete(PieceRow).where(PieceRow.run_id == run.id))
        session.flush()
        key_columns = ["run_id", "binning_id", "exclusion_id"]
        for binning, exclusion, piece in result.pieces:
            binning_row, exclusion_row = rows[(binning, exclusion)]
            values = piece_values(piece, run.id, binning_row.id, exclusion_row.id, result.sha256)
            statement = _upsert_insert(session, PieceRow.__table__).values(**values)
            session.execute(statement.on_conflict_do_update(
                index_elements=key_columns,
                set_={name: statement.excluded[name] for name in values if name not in key_columns}))
        return outcome, run

    @staticmethod
    def _store_facts(run, source, facts):
        for name, value in vars(facts).items():
            setattr(run, name, value)
        run.file_path = str(source.events_path) if source.events_path else None
        run.row_sha256 = source.row_sha256
        run.indexed_at = datetime.now(timezone.utc)

    # -- queries ------------------------------------------------------------------------------

    def extra_keys(self):
        """The obs-index column names kept in ``Run.extra`` across all datastores."""
        first_runs = sa.select(sa.func.min(Run.id)).group_by(Run.datastore_id)
        with self.session() as session:
            rows = session.scalars(sa.select(Run.extra).where(Run.id.in_(first_runs))).all()
        return sorted({key for extra in rows for key in (extra or {})})

    def select_runs(self, where=(), status=RUN_STATUS_OK, datastore=None):
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
                run.datastore  # load it while the session is open
        return runs

    def run_rows(self, runs, columns=None):
        """Runs as dicts of the named columns (typed columns, ``datastore`` or obs-index columns)."""
        columns = list(columns or DEFAULT_RUN_COLUMNS)
        extra = {key.lower(): key for key in self.extra_keys()}
        getters = []
        for name in columns:
            if name == "datastore":
                getters.append((name, lambda run: run.datastore.path))
            elif typed_column(name) is not None:
                attribute = typed_column(name).key
                getters.append((name, lambda run, a=attribute: getattr(run, a)))
            elif name.lower() in extra:
                key = extra[name.lower()]
                getters.append((name, lambda run, k=key: (run.extra or {}).get(k)))
            else:
                known = ", ".join(sorted(set(SELECTABLE_COLUMNS) | set(extra.values()) | {"datastore"}))
                raise ConditionError(f"unknown column {name!r}; known columns: {known}")
        rows = []
        for run in runs:
            row = {}
            for name, getter in getters:
                value = getter(run)
                row[name] = value.isoformat() if isinstance(value, date) else value
            rows.append(row)
        return rows

    def info(self):
        """A summary of the catalogue: URL, schema revision, datastores and their run counts."""
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
        datastores = [
            {"path": path, "last_indexed_at": last.isoformat() if last else None, "runs": ok,
             "failed_runs": failed, "ontime_h": float(ontime) / 3600.0, "events": int(events)}
            for path, last, ok, failed, ontime, events in counts
        ]
        return {
            "url": self.url,
            "schema_revision": current_revision(self.engine),
            "datastores": datastores,
            "runs": sum(d["runs"] for d in datastores),
            "failed_runs": sum(d["failed_runs"] for d in datastores),
        }
