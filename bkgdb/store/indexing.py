"""Indexing a DL3 datastore into the catalogue: runs' rows and the pieces of every configured binning.

`DatastoreIndexer` plans which runs need reading, sends them to workers (`run_jobs`) and writes
their results (run facts and pieces of any geometry) in the main process; `RunCatalogue.index
<bkgdb.store.catalogue.RunCatalogue.index>` calls it.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable, Collection, Generator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa

from bkgdb.gadf.datastore import DL3Datastore
from bkgdb.gadf.runfacts import read_run_facts
from bkgdb.makers.piece import BackgroundPiece, EncodedPiece
from bkgdb.makers.run import (
    RUN_CHECKS_VERSION,
    RunJob,
    RunResult,
    exclusion_finder,
    load_exclusion_finders,
    process_run,
    process_runs,
    save_exclusion_finders,
)
from bkgdb.parallel.processes import WorkerError, WorkerPool
from bkgdb.store.database import lock_piece_references, session_scope
from bkgdb.store.models import (
    RUN_FACT_COLUMNS,
    RUN_STATUS_FAILED,
    RUN_STATUS_OK,
    BinningRow,
    Datastore,
    ExclusionRow,
    PieceRow,
    RegionSet,
    Run,
)
from bkgdb.store.regions import region_set_ids, regions_digest
from bkgdb.store.settings import get_or_create_setting
from bkgdb.store.upsert import insert_if_missing, upsert_insert

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from bkgdb.config import AnyBinning, BkgdbConfig, ExclusionSettings
    from bkgdb.gadf.datastore import RunSource
    from bkgdb.gadf.runfacts import RunFacts

    #: A configured (binning, exclusion) pair and their setting rows.
    PieceSpec = tuple[AnyBinning, ExclusionSettings, BinningRow, ExclusionRow]

__all__ = ["DatastoreIndexer", "IndexReport", "run_jobs", "piece_row", "piece_values", "refresh_statistics"]

log = logging.getLogger(__name__)


#: Most results written per commit by a local index.
LOCAL_COMMIT_BATCH = 50
#: Longest wait between a local index's commits: what an interrupted index may have to redo.
LOCAL_COMMIT_INTERVAL_S = 0.5


@dataclass
class IndexReport:
    """What one `RunCatalogue.index <bkgdb.store.catalogue.RunCatalogue.index>` call did.

    Each listed run is counted once, in ``new``, ``updated``, ``rechecked``, ``unchanged`` or
    ``failed``. ``rechecked`` runs were catalogued ok by an older bkgdb (an older
    `~bkgdb.makers.run.RUN_CHECKS_VERSION`) and read again, file and obs-index row unchanged:
    they passed today's checks. Those that failed them are counted in ``failed`` and, of those,
    in ``rechecked_failed``.
    """

    datastore: str
    new: int = 0
    updated: int = 0
    rechecked: int = 0
    unchanged: int = 0
    failed: int = 0
    #: Of the failed runs, those catalogued ok by an older bkgdb whose file and row did not change.
    rechecked_failed: int = 0
    removed: int = 0
    #: Background pieces computed.
    pieces: int = 0
    #: (obs_id, reason) of each run that could not be read.
    failures: list = field(default_factory=list)

    def summary(self) -> str:
        """'0 new, 0 updated, 104 rechecked, 0 unchanged, 1 failed; ...': what an index did, on one line."""
        older = self.rechecked + self.rechecked_failed
        return (
            f"{self.new} new, {self.updated} updated, "
            + (f"{self.rechecked} rechecked, " if self.rechecked else "")
            + f"{self.unchanged} unchanged, {self.failed} failed"
            + (f", {self.removed} removed" if self.removed else "")
            + (f"; {self.pieces} pieces computed" if self.pieces else "")
            + (
                f"; {older} run{'s' if older != 1 else ''} catalogued by an older bkgdb re-read with "
                f"this version's checks" + (f" ({self.rechecked_failed} now failed)" if self.rechecked_failed else "")
                if older
                else ""
            )
        )

    @property
    def changed(self) -> bool:
        """Whether rows were added, changed or removed."""
        return bool(self.new or self.updated or self.rechecked or self.removed or self.pieces)


#: Temporary folders of local indexes (the catalogues handed to workers) are named by this and the pid.
WORKER_FOLDER_PREFIX = "bkgdb-index-"
#: The file in such a folder naming the host and the process that made it: only a folder holding
#: it is ever removed by another index (a user's folder may match the name).
WORKER_FOLDER_OWNER = "bkgdb-index-owner"
#: The catalogues handed to the workers, in that folder.
WORKER_FINDERS = "exclusion-finders.pickle"


def worker_folder_owner() -> str:
    """What `WORKER_FOLDER_OWNER` holds for this process: host name and pid."""
    return f"{socket.gethostname()} {os.getpid()}"


def remove_stale_worker_folders(parent: str | None = None) -> list[Path]:
    """Remove the temporary folders that killed indexes left behind; the folders removed.

    An index removes its folder when it ends, unless it is killed (``kill -9``). A folder is stale
    when it is this user's, its `WORKER_FOLDER_OWNER` file names this host and a process that is
    gone. Only the files an index writes there are deleted, and the folder if that empties it: a
    folder of the same name that an index did not make is left as it is.
    """
    removed: list[Path] = []
    if not hasattr(os, "getuid"):  # no owners to compare (Windows)
        return removed
    host = socket.gethostname()
    for folder in Path(parent or tempfile.gettempdir()).glob(f"{WORKER_FOLDER_PREFIX}*-*"):
        try:
            if folder.is_symlink() or not folder.is_dir() or folder.stat().st_uid != os.getuid():
                continue
            owner_host, _, pid = Path(folder, WORKER_FOLDER_OWNER).read_text().strip().rpartition(" ")
            if owner_host != host or not pid.isdigit():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            for name in (WORKER_FINDERS, WORKER_FOLDER_OWNER):
                Path(folder, name).unlink(missing_ok=True)
            try:
                folder.rmdir()
            except OSError:  # it holds something else: not ours to delete
                continue
            removed.append(folder)
        except (OSError, UnicodeDecodeError):  # no owner file, gone meanwhile, or another user's process
            continue
    return removed


def run_jobs(jobs: list[RunJob], workers: Any) -> Generator[RunResult, None, None]:
    """Results of `process_run` for each job, in completion order.

    ``workers`` is a number of local processes (1: this process), or an executor such as
    `bkgdb.parallel.cluster.DaskExecutor` (a context manager whose ``imap_unordered`` takes ``name``
    and ``batched``). In this process and in each of the executor's tasks, the runs go through
    `process_runs`, which reads the next file in a thread while a run is processed. Local workers
    die with this process (see `~bkgdb.parallel.processes.WorkerPool`). Close the generator
    (``contextlib.closing``) when leaving early, so that queued jobs are cancelled at once.
    """
    if not isinstance(workers, int):
        if not jobs:
            return
        with workers as executor:
            yield from executor.imap_unordered(
                process_runs, jobs, name=lambda job: f"run {job.source.obs_id}", batched=True
            )
        return
    remove_stale_worker_folders()
    if workers <= 1 or len(jobs) <= 1:
        yield from process_runs(jobs)
        return
    # The workers get the catalogues this process has read (`DatastoreIndexer` reads them first).
    exclusions = {exclusion for job in jobs for _, exclusion in job.specs + job.missing_specs}
    with tempfile.TemporaryDirectory(prefix=f"{WORKER_FOLDER_PREFIX}{os.getpid()}-") as folder:
        Path(folder, WORKER_FOLDER_OWNER).write_text(worker_folder_owner())
        finders = Path(folder, WORKER_FINDERS)
        save_exclusion_finders(exclusions, finders)
        with WorkerPool(min(workers, len(jobs)), load_exclusion_finders, (str(finders),)) as pool:
            yield from pool.imap_unordered(process_run, jobs)


def piece_values(
    piece: BackgroundPiece | EncodedPiece,
    run_id: int | None,
    binning_id: int | None,
    exclusion_id: int | None,
    file_sha256: str | None,
    region_set_id: int | None = None,
) -> dict:
    """The column values of a piece's database row, of any geometry (encoded here if it is not yet).

    ``region_set_id`` refers to the piece's regions as stored (`~bkgdb.store.regions.region_set_ids`).
    """
    encoded = piece if isinstance(piece, EncodedPiece) else EncodedPiece.of(piece)
    return dict(
        run_id=run_id,
        binning_id=binning_id,
        exclusion_id=exclusion_id,
        shape=list(encoded.shape),
        counts_dtype=encoded.counts_dtype,
        exposure_dtype=encoded.exposure_dtype,
        counts=encoded.encoded_counts,
        excluded_counts=encoded.encoded_excluded_counts,
        exposure_s=encoded.encoded_exposure,
        ontime_s=encoded.ontime_s,
        livetime_s=encoded.livetime_s,
        n_kept=encoded.n_kept,
        n_excluded=encoded.n_excluded,
        region_set_id=region_set_id,
        file_sha256=file_sha256,
    )


def piece_row(
    piece: BackgroundPiece, run: Run, binning_row: BinningRow, exclusion_row: ExclusionRow, file_sha256: str | None
) -> PieceRow:
    """The database row of a `~bkgdb.makers.piece.BackgroundPiece`, for a catalogue being made.

    Its regions, if any, come as a new `~bkgdb.store.models.RegionSet`: a list already stored is
    not looked up (the index shares them, `~bkgdb.store.regions.region_set_ids`).
    """
    values = piece_values(piece, None, None, None, file_sha256)
    del values["run_id"], values["binning_id"], values["exclusion_id"], values["region_set_id"]
    region_set = RegionSet(sha256=regions_digest(piece.regions), regions=piece.regions) if piece.regions else None
    return PieceRow(run=run, binning=binning_row, exclusion=exclusion_row, region_set=region_set, **values)


def refresh_statistics(engine: sa.engine.Engine) -> None:
    """Update the query planner's table statistics after bulk changes.

    Right after thousands of rows arrive PostgreSQL still plans for empty tables (nested
    loops over every piece: seconds instead of milliseconds per background) until autovacuum
    runs; ANALYZE fixes that at once, and VACUUM marks the pages all-visible so the selection's
    covering indexes are read without visiting the tables. SQLite gets ``ANALYZE``.
    """
    if engine.dialect.name == "postgresql":
        # VACUUM cannot run inside a transaction.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql("VACUUM ANALYZE runs, pieces, datastores")
    else:
        with engine.begin() as connection:
            connection.exec_driver_sql("ANALYZE")


class DatastoreIndexer:
    """Brings the catalogue's rows of one datastore up to date (see `run`).

    Parameters
    ----------
    engine : `sqlalchemy.engine.Engine`
        The catalogue's database, schema up to date.
    """

    def __init__(self, engine: sa.engine.Engine) -> None:
        self.engine = engine

    def run(
        self,
        path: Any,
        config: Any = None,
        jobs: int = 1,
        progress: Callable[[int, int], None] | None = None,
        executor: Any = None,
    ) -> IndexReport:
        """Index the datastore at ``path``; the arguments are those of `RunCatalogue.index
        <bkgdb.store.catalogue.RunCatalogue.index>`."""
        store = DL3Datastore(path)
        sources = store.runs()
        report = IndexReport(datastore=str(store.path))
        meta = store.meta
        with session_scope(self.engine) as session:
            _commit_without_waiting_for_disk(session)
            # Upserts and re-reads, not "select, then add": another indexer may be adding the same rows.
            insert_if_missing(session, Datastore, ["path"], {"path": str(store.path), "obs_index_meta": meta})
            datastore = session.scalars(sa.select(Datastore).where(Datastore.path == str(store.path))).one()
            datastore.obs_index_meta = meta
            datastore.last_indexed_at = datetime.now(UTC)
            specs = self._piece_specs(session, config)
            session.commit()

            existing = {run.obs_id: run for run in datastore.runs}
            have = self._existing_pieces(session, datastore)
            with_pieces = {run_id for run_id, *_ in have}
            jobs_to_run = []
            for source in sources:
                run = existing.get(source.obs_id)
                if run is None:  # added to the session once its file has been read
                    run = existing[source.obs_id] = Run(datastore_id=datastore.id, obs_id=source.obs_id)
                job = self._plan_run(run, source, meta, specs, have, with_pieces)
                if job is None:
                    report.unchanged += 1
                else:
                    jobs_to_run.append(job)
            older = sum(1 for run in existing.values() if run.status == RUN_STATUS_OK and _checked_by_older(run))
            if older:
                log.info(
                    "%s: %d runs catalogued by an older bkgdb are read again with this version's checks",
                    store.path,
                    older,
                )
            if progress is not None:
                progress(len(sources) - len(jobs_to_run), len(sources))

            by_obs_id = {source.obs_id: source for source in sources}
            writer = _ResultWriter(session, datastore.id, meta, specs)
            # closing(): an exception here (Ctrl-C, SIGTERM) stops the workers at once; every run
            # committed so far stays committed.
            # Results are written in batches, one statement per table (a run's statements cost as
            # much as making its pieces), and committed at least every LOCAL_COMMIT_INTERVAL_S: an
            # interrupted index loses at most that much work. An executor may ask for other limits
            # (a commit per round trip to a remote database costs more).
            commit_batch = getattr(executor, "commit_batch", LOCAL_COMMIT_BATCH)
            commit_interval_s = getattr(executor, "commit_interval_s", LOCAL_COMMIT_INTERVAL_S)
            batch: list[RunResult] = []
            last_commit = time.monotonic()
            with closing(run_jobs(jobs_to_run, jobs if executor is None else executor)) as results:
                try:
                    for done, result in enumerate(results, start=len(sources) - len(jobs_to_run) + 1):
                        batch.append(result)
                        if len(batch) >= commit_batch or time.monotonic() - last_commit >= commit_interval_s:
                            self._write(writer, batch, existing, by_obs_id, report)
                            session.commit()
                            batch, last_commit = [], time.monotonic()
                        if progress is not None:
                            progress(done, len(sources))
                except WorkerError:
                    # A worker died on some run: the results already back are sound, keep them.
                    self._write(writer, batch, existing, by_obs_id, report)
                    session.commit()
                    raise
            if batch:
                self._write(writer, batch, existing, by_obs_id, report)

            listed = {source.obs_id for source in sources}
            removed = [run.id for obs_id, run in existing.items() if obs_id not in listed and run.id is not None]
            if removed:  # a DELETE that may find nothing: another indexer may have removed them already
                session.execute(
                    sa.delete(Run).where(Run.id.in_(removed)), execution_options={"synchronize_session": False}
                )
                report.removed += len(removed)
            session.commit()
        return report

    @staticmethod
    def _piece_specs(session: Session, config: BkgdbConfig | None) -> list[PieceSpec]:
        """(binning, exclusion, binning_id, exclusion_id) of every configured pair, rows made as needed."""
        if config is None:
            return []
        exclusion = config.exclusion
        exclusion_finder(exclusion)  # read the catalogues here: a bad one fails before any worker starts
        exclusion_row = get_or_create_setting(session, ExclusionRow, exclusion.hash, exclusion.params)
        specs = []
        for binning in config.binnings:
            binning_row = get_or_create_setting(session, BinningRow, binning.hash, binning.params)
            specs.append((binning, exclusion, binning_row, exclusion_row))
        session.flush()
        return specs

    @staticmethod
    def _existing_pieces(session: Session, datastore: Datastore) -> set[tuple[int, ...]]:
        rows = session.execute(
            sa.select(PieceRow.run_id, PieceRow.binning_id, PieceRow.exclusion_id)
            .join(Run, Run.id == PieceRow.run_id)
            .where(Run.datastore_id == datastore.id)
        ).all()
        return set(map(tuple, rows))

    @staticmethod
    def _plan_run(
        run: Run,
        source: RunSource,
        meta: dict,
        specs: list[PieceSpec],
        have: set[tuple[int, ...]],
        with_pieces: Collection[int] = (),
    ) -> RunJob | None:
        """The work one run needs, or None when it is up to date.

        A run checked by an older bkgdb is not up to date, whatever its file: it is read and
        described anew (all ``specs`` made again) and, if it has pieces of any setting
        (``with_pieces``: run ids), its events are checked even when no piece is asked for.
        """
        missing = [(b, e) for b, e, b_row, e_row in specs if (run.id, b_row.id, e_row.id) not in have]
        path = source.events_path
        stat = path.stat() if path is not None and path.is_file() else None
        older = _checked_by_older(run)
        up_to_date = run.status == RUN_STATUS_OK and run.row_sha256 == source.row_sha256 and not older
        if (
            up_to_date
            and stat is not None
            and run.file_path == str(path)
            and run.file_size_bytes == stat.st_size
            and run.file_mtime == stat.st_mtime
            and not missing
        ):
            return None
        return RunJob(
            source=source,
            meta=meta,
            known_sha256=run.file_sha256 if up_to_date else None,
            specs=[(b, e) for b, e, _, _ in specs],
            missing_specs=missing,
            check_events=older and run.id in with_pieces,
        )

    @staticmethod
    def _write(
        writer: _ResultWriter,
        batch: list[RunResult],
        existing: dict[int, Run],
        by_obs_id: dict[int, RunSource],
        report: IndexReport,
    ) -> None:
        """Write a batch of results and count their outcomes in ``report``."""
        for result, (outcome, run) in zip(batch, writer.write(batch, existing, by_obs_id), strict=True):
            existing[result.obs_id] = run
            if outcome == "rechecked_failed":  # a failed run, and one that an older bkgdb had let through
                report.rechecked_failed += 1
                outcome = "failed"
            setattr(report, outcome, getattr(report, outcome) + 1)
            report.pieces += len(result.pieces)
            if outcome == "failed":
                report.failures.append((result.obs_id, run.error))


def _commit_without_waiting_for_disk(session: Session) -> None:
    """On PostgreSQL, let the session's commits return before the server has flushed them to disk.

    An index commits often (at least every ``LOCAL_COMMIT_INTERVAL_S``); waiting for each flush
    costs more than writing. A crash of the database server (not of the indexer) within a
    fraction of a second of a commit may lose that commit, never half of it; the next index redoes
    those runs. SQLite connections make the same trade-off (``synchronous=NORMAL``) when they are opened.
    """
    if session.get_bind().dialect.name != "postgresql":
        return

    def asynchronous(session: Session, transaction: Any, connection: sa.Connection) -> None:
        connection.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")

    sa.event.listen(session, "after_begin", asynchronous)


def _checked_by_older(run: Run) -> bool:
    """Whether a catalogued run's status comes from older run checks than this bkgdb's."""
    return run.id is not None and (run.checks_version or 0) < RUN_CHECKS_VERSION


#: The lengths of the run facts stored as bounded text (instrument, telescopes, object name).
_FACT_TEXT_LENGTHS = {
    name: length
    for name in RUN_FACT_COLUMNS
    if (length := getattr(Run.__table__.c[name].type, "length", None)) is not None
}


def _store_facts(run: Run, source: RunSource, facts: RunFacts | None) -> None:
    # The model lists the facts a run row holds; a fact it does not know is a programming error.
    unknown = set(vars(facts)) - set(RUN_FACT_COLUMNS)
    if unknown:
        raise TypeError(f"run facts without a Run column: {', '.join(sorted(unknown))}")
    for name in RUN_FACT_COLUMNS:
        value = getattr(facts, name, None)
        if isinstance(value, str):
            # A header text longer than its column (a CONTINUE card) would stop a PostgreSQL index
            # altogether ("value too long"); SQLite keeps it whole. Cut alike on both.
            value = value[: _FACT_TEXT_LENGTHS.get(name) or None]
        setattr(run, name, value)
    run.file_path = str(source.events_path) if source.events_path else None
    run.row_sha256 = source.row_sha256
    run.checks_version = RUN_CHECKS_VERSION
    run.indexed_at = datetime.now(UTC)


#: The key of a piece row; the other columns are replaced when the key is present.
_PIECE_KEY = ["run_id", "binning_id", "exclusion_id"]


class _ResultWriter:
    """Writes workers' results into one datastore's rows, a batch of runs at a time.

    Safe against another indexer of the same datastore: new runs' rows are inserted unless
    present (then updated), pieces are upserted. Each table gets one statement per batch (with
    many parameter sets), made once per index.
    """

    def __init__(self, session: Session, datastore_id: int, meta: dict, specs: list[PieceSpec]) -> None:
        self.session = session
        self.datastore_id, self.meta = datastore_id, meta
        self.settings = [(binning, exclusion) for binning, exclusion, *_ in specs]
        runs = cast(sa.Table, Run.__table__)
        # Status is set in the same transaction; the placeholder is never committed.
        self.new_runs = upsert_insert(session, runs).on_conflict_do_nothing(index_elements=["datastore_id", "obs_id"])
        self.upsert_pieces: Any = None
        #: Deletes a run's pieces of another file than ``sha`` (or of an unknown one).
        pieces = cast(sa.Table, PieceRow.__table__)  # a Core statement: run once per parameter set
        self.former_pieces = sa.delete(pieces).where(
            pieces.c.run_id == sa.bindparam("run"),
            sa.or_(pieces.c.file_sha256.is_(None), pieces.c.file_sha256 != sa.bindparam("sha")),
        )

    def setting_ids(self) -> dict[tuple, tuple[int, int]]:
        """(binning id, exclusion id) of each (binning, exclusion) of the index, made again if gone.

        Looked up in each batch's transaction, under `~bkgdb.store.database.lock_piece_references`:
        a ``cache --drop`` between two batches may have deleted a setting that had no piece yet.
        """
        session = self.session
        return {
            (binning, exclusion): (
                get_or_create_setting(session, BinningRow, binning.hash, binning.params).id,
                get_or_create_setting(session, ExclusionRow, exclusion.hash, exclusion.params).id,
            )
            for binning, exclusion in self.settings
        }

    def write(
        self, results: list[RunResult], existing: dict[int, Run], by_obs_id: dict[int, RunSource]
    ) -> list[tuple[str, Run]]:
        """Write the results into their runs' rows and pieces; the outcome and row of each run.

        What the pieces refer to (settings, region sets) is looked up in this transaction, under a
        lock no drop of pieces takes while it lasts: a batch never refers to a row deleted meanwhile,
        and a drop never deletes what a batch just wrote.
        """
        session = self.session
        lock_piece_references(session)
        setting_ids = self.setting_ids() if results else {}
        runs = [existing[result.obs_id] for result in results]
        outcomes = ["new" if run.status is None else "updated" for run in runs]
        new = [run.obs_id for run in runs if run.id is None]
        if new:
            session.execute(
                self.new_runs,
                [{"datastore_id": self.datastore_id, "obs_id": obs_id, "status": RUN_STATUS_FAILED} for obs_id in new],
            )
            rows = session.scalars(
                sa.select(Run).where(Run.datastore_id == self.datastore_id, Run.obs_id.in_(new))
            ).all()
            by_new_obs_id = {row.obs_id: row for row in rows}
            runs = [by_new_obs_id[run.obs_id] if run.id is None else run for run in runs]
        failed: list[int] = []
        renewed: list[dict] = []
        made = []
        for number, (result, run) in enumerate(zip(results, runs, strict=True)):
            source = by_obs_id[result.obs_id]
            # Catalogued ok by an older bkgdb, the same file and row: read again for today's checks alone.
            rechecked = (
                _checked_by_older(run)
                and run.status == RUN_STATUS_OK
                and run.file_sha256 == result.sha256
                and run.row_sha256 == source.row_sha256
            )
            if result.error is not None and not result.pieces:
                _store_facts(run, source, read_run_facts(source, self.meta, result.header))
                run.status, run.error = RUN_STATUS_FAILED, result.error
                run.file_size_bytes = run.file_mtime = run.file_sha256 = None
                failed.append(run.id)
                outcomes[number] = "rechecked_failed" if rechecked else "failed"
                continue
            if not result.changed:
                outcomes[number] = "unchanged"
                run.file_mtime, run.file_path = result.mtime, str(source.events_path)  # touched, not changed
            else:
                if rechecked:
                    outcomes[number] = "rechecked"
                _store_facts(run, source, read_run_facts(source, self.meta, result.header))
                run.status, run.error = RUN_STATUS_OK, None
                run.file_size_bytes, run.file_mtime, run.file_sha256 = result.size, result.mtime, result.sha256
                renewed.append({"run": run.id, "sha": result.sha256})
            for binning, exclusion, piece in result.pieces:
                made.append((piece, run.id, *setting_ids[(binning, exclusion)], result.sha256))
        # A failed run keeps no piece; a changed one none of its former file. Pieces of the same file
        # stay: another index with other settings may have just committed them (two indexes of a new
        # datastore with two configs, at once, deleted each other's pieces).
        if failed:
            session.execute(sa.delete(PieceRow).where(PieceRow.run_id.in_(failed)))
        if renewed:
            session.execute(self.former_pieces, renewed)
        session.flush()
        set_ids = region_set_ids(session, [piece.regions for piece, *_ in made])
        pieces = [piece_values(*values, set_id) for values, set_id in zip(made, set_ids, strict=True)]
        if pieces:
            if self.upsert_pieces is None:  # the columns are those piece_values gives
                upsert = upsert_insert(session, cast(sa.Table, PieceRow.__table__))
                replaced = {name: upsert.excluded[name] for name in pieces[0] if name not in _PIECE_KEY}
                self.upsert_pieces = upsert.on_conflict_do_update(index_elements=_PIECE_KEY, set_=replaced)
            session.execute(self.upsert_pieces, pieces)
        return list(zip(outcomes, runs, strict=True))
