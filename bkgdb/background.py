"""Building a target run's background from the catalogue, writing it, attaching it to datastores.

`BackgroundBuilder` ties the steps together: select similar runs (SQL), load and sum their pieces,
smooth on demand, and produce a gammapy `Background2D` with its provenance.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from bkgdb import __version__
from bkgdb.makers.assembly import assemble_background, bin_average_to_centre, fill_empty_bins
from bkgdb.store.condition_models import CONDITION_MODEL_MAX_RUNS, archive_condition_model
from bkgdb.store.pieces import row_to_piece
from bkgdb.makers.condition_model import RunConditions
from bkgdb.errors import BkgdbError
from bkgdb.gadf.hdu import background_hdu
from bkgdb.store.models import (RUN_STATUS_FAILED, RUN_STATUS_OK, BackgroundInput, BackgroundRow, BinningRow, Datastore,
                     ExclusionRow, PieceRow, Run)
from bkgdb.makers.normalisation import NO_NORMALISATION
from bkgdb.store.selection import RunSelector
from bkgdb.makers.smoothing import BackgroundSmoother

__all__ = ["BackgroundBuilder", "BuiltBackground", "PieceInput", "background_history", "per_run_normalisation",
           "PROVENANCE_HDU", "BKG_HDU"]

log = logging.getLogger(__name__)

BKG_HDU = "BKG"
#: Run ids bound in one query: one round trip up to this many selected runs (SQLite binds 32766).
ID_CHUNK = 30000
PROVENANCE_HDU = "BKGDB_RUNS"


@dataclass
class PieceInput:
    """One piece summed into a background, as it was at build time (its lineage record)."""

    piece_id: int
    run_id: int
    obs_id: int
    file_sha256: str | None
    created_at: object
    #: The piece's weight in the sum; 1 for plain summation.
    weight: float = 1.0


@dataclass
class BuiltBackground:
    """A background model for one target run and how it was made.

    ``rate`` is the model (s-1 MeV-1 sr-1 per energy and offset bin of ``assembled.geometry``);
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
    #: Per-run scale applied to the model (`bkgdb.makers.normalisation.Normalisation`); factor 1 when none.
    normalisation: object = NO_NORMALISATION
    #: Parameters of the condition model the pieces were moved with (None: plain sum).
    condition_model: dict | None = None
    #: The pieces summed, in selection order (`PieceInput`); recorded as the background's lineage.
    inputs: list = field(default_factory=list)

    @property
    def model(self):
        return self.assembled.to_irf(self.rate)

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
            "BKG_NRMM": (self.normalisation.method, "per-run normalisation method"),
            "BKG_NRMF": (float(self.normalisation.factor), "per-run normalisation factor applied"),
            "BKG_NRMR": (self.normalisation.region, "where the normalisation was measured"),
            "BKG_ASM": ("condition" if self.condition_model else "sum", "condition: moved to target; sum: plain"),
            **self._condition_cards(),
        }

    def _condition_cards(self):
        if not self.condition_model:
            return {}
        params = self.condition_model
        return {
            "BKG_CMEZ": (round(params["energy_zenith"], 6), "E x (cos z/cos z_tgt)**this"),
            "BKG_CMEM": (round(params["energy_muon"], 6), "E x (muon_eff/muon_eff_tgt)**this"),
            "BKG_CMRZ": (round(params["rate_zenith"], 6), "rate x (cos z_tgt/cos z)**this"),
            "BKG_CMEA": (round(params["energy_azimuth"], 6), "E x exp(this*(N-N_tgt)), N=sin z cos az"),
            "BKG_CMRA": (round(params["rate_azimuth"], 6), "rate x exp(this*(N_tgt-N))"),
            "BKG_CMN": (int(params["n_runs"]), "runs the condition model was fitted on"),
            "BKG_CMD": (params["archive_digest"][:16], "condition model archive digest"),
        }

    def model_hdu(self, name=BKG_HDU, three_d=False):
        if three_d:
            hdu = self.model.to_3d().to_table_hdu()
            hdu.name = name
        else:
            hdu = background_hdu(self.assembled.geometry, self.rate, name)
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
    catalogue : `~bkgdb.store.catalogue.RunCatalogue`
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
        #: At most this many archive runs fit the condition model (`bkgdb.store.condition_models.archive_condition_model`).
        self.condition_model_max_runs = CONDITION_MODEL_MAX_RUNS
        self._condition_memo = {}

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

    @staticmethod
    def selected_pieces(session, run_ids, binning_id, exclusion_id):
        """(piece columns, datastore path, obs_id, zenith, azimuth, muon_eff) of the selected runs, in their order.

        One query (the ids as one list; split only beyond what SQLite binds at once), reading the
        piece columns a `~bkgdb.makers.piece.BackgroundPiece` needs, not ORM objects.
        """
        columns = (PieceRow.id, PieceRow.run_id, PieceRow.n_energy, PieceRow.n_offset, PieceRow.counts_dtype,
                   PieceRow.exposure_dtype, PieceRow.counts, PieceRow.excluded_counts, PieceRow.exposure_s,
                   PieceRow.ontime_s, PieceRow.livetime_s, PieceRow.regions, PieceRow.file_sha256,
                   PieceRow.created_at)
        rows = []
        for start in range(0, len(run_ids), ID_CHUNK):
            found = session.execute(
                sa.select(*columns, Datastore.path, Run.obs_id, Run.zenith_deg, Run.az_deg, Run.muon_eff)
                .join(Run, Run.id == PieceRow.run_id)
                .join(Datastore, Datastore.id == Run.datastore_id)
                .where(PieceRow.run_id.in_(run_ids[start:start + ID_CHUNK]),
                       PieceRow.binning_id == binning_id, PieceRow.exclusion_id == exclusion_id)).all()
            n = len(columns)
            rows += [(SimpleNamespace(**dict(zip((c.key for c in columns), row[:n]))), *row[n:]) for row in found]
        return rows

    def find_target(self, session, obs_id, datastore=None):
        """The catalogue row of run ``obs_id`` (of ``datastore``); a run that failed to index says why."""
        query = sa.select(Run).join(Datastore).where(Run.obs_id == obs_id)
        if datastore is not None:
            query = query.where(Datastore.at(datastore))
        found = session.scalars(query).all()
        runs = [run for run in found if run.status == RUN_STATUS_OK]
        failed = [run for run in found if run.status == RUN_STATUS_FAILED]
        if not runs and failed:
            raise BkgdbError(f"run {obs_id} failed to index: {failed[0].error}"
                             + (f" ({failed[0].datastore.path})" if len(found) > 1 or datastore else ""))
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
            rows = self.selected_pieces(session, selection.run_ids, binning_row.id, exclusion_row.id)
            order = {run_id: index for index, run_id in enumerate(selection.run_ids)}
            rows = sorted(rows, key=lambda row: order[row[0].run_id])
            selection.datastores = [row[1] for row in rows]
            pieces = [row_to_piece(row[0]) for row in rows]
            model, model_record = None, None
            if self.config.selection.assembly == "condition" and not self.config.io.from_run:
                model, model_record = archive_condition_model(
                    session, binning_row.id, exclusion_row.id, self.config.binning.energy_edges, self.config.selection,
                    max_runs=self.condition_model_max_runs, memo=self._condition_memo)
            assembled = assemble_background(
                pieces, self.config.binning, [RunConditions(*row[3:]) for row in rows],
                RunConditions(target.zenith_deg, target.az_deg, target.muon_eff), model)
            weights = assembled.weights if assembled.weights is not None else [1.0] * len(rows)
            inputs = [PieceInput(piece.id, piece.run_id, run_obs_id, piece.file_sha256, piece.created_at, float(weight))
                      for (piece, _, run_obs_id, *_), weight in zip(rows, weights)]
            rate = self.smoother.run(assembled)
            # Per-run normalisation (bkgdb.makers.normalisation): after smoothing, before empty bins are filled.
            normalisation = per_run_normalisation(session, self.config.selection, target, selection, rate, assembled,
                                                  binning_row.id, exclusion_row.id)
            rate = rate * normalisation.factor
            if self.config.selection.fill_empty_bins:
                rate = fill_empty_bins(rate, assembled)
            if self.config.selection.bin_centre_correction:
                rate = bin_average_to_centre(rate, assembled)
            return BuiltBackground(target, selection, assembled, self.smoother.method, rate,
                                   binning_row.hash, exclusion_row.hash, binning_row.id, exclusion_row.id,
                                   condition_model=model_record, normalisation=normalisation, inputs=inputs)
        finally:
            if own_session:
                session.close()

    def record(self, session, built, output_path=None):
        """Store the provenance of a built background in the database, with the pieces it used."""
        row = BackgroundRow(
            target_run_id=built.target.id, target_obs_id=built.target.obs_id, binning_id=built.binning_id,
            exclusion_id=built.exclusion_id,
            selection={"settings": self.config.selection.params, "from_run": self.config.io.from_run,
                       **built.selection.as_dict(), "normalisation": built.normalisation.as_dict(),
                       "condition_model": built.condition_model},
            obs_ids=list(built.selection.obs_ids), n_runs=len(built.selection.obs_ids),
            ontime_s=built.assembled.ontime_s, smoothing=built.smoothing,
            output_path=None if output_path is None else str(output_path),
        )
        session.add(row)
        session.flush()
        session.add_all([BackgroundInput(
            background_id=row.id, piece_id=item.piece_id, run_id=item.run_id, obs_id=item.obs_id,
            file_sha256=item.file_sha256, piece_created_at=item.created_at,
            weight=1.0 if item.weight is None else float(item.weight),
        ) for item in built.inputs])
        return row

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

        from bkgdb.store.database import is_readonly_error
        from bkgdb.errors import ReadOnlyWarning

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

    def attach(self, target_datastore, out_dir, progress=None, overwrite=False):
        """Write a copy of a datastore whose runs carry backgrounds; see `~bkgdb.gadf.attach.attach_backgrounds`."""
        from bkgdb.gadf.attach import attach_backgrounds

        return attach_backgrounds(self, target_datastore, out_dir, progress=progress, overwrite=overwrite)


def per_run_normalisation(session, settings, target, selection, rate, assembled, binning_id, exclusion_id):
    """The configured per-run `~bkgdb.makers.normalisation.Normalisation` of a target's model.

    ``control-ring`` compares the target's own piece (exclusions applied) with the model in the
    ring; ``monitor`` compares a catalogue column of the target with the runs used.
    """
    from bkgdb.store.conditions import typed_column
    from bkgdb.makers.normalisation import control_ring_normalisation, monitor_normalisation

    if settings.normalisation == "control-ring":
        own = session.scalars(sa.select(PieceRow).where(
            PieceRow.run_id == target.id, PieceRow.binning_id == binning_id, PieceRow.exclusion_id == exclusion_id)
        ).one_or_none()
        if own is None:
            raise BkgdbError(f"control-ring normalisation needs run {target.obs_id}'s own piece: "
                             "index its datastore with --config")
        piece = row_to_piece(own)
        return control_ring_normalisation(rate, assembled.geometry, piece.counts,
                                          piece.exposure_s, *settings.normalisation_ring, model_counts=assembled.counts,
                                          energy_range_tev=settings.normalisation_energy,
                                          model_scatter=settings.normalisation_model_scatter)
    if settings.normalisation == "monitor":
        name = settings.normalisation_column
        column = typed_column(name)

        def value(run):
            if column is not None:
                return getattr(run, column.key)
            return {key.lower(): item for key, item in (run.extra or {}).items()}.get(name.lower())

        runs = []
        for start in range(0, len(selection.run_ids), ID_CHUNK):
            runs += session.scalars(sa.select(Run).where(Run.id.in_(selection.run_ids[start:start + ID_CHUNK]))).all()
        return monitor_normalisation(value(target), [value(run) for run in runs], [run.ontime_s for run in runs], name)
    return NO_NORMALISATION
