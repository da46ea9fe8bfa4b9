"""Where an attach may write: the checks that keep a user's files from ever being overwritten.

`check_attach_destination` refuses, before any work, an output folder that is, holds or lies
inside the target datastore, any output path that a file of the target (through its hdu-index) or
of a catalogued datastore resolves to, a folder holding any file bkgdb did not write (even with
``overwrite``), and an earlier attach's folder without ``overwrite``. Which files bkgdb wrote is
told by positive evidence only (`bkgdb_files`): the marker file an attach writes first
(`ATTACH_MARKER`) and the index files it writes last.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, cast

from bkgdb.errors import BkgdbError
from bkgdb.outputs import check_writable_folder

if TYPE_CHECKING:
    from bkgdb.gadf.datastore import DL3Datastore, RunSource
    from bkgdb.store.catalogue import RunCatalogue

__all__ = [
    "UnsafeDestination",
    "check_attach_destination",
    "INDEX_NAMES",
    "OBS_INDEX",
    "HDU_INDEX",
    "DATA_DIR",
    "CREATOR_PREFIX",
    "ATTACH_MARKER",
    "MARKER_HEADER",
    "bkgdb_files",
    "marker_entries",
]

OBS_INDEX = "obs-index.fits.gz"
HDU_INDEX = "hdu-index.fits.gz"
#: Index file names gammapy looks for; an attach replaces the first and never leaves the second.
INDEX_NAMES = (OBS_INDEX, HDU_INDEX, "obs-index.fits", "hdu-index.fits")
DATA_DIR = "data"
#: The CREATOR of the index files an attach writes; only such a datastore may be overwritten.
CREATOR_PREFIX = "bkgdb "


#: Suffix of the temporary name a file is written under before it is renamed into place.
PARTIAL_SUFFIX = ".bkgdb-partial"
#: The file an attach writes into its folder before its first run file: it marks the folder as
#: bkgdb's even when an interrupted attach left no index files, and names, one a line
#: (``data/NAME``), the run files attach wrote or was about to write there.
ATTACH_MARKER = ".bkgdb-attach"
MARKER_HEADER = "# Written by `bkgdb attach`: the files it wrote here, which `bkgdb attach --overwrite` may replace.\n"


def partial_path(path: str | Path) -> Path:
    """The temporary name ``path`` is written under before it is renamed into place."""
    path = Path(path)
    return path.with_name(f".{path.name}{PARTIAL_SUFFIX}")


class UnsafeDestination(BkgdbError):
    """The output folder of an attach would overwrite or mix with files that are not bkgdb's to replace."""


def resolved(path: str | Path) -> Path:
    """Absolute path with every symlink of its existing part resolved."""
    return Path(os.path.realpath(Path(path).expanduser()))


def run_output(out_dir: Path, run: RunSource) -> Path:
    # Called only for runs whose events file is known.
    return out_dir / DATA_DIR / cast(Path, run.events_path).name


def _planned_outputs(source: DL3Datastore, out_dir: Path) -> list[Path]:
    """Every path an attach of ``source`` into ``out_dir`` may write: run files, index files, temporaries."""
    finals = [out_dir / name for name in (OBS_INDEX, HDU_INDEX)]
    by_name: dict[Path, int] = {}
    for run in source.runs():
        if run.events_path is None:
            continue
        output = run_output(out_dir, run)
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
    return {
        path: f"the hdu-index of the target {source.path} points to it ({what})"
        for path, what in source.referenced_files().items()
    }


def _protected_by_catalogue(catalogue: RunCatalogue, names: Collection[str]) -> dict[Path, str]:
    """{resolved path: why} of catalogued run files named as in ``names``, and every catalogued index file."""
    from bkgdb.store.targets import catalogued_files

    protected: dict[Path, str] = {}
    with catalogue.session() as session:
        folders, rows = catalogued_files(session)
        for folder in folders:
            for name in INDEX_NAMES:
                protected.setdefault(
                    resolved(Path(folder) / name), f"it is an index file of the catalogued datastore {folder}"
                )
        for file_path, obs_id, folder in rows:
            if Path(file_path).name in names:  # resolve only what could collide: catalogues are large
                protected.setdefault(
                    resolved(file_path), f"it is the file of run {obs_id} of the catalogued datastore {folder}"
                )
    return protected


def _regular(path: Path) -> bool:
    """A file, not a link: attach writes files by renaming them into place, never links."""
    return path.is_file() and not path.is_symlink()


def _is_temporary(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(PARTIAL_SUFFIX) and _regular(path)


def marker_entries(out_dir: Path) -> set[str]:
    """The run files (``data/NAME``) the marker file of ``out_dir`` names; empty without one."""
    marker = out_dir / ATTACH_MARKER
    if not _regular(marker):
        return set()
    lines = marker.read_text(encoding="utf-8", errors="replace").splitlines()
    return {line for line in lines if line.startswith(f"{DATA_DIR}/") and "/" not in line[len(DATA_DIR) + 1 :]}


def _bkgdb_index(path: Path) -> set[str] | None:
    """The run files (``data/NAME``) an index file lists if bkgdb wrote it (CREATOR), else None."""
    from astropy.io import fits

    if not _regular(path):
        return None
    try:
        with fits.open(path, memmap=False) as hdul:
            table = hdul[1]
            if not str(table.header.get("CREATOR", "")).startswith(CREATOR_PREFIX):
                return None
            names = table.columns.names
            if "FILE_NAME" not in names or "FILE_DIR" not in names:  # an obs-index
                return set()
            rows = zip(table.data["FILE_DIR"], table.data["FILE_NAME"], strict=True)
            # attach lists its run files in data/; shared IRFs are listed where they are, outside --out.
            return {f"{DATA_DIR}/{str(name).strip()}" for folder, name in rows if str(folder).strip() == DATA_DIR}
    except Exception:  # unreadable: certainly not ours to judge as replaceable
        return None


def bkgdb_files(out_dir: Path) -> tuple[set[str], list[str]]:
    """Sort what ``out_dir`` holds into files an attach wrote and everything else.

    An attach wrote, and ``--overwrite`` may replace or remove,

    - the marker file `ATTACH_MARKER`;
    - index files (`INDEX_NAMES`) whose CREATOR is bkgdb's (`CREATOR_PREFIX`), as every bkgdb
      version wrote them;
    - temporary files named as attach names them (``.NAME.bkgdb-partial``) in ``out_dir`` and
      its ``data`` folder;
    - files in ``data`` that the marker names or that such an hdu-index lists: a killed attach
      leaves no index files but its marker, an earlier bkgdb's output no marker but its index files.

    Anything else, links and other folders included, is not bkgdb's, nor is any file of an
    interrupted attach by a bkgdb that wrote no marker (nothing tells it from a user's).

    Returns
    -------
    ours : set of str
        Paths relative to ``out_dir`` (``/``-separated) of the files an attach wrote.
    others : list of str
        Sorted relative paths of everything else (folders end with ``/``).
    """
    ours: set[str] = set()
    others: list[str] = []
    listed = marker_entries(out_dir)
    if _regular(out_dir / ATTACH_MARKER):
        ours.add(ATTACH_MARKER)
    for name in INDEX_NAMES:
        path = out_dir / name
        if path.exists() or path.is_symlink():
            files = _bkgdb_index(path)
            if files is None:
                others.append(name)
            else:
                ours.add(name)
                listed |= files
    for path in sorted(out_dir.iterdir()):
        if path.name in ours or path.name in others:
            continue
        if _is_temporary(path):
            ours.add(path.name)
        elif path.name == DATA_DIR and path.is_dir() and not path.is_symlink():
            for inner in sorted(path.iterdir()):
                relative = f"{DATA_DIR}/{inner.name}"
                if _is_temporary(inner) or (relative in listed and _regular(inner)):
                    ours.add(relative)
                else:
                    others.append(relative + ("/" if inner.is_dir() else ""))
        else:
            others.append(path.name + ("/" if path.is_dir() else ""))
    return ours, sorted(others)


def check_destination(catalogue: RunCatalogue, source: DL3Datastore, out_dir: Path, overwrite: bool) -> set[str]:
    """`check_attach_destination` on a resolved ``out_dir``; return the run files (``data/NAME``) of
    an earlier attach found there, which the attach takes over (names in its marker)."""
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

    outputs = [resolved(path) for path in _planned_outputs(source, out_dir)]
    protected = _protected_by_target(source)
    for path, why in _protected_by_catalogue(catalogue, {path.name for path in outputs}).items():
        protected.setdefault(path, why)
    for path in outputs:
        if path in protected:
            raise UnsafeDestination(f"refusing to write {path}: {protected[path]}")
        if path.is_relative_to(target):
            raise UnsafeDestination(f"refusing to write {path}: it is inside the target datastore {target}")

    check_writable_folder(out_dir)
    if not out_dir.is_dir():
        return set()
    ours, others = bkgdb_files(out_dir)
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise UnsafeDestination(
            f"refusing to write into {out_dir}: it holds files bkgdb did not write ({shown}); give a new or "
            "empty folder (--overwrite replaces only what an earlier attach wrote)"
        )
    # Without files (an empty data folder at most) there is nothing to overwrite.
    if ours and not overwrite:
        raise UnsafeDestination(
            f"--out {out_dir} is not empty: pass --overwrite to replace what an earlier attach wrote there, "
            "or give a new or empty folder"
        )
    return {name for name in ours if name.startswith(f"{DATA_DIR}/") and not name.endswith(PARTIAL_SUFFIX)}


def check_attach_destination(
    catalogue: RunCatalogue, target: str | Path, out_dir: str | Path, overwrite: bool = False
) -> Path:
    """Refuse an attach output folder that would put a user's files at risk; return it resolved.

    Call it before any indexing work; `attach_backgrounds` calls it too. The checks read only the
    index files of ``target``, the catalogue, and the listing, marker and index files of
    ``out_dir``. An attach must not write

    - into the target datastore folder: ``out_dir`` may not be it, lie inside it or contain it;
    - to any path (symlinks resolved) that a row of the target's hdu-index points to
      (``BASE_DIR``/``FILE_DIR``/``FILE_NAME``), that is the file of a catalogued run, or that is an
      index file of a catalogued datastore;
    - into a folder holding any file that bkgdb did not write (`bkgdb_files`), even with
      ``overwrite``;
    - into an earlier attach's folder, unless ``overwrite``.

    Parameters
    ----------
    catalogue : `~bkgdb.store.catalogue.RunCatalogue`
        The catalogue whose datastores are protected.
    target, out_dir : str or `~pathlib.Path`
        The datastore whose runs get backgrounds, and the new datastore's folder.
    overwrite : bool, optional
        Allow an earlier attach's ``out_dir``, whose files the attach replaces. Default is False.

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

    out_dir = resolved(out_dir)
    check_destination(catalogue, DL3Datastore(target), out_dir, overwrite)
    return out_dir
