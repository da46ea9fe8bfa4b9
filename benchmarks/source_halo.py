"""How far a bright source's photons reach: event density in rings around PKS 2155-304 (H.E.S.S. DR1).

The 2006 flare runs (OBS_ID 33787-33801) and the 2008 runs (47802-47829, the source some ten times
fainter) were taken with the same four 0.5 deg wobble positions, so the background acceptance
enters both epochs alike. For rings around the source it prints events per deg^2 (every other
exclusion region of ``configs/hess-dr1.yaml`` cut out, offsets below ``--max-offset``, the ring's
area measured on the sphere) and the flare density relative to the 2008 one, normalised to 1 over
the outer rings: where that ratio is 1 within its error, the flare's photons no longer reach.

    python benchmarks/source_halo.py [--e-min TEV] [--max-offset DEG]

Needs ``$GAMMAPY_DATA`` (hess-dl3-dr1 and catalogs).
"""

import argparse
import os
from pathlib import Path

import numpy as np
from astropy.io import fits

from bkgdb.config import load_config
from bkgdb.makers.exclusion import ExclusionFinder, annulus_grid, rotation_to
from bkgdb.makers.sphere import angular_distance_deg, unit_vectors

SOURCE = "PKS 2155-304"
EPOCHS = {"2006 flare": range(33787, 33802), "2008": (47802, 47803, 47804, 47827, 47828, 47829)}
RING_EDGES = np.round(np.arange(0.0, 1.61, 0.1), 2)
#: Rings taken as background only, to normalise the flare / 2008 ratio.
OUTER = (1.0, 1.6)


def ring_counts_and_areas(path, finder, source_vector, source_ra, source_dec, e_min, max_offset):
    """Events and area (deg^2) of each ring around the source, outside the other regions and the FoV cut."""
    header = fits.getheader(path, "EVENTS")
    events = fits.getdata(path, "EVENTS")
    ra_pnt, dec_pnt = header["RA_PNT"], header["DEC_PNT"]
    regions = [region for region in finder.regions(ra_pnt, dec_pnt, max_offset) if region.name != SOURCE]
    pointing = unit_vectors(ra_pnt, dec_pnt)
    vectors = unit_vectors(events["RA"], events["DEC"])
    keep = ((angular_distance_deg(vectors, pointing) < max_offset) & (events["ENERGY"] >= e_min)
            & ~finder.excluded(vectors, regions))
    counts = np.histogram(angular_distance_deg(vectors[keep], source_vector), RING_EDGES)[0]
    areas = []
    rotation = rotation_to(source_ra, source_dec)
    for lo, hi in zip(RING_EDGES[:-1], RING_EDGES[1:]):
        grid = annulus_grid(lo, hi, n_theta=8, n_phi=720) @ rotation.T
        usable = (angular_distance_deg(grid, pointing) < max_offset) & ~finder.excluded(grid, regions)
        solid_angle_deg2 = 2 * np.pi * (np.cos(np.radians(lo)) - np.cos(np.radians(hi))) * np.degrees(1) ** 2
        areas.append(usable.mean() * solid_angle_deg2)
    return counts, np.array(areas), regions


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--e-min", type=float, default=0.0, help="lowest event energy in TeV (default: all)")
    parser.add_argument("--max-offset", type=float, default=2.0, help="largest FoV offset in deg (default 2)")
    args = parser.parse_args()
    root = Path(os.environ["GAMMAPY_DATA"])
    config = load_config(Path(__file__).resolve().parent.parent / "configs" / "hess-dr1.yaml")
    finder = ExclusionFinder(config.exclusion)
    source = next(region for region in finder.regions(329.717, -30.226, 0.5) if region.name == SOURCE)
    source_vector = unit_vectors(source.ra, source.dec)
    density, error = {}, {}
    for epoch, obs_ids in EPOCHS.items():
        counts = areas = 0
        for obs_id in obs_ids:
            path = root / "hess-dl3-dr1" / "data" / f"hess_dl3_dr1_obs_id_0{obs_id}.fits.gz"
            run_counts, run_areas, regions = ring_counts_and_areas(path, finder, source_vector, source.ra,
                                                                   source.dec, args.e_min, args.max_offset)
            counts, areas = counts + run_counts, areas + run_areas
        density[epoch], error[epoch] = counts / areas, np.sqrt(counts) / areas
        if epoch == "2006 flare":
            flare_counts, flare_areas = counts, areas
    print(f"{SOURCE} at ({source.ra:.3f}, {source.dec:.3f}); E >= {args.e_min} TeV, offset < {args.max_offset} deg; "
          f"other regions cut: {', '.join(sorted({r.name for r in regions}))}")
    outer = (RING_EDGES[:-1] >= OUTER[0]) & (RING_EDGES[1:] <= OUTER[1])
    flare, quiet = density["2006 flare"], density["2008"]
    scale = flare[outer].sum() / quiet[outer].sum()
    ratio = flare / (scale * quiet)
    ratio_error = ratio * np.hypot(error["2006 flare"] / flare, error["2008"] / quiet)
    # Flare events above the scaled 2008 density, and those beyond each ring's inner edge: the
    # source photons a circle of that radius would leave in the background.
    excess = flare_counts - scale * quiet * flare_areas
    beyond = np.cumsum(excess[::-1])[::-1]
    print(f"{'ring (deg)':>12} {'2006 /deg2':>11} {'2008 /deg2':>11} {'ratio':>7} {'+-':>5} {'pull':>6} "
          f"{'excess':>7} {'excess beyond':>14}")
    for lo, hi, f, q, r, e, x, b in zip(RING_EDGES[:-1], RING_EDGES[1:], flare, quiet, ratio, ratio_error,
                                        excess, beyond):
        print(f"{lo:5.2f}-{hi:4.2f}   {f:11.0f} {q:11.0f} {r:7.3f} {e:5.3f} {(r - 1) / e:6.1f} {x:7.0f} {b:14.0f}")
    print(f"flare events kept within {OUTER[1]} deg of the source and {args.max_offset} deg of the pointings: "
          f"{flare_counts.sum()}")


if __name__ == "__main__":
    main()
