"""Per-run normalisation: the control ring and monitor estimators, and their config keys."""

import numpy as np
import pytest

from bkgdb.config import ConfigWarning, load_config
from bkgdb.errors import ConfigError
from bkgdb.geometry import PieceGeometry
from bkgdb.makers.normalisation import NormalisationError, control_ring_normalisation, monitor_normalisation, ring_bins
from bkgdb.simulate import BackgroundTruth

ENERGY_EDGES = np.geomspace(0.1, 100, 13)
OFFSET_EDGES = np.linspace(0, 2.5, 11)
GEOMETRY = PieceGeometry.offset(ENERGY_EDGES, OFFSET_EDGES)


def expected_counts(rate, exposure_s):
    solid_angle = 2 * np.pi * (np.cos(np.radians(OFFSET_EDGES[:-1])) - np.cos(np.radians(OFFSET_EDGES[1:])))
    return rate * np.outer(np.diff(ENERGY_EDGES) * 1e6, exposure_s * solid_angle)


def truth_rate():
    """The simulator's truth as bin averages (what a summed model holds)."""
    truth = BackgroundTruth()
    counts = truth.expected_counts(ENERGY_EDGES, OFFSET_EDGES, 1.0)
    return counts / expected_counts(np.ones_like(counts), np.ones(len(OFFSET_EDGES) - 1))


def test_ring_bins_take_whole_bins_inside_the_ring():
    assert list(np.flatnonzero(ring_bins(OFFSET_EDGES, 2.0, 2.5))) == [8, 9]
    assert list(np.flatnonzero(ring_bins(OFFSET_EDGES, 1.9, 2.4))) == [8]
    assert not ring_bins(OFFSET_EDGES, 2.1, 2.2).any()


@pytest.mark.parametrize("scale", [0.8, 1.0, 1.25])
def test_control_ring_recovers_a_known_scale(scale):
    rng = np.random.default_rng(3)
    rate = truth_rate()
    # The target lost part of its ring to an exclusion region: accepted exposure 70 %, counts too.
    exposure = np.full(len(OFFSET_EDGES) - 1, 1800.0)
    exposure[9] *= 0.7
    counts = rng.poisson(scale * expected_counts(rate, exposure))
    counts[:, :8] = 10**6  # inside the ring's inner edge: must not count
    result = control_ring_normalisation(rate, GEOMETRY, counts, exposure, 2.0, 2.5)
    observed = counts[:, 8:].sum()
    assert result.method == "control-ring" and result.region == "offset 2.00-2.50 deg"
    assert result.error == pytest.approx(result.factor / np.sqrt(observed))
    assert abs(result.factor - scale) < 4 * result.error


def test_control_ring_error_includes_the_model_counts():
    rate = truth_rate()
    exposure = np.full(len(OFFSET_EDGES) - 1, 1800.0)
    counts = np.round(expected_counts(rate, exposure)).astype(int)
    alone = control_ring_normalisation(rate, GEOMETRY, counts, exposure, 2.0, 2.5)
    both = control_ring_normalisation(rate, GEOMETRY, counts, exposure, 2.0, 2.5, model_counts=counts)
    assert both.error == pytest.approx(alone.error * np.sqrt(2))


def test_control_ring_combined_with_the_model_scatter_by_inverse_variance():
    rate = truth_rate()
    exposure = np.full(len(OFFSET_EDGES) - 1, 1800.0)
    counts = np.round(1.3 * expected_counts(rate, exposure)).astype(int)
    ring = control_ring_normalisation(rate, GEOMETRY, counts, exposure, 2.0, 2.5)
    combined = control_ring_normalisation(rate, GEOMETRY, counts, exposure, 2.0, 2.5, model_scatter=0.1)
    weight_ring, weight_model = ring.error**-2, 0.1**-2
    assert combined.factor == pytest.approx((weight_ring * ring.factor + weight_model) / (weight_ring + weight_model))
    assert combined.error == pytest.approx((weight_ring + weight_model) ** -0.5)
    assert 1 < combined.factor < ring.factor and combined.error < min(ring.error, 0.1)
    assert combined.region == "offset 2.00-2.50 deg, combined with model scatter 0.1"
    # A ring far more precise than the model's scatter decides; a model far more precise keeps its scale.
    trusted = control_ring_normalisation(rate, GEOMETRY, counts, exposure, 2.0, 2.5, model_scatter=1e3)
    assert trusted.factor == pytest.approx(ring.factor, rel=1e-6)
    kept = control_ring_normalisation(rate, GEOMETRY, counts, exposure, 2.0, 2.5, model_scatter=1e-6)
    assert kept.factor == pytest.approx(1.0, abs=1e-6)


def test_control_ring_ignores_bins_the_model_does_not_cover():
    rate = truth_rate()
    exposure = np.full(len(OFFSET_EDGES) - 1, 1800.0)
    counts = np.round(expected_counts(rate, exposure)).astype(int)
    reference = control_ring_normalisation(rate, GEOMETRY, counts, exposure, 2.0, 2.5)
    rate[-1] = 0.0  # the model has nothing in its last energy bin ...
    counts[-1] += 500  # ... so counts there are not compared with it
    result = control_ring_normalisation(rate, GEOMETRY, counts, exposure, 2.0, 2.5)
    assert result.factor == pytest.approx(reference.factor, rel=1e-3)


def test_control_ring_energy_range():
    rate = truth_rate()
    exposure = np.full(len(OFFSET_EDGES) - 1, 1800.0)
    counts = expected_counts(rate, exposure)  # the expectation itself: no rounding at high energies
    counts[:4] *= 2  # below 1 TeV the target has twice the model's rate
    whole = control_ring_normalisation(rate, GEOMETRY, counts, exposure, 2.0, 2.5)
    above = control_ring_normalisation(rate, GEOMETRY, counts, exposure, 2.0, 2.5, energy_range_tev=(1.0, 100.0))
    assert whole.factor > 1.5 and above.factor == pytest.approx(1.0)
    assert above.region == "offset 2.00-2.50 deg, 1-100 TeV"
    with pytest.raises(NormalisationError, match="no energy bin lies within the control ring's 1.1-1.2 TeV"):
        control_ring_normalisation(rate, GEOMETRY, counts, exposure, 2.0, 2.5, energy_range_tev=(1.1, 1.2))


def test_control_ring_without_bins_or_counts_is_an_error():
    rate = truth_rate()
    exposure = np.full(len(OFFSET_EDGES) - 1, 1800.0)
    with pytest.raises(NormalisationError, match="no offset bin lies within the control ring 2.1-2.2 deg"):
        control_ring_normalisation(rate, GEOMETRY, np.ones(rate.shape), exposure, 2.1, 2.2)
    with pytest.raises(NormalisationError, match="0 counts observed"):
        control_ring_normalisation(rate, GEOMETRY, np.zeros(rate.shape), exposure, 2.0, 2.5)


def test_monitor_ratio_to_the_ontime_weighted_mean():
    result = monitor_normalisation(3.5, [1.0, 2.0, None, "n/a"], [1000.0, 3000.0, 500.0, 500.0], "TRIGRATE")
    assert result.factor == pytest.approx(3.5 / 1.75)
    assert (result.method, result.region, result.error) == ("monitor", "column TRIGRATE", 0.0)
    with pytest.raises(NormalisationError, match="the target has no value of column 'TRIGRATE'"):
        monitor_normalisation(None, [1.0], [1.0], "TRIGRATE")
    with pytest.raises(NormalisationError) as raised:
        monitor_normalisation("Crab Nebula", [1.0], [1.0], "object")
    assert str(raised.value) == (
        "monitor normalisation: the target's value of column 'object' is not a number ('Crab Nebula'): "
        "it needs a numeric column"
    )
    with pytest.raises(NormalisationError, match="no run used has a value"):
        monitor_normalisation(1.0, [None, float("nan")], [1.0, 1.0], "TRIGRATE")
    with pytest.raises(NormalisationError, match="not positive"):
        monitor_normalisation(1.0, [-1.0], [1.0], "TRIGRATE")


def write(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text("exclusion: {gammacat: none, hawc: none, star_cat: none}\n" + text)
    return path


def test_config_keys(tmp_path):
    config = load_config(
        write(
            tmp_path,
            """
background_selection:
  normalisation: {method: control-ring, offset_min: 2.0, offset_max: 2.5}
""",
        )
    )
    assert config.selection.normalisation == "control-ring"
    assert config.selection.normalisation_ring == (2.0, 2.5)
    config = load_config(
        write(
            tmp_path,
            """
background_selection:
  normalisation: {method: monitor, column: TRIGRATE}
""",
        )
    )
    assert (config.selection.normalisation, config.selection.normalisation_column) == ("monitor", "TRIGRATE")
    config = load_config(
        write(
            tmp_path,
            """
background_selection:
  normalisation: {method: control-ring, e_min: 0.5, e_max: 10}
""",
        )
    )
    assert config.selection.normalisation_energy == (0.5, 10.0)
    assert config.selection.normalisation_model_scatter is None
    config = load_config(
        write(
            tmp_path,
            """
background_selection:
  normalisation: {method: control-ring, e_min: 0.5, e_max: 10, model_scatter: 0.12}
""",
        )
    )
    assert config.selection.normalisation_model_scatter == 0.12
    assert load_config(write(tmp_path, "background_selection: {}\n")).selection.normalisation == "none"
    with pytest.warns(ConfigWarning, match="background_selection.normalisation.offset"):
        load_config(write(tmp_path, "background_selection: {normalisation: {method: none, offset: 2}}\n"))


@pytest.mark.parametrize(
    "text, message",
    [
        ("{method: ring}", "method must be one of none, control-ring, monitor, got 'ring'"),
        ("{method: control-ring, offset_min: .nan}", "offset_min must be a finite number"),
        ("{method: control-ring, offset_min: 2.5, offset_max: 2.0}", "needs finite 0 <= offset_min < offset_max"),
        ("{method: control-ring, offset_min: 2.0, offset_max: 3.0}", "must hold whole offset bins of the binning"),
        ("{method: control-ring, offset_min: 2.1, offset_max: 2.2}", "must hold whole offset bins of the binning"),
        ("{method: monitor}", "method monitor needs a column"),
        ("{method: control-ring, e_min: 10, e_max: 1}", "needs finite 0 <= e_min < e_max"),
        ("{method: control-ring, e_min: 1.1, e_max: 1.2}", "no energy bin of the binning lies within"),
        ("[2.0, 2.5]", "must be a mapping of method"),
        ("{method: control-ring, offset_max: two}", "offset_max must be a number"),
        ("{method: control-ring, model_scatter: 0}", "model_scatter must be > 0"),
        ("{method: control-ring, model_scatter: .inf}", "model_scatter must be a finite number"),
    ],
)
def test_invalid_config_values(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_config(write(tmp_path, f"background_selection:\n  normalisation: {text}\n"))
