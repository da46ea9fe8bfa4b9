"""The figure methods of the front door, `bkgdb.Catalogue` (``bkgdb plot ...``).

matplotlib and gammapy are imported by the methods that draw, never by importing this module.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bkgdb.errors import BkgdbError, BkgdbWarning
from bkgdb.obs_id import check_obs_id
from bkgdb.outputs import check_new_file

if TYPE_CHECKING:
    from bkgdb.background import BackgroundBuilder
    from bkgdb.built import BuiltBackground
    from bkgdb.plotting import SignificanceMaps
    from bkgdb.store.catalogue import RunCatalogue
    from bkgdb.store.funnel import FunnelPicture

__all__ = ["CatalogueFigures", "check_figure_output", "check_energy_range"]


class CatalogueFigures:
    """Figures of runs, backgrounds and validations; mixed into `bkgdb.Catalogue`, which gives
    ``store`` (the database) and ``_builder`` (the one place backgrounds are built from)."""

    @property
    def store(self) -> RunCatalogue:
        raise NotImplementedError

    def _builder(
        self, smooth: str | None = None, where: Iterable[str] = (), three_d: bool | None = None
    ) -> BackgroundBuilder:
        raise NotImplementedError

    def _protected(self, output: str | Path, datastore: str | Path | None = None) -> list[Path]:
        """What ``output`` must not be (the database, catalogued datastores and their files, the config's files)."""
        raise NotImplementedError

    @staticmethod
    def plot_model_file(path: str | Path, output: str | Path, overwrite: bool = False) -> None:
        """Plot a background file written by `write_background`: rate curves (2D) or FoV images (3D)."""
        from bkgdb.plotting import ModelCurves, model_curves_from_file, plot_model, plot_model_3d, save_figure

        check_figure_output(output, overwrite)
        model_or_curves, header = model_curves_from_file(path)
        if isinstance(model_or_curves, ModelCurves):
            save_figure(plot_model(model_or_curves), output, overwrite=overwrite)
            return
        title = f"{Path(path).name}" + (f": run {header['BKG_TGT']}" if "BKG_TGT" in header else "")
        figure = plot_model_3d(model_or_curves, title=title)
        save_figure(figure, output, overwrite=overwrite)

    def plot_model(
        self,
        obs_id: int,
        output: str | Path,
        datastore: str | Path | None = None,
        smooth: str | None = None,
        where: Iterable[str] = (),
        with_reference: bool = True,
        three_d: bool = False,
        overwrite: bool = False,
    ) -> tuple[BuiltBackground, bool]:
        """Plot run ``obs_id``'s background beside its file's own model; return it and whether that was drawn.

        With ``three_d``, its 3D background as FoV images per energy band (the file's model is not drawn).
        """
        from bkgdb.plotting import plot_run_model, save_figure

        check_obs_id(obs_id)
        check_figure_output(output, overwrite, self._protected(output))
        figure, built, has_reference = plot_run_model(
            self._builder(smooth, where, three_d=three_d), int(obs_id), None, datastore, with_reference=with_reference
        )
        save_figure(figure, output, overwrite=overwrite)
        return built, has_reference

    def plot_selection(
        self,
        obs_id: int,
        output: str | Path,
        datastore: str | Path | None = None,
        where: Iterable[str] = (),
        overwrite: bool = False,
    ) -> FunnelPicture:
        """Plot every candidate run of ``obs_id``'s selection, coloured by what removed it."""
        from bkgdb.plotting import plot_selection, save_figure
        from bkgdb.store.funnel import funnel_picture

        check_obs_id(obs_id)
        check_figure_output(output, overwrite, self._protected(output))
        picture = funnel_picture(self._builder(None, where), obs_id, datastore)
        save_figure(plot_selection(picture), output, overwrite=overwrite)
        return picture

    def plot_validation(
        self, table: str | Path, output: str | Path, datastore: str | Path | None = None, overwrite: bool = False
    ) -> list[dict[str, Any]]:
        """Plot a table of `validate` (CSV or JSON); with the validated ``datastore``, norms against time.

        Without ``datastore`` the database is not opened. Return the table's rows.
        """
        from bkgdb.plotting import plot_validation, read_validation_table, run_start_times, save_figure

        check_figure_output(output, overwrite)
        rows = read_validation_table(table)
        times = None
        if datastore is not None:
            times = run_start_times(self.store, datastore, [row["obs_id"] for row in rows])
            if not times:
                warnings.warn(
                    f"no run of {datastore} in the catalogue: norms are shown against OBS_ID",
                    BkgdbWarning,
                    stacklevel=2,
                )
        save_figure(plot_validation(rows, start_mjd=times or None), output, overwrite=overwrite)
        return rows

    def plot_significance(
        self,
        obs_id: int,
        output: str | Path,
        datastore: str | Path | None = None,
        energy_range_tev: tuple[float, float] = (0.5, 10.0),
        correlation_radius_deg: float = 0.1,
        where: Iterable[str] = (),
        overwrite: bool = False,
    ) -> SignificanceMaps:
        """Plot run ``obs_id``'s counts against its bkgdb prediction and the Li & Ma significance per pixel."""
        from bkgdb.plotting import plot_significance, run_significance_maps, save_figure

        check_obs_id(obs_id)
        check_figure_output(output, overwrite, self._protected(output))
        check_energy_range(*energy_range_tev)
        maps = run_significance_maps(
            self._builder(None, where),
            obs_id,
            datastore,
            energy_range_tev=energy_range_tev,
            correlation_radius_deg=correlation_radius_deg,
        )
        save_figure(plot_significance(maps), output, overwrite=overwrite)
        return maps


def check_figure_output(output: str | Path, overwrite: bool = False, protected: Iterable[Path] = ()) -> None:
    """Refuse, before any work, an output suffix that is no figure format, and an existing file
    unless ``overwrite``, never one of ``protected`` (`~bkgdb.outputs.check_new_file`)."""
    from bkgdb.plotting import FIGURE_SUFFIXES

    if Path(output).suffix.lower() not in FIGURE_SUFFIXES:
        raise BkgdbError(f"cannot tell the figure format of {output}: name it .png, .pdf or .svg")
    check_new_file(output, overwrite, protected)


def check_energy_range(e_min: float, e_max: float) -> None:
    """Refuse an energy range (TeV) whose ends are the wrong way round (called before any work)."""
    if not e_min < e_max:
        raise BkgdbError(f"--e-min must be below --e-max, got {e_min:g} and {e_max:g}")
