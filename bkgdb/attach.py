"""Attaching backgrounds to a datastore: a new datastore whose runs carry bkgdb's models.

`attach_backgrounds` builds every run's background with a `~bkgdb.background.BackgroundBuilder`
and writes a copy of the run files with the model in a ``BKG`` HDU, plus new index files, so that
`gammapy.data.DataStore.from_dir` opens the result as is.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session

from . import __version__
from .background import BKG_HDU, PROVENANCE_HDU
from .errors import BkgdbError

__all__ = ["AttachReport", "attach_backgrounds", "write_fits"]

log = logging.getLogger(__name__)


@dataclass
class AttachReport:
    """What `attach_backgrounds` wrote."""

    out_dir: str
    written: list = field(default_factory=list)
    #: (obs_id, reason) of runs that got no background and were left out.
    skipped: list = field(default_factory=list)

    def summary(self):
        return f"{len(self.written)} runs written to {self.out_dir}, {len(self.skipped)} without background"


def write_fits(hdulist, path):
    """Write an HDU list; a ``.gz`` name is compressed at level 1 (astropy's level 9 is 5x slower)."""
    import gzip
    import io

    path = Path(path)
    if path.suffix != ".gz":
        hdulist.writeto(path, overwrite=True)
        return
    buffer = io.BytesIO()
    hdulist.writeto(buffer)
    with gzip.open(path, "wb", compresslevel=1) as handle:
        handle.write(buffer.getvalue())


def attach_backgrounds(builder, target_datastore, out_dir, progress=None):
    """Write a copy of a datastore whose runs carry backgrounds built by bkgdb.

    Every run of ``target_datastore`` (which must be indexed with the builder's config) gets
    its background; its file is copied into ``out_dir`` with the new ``BKG`` HDU replacing any
    existing background, and new obs-index and hdu-index files are written, so that
    `gammapy.data.DataStore.from_dir(out_dir)` opens it. The original files are not modified.
    Runs for which no background can be built are left out and reported.

    Parameters
    ----------
    builder : `~bkgdb.background.BackgroundBuilder`
        Builds each run's background and records it.
    target_datastore, out_dir : str or `~pathlib.Path`
        The datastore whose runs get backgrounds, and the new datastore's folder.
    progress : callable, optional
        Called as ``progress(done, total)`` after each run. Default is None.

    Returns
    -------
    report : `AttachReport`
    """
    from astropy.io import fits
    from astropy.table import Table

    from .datastore import DL3Datastore

    source = DL3Datastore(target_datastore)
    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir == source.path:
        raise BkgdbError("--out must differ from the target datastore: its files are never modified")
    (out_dir / "data").mkdir(parents=True, exist_ok=True)
    report = AttachReport(str(out_dir))
    hdu_table = source.hdu_table
    hdu_types = np.char.strip(np.char.lower(np.asarray(hdu_table["HDU_TYPE"]).astype(str)))
    runs = source.runs()
    hdu_rows, written = [], []
    with Session(builder.catalogue.engine, expire_on_commit=False) as session:
        for done, run in enumerate(runs, start=1):
            try:
                built = builder.build(run.obs_id, source.path, session=session)
            except BkgdbError as exc:
                report.skipped.append((run.obs_id, str(exc)))
                log.warning("run %s: no background: %s", run.obs_id, exc)
            else:
                target_file = out_dir / "data" / run.events_path.name
                own = (hdu_table["OBS_ID"] == run.obs_id)
                old_bkg = {str(name).strip() for name in hdu_table["HDU_NAME"][own & (hdu_types == "bkg")]}
                dropped = {name.upper() for name in old_bkg} | {BKG_HDU, PROVENANCE_HDU}
                with fits.open(run.events_path, memmap=False) as hdul:
                    kept = [hdu for hdu in hdul if hdu.name not in dropped]
                    write_fits(fits.HDUList(kept + [built.model_hdu(BKG_HDU), built.provenance_hdu()]),
                               target_file)
                hdu_rows.extend(_hdu_rows(source, hdu_table[own & (hdu_types != "bkg")], run, target_file))
                written.append(run.obs_id)
                builder.record(session, built, target_file)
                session.commit()
            if progress is not None:
                progress(done, len(runs))
    report.written = written
    if not written:
        return report
    obs_table = source.obs_table[np.isin(source.obs_table["OBS_ID"], written)]
    obs_table.meta["CREATOR"] = f"bkgdb {__version__}"
    obs_table.write(out_dir / "obs-index.fits.gz", overwrite=True)
    new_hdu_table = Table(rows=[[row[name] for name in hdu_table.colnames] for row in hdu_rows],
                          names=hdu_table.colnames)
    new_hdu_table.meta = {key: value for key, value in hdu_table.meta.items() if key != "BASE_DIR"}
    new_hdu_table.write(out_dir / "hdu-index.fits.gz", overwrite=True)
    return report


def _hdu_rows(source, rows, run, target_file):
    """hdu-index rows (dicts) of one attached run: its HDUs in the new file, others where they were."""
    from .datastore import json_safe

    base = str(source.hdu_table.meta.get("BASE_DIR", "")).strip()
    result = []
    for row in rows:
        values = {name: json_safe(row[name]) for name in rows.colnames}
        original = (source.path / base / values["FILE_DIR"] / values["FILE_NAME"]).resolve()
        if original == run.events_path:
            values["FILE_DIR"], values["FILE_NAME"] = "data", target_file.name
        else:  # shared IRF files stay where they are
            values["FILE_DIR"], values["FILE_NAME"] = str(original.parent), original.name
        result.append(values)
    bkg = dict(result[0])
    bkg.update({"HDU_TYPE": "bkg", "HDU_CLASS": "bkg_2d", "FILE_DIR": "data", "FILE_NAME": target_file.name,
                "HDU_NAME": BKG_HDU})
    if "SIZE" in bkg:
        bkg["SIZE"] = 0
    result.append(bkg)
    return result
