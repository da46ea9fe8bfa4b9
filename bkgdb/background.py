"""Building a target run's background from the catalogue, writing it, attaching it to datastores.

`BackgroundBuilder` ties the steps together: select similar runs (SQL), load and sum their pieces,
smooth on demand, and produce a gammapy `Background2D` or `Background3D` with its provenance.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from bkgdb.built import BuiltBackground
from bkgdb.errors import BkgdbError, BkgdbWarning
from bkgdb.gadf.sash import HESS_INSTRUMENT, check_writable, gammapy_reverses_lon, read_events_header
from bkgdb.geometry import PieceGeometry
from bkgdb.makers.assembly import AssembledBackground, assemble_stacked, energy_nodes_for_gammapy, fill_empty_bins
from bkgdb.makers.condition_model import RunConditions
from bkgdb.makers.fov_nodes import fov_nodes_for_gammapy
from bkgdb.makers.normalisation import NO_NORMALISATION, Normalisation
from bkgdb.makers.smoothing import BackgroundSmoother
from bkgdb.outputs import check_new_file, write_output
from bkgdb.store.backgrounds import (
    background_history,
    datastore_paths,
    find_target,
    own_piece,
    record_background,
    record_if_writable,
    run_conditions,
    runs_by_id,
    selected_pieces,
)
from bkgdb.store.condition_models import CONDITION_MODEL_MAX_RUNS, archive_condition_model
from bkgdb.store.models import Run
from bkgdb.store.pieces import stacked_pieces
from bkgdb.store.selection import RunSelector, Selection
from bkgdb.store.settings import setting_rows

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from bkgdb.config import AnyBinning, BkgdbConfig, SelectionSettings
    from bkgdb.gadf.attach import AttachReport
    from bkgdb.makers.condition_model import ConditionModel
    from bkgdb.store.catalogue import RunCatalogue
    from bkgdb.store.models import BackgroundRow
    from bkgdb.store.settings import SettingRow

    #: A FITS header value, or a (value, comment) pair.
    HeaderCard = str | tuple[str | int | float, str]

__all__ = ["BackgroundBuilder", "background_history", "check_background_output", "per_run_normalisation"]

log = logging.getLogger(__name__)


def check_background_output(
    path: str | Path, obs_id: int, overwrite: bool = False, protected: Iterable[Path] = ()
) -> Path:
    """``path`` as the FITS file of run ``obs_id``'s background (`BackgroundBuilder.write`).

    Raises
    ------
    BkgdbError
        ``path`` is a folder, its folder does not exist, or it exists and ``overwrite`` is False,
        or it is one of ``protected`` (`~bkgdb.outputs.check_new_file`).
    """
    path = Path(path)
    if path.is_dir():  # said here with a name to give; the rest is every output's check
        raise BkgdbError(f"{path} is a folder: give the FITS file to write, e.g. {path / f'bkg-{obs_id}.fits'}")
    return check_new_file(path, overwrite, protected)


def _target_reverses_lon(target: Run) -> bool:
    """Whether gammapy reads any background of ``target`` as reversed RA/Dec (`bkgdb.gadf.sash`): its EVENTS header.

    Only H.E.S.S. exports are so read. When the run file cannot be read (moved since the index),
    a H.E.S.S. run's 3D model is refused, as whether gammapy mirrors it cannot be told; a run of
    another catalogued instrument counts as not reversed; one of unknown instrument too, with a
    `~bkgdb.errors.BkgdbWarning`.

    Raises
    ------
    BkgdbError
        A H.E.S.S. run whose EVENTS header cannot be read.
    """
    import warnings

    try:
        if target.file_path is None:
            raise BkgdbError("the catalogue has no file for it")
        return gammapy_reverses_lon(read_events_header(target.file_path))
    except BkgdbError as exc:
        if target.instrument == HESS_INSTRUMENT:
            raise BkgdbError(
                f"run {target.obs_id}: {exc}; gammapy reads the 3D backgrounds of H.E.S.S. SASH exports "
                "(EVENTS CREATOR 'SASH FITS::EventListWriter') mirrored, and without the file bkgdb cannot "
                "tell whether this run is one: restore the file, or write a 2D model"
            ) from None
        if target.instrument is None:
            warnings.warn(
                f"run {target.obs_id}: {exc}; the 3D model is written as built, which gammapy misreads "
                "if the run is a H.E.S.S. SASH export (EVENTS CREATOR 'SASH FITS::EventListWriter')",
                BkgdbWarning,
                stacklevel=3,
            )
        return False


class BackgroundBuilder:
    """Builds backgrounds from a catalogue's pieces, with a `~bkgdb.config.BkgdbConfig`.

    Parameters
    ----------
    catalogue : `~bkgdb.store.catalogue.RunCatalogue`
    config : `~bkgdb.config.BkgdbConfig`
        Its first 2D or first 3D binning, the exclusion setting and ``background_selection`` are used.
    smooth : str, optional
        Smoothing method overriding the config's. Default is None.
    three_d : bool, optional
        Build on the config's 3D binning (`~gammapy.irf.Background3D`) rather than its 2D one.
        Default is the config's ``io.3d_bkg``.
    """

    def __init__(
        self, catalogue: RunCatalogue, config: BkgdbConfig, smooth: str | None = None, three_d: bool | None = None
    ) -> None:
        self.catalogue = catalogue
        self.config = config
        self.three_d = bool(config.io.three_d if three_d is None else three_d)
        #: The binning backgrounds are assembled on.
        self.binning = config.binning_for(self.three_d)
        s = config.selection
        self.smoother = BackgroundSmoother(smooth or s.smooth_method, s.smooth_sigma, s.poly_degree, s.spline_smoothing)
        self.selector = RunSelector(s, from_run=config.io.from_run, search_datastore=config.io.search_datastore)
        self._extra_keys: list[str] | None = None
        self._rows: tuple[SettingRow, SettingRow] | None = None
        #: At most this many archive runs fit the condition model
        #: (`bkgdb.store.condition_models.archive_condition_model`).
        self.condition_model_max_runs = CONDITION_MODEL_MAX_RUNS
        self._condition_memo: dict = {}
        #: Datastore paths by id, read once (`~bkgdb.store.backgrounds.datastore_paths`).
        self._datastore_paths: dict[int, str] = {}

    def _setting_rows(self, session: Session) -> tuple[SettingRow, SettingRow]:
        """(binning row, exclusion row) of the config, looked up once per builder."""
        if self._rows is None:
            self._rows = setting_rows(session, self.binning, self.config.exclusion)
        return self._rows

    def _condition_fit_binning(self, session: Session) -> tuple[AnyBinning, int]:
        """(binning, row id) the condition model is fitted on.

        Its parameters are global (an energy shift and a rate factor per run), so a 3D build uses
        the fit on the config's 2D binning of the same energies when that binning has pieces: one
        fit serves both, and the 2D fit weighs offsets exactly.
        """
        binning_row, _ = self._setting_rows(session)
        two_d = self.config.binning
        if self.three_d and two_d is not None and np.array_equal(two_d.energy_edges, self.binning.energy_edges):
            try:
                row, _ = setting_rows(session, two_d, self.config.exclusion)
            except BkgdbError:  # the 2D binning was never indexed
                pass
            else:
                return two_d, row.id
        return self.binning, binning_row.id

    def build(
        self, obs_id: int, datastore: str | Path | None = None, session: Session | None = None
    ) -> BuiltBackground:
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
        session = session or self.catalogue.session()
        try:
            binning_row, exclusion_row = self._setting_rows(session)
            target = find_target(session, obs_id, datastore)
            if self._extra_keys is None:
                self._extra_keys = self.catalogue.extra_keys()
            selection = self.selector.run(
                session, target, binning_row.id, exclusion_row.id, self._extra_keys, with_pieces=True
            )
            # Read with the candidates when every candidate was chosen, else now.
            columns = selection.pieces
            if columns is None:
                columns = selected_pieces(
                    session, selection.piece_ids, selection.run_ids, binning_row.id, exclusion_row.id
                )
            selection.pieces = None  # not kept with the result: the arrays are summed
            selection.datastores = datastore_paths(session, selection.datastore_ids, self._datastore_paths)
            # Decoded together (one buffer per array), not as one BackgroundPiece per run.
            counts, exposure = stacked_pieces(columns, self.binning.geometry.shape)
            model: ConditionModel | None
            model_record: dict | None
            model, model_record = None, None
            if self.config.selection.assembly == "condition" and not self.config.io.from_run:
                fit_binning, fit_id = self._condition_fit_binning(session)
                model, model_record = archive_condition_model(
                    session,
                    fit_id,
                    exclusion_row.id,
                    fit_binning.geometry,
                    self.config.selection,
                    max_runs=self.condition_model_max_runs,
                    memo=self._condition_memo,
                    # The target's instrument only, as its selection (`RunSelector.criteria`).
                    instrument=target.instrument if self.config.selection.same_instrument else None,
                )
            assembled = assemble_stacked(
                counts,
                exposure,
                list(columns["piece_ontime_s"]),
                self.binning.geometry,
                # Only the condition model reads the runs' conditions: not made per run without it.
                None
                if model is None
                else [RunConditions(*values) for values in run_conditions(session, selection.run_ids)],
                # Run.zenith_deg is nullable: condition-aware assembly refuses a target without one, saying so.
                RunConditions(target.zenith_deg, target.az_deg, target.muon_eff),  # type: ignore[arg-type]
                model,
            )
            weights = assembled.weights if assembled.weights is not None else [1.0] * len(selection.piece_ids)
            rate = self.smoother.run(assembled)
            # Per-run normalisation (bkgdb.makers.normalisation): after smoothing, before empty bins are filled.
            normalisation = per_run_normalisation(
                session, self.config.selection, target, selection, rate, assembled, binning_row.id, exclusion_row.id
            )
            rate = rate * normalisation.factor
            if self.config.selection.fill_empty_bins:
                rate = fill_empty_bins(rate, assembled)
            if self.config.selection.bin_centre_correction:
                # What gammapy interpolates, in space and then in energy, back to the measured rates.
                rate = energy_nodes_for_gammapy(
                    fov_nodes_for_gammapy(rate, assembled, label=f"run {target.obs_id}"), assembled
                )
            return BuiltBackground(
                target,
                selection,
                assembled,
                self.smoother.method,
                rate,
                binning_row.hash,
                exclusion_row.hash,
                binning_row.id,
                exclusion_row.id,
                condition_model=model_record,
                normalisation=normalisation,
                # Copies of what may change later (the selection's list, the weights): a snapshot.
                input_columns=(
                    columns["piece_id"],
                    tuple(selection.run_ids),
                    tuple(selection.obs_ids),
                    columns["file_sha256"],
                    columns["created_at"],
                    np.array(weights, dtype=float),
                ),
            )
        finally:
            if own_session:
                session.close()

    def record(self, session: Session, built: BuiltBackground, output_path: str | Path | None = None) -> BackgroundRow:
        """Store the provenance of a built background in the database, with the pieces it used."""
        return record_background(session, built, self.config.selection.params, self.config.io.from_run, output_path)

    def write(
        self,
        obs_id: int,
        path: str | Path,
        datastore: str | Path | None = None,
        overwrite: bool = False,
        protected: Iterable[Path] = (),
    ) -> BuiltBackground:
        """Build the background of ``obs_id`` and write it as a FITS file gammapy reads.

        The file holds the model in HDU ``BACKGROUND`` (`Background2D`, or `Background3D` when the
        builder is 3D) and the OBS_IDs it was built from in HDU ``BKGDB_RUNS``. The build is then
        recorded in the database; on a read-only database that is skipped with a
        `~bkgdb.errors.ReadOnlyWarning` and the file is still written.

        Raises
        ------
        BkgdbError
            ``path`` is a folder, its folder does not exist, or it exists and ``overwrite`` is
            False (all checked before any work, and the last once more when the file is put in
            place), or it is the catalogue's database or in a catalogued datastore, or one of
            ``protected`` (`~bkgdb.outputs.check_new_file`), which are never replaced.

        The file is written beside ``path`` and then moved into place (`~bkgdb.outputs.write_output`):
        a failed write leaves an earlier file as it was.

        For a H.E.S.S. (SASH) target, whose every background gammapy reads as reversed RA/Dec
        (`bkgdb.gadf.sash`, from the EVENTS header of the run's file), a RADEC 3D model is written
        in that convention and an ALTAZ 3D one is refused (`~bkgdb.errors.BkgdbError`, before the
        build), as is any 3D model of a H.E.S.S. target whose file can no longer be read.
        """
        import warnings

        from astropy.io import fits

        from bkgdb.errors import ReadOnlyWarning

        path = check_background_output(
            path, obs_id, overwrite, [*self.catalogue.protected_paths({Path(path).name}), *protected]
        )
        with self.catalogue.session() as session:
            geometry = PieceGeometry.of(self.binning)
            reverse_lon = geometry.is_3d and _target_reverses_lon(find_target(session, obs_id, datastore))
            check_writable(geometry, reverse_lon)  # an ALTAZ 3D model gammapy would misread: refused before the build
            built = self.build(obs_id, datastore, session=session)
            model = built.model_hdu("BACKGROUND", reverse_lon=reverse_lon)
            hdus = fits.HDUList([fits.PrimaryHDU(), model, built.provenance_hdu()])
            write_output(path, hdus.writeto, overwrite)
            if not record_if_writable(
                session, built, self.config.selection.params, self.config.io.from_run, path.resolve()
            ):
                warnings.warn("history not recorded: the database is read-only", ReadOnlyWarning, stacklevel=2)
        return built

    def attach(
        self,
        target_datastore: str | Path,
        out_dir: str | Path,
        progress: Callable[[int, int], None] | None = None,
        overwrite: bool = False,
    ) -> AttachReport:
        """Write a copy of a datastore whose runs carry backgrounds; see `~bkgdb.gadf.attach.attach_backgrounds`."""
        from bkgdb.gadf.attach import attach_backgrounds

        return attach_backgrounds(self, target_datastore, out_dir, progress=progress, overwrite=overwrite)


def per_run_normalisation(
    session: Session,
    settings: SelectionSettings,
    target: Run,
    selection: Selection,
    rate: np.ndarray,
    assembled: AssembledBackground,
    binning_id: int,
    exclusion_id: int,
) -> Normalisation:
    """The configured per-run `~bkgdb.makers.normalisation.Normalisation` of a target's model.

    ``control-ring`` compares the target's own piece (exclusions applied) with the model in the
    ring; ``monitor`` compares a catalogue column of the target with the runs used.
    """
    from bkgdb.makers.normalisation import control_ring_normalisation, monitor_normalisation
    from bkgdb.store.conditions import typed_column

    if settings.normalisation == "control-ring":
        piece = own_piece(session, target, binning_id, exclusion_id)
        if piece is None:
            raise BkgdbError(
                f"control-ring normalisation needs run {target.obs_id}'s own piece: index its datastore with --config"
            )
        return control_ring_normalisation(
            rate,
            assembled.geometry,
            piece.counts,
            piece.exposure_s,
            *settings.normalisation_ring,
            model_counts=assembled.counts,
            energy_range_tev=settings.normalisation_energy,
            model_scatter=settings.normalisation_model_scatter,
        )
    if settings.normalisation == "monitor":
        # The config refuses method monitor without a column.
        name = cast(str, settings.normalisation_column)
        column = typed_column(name)

        def value(run: Run) -> object:
            if column is not None:
                return getattr(run, column.key)
            return {key.lower(): item for key, item in (run.extra or {}).items()}.get(name.lower())

        runs = runs_by_id(session, selection.run_ids)
        return monitor_normalisation(value(target), [value(run) for run in runs], [run.ontime_s for run in runs], name)
    return NO_NORMALISATION
