"""Files written for the user (models, figures, tables, reports): never over a file unless asked.

Every check here runs before any work, so that a mistyped path costs nothing and changes nothing.
Datastores written by ``attach`` have their own, stricter rules (`bkgdb.gadf.destination`).
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

from bkgdb.errors import BkgdbError

__all__ = [
    "check_new_file",
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


def check_new_file(path: str | Path, overwrite: bool = False) -> Path:
    """``path`` as a file to write: refused when it is a folder, or exists and ``overwrite`` is False.

    Raises
    ------
    BkgdbError
        Says what to do instead (another name, or ``--overwrite``).
    """
    path = Path(path)
    if path.is_dir():
        raise BkgdbError(f"{path} is a folder: give the file to write")
    if path.exists() and not overwrite:
        raise BkgdbError(f"{path} exists: remove it, give another name or pass --overwrite")
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
