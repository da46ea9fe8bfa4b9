"""Properties of background pieces for random binnings, event sets and exclusion circles.

(a) Pieces add up: the sum of the pieces of several runs of one field equals the piece of their
    concatenated events (counts exactly; exposure and rate to float precision).
(b) Nothing is lost or counted twice: kept + excluded counts are the events inside the binning's
    range, bin by bin, and the excluded ones are those inside a circle.

No catalogues are read (all switched off); the exclusion circles are drawn with the events.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bkgdb.config import Binning, CircleRegion, ExclusionSettings
from bkgdb.makers.assembly import assemble_background
from bkgdb.makers.piece import PieceMaker

PROPERTY_SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def binnings(draw):
    e_min = 10 ** draw(st.floats(-2, 1))
    e_max = e_min * 10 ** draw(st.floats(0.05, 3))
    off_min = draw(st.sampled_from([0.0, 0.0, 0.1, 0.5, 1.0]))
    off_max = off_min + draw(st.floats(0.2, 3.0))
    return Binning(
        e_min=e_min,
        e_max=e_max,
        e_bins=draw(st.integers(1, 15)),
        off_min=off_min,
        off_max=off_max,
        off_bins=draw(st.integers(1, 10)),
    )


def offset_positions(ra_deg, dec_deg, offset_deg, angle_deg):
    """Directions at ``offset_deg`` from (ra, dec) towards position angle ``angle_deg``, on the sphere."""
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    offset, angle = np.radians(offset_deg), np.radians(angle_deg)
    sin_dec = np.sin(dec) * np.cos(offset) + np.cos(dec) * np.sin(offset) * np.cos(angle)
    new_dec = np.arcsin(np.clip(sin_dec, -1, 1))
    new_ra = ra + np.arctan2(np.sin(angle) * np.sin(offset) * np.cos(dec), np.cos(offset) - np.sin(dec) * sin_dec)
    return np.degrees(new_ra) % 360.0, np.degrees(new_dec)


def distance_deg(ra1, dec1, ra2, dec2):
    """Angular distance by the haversine formula (bkgdb uses unit-vector dot products)."""
    ra1, dec1, ra2, dec2 = map(np.radians, (ra1, dec1, ra2, dec2))
    h = np.sin((dec2 - dec1) / 2) ** 2 + np.cos(dec1) * np.cos(dec2) * np.sin((ra2 - ra1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(h, 0, 1))))


@st.composite
def fields(draw):
    """A binning, a pointing, exclusion circles near it and a few runs' events and ontimes."""
    binning = draw(binnings())
    ra = draw(st.floats(0, 360, exclude_max=True))
    dec = draw(st.floats(-89.5, 89.5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    circles = []
    for number in range(draw(st.integers(0, 3))):
        centre = offset_positions(ra, dec, draw(st.floats(0, binning.off_max)), draw(st.floats(0, 360)))
        circles.append(CircleRegion(float(centre[0]), float(centre[1]), draw(st.floats(0.05, 1.0)), f"c{number}"))
    runs = []
    for _ in range(draw(st.integers(1, 5))):
        n_events = draw(st.integers(0, 400))
        # Some events beyond each end of the binning's ranges, and some exactly on energy edges.
        offset = binning.off_max * 1.2 * np.sqrt(rng.uniform(0, 1, n_events))
        ev_ra, ev_dec = offset_positions(ra, dec, offset, rng.uniform(0, 360, n_events))
        energy = np.exp(rng.uniform(np.log(binning.e_min / 3), np.log(binning.e_max * 3), n_events))
        on_edge = rng.uniform(0, 1, n_events) < 0.05
        energy[on_edge] = rng.choice(binning.energy_edges, on_edge.sum())
        runs.append((ev_ra, ev_dec, energy, draw(st.floats(10, 5000))))
    return binning, (ra, dec), tuple(circles), runs


def exclusion_with(circles, method="geometric"):
    return ExclusionSettings(gammacat=None, hawc=None, star_cat=None, exclude_regions=circles, exposure_method=method)


@PROPERTY_SETTINGS
@given(fields())
def test_pieces_of_several_runs_add_up_to_the_piece_of_all_their_events(field):
    binning, (ra, dec), circles, runs = field
    maker = PieceMaker(binning, exclusion_with(circles))
    pieces = [maker.run(ev_ra, ev_dec, energy, ra, dec, ontime, 0.9 * ontime) for ev_ra, ev_dec, energy, ontime in runs]
    everything = [np.concatenate(values) for values in zip(*[run[:3] for run in runs], strict=True)]
    total_ontime = sum(run[3] for run in runs)
    whole = maker.run(*everything, ra, dec, total_ontime, 0.9 * total_ontime)

    summed = assemble_background(pieces, binning)
    single = assemble_background([whole], binning)
    assert summed.counts.dtype.kind == "i"
    np.testing.assert_array_equal(summed.counts, whole.counts)
    np.testing.assert_array_equal(sum(piece.excluded_counts for piece in pieces), whole.excluded_counts)
    assert summed.ontime_s == pytest.approx(total_ontime, rel=1e-12)
    np.testing.assert_allclose(summed.exposure_s, single.exposure_s, rtol=1e-12, atol=0)
    np.testing.assert_allclose(summed.rate, single.rate, rtol=1e-12, atol=0)
    assert np.all(np.isfinite(summed.rate)) and np.all(summed.rate >= 0)
    assert np.all(summed.exposure_s <= total_ontime * (1 + 1e-12))


@PROPERTY_SETTINGS
@given(fields(), st.sampled_from(["geometric", "counts-ratio"]))
def test_kept_and_excluded_counts_are_the_events_in_range(field, method):
    binning, (ra, dec), circles, runs = field
    maker = PieceMaker(binning, exclusion_with(circles, method))
    for ev_ra, ev_dec, energy, ontime in runs:
        piece = maker.run(ev_ra, ev_dec, energy, ra, dec, ontime)
        offset = distance_deg(ra, dec, ev_ra, ev_dec)
        in_range = (
            (energy >= binning.e_min)
            & (energy <= binning.e_max)
            & (offset >= binning.off_min)
            & (offset <= binning.off_max)
        )
        in_circle = np.zeros(len(energy), bool)
        for circle in circles:
            in_circle |= distance_deg(circle.ra, circle.dec, ev_ra, ev_dec) <= circle.radius
        assert piece.n_events == in_range.sum()
        assert piece.excluded_counts.sum() == (in_range & in_circle).sum()
        assert piece.counts.sum() == (in_range & ~in_circle).sum()
        # Bin by bin, kept + excluded is the plain histogram of every event.
        every, _, _ = np.histogram2d(energy, offset, bins=(binning.energy_edges, binning.offset_edges))
        np.testing.assert_array_equal(piece.counts + piece.excluded_counts, every)
        assert np.all(piece.counts >= 0) and np.all(piece.excluded_counts >= 0)
        assert np.all((piece.fraction >= 0) & (piece.fraction <= 1 + 1e-12))
