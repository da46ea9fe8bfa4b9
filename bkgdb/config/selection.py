"""Background selection: how the runs that build a target's background are chosen, smoothed and normalised.

The ``background_selection`` section of gammapy-tools configs, with bkgdb's additions (assembly,
normalisation, least statistics).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import numpy as np

from bkgdb.config.values import ConfigError, check_keys, mapping, number, optional, sequence, shown
from bkgdb.makers.smoothing import SMOOTHING_METHODS

__all__ = ["SelectionSettings", "MIN_STATISTICS_ACTIONS"]

#: What a background resting on fewer than min_runs runs or min_ontime hours does.
MIN_STATISTICS_ACTIONS = ("warn", "error")


def _date(section: str, key: str, value: Any) -> date:
    if isinstance(value, datetime):  # YAML reads "2024-01-01 12:00" as a datetime: its day counts
        return value.date()
    try:
        return value if isinstance(value, date) else date.fromisoformat(str(value))
    except ValueError:
        raise ConfigError(f"{section}.{key} needs dates as YYYY-MM-DD, got {shown(value)}") from None


def _conditions(section: str, value: Any) -> tuple[str, ...]:
    """``where``: one condition or a list of them, each checked for its form (``NAME OP VALUE``)."""
    conditions = [value] if isinstance(value, str) else sequence(section, "where", value)
    if conditions:
        from bkgdb.errors import ConditionError
        from bkgdb.store.conditions import condition_expression, parse_condition, typed_column
    for index, condition in enumerate(conditions):
        if not isinstance(condition, str):
            raise ConfigError(
                f"{section}.where[{index}] must be a condition such as 'zenith<30', got {shown(condition)}"
            )
        try:
            parsed = parse_condition(condition)
            if typed_column(parsed.name) is not None:  # obs-index columns are known once a catalogue is open
                condition_expression(parsed)
        except ConditionError as exc:
            raise ConfigError(f"{section}.where[{index}]: {exc}") from None
    return tuple(conditions)


@dataclass(frozen=True)
class SelectionSettings:
    """How the runs that build a target's background are chosen (``background_selection``).

    Every criterion is relative to the target run; None switches a criterion off.
    """

    #: Largest |1/cos(zenith) - 1/cos(zenith_target)| (airmass difference).
    el_diff: float | None = 0.15
    #: Largest azimuth difference in deg, wrapping at 360.
    az_diff: float | None = 45.0
    nsb_diff: float | None = None
    #: Largest |start time difference| in days.
    time_max: float | None = None
    #: Only runs of the target's instrument (``TELESCOP``), when the target's is known.
    same_instrument: bool = True
    #: Only runs of the target's season; seasons are [start, end] date pairs.
    same_szn: bool = False
    seasons: tuple[tuple[str, str], ...] = ()
    n_tels: int | None = None
    el_min: float | None = None
    el_max: float | None = None
    #: Only runs with |Galactic latitude| above this (deg); 0 disables.
    gal_lat_min: float = 10.0
    #: Extra ``--where`` conditions on catalogue columns.
    where: tuple[str, ...] = ()
    #: Hours of ontime wanted: the most similar runs are taken until it is reached.
    time_request: float | None = None
    KL_DIV: bool = False
    smooth_method: str = "none"
    smooth_sigma: float = 1.0
    poly_degree: int = 3
    spline_smoothing: float | None = None
    #: Empty bins of energy slices with counts get a radial estimate, each slice keeping its
    #: total; slices without counts a small fraction of their neighbour (see `fill_empty_bins`).
    fill_empty_bins: bool = True
    #: Make gammapy's evaluation right: write energy nodes whose log-log interpolation gammapy
    #: integrates back to each bin's content (see `energy_nodes_for_gammapy`), and FoV values
    #: whose spatial interpolation gives each group of offset rings its rate (`fov_nodes_for_gammapy`).
    bin_centre_correction: bool = True
    #: ``condition``: move each piece to the target's zenith, azimuth and optical efficiency with a
    #: model fitted on the archive before summing; ``sum``: plain summation.
    assembly: str = "sum"
    #: Per-run normalisation (`bkgdb.makers.normalisation`): none, control-ring (offsets in
    #: ``normalisation_ring``, deg) or monitor (ratio of catalogue column ``normalisation_column``).
    normalisation: str = "none"
    normalisation_ring: tuple[float, float] = (2.0, 2.5)
    normalisation_column: str | None = None
    #: Energies (TeV) of the control ring; None: the whole binning.
    normalisation_energy: tuple[float, float] | None = None
    #: The model's run-to-run scatter: the control ring is combined with it by inverse variance.
    normalisation_model_scatter: float | None = None
    #: Fewest runs and hours of ontime a background may rest on; below them, warn or fail (min_statistics).
    min_runs: int | None = None
    min_ontime: float | None = None
    min_statistics: str = "warn"

    KEYS = (
        "el_diff",
        "az_diff",
        "nsb_diff",
        "time_max",
        "same_instrument",
        "same_szn",
        "seasons",
        "n_tels",
        "n_tel",
        "el_min",
        "el_max",
        "gal_lat_min",
        "where",
        "time_request",
        "KL_DIV",
        "smooth",
        "smooth_method",
        "smooth_sigma",
        "poly_degree",
        "spline_smoothing",
        "fill_empty_bins",
        "bin_centre_correction",
        "normalisation",
        "assembly",
        "min_runs",
        "min_ontime",
        "min_statistics",
    )
    #: gammapy-tools keys that bkgdb reads but does not use.
    UNUSED = ("store_KL", "bkg_runlist")

    def __post_init__(self) -> None:
        from bkgdb.makers.assembly import ASSEMBLY_METHODS

        if self.assembly not in ASSEMBLY_METHODS:
            raise ConfigError(
                f"background_selection.assembly must be one of {', '.join(ASSEMBLY_METHODS)}, got {self.assembly!r}"
            )
        if self.smooth_method not in SMOOTHING_METHODS:
            raise ConfigError(
                f"background_selection.smooth_method must be one of {', '.join(SMOOTHING_METHODS)}, "
                f"got {self.smooth_method!r}"
            )
        _check_normalisation(
            self.normalisation, self.normalisation_ring, self.normalisation_column, self.normalisation_energy
        )

    @classmethod
    def from_dict(cls, values: Any, section: str = "background_selection") -> SelectionSettings:
        """Selection settings from the ``background_selection`` section; missing keys take the defaults."""
        values = mapping(section, values)
        check_keys(section, values, cls.KEYS + cls.UNUSED)
        kwargs: dict[str, Any] = {}
        for key in (
            "el_diff",
            "az_diff",
            "nsb_diff",
            "time_max",
            "el_min",
            "el_max",
            "spline_smoothing",
        ):
            if key in values:
                kwargs[key] = optional(section, values, key, minimum=0)
        # No hours of ontime asked for would select no run: refused here, not at the first build.
        kwargs["time_request"] = optional(section, values, "time_request", minimum=0, strictly=True)
        if "gal_lat_min" in values:
            kwargs["gal_lat_min"] = number(section, "gal_lat_min", values["gal_lat_min"] or 0, minimum=0)
        n_tels = values.get("n_tels", values.get("n_tel"))
        if n_tels is not None:
            kwargs["n_tels"] = number(section, "n_tels", n_tels, int, minimum=0)
        for key in ("same_instrument", "same_szn", "KL_DIV", "fill_empty_bins", "bin_centre_correction"):
            if key in values:
                if not isinstance(values[key], bool):
                    raise ConfigError(f"{section}.{key} must be true or false, got {values[key]!r}")
                kwargs[key] = values[key]
        seasons: list[tuple[str, str]] = []
        for index, season in enumerate(sequence(section, "seasons", values.get("seasons"))):
            if not isinstance(season, (list, tuple)) or len(season) != 2:
                raise ConfigError(f"{section}.seasons[{index}] must be [start, end] dates")
            start, end = (_date(section, f"seasons[{index}]", day) for day in season)
            if end < start:
                raise ConfigError(f"{section}.seasons[{index}] ends before it starts")
            seasons.append((start.isoformat(), end.isoformat()))
        kwargs["seasons"] = tuple(seasons)
        if kwargs.get("same_szn") and not seasons:
            raise ConfigError(f"{section}.same_szn needs {section}.seasons: a list of [start, end] dates")
        kwargs["where"] = _conditions(section, values.get("where"))
        method = values.get("smooth_method")
        if method is None:
            method = "gauss" if values.get("smooth") else "none"  # gammapy-tools: smooth: true
        kwargs["smooth_method"] = str(method)
        if "assembly" in values:
            kwargs["assembly"] = str(values["assembly"])
        if "smooth_sigma" in values:
            kwargs["smooth_sigma"] = number(section, "smooth_sigma", values["smooth_sigma"], minimum=0, strictly=True)
        if "poly_degree" in values:
            kwargs["poly_degree"] = number(section, "poly_degree", values["poly_degree"], int, minimum=0)
        kwargs.update(_normalisation_from_dict(f"{section}.normalisation", values.get("normalisation")))
        if values.get("min_runs") is not None:
            kwargs["min_runs"] = number(section, "min_runs", values["min_runs"], int, minimum=1)
        if "min_ontime" in values:
            kwargs["min_ontime"] = optional(section, values, "min_ontime", minimum=0)
        if "min_statistics" in values:
            if values["min_statistics"] not in MIN_STATISTICS_ACTIONS:
                raise ConfigError(
                    f"{section}.min_statistics must be one of {', '.join(MIN_STATISTICS_ACTIONS)}, "
                    f"got {values['min_statistics']!r}"
                )
            kwargs["min_statistics"] = values["min_statistics"]
        return cls(**kwargs)

    @property
    def params(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.__dataclass_fields__}


def _normalisation_from_dict(section: str, values: Any) -> dict[str, Any]:
    """SelectionSettings keyword arguments of a ``normalisation`` mapping (method, offset_min, offset_max, column)."""
    if values is None:
        return {}
    if isinstance(values, str):
        values = {"method": values}
    if not isinstance(values, dict):
        raise ConfigError(f"{section} must be a mapping of method, offset_min, offset_max, column")
    check_keys(section, values, ("method", "offset_min", "offset_max", "column", "e_min", "e_max", "model_scatter"))
    ring = tuple(
        number(section, key, values.get(key, default), minimum=0)
        for key, default in (("offset_min", 2.0), ("offset_max", 2.5))
    )
    energy: tuple[float, float] | None = None
    if values.get("e_min") is not None or values.get("e_max") is not None:
        energy = (
            number(section, "e_min", values.get("e_min", 0.0), minimum=0),
            number(section, "e_max", values.get("e_max", 1e9), minimum=0),
        )
    column = values.get("column")
    scatter = values.get("model_scatter")
    if scatter is not None:
        scatter = number(section, "model_scatter", scatter, minimum=0, strictly=True)
    return {
        "normalisation": str(values.get("method") or "none"),
        "normalisation_ring": ring,
        "normalisation_column": None if column is None else str(column),
        "normalisation_energy": energy,
        "normalisation_model_scatter": scatter,
    }


def _check_normalisation(
    method: str, ring: tuple[float, float], column: str | None, energy: tuple[float, float] | None = None
) -> None:
    from bkgdb.makers.normalisation import NORMALISATION_METHODS

    section = "background_selection.normalisation"
    if method not in NORMALISATION_METHODS:
        raise ConfigError(f"{section}.method must be one of {', '.join(NORMALISATION_METHODS)}, got {method!r}")
    low, high = ring
    if not (np.isfinite(low) and np.isfinite(high) and 0 <= low < high):
        raise ConfigError(f"{section} needs finite 0 <= offset_min < offset_max, got {low!r}, {high!r}")
    if energy is not None and not (np.all(np.isfinite(energy)) and 0 <= energy[0] < energy[1]):
        raise ConfigError(f"{section} needs finite 0 <= e_min < e_max, got {energy[0]!r}, {energy[1]!r}")
    if method == "monitor" and not column:
        raise ConfigError(f"{section}: method monitor needs a column (a catalogue column such as a trigger rate)")
