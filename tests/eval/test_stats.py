"""Statistics of the eval harness: intervals, McNemar's exact test, paired bootstrap."""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from blockfp8.eval import stats


def binom_tail_ge(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed with exact integer coefficients (independent of betainc)."""
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


def test_wilson_matches_published_value():
    # R: prop.test(5, 10, correct = FALSE)$conf.int -> 0.2365931 0.7634069
    ci = stats.wilson_interval(5, 10)
    assert ci.low == pytest.approx(0.2365931, abs=1e-7) and ci.high == pytest.approx(0.7634069, abs=1e-7)


def test_clopper_pearson_matches_published_value():
    # R: binom.test(5, 10)$conf.int -> 0.187086 0.812914
    ci = stats.clopper_pearson_interval(5, 10)
    assert ci.low == pytest.approx(0.187086, abs=1e-6) and ci.high == pytest.approx(0.812914, abs=1e-6)


@pytest.mark.parametrize("n", [1, 7, 30, 1319, 5153])
def test_clopper_pearson_closed_forms_at_the_edges(n):
    # k = 0: upper = 1 - (alpha/2)^(1/n); k = n: lower = (alpha/2)^(1/n)
    assert stats.clopper_pearson_interval(0, n).low == 0.0
    assert stats.clopper_pearson_interval(0, n).high == pytest.approx(1 - 0.025 ** (1 / n), rel=1e-12)
    assert stats.clopper_pearson_interval(n, n).low == pytest.approx(0.025 ** (1 / n), rel=1e-12)
    assert stats.clopper_pearson_interval(n, n).high == 1.0


@given(n=st.integers(1, 80), data=st.data())
def test_clopper_pearson_bounds_solve_the_binomial_tails(n, data):
    k = data.draw(st.integers(0, n))
    ci = stats.clopper_pearson_interval(k, n)
    if k > 0:
        assert binom_tail_ge(k, n, ci.low) == pytest.approx(0.025, abs=1e-9), (k, n, ci)
    if k < n:
        assert 1 - binom_tail_ge(k + 1, n, ci.high) == pytest.approx(0.025, abs=1e-9), (k, n, ci)


@given(n=st.integers(1, 6000), data=st.data())
def test_intervals_contain_the_estimate_and_stay_in_unit_range(n, data):
    k = data.draw(st.integers(0, n))
    for ci in (stats.wilson_interval(k, n), stats.clopper_pearson_interval(k, n)):
        assert 0.0 <= ci.low <= k / n <= ci.high <= 1.0, (k, n, ci)


def test_interval_rejects_bad_counts():
    with pytest.raises(ValueError, match="0 <= k <= n"):
        stats.wilson_interval(5, 3)
    with pytest.raises(ValueError, match="0 <= k <= n"):
        stats.clopper_pearson_interval(-1, 3)


@pytest.mark.parametrize(
    "b,c,p",
    [(0, 5, 0.0625), (5, 0, 0.0625), (3, 3, 1.0), (0, 0, 1.0), (1, 9, 22 / 1024), (2, 10, 2 * (1 + 12 + 66) / 4096)],
)
def test_mcnemar_exact_p_values(b, c, p):
    assert stats.mcnemar_exact_p(b, c) == pytest.approx(p, rel=1e-12)


@given(b=st.integers(0, 400), c=st.integers(0, 400))
def test_mcnemar_matches_fraction_arithmetic_and_is_symmetric(b, c):
    n = b + c
    exact = min(Fraction(1), 2 * Fraction(sum(math.comb(n, i) for i in range(min(b, c) + 1)), 2**n)) if n else 1
    assert stats.mcnemar_exact_p(b, c) == pytest.approx(float(exact), rel=1e-12)
    assert stats.mcnemar_exact_p(b, c) == stats.mcnemar_exact_p(c, b)


def test_mcnemar_counts_the_four_cells():
    a = [1, 1, 0, 0, 1, 0, 1]
    b = [1, 0, 1, 0, 0, 0, 1]
    out = stats.mcnemar_exact([bool(x) for x in a], [bool(x) for x in b])
    assert (out["both_correct"], out["only_a_correct"], out["only_b_correct"], out["both_wrong"]) == (2, 2, 1, 2)
    assert out["p_value"] == pytest.approx(stats.mcnemar_exact_p(2, 1))
    with pytest.raises(ValueError, match="length"):
        stats.mcnemar_exact([True], [True, False])


def test_mcnemar_large_n_is_finite():
    # 5153 discordant pairs: 2**5153 overflows a float, the big-integer division does not.
    p = stats.mcnemar_exact_p(2500, 2653)
    assert 0.0 < p < 1.0


def test_bootstrap_identical_variants_give_zero_difference():
    rng = np.random.default_rng(1)
    ll = -rng.exponential(2.0, size=500)
    out = stats.paired_bootstrap(ll, ll, "perplexity", samples=200, seed=3)
    assert out["diff"] == 0.0 and out["diff_ci"] == [0.0, 0.0]
    assert out["ratio"] == 1.0 and out["ratio_ci"] == [1.0, 1.0]


def test_bootstrap_constant_shift_gives_exact_ratio():
    # every item's log-likelihood lower by delta: ppl_b / ppl_a = exp(delta) in every resample
    rng = np.random.default_rng(2)
    ll = -rng.exponential(2.0, size=300)
    delta = 0.05
    out = stats.paired_bootstrap(ll, ll - delta, "perplexity", samples=300, seed=0)
    assert out["ratio"] == pytest.approx(math.exp(delta), rel=1e-12)
    assert out["ratio_ci"] == pytest.approx([math.exp(delta)] * 2, rel=1e-12)
    assert out["diff_ci"][0] > 0  # b is worse: higher perplexity


def test_bootstrap_accuracy_difference_is_paired_and_seeded():
    rng = np.random.default_rng(4)
    a = rng.random(400) < 0.4
    b = a.copy()
    b[:20] = ~b[:20]  # 20 flips: unpaired resampling would give a far wider interval
    out1 = stats.paired_bootstrap(a, b, "mean", samples=500, seed=7)
    out2 = stats.paired_bootstrap(a, b, "mean", samples=500, seed=7)
    assert out1 == out2
    assert out1["diff"] == pytest.approx(b.mean() - a.mean())
    lo, hi = out1["diff_ci"]
    assert lo <= out1["diff"] <= hi
    assert hi - lo < 0.05  # paired; an independent-samples 95% interval here is about +-0.068 wide on each side


def test_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match="equal-length"):
        stats.paired_bootstrap([1.0, 2.0], [1.0], "mean")
    with pytest.raises(ValueError, match="statistic"):
        stats.paired_bootstrap([1.0], [1.0], "median")


def test_against_scipy_where_installed():
    """Cross-check with scipy (not a dependency: CI skips this; the GPU image has scipy)."""
    sps = pytest.importorskip("scipy.stats")
    for k, n in [(1, 30), (10, 30), (1700, 5153), (25, 1319), (1319, 1319)]:
        ci = stats.clopper_pearson_interval(k, n)
        ref = sps.binomtest(k, n).proportion_ci(0.95, method="exact")
        assert (ci.low, ci.high) == pytest.approx((ref.low, ref.high), abs=1e-10), (k, n)
        w = stats.wilson_interval(k, n)
        ref = sps.binomtest(k, n).proportion_ci(0.95, method="wilson")
        assert (w.low, w.high) == pytest.approx((ref.low, ref.high), abs=1e-10), (k, n)
    for b, c in [(0, 5), (7, 19), (120, 160), (900, 1000)]:
        assert stats.mcnemar_exact_p(b, c) == pytest.approx(sps.binomtest(b, b + c, 0.5).pvalue, rel=1e-9)
