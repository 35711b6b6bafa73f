"""Intervals and tie rules against independent implementations and hand-computed values."""
import pytest

from sparse_tuning.tools.stats import paired_difference, proportions_differ, wilson_interval


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


@pytest.mark.parametrize("df", range(1, 11))
def test_t_quantiles_match_scipy(df):
    stats = pytest.importorskip("scipy.stats")
    from sparse_tuning.tools.stats import T95
    assert T95[df - 1] == pytest.approx(stats.t.ppf(0.975, df), abs=1e-6)


def test_paired_difference_matches_scipys_paired_t_test():
    stats = pytest.importorskip("scipy.stats")
    for a, b in [([80.0, 81.0, 79.0], [80.5, 79.5, 81.5]), ([80.0, 81.0, 79.0], [82.1, 83.0, 81.2]),
                 ([70.0, 71.0, 72.0, 70.5], [69.0, 70.2, 70.9, 69.8])]:
        mean, sd, differ = paired_difference(a, b)
        assert mean == pytest.approx(sum(a) / len(a) - sum(b) / len(b))
        assert differ == (stats.ttest_rel(a, b).pvalue < 0.05)
    with pytest.raises(ValueError, match="the same seeds, at least two"):
        paired_difference([1.0, 2.0], [2.0, 3.0, 4.0])


def test_the_wilson_interval_holds_its_own_estimate_at_0_and_100_percent():
    """At 0 or n correct the bound meets the estimate; float error once put it on the wrong side
    (a negative error bar, which matplotlib refuses)."""
    from sparse_tuning.tools.stats import wilson_interval

    for n in range(1, 300):
        assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 100.0
        for c in (0, n // 2, n):
            lo, hi = wilson_interval(c, n)
            assert lo <= 100 * c / n <= hi
