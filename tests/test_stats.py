"""Intervals and tie rules against independent implementations and hand-computed values."""
import pytest

from sparse_tuning.stats import proportions_differ, seeds_differ, wilson_interval


@pytest.mark.parametrize("correct,n", [(44, 100), (221, 500), (0, 20), (20, 20), (1, 3)])
def test_wilson_matches_scipy(correct, n):
    stats = pytest.importorskip("scipy.stats")
    ci = stats.binomtest(correct, n).proportion_ci(confidence_level=0.95, method="wilson")
    low, high = wilson_interval(correct, n)
    assert low == pytest.approx(100 * ci.low, abs=1e-9) and high == pytest.approx(100 * ci.high, abs=1e-9)


def test_wilson_by_hand():
    # p = 0.44, n = 100: centre (0.44 + 1.96^2/200) / (1 + 1.96^2/100) = 0.4422, half-width 0.0955
    low, high = wilson_interval(44, 100)
    assert low == pytest.approx(34.67, abs=0.01) and high == pytest.approx(53.77, abs=0.01)


def test_the_demo_headline_is_a_tie():
    """44.2% vs 43.0% on 500 images each: 1.2 points, where one standard error is about 3.1."""
    assert not proportions_differ(44.2, 43.0, 500, 500)
    assert proportions_differ(50.0, 40.0, 500, 500)  # z = 3.2
    assert not proportions_differ(50.0, 44.0, 500, 500)  # z = 1.90, just inside


def test_seed_rule():
    assert not seeds_differ([80.0, 81.0, 79.0], [80.5, 79.5, 81.5])
    assert seeds_differ([80.0, 81.0, 79.0], [85.0, 84.0, 86.0])
    with pytest.raises(ValueError):
        seeds_differ([1.0], [2.0, 3.0])
