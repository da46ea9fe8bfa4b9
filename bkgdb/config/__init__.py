"""Configuration files: binnings (2D and 3D), exclusion settings, background selection and io.

The layout follows the VERITAS gammapy-tools configs (``binning``, ``exclusion``, ``config``,
``background_selection``, ``io``), so their files load here. Binnings and exclusion settings are
identified by a hash of their parameters, so two analyses with the same settings share the pieces
stored for them.

Modules: `~bkgdb.config.values` (checks of single values), `~bkgdb.config.binning`,
`~bkgdb.config.exclusion`, `~bkgdb.config.selection`, `~bkgdb.config.io`, `~bkgdb.config.core`
(`BkgdbConfig`) and `~bkgdb.config.loading` (YAML files).
"""

from bkgdb.config.binning import (
    ENERGY_LIMITS_TEV,
    MAX_BINS_PER_3D_PIECE,
    MAX_BINS_PER_PIECE,
    MAX_ENERGY_BINS,
    MAX_FOV_BINS,
    MAX_FOV_DEG,
    MAX_OFFSET_BINS,
    AnyBinning,
    Binning,
    FovBinning,
    binning_from_dict,
    binning_from_params,
    derive_fov_binning,
)
from bkgdb.config.core import FOREIGN_SECTIONS, MAX_JOBS, BkgdbConfig
from bkgdb.config.exclusion import (
    CATALOGUE_KEYS,
    MAX_RADIUS_DEG,
    CircleRegion,
    ExclusionSettings,
    default_catalogue_path,
)
from bkgdb.config.io import IOSettings
from bkgdb.config.loading import load_config
from bkgdb.config.selection import MIN_STATISTICS_ACTIONS, SelectionSettings
from bkgdb.config.values import MAX_CONFIG_INT, ConfigWarning, content_hash, file_digest
from bkgdb.makers.piece import EXPOSURE_METHODS
from bkgdb.makers.smoothing import SMOOTHING_METHODS

__all__ = [
    "ConfigWarning",
    "Binning",
    "FovBinning",
    "AnyBinning",
    "ExclusionSettings",
    "CircleRegion",
    "SelectionSettings",
    "IOSettings",
    "BkgdbConfig",
    "load_config",
    "binning_from_dict",
    "binning_from_params",
    "derive_fov_binning",
    "EXPOSURE_METHODS",
    "SMOOTHING_METHODS",
    "default_catalogue_path",
    "content_hash",
    "file_digest",
    "MAX_ENERGY_BINS",
    "MAX_OFFSET_BINS",
    "MAX_FOV_BINS",
    "MAX_FOV_DEG",
    "MAX_BINS_PER_PIECE",
    "MAX_BINS_PER_3D_PIECE",
    "ENERGY_LIMITS_TEV",
    "MAX_RADIUS_DEG",
    "MAX_JOBS",
    "MAX_CONFIG_INT",
    "MIN_STATISTICS_ACTIONS",
    "FOREIGN_SECTIONS",
    "CATALOGUE_KEYS",
]
