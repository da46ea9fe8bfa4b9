"""Files written for the user (models, figures, tables, reports): never over a file unless asked.

Every check here runs before any work, so that a mistyped path costs nothing and changes nothing.
Datastores written by ``attach`` have their own, stricter rules (`bkgdb.gadf.destination`).
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from bkgdb.errors import BkgdbError

__all__ = [
    "check_new_file",
    "check_writable_folder",
    "write_output",
    "catalogue_paths",
    "check_report_folder",
    "REPORT_FILES",
    "REPORT_INDEX",
    "REPORT_TABLE",
    "REPORT_FIGURE",
    "REPORT_TITLE",
]

#: A validation report's page, rows and figure (`bkgdb.plotting.report`).
REPORT_INDEX, REPORT_TABLE, REPORT_FIGURE = "index.html", "validation.csv", "validation.png"
#: How a report's page begins its title (`bkgdb.plotting.report`): what tells an earlier report.
REPORT_TITLE = "<title>bkgdb validation of"
#: Every name a validation report writes in its folder (the worst runs' figures as patterns).
REPORT_FILES = (REPORT_INDEX, REPORT_TABLE, REPORT_FIGURE, "run-*-model.png", "run-*-selection.png")


def check_new_file(path: str | Path, overwrite: bool = False, protected: Iterable[Path] = ()) -> Path:
    """``path`` as a file to write: refused when it is a folder, its folder cannot be written, or it
    exists and ``overwrite`` is False.

    ``protected`` are files and folders whose files are never replaced, even with ``overwrite``: the
    catalogue's database and datastores (`catalogue_paths`), a config file and what it reads. A
    protected file is refused even where it does not exist yet: an SQLite database's ``-journal``
    file, made by a bkgdb output, would be taken for the database's (and deleted or replayed).

    Raises
    ------
    BkgdbError
        Says what to do instead (create the folder, another name, or ``--overwrite``).
    """
    path = Path(path)
    if path.is_dir():
        raise BkgdbError(f"{path} is a folder: give the file to write")
    if not path.parent.is_dir():
        raise BkgdbError(f"folder {path.parent} does not exist: create it first")
    exists = path.exists() or path.is_symlink()  # a dangling link too: the file would be put in its place
    resolved = path.resolve()
    for kept in protected:
        kept = kept.resolve()
        if resolved == kept or (exists and kept in resolved.parents):
            raise BkgdbError(f"{path} is {_what(kept)} {kept}: bkgdb never writes it, even with --overwrite")
    if path.exists() and not path.is_file():
        # os.replace would put a regular file in place of a device (/dev/null) or a named pipe.
        raise BkgdbError(f"{path} is not a regular file (a device, pipe or socket): give a file's name")
    if exists and not overwrite:
        raise BkgdbError(f"{path} exists: remove it, give another name or pass --overwrite")
    check_writable_folder(path.parent)
    return path


def check_writable_folder(folder: Path) -> None:
    """Refuse, before any work, a folder in which no file can be made (read-only, immutable, full).

    A folder yet to be made is judged by the nearest one that exists, where it would be made. Tried
    by making and removing a file: permission bits do not tell for root, nor for immutable folders
    or read-only mounts.
    """
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        handle, name = tempfile.mkstemp(prefix=".bkgdb-", suffix=".probe", dir=folder)
    except OSError as exc:
        raise BkgdbError(f"cannot write in folder {folder}: {exc.strerror or exc}") from None
    os.close(handle)
    os.unlink(name)


def _what(path: Path) -> str:
    # A datastore folder is kept whether it is catalogued or about to be (``validate`` indexes its target).
    return "in the datastore" if path.is_dir() else "the file"


def catalogue_paths(database_file: str | None, datastores: Iterable[str] = ()) -> list[Path]:
    """What an output must never replace: an SQLite catalogue's ``database_file`` (with its -wal,
    -shm and -journal files; None for a server database) and the folders of the catalogued ``datastores``."""
    paths = [Path(folder) for folder in datastores]
    if database_file:
        paths += [Path(database_file + suffix) for suffix in ("", "-wal", "-shm", "-journal")]
    return paths


def write_output(path: str | Path, write: Callable[[Path], object], overwrite: bool = False) -> Path:
    """Write ``path`` through ``write(temporary)``, then put the finished file in its place at once.

    The temporary file lies beside ``path`` (same folder, same suffix: writers that tell the format
    by it see the right one). So an interrupted or failed write (a full disk, Ctrl-C) leaves any
    earlier file as it was and no temporary behind; with ``overwrite`` the file is replaced in one
    step (`os.replace`); without it, it is linked into place only if no file of that name exists by
    then (another process may have made one while the work ran), so nothing is ever replaced.

    Raises
    ------
    BkgdbError
        ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}.partial{path.suffix}")
    try:
        write(temporary)
        if overwrite:
            os.replace(temporary, path)
        else:
            try:
                os.link(temporary, path)  # fails, whatever the timing, if ``path`` exists
            except FileExistsError:
                raise BkgdbError(f"{path} exists: remove it, give another name or pass --overwrite") from None
            except OSError:  # a file system without hard links
                _copy_if_absent(temporary, path)
    except OSError as exc:  # the folder became unwritable, the disk full: said in a line, as any user error
        raise BkgdbError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        try:
            temporary.unlink(missing_ok=True)
        except OSError:
            pass  # an unwritable folder holds no temporary either
    return path


def _copy_if_absent(source: Path, path: Path) -> None:
    """Copy ``source`` to a ``path`` created for it (refused if it exists); a failed copy leaves no ``path``."""
    try:
        target = path.open("xb")
    except FileExistsError:
        raise BkgdbError(f"{path} exists: remove it, give another name or pass --overwrite") from None
    with target, source.open("rb") as data:
        try:
            shutil.copyfileobj(data, target)
        except BaseException:
            path.unlink(missing_ok=True)  # made just now, exclusively: ours to remove
            raise


def check_report_folder(folder: str | Path, overwrite: bool = False) -> Path:
    """``folder`` as a report's: new or empty; or, with ``overwrite``, an earlier report's.

    An earlier report's folder holds only `REPORT_FILES` (and temporary files of an interrupted
    report), among them its ``index.html``, whose title is a bkgdb report page's (`REPORT_TITLE`).

    Raises
    ------
    BkgdbError
        ``folder`` is a file, holds anything else (refused even with ``overwrite``), or holds an
        earlier report and ``overwrite`` is False.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise BkgdbError(f"report folder {folder} is a file")
    names = [path.name for path in folder.iterdir()] if folder.is_dir() else []
    check_writable_folder(folder)
    if not names:
        return folder
    patterns = (*REPORT_FILES, ".*.partial.*")
    others = [name for name in names if not any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)]
    if others:
        raise BkgdbError(
            f"report folder {folder} holds files that are not a bkgdb report's ({', '.join(sorted(others)[:3])}): "
            "give a new or empty folder"
        )
    page = folder / REPORT_INDEX
    if not (page.is_file() and REPORT_TITLE in page.read_text(encoding="utf-8", errors="replace")):
        # Report names without a report's page (a user's index.html, or a report interrupted before
        # its page): nothing shows that bkgdb wrote them.
        raise BkgdbError(
            f"report folder {folder} holds no bkgdb report page ({REPORT_INDEX}) beside report files: "
            "give a new or empty folder"
        )
    if not overwrite:
        raise BkgdbError(f"report folder {folder} holds an earlier report: pass --overwrite to replace it")
    return folder
