"""Files written for the user (models, figures, tables, reports): never over a file unless asked.

Every check here runs before any work, so that a mistyped path costs nothing and changes nothing.
Datastores written by ``attach`` have their own, stricter rules (`bkgdb.gadf.destination`).
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote

from bkgdb.errors import BkgdbError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

__all__ = [
    "check_new_file",
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
    """``path`` as a file to write: refused when it is a folder, or exists and ``overwrite`` is False.

    ``protected`` are files and folders whose files are never replaced, even with ``overwrite``: the
    catalogue's database and datastores (`catalogue_paths`), a config file.

    Raises
    ------
    BkgdbError
        Says what to do instead (another name, or ``--overwrite``).
    """
    path = Path(path)
    if path.is_dir():
        raise BkgdbError(f"{path} is a folder: give the file to write")
    if path.exists():
        if not overwrite:
            raise BkgdbError(f"{path} exists: remove it, give another name or pass --overwrite")
        resolved = path.resolve()
        for kept in protected:
            kept = kept.resolve()
            if resolved == kept or kept in resolved.parents:
                raise BkgdbError(f"{path} is {_what(kept)} {kept}: bkgdb never replaces it, even with --overwrite")
    return path


def _what(path: Path) -> str:
    return "in the catalogued datastore" if path.is_dir() else "the file"


def catalogue_paths(engine: Engine, datastores: Iterable[str] = ()) -> list[Path]:
    """What an output must never replace: an SQLite catalogue's file (with its -wal, -shm and
    -journal files) and the folders of the catalogued ``datastores``."""
    paths = [Path(folder) for folder in datastores]
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if database and database != ":memory:":
        # A read-only catalogue's URL is a file: URI with query parameters.
        database = unquote(database.removeprefix("file:").split("?", 1)[0])
        paths += [Path(database + suffix) for suffix in ("", "-wal", "-shm", "-journal")]
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
                try:
                    os.link(temporary, path)  # fails, whatever the timing, if ``path`` exists
                except FileExistsError:
                    raise
                except OSError:  # a file system without hard links: created only if absent, then filled
                    with temporary.open("rb") as source, path.open("xb") as target:
                        shutil.copyfileobj(source, target)
            except FileExistsError:
                raise BkgdbError(f"{path} exists: remove it, give another name or pass --overwrite") from None
    finally:
        temporary.unlink(missing_ok=True)
    return path


def check_report_folder(folder: str | Path, overwrite: bool = False) -> Path:
    """``folder`` as a report's: new or empty; or, with ``overwrite``, an earlier report's.

    An earlier report's folder holds `REPORT_FILES` only, its ``index.html`` titled as a bkgdb
    report page is (`REPORT_TITLE`).

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
    if not names:
        return folder
    others = [name for name in names if not any(fnmatch.fnmatchcase(name, pattern) for pattern in REPORT_FILES)]
    page = folder / REPORT_INDEX
    if not others and not (page.is_file() and REPORT_TITLE in page.read_text(encoding="utf-8", errors="replace")):
        others = [REPORT_INDEX]
    if others:
        raise BkgdbError(
            f"report folder {folder} holds files that are not a bkgdb report's ({', '.join(sorted(others)[:3])}): "
            "give a new or empty folder"
        )
    if not overwrite:
        raise BkgdbError(f"report folder {folder} holds an earlier report: pass --overwrite to replace it")
    return folder
