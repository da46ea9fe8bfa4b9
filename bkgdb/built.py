"""A built background: the model of one target run and how it was made, as gammapy and FITS take it.

`BuiltBackground` holds the rate on its `~bkgdb.geometry.PieceGeometry`, the selection, the sum of
pieces, the smoothing, the normalisation and the condition model; it gives the gammapy IRF, the
``BKG_2D``/``BKG_3D`` HDU with the provenance keywords and the table of the runs used.
`PieceInput` is one piece's lineage record.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from bkgdb import __version__
from bkgdb.gadf.hdu import background_hdu
from bkgdb.gadf.sash import check_writable
from bkgdb.geometry import PieceGeometry
from bkgdb.makers.assembly import AssembledBackground
from bkgdb.makers.normalisation import NO_NORMALISATION, Normalisation

if TYPE_CHECKING:
    from astropy.io import fits
    from gammapy.irf import Background2D, Background3D

    from bkgdb.store.models import Run
    from bkgdb.store.selection import Selection

    #: A FITS header value, or a (value, comment) pair.
    HeaderCard = str | tuple[str | int | float, str]

__all__ = ["BuiltBackground", "PieceInput", "BKG_HDU", "PROVENANCE_HDU"]

BKG_HDU = "BKG"
PROVENANCE_HDU = "BKGDB_RUNS"


@dataclass
class PieceInput:
    """One piece summed into a background, as it was at build time (its lineage record)."""

    piece_id: int
    run_id: int
    obs_id: int
    file_sha256: str | None
    created_at: datetime | None
    #: The piece's weight in the sum; 1 for plain summation.
    weight: float = 1.0


@dataclass
class BuiltBackground:
    """A background model for one target run and how it was made.

    ``rate`` is the model (s-1 MeV-1 sr-1 per bin of ``assembled.geometry``: energy x offset, or
    energy x FoV lon x FoV lat); ``model`` gives it as a `gammapy.irf.Background2D` or
    `gammapy.irf.Background3D`.
    """

    target: Run
    selection: Selection
    assembled: AssembledBackground
    smoothing: str
    rate: np.ndarray
    binning_hash: str
    exclusion_hash: str
    binning_id: int | None = None
    exclusion_id: int | None = None
    #: Per-run scale applied to the model (`bkgdb.makers.normalisation.Normalisation`); factor 1 when none.
    normalisation: Normalisation = NO_NORMALISATION
    #: Parameters of the condition model the pieces were moved with (None: plain sum).
    condition_model: dict | None = None
    #: The pieces summed, as read at build time, by column: piece ids, run ids, OBS_IDs, file hashes,
    #: creation times as the database driver gives them, weights. `inputs` makes the records of them
    #: when first asked for.
    input_columns: tuple = ()

    @cached_property
    def inputs(self) -> list[PieceInput]:
        """The pieces summed, in selection order (`PieceInput`); recorded as the background's lineage.

        Made on first use (recording the background): a thousand records cost a twentieth of the build.
        """
        from bkgdb.store.backgrounds import stored_datetimes

        if not self.input_columns:
            return []
        piece_ids, run_ids, obs_ids, hashes, created, weights = self.input_columns
        # The same Python floats as float() of each weight, converted in one call.
        floats = np.asarray(weights, dtype=float).tolist()
        return list(map(PieceInput, piece_ids, run_ids, obs_ids, hashes, stored_datetimes(created), floats))

    @property
    def model(self) -> Background2D | Background3D:
        return self.assembled.to_irf(self.rate)

    @property
    def geometry(self) -> PieceGeometry:
        return self.assembled.geometry

    @property
    def geometry_label(self) -> str:
        """``2D`` or ``3D ALTAZ`` / ``3D RADEC``: which binning the background uses."""
        geometry = self.geometry
        return f"3D {geometry.alignment}" if geometry.is_3d else "2D"

    def header_cards(self) -> dict[str, HeaderCard]:
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
            "BKG_GEOM": (self.geometry_label, "binning the model was assembled on"),
            "BKG_EXCH": (self.exclusion_hash[:16], "bkgdb exclusion hash"),
            "BKG_NRMM": (self.normalisation.method, "per-run normalisation method"),
            "BKG_NRMF": (float(self.normalisation.factor), "per-run normalisation factor applied"),
            "BKG_NRMR": (self.normalisation.region, "where the normalisation was measured"),
            "BKG_ASM": ("condition" if self.condition_model else "sum", "condition: moved to target; sum: plain"),
            **self._condition_cards(),
        }

    def _condition_cards(self) -> dict[str, HeaderCard]:
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

    def model_hdu(self, name: str = BKG_HDU, reverse_lon: bool = False) -> fits.BinTableHDU:
        """The model as a ``BKG_2D`` or ``BKG_3D`` table HDU with the provenance keywords.

        Parameters
        ----------
        name : str, optional
            EXTNAME. Default is ``BKG``.
        reverse_lon : bool, optional
            The model is for a run whose background gammapy reads as ``REVERSE_LON_RADEC``
            (`bkgdb.gadf.sash.gammapy_reverses_lon`): a RADEC 3D model is written mirrored in FoV
            longitude so that gammapy reads it as built; 2D models are written as they are.
            Default is False.

        Raises
        ------
        BkgdbError
            ``reverse_lon`` with an ALTAZ 3D model, which gammapy would misread
            (`bkgdb.gadf.sash.check_writable`).
        """
        check_writable(self.geometry, reverse_lon)
        hdu = background_hdu(self.geometry, self.rate, name, reverse_lon=reverse_lon and self.geometry.is_3d)
        for key, value in self.header_cards().items():
            hdu.header[key] = value
        return hdu

    def provenance_hdu(self) -> fits.BinTableHDU:
        from astropy.io import fits
        from astropy.table import Table

        table = Table(
            {
                "OBS_ID": np.asarray(self.selection.obs_ids, dtype=np.int64),
                "DATASTORE": np.asarray(self.selection.datastores, dtype=str),
            }
        )
        table.meta["BKG_TGT"] = int(self.target.obs_id)
        hdu = fits.table_to_hdu(table)
        hdu.name = PROVENANCE_HDU
        return hdu
