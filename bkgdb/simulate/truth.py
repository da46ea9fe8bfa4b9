"""Known background rates that simulated runs are drawn from.

`BackgroundTruth` is radially symmetric in the field of view: a power law in energy times a
Gaussian in offset. `FoVBackgroundTruth` multiplies it by an exponential gradient across the field
of view, in the FoV frame aligned with Alt/Az (``"ALTAZ"``, gammapy's `FoVAltAzFrame`: fov_lat toward
higher altitude) or with RA/Dec (``"RADEC"``, `FoVICRSFrame`: fov_lat toward higher declination), so
that it can be written as a gammapy ``Background3D`` and recovered through gammapy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from astropy import units as u
from astropy.coordinates import offset_by
from numpy.typing import ArrayLike

from bkgdb.geometry import FOV_ALIGNMENTS, PieceGeometry

if TYPE_CHECKING:
    from gammapy.irf import Background3D

__all__ = ["BackgroundTruth", "FoVBackgroundTruth", "fov_offset_deg"]


def fov_offset_deg(fov_lon_deg: ArrayLike, fov_lat_deg: ArrayLike) -> np.ndarray:
    """Angular distance from the FoV centre (deg) of FoV coordinates, on the sphere."""
    lon, lat = np.radians(fov_lon_deg), np.radians(fov_lat_deg)
    return np.degrees(np.arccos(np.clip(np.cos(lon) * np.cos(lat), -1.0, 1.0)))


def _fov_from_polar(offset_deg: np.ndarray, angle_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FoV lon/lat (deg) of points at ``offset_deg`` from the FoV centre in direction ``angle_deg``
    (0 toward +fov_lat, 90 toward +fov_lon), on the sphere."""
    lon, lat = offset_by(0.0, 0.0, np.radians(angle_deg), np.radians(offset_deg))
    lon = u.Quantity(lon, u.rad).to_value(u.deg)
    return (lon + 180.0) % 360.0 - 180.0, u.Quantity(lat, u.rad).to_value(u.deg)


@dataclass
class BackgroundTruth:
    """A background rate ``norm * (E / 1 TeV)**-index * exp(-offset**2 / (2 sigma**2))``, optionally
    depending on the zenith angle z.

    With ``threshold_tev`` set, the rate is multiplied by a turn-on ``1 - exp(-(E / E_t)**sharpness)``
    with ``E_t = threshold_tev * cos(z)**-threshold_zenith_index`` (the threshold rises with zenith)
    and by ``cos(z)**rate_zenith_index``. Without it (the default) the rate does not depend on
    zenith. Such a rate changes with zenith exactly by an energy shift and a rate factor: a run at
    z moved to z_t by energies x ``(cos z / cos z_t)**threshold_zenith_index`` and counts x
    ``(cos z_t / cos z)**(rate_zenith_index + threshold_zenith_index * (index - 1))`` has z_t's rate.

    Parameters
    ----------
    norm : float
        Rate at 1 TeV on the optical axis, in s-1 MeV-1 sr-1. Default is 3e-5.
    index : float
        Spectral index. Default is 2.7.
    offset_sigma_deg : float
        Width of the Gaussian fall-off with offset, in deg. Default is 1.5.
    energy_range_tev : tuple
        Energies between which events are drawn, in TeV. Default is (0.1, 100).
    max_offset_deg : float
        Largest offset at which events are drawn, in deg. Default is 3.
    threshold_tev : float, optional
        Energy threshold at zenith 0 in TeV; None (default): no threshold, no zenith dependence.
    threshold_zenith_index : float
        The threshold scales as cos(z) to minus this. Default is 2.5.
    threshold_sharpness : float
        Steepness of the turn-on. Default is 3.
    rate_zenith_index : float
        The rate scales as cos(z) to this (with a threshold). Default is 0.
    """

    norm: float = 3e-5
    index: float = 2.7
    offset_sigma_deg: float = 1.5
    energy_range_tev: tuple[float, float] = (0.1, 100.0)
    max_offset_deg: float = 3.0
    threshold_tev: float | None = None
    threshold_zenith_index: float = 2.5
    threshold_sharpness: float = 3.0
    rate_zenith_index: float = 0.0

    def threshold(self, zenith_deg: float = 0.0) -> float | None:
        """Energy threshold (TeV) at ``zenith_deg``, or None."""
        if self.threshold_tev is None:
            return None
        return self.threshold_tev * np.cos(np.radians(zenith_deg)) ** -self.threshold_zenith_index

    def _energy_factor(self, energy_tev: ArrayLike, zenith_deg: float) -> np.ndarray:
        """Turn-on times zenith rate scale at the given energies (1 without a threshold)."""
        if self.threshold_tev is None:
            return np.ones_like(np.asarray(energy_tev, float))
        threshold = self.threshold_tev * np.cos(np.radians(zenith_deg)) ** -self.threshold_zenith_index
        turn_on = 1.0 - np.exp(-((np.asarray(energy_tev, float) / threshold) ** self.threshold_sharpness))
        return turn_on * np.cos(np.radians(zenith_deg)) ** self.rate_zenith_index

    def rate(self, energy_tev: ArrayLike, offset_deg: ArrayLike, zenith_deg: float = 0.0) -> np.ndarray:
        """The rate at the given energies and offsets, in s-1 MeV-1 sr-1."""
        energy_tev, offset_deg = np.asarray(energy_tev, float), np.asarray(offset_deg, float)
        return (
            self.norm
            * energy_tev**-self.index
            * np.exp(-0.5 * (offset_deg / self.offset_sigma_deg) ** 2)
            * self._energy_factor(energy_tev, zenith_deg)
        )

    def _energy_integral_mev(self, lo_tev: ArrayLike, hi_tev: ArrayLike, zenith_deg: float = 0.0) -> np.ndarray:
        """Integral of (E / 1 TeV)**-index (times the turn-on) over [lo, hi], with dE in MeV."""
        p = 1.0 - self.index
        if self.threshold_tev is None:
            return 1e6 * (np.asarray(hi_tev) ** p - np.asarray(lo_tev) ** p) / p
        result = []
        for lo, hi in zip(np.atleast_1d(lo_tev), np.atleast_1d(hi_tev), strict=True):
            energy = np.geomspace(lo, hi, 400)
            result.append(np.trapezoid(energy**-self.index * self._energy_factor(energy, zenith_deg), energy))
        return 1e6 * np.array(result)

    def _offset_integral_sr(self, lo_deg: ArrayLike, hi_deg: ArrayLike, steps: int = 2000) -> np.ndarray:
        """Integral of the offset profile over annuli on the sphere, in sr."""
        lo_deg, hi_deg = np.atleast_1d(lo_deg), np.atleast_1d(hi_deg)
        result = []
        for lo, hi in zip(lo_deg, hi_deg, strict=True):
            theta = np.linspace(lo, hi, steps)
            profile = np.exp(-0.5 * (theta / self.offset_sigma_deg) ** 2) * 2 * np.pi * np.sin(np.radians(theta))
            result.append(np.trapezoid(profile, np.radians(theta)))
        return np.array(result)

    def expected_counts(
        self, energy_edges_tev: ArrayLike, offset_edges_deg: ArrayLike, ontime_s: float, zenith_deg: float = 0.0
    ) -> np.ndarray:
        """Expected counts per (energy, offset) bin for one run of ``ontime_s`` seconds."""
        energy_edges_tev, offset_edges_deg = np.asarray(energy_edges_tev), np.asarray(offset_edges_deg)
        energy = self._energy_integral_mev(energy_edges_tev[:-1], energy_edges_tev[1:], zenith_deg)
        solid_angle = self._offset_integral_sr(offset_edges_deg[:-1], offset_edges_deg[1:])
        return self.norm * ontime_s * np.outer(energy, solid_angle)

    def total_rate(self, zenith_deg: float = 0.0) -> float:
        """Expected events per second of ontime within the drawing ranges."""
        return float(self.expected_counts(self.energy_range_tev, [0.0, self.max_offset_deg], 1.0, zenith_deg).sum())

    def _draw_power_law(self, rng: np.random.Generator, n_events: int) -> np.ndarray:
        lo, hi = self.energy_range_tev
        p = 1.0 - self.index
        return (lo**p + rng.uniform(size=n_events) * (hi**p - lo**p)) ** (1.0 / p)

    def draw(self, rng: np.random.Generator, n_events: int, zenith_deg: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Draw energies (TeV) and offsets (deg) of ``n_events`` background events."""
        if self.threshold_tev is None:
            energy = self._draw_power_law(rng, n_events)
        else:  # the power law thinned by the turn-on (<= 1), until enough are kept
            kept: list[np.ndarray] = []
            threshold = self.threshold_tev * np.cos(np.radians(zenith_deg)) ** -self.threshold_zenith_index
            while sum(len(k) for k in kept) < n_events:
                trial = self._draw_power_law(rng, max(n_events, 1000))
                turn_on = 1.0 - np.exp(-((trial / threshold) ** self.threshold_sharpness))
                kept.append(trial[rng.uniform(size=len(trial)) < turn_on])
            energy = np.concatenate(kept)[:n_events]

        grid = np.linspace(0.0, self.max_offset_deg, 4001)
        density = np.exp(-0.5 * (grid / self.offset_sigma_deg) ** 2) * np.sin(np.radians(grid))
        cdf = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]))])
        offset = np.interp(rng.uniform(size=n_events) * cdf[-1], cdf, grid)
        return energy, offset

    def draw_fov(
        self, rng: np.random.Generator, duration_s: float, zenith_deg: float = 0.0
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Draw the events of ``duration_s`` seconds of ontime: energies (TeV), fov_lon and fov_lat (deg).

        The number of events is Poisson. A radially symmetric truth has no preferred direction, so
        its FoV coordinates hold in either alignment.
        """
        n_events = rng.poisson(self.total_rate(zenith_deg) * duration_s)
        energy, offset = self.draw(rng, n_events, zenith_deg)
        lon, lat = _fov_from_polar(offset, rng.uniform(0.0, 360.0, size=n_events))
        return energy, lon, lat


@dataclass
class FoVBackgroundTruth(BackgroundTruth):
    """A `BackgroundTruth` times ``exp(s(E) * (lon_gradient * fov_lon + lat_gradient * fov_lat))``.

    ``s(E) = (E / gradient_pivot_tev)**-gradient_energy_index`` lets the asymmetry grow toward low
    energies, as real backgrounds do near threshold. FoV coordinates are in deg, in the frame of
    ``alignment``. The rate is the same for every run in its own frame; in the other frame it rotates
    with the parallactic angle.

    Parameters
    ----------
    alignment : {"ALTAZ", "RADEC"}
        The FoV frame the gradient is fixed in. Default is "ALTAZ".
    lon_gradient, lat_gradient : float
        d ln(rate) / d fov_lon and d fov_lat in deg-1 at the pivot energy. Defaults 0 and -0.3:
        the rate rises toward the horizon (ALTAZ) or toward lower declination (RADEC).
    gradient_pivot_tev : float
        Energy at which the gradients hold as given. Default is 1.
    gradient_energy_index : float
        The gradients scale as energy to minus this. Default is 0.
    """

    alignment: str = "ALTAZ"
    lon_gradient: float = 0.0
    lat_gradient: float = -0.3
    gradient_pivot_tev: float = 1.0
    gradient_energy_index: float = 0.0

    def __post_init__(self) -> None:
        if self.alignment not in FOV_ALIGNMENTS:
            raise ValueError(f"alignment must be one of {', '.join(FOV_ALIGNMENTS)}, got {self.alignment!r}")

    def gradient_scale(self, energy_tev: ArrayLike) -> np.ndarray:
        """s(E): the factor on both gradients at the given energies."""
        return (np.asarray(energy_tev, float) / self.gradient_pivot_tev) ** -self.gradient_energy_index

    def asymmetry(self, energy_tev: ArrayLike, fov_lon_deg: ArrayLike, fov_lat_deg: ArrayLike) -> np.ndarray:
        """The factor on the radially symmetric rate."""
        slope = self.lon_gradient * np.asarray(fov_lon_deg, float) + self.lat_gradient * np.asarray(fov_lat_deg, float)
        return np.exp(self.gradient_scale(energy_tev) * slope)

    def fov_rate(
        self, energy_tev: ArrayLike, fov_lon_deg: ArrayLike, fov_lat_deg: ArrayLike, zenith_deg: float = 0.0
    ) -> np.ndarray:
        """The rate at the given energies and FoV coordinates (deg), in s-1 MeV-1 sr-1."""
        offset = fov_offset_deg(fov_lon_deg, fov_lat_deg)
        return self.rate(energy_tev, offset, zenith_deg) * self.asymmetry(energy_tev, fov_lon_deg, fov_lat_deg)

    def _largest_asymmetry(self) -> float:
        """A bound on `asymmetry` over the drawing ranges: |fov_lon| and |fov_lat| never exceed the offset."""
        scale = float(self.gradient_scale(np.asarray(self.energy_range_tev)).max())
        return float(np.exp(scale * (abs(self.lon_gradient) + abs(self.lat_gradient)) * self.max_offset_deg))

    def draw_fov(
        self, rng: np.random.Generator, duration_s: float, zenith_deg: float = 0.0
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Draw the events of ``duration_s`` seconds: energies (TeV), fov_lon and fov_lat (deg) in ``alignment``.

        A Poisson process of the symmetric rate times the largest asymmetry, thinned by the asymmetry
        over that bound: what is kept is a Poisson process of exactly `fov_rate`.
        """
        bound = self._largest_asymmetry()
        n_trial = rng.poisson(self.total_rate(zenith_deg) * bound * duration_s)
        energy, offset = self.draw(rng, n_trial, zenith_deg)
        lon, lat = _fov_from_polar(offset, rng.uniform(0.0, 360.0, size=n_trial))
        keep = rng.uniform(size=n_trial) * bound < self.asymmetry(energy, lon, lat)
        return energy[keep], lon[keep], lat[keep]

    def geometry(
        self, energy_edges_tev: ArrayLike, fov_edges_deg: ArrayLike, fov_lat_edges_deg: ArrayLike | None = None
    ) -> PieceGeometry:
        """A 3D `~bkgdb.geometry.PieceGeometry` in this truth's alignment."""
        lat_edges = fov_edges_deg if fov_lat_edges_deg is None else fov_lat_edges_deg
        return PieceGeometry.fov(energy_edges_tev, fov_edges_deg, lat_edges, alignment=self.alignment)

    def rate_on(self, geometry: PieceGeometry, zenith_deg: float = 0.0) -> np.ndarray:
        """The rate at the bin centres of a 3D geometry (log energy centres), of ``geometry.shape``."""
        if not geometry.is_3d:
            raise ValueError("a FoV truth is evaluated on a 3D geometry")
        lon, lat = geometry.fov_centres
        energy = geometry.energy_centres[:, np.newaxis, np.newaxis]
        return self.fov_rate(energy, lon[np.newaxis], lat[np.newaxis], zenith_deg)

    def expected_counts_on(
        self, geometry: PieceGeometry, ontime_s: float, zenith_deg: float = 0.0, steps: int = 8
    ) -> np.ndarray:
        """Expected counts per bin of a 3D geometry in ``ontime_s`` seconds, of ``geometry.shape``.

        The rate is averaged over each bin (uniform in energy, over ``steps`` x ``steps`` positions
        per pixel weighted by solid angle), as zero where no events are drawn (beyond
        ``max_offset_deg`` or outside ``energy_range_tev``), and multiplied by ontime x solid angle x
        energy width. Unlike `expected_counts` (the symmetric part only), it includes the gradient.
        """
        if not geometry.is_3d:
            raise ValueError("a FoV truth is evaluated on a 3D geometry")
        fractions = (np.arange(steps) + 0.5) / steps
        # Each bin's overlap with the drawn energies, sampled log-spaced; dE = E dlnE: uniform in energy.
        low, high = geometry.energy_edges[:-1], geometry.energy_edges[1:]
        drawn_low, drawn_high = np.clip(low, *self.energy_range_tev), np.clip(high, *self.energy_range_tev)
        overlap = np.where(drawn_high > drawn_low, (drawn_high - drawn_low) / (high - low), 0.0)
        drawn_high = np.maximum(drawn_high, drawn_low * (1 + 1e-9))
        energy = drawn_low[:, None] * (drawn_high / drawn_low)[:, None] ** fractions[None, :]
        weight = energy / energy.sum(axis=1, keepdims=True) * overlap[:, None]
        lon_edges, lat_edges = geometry.fov_lon_edges, geometry.fov_lat_edges
        assert lon_edges is not None and lat_edges is not None
        lon = lon_edges[:-1, None] + fractions[None, :] * np.diff(lon_edges)[:, None]  # (n_lon, steps)
        lat = lat_edges[:-1, None] + fractions[None, :] * np.diff(lat_edges)[:, None]
        lon_s, lat_s = lon[:, :, None, None], lat[None, None, :, :]  # (n_lon, steps, n_lat, steps)
        area = np.broadcast_to(np.cos(np.radians(lat_s)), np.broadcast_shapes(lon_s.shape, lat_s.shape))
        drawn = fov_offset_deg(lon_s, lat_s) <= self.max_offset_deg
        average = np.zeros(geometry.shape)
        for number in range(geometry.n_energy):
            e = energy[number][:, None, None, None, None]
            rate = self.fov_rate(e, lon_s[None], lat_s[None], zenith_deg) * drawn[None]
            rate = np.sum(weight[number][:, None, None, None, None] * rate, axis=0)
            average[number] = np.sum(rate * area, axis=(1, 3)) / np.sum(area, axis=(1, 3))
        return average * geometry.denominator(np.full(geometry.spatial_shape, float(ontime_s)))

    def to_background3d(
        self, geometry: PieceGeometry, zenith_deg: float = 0.0, alignment: str | None = None
    ) -> Background3D:
        """This rate as a gammapy ``Background3D`` on ``geometry``'s bin centres.

        ``alignment`` labels the model with another FoV alignment than the truth's own (a wrong model,
        for tests that must fail); by default the truth's.
        """
        label = alignment or self.alignment
        if geometry.alignment != label:
            # A geometry with an alignment is 3D: its lon/lat edges are set (Optional only in the type).
            geometry = PieceGeometry.fov(
                geometry.energy_edges,
                geometry.fov_lon_edges,  # type: ignore[arg-type]
                geometry.fov_lat_edges,  # type: ignore[arg-type]
                alignment=label,
            )
        return geometry.to_irf(self.rate_on(geometry, zenith_deg))
