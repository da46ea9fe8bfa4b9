"""Where an attach may write: the checks that keep a user's files from ever being overwritten.

`check_attach_destination` refuses, before any work, an output folder that is, holds or lies
inside the target datastore, any output path that a file of the target (through its hdu-index) or
of a catalogued datastore resolves to, and a non-empty folder without ``overwrite`` (and, even
with it, a folder whose index files bkgdb did not write).
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, cast

from bkgdb.errors import BkgdbError

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
    base = str(source.hdu_table.meta.get("BASE_DIR", "")).strip()
    protected: dict[Path, str] = {}
    for row in source.hdu_table:
        file_dir = str(row["FILE_DIR"]).strip() if "FILE_DIR" in row.colnames else ""
        path = resolved(source.path / base / file_dir / str(row["FILE_NAME"]).strip())
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
                    resolved(Path(folder) / name), f"it is an index file of the catalogued datastore {folder}"
                )
        for file_path, obs_id, folder in rows:
            if Path(file_path).name in names:  # resolve only what could collide: catalogues are large
                protected.setdefault(
                    resolved(file_path), f"it is the file of run {obs_id} of the catalogued datastore {folder}"
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


def check_destination(catalogue: RunCatalogue, source: DL3Datastore, out_dir: Path, overwrite: bool) -> None:
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

    out_dir = resolved(out_dir)
    check_destination(catalogue, DL3Datastore(target), out_dir, overwrite)
    return out_dir
