"""The run catalogue: which runs exist, where their files are, and what they look like.

`RunCatalogue` is the entry point of the library: it opens (and migrates) the database, indexes
DL3 datastores into it and answers queries on the runs.
"""

import logging
from dataclasses import dataclass, field
from datetime import date, datetime, timezone

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .conditions import SELECTABLE_COLUMNS, conditions_expression, typed_column
from .database import SCHEMA_HEAD, create_engine, current_revision, display_url, upgrade_schema
from .datastore import DL3Datastore
from .errors import ConditionError, DatabaseError
from .indexing import RunJob, exclusion_finder, process_run
from .models import RUN_STATUS_FAILED, RUN_STATUS_OK, BinningRow, Datastore, ExclusionRow, PieceRow, Run
from .pieces import COUNTS_DTYPE, EXPOSURE_DTYPE, encode_array

__all__ = ["RunCatalogue", "IndexReport", "DEFAULT_RUN_COLUMNS"]

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


def _get_or_create(session, model, digest, params):
    row = session.scalars(sa.select(model).where(model.hash == digest)).one_or_none()
    if row is None:
        row = model(hash=digest, params=params)
        session.add(row)
    return row


def run_jobs(jobs, workers):
    """Results of `process_run` for each job, in completion order, in ``workers`` processes."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield process_run(job)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn: workers never inherit the parent's database connections or threads.
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(process_run, job) for job in jobs]
        for future in as_completed(futures):
            yield future.result()


def piece_row(piece, run, binning_row, exclusion_row, file_sha256):
    """The database row of a `~bkgdb.pieces.BackgroundPiece`."""
    n_energy, n_offset = piece.counts.shape
    return PieceRow(
        run=run, binning=binning_row, exclusion=exclusion_row, n_energy=n_energy, n_offset=n_offset,
        counts_dtype=COUNTS_DTYPE, exposure_dtype=EXPOSURE_DTYPE,
        counts=encode_array(piece.counts, COUNTS_DTYPE),
        excluded_counts=encode_array(piece.excluded_counts, COUNTS_DTYPE),
        exposure_s=encode_array(piece.exposure_s, EXPOSURE_DTYPE),
        ontime_s=piece.ontime_s, livetime_s=piece.livetime_s,
        n_kept=int(piece.counts.sum()), n_excluded=int(piece.excluded_counts.sum()),
        regions=piece.regions, file_sha256=file_sha256,
    )


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
    def open(cls, url=None, upgrade=True):
        """Open the catalogue at ``url`` (see `~bkgdb.database.resolve_url`) and apply pending migrations.

        Parameters
        ----------
        url : str, optional
            Database URL or SQLite file path. Default is ``$BKGDB_URL``, then ``./bkgdb.sqlite``.
        upgrade : bool, optional
            Apply pending schema migrations. Default is True.
        """
        engine = create_engine(url)
        if upgrade and current_revision(engine) != SCHEMA_HEAD:
            try:
                upgrade_schema(engine)
            except Exception as exc:
                if exc.__class__.__module__.startswith("alembic"):
                    raise DatabaseError(
                        f"cannot migrate {display_url(engine.url.render_as_string(hide_password=False))}: {exc} "
                        "(was it written by a newer bkgdb?)"
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

    def index(self, path, config=None, jobs=1, progress=None):
        """Index a DL3 datastore: add new runs, update changed ones, skip unchanged ones.

        A run is unchanged when its event file has the same size and modification time (or,
        failing that, the same SHA-256) and its obs-index row is the same. A run whose file
        cannot be read is stored with status ``failed`` and its reason; the others are indexed.
        With a ``config``, the background pieces of every configured binning are computed in the
        same pass that reads each file; a run whose file changed gets new pieces, an unchanged run
        that has all its pieces is not read. Each run is committed on its own, so an interrupted
        index keeps what it did.

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

        Returns
        -------
        report : `IndexReport`
        """
        store = DL3Datastore(path)
        sources = store.runs()
        report = IndexReport(datastore=str(store.path))
        meta = store.meta
        with self.session() as session:
            datastore = session.scalars(
                sa.select(Datastore).where(Datastore.path == str(store.path))
            ).one_or_none()
            if datastore is None:
                datastore = Datastore(path=str(store.path))
                session.add(datastore)
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
            for done, result in enumerate(run_jobs(jobs_to_run, jobs), start=len(sources) - len(jobs_to_run) + 1):
                run = existing[result.obs_id]
                outcome = self._store_result(session, run, by_obs_id[result.obs_id], result, specs)
                setattr(report, outcome, getattr(report, outcome) + 1)
                report.pieces += len(result.pieces)
                if outcome == "failed":
                    report.failures.append((result.obs_id, run.error))
                session.commit()
                if progress is not None:
                    progress(done, len(sources))

            listed = {source.obs_id for source in sources}
            for obs_id, run in existing.items():
                if obs_id not in listed and run.id is not None:
                    session.delete(run)
                    report.removed += 1
            session.commit()
        if report.new or report.updated or report.removed or report.pieces:
            self.refresh_statistics()
        log.info("indexed %s: %s", report.datastore, report.summary())
        return report

    def refresh_statistics(self):
        """Update the query planner's table statistics after bulk changes.

        Right after thousands of rows arrive PostgreSQL still plans for empty tables (nested
        loops over every piece: seconds instead of milliseconds per background) until autovacuum
        runs; ANALYZE fixes that at once. SQLite gets ``PRAGMA optimize``.
        """
        with self.engine.begin() as connection:
            if self.engine.dialect.name == "postgresql":
                connection.exec_driver_sql("ANALYZE runs, pieces, datastores")
            else:
                connection.exec_driver_sql("PRAGMA optimize")

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
        """Write a worker's result into the run's row and its pieces; return the outcome."""
        rows = {(b, e): (b_row, e_row) for b, e, b_row, e_row in specs}
        outcome = "new" if run.status is None else "updated"
        session.add(run)
        if result.error is not None and not result.pieces:
            self._store_facts(run, source, result.facts)
            run.status, run.error = RUN_STATUS_FAILED, result.error
            run.file_size_bytes = run.file_mtime = run.file_sha256 = None
            session.execute(sa.delete(PieceRow).where(PieceRow.run_id == run.id))
            return "failed"
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
        for binning, exclusion, piece in result.pieces:
            binning_row, exclusion_row = rows[(binning, exclusion)]
            session.add(piece_row(piece, run, binning_row, exclusion_row, result.sha256))
        return outcome

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
        where : iterable of str or `~bkgdb.conditions.Condition`
            Conditions such as ``"zenith<30"`` or ``"object=Crab Nebula"``. Default is none.
        status : str or None, optional
            ``"ok"``, ``"failed"`` or None for both. Default is ``"ok"``.
        datastore : str or `~pathlib.Path`, optional
            Only runs of this datastore folder. Default is all.

        Returns
        -------
        runs : list of `~bkgdb.models.Run`
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
