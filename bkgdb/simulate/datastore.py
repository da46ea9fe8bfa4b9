"""Simulated DL3 datastores drawn from a known background rate, for tests, benchmarks and the demo.

Two ways to place runs on the sky:

- fixed pointings (the default): events are drawn on the sphere around each pointing, with
  position angles uniform, and ALT_PNT/AZ_PNT are random labels (or set from ``zeniths``). Enough for
  radially symmetric backgrounds.
- tracking (``hour_angles`` or ``horizontal`` given): each run tracks its RA/Dec from a site at real
  times, its Alt/Az comes from astropy, and every event is drawn in FoV coordinates and carried to
  RA/Dec through gammapy's FoV frames at its own time, so the sky turns in the Alt/Az FoV during a
  run as it does for a telescope. Needed for backgrounds that are not radially symmetric
  (`~bkgdb.simulate.truth.FoVBackgroundTruth`).
"""

from __future__ import annotations

import gzip
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import Table

from bkgdb.simulate.irfs import simple_irf_hdus
from bkgdb.simulate.observing import (
    MJDREF,
    TIMESYS,
    fov_to_radec,
    pointing_altaz,
    radec_of_horizontal,
    site_location,
    time_of_hour_angle,
    time_reference,
)
from bkgdb.simulate.sources import PointSource
from bkgdb.simulate.truth import BackgroundTruth, FoVBackgroundTruth

__all__ = ["DatastoreSimulator", "OBS_COLUMNS"]

log = logging.getLogger(__name__)

OBS_COLUMNS = [
    "OBS_ID",
    "RA_PNT",
    "DEC_PNT",
    "GLON_PNT",
    "GLAT_PNT",
    "ALT_PNT",
    "ZEN_PNT",
    "AZ_PNT",
    "ONTIME",
    "LIVETIME",
    "DEADC",
    "TSTART",
    "TSTOP",
    "N_TELS",
    "TELLIST",
    "OBJECT",
]
#: Seconds after MJDREF of the first simulated night (March 2004, within astropy's bundled Earth
#: orientation tables).
FIRST_NIGHT_S = 1.0e8


@dataclass
class DatastoreSimulator:
    """Write a GADF datastore of runs whose background follows a `BackgroundTruth`.

    With ``hour_angles`` or ``horizontal`` the runs track their pointings from ``site`` (see the
    module docstring); a `FoVBackgroundTruth` needs one of them.

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
    hour_angles : list of float, optional
        Tracking: the hour angle (h, west positive) of each run's pointing at mid-run; one run per
        night, at the site's sidereal time that gives it.
    horizontal : list of (zenith_deg, az_deg), optional
        Tracking: each run's pointing at mid-run in horizontal coordinates; its RA/Dec follows
        (``pointings`` is then not used).
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
    #: Tracking: hour angle (h) of each pointing at mid-run (see Parameters).
    hour_angles: list | None = None
    #: Tracking: (zenith_deg, az_deg) of each run at mid-run, instead of ``pointings``.
    horizontal: list | None = None

    @property
    def tracking(self) -> bool:
        """Whether runs track their pointings at real times (see the module docstring)."""
        return self.hour_angles is not None or self.horizontal is not None

    def _check(self) -> None:
        if self.hour_angles is not None and self.horizontal is not None:
            raise ValueError("give hour_angles or horizontal, not both")
        if self.tracking and self.zeniths is not None:
            raise ValueError("tracking runs get their zenith angles from the sky; zeniths is for fixed pointings")
        if self.hour_angles is not None and len(self.hour_angles) != len(self.pointings):
            raise ValueError("hour_angles needs one value per pointing")
        if isinstance(self.truth, FoVBackgroundTruth) and not self.tracking:
            raise ValueError("a FoV truth needs tracking runs: give hour_angles or horizontal")

    def run(self, path: str | Path) -> list[int]:
        """Write the datastore into folder ``path``; return its OBS_IDs."""
        self._check()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "data").mkdir(exist_ok=True)
        rng = np.random.default_rng(self.seed)
        irfs = simple_irf_hdus() if self.with_irfs else []
        obs_rows, hdu_rows, obs_ids = [], [], []
        n_runs = len(self.horizontal) if self.horizontal is not None else len(self.pointings)
        for number in range(n_runs):
            obs_id = self.first_obs_id + number
            if self.tracking:
                ra, dec, tstart, horizontal = self._tracked_run(number)
                header = self._run_header(obs_id, ra, dec, tstart, rng)
                header.update(horizontal)
            else:
                ra, dec = self.pointings[number]
                tstart = 1.0e8 + number * 86400.0 / 3 + rng.uniform(0, 600)
                header = self._run_header(obs_id, ra, dec, tstart, rng)
                if self.zeniths is not None:
                    zenith = float(self.zeniths[number])
                    header.update({"ZEN_PNT": zenith, "ALT_PNT": 90.0 - zenith})
            header.update({key: values[number] for key, values in self.extra_columns.items()})
            draw = self._tracked_events if self.tracking else self._events
            events = draw(rng, ra, dec, tstart, header["ZEN_PNT"])
            file_name = f"run_{obs_id:06d}.fits.gz"
            self._write_run(path / "data" / file_name, header, events, irfs)
            obs_rows.append(
                {**{key: header[key] for key in OBS_COLUMNS + list(self.extra_columns)}, "EVENT_COUNT": len(events)}
            )
            hdus = [("events", "events", "EVENTS"), ("gti", "gti", "GTI")]
            hdus += [(hdu_type, hdu_class, hdu.name) for hdu_type, hdu_class, hdu in irfs]
            for hdu_type, hdu_class, hdu_name in hdus:
                hdu_rows.append(
                    {
                        "OBS_ID": obs_id,
                        "HDU_TYPE": hdu_type,
                        "HDU_CLASS": hdu_class,
                        "FILE_DIR": "data",
                        "FILE_NAME": file_name,
                        "HDU_NAME": hdu_name,
                    }
                )
            obs_ids.append(obs_id)
        self._write_indexes(path, obs_rows, hdu_rows)
        log.info("simulated %d runs in %s", len(obs_ids), path)
        return obs_ids

    def _tracked_run(self, number: int) -> tuple[float, float, float, dict]:
        """Pointing, start time (s after MJDREF) and mid-run Alt/Az header values of tracking run ``number``."""
        location = site_location(self.site)
        night = time_reference() + (FIRST_NIGHT_S + number * 86400.0) * u.s
        if self.horizontal is not None:
            zenith, az = self.horizontal[number]
            middle = night
            ra, dec = radec_of_horizontal(zenith, az, middle, location)
        else:
            assert self.hour_angles is not None  # tracking without horizontal coordinates
            ra, dec = self.pointings[number]
            middle = time_of_hour_angle(ra, float(self.hour_angles[number]), night, location)
        altaz = pointing_altaz(ra, dec, middle, location)
        tstart = float((middle - time_reference()).to_value(u.s)) - 0.5 * self.ontime_s
        alt = float(altaz.alt.deg)
        az = float(altaz.az.wrap_at(360 * u.deg).deg)
        return ra, dec, tstart, {"ALT_PNT": alt, "ZEN_PNT": 90.0 - alt, "AZ_PNT": az}

    def _run_header(self, obs_id: int, ra: float, dec: float, tstart: float, rng: np.random.Generator) -> dict:
        pointing = SkyCoord(ra * u.deg, dec * u.deg)
        alt = float(rng.uniform(50, 80))
        livetime = self.ontime_s * self.deadc
        return {
            "OBS_ID": obs_id,
            "RA_PNT": ra,
            "DEC_PNT": dec,
            "GLON_PNT": float(pointing.galactic.l.deg),
            "GLAT_PNT": float(pointing.galactic.b.deg),
            "ALT_PNT": alt,
            "ZEN_PNT": 90.0 - alt,
            "AZ_PNT": float(rng.uniform(0, 360)),
            "ONTIME": self.ontime_s,
            "LIVETIME": livetime,
            "DEADC": self.deadc,
            "TSTART": tstart,
            "TSTOP": tstart + self.ontime_s,
            "N_TELS": 4,
            "TELLIST": "1,2,3,4",
            "OBJECT": self.object_name,
        }

    def _events(self, rng: np.random.Generator, ra: float, dec: float, tstart: float, zenith_deg: float = 0.0) -> Table:
        """Events of a fixed pointing: offsets and uniform position angles around it."""
        pointing = SkyCoord(ra * u.deg, dec * u.deg)
        n_bkg = rng.poisson(self.truth.total_rate(zenith_deg) * self.ontime_s)
        energy, offset = self.truth.draw(rng, n_bkg, zenith_deg)
        angle = rng.uniform(0, 360, size=n_bkg)
        positions = pointing.directional_offset_by(angle * u.deg, offset * u.deg)
        ra_ev, dec_ev = positions.ra.deg, positions.dec.deg
        if self.source is not None:
            src_ra, src_dec, src_energy = self._source_events(rng, pointing)
            ra_ev, dec_ev = np.concatenate([ra_ev, src_ra]), np.concatenate([dec_ev, src_dec])
            energy = np.concatenate([energy, src_energy])
        time = np.sort(tstart + rng.uniform(0, self.ontime_s, size=len(energy)))
        order = rng.permutation(len(energy))
        return Table(
            {
                "EVENT_ID": np.arange(1, len(energy) + 1, dtype=np.int64),
                "TIME": time * u.s,
                "RA": ra_ev[order].astype(np.float32) * u.deg,
                "DEC": dec_ev[order].astype(np.float32) * u.deg,
                "ENERGY": energy[order].astype(np.float32) * u.TeV,
            }
        )

    def _tracked_events(
        self, rng: np.random.Generator, ra: float, dec: float, tstart: float, zenith_deg: float
    ) -> Table:
        """Events drawn in the FoV at their times and carried to RA/Dec through gammapy's frames."""
        energy, lon, lat = self.truth.draw_fov(rng, self.ontime_s, zenith_deg)
        time = tstart + rng.uniform(0, self.ontime_s, size=len(energy))
        alignment = getattr(self.truth, "alignment", "RADEC")  # a symmetric truth holds in any frame
        ra_ev, dec_ev = fov_to_radec(
            lon, lat, time_reference() + time * u.s, ra, dec, site_location(self.site), alignment
        )
        if self.source is not None:
            src_ra, src_dec, src_energy = self._source_events(rng, SkyCoord(ra * u.deg, dec * u.deg))
            ra_ev, dec_ev = np.concatenate([ra_ev, src_ra]), np.concatenate([dec_ev, src_dec])
            energy = np.concatenate([energy, src_energy])
            time = np.concatenate([time, tstart + rng.uniform(0, self.ontime_s, size=len(src_energy))])
        order = np.argsort(time)
        return Table(
            {
                "EVENT_ID": np.arange(1, len(energy) + 1, dtype=np.int64),
                "TIME": time[order] * u.s,
                "RA": ra_ev[order].astype(np.float32) * u.deg,
                "DEC": dec_ev[order].astype(np.float32) * u.deg,
                "ENERGY": energy[order].astype(np.float32) * u.TeV,
            }
        )

    def _source_events(self, rng: np.random.Generator, pointing: SkyCoord) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """RA, Dec and energy of the source's events within the drawing radius."""
        source = self.source
        assert source is not None
        n_src = rng.poisson(source.rate_per_s * self.ontime_s)
        centre = SkyCoord(source.ra_deg * u.deg, source.dec_deg * u.deg)
        # A 2D Gaussian PSF: Rayleigh-distributed radius, uniform position angle.
        radius = source.psf_sigma_deg * np.sqrt(-2 * np.log(rng.uniform(size=n_src)))
        src = centre.directional_offset_by(rng.uniform(0, 360, n_src) * u.deg, radius * u.deg)
        lo, hi = self.truth.energy_range_tev
        p = 1.0 - source.index
        e_src = (lo**p + rng.uniform(size=n_src) * (hi**p - lo**p)) ** (1.0 / p)
        keep = pointing.separation(src).deg <= self.truth.max_offset_deg
        return src.ra.deg[keep], src.dec.deg[keep], e_src[keep]

    def _write_run(
        self,
        filename: str | Path,
        header: dict,
        events: Table,
        irfs: Sequence[tuple[str, str, fits.BinTableHDU]] = (),
    ) -> None:
        gadf = {
            "HDUCLASS": "GADF",
            "HDUDOC": "https://github.com/open-gamma-ray-astro/gamma-astro-data-formats",
            "HDUVERS": "0.3",
        }
        time_ref = {
            "MJDREFI": int(MJDREF),
            "MJDREFF": MJDREF % 1,
            "TIMEUNIT": "s",
            "TIMESYS": TIMESYS,
            "TIMEREF": "local",
        }
        events_hdu = fits.BinTableHDU(events, name="EVENTS")
        events_hdu.header.update(
            {
                **gadf,
                "HDUCLAS1": "EVENTS",
                "TELESCOP": "SIM",
                "INSTRUME": "bkgdb simulation",
                **time_ref,
                **header,
                "RADECSYS": "ICRS",
                "EQUINOX": 2000.0,
                "OBS_MODE": "POINTING",
                **self.site,
            }
        )
        gti = Table({"START": [header["TSTART"]] * u.s, "STOP": [header["TSTOP"]] * u.s})
        gti_hdu = fits.BinTableHDU(gti, name="GTI")
        gti_hdu.header.update({**gadf, "HDUCLAS1": "GTI", **time_ref})
        hdus = fits.HDUList([fits.PrimaryHDU(), events_hdu, gti_hdu, *[hdu.copy() for _, _, hdu in irfs]])
        # Fast gzip: the files are read many times and written once, and level 9 saves little on floats.
        buffer = io.BytesIO()
        hdus.writeto(buffer)
        Path(filename).write_bytes(gzip.compress(buffer.getvalue(), compresslevel=1, mtime=0))

    def _write_indexes(self, path: Path, obs_rows: list[dict], hdu_rows: list[dict]) -> None:
        obs_table = Table(rows=obs_rows, names=list(obs_rows[0]))
        for name in ("RA_PNT", "DEC_PNT", "GLON_PNT", "GLAT_PNT", "ALT_PNT", "ZEN_PNT", "AZ_PNT"):
            obs_table[name].unit = "deg"
        for name in ("ONTIME", "LIVETIME", "TSTART", "TSTOP"):
            obs_table[name].unit = "s"
        obs_table.meta.update(
            {
                "HDUCLASS": "GADF",
                "HDUCLAS1": "INDEX",
                "HDUCLAS2": "OBS",
                "MJDREFI": int(MJDREF),
                "MJDREFF": MJDREF % 1,
                "TIMESYS": "tt",
                "TIMEUNIT": "s",
                **self.site,
            }
        )
        obs_table.write(path / "obs-index.fits.gz", format="fits", overwrite=True)
        hdu_table = Table(rows=hdu_rows, names=list(hdu_rows[0]))
        hdu_table.meta.update({"HDUCLASS": "GADF", "HDUCLAS1": "INDEX", "HDUCLAS2": "HDU"})
        hdu_table.write(path / "hdu-index.fits.gz", format="fits", overwrite=True)
