"""Statistics for comparing variants on the same questions, with no dependency beyond the stdlib and numpy.

- accuracy intervals: Wilson score and Clopper-Pearson (exact, via the regularized incomplete beta function);
- paired accuracy difference: McNemar's exact test (two-sided binomial test on the discordant pairs);
- paired bootstrap (same resampled items for both variants) of the accuracy difference and of perplexity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054  # standard normal quantile 0.975


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high

    def as_list(self) -> list[float]:
        return [self.low, self.high]


def wilson_interval(k: int, n: int, z: float = Z95) -> Interval:
    """Wilson score interval for k successes in n trials."""
    _check_counts(k, n)
    if n == 0:
        return Interval(0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # Clamp only rounding noise: the exact interval lies inside [0, 1] and contains 0 (1) when k = 0 (k = n).
    return Interval(0.0 if k == 0 else max(0.0, center - half), 1.0 if k == n else min(1.0, center + half))


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction for the incomplete beta function (modified Lentz), converges for x < (a+1)/(a+b+2)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b), a, b > 0, 0 <= x <= 1."""
    if not (a > 0 and b > 0 and 0.0 <= x <= 1.0):
        raise ValueError(f"betainc needs a, b > 0 and 0 <= x <= 1, got a={a}, b={b}, x={x}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def beta_ppf(q: float, a: float, b: float) -> float:
    """Quantile of the Beta(a, b) distribution by bisection on betainc (monotone in x); 1e-15 absolute."""
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if betainc(a, b, mid) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-15:
            break
    return 0.5 * (lo + hi)


def clopper_pearson_interval(k: int, n: int, alpha: float = 0.05) -> Interval:
    """Exact (Clopper-Pearson) interval: P(X >= k | low) = alpha/2 and P(X <= k | high) = alpha/2."""
    _check_counts(k, n)
    if n == 0:
        return Interval(0.0, 1.0)
    low = 0.0 if k == 0 else beta_ppf(alpha / 2, k, n - k + 1)
    high = 1.0 if k == n else beta_ppf(1 - alpha / 2, k + 1, n - k)
    return Interval(low, high)


def mcnemar_exact(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> dict:
    """McNemar's exact test on paired outcomes: two-sided binomial test of the discordant pairs against 1/2.

    Returns counts (both right, only a right, only b right, both wrong) and the p-value, computed exactly with
    integer binomial coefficients.
    """
    if len(a_correct) != len(b_correct):
        raise ValueError(f"paired outcomes differ in length: {len(a_correct)} vs {len(b_correct)}")
    both = only_a = only_b = neither = 0
    for x, y in zip(a_correct, b_correct, strict=True):
        if x and y:
            both += 1
        elif x:
            only_a += 1
        elif y:
            only_b += 1
        else:
            neither += 1
    return {
        "both_correct": both,
        "only_a_correct": only_a,
        "only_b_correct": only_b,
        "both_wrong": neither,
        "p_value": mcnemar_exact_p(only_a, only_b),
    }


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact p-value for b and c discordant pairs: min(1, 2 * P(Binomial(b+c, 1/2) <= min(b, c)))."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got {b}, {c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    # Integer arithmetic, then one division of big integers: exact up to float rounding of the result.
    return min(1.0, (2 * tail) / (1 << n))


def _bootstrap_weights(n: int, samples: int, seed: int, chunk: int = 200):
    """Yield (chunk, n) matrices of resample counts (multinomial(n, 1/n)): one row per bootstrap resample."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < samples:
        m = min(chunk, samples - done)
        yield rng.multinomial(n, np.full(n, 1.0 / n), size=m).astype(np.float64)
        done += m


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], statistic: str, samples: int = 1000, seed: int = 0, alpha: float = 0.05
) -> dict:
    """Paired bootstrap of ``stat(b) - stat(a)`` over items, the same resampled items for both variants.

    ``statistic`` is ``"mean"`` (accuracy from 0/1 values) or ``"perplexity"`` (``exp(-mean(loglik))`` from
    per-item log-likelihoods). Returns the observed difference, the percentile interval and, for perplexity,
    the ratio ``ppl_b / ppl_a`` with its interval.
    """
    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if xa.shape != xb.shape or xa.ndim != 1 or xa.size == 0:
        raise ValueError(f"paired bootstrap needs two equal-length non-empty 1-D samples, got {xa.shape}, {xb.shape}")
    if statistic not in ("mean", "perplexity"):
        raise ValueError(f"statistic must be 'mean' or 'perplexity', got {statistic!r}")
    n = xa.size

    def stat(mean: np.ndarray) -> np.ndarray:
        return np.exp(-mean) if statistic == "perplexity" else mean

    diffs, ratios = [], []
    for w in _bootstrap_weights(n, samples, seed):
        sa, sb = stat(w @ xa / n), stat(w @ xb / n)
        diffs.append(sb - sa)
        if statistic == "perplexity":
            ratios.append(sb / sa)
    d = np.concatenate(diffs)
    qs = [100 * alpha / 2, 100 * (1 - alpha / 2)]
    obs_a, obs_b = float(stat(xa.mean())), float(stat(xb.mean()))
    out = {
        "statistic": statistic,
        "a": obs_a,
        "b": obs_b,
        "diff": obs_b - obs_a,
        "diff_ci": [float(v) for v in np.percentile(d, qs)],
        "samples": samples,
        "seed": seed,
    }
    if statistic == "perplexity":
        out["ratio"] = obs_b / obs_a
        out["ratio_ci"] = [float(v) for v in np.percentile(np.concatenate(ratios), qs)]
    return out


def _check_counts(k: int, n: int) -> None:
    if not (0 <= k <= n):
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
