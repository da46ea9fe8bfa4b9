"""A whole configuration: binnings, exclusion settings, background selection, io and worker count.

The layout follows the VERITAS gammapy-tools configs (``binning``, ``exclusion``, ``config``,
``background_selection``, ``io``), so their files load here; sections bkgdb does not use
(``run_selection``, ``spectrum``, ``sky_map``, ...) are ignored. Unknown keys inside the sections
bkgdb reads give a warning naming the key; invalid values raise `ConfigError`.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bkgdb.config.binning import AnyBinning, Binning, FovBinning, binning_from_dict, derive_fov_binning
from bkgdb.config.exclusion import ExclusionSettings
from bkgdb.config.io import IOSettings
from bkgdb.config.selection import SelectionSettings
from bkgdb.config.values import ConfigError, ConfigWarning, check_keys, mapping, number, shown

__all__ = ["BkgdbConfig", "MAX_JOBS", "FOREIGN_SECTIONS"]

log = logging.getLogger(__name__)

#: Most worker processes a config may ask for.
MAX_JOBS = 256
#: Sections of gammapy-tools configs that bkgdb reads none of.
FOREIGN_SECTIONS = {
    "run_selection",
    "spectrum",
    "lightcurve",
    "sky_map",
    "analysis_selection",
    "results_file",
    "plot_names",
}
#: Tolerance of ring and energy limits against bin edges (floating-point spelling of the same number).
RELATIVE_TOLERANCE = 1e-9


@dataclass
class BkgdbConfig:
    """A whole configuration: binnings, exclusion settings, selection, io and worker count.

    ``binnings`` holds every binning pieces are made for, 2D and 3D, in the order configured. When
    ``io.three_d`` asks for 3D backgrounds and no 3D binning is configured, one is derived from the
    first 2D binning (`~bkgdb.config.binning.derive_fov_binning`) and appended.
    """

    binnings: list[AnyBinning] = field(default_factory=lambda: [Binning()])
    exclusion: ExclusionSettings = field(default_factory=ExclusionSettings)
    selection: SelectionSettings = field(default_factory=SelectionSettings)
    io: IOSettings = field(default_factory=IOSettings)
    njobs: int = 1

    def __post_init__(self) -> None:
        self.binnings = list(self.binnings)
        if not self.binnings:
            raise ConfigError("a config needs at least one binning")
        if self.io.three_d and self.binning_3d is None:
            self.binnings.append(self._derived_fov_binning())
        if self.selection.normalisation == "control-ring":
            if self.binning is not None:
                self._check_ring_2d(self.binning)
            if self.binning_3d is not None:
                self._check_ring_3d(self.binning_3d)

    def _derived_fov_binning(self) -> FovBinning:
        binning = self.binning
        assert binning is not None  # a config holds at least one binning, and none is 3D
        try:
            derived = derive_fov_binning(binning)
        except ConfigError as exc:
            raise ConfigError(
                f"io.3d_bkg: cannot derive a 3D binning from the 2D one ({exc}): "
                "add a 3D binning (fov_max, fov_bins) to `binning:`"
            ) from None
        log.info(
            "io.3d_bkg is true and no 3D binning is configured: using %s (%s)",
            derived.geometry.describe(),
            ", ".join(f"{k}={v}" for k, v in derived.params.items()),
        )
        return derived

    def _check_energy(self, binning: AnyBinning) -> None:
        energy, edges = self.selection.normalisation_energy, binning.energy_edges
        low, high = (1 - RELATIVE_TOLERANCE, 1 + RELATIVE_TOLERANCE)
        if energy and not np.any((edges[:-1] >= energy[0] * low) & (edges[1:] <= energy[1] * high)):
            which = "3D binning" if binning.is_3d else "binning"
            raise ConfigError(
                f"background_selection.normalisation: no energy bin of the {which} lies within "
                f"e_min {energy[0]:g} and e_max {energy[1]:g} TeV"
            )

    def _check_ring_2d(self, binning: Binning) -> None:
        from bkgdb.makers.normalisation import ring_bins

        low, high = self.selection.normalisation_ring
        if low < binning.off_min or high > binning.off_max or not ring_bins(binning.offset_edges, low, high).any():
            raise ConfigError(
                f"background_selection.normalisation: the control ring {low:g}-{high:g} deg must "
                f"hold whole offset bins of the binning ({binning.off_min:g}-{binning.off_max:g} "
                f"deg in {binning.off_bins} bins)"
            )
        self._check_energy(binning)

    def _check_ring_3d(self, binning: FovBinning) -> None:
        # In 3D the ring is the FoV pixels whose centre lies at an offset within it.
        low, high = self.selection.normalisation_ring
        offset = binning.geometry.spatial_offset_deg
        if not np.any((offset >= low) & (offset < high)):
            raise ConfigError(
                f"background_selection.normalisation: no pixel centre of the 3D binning "
                f"(-{binning.fov_max:g}..{binning.fov_max:g} deg in {binning.fov_bins} pixels per axis) "
                f"lies in the control ring {low:g}-{high:g} deg"
            )
        self._check_energy(binning)

    @property
    def binning(self) -> Binning | None:
        """The 2D binning 2D backgrounds are assembled with: the first configured one (None if only 3D)."""
        return next((binning for binning in self.binnings if isinstance(binning, Binning)), None)

    @property
    def binning_3d(self) -> FovBinning | None:
        """The 3D binning 3D backgrounds are assembled with: the first configured one, or None."""
        return next((binning for binning in self.binnings if isinstance(binning, FovBinning)), None)

    def binning_for(self, three_d: bool) -> AnyBinning:
        """The binning a 2D or 3D background is assembled with.

        Raises
        ------
        ConfigError
            The config has no binning of that kind.
        """
        binning = self.binning_3d if three_d else self.binning
        if binning is None:
            kind = "3D" if three_d else "2D"
            raise ConfigError(f"this config has no {kind} binning: add one to `binning:`")
        return binning

    @classmethod
    def from_dict(cls, values: Any) -> BkgdbConfig:
        """A config from the mapping of its sections (a YAML file's content)."""
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise ConfigError(
                f"a config must be a mapping of sections (binning, exclusion, ...), "
                f"got {type(values).__name__} {shown(values)}"
            )
        known = {"binning", "exclusion", "config", "background_selection", "io"}
        for key in values:
            if key not in known and key not in FOREIGN_SECTIONS:
                warnings.warn(f"unknown config section {key!r} (ignored)", ConfigWarning, stacklevel=2)
        binning = values.get("binning")
        if isinstance(binning, list):
            if not binning:
                raise ConfigError("binning is an empty list: give one binning or a list of them")
            binnings = [binning_from_dict(item, f"binning[{n}]") for n, item in enumerate(binning)]
        else:
            binnings = [binning_from_dict(mapping("binning", binning))]
        settings = mapping("config", values.get("config"))
        check_keys("config", settings, ("njobs",))
        njobs = number("config", "njobs", settings.get("njobs", 1), int, maximum=MAX_JOBS)
        if njobs < 1:
            # gammapy-tools' -1 ("all cores") would silently load a shared machine fully.
            raise ConfigError(
                f"config.njobs must be a number of worker processes from 1 to {MAX_JOBS}, got {njobs} "
                f"(this machine has {os.cpu_count() or 1} cores)"
            )
        return cls(
            binnings=binnings,
            exclusion=ExclusionSettings.from_dict(values.get("exclusion")),
            selection=SelectionSettings.from_dict(values.get("background_selection")),
            io=IOSettings.from_dict(values.get("io")),
            njobs=njobs,
        )
