"""The random baseline (G14): what the angle with **1** and the LN–RMS gap look like for a hidden
state with no preferred direction, and how far measured histograms sit from it.

For a rotation-invariant random x in R^d (e.g. isotropic Gaussian), B = (1 + cos θ) / 2 ~ Beta(a, a)
with a = (d − 1) / 2, θ = ∠(x, **1**).  Every number the report, the figures and the training
monitor set beside a measurement as "random" comes from here.  Only NumPy is needed; SciPy is
imported inside the functions that need it.
"""
from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import numpy as np

from .accumulate import Histogram

__all__ = ["BaselineSD", "baseline_angle_sd", "baseline_cdf", "baseline_interval", "compare_to_baseline",
           "null_abs_cos"]

#
# G14: for a rotation-invariant random x in R^d (e.g. isotropic
# Gaussian), B = (1 + cos theta) / 2 ~ Beta(a, a) with a = (d - 1) / 2, where
# theta = angle(x, 1).  Two consequences used below:
#
# * CDF.  theta <= t  <=>  1 - B <= (1 - cos t) / 2 = sin^2(t / 2), and 1 - B has
#   the same Beta(a, a) law, so  P(theta <= t) = I_{sin^2(t/2)}(a, a)  (the
#   regularized incomplete beta function).  The sin^2 form stays accurate near 0.
# * Density.  Changing variables from B to theta, the Beta density
#   B^(a-1) (1 - B)^(a-1) = (sin^2(theta) / 4)^(a-1) times |dB/dtheta| = sin(theta)/2
#   gives  f(theta) ∝ sin^(d-2)(theta)  on (0, pi), symmetric about 90 degrees.


def _check_d(d: Any) -> int:
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 2:
        raise ValueError(f"d: need an int >= 2 (the angle with 1 is degenerate for d = 1), got {d!r}")
    return int(d)


def baseline_cdf(theta_deg: Any, d: int) -> np.ndarray | float:
    """Null CDF P(theta <= t) of the angle with **1** for rotation-invariant x in R^d.

    ``I_{sin^2(t/2)}((d-1)/2, (d-1)/2)``, t in degrees (clipped to [0, 180]).
    """
    from scipy.special import betainc

    a = (_check_d(d) - 1) / 2
    t = np.radians(np.clip(np.asarray(theta_deg, dtype=np.float64), 0.0, 180.0))
    out = betainc(a, a, np.sin(t / 2) ** 2)
    return float(out) if out.ndim == 0 else out


def _null_expect(d: int, g) -> float:
    """E[g(t)] under the null, with t = theta - pi/2 in radians, by quadrature.

    The density of t is cos^(d-2)(t) / Z on (-pi/2, pi/2).  Since log cos t <=
    -t^2/2, the weight is below the Gaussian exp(-(d-2) t^2 / 2), so integrating
    over |t| <= 40 / sqrt(d - 2) loses less than 1e-300 of the mass.
    """
    from scipy.integrate import quad

    k = d - 2
    half = math.pi / 2 if k == 0 else min(math.pi / 2, 40.0 / math.sqrt(k))

    def w(t: float) -> float:
        c = math.cos(t)
        return math.exp(k * math.log(c)) if c > 0 else 0.0

    opts = dict(epsabs=0.0, epsrel=1e-13, limit=200)
    z = quad(w, 0.0, half, **opts)[0]  # the weight and g are even in t here: integrate half
    return quad(lambda t: g(t) * w(t), 0.0, half, **opts)[0] / z


class BaselineSD(NamedTuple):
    """SD of the null angle with **1**, in degrees."""

    sd: float  #: exact, by quadrature of the Beta law
    approx: float  #: (180/pi) / sqrt(d), from cos theta ~ N(0, 1/d)


@functools.lru_cache(maxsize=256)
def baseline_angle_sd(d: int) -> BaselineSD:
    """Standard deviation (degrees) of angle(x, **1**) for rotation-invariant x in R^d.

    The mean is exactly 90 degrees by symmetry; the SD is

        sd = (180/pi) * sqrt( E[(theta - pi/2)^2] ),  theta with density ∝ sin^(d-2)(theta)

    (the Beta((d-1)/2, (d-1)/2) law of (1 + cos theta)/2, changed to theta),
    computed by adaptive quadrature to ~1e-13 relative.  Returned with the
    approximation (180/pi)/sqrt(d) of G14, which is slightly low: the
    exact variance in radians is 1/d + O(1/d^2) (e.g. 2.391 vs 2.387 degrees at
    d = 576).  d = 2 gives the uniform law on [0, 180], SD 180/sqrt(12).
    """
    d = _check_d(d)
    var = _null_expect(d, lambda t: t * t)
    return BaselineSD(sd=math.degrees(math.sqrt(var)), approx=math.degrees(1.0 / math.sqrt(d)))


def baseline_interval(d: int, level: float = 0.999) -> tuple[float, float]:
    """The central ``level`` interval of the null angle with **1**, in degrees.

    From the Beta quantile: theta_lo = 2 asin(sqrt(I^-1_{(1-level)/2}(a, a))),
    theta_hi = 180 - theta_lo, a = (d-1)/2.  At d = 576 the 99.9% interval is
    about 90 +- 7.9 degrees.
    """
    from scipy.special import betaincinv

    d = _check_d(d)
    if not 0 < level < 1:
        raise ValueError(f"level: need 0 < level < 1, got {level!r}")
    a = (d - 1) / 2
    x = float(betaincinv(a, a, (1 - level) / 2))
    lo = math.degrees(2 * math.asin(math.sqrt(x)))
    return lo, 180.0 - lo


def _count_below(h: Histogram, t: float) -> tuple[float, int, int]:
    """Values below t: (linear estimate, exact lower bound, exact upper bound).

    Bins entirely below t count in full; the one bin that t cuts is apportioned
    linearly (as if its values were spread uniformly), and the bounds say what it
    could be at most.  Needs lo <= t <= hi.
    """
    e = h.edges
    j = min(int(np.searchsorted(e, t, side="right")) - 1, h.bins - 1)  # e[j] <= t < e[j+1]
    full = h.underflow + int(h.counts[:j].sum())
    frac = float((t - e[j]) / (e[j + 1] - e[j]))
    cj = int(h.counts[j])
    if frac <= 0:
        return float(full), full, full
    if t >= h.hi:  # t == hi: the last bin is closed, so values equal to hi sit "at" t
        return float(full + cj), full + cj, full + cj
    return full + frac * cj, full, full + cj


def compare_to_baseline(hist: Histogram, d: int, *, level: float = 0.999) -> dict:
    """Compare a histogram of angles with **1** (degrees) with the random baseline.

    Parameters
    ----------
    hist : Histogram
        Angles in degrees, over a range inside [0, 180] that covers the
        baseline's ``level`` interval (the defaults, 0-180, always do).
    d : int
        The dimension of the vectors the angles came from.
    level : float
        The central interval whose outside is counted (default 99.9%).

    Returns
    -------
    dict (plain Python numbers)
        ``n`` : values compared (NaN excluded).
        ``ks`` : max over the bin edges of |F_n(e) - F_0(e)|, the empirical CDF of
        the data against the null CDF :func:`baseline_cdf`.  At an edge the binned
        F_n equals the raw data's, so ``ks`` is a lower bound on the raw
        Kolmogorov-Smirnov statistic; it is close when the bins are narrow against
        the null SD (1 degree bins are coarse at d = 4096 where the SD is 0.9
        degrees: use ``bins=1800``).  ``ks_at`` is the edge where the max is.
        ``interval`` : the central ``level`` interval [lo, hi] of the null.
        ``outside_fraction`` : fraction of values outside it.  Bins entirely
        outside count exactly; the two bins that contain the interval's ends are
        apportioned linearly, so the value is exact only when both ends fall on
        edges; ``outside_fraction_bounds`` gives the exact range the bins allow
        (partial bins counted as all inside / all outside).
        ``outside_expected`` : 1 - level, the null's own outside fraction.
        ``baseline_mean`` (90), ``baseline_sd`` (exact, degrees), ``d``, ``level``.

    Under the null ``outside_fraction`` is about 1 - level; the paper's outlier
    tokens (a 9 degree SD around a histogram within +-1 degree of 90) show up as
    an outside fraction far above it even when ``ks`` is small.
    """
    if not isinstance(hist, Histogram):
        raise TypeError(f"hist: need a Histogram, got {type(hist).__name__}")
    d = _check_d(d)
    if hist.lo < 0 or hist.hi > 180:
        raise ValueError(f"hist: need a range of angles within [0, 180] degrees, got [{hist.lo}, {hist.hi}]")
    lo, hi = baseline_interval(d, level)
    if lo < hist.lo or hi > hist.hi:
        raise ValueError(f"hist: range [{hist.lo}, {hist.hi}] does not cover the baseline's {level} interval "
                         f"[{lo:.4g}, {hi:.4g}] at d={d}; the counts outside it cannot be placed")
    n = hist.total
    f_emp = hist.cdf_at_edges()  # raises on an empty histogram
    diff = np.abs(f_emp - baseline_cdf(hist.edges, d))
    k = int(np.argmax(diff))

    below, below_min, below_max = _count_below(hist, lo)
    upto, upto_min, upto_max = _count_below(hist, hi)
    outside = below + (n - upto)
    outside_min = below_min + (n - upto_max)
    outside_max = below_max + (n - upto_min)
    return {
        "d": d,
        "n": n,
        "ks": float(diff[k]),
        "ks_at": float(hist.edges[k]),
        "level": float(level),
        "interval": [lo, hi],
        "outside_fraction": float(outside / n),
        "outside_fraction_bounds": [outside_min / n, outside_max / n],
        "outside_expected": 1.0 - level,
        "baseline_mean": 90.0,
        "baseline_sd": baseline_angle_sd(d).sd,
    }


def null_abs_cos(d: int) -> float:
    """E|cos θ| of the angle with **1** for rotation-invariant x in R^d (G14):
    Γ(d/2) / (√π Γ((d+1)/2)) ≈ √(2/(π d)).

    It is also, to a relative O(1/d), the random baseline of the LN-RMS gap (G9) with unit
    gain, no bias and ε = 0: then the gap is √(2 − 2|sin θ|) = |cos θ| (1 + O(cos² θ)).
    """
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 2:
        raise ValueError(f"d: need an int >= 2, got {d!r}")
    return math.exp(math.lgamma(d / 2) - math.lgamma((d + 1) / 2)) / math.sqrt(math.pi)
