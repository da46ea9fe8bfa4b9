"""Attaching backgrounds to a datastore: a new datastore whose runs carry bkgdb's models.

`attach_backgrounds` builds every run's background with a `~bkgdb.background.BackgroundBuilder`
and writes a copy of the run files with the model in a ``BKG`` HDU, plus new index files, so that
`gammapy.data.DataStore.from_dir` opens the result as is.

It never modifies a user's data: `check_attach_destination` refuses, before any work, an output
folder that is, holds or lies inside the target datastore, any output path that a file of the
target (through its hdu-index) or of a catalogued datastore resolves to, a folder holding any file
bkgdb did not write, and an earlier attach's folder without ``overwrite``. Before its first run
file an attach writes a marker file (`~bkgdb.gadf.destination.ATTACH_MARKER`) naming the run files
it writes, so that its folder stays recognisably bkgdb's when it is interrupted. Every file is
written under a temporary name (``.NAME.bkgdb-partial``) in its folder and then renamed, the index
files last, so a killed attach leaves no half-written file under a final name and no index files
that describe a half-written datastore.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from bkgdb import __version__
from bkgdb.built import BKG_HDU, PROVENANCE_HDU
from bkgdb.errors import BkgdbError
from bkgdb.gadf.destination import (
    ATTACH_MARKER,
    CREATOR_PREFIX,
    DATA_DIR,
    HDU_INDEX,
    INDEX_NAMES,
    MARKER_HEADER,
    OBS_INDEX,
    PARTIAL_SUFFIX,
    check_destination,
    partial_path,
    resolved,
    run_output,
)
from bkgdb.gadf.sash import check_writable, gammapy_reverses_lon
from bkgdb.geometry import PieceGeometry

if TYPE_CHECKING:
    from astropy.io import fits
    from astropy.table import Table

    from bkgdb.background import BackgroundBuilder
    from bkgdb.gadf.datastore import DL3Datastore, RunSource
    from bkgdb.gadf.events import Values

__all__ = ["AttachReport", "NothingAttached", "attach_backgrounds", "write_fits"]

log = logging.getLogger(__name__)


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


def write_fits(hdulist: fits.HDUList, path: str | Path) -> None:
    """Write an HDU list under a temporary name, then rename it to ``path``.

    A ``.gz`` name is gzip-compressed at level 1 (astropy's level 9 is 5x slower). The data reach
    the disk before the rename, so ``path`` is either absent, its previous content, or complete.
    """
    import gzip
    import io

    path = Path(path)

    def write(handle: BinaryIO) -> None:
        if path.suffix == ".gz":
            buffer = io.BytesIO()
            hdulist.writeto(buffer)
            # The final name and no time stamp in the gzip header: the same HDUs give the same bytes.
            with gzip.GzipFile(filename=path.name[:-3], mode="wb", compresslevel=1, fileobj=handle, mtime=0) as packed:
                packed.write(buffer.getvalue())
        else:
            hdulist.writeto(handle)

    _write_then_rename(path, write)


def _write_then_rename(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """``write(handle)`` into ``path``'s temporary name, to disk, then rename it to ``path``."""
    partial = partial_path(path)
    try:
        with open(partial, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


class _Marker:
    """The marker file of an attach's folder: written before the first run file, it then names each
    run file before that file is written, so that every file an attach may have left is named."""

    def __init__(self, out_dir: Path, taken_over: Iterable[str]) -> None:
        self.path = out_dir / ATTACH_MARKER
        self.created = not self.path.exists()
        # Files of an earlier attach stay named: those of an earlier bkgdb were named only by the
        # index files about to be removed.
        self.named = set(taken_over)
        text = MARKER_HEADER + "".join(f"{name}\n" for name in sorted(self.named))
        _write_then_rename(self.path, lambda handle: handle.write(text.encode()))

    def name(self, path: Path) -> None:
        entry = f"{DATA_DIR}/{path.name}"
        if entry not in self.named:
            # Not fsynced: should a crash lose the line, the file is refused later, never replaced.
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(f"{entry}\n")
            self.named.add(entry)


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
    reasons = {" ".join(str(reason).split()) for _, reason in skipped}
    if len(skipped) > 1 and len(reasons) == 1:  # e.g. every run refused for one reason: said once
        return NothingAttached(
            f"no run of {source.path} got a background, nothing written ({len(skipped)} runs, "
            f"each for the same reason): {reasons.pop()}",
            skipped,
        )
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
    are left out and reported. For a H.E.S.S. (SASH) run, whose every background gammapy reads as
    reversed RA/Dec (`bkgdb.gadf.sash`, from the EVENTS header of the file copied), a RADEC 3D model
    is written in that convention and an ALTAZ 3D one is refused: the run is left out with the reason.

    The destination is checked first (`check_attach_destination`): no user file is ever written
    to, and ``out_dir`` must be new, empty, or hold only what an earlier attach wrote
    (`~bkgdb.gadf.destination.bkgdb_files`). Before the first run file, the marker file is written
    (naming the earlier attach's run files, then each run file before it is written) and an earlier
    attach's index files are removed, so index files are there only when complete and an
    interrupted attach's folder is still known as bkgdb's. Each file is written under a temporary
    name and renamed into place, the index files last; temporary files left by a killed attach are
    removed. Folders are created when the first file is written.

    Parameters
    ----------
    builder : `~bkgdb.background.BackgroundBuilder`
        Builds each run's background and records it.
    target_datastore, out_dir : str or `~pathlib.Path`
        The datastore whose runs get backgrounds, and the new datastore's folder.
    progress : callable, optional
        Called as ``progress(done, total)`` after each run. Default is None.
    overwrite : bool, optional
        Allow an earlier attach's ``out_dir``, replacing what it wrote there. Default is False.

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
    out_dir = resolved(out_dir)
    earlier_files = check_destination(builder.catalogue, source, out_dir, overwrite)
    _remove_leftovers(out_dir)
    report = AttachReport(str(out_dir))
    hdu_table = source.hdu_table
    hdu_types = np.char.strip(np.char.lower(np.asarray(hdu_table["HDU_TYPE"]).astype(str)))
    runs = source.runs()
    hdu_rows: list[dict] = []
    written: list[int] = []
    folders = _Folders()
    marker: _Marker | None = None
    geometry = PieceGeometry.of(builder.binning)
    try:
        with builder.catalogue.session() as session:
            for done, run in enumerate(runs, start=1):
                try:
                    if run.events_path is None:
                        raise BkgdbError("the hdu-index lists no events file for it")
                    unreadable: BkgdbError | None = None
                    content, header = b"", None
                    try:
                        content, header = _copied_content(run)
                    except BkgdbError as exc:
                        unreadable = exc
                    # gammapy reads every background of a H.E.S.S. SASH run as reversed RA/Dec (bkgdb.gadf.sash):
                    # an ALTAZ 3D model is refused before it is built, a RADEC one written in that convention.
                    reverse_lon = gammapy_reverses_lon(header)
                    check_writable(geometry, reverse_lon)
                    built = builder.build(run.obs_id, source.path, session=session)
                    if unreadable is not None:
                        raise unreadable  # after the build's own reason (a run that failed to index says so)
                except BkgdbError as exc:
                    report.skipped.append((run.obs_id, str(exc)))
                    log.info("run %s: no background: %s", run.obs_id, exc)  # the report lists it
                else:
                    if marker is None:
                        folders.make(out_dir / DATA_DIR)
                        marker = _Marker(out_dir, earlier_files)  # before the index files go: the folder stays ours
                        for name in INDEX_NAMES:  # an interrupted rerun must not look complete
                            (out_dir / name).unlink(missing_ok=True)
                    target_file = run_output(out_dir, run)
                    marker.name(target_file)
                    own = hdu_table["OBS_ID"] == run.obs_id
                    old_bkg = {str(name).strip() for name in hdu_table["HDU_NAME"][own & (hdu_types == "bkg")]}
                    dropped = {name.upper() for name in old_bkg} | {BKG_HDU, PROVENANCE_HDU}
                    with fits.open(io.BytesIO(content), memmap=False) as hdul:
                        kept = [hdu for hdu in hdul if hdu.name not in dropped]
                        model = built.model_hdu(BKG_HDU, reverse_lon=reverse_lon)
                        write_fits(fits.HDUList(kept + [model, built.provenance_hdu()]), target_file)
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
            if marker is not None and marker.created and not any((out_dir / DATA_DIR).iterdir()):
                marker.path.unlink()  # it marks no file: leave the folder as it was
            folders.remove_created()
        raise
    return report


def _copied_content(run: RunSource) -> tuple[bytes, Values]:
    """The FITS bytes of a run's file, checked as an index checks them, for attach to copy, and its EVENTS header.

    Raises
    ------
    BkgdbError
        The file cannot be read or is not whole (changed since the index, or damaged in a way
        the index let through): a truncated HDU would fail the copy with a traceback.
    """
    from bkgdb.gadf.events import RunReadError, decompress_events, read_events

    assert run.events_path is not None  # checked by the caller
    try:
        try:
            content = decompress_events(run, run.events_path.read_bytes())
        except OSError as exc:
            raise RunReadError(f"cannot read {run.events_path}: {exc}") from None
        header = read_events(run, content).header
    except RunReadError as exc:
        raise BkgdbError(f"cannot copy its file: {exc}") from None
    return content, header


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
