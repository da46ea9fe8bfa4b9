"""Simulated DL3 datastores drawn from known background rates, for tests, benchmarks and the demo.

- `~bkgdb.simulate.truth`: the known rates (`BackgroundTruth`, radially symmetric;
  `FoVBackgroundTruth`, with a gradient across the FoV in an ALTAZ or RADEC alignment);
- `~bkgdb.simulate.observing`: site, times, tracking pointings and FoV <-> sky conversions;
- `~bkgdb.simulate.datastore`: `DatastoreSimulator`, which writes the runs and their index files;
- `~bkgdb.simulate.irfs`: simple IRFs for gammapy's makers, background IRFs beside the runs;
- `~bkgdb.simulate.sources`: gamma-ray sources and their catalogues;
- `~bkgdb.simulate.compare`: counts against gammapy's predicted background in FoV quadrants.
"""

from bkgdb.simulate.datastore import OBS_COLUMNS, DatastoreSimulator
from bkgdb.simulate.irfs import background_hdu, datastore_with_backgrounds, simple_irf_hdus
from bkgdb.simulate.observing import MJDREF, fov_to_radec, radec_to_fov, site_location, time_reference
from bkgdb.simulate.sources import PointSource, write_source_catalogue
from bkgdb.simulate.truth import BackgroundTruth, FoVBackgroundTruth, fov_offset_deg

__all__ = [
    "BackgroundTruth",
    "FoVBackgroundTruth",
    "PointSource",
    "DatastoreSimulator",
    "write_source_catalogue",
    "simple_irf_hdus",
    "background_hdu",
    "datastore_with_backgrounds",
    "OBS_COLUMNS",
    "MJDREF",
    "fov_to_radec",
    "radec_to_fov",
    "site_location",
    "time_reference",
    "fov_offset_deg",
]
