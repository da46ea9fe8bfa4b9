"""Building a target run's background from the catalogue, writing it, attaching it to datastores.

`BackgroundBuilder` ties the steps together: select similar runs (SQL), load and sum their pieces,
smooth on demand, and produce a gammapy `Background2D` with its provenance.
"""

import logging
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from . import __version__
from .assembly import assemble_background, bin_average_to_centre, fill_empty_bins
from .cache import row_to_piece
from .errors import BkgdbError
from .gadf import background_2d_hdu
from .models import RUN_STATUS_OK, BackgroundRow, BinningRow, Datastore, ExclusionRow, PieceRow, Run
from .selection import RunSelector
from .smoothing import BackgroundSmoother

__all__ = ["BackgroundBuilder", "BuiltBackground", "background_history", "PROVENANCE_HDU", "BKG_HDU"]

log = logging.getLogger(__name__)

BKG_HDU = "BKG"
ID_CHUNK = 5000
PROVENANCE_HDU = "BKGDB_RUNS"


@dataclass
class BuiltBackground:
    """A background model for one target run and how it was made.

    ``rate`` is the model (s-1 MeV-1 sr-1 per energy and offset bin of ``assembled.binning``);
    ``model`` gives it as a `gammapy.irf.Background2D`.
    """

    target: object
    selection: object
    assembled: object
    smoothing: str
    rate: np.ndarray
    binning_hash: str
    exclusion_hash: str
    binning_id: int | None = None
    exclusion_id: int | None = None

    @property
    def model(self):
        return self.assembled.to_background2d(self.rate)

    def header_cards(self):
        """FITS keywords recording the provenance (the full run list is a table HDU)."""
        return {
            "CREATOR": f"bkgdb {__version__}",
            "BKG_TGT": (int(self.target.obs_id), "OBS_ID the background was built for"),
            "BKG_NRUN": (len(self.selection.obs_ids), "runs summed"),
            "BKG_ONT": (float(self.assembled.ontime_s), "summed ontime [s]"),
            "BKG_TBAS": ("ONTIME", "rate is per second of ontime"),
            "BKG_SMTH": (self.smoothing, "smoothing method"),
            "BKG_RANK": (self.selection.ranking, "how candidates were ranked"),
            "BKG_BINH": (self.binning_hash[:16], "bkgdb binning hash"),
            "BKG_EXCH": (self.exclusion_hash[:16], "bkgdb exclusion hash"),
        }

    def model_hdu(self, name=BKG_HDU, three_d=False):
        if three_d:
            hdu = self.model.to_3d().to_table_hdu()
            hdu.name = name
        else:
            binning = self.assembled.binning
            hdu = background_2d_hdu(binning.energy_edges, binning.offset_edges, self.rate, name)
        for key, value in self.header_cards().items():
            hdu.header[key] = value
        return hdu

    def provenance_hdu(self):
        from astropy.io import fits
        from astropy.table import Table

        table = Table({"OBS_ID": np.asarray(self.selection.obs_ids, dtype=np.int64),
                       "DATASTORE": np.asarray(self.selection.datastores, dtype=str)})
        table.meta["BKG_TGT"] = int(self.target.obs_id)
        hdu = fits.table_to_hdu(table)
        hdu.name = PROVENANCE_HDU
        return hdu


def background_history(engine, obs_id=None):
    """Backgrounds built so far (newest first), from the provenance table; optionally for one target.

    Returns
    -------
    rows : list of dict
        target, runs summed, ontime (h), smoothing, ranking, output file and time of each.
    """
    query = sa.select(BackgroundRow).order_by(BackgroundRow.id.desc())
    if obs_id is not None:
        query = query.where(BackgroundRow.target_obs_id == obs_id)
    with Session(engine) as session:
        rows = session.scalars(query).all()
    return [{
        "id": row.id, "target": row.target_obs_id, "runs": row.n_runs, "ontime_h": row.ontime_s / 3600.0,
        "smoothing": row.smoothing, "ranking": (row.selection or {}).get("ranking"),
        "obs_ids": row.obs_ids, "output": row.output_path,
        "created_at": row.created_at.isoformat() if row.created_at else None,
    } for row in rows]


class BackgroundBuilder:
    """Builds backgrounds from a catalogue's pieces, with a `~bkgdb.config.BkgdbConfig`.

    Parameters
    ----------
    catalogue : `~bkgdb.catalogue.RunCatalogue`
    config : `~bkgdb.config.BkgdbConfig`
        The first binning, the exclusion setting and ``background_selection`` are used.
    smooth : str, optional
        Smoothing method overriding the config's. Default is None.
    """

    def __init__(self, catalogue, config, smooth=None):
        self.catalogue = catalogue
        self.config = config
        s = config.selection
        self.smoother = BackgroundSmoother(smooth or s.smooth_method, s.smooth_sigma, s.poly_degree,
                                           s.spline_smoothing)
        self.selector = RunSelector(s, from_run=config.io.from_run, search_datastore=config.io.search_datastore)
        self._extra_keys = None
        self._rows = None

    def _setting_rows(self, session):
        """(binning row, exclusion row) of the config, looked up once per builder."""
        if self._rows is not None:
            return self._rows
        binning, exclusion = self.config.binning, self.config.exclusion
        binning_row = session.scalars(sa.select(BinningRow).where(BinningRow.hash == binning.hash)).one_or_none()
        exclusion_row = session.scalars(
            sa.select(ExclusionRow).where(ExclusionRow.hash == exclusion.hash)).one_or_none()
        if binning_row is None or exclusion_row is None:
            raise BkgdbError("the catalogue has no pieces for this config's binning and exclusion setting: "
                             "run `bkgdb index DATASTORE --config FILE` first")
        # Plain values, not ORM rows: they outlive the session that found them.
        self._rows = (SimpleNamespace(id=binning_row.id, hash=binning_row.hash),
                      SimpleNamespace(id=exclusion_row.id, hash=exclusion_row.hash))
        return self._rows

    def find_target(self, session, obs_id, datastore=None):
        query = sa.select(Run).join(Datastore).where(Run.obs_id == obs_id, Run.status == RUN_STATUS_OK)
        if datastore is not None:
            query = query.where(Datastore.at(datastore))
        runs = session.scalars(query).all()
        if not runs:
            raise BkgdbError(f"run {obs_id} is not in the catalogue" + (f" for datastore {datastore}" if datastore else "")
                             + ": index its datastore first")
        if len(runs) > 1:
            paths = ", ".join(run.datastore.path for run in runs)
            raise BkgdbError(f"run {obs_id} is in several datastores ({paths}): give --datastore")
        return runs[0]

    def build(self, obs_id, datastore=None, session=None):
        """The background of run ``obs_id``.

        Parameters
        ----------
        obs_id : int
            The target run.
        datastore : str or `~pathlib.Path`, optional
            The target's datastore, needed when the OBS_ID is in several. Default is None.

        Returns
        -------
        built : `BuiltBackground`

        Raises
        ------
        NoRunsSelected
            No run passed the selection (the message says what each criterion removed).
        """
        own_session = session is None
        session = session or Session(self.catalogue.engine, expire_on_commit=False)
        try:
            binning_row, exclusion_row = self._setting_rows(session)
            target = self.find_target(session, obs_id, datastore)
            if self._extra_keys is None:
                self._extra_keys = self.catalogue.extra_keys()
            selection = self.selector.run(session, target, binning_row.id, exclusion_row.id, self._extra_keys)
            rows = []
            for start in range(0, len(selection.run_ids), ID_CHUNK):  # SQLite caps bound parameters
                rows += session.execute(
                    sa.select(PieceRow, Datastore.path).join(Run, Run.id == PieceRow.run_id)
                    .join(Datastore, Datastore.id == Run.datastore_id)
                    .where(PieceRow.run_id.in_(selection.run_ids[start:start + ID_CHUNK]),
                           PieceRow.binning_id == binning_row.id, PieceRow.exclusion_id == exclusion_row.id)
                ).all()
            order = {run_id: index for index, run_id in enumerate(selection.run_ids)}
            rows = sorted(rows, key=lambda row: order[row[0].run_id])
            selection.datastores = [path for _, path in rows]
            assembled = assemble_background([row_to_piece(piece) for piece, _ in rows], self.config.binning)
            rate = self.smoother.run(assembled)
            if self.config.selection.fill_empty_bins:
                rate = fill_empty_bins(rate, assembled)
            if self.config.selection.bin_centre_correction:
                rate = bin_average_to_centre(rate, assembled)
            return BuiltBackground(target, selection, assembled, self.smoother.method, rate,
                                   binning_row.hash, exclusion_row.hash, binning_row.id, exclusion_row.id)
        finally:
            if own_session:
                session.close()

    def record(self, session, built, output_path=None):
        """Store the provenance of a built background in the database."""
        session.add(BackgroundRow(
            target_run_id=built.target.id, target_obs_id=built.target.obs_id, binning_id=built.binning_id,
            exclusion_id=built.exclusion_id,
            selection={"settings": self.config.selection.params, "from_run": self.config.io.from_run,
                       **built.selection.as_dict()},
            obs_ids=list(built.selection.obs_ids), n_runs=len(built.selection.obs_ids),
            ontime_s=built.assembled.ontime_s, smoothing=built.smoothing,
            output_path=None if output_path is None else str(output_path),
        ))

    def write(self, obs_id, path, datastore=None, three_d=False, overwrite=False):
        """Build the background of ``obs_id`` and write it as a FITS file gammapy reads.

        The file holds the model in HDU ``BACKGROUND`` (`Background2D`, or `Background3D` with
        ``three_d``) and the OBS_IDs it was built from in HDU ``BKGDB_RUNS``. The build is then
        recorded in the database; on a read-only database that is skipped with a
        `~bkgdb.errors.ReadOnlyWarning` and the file is still written.

        Raises
        ------
        BkgdbError
            ``path`` is a folder, its folder does not exist, or it exists and ``overwrite`` is
            False (all checked before any work).
        """
        import warnings

        from astropy.io import fits

        from .database import is_readonly_error
        from .errors import ReadOnlyWarning

        path = Path(path)
        if path.is_dir():
            raise BkgdbError(f"{path} is a folder: give the FITS file to write, e.g. {path / f'bkg-{obs_id}.fits'}")
        if not path.parent.is_dir():
            raise BkgdbError(f"folder {path.parent} does not exist: create it first")
        if path.exists() and not overwrite:
            raise BkgdbError(f"{path} exists: remove it or pass --overwrite")
        with Session(self.catalogue.engine, expire_on_commit=False) as session:
            built = self.build(obs_id, datastore, session=session)
            try:
                fits.HDUList([fits.PrimaryHDU(), built.model_hdu("BACKGROUND", three_d), built.provenance_hdu()]
                             ).writeto(path, overwrite=overwrite)
            except OSError as exc:
                raise BkgdbError(f"cannot write {path}: {exc.strerror or exc}") from None
            try:
                self.record(session, built, path.resolve())
                session.commit()
            except (sa.exc.OperationalError, sa.exc.ProgrammingError, sa.exc.InternalError) as exc:
                session.rollback()
                if not is_readonly_error(exc):
                    raise
                warnings.warn("history not recorded: the database is read-only", ReadOnlyWarning, stacklevel=2)
        return built

    def attach(self, target_datastore, out_dir, progress=None):
        """Write a copy of a datastore whose runs carry backgrounds; see `~bkgdb.attach.attach_backgrounds`."""
        from .attach import attach_backgrounds

        return attach_backgrounds(self, target_datastore, out_dir, progress=progress)
