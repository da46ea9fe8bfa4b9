"""The front door: `Catalogue`, one method per ``bkgdb`` command.

>>> from bkgdb import Catalogue
>>> catalogue = Catalogue.open("sqlite:///bkgdb.sqlite", config="configs/hess-dr1.yaml")  # doctest: +SKIP
>>> catalogue.index("$GAMMAPY_DATA/hess-dl3-dr1", jobs=2)  # doctest: +SKIP
>>> built = catalogue.build(23523)  # doctest: +SKIP
>>> catalogue.attach("$GAMMAPY_DATA/hess-dl3-dr1", "hess-dr1-bkgdb")  # doctest: +SKIP

The database is opened (read-write: created or migrated) when a method first needs it, by the store
(`bkgdb.store.catalogue.RunCatalogue`); heavy modules are imported by the methods that use them.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from bkgdb.errors import BkgdbError
from bkgdb.figures import CatalogueFigures
from bkgdb.obs_id import check_obs_id

if TYPE_CHECKING:
    from bkgdb.background import BackgroundBuilder
    from bkgdb.built import BuiltBackground
    from bkgdb.config import BkgdbConfig
    from bkgdb.demo import DemoReport
    from bkgdb.gadf.attach import AttachReport
    from bkgdb.store.catalogue import IndexReport, RunCatalogue
    from bkgdb.validation import ValidationReport

__all__ = [
    "Catalogue",
    "Rows",
    "Attached",
    "Validated",
    "ReadOnly",
    "Progress",
]

#: ``progress(done, total)``, called as work advances.
Progress = Callable[[int, int], None]
#: False: read and write (an empty database is created, an older catalogue migrated); True: read
#: only, a database not created or migrated yet is an error; ``"auto"``: as True, then read-write
#: when allowed. A database holding other tables is refused by all three.
ReadOnly = bool | Literal["auto"]


class Rows(list[dict[str, Any]]):
    """A listing: one dict per row, and the names of its columns in the order to show them."""

    def __init__(self, rows: Iterable[dict[str, Any]] = (), columns: Sequence[str] = ()) -> None:
        super().__init__(rows)
        self.columns = list(columns)


@dataclass
class Attached:
    """What `Catalogue.attach` did: the target's indexing, then the datastore written."""

    indexed: IndexReport
    attached: AttachReport


@dataclass
class Validated:
    """What `Catalogue.validate` did: the datastore's indexing, the report and the files written."""

    indexed: IndexReport
    report: ValidationReport
    rows_file: Path | None = None
    report_page: Path | None = None


class Catalogue(CatalogueFigures):
    """A bkgdb catalogue: runs, their background pieces, and the backgrounds built from them (see `open`)."""

    def __init__(
        self, url: str | None = None, readonly: ReadOnly = False, config: BkgdbConfig | str | Path | None = None
    ) -> None:
        self.url = url
        self.readonly = readonly
        self.config_name = ""
        self.config: BkgdbConfig | None
        #: The config file read, if any: outputs never replace it.
        self.config_path: Path | None = None
        if isinstance(config, (str, Path)):
            from bkgdb.config import load_config

            self.config_name = Path(config).name
            self.config = load_config(config)
            self.config_path = Path(config)
        else:
            self.config = config
        self._store: RunCatalogue | None = None

    @classmethod
    def open(
        cls, url: str | None = None, readonly: ReadOnly = False, config: BkgdbConfig | str | Path | None = None
    ) -> Catalogue:
        """The catalogue at ``url``; methods that build backgrounds need a ``config``.

        Parameters
        ----------
        url : str, optional
            Database URL (``sqlite:///FILE``, ``postgresql://USER@HOST/DB``) or SQLite file. Default
            is ``$BKGDB_URL``, then ``./bkgdb.sqlite``.
        readonly : bool or "auto", optional
            See `ReadOnly`. Default is False.
        config : `~bkgdb.config.BkgdbConfig`, str or `~pathlib.Path`, optional
            The configuration, or its YAML file (read at once: a `ConfigError` is raised here).
        """
        return cls(url, readonly, config)

    def __enter__(self) -> Catalogue:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the database connections (the catalogue opens them again when used)."""
        if self._store is not None:
            self._store.engine.dispose()
            self._store = None

    @property
    def store(self) -> RunCatalogue:
        """The store's `~bkgdb.store.catalogue.RunCatalogue`, opened on first use (or a `DatabaseError`)."""
        if self._store is None:
            from bkgdb.store.catalogue import RunCatalogue

            self._store = RunCatalogue.open(self.url, readonly=self.readonly)
        return self._store

    # -- the catalogue ------------------------------------------------------------------------

    def init(self) -> dict[str, Any]:
        """Create the database or upgrade its schema; return `info`."""
        return self.info()

    def info(self) -> dict[str, Any]:
        """Database (password hidden), schema revision, datastores with their run counts, runs and failed runs."""
        return self.store.info()

    def index(
        self, path: str | Path, jobs: int | None = None, scheduler: str | None = None, progress: Progress | None = None
    ) -> IndexReport:
        """Index DL3 datastore folder ``path`` (changed runs only); with a config, compute its pieces too.

        ``jobs`` worker processes (default: the config's ``njobs``, else 1), or the workers of the
        Dask ``scheduler`` at an address such as ``tcp://host:8786``.
        """
        self._check_scheduler(scheduler, jobs)
        with self._cluster(scheduler) as executor:
            return self._index(path, jobs, executor, progress)

    def _index(self, path: str | Path, jobs: int | None, executor: Any, progress: Progress | None) -> IndexReport:
        """`index` on the processes of ``jobs``, or with the entered Dask ``executor`` (not None)."""
        jobs = 1 if executor is not None else self._jobs(jobs)
        return self.store.index(path, config=self.config, jobs=jobs, executor=executor, progress=progress)

    @staticmethod
    @contextlib.contextmanager
    def _cluster(scheduler: Any) -> Iterator[Any]:
        """The entered `~bkgdb.parallel.cluster.DaskExecutor` of ``scheduler``, or None without one.

        Entered before the catalogue is opened: a scheduler that cannot be reached leaves no trace.
        """
        if not scheduler:
            yield None
            return
        from bkgdb.parallel.cluster import DaskExecutor

        with DaskExecutor(scheduler) as executor:
            yield executor

    def runs(
        self,
        where: Iterable[str] = (),
        failed: bool = False,
        datastore: str | Path | None = None,
        columns: Sequence[str] | None = None,
    ) -> Rows:
        """Catalogued runs matching every ``where`` condition (e.g. ``"zenith<30"``), by datastore and OBS_ID.

        ``failed``: the runs that could not be read, with the reason. ``columns``: catalogue or
        obs-index columns to give (default: the usual ones).
        """
        from bkgdb.store.catalogue import DEFAULT_RUN_COLUMNS

        selected = self.store.select_runs(list(where), status="failed" if failed else "ok", datastore=datastore)
        names = list(columns) if columns else (["obs_id", "datastore", "error"] if failed else DEFAULT_RUN_COLUMNS)
        return Rows(self.store.run_rows(selected, names), names)

    def exclusions(self, obs_id: int, datastore: str | Path | None = None) -> list[dict[str, Any]]:
        """The exclusion regions applied to a run's pieces, per datastore and exclusion setting (none: an error)."""
        from bkgdb.store.pieces import PieceCache

        check_obs_id(obs_id)
        if datastore is not None:
            self.store.check_datastore(datastore)
        found = PieceCache(self.store.engine).exclusions(obs_id, datastore)
        if not found:
            from bkgdb.store.backgrounds import find_target

            with self.store.session() as session:
                find_target(session, obs_id, datastore)  # a run that failed to index, or none: says so
            raise BkgdbError(f"run {obs_id} has no background pieces: index it with --config first")
        return found

    def cache(self) -> Rows:
        """Stored pieces per binning and exclusion setting, with their bytes."""
        from bkgdb.store.pieces import PieceCache

        return Rows(
            PieceCache(self.store.engine).summary(),
            ["binning", "kind", "geometry", "exclusion", "method", "pieces", "bytes", "bytes_per_piece"],
        )

    def drop_pieces(self, exclusion: str | None = None, binning: str | None = None) -> int:
        """Delete the pieces of an exclusion setting and/or a binning (hash prefixes); return how many."""
        from bkgdb.store.pieces import PieceCache

        return PieceCache(self.store.engine).drop(exclusion=exclusion, binning=binning)

    def flag(
        self, obs_id: int, flag: Literal["bad", "good"], reason: str | None = None, author: str | None = None
    ) -> dict[str, Any]:
        """Flag run ``obs_id`` (every copy) bad, so it is never selected, or good again; return the entry."""
        from bkgdb.store.flags import flag_run

        check_obs_id(obs_id)
        return flag_run(self.store.engine, obs_id, flag, reason, author)

    def flags(self, obs_id: int) -> Rows:
        """The flag history of run ``obs_id``, oldest first (``in_force`` marks the newest)."""
        from bkgdb.store.flags import run_flags

        check_obs_id(obs_id)
        return Rows(
            run_flags(self.store.engine, obs_id), ["obs_id", "flag", "reason", "author", "created_at", "in_force"]
        )

    def history(self, obs_id: int | None = None, stale: bool = False) -> Rows:
        """Backgrounds built so far, newest first (of target ``obs_id``); ``stale``: those whose inputs changed."""
        if obs_id is not None:
            check_obs_id(obs_id)
        if stale:
            from bkgdb.store.lineage import stale_backgrounds

            rows = [row for row in stale_backgrounds(self.store.engine) if obs_id is None or row["target"] == obs_id]
            return Rows(rows, ["id", "target", "output", "created_at", "reason"])
        from bkgdb.background import background_history

        return Rows(
            background_history(self.store.engine, obs_id),
            ["id", "target", "runs", "obs_ids", "ontime_h", "smoothing", "ranking", "output", "created_at"],
        )

    def lineage(self, obs_id: int) -> Rows:
        """Every background and attached file built from run ``obs_id``'s pieces."""
        from bkgdb.store.lineage import background_lineage

        check_obs_id(obs_id)
        return Rows(
            background_lineage(self.store.engine, obs_id), ["id", "target", "from_datastore", "output", "created_at"]
        )

    # -- backgrounds --------------------------------------------------------------------------

    def build(
        self,
        obs_id: int,
        datastore: str | Path | None = None,
        smooth: str | None = None,
        where: Iterable[str] = (),
        three_d: bool | None = None,
    ) -> BuiltBackground:
        """The background of run ``obs_id`` from similar runs' pieces (nothing written or recorded).

        ``datastore``: the target's, when its OBS_ID is in several; ``smooth``: a smoothing method
        instead of the config's; ``where``: conditions added to the config's selection for this
        call; ``three_d``: a 3D (FoV) background, or 2D (default: the config's ``io.3d_bkg``).
        """
        check_obs_id(obs_id)
        return self._builder(smooth, where, three_d).build(obs_id, datastore)

    def write_background(
        self,
        obs_id: int,
        output: str | Path,
        datastore: str | Path | None = None,
        smooth: str | None = None,
        where: Iterable[str] = (),
        three_d: bool | None = None,
        overwrite: bool = False,
    ) -> BuiltBackground:
        """`build`, write the model as a FITS file gammapy reads, and record it (unless the database is read-only).

        An ``output`` that exists (without ``overwrite``) or cannot be written is an error, before any
        work; the catalogue's database, files of catalogued datastores and the config file are never
        replaced.
        """
        from bkgdb.background import check_background_output

        check_obs_id(obs_id)
        check_background_output(output, obs_id, overwrite, self._config_files())  # before the database is opened
        return self._builder(smooth, where, three_d).write(
            obs_id, output, datastore=datastore, overwrite=overwrite, protected=self._config_files()
        )

    def attach(
        self,
        target: str | Path | None = None,
        out_dir: str | Path | None = None,
        jobs: int | None = None,
        scheduler: str | None = None,
        where: Iterable[str] = (),
        three_d: bool | None = None,
        overwrite: bool = False,
        progress: Progress | None = None,
        index_progress: Progress | None = None,
    ) -> Attached:
        """Write a copy of datastore ``target`` into ``out_dir`` whose runs carry bkgdb backgrounds.

        ``out_dir`` is checked first (no user file is ever replaced), then the target is indexed
        with the config (incremental), then every run gets its background. ``target`` and
        ``out_dir`` default to the config's ``io.in_dir`` and ``io.out_dir``; ``jobs`` and
        ``scheduler`` are for the indexing (see `index`), the rest as in `write_background`.
        """
        from bkgdb.gadf.attach import attach_backgrounds
        from bkgdb.gadf.destination import check_attach_destination

        config = self._config("attach")
        target = target or config.io.in_dir
        out_dir = out_dir or config.io.out_dir
        if not target or not out_dir:
            raise BkgdbError("give the target datastore and --out (or io.in_dir and io.out_dir in the config)")
        self._check_scheduler(scheduler, jobs)
        with self._cluster(scheduler) as executor:
            builder = self._builder(None, where, three_d)
            check_attach_destination(self.store, target, out_dir, overwrite)  # before the (possibly long) indexing
            indexed = self._index(target, jobs, executor, index_progress)
        written = attach_backgrounds(builder, target, out_dir, overwrite=overwrite, progress=progress)
        return Attached(indexed, written)

    def validate(
        self,
        datastore: str | Path,
        where: Iterable[str] = (),
        jobs: int | None = None,
        scheduler: str | None = None,
        three_d: bool | None = None,
        rows_file: str | Path | None = None,
        rows_format: str | None = None,
        report_dir: str | Path | None = None,
        progress: Progress | None = None,
        index_progress: Progress | None = None,
        overwrite: bool = False,
    ) -> Validated:
        """Judge the config: each run of ``datastore`` gets its background from the others, fitted with gammapy.

        ``datastore`` is indexed first (incremental); its runs passing ``where`` and the config's
        target criteria are the targets. ``jobs``: processes for the fits and the indexing,
        ``scheduler``: a Dask scheduler for the indexing. Also writes the per-run rows to
        ``rows_file`` (``rows_format`` csv or json, default by suffix) and an HTML report with
        figures to ``report_dir``, if given: a new or empty folder, or with ``overwrite`` an earlier
        report's. An existing ``rows_file`` is replaced only with ``overwrite``.
        """
        from bkgdb.outputs import check_new_file, check_report_folder
        from bkgdb.store.conditions import parse_condition
        from bkgdb.validation import report_rows_to_file, rows_file_format, validate_runs

        config = self._config("validate")
        # Every user mistake fails here, before any work.
        if rows_file is not None:
            rows_format = rows_file_format(rows_file, rows_format)
            check_new_file(rows_file, overwrite, self._protected(rows_file, datastore))
        if report_dir is not None:
            check_report_folder(report_dir, overwrite)
        conditions = [str(condition) for condition in where]
        for condition in conditions:
            parse_condition(condition)
        self._check_scheduler(scheduler)
        three_d = self._three_d(three_d)
        with self._cluster(scheduler) as executor:  # with a scheduler the jobs are the fits' alone
            indexed = self._index(datastore, jobs, executor, index_progress)
        report = validate_runs(
            self.store, config, datastore, where=conditions, jobs=self._jobs(jobs), progress=progress, three_d=three_d
        )
        result = Validated(indexed, report)
        if rows_file is not None:
            result.rows_file = report_rows_to_file(report, rows_file, rows_format, overwrite)
        if report_dir is not None:
            from bkgdb.plotting.report import write_validation_report

            try:
                # The worst runs' figures show the models that were validated, 2D or 3D.
                result.report_page = write_validation_report(
                    report, report_dir, self._builder(None, (), three_d), self.config_name
                )
            except KeyboardInterrupt as exc:  # the one line the CLI prints says what is left
                if result.rows_file is not None:
                    exc.add_note(f"the rows are written to {result.rows_file}")
                exc.add_note(f"the report in {report_dir} is unfinished (--overwrite replaces it)")
                raise
        return result

    def demo(
        self, folder: str | Path = "bkgdb-demo", jobs: int = 2, progress: Callable[[str], None] | None = None
    ) -> DemoReport:
        """Simulate a datastore from a known background, index it, attach backgrounds, compare with the truth.

        The demo's database is this catalogue's URL if one was given, else an SQLite file in ``folder``.
        """
        from bkgdb.demo import run_demo

        return run_demo(folder, url=self.url, jobs=jobs, progress=progress)

    # -- helpers ------------------------------------------------------------------------------

    def _config_files(self) -> list[Path]:
        """The config file, if one was read, and the catalogues and region files of its exclusion
        setting: an output never replaces them."""
        files = [] if self.config_path is None else [self.config_path]
        return files + ([] if self.config is None else self.config.exclusion.files)

    def _protected(self, output: str | Path, datastore: str | Path | None = None) -> list[Path]:
        """What ``output`` must not be (`~bkgdb.store.catalogue.RunCatalogue.protected_paths`, with
        ``datastore`` as if catalogued; the config's files)."""
        about_to_index = [] if datastore is None else [datastore]
        return [*self.store.protected_paths({Path(output).name}, about_to_index), *self._config_files()]

    def _config(self, what: str) -> BkgdbConfig:
        if self.config is None:
            raise BkgdbError(f"{what} needs a config (binning, exclusion, background_selection)")
        return self.config

    @staticmethod
    def _check_scheduler(scheduler: str | None, jobs: int | None = None) -> None:
        """A malformed ``scheduler`` address, or one given with index ``jobs``, fails here, before
        the work that precedes the indexing."""
        if not isinstance(scheduler, str):  # a distributed.Client, or None
            return
        if scheduler and jobs is not None:
            raise BkgdbError(
                "--jobs and --scheduler both say where to index: the runs go to the scheduler's "
                "workers, so give one of them"
            )
        if scheduler:
            from bkgdb.parallel.cluster import check_scheduler_address

            check_scheduler_address(scheduler)

    def _jobs(self, jobs: int | None) -> int:
        return jobs or (self.config.njobs if self.config is not None else 1)

    def _three_d(self, three_d: bool | None) -> bool:
        """``three_d``, or the config's ``io.3d_bkg`` when None."""
        if three_d is not None:
            return bool(three_d)
        return self._config("a background").io.three_d

    def _selection_config(self, where: Iterable[str]) -> BkgdbConfig:
        """The config with ``where`` added to its selection conditions; a malformed one fails here."""
        from bkgdb.store.conditions import parse_condition

        config = self._config("a background")
        conditions = tuple(str(condition) for condition in where)
        if not conditions:
            return config
        for condition in conditions:
            parse_condition(condition)
        selection = dataclasses.replace(config.selection, where=tuple(config.selection.where) + conditions)
        return dataclasses.replace(config, selection=selection)

    def _builder(
        self, smooth: str | None = None, where: Iterable[str] = (), three_d: bool | None = None
    ) -> BackgroundBuilder:
        """The one place backgrounds are built from: a builder on this catalogue's store."""
        from bkgdb.background import BackgroundBuilder

        config = self._selection_config(where)
        return BackgroundBuilder(self.store, config, smooth=smooth, three_d=self._three_d(three_d))
