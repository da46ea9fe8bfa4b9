"""The ``io`` section: where backgrounds come from and go to, and whether they are written 3D."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from bkgdb.config.values import ConfigError, check_keys, config_path, flag, mapping, shown

__all__ = ["IOSettings"]


@dataclass(frozen=True)
class IOSettings:
    """The ``io`` section: where backgrounds come from and go to."""

    #: Build each run's background from its own piece only.
    from_run: bool = False
    #: Only runs of this datastore are candidates (default: every datastore in the catalogue).
    search_datastore: str | None = None
    in_dir: str | None = None
    out_dir: str | None = None
    #: Write backgrounds 3D (gammapy-tools' ``3d_bkg``) unless the command line asks for 2D.
    three_d: bool = False

    KEYS: ClassVar[tuple[str, ...]] = ("from_run", "search_datastore", "in_dir", "out_dir", "3d_bkg")
    UNUSED: ClassVar[tuple[str, ...]] = ("runlist", "results_dir", "from_runlist")

    @classmethod
    def from_dict(cls, values: Any, section: str = "io") -> IOSettings:
        """IO settings from the ``io`` section; folders have ``$VARIABLES`` and ``~`` expanded."""
        values = mapping(section, values)
        check_keys(section, values, cls.KEYS + cls.UNUSED)
        from_run = flag(section, "from_run", values.get("from_run", False))
        three_d = flag(section, "3d_bkg", values.get("3d_bkg", False))
        paths = {}
        for key in ("search_datastore", "in_dir", "out_dir"):
            if values.get(key) is not None:
                if not isinstance(values[key], str):
                    raise ConfigError(f"{section}.{key} must be a folder path, got {shown(values[key])}")
                paths[key] = config_path(values[key])
        return cls(from_run=from_run, three_d=three_d, **paths)
