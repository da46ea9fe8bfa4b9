"""Simulated DL3 datastores drawn from a known background rate, for tests, benchmarks and the demo.

The truth is a rate per energy and solid angle that falls as a power law in energy and as a
Gaussian in field-of-view offset. Events are drawn on the sphere (offsets and position angles
around the pointing), so the files look like real GADF event lists.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import Table

__all__ = ["BackgroundTruth", "PointSource", "DatastoreSimulator", "write_source_catalogue"]

log = logging.getLogger(__name__)

MJDREF = 51910.0  # 2001-01-01, as in H.E.S.S. and CTAO files


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
    energy_range_tev: tuple = (0.1, 100.0)
    max_offset_deg: float = 3.0
    threshold_tev: float | None = None
    threshold_zenith_index: float = 2.5
    threshold_sharpness: float = 3.0
    rate_zenith_index: float = 0.0

    def threshold(self, zenith_deg=0.0):
        """Energy threshold (TeV) at ``zenith_deg``, or None."""
        if self.threshold_tev is None:
            return None
        return self.threshold_tev * np.cos(np.radians(zenith_deg)) ** -self.threshold_zenith_index

    def _energy_factor(self, energy_tev, zenith_deg):
        """Turn-on times zenith rate scale at the given energies (1 without a threshold)."""
        if self.threshold_tev is None:
            return np.ones_like(np.asarray(energy_tev, float))
        turn_on = 1.0 - np.exp(-(np.asarray(energy_tev, float) / self.threshold(zenith_deg)) ** self.threshold_sharpness)
        return turn_on * np.cos(np.radians(zenith_deg)) ** self.rate_zenith_index

    def rate(self, energy_tev, offset_deg, zenith_deg=0.0):
        """The rate at the given energies and offsets, in s-1 MeV-1 sr-1."""
        energy_tev, offset_deg = np.asarray(energy_tev, float), np.asarray(offset_deg, float)
        return (self.norm * energy_tev ** -self.index * np.exp(-0.5 * (offset_deg / self.offset_sigma_deg) ** 2)
                * self._energy_factor(energy_tev, zenith_deg))

    def _energy_integral_mev(self, lo_tev, hi_tev, zenith_deg=0.0):
        """Integral of (E / 1 TeV)**-index (times the turn-on) over [lo, hi], with dE in MeV."""
        p = 1.0 - self.index
        if self.threshold_tev is None:
            return 1e6 * (np.asarray(hi_tev) ** p - np.asarray(lo_tev) ** p) / p
        result = []
        for lo, hi in zip(np.atleast_1d(lo_tev), np.atleast_1d(hi_tev)):
            energy = np.geomspace(lo, hi, 400)
            result.append(np.trapezoid(energy ** -self.index * self._energy_factor(energy, zenith_deg), energy))
        return 1e6 * np.array(result)

    def _offset_integral_sr(self, lo_deg, hi_deg, steps=2000):
        """Integral of the offset profile over annuli on the sphere, in sr."""
        lo_deg, hi_deg = np.atleast_1d(lo_deg), np.atleast_1d(hi_deg)
        result = []
        for lo, hi in zip(lo_deg, hi_deg):
            theta = np.linspace(lo, hi, steps)
            profile = np.exp(-0.5 * (theta / self.offset_sigma_deg) ** 2) * 2 * np.pi * np.sin(np.radians(theta))
            result.append(np.trapezoid(profile, np.radians(theta)))
        return np.array(result)

    def expected_counts(self, energy_edges_tev, offset_edges_deg, ontime_s, zenith_deg=0.0):
        """Expected counts per (energy, offset) bin for one run of ``ontime_s`` seconds."""
        energy_edges_tev, offset_edges_deg = np.asarray(energy_edges_tev), np.asarray(offset_edges_deg)
        energy = self._energy_integral_mev(energy_edges_tev[:-1], energy_edges_tev[1:], zenith_deg)
        solid_angle = self._offset_integral_sr(offset_edges_deg[:-1], offset_edges_deg[1:])
        return self.norm * ontime_s * np.outer(energy, solid_angle)

    def total_rate(self, zenith_deg=0.0):
        """Expected events per second of ontime within the drawing ranges."""
        return float(self.expected_counts(self.energy_range_tev, [0.0, self.max_offset_deg], 1.0, zenith_deg).sum())

    def _draw_power_law(self, rng, n_events):
        lo, hi = self.energy_range_tev
        p = 1.0 - self.index
        return (lo ** p + rng.uniform(size=n_events) * (hi ** p - lo ** p)) ** (1.0 / p)

    def draw(self, rng, n_events, zenith_deg=0.0):
        """Draw energies (TeV) and offsets (deg) of ``n_events`` background events."""
        if self.threshold_tev is None:
            energy = self._draw_power_law(rng, n_events)
        else:  # the power law thinned by the turn-on (<= 1), until enough are kept
            kept = []
            while sum(len(k) for k in kept) < n_events:
                trial = self._draw_power_law(rng, max(n_events, 1000))
                turn_on = 1.0 - np.exp(-(trial / self.threshold(zenith_deg)) ** self.threshold_sharpness)
                kept.append(trial[rng.uniform(size=len(trial)) < turn_on])
            energy = np.concatenate(kept)[:n_events]

        grid = np.linspace(0.0, self.max_offset_deg, 4001)
        density = np.exp(-0.5 * (grid / self.offset_sigma_deg) ** 2) * np.sin(np.radians(grid))
        cdf = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]))])
        offset = np.interp(rng.uniform(size=n_events) * cdf[-1], cdf, grid)
        return energy, offset


@dataclass
class PointSource:
    """A gamma-ray point source seen through a Gaussian PSF."""

    ra_deg: float
    dec_deg: float
    rate_per_s: float = 0.5
    psf_sigma_deg: float = 0.1
    index: float = 2.5
    name: str = "Simulated source"


@dataclass
class DatastoreSimulator:
    """Write a GADF datastore of runs whose background follows a `BackgroundTruth`.

    Parameters
    ----------
    truth : `BackgroundTruth`
        The background rate.
    pointings : list of (ra_deg, dec_deg)
        Pointing of each run.
    source : `PointSource`, optional
        A source added on top of the background. Default is None.
    ontime_s : float
        Ontime of each run. Default is 1800.
    deadc : float
        Livetime / ontime. Default is 0.9.
    seed : int
        Random seed. Default is 0.
    first_obs_id : int
        OBS_ID of the first run. Default is 1000.
    """

    truth: BackgroundTruth = field(default_factory=BackgroundTruth)
    pointings: list = field(default_factory=lambda: [(150.0, 30.0)])
    source: PointSource | None = None
    ontime_s: float = 1800.0
    deadc: float = 0.9
    seed: int = 0
    first_obs_id: int = 1000
    object_name: str = "SIM FIELD"
    site: dict = field(default_factory=lambda: {"GEOLON": 16.5002, "GEOLAT": -23.2718, "ALTITUDE": 1835.0})
    #: Write simple IRFs (H.E.S.S.-like effective area, Gaussian dispersion and PSF) into each run,
    #: so gammapy's makers accept the runs.
    with_irfs: bool = True
    #: More obs-index columns (and EVENTS header keys), one value per run: e.g. {"NSBLEVEL": [...]}.
    extra_columns: dict = field(default_factory=dict)
    #: Zenith angle of each run in deg (the truth's rate depends on it); default: random, 10-40 deg.
    zeniths: list | None = None

    def run(self, path):
        """Write the datastore into folder ``path``; return its OBS_IDs."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "data").mkdir(exist_ok=True)
        rng = np.random.default_rng(self.seed)
        irfs = simple_irf_hdus() if self.with_irfs else []
        obs_rows, hdu_rows, obs_ids = [], [], []
        for number, (ra, dec) in enumerate(self.pointings):
            obs_id = self.first_obs_id + number
            tstart = 1.0e8 + number * 86400.0 / 3 + rng.uniform(0, 600)
            header = self._run_header(obs_id, ra, dec, tstart, rng)
            if self.zeniths is not None:
                header.update({"ZEN_PNT": float(self.zeniths[number]), "ALT_PNT": 90.0 - float(self.zeniths[number])})
            header.update({key: values[number] for key, values in self.extra_columns.items()})
            events = self._events(rng, ra, dec, tstart, header["ZEN_PNT"])
            file_name = f"run_{obs_id:06d}.fits.gz"
            self._write_run(path / "data" / file_name, header, events, irfs)
            obs_rows.append({**{key: header[key] for key in OBS_COLUMNS + list(self.extra_columns)},
                             "EVENT_COUNT": len(events)})
            hdus = [("events", "events", "EVENTS"), ("gti", "gti", "GTI")]
            hdus += [(hdu_type, hdu_class, hdu.name) for hdu_type, hdu_class, hdu in irfs]
            for hdu_type, hdu_class, hdu_name in hdus:
                hdu_rows.append({"OBS_ID": obs_id, "HDU_TYPE": hdu_type, "HDU_CLASS": hdu_class,
                                 "FILE_DIR": "data", "FILE_NAME": file_name, "HDU_NAME": hdu_name})
            obs_ids.append(obs_id)
        self._write_indexes(path, obs_rows, hdu_rows)
        log.info("simulated %d runs in %s", len(obs_ids), path)
        return obs_ids

    def _run_header(self, obs_id, ra, dec, tstart, rng):
        pointing = SkyCoord(ra * u.deg, dec * u.deg)
        alt = float(rng.uniform(50, 80))
        livetime = self.ontime_s * self.deadc
        return {
            "OBS_ID": obs_id, "RA_PNT": ra, "DEC_PNT": dec,
            "GLON_PNT": float(pointing.galactic.l.deg), "GLAT_PNT": float(pointing.galactic.b.deg),
            "ALT_PNT": alt, "ZEN_PNT": 90.0 - alt, "AZ_PNT": float(rng.uniform(0, 360)),
            "ONTIME": self.ontime_s, "LIVETIME": livetime, "DEADC": self.deadc,
            "TSTART": tstart, "TSTOP": tstart + self.ontime_s, "N_TELS": 4, "TELLIST": "1,2,3,4",
            "OBJECT": self.object_name,
        }

    def _events(self, rng, ra, dec, tstart, zenith_deg=0.0):
        pointing = SkyCoord(ra * u.deg, dec * u.deg)
        n_bkg = rng.poisson(self.truth.total_rate(zenith_deg) * self.ontime_s)
        energy, offset = self.truth.draw(rng, n_bkg, zenith_deg)
        angle = rng.uniform(0, 360, size=n_bkg)
        positions = pointing.directional_offset_by(angle * u.deg, offset * u.deg)
        ra_ev, dec_ev = positions.ra.deg, positions.dec.deg
        if self.source is not None:
            n_src = rng.poisson(self.source.rate_per_s * self.ontime_s)
            centre = SkyCoord(self.source.ra_deg * u.deg, self.source.dec_deg * u.deg)
            # A 2D Gaussian PSF: Rayleigh-distributed radius, uniform position angle.
            radius = self.source.psf_sigma_deg * np.sqrt(-2 * np.log(rng.uniform(size=n_src)))
            src = centre.directional_offset_by(rng.uniform(0, 360, n_src) * u.deg, radius * u.deg)
            lo, hi = self.truth.energy_range_tev
            p = 1.0 - self.source.index
            e_src = (lo ** p + rng.uniform(size=n_src) * (hi ** p - lo ** p)) ** (1.0 / p)
            keep = pointing.separation(src).deg <= self.truth.max_offset_deg
            ra_ev = np.concatenate([ra_ev, src.ra.deg[keep]])
            dec_ev = np.concatenate([dec_ev, src.dec.deg[keep]])
            energy = np.concatenate([energy, e_src[keep]])
        time = np.sort(tstart + rng.uniform(0, self.ontime_s, size=len(energy)))
        order = rng.permutation(len(energy))
        return Table({
            "EVENT_ID": np.arange(1, len(energy) + 1, dtype=np.int64),
            "TIME": time * u.s,
            "RA": ra_ev[order].astype(np.float32) * u.deg,
            "DEC": dec_ev[order].astype(np.float32) * u.deg,
            "ENERGY": energy[order].astype(np.float32) * u.TeV,
        })

    def _write_run(self, filename, header, events, irfs=()):
        gadf = {"HDUCLASS": "GADF", "HDUDOC": "https://github.com/open-gamma-ray-astro/gamma-astro-data-formats",
                "HDUVERS": "0.3"}
        time_ref = {"MJDREFI": int(MJDREF), "MJDREFF": MJDREF % 1, "TIMEUNIT": "s", "TIMESYS": "tt",
                    "TIMEREF": "local"}
        events_hdu = fits.BinTableHDU(events, name="EVENTS")
        events_hdu.header.update({**gadf, "HDUCLAS1": "EVENTS", "TELESCOP": "SIM", "INSTRUME": "bkgdb simulation",
                                  **time_ref, **header, "RADECSYS": "ICRS", "EQUINOX": 2000.0,
                                  "OBS_MODE": "POINTING", **self.site})
        gti = Table({"START": [header["TSTART"]] * u.s, "STOP": [header["TSTOP"]] * u.s})
        gti_hdu = fits.BinTableHDU(gti, name="GTI")
        gti_hdu.header.update({**gadf, "HDUCLAS1": "GTI", **time_ref})
        fits.HDUList([fits.PrimaryHDU(), events_hdu, gti_hdu, *[hdu.copy() for _, _, hdu in irfs]]).writeto(
            filename, overwrite=True)

    def _write_indexes(self, path, obs_rows, hdu_rows):
        obs_table = Table(rows=obs_rows, names=list(obs_rows[0]))
        for name in ("RA_PNT", "DEC_PNT", "GLON_PNT", "GLAT_PNT", "ALT_PNT", "ZEN_PNT", "AZ_PNT"):
            obs_table[name].unit = "deg"
        for name in ("ONTIME", "LIVETIME", "TSTART", "TSTOP"):
            obs_table[name].unit = "s"
        obs_table.meta.update({"HDUCLASS": "GADF", "HDUCLAS1": "INDEX", "HDUCLAS2": "OBS",
                               "MJDREFI": int(MJDREF), "MJDREFF": MJDREF % 1, "TIMESYS": "tt",
                               "TIMEUNIT": "s", **self.site})
        obs_table.write(path / "obs-index.fits.gz", format="fits", overwrite=True)
        hdu_table = Table(rows=hdu_rows, names=list(hdu_rows[0]))
        hdu_table.meta.update({"HDUCLASS": "GADF", "HDUCLAS1": "INDEX", "HDUCLAS2": "HDU"})
        hdu_table.write(path / "hdu-index.fits.gz", format="fits", overwrite=True)


def simple_irf_hdus(psf_sigma_deg=0.1, energy_resolution=0.1):
    """Effective area (H.E.S.S. parametrisation, flat in offset), Gaussian energy dispersion and a
    Gaussian PSF table: (HDU_TYPE, HDU_CLASS, HDU) triples. Enough for gammapy's makers; not a real
    instrument."""
    from gammapy.irf import PSF3D, EffectiveAreaTable2D, EnergyDispersion2D
    from gammapy.maps import MapAxis

    energy = MapAxis.from_energy_bounds(0.05, 200, nbin=24, unit="TeV", name="energy_true")
    offset = MapAxis.from_edges(np.arange(5) * u.deg, name="offset")
    flat = EffectiveAreaTable2D.from_parametrization(energy, "HESS")
    aeff = EffectiveAreaTable2D(axes=[energy, offset], data=np.repeat(flat.data, offset.nbin, axis=1),
                                unit=flat.unit)
    migra = MapAxis.from_edges(np.linspace(0.2, 5, 49), name="migra")
    edisp = EnergyDispersion2D.from_gauss(energy_axis_true=energy, migra_axis=migra, offset_axis=offset,
                                          bias=0, sigma=energy_resolution)
    rad = MapAxis.from_edges(np.linspace(0, 1, 51) * u.deg, name="rad")
    sigma = np.radians(psf_sigma_deg)
    profile = np.exp(-rad.center.to_value("rad") ** 2 / (2 * sigma ** 2)) / (2 * np.pi * sigma ** 2)
    psf = PSF3D(axes=[energy, offset, rad], unit="sr-1",
                data=np.broadcast_to(profile, (energy.nbin, offset.nbin, rad.nbin)).copy())
    return [("aeff", "aeff_2d", aeff.to_table_hdu()), ("edisp", "edisp_2d", edisp.to_table_hdu()),
            ("psf", "psf_table", psf.to_table_hdu())]


OBS_COLUMNS = ["OBS_ID", "RA_PNT", "DEC_PNT", "GLON_PNT", "GLAT_PNT", "ALT_PNT", "ZEN_PNT", "AZ_PNT",
               "ONTIME", "LIVETIME", "DEADC", "TSTART", "TSTOP", "N_TELS", "TELLIST", "OBJECT"]


def write_source_catalogue(path, sources):
    """Write a small catalogue in gamma-cat's column layout, readable as ``exclusion.gammacat``.

    Parameters
    ----------
    path : str or `~pathlib.Path`
        Output FITS file.
    sources : list of `PointSource` or dict
        Each with ``name``, ``ra_deg``, ``dec_deg`` and optionally ``morph_sigma`` (deg, makes
        the source extended with a Gaussian morphology).
    """
    rows = []
    for source in sources:
        if isinstance(source, PointSource):
            source = {"name": source.name, "ra_deg": source.ra_deg, "dec_deg": source.dec_deg}
        sigma = source.get("morph_sigma")
        rows.append((source["name"], source["ra_deg"], source["dec_deg"],
                     "gauss" if sigma else "point", float(sigma) if sigma else np.nan))
    table = Table(rows=rows, names=["common_name", "ra", "dec", "morph_type", "morph_sigma"],
                  dtype=[str, float, float, str, float])
    table["ra"].unit = table["dec"].unit = table["morph_sigma"].unit = "deg"
    table.meta["ORIGIN"] = "bkgdb simulation"
    table.write(path, overwrite=True)
    return Path(path)
