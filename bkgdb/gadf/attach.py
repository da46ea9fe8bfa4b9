"""Attaching backgrounds to a datastore: a new datastore whose runs carry bkgdb's models.

`attach_backgrounds` builds every run's background with a `~bkgdb.background.BackgroundBuilder`
and writes a copy of the run files with the model in a ``BKG`` HDU, plus new index files, so that
`gammapy.data.DataStore.from_dir` opens the result as is.

It never modifies a user's data: `check_attach_destination` refuses, before any work, an output
folder that is, holds or lies inside the target datastore, any output path that a file of the
target (through its hdu-index) or of a catalogued datastore resolves to, and a non-empty folder
without ``overwrite``. Every file is written under a temporary name (``.NAME.bkgdb-partial``) in
its folder and then renamed, the index files last, so a killed attach leaves no half-written file
under a final name and no index files that describe a half-written datastore.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from bkgdb import __version__
from bkgdb.background import BKG_HDU, PROVENANCE_HDU
from bkgdb.errors import BkgdbError

if TYPE_CHECKING:
    from astropy.io import fits
    from astropy.table import Table

    from bkgdb.background import BackgroundBuilder
    from bkgdb.gadf.datastore import DL3Datastore, RunSource
    from bkgdb.store.catalogue import RunCatalogue

__all__ = [
    "AttachReport",
    "NothingAttached",
    "UnsafeDestination",
    "attach_backgrounds",
    "check_attach_destination",
    "partial_path",
    "write_fits",
    "PARTIAL_SUFFIX",
]

log = logging.getLogger(__name__)

#: Suffix of the temporary name a file is written under before it is renamed into place.
PARTIAL_SUFFIX = ".bkgdb-partial"
OBS_INDEX = "obs-index.fits.gz"
HDU_INDEX = "hdu-index.fits.gz"
#: Index file names gammapy looks for; an attach replaces the first and never leaves the second.
INDEX_NAMES = (OBS_INDEX, HDU_INDEX, "obs-index.fits", "hdu-index.fits")
DATA_DIR = "data"
#: The CREATOR of the index files an attach writes; only such a datastore may be overwritten.
CREATOR_PREFIX = "bkgdb "


class UnsafeDestination(BkgdbError):
    """The output folder of an attach would overwrite or mix with files that are not bkgdb's to replace."""


class NothingAttached(BkgdbError):
    """No run of the target got a background, so nothing was written."""

    def __init__(self, message: str, skipped: Iterable[tuple[int, str]] = ()) -> None:
        super().__init__(message)
        #: (obs_id, reason) of every run of the target.
        self.skipped = list(skipped)


@dataclass
class AttachReport:
    """What `attach_backgrounds` wrote."""

    out_dir: str
    written: list = field(default_factory=list)
    #: (obs_id, reason) of runs that got no background and were left out.
    skipped: list = field(default_factory=list)

    def summary(self) -> str:
        return f"{len(self.written)} runs written to {self.out_dir}, {len(self.skipped)} without background"


def partial_path(path: str | Path) -> Path:
    """The temporary name ``path`` is written under before it is renamed into place."""
    path = Path(path)
    return path.with_name(f".{path.name}{PARTIAL_SUFFIX}")


def write_fits(hdulist: fits.HDUList, path: str | Path) -> None:
    """Write an HDU list under a temporary name, then rename it to ``path``.

    A ``.gz`` name is gzip-compressed at level 1 (astropy's level 9 is 5x slower). The data reach
    the disk before the rename, so ``path`` is either absent, its previous content, or complete.
    """
    import gzip
    import io

    path = Path(path)
    partial = partial_path(path)
    try:
        with open(partial, "wb") as handle:
            if path.suffix == ".gz":
                buffer = io.BytesIO()
                hdulist.writeto(buffer)
                # The final name and no time stamp in the gzip header: the same HDUs give the same bytes.
                with gzip.GzipFile(
                    filename=path.name[:-3], mode="wb", compresslevel=1, fileobj=handle, mtime=0
                ) as compressed:
                    compressed.write(buffer.getvalue())
            else:
                hdulist.writeto(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _resolved(path: str | Path) -> Path:
    """Absolute path with every symlink of its existing part resolved."""
    return Path(os.path.realpath(Path(path).expanduser()))


def _run_output(out_dir: Path, run: RunSource) -> Path:
    # Called only for runs whose events file is known.
    return out_dir / DATA_DIR / cast(Path, run.events_path).name


def _planned_outputs(source: DL3Datastore, out_dir: Path) -> list[Path]:
    """Every path an attach of ``source`` into ``out_dir`` may write: run files, index files, temporaries."""
    finals = [out_dir / name for name in (OBS_INDEX, HDU_INDEX)]
    by_name: dict[Path, int] = {}
    for run in source.runs():
        if run.events_path is None:
            continue
        output = _run_output(out_dir, run)
        if output in by_name:
            raise UnsafeDestination(
                f"runs {by_name[output]} and {run.obs_id} of {source.path} have event files of the same name "
                f"{output.name}: attach writes one file per name into {output.parent}"
            )
        by_name[output] = run.obs_id
        finals.append(output)
    return finals + [partial_path(path) for path in finals]


def _protected_by_target(source: DL3Datastore) -> dict[Path, str]:
    """{resolved path: why} of every file the target's hdu-index points to."""
    base = str(source.hdu_table.meta.get("BASE_DIR", "")).strip()
    protected: dict[Path, str] = {}
    for row in source.hdu_table:
        file_dir = str(row["FILE_DIR"]).strip() if "FILE_DIR" in row.colnames else ""
        path = _resolved(source.path / base / file_dir / str(row["FILE_NAME"]).strip())
        protected.setdefault(
            path,
            f"the hdu-index of the target {source.path} points to it "
            f"(run {int(row['OBS_ID'])}, {str(row['HDU_TYPE']).strip()})",
        )
    return protected


def _protected_by_catalogue(catalogue: RunCatalogue, names: Collection[str]) -> dict[Path, str]:
    """{resolved path: why} of catalogued run files named as in ``names``, and every catalogued index file."""
    from bkgdb.store.targets import catalogued_files

    protected: dict[Path, str] = {}
    with catalogue.session() as session:
        folders, rows = catalogued_files(session)
        for folder in folders:
            for name in INDEX_NAMES:
                protected.setdefault(
                    _resolved(Path(folder) / name), f"it is an index file of the catalogued datastore {folder}"
                )
        for file_path, obs_id, folder in rows:
            if Path(file_path).name in names:  # resolve only what could collide: catalogues are large
                protected.setdefault(
                    _resolved(file_path), f"it is the file of run {obs_id} of the catalogued datastore {folder}"
                )
    return protected


def _is_bkgdb_output(folder: Path) -> tuple[bool, Path | None]:
    """Whether the index files in ``folder`` (if any) were written by an attach. Returns (ok, file)."""
    from astropy.io import fits

    for name in INDEX_NAMES:
        path = folder / name
        if not path.exists():
            continue
        try:
            creator = str(fits.getheader(path, 1).get("CREATOR", ""))
        except Exception:  # unreadable: certainly not ours to judge as replaceable
            return False, path
        if not creator.startswith(CREATOR_PREFIX):
            return False, path
    return True, None


def _check_destination(catalogue: RunCatalogue, source: DL3Datastore, out_dir: Path, overwrite: bool) -> None:
    target = source.path
    if out_dir == target:
        raise UnsafeDestination(
            f"--out {out_dir} is the target datastore: attach never writes into the datastore it reads"
        )
    if out_dir.is_relative_to(target):
        raise UnsafeDestination(
            f"--out {out_dir} is inside the target datastore {target}: attach never writes into the datastore it reads"
        )
    if target.is_relative_to(out_dir):
        raise UnsafeDestination(
            f"--out {out_dir} contains the target datastore {target}: attach never writes into the datastore it reads"
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise UnsafeDestination(f"--out {out_dir} exists and is not a folder")

    outputs = [_resolved(path) for path in _planned_outputs(source, out_dir)]
    protected = _protected_by_target(source)
    for path, why in _protected_by_catalogue(catalogue, {path.name for path in outputs}).items():
        protected.setdefault(path, why)
    for path in outputs:
        if path in protected:
            raise UnsafeDestination(f"refusing to write {path}: {protected[path]}")
        if path.is_relative_to(target):
            raise UnsafeDestination(f"refusing to write {path}: it is inside the target datastore {target}")

    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise UnsafeDestination(
                f"--out {out_dir} is not empty: pass --overwrite to replace what an earlier attach wrote there"
            )
        ours, index_file = _is_bkgdb_output(out_dir)
        if not ours:
            raise UnsafeDestination(
                f"refusing to write into {out_dir}: {index_file} belongs to a datastore "
                "bkgdb did not write (even with --overwrite)"
            )


def check_attach_destination(
    catalogue: RunCatalogue, target: str | Path, out_dir: str | Path, overwrite: bool = False
) -> Path:
    """Refuse an attach output folder that would put a user's files at risk; return it resolved.

    Call it before any indexing work; `attach_backgrounds` calls it too. The checks read only the
    index files of ``target`` and the catalogue. An attach must not write

    - into the target datastore folder: ``out_dir`` may not be it, lie inside it or contain it;
    - to any path (symlinks resolved) that a row of the target's hdu-index points to
      (``BASE_DIR``/``FILE_DIR``/``FILE_NAME``), that is the file of a catalogued run, or that is an
      index file of a catalogued datastore;
    - into a non-empty folder, unless ``overwrite``; and even then not over index files that bkgdb
      did not write.

    Parameters
    ----------
    catalogue : `~bkgdb.store.catalogue.RunCatalogue`
        The catalogue whose datastores are protected.
    target, out_dir : str or `~pathlib.Path`
        The datastore whose runs get backgrounds, and the new datastore's folder.
    overwrite : bool, optional
        Allow a non-empty ``out_dir`` (such as an earlier attach's output). Default is False.

    Returns
    -------
    out_dir : `~pathlib.Path`
        The output folder, absolute, symlinks resolved.

    Raises
    ------
    UnsafeDestination
        The message names the protected path or folder and why, in one line.
    """
    from bkgdb.gadf.datastore import DL3Datastore

    out_dir = _resolved(out_dir)
    _check_destination(catalogue, DL3Datastore(target), out_dir, overwrite)
    return out_dir


class _Folders:
    """Creates folders on demand and removes, on failure, the (empty) ones it created."""

    def __init__(self) -> None:
        self.created: list[Path] = []

    def make(self, folder: Path) -> None:
        missing = []
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for path in reversed(missing):
            path.mkdir()
            self.created.append(path)

    def remove_created(self) -> None:
        for path in reversed(self.created):
            try:
                path.rmdir()
            except OSError:  # not empty: it holds files written by this call, keep them
                pass


def _remove_leftovers(out_dir: Path) -> None:
    """Delete temporary files a killed attach left in ``out_dir`` and its data folder."""
    for folder in (out_dir, out_dir / DATA_DIR):
        if folder.is_dir():
            for path in folder.glob(f".*{PARTIAL_SUFFIX}"):
                if path.is_file() or path.is_symlink():
                    log.info("removing %s, left by an interrupted attach", path)
                    path.unlink()


def _nothing_attached(source: DL3Datastore, skipped: list[tuple[int, str]]) -> NothingAttached:
    if not skipped:
        return NothingAttached(f"the target datastore {source.path} lists no runs: nothing written")
    shown = "; ".join(f"run {obs_id}: {' '.join(str(reason).split())}" for obs_id, reason in skipped[:2])
    more = f"; and {len(skipped) - 2} more runs" if len(skipped) > 2 else ""
    return NothingAttached(
        f"no run of {source.path} got a background, nothing written ({len(skipped)} runs): {shown}{more}", skipped
    )


def attach_backgrounds(
    builder: BackgroundBuilder,
    target_datastore: str | Path,
    out_dir: str | Path,
    progress: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
) -> AttachReport:
    """Write a copy of a datastore whose runs carry backgrounds built by bkgdb.

    Every run of ``target_datastore`` (which must be indexed with the builder's config) gets
    its background; its file is copied into ``out_dir/data`` with the new ``BKG`` HDU replacing any
    existing background, and new obs-index and hdu-index files are written, so that
    `gammapy.data.DataStore.from_dir(out_dir)` opens it. Runs for which no background can be built
    are left out and reported.

    The destination is checked first (`check_attach_destination`): no user file is ever written
    to. Each file is written under a temporary name and renamed into place, the index files last;
    temporary files left by a killed attach are removed, and an earlier attach's index files are
    removed before the first run file is replaced, so index files are there only when complete.
    Folders are created when the first file is written.

    Parameters
    ----------
    builder : `~bkgdb.background.BackgroundBuilder`
        Builds each run's background and records it.
    target_datastore, out_dir : str or `~pathlib.Path`
        The datastore whose runs get backgrounds, and the new datastore's folder.
    progress : callable, optional
        Called as ``progress(done, total)`` after each run. Default is None.
    overwrite : bool, optional
        Allow a non-empty ``out_dir``, replacing what an earlier attach wrote there. Default is False.

    Returns
    -------
    report : `AttachReport`

    Raises
    ------
    UnsafeDestination
        ``out_dir`` would put a user's files at risk (nothing is written).
    NothingAttached
        No run got a background (nothing is written; the message summarises why).
    """
    from astropy.io import fits
    from astropy.table import Table

    from bkgdb.gadf.datastore import DL3Datastore

    source = DL3Datastore(target_datastore)
    out_dir = _resolved(out_dir)
    _check_destination(builder.catalogue, source, out_dir, overwrite)
    _remove_leftovers(out_dir)
    report = AttachReport(str(out_dir))
    hdu_table = source.hdu_table
    hdu_types = np.char.strip(np.char.lower(np.asarray(hdu_table["HDU_TYPE"]).astype(str)))
    runs = source.runs()
    hdu_rows: list[dict] = []
    written: list[int] = []
    folders = _Folders()
    try:
        with builder.catalogue.session() as session:
            for done, run in enumerate(runs, start=1):
                try:
                    if run.events_path is None:
                        raise BkgdbError("the hdu-index lists no events file for it")
                    built = builder.build(run.obs_id, source.path, session=session)
                except BkgdbError as exc:
                    report.skipped.append((run.obs_id, str(exc)))
                    log.info("run %s: no background: %s", run.obs_id, exc)  # the report lists it
                else:
                    if not written:
                        folders.make(out_dir / DATA_DIR)
                        for name in INDEX_NAMES:  # an interrupted rerun must not look complete
                            (out_dir / name).unlink(missing_ok=True)
                    target_file = _run_output(out_dir, run)
                    own = hdu_table["OBS_ID"] == run.obs_id
                    old_bkg = {str(name).strip() for name in hdu_table["HDU_NAME"][own & (hdu_types == "bkg")]}
                    dropped = {name.upper() for name in old_bkg} | {BKG_HDU, PROVENANCE_HDU}
                    with fits.open(run.events_path, memmap=False) as hdul:
                        kept = [hdu for hdu in hdul if hdu.name not in dropped]
                        write_fits(fits.HDUList(kept + [built.model_hdu(BKG_HDU), built.provenance_hdu()]), target_file)
                    hdu_rows.extend(
                        _hdu_rows(
                            source,
                            hdu_table[own & (hdu_types != "bkg")],
                            run,
                            target_file,
                            "bkg_3d" if built.geometry.is_3d else "bkg_2d",
                        )
                    )
                    written.append(run.obs_id)
                    builder.record(session, built, target_file)
                    session.commit()
                if progress is not None:
                    progress(done, len(runs))
        report.written = written
        if not written:
            raise _nothing_attached(source, report.skipped)

        obs_table = source.obs_table[np.isin(source.obs_table["OBS_ID"], written)]
        obs_table.meta["CREATOR"] = f"{CREATOR_PREFIX}{__version__}"
        new_hdu_table = Table(
            rows=[[row[name] for name in hdu_table.colnames] for row in hdu_rows], names=hdu_table.colnames
        )
        new_hdu_table.meta = {key: value for key, value in hdu_table.meta.items() if key != "BASE_DIR"}
        new_hdu_table.meta["CREATOR"] = f"{CREATOR_PREFIX}{__version__}"
        for table, name in ((obs_table, OBS_INDEX), (new_hdu_table, HDU_INDEX)):
            write_fits(fits.HDUList([fits.PrimaryHDU(), fits.table_to_hdu(table)]), out_dir / name)
    except BaseException:
        if not written:
            folders.remove_created()
        raise
    return report


def _hdu_rows(
    source: DL3Datastore, rows: Table, run: RunSource, target_file: Path, bkg_class: str
) -> list[dict[str, Any]]:
    """hdu-index rows (dicts) of one attached run: its HDUs in the new file, others where they were,
    and the background (HDU class ``bkg_class``, ``bkg_2d`` or ``bkg_3d``)."""
    from bkgdb.gadf.datastore import json_safe

    base = str(source.hdu_table.meta.get("BASE_DIR", "")).strip()
    result = []
    for row in rows:
        values = {name: json_safe(row[name]) for name in rows.colnames}
        original = (source.path / base / values["FILE_DIR"] / values["FILE_NAME"]).resolve()
        if original == run.events_path:
            values["FILE_DIR"], values["FILE_NAME"] = DATA_DIR, target_file.name
        else:  # shared IRF files stay where they are
            values["FILE_DIR"], values["FILE_NAME"] = str(original.parent), original.name
        result.append(values)
    bkg = dict(result[0])
    bkg.update(
        {
            "HDU_TYPE": "bkg",
            "HDU_CLASS": bkg_class,
            "FILE_DIR": DATA_DIR,
            "FILE_NAME": target_file.name,
            "HDU_NAME": BKG_HDU,
        }
    )
    if "SIZE" in bkg:
        bkg["SIZE"] = 0
    result.append(bkg)
    return result
