"""Per-example error bounds: how far a correct implementation in a given dtype may land from
refdiff's float64 reference, from a first-order forward error analysis of each formula.

For a formula f evaluated by a candidate in a dtype with unit roundoff u, the bound on
|candidate − reference| is, elementwise,

    B = (S + u₆₄/u) · (E + γ_k · M),      γ_k = k·u / (1 − k·u),

- E: the rounding of every input propagated through f's partial derivatives (first order,
  absolute values along every path, so that a candidate that rounds each occurrence
  differently is covered): the arrays x, ε, z, ... (u·|v|: their rounding to the dtype);
  the levels, as a table holds them: ᾱ_t to ρ_t·ᾱ_t and 1 − ᾱ_t to u_t·(1 − ᾱ_t) + ρ_t·ᾱ_t
  (a table of ᾱ with 1 − ᾱ derived from it, as diffusers keeps it, or both cast from
  float64), with ρ_t = √(2(t+1))·u_t for the entry t of a table built as a cumulative
  product in the table's precision (2(t+1) roundings — each factor 1 − β_s and each product
  — adding as independent errors; diffusers' float32 tables measure at most 6.0·u (linear)
  and 12.6·u (scaled_linear)), and ρ = u_t for a value given without its index; and every operation
  that turns levels into a coefficient (u_t·|result|: a candidate may compute its
  coefficients in the table's precision). u_t = min(u, u_float32): in float16 and bfloat16
  the table and the coefficients must be float32 or better (in float16 ᾱ_0 = 0.9999 rounds
  to 1 and β' = 1e-4 is below the spacing 4.9e-4 of numbers near 1: CONVENTIONS
  "Precision"); in float32 and float64 they may be the dtype itself;
- γ_k·M: the evaluation error of the array arithmetic. M is the sum of the magnitudes of the
  terms of the formula (the |·|-evaluation: each array times the absolute value of its
  coefficient, sums of absolute values) and k the number of roundings on the longest path:
  2 per coefficient applied to an array (its rounding to the dtype, the product), 1 per sum.
  The bound holds for any order of evaluation with at most k roundings per term, which is
  what lets other algebra (folded coefficients, guided-diffusion's
  √(1/ᾱ)·x_t − √(1/ᾱ − 1)·ε, ...) pass;
- S = :data:`SAFETY` = 2: other algebra may round up to twice as often as the form counted
  here; u₆₄/u is the float64 reference's own error (the same analysis at u₆₄; it adds 1 to S
  in float64 runs only).

β' = 1 − ᾱ_t/ᾱ_prev is taken in that form (its error is then ≈ 3·u_t absolute, what a table
of ᾱ allows), and √(1 − β') as written in DDPM Eq. 7 (refdiff and guided-diffusion; after a
large jump, ᾱ_t/ᾱ_prev = r ≪ 1, it loses u_t/(2r) relative, which √(ᾱ_t/ᾱ_prev) would not);
computing β' as ((1−ᾱ_t) − (1−ᾱ_prev))/ᾱ_prev loses 2·u_t/ᾱ_prev at large t and is not a
correct implementation in low precision.

Results that may be subnormal carry an absolute error of the smallest subnormal (twice η of
the standard model fl(a∘b) = (a∘b)(1 + δ) + η), and so does a product of nonzero values that
underflowed to 0. Clipping is 1-Lipschitz: the error of x̂_0 passes through a clip unchanged,
so rounding that moves an element across the clip boundary is covered without treating the
boundary specially. Square roots take the exact worst case over the input
interval, so an argument near 0 (the DDIM direction coefficient at η = 1) never divides by 0.

A learned variance (IDDPM Eq. 15, :func:`_learned_noise`) and Imagen's dynamic thresholding
of x̂_0 (:func:`_threshold`) are bounded where they act; the derivations are in their
docstrings.

Each public function takes the float64 values the check passes to the reference (arrays
already rounded to the dtype; ᾱ values as Python floats) and returns the bound as a float64
array of the output's shape (:func:`posterior` also returns the variance's bound).

References
----------
N. J. Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., SIAM 2002, §2.2
(the standard model), §3.1 (γ_k), §3.3 (running error bounds). Formulas: DDPM
arXiv:2006.11239v2 Eqs. 4, 6–7, Algorithm 2; DDIM arXiv:2010.02502v4 Eqs. 12, 16; CFG
arXiv:2207.12598v1 Eq. 6; CG arXiv:2105.05233v4 Algorithm 2.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from refdiff.thresholding import DynamicThreshold

UNIT_ROUNDOFF = {"float64": 2.0**-53, "float32": 2.0**-24, "float16": 2.0**-11,
                 "bfloat16": 2.0**-8}
# the smallest subnormal (η of the standard model is half of it; 2**-1075 is 0 in float64)
# and the smallest normal number
UNDERFLOW = {"float64": 2.0**-1074, "float32": 2.0**-149, "float16": 2.0**-24,
             "bfloat16": 2.0**-133}
SMALLEST_NORMAL = {"float64": 2.0**-1022, "float32": 2.0**-126, "float16": 2.0**-14,
                   "bfloat16": 2.0**-126}
SAFETY = 2.0
BETA_TILDE_FLOOR = 1e-20  # β̃ is floored here inside log β̃ (diffusers, refdiff): learned_range
LEARNED_VARIANCES = ("learned", "learned_range")


class Precision:
    """The unit roundoff u of a dtype, u_table (that of the table and the coefficients) and
    the underflow η."""

    def __init__(self, dtype: str):
        if dtype not in UNIT_ROUNDOFF:
            raise ValueError(f"dtype must be one of {', '.join(UNIT_ROUNDOFF)}, got {dtype!r}")
        self.dtype = dtype
        self.u = UNIT_ROUNDOFF[dtype]
        self.u_table = min(self.u, UNIT_ROUNDOFF["float32"])
        self.eta, self.tiny = UNDERFLOW[dtype], SMALLEST_NORMAL[dtype]

    def gamma(self, k: int) -> float:
        """γ_k = k·u/(1 − k·u): the relative error of k roundings (Higham §3.1)."""
        return k * self.u / (1.0 - k * self.u)

    def underflow(self, v, e, inexact=False):
        """η where a result within e of v may be subnormal: never for an exact zero, always
        for an ``inexact`` one (a product or quotient of nonzero values that underflowed)."""
        near = (np.abs(v) - e < self.tiny) & ((v != 0) | (e != 0) | inexact)
        return np.where(near, self.eta, 0.0)

    def level(self, v: float, e: float = 0.0) -> "Level":
        return Level(float(v), float(e), self)

    def alpha_bar(self, ab: float, exact: bool = False,
                  index: int | None = None) -> tuple["Level", "Level"]:
        """(ᾱ, 1 − ᾱ) as a table holds them (module docstring): ᾱ to ρ·ᾱ, 1 − ᾱ to
        u_t·(1 − ᾱ) + ρ·ᾱ, ρ = √(2(index + 1))·u_t for the table entry ``index`` (u_t if
        None); ``exact`` for a value every dtype holds exactly (the final ᾱ = 1)."""
        if exact:
            return self.level(ab), self.level(1.0 - ab)
        rho = self.u_table * (1.0 if index is None else math.sqrt(2.0 * (index + 1)))
        return self.level(ab, rho * ab), self.level(1.0 - ab, self.u_table * (1.0 - ab) + rho * ab)

    def scale(self, s: float) -> "Level":
        """A guidance scale (a Python float: exact; its rounding to the dtype is counted
        where it multiplies an array)."""
        return self.level(s)

    def array(self, v, e=None) -> "Array":
        """An input array (rounded to the dtype: error u·|v| unless ``e`` is given)."""
        v = np.asarray(v, dtype=np.float64)
        return Array(v, self.u * np.abs(v) if e is None else np.asarray(e, dtype=np.float64),
                     np.abs(v), 0, self)


class Level:
    """A per-step scalar (ᾱ, 1 − ᾱ, a coefficient): value ``v`` and error bound ``e``.

    Every operation is one rounding in the table's precision (``u_t·|result|``), so a
    coefficient the candidate computes there is covered; Python numbers are exact."""

    __slots__ = ("v", "e", "p")

    def __init__(self, v: float, e: float, p: Precision):
        self.v, self.e, self.p = v, e, p

    def _new(self, v: float, e: float, uncertain: bool) -> "Level":
        """The rounded result of an operation; ``uncertain``: it may differ from ``v`` (an
        operand carries an error, or a nonzero product or quotient underflowed to 0), so
        it keeps at least η where it may be subnormal."""
        under = float(self.p.underflow(v, e, uncertain))
        return Level(v, e + self.p.u_table * abs(v) + under, self.p)

    def _exact_zero(self) -> bool:
        return self.v == 0 and self.e == 0

    def _lift(self, o) -> "Level":
        return o if isinstance(o, Level) else Level(float(o), 0.0, self.p)

    def __add__(self, o):
        o = self._lift(o)
        return self._new(self.v + o.v, self.e + o.e, self.e > 0 or o.e > 0)

    __radd__ = __add__

    def __sub__(self, o):
        o = self._lift(o)
        return self._new(self.v - o.v, self.e + o.e, self.e > 0 or o.e > 0)

    def __rsub__(self, o):
        return self._lift(o) - self

    def __mul__(self, o):
        if isinstance(o, Array):
            return o * self
        o = self._lift(o)
        zero = self._exact_zero() or o._exact_zero()  # 0 times anything is exactly 0
        return self._new(self.v * o.v, abs(self.v) * o.e + abs(o.v) * self.e + self.e * o.e,
                         not zero)

    __rmul__ = __mul__

    def __truediv__(self, o):
        o = self._lift(o)
        v = self.v / o.v
        return self._new(v, _quotient_error(self.e, v, o.v, o.e), not self._exact_zero())

    def __rtruediv__(self, o):
        return self._lift(o) / self

    def sqrt(self) -> "Level":
        v = math.sqrt(max(self.v, 0.0))
        return self._new(v, float(_sqrt_error(self.v, self.e)), self.e > 0)

    def log(self) -> "Level":
        """log of a positive level: the exact worst case over [v − e, v + e], which is at the
        lower end (log is concave); inf when that interval reaches 0."""
        lower = self.v - self.e
        e = math.log(self.v) - math.log(lower) if lower > 0 else math.inf
        return self._new(math.log(self.v), e, self.e > 0)

    def floored(self, floor: float) -> "Level":
        """max(v, floor), the floor a Python float rounded to the table's precision. max is
        1-Lipschitz: above the floor the error is unchanged; below it the candidate's value
        lies in [floor, v + e]."""
        if self.v >= floor:
            return Level(self.v, self.e + self.p.u_table * floor, self.p)
        return Level(floor, max(self.v + self.e - floor, 0.0) + self.p.u_table * floor, self.p)


class Array:
    """An array value ``v`` with the propagated input error ``e``, the |·|-evaluation
    ``m`` (the sum of the magnitudes of the terms) and the rounding depth ``k``."""

    __slots__ = ("v", "e", "m", "k", "p")

    def __init__(self, v, e, m, k: int, p: Precision):
        self.v, self.e, self.m, self.k, self.p = v, e, m, k, p

    def __add__(self, o: "Array") -> "Array":
        return Array(self.v + o.v, self.e + o.e, self.m + o.m, max(self.k, o.k) + 1, self.p)

    def __sub__(self, o: "Array") -> "Array":
        return Array(self.v - o.v, self.e + o.e, self.m + o.m, max(self.k, o.k) + 1, self.p)

    def __mul__(self, c) -> "Array":
        c = c if isinstance(c, Level) else Level(float(c), 0.0, self.p)
        v = c.v * self.v
        e = abs(c.v) * self.e + np.abs(self.v) * c.e + self.e * c.e
        under = self.p.underflow(v, e, (self.v != 0) & (c.v != 0))
        return Array(v, e + under, abs(c.v) * self.m, self.k + 2, self.p)

    __rmul__ = __mul__

    def __truediv__(self, c: Level) -> "Array":
        v = self.v / c.v
        e = _quotient_error(self.e, v, c.v, c.e)
        under = self.p.underflow(v, e, self.v != 0)
        return Array(v, e + under, self.m / abs(c.v), self.k + 2, self.p)

    def clip(self, bound: float) -> "Array":
        """clip(·, −b, b) is 1-Lipschitz: the error and the evaluation error pass through."""
        return Array(np.clip(self.v, -bound, bound), self.e, self.m, self.k, self.p)

    def error(self) -> np.ndarray:
        """E + γ_k·M: the candidate's error bound before the safety factor."""
        return self.e + self.p.gamma(self.k) * self.m

    def bound(self) -> np.ndarray:
        """(S + u₆₄/u)·(E + γ_k·M), the bound the checks apply."""
        return factor(self.p) * self.error()

    def committed(self) -> "Array":
        """This value as the input of a next step: its whole error in ``e``, depth 0."""
        return Array(self.v, self.error(), np.abs(self.v), 0, self.p)


def factor(p: Precision) -> float:
    """S + u₆₄/u: the safety factor plus the float64 reference's own share."""
    return SAFETY + UNIT_ROUNDOFF["float64"] / p.u


def _quotient_error(e_num, q, den: float, e_den: float):
    """Worst |ñ/d̃ − n/d| for |ñ − n| ≤ e_num, |d̃ − d| ≤ e_den (q = n/d)."""
    slack = abs(den) - e_den
    if slack <= 0:
        return np.full_like(np.asarray(q, dtype=np.float64), np.inf) if np.ndim(q) else math.inf
    return (e_num + np.abs(q) * e_den) / slack


def _sqrt_error(v, e):
    """Worst |√ṽ − √v| over ṽ in [max(v − e, 0), v + e] (a negative argument clamps to 0)."""
    v = np.maximum(v, 0.0)
    return np.maximum(np.sqrt(v) - np.sqrt(np.maximum(v - e, 0.0)), np.sqrt(v + e) - np.sqrt(v))


# ----- the formulas -------------------------------------------------------------------------

def _x0_hat(x: Array, eps: Array, a: Level, b: Level, clip_x0, rederive_eps: bool):
    """x̂_0 = (x_t − √(1−ᾱ_t)·ε)/√ᾱ_t, clipped or thresholded, and ε re-derived from it if
    asked."""
    x0 = (x - b * eps) / a                                          # DDPM Eq. 15
    if isinstance(clip_x0, DynamicThreshold):
        x0 = _threshold(x0, clip_x0)                                # Imagen §2.3
    elif clip_x0 is not None:
        x0 = x0.clip(clip_x0)
        if rederive_eps:
            eps = (x - a * x0) / b                                  # DDPM Eq. 4 solved for ε
    return x0, eps


def _threshold(x0: Array, threshold: DynamicThreshold) -> Array:
    """Imagen's dynamic thresholding (arXiv:2205.11487v1 §2.3; :mod:`refdiff.thresholding`):
    per sample b, s_b = clip(Q_p(|x̂_0,b|), 1, s_max) and y = clip(x̂_0, −s_b, s_b)/s_b, Q_p
    the "linear" quantile (type 7) over the sample's N elements.

    Let E be x̂_0's whole error (inputs and evaluation, :meth:`Array.error`). Then

    - the quantile is a convex combination of two order statistics, and each order
      statistic is 1-Lipschitz in the max-norm: the inputs move Q by at most max_b E
      (the largest E of the sample);
    - the rank h = p·(N − 1): a candidate may form it in its dtype (torch.quantile rounds p
      to the dtype and forms p·(N − 1) there), within γ_2·h. Q is piecewise linear in h with
      slopes the gaps a_(j+1) − a_(j) of the sorted |x̂_0|: it moves by at most γ_2·h times
      the largest gap met in [h − γ_2·h, h + γ_2·h];
    - the interpolation a_(lo) + f·d or a_(hi) − (1 − f)·d, d = a_(hi) − a_(lo): up to 4
      roundings (f or 1 − f, d, the product, the sum) of terms ≤ a_(lo) + a_(hi): γ_4·(a_(lo) +
      a_(hi));
    - the clamp to [1, s_max] is 1-Lipschitz; s_max, a Python float, may be rounded to the
      dtype: u·s. These four add to e_s;
    - clip(x̂_0, −s, s) is 1-Lipschitz in (x̂_0, s) jointly in the max-norm: error max(E, e_s);
    - the division by s (s ≥ 1): the worst case of a quotient, (max(E, e_s) + |y|·e_s)/(s −
      e_s), then 2 roundings of y (the quotient; the cast back to float16 or bfloat16 after
      a float32 computation, as refdiff and diffusers do): γ_2·|y|.

    The whole error of x̂_0 is committed here (the result's error ``e`` holds it); the result
    enters the rest of the step as an array of magnitude |y| ≤ 1.
    """
    p = x0.p
    z, E = x0.v, x0.error()
    batch = z.shape[0] if z.ndim else 1
    a = np.sort(np.abs(z).reshape(batch, -1), axis=1)              # (B, N): sorted |x̂_0|
    n = a.shape[1]
    h = threshold.ratio * (n - 1)                                   # Hyndman & Fan def. 7
    lo = math.floor(h)
    hi, f = min(lo + 1, n - 1), h - lo
    a_lo, a_hi = a[:, lo], a[:, hi]
    q = a_lo + f * (a_hi - a_lo)                                    # (B,)
    dh = p.gamma(2) * h
    if n > 1:
        j0, j1 = max(math.floor(h - dh), 0), min(math.floor(h + dh), n - 2)
        steepest = np.diff(a, axis=1)[:, j0:j1 + 1].max(axis=1)
    else:
        steepest = np.zeros(batch)
    e_q = E.reshape(batch, -1).max(axis=1) + dh * steepest + p.gamma(4) * (a_lo + a_hi)
    s = np.clip(q, 1.0, threshold.max_value)
    e_s = e_q + p.u * s
    column = (batch,) + (1,) * max(z.ndim - 1, 0)
    s, e_s = s.reshape(column), e_s.reshape(column)                 # (B, 1, ..., 1)
    y = np.clip(z, -s, s) / s
    slack = s - e_s
    e_y = np.where(slack > 0, (np.maximum(E, e_s) + np.abs(y) * e_s)
                   / np.where(slack > 0, slack, 1.0), np.inf)
    return Array(y.reshape(z.shape), e_y.reshape(z.shape), np.abs(y).reshape(z.shape), 2, p)


def _learned_noise(p: Precision, v: Array, beta_tilde: Level, beta: Level, variance_type: str,
                   z: Array) -> Array:
    """σ·z for a learned variance: σ² = exp(v) ("learned": v is log σ²) or IDDPM Eq. 15
    ("learned_range": log σ² = X = frac·log β' + (1 − frac)·log β̃, frac = (v + 1)/2, β̃
    floored at 1e-20 inside the log).

    The variance enters the step only through σ·z, so what is needed is σ's relative error.

    - The exponent X. Input errors: v's (its rounding u·|v|, or a model's error) times
      |∂X/∂v| = |log β' − log β̃|/2; log β' and log β̃ as :meth:`Level.log` gives them (the
      levels' errors e/(β − e), their computation in the table's precision u_t·|log|),
      times |frac| and |1 − frac|. Evaluation in the dtype: the casts of the two logs, v + 1
      (and /2, exact), 1 − frac, two products, one sum: at most 4 roundings along a path,
      of terms no larger than M_X = (|frac| + |1 − frac| + (|v| + 1)/2)·(|log β'| + |log β̃|)
      (the last term covers frac's own rounding, which moves both products): γ_4·M_X.
      At the floor |log β̃| = 46.05: at t = 999 → ᾱ_prev = 1 in float32, M_X = 2·46.05 at
      v = ±1 and e_X ≈ γ_4·92 ≈ 2.2e-5 plus the inputs' share, so σ is off by 1.3e-5
      relative (v = −1; 0.9e-5 at v = 0): each rounding of log β̃ costs 46·u. In the step
      checks no noise is added after the last listed timestep, the only step to ᾱ_prev = 1,
      so the floor is reached there only by code that adds noise on that step.
      "learned": X = v, no evaluation before the exponential.
    - σ = exp(X/2): X off by e_X moves σ by at most expm1(e_X/2) relative (exp(X ± e_X) =
      exp(X)·exp(±e_X), and the upper side is the larger); the exponential, the square root
      (or diffusers' exp(0.5·X)) and the product of two powers (β'^frac·β̃^(1−frac)) add 3
      roundings, 3u. σ² (or σ) may be subnormal in the dtype: √η absolute then.
    - σ·z: the rounding of z (u·|z|) times σ, σ's error times |z|, and the product's
      rounding (γ_1·σ·|z|, depth 1).
    """
    vv = v.v
    if variance_type == "learned":
        x, e_x = vv, v.e
    else:
        lo, hi = beta_tilde.floored(BETA_TILDE_FLOOR).log(), beta.log()  # log β̃, log β'
        frac = (vv + 1.0) / 2.0                                     # IDDPM Eq. 15
        x = frac * hi.v + (1.0 - frac) * lo.v
        m_x = (np.abs(frac) + np.abs(1.0 - frac) + (np.abs(vv) + 1.0) / 2.0) * (
            abs(hi.v) + abs(lo.v))
        e_x = (np.abs(frac) * hi.e + np.abs(1.0 - frac) * lo.e + abs(hi.v - lo.v) / 2.0 * v.e
               + p.gamma(4) * m_x)
    sigma = np.exp(x / 2.0)
    rel = np.expm1(e_x / 2.0) + 3.0 * p.u
    e_sigma = sigma * rel + np.sqrt(p.underflow(sigma**2, sigma**2 * rel, True))
    e = sigma * z.e + np.abs(z.v) * e_sigma + e_sigma * z.e
    return Array(sigma * z.v, e, sigma * np.abs(z.v), 1, p)


def q_sample(x0, eps, alpha_bar: float, dtype: str, *, t: int | None = None) -> np.ndarray:
    """Bound for x_t = √ᾱ·x_0 + √(1−ᾱ)·ε (DDPM Eq. 4); ``t``: ᾱ's index in the table."""
    p = Precision(dtype)
    A, C = p.alpha_bar(alpha_bar, index=t)
    return (A.sqrt() * p.array(x0) + C.sqrt() * p.array(eps)).bound()


def _posterior_coefficients(A_t: Level, C_t: Level, A_p: Level, C_p: Level):
    """(c0, ct, β̃, β') of DDPM Eq. 7 on the listed chain."""
    beta = 1.0 - A_t / A_p                                          # β' = 1 − ᾱ_t/ᾱ_prev
    c0 = A_p.sqrt() * beta / C_t
    ct = (1.0 - beta).sqrt() * C_p / C_t                            # √(1 − β'), DDPM Eq. 7's √α_t
    return c0, ct, C_p * beta / C_t, beta


def posterior(x0, x_t, alpha_bar_t: float, alpha_bar_prev: float, dtype: str, *,
              prev_exact: bool = False, t: int | None = None,
              t_prev: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Bounds for the mean c0·x_0 + ct·x_t and the variance β̃ of q(x_prev | x_t, x_0);
    ``t``, ``t_prev``: the table indices of the two ᾱ (``prev_exact``: ᾱ_prev is 1)."""
    p = Precision(dtype)
    c0, ct, var, _ = _posterior_coefficients(*p.alpha_bar(alpha_bar_t, index=t),
                                             *p.alpha_bar(alpha_bar_prev, prev_exact, t_prev))
    mean = c0 * p.array(x0) + ct * p.array(x_t)
    var_e = var.e + p.u * abs(var.v) + float(p.underflow(var.v, var.e))  # returned in the dtype
    var_bound = factor(p) * var_e
    return mean.bound(), np.broadcast_to(np.float64(var_bound), np.shape(x_t))


def _ddim(p: Precision, x: Array, eps: Array, noise, ab_t: float, ab_prev: float, eta: float,
          clip_x0, rederive_eps: bool, prev_exact: bool, t=None, t_prev=None) -> Array:
    A_t, C_t = p.alpha_bar(ab_t, index=t)
    A_p, C_p = p.alpha_bar(ab_prev, prev_exact, t_prev)
    x0, eps = _x0_hat(x, eps, A_t.sqrt(), C_t.sqrt(), clip_x0, rederive_eps)
    eta_ = p.level(eta)                                             # η² may underflow
    r = eta_ * eta_ * (1.0 - A_t / A_p) / C_t                       # r = σ²/(1 − ᾱ_prev)
    out = A_p.sqrt() * x0 + (C_p * (1.0 - r)).sqrt() * eps          # DDIM Eq. 12: √(1−ᾱ_prev−σ²)
    if eta > 0 and noise is not None:
        out = out + (r * C_p).sqrt() * p.array(noise)               # DDIM Eq. 16: σ·z
    return out


def ddim_step(x_t, eps, noise, alpha_bar_t: float, alpha_bar_prev: float, dtype: str, *,
              eta: float = 0.0, clip_x0=None, rederive_eps: bool = True,
              prev_exact: bool = False, t: int | None = None,
              t_prev: int | None = None) -> np.ndarray:
    """Bound for x_prev = √ᾱ_prev·x̂_0 + √(1−ᾱ_prev−σ²)·ε + σ·z (DDIM Eqs. 12, 16);
    ``noise`` None when the step adds none; ``clip_x0`` a bound b (clip to [−b, b]) or a
    :class:`~refdiff.thresholding.DynamicThreshold`; ``t``, ``t_prev``: table indices of
    the ᾱ."""
    p = Precision(dtype)
    return _ddim(p, p.array(x_t), p.array(eps), noise, alpha_bar_t, alpha_bar_prev, eta,
                 clip_x0, rederive_eps, prev_exact, t, t_prev).bound()


def _ddpm(p: Precision, x: Array, eps: Array, noise, ab_t: float, ab_prev: float,
          variance_type: str, clip_x0, prev_exact: bool, t=None, t_prev=None,
          var_values: Array | None = None) -> Array:
    A_t, C_t = p.alpha_bar(ab_t, index=t)
    A_p, C_p = p.alpha_bar(ab_prev, prev_exact, t_prev)
    x0, _ = _x0_hat(x, eps, A_t.sqrt(), C_t.sqrt(), clip_x0, rederive_eps=False)
    c0, ct, beta_tilde, beta = _posterior_coefficients(A_t, C_t, A_p, C_p)
    out = c0 * x0 + ct * x                                          # DDPM Eq. 7 at x̂_0
    if noise is not None and variance_type in LEARNED_VARIANCES:
        out = out + _learned_noise(p, var_values, beta_tilde, beta, variance_type,
                                   p.array(noise))                  # IDDPM Eq. 15
    elif noise is not None:
        var = beta_tilde if variance_type == "fixed_small" else beta
        out = out + var.sqrt() * p.array(noise)                     # Algorithm 2, line 4
    return out


def ddpm_step(x_t, eps, noise, alpha_bar_t: float, alpha_bar_prev: float, dtype: str, *,
              variance_type: str = "fixed_small", var_values=None, clip_x0=None,
              prev_exact: bool = False, t: int | None = None,
              t_prev: int | None = None) -> np.ndarray:
    """Bound for x_prev = c0·x̂_0 + ct·x_t + σ·z, σ² = β̃ or β' (DDPM Algorithm 2), or from
    the model's variance channel ``var_values`` for ``variance_type`` "learned" (σ² =
    exp(v)) and "learned_range" (IDDPM Eq. 15); ``clip_x0`` a bound or a
    :class:`~refdiff.thresholding.DynamicThreshold`; other options as in :func:`ddim_step`."""
    p = Precision(dtype)
    learned = variance_type in LEARNED_VARIANCES
    if learned and var_values is None:
        raise ValueError(f"variance_type={variance_type!r} needs var_values=")
    return _ddpm(p, p.array(x_t), p.array(eps), noise, alpha_bar_t, alpha_bar_prev,
                 variance_type, clip_x0, prev_exact, t, t_prev,
                 p.array(var_values) if learned else None).bound()


def cfg(eps_uncond, eps_cond, scale: float, dtype: str) -> np.ndarray:
    """Bound for ε̃ = ε_u + s·(ε_c − ε_u), the widest of the forms in use: that one,
    ε_c − (1 − s)·(ε_c − ε_u) (refdiff for s ≥ 1/2) and (1 + w)·ε_c − w·ε_u (the paper,
    w = s − 1): their terms differ in size (CFG Eq. 6)."""
    p = Precision(dtype)
    eu, ec, s = p.array(eps_uncond), p.array(eps_cond), p.scale(scale)
    w = s - 1.0
    forms = [eu + s * (ec - eu), ec - (1.0 - s) * (ec - eu), (1.0 + w) * ec - w * eu]
    return np.max([f.bound() for f in forms], axis=0)


def classifier_guidance(eps, grad_log_prob, alpha_bar_t: float, scale: float,
                        dtype: str, *, t: int | None = None) -> np.ndarray:
    """Bound for ε̂' = ε̂ − s·√(1−ᾱ_t)·g (CG Algorithm 2), the wider of the forms
    ε̂ − (s·√(1−ᾱ_t))·g (refdiff: one coefficient) and ε̂ − s·(√(1−ᾱ_t)·g) (two products);
    ``t``: ᾱ_t's table index."""
    p = Precision(dtype)
    _, C = p.alpha_bar(alpha_bar_t, index=t)
    eps, g, s = p.array(eps), p.array(grad_log_prob), p.scale(scale)
    forms = [eps - (s * C.sqrt()) * g, eps - s * (C.sqrt() * g)]
    return np.max([f.bound() for f in forms], axis=0)


# ----- the sampling loop --------------------------------------------------------------------

def step_jacobian(step: Callable[[np.ndarray], np.ndarray], x: np.ndarray,
                  elementwise: bool) -> np.ndarray:
    """|∂G/∂x| of one whole step G(x) = step(x, model(x)) at x, by central differences in
    float64: its diagonal (as an array of x's shape) for an ``elementwise`` model, else the
    full matrix of shape (x.size, x.size). The signs inside G matter: with ε ≈ x (a model
    near the identity), x̂_0 = (x − √(1−ᾱ)·ε)/√ᾱ cancels, and bounding the x and ε paths
    separately would overstate each step's amplification many times over."""
    h = 2.0**-20 * np.maximum(1.0, np.abs(x))
    if elementwise:
        return np.abs(step(x + h) - step(x - h)) / (2 * h)
    flat, hf, cols = x.ravel(), h.ravel(), []
    for j in range(flat.size):
        up, down = flat.copy(), flat.copy()
        up[j] += hf[j]
        down[j] -= hf[j]
        cols.append((step(up.reshape(x.shape)) - step(down.reshape(x.shape))).ravel() / (2 * hf[j]))
    return np.abs(np.stack(cols, axis=1))


def model_error(model: Callable, x: np.ndarray, eps: np.ndarray, t: int, p: Precision):
    """The model's own evaluation error in the dtype: ``model.error_terms(x, t)`` gives
    (M, k) for it (:func:`refdiff.testing.step_checks.default_model` does); otherwise
    γ_8·(|x_t| + |ε|), a model whose terms are about as large as its input and output."""
    if hasattr(model, "error_terms"):
        m, k = model.error_terms(x, t)
        return p.gamma(k) * np.asarray(m, dtype=np.float64)
    return p.gamma(8) * (np.abs(x) + np.abs(eps))


def sampling_loop(model: Callable, x_T, timesteps: Sequence[int], noises, alpha_bar: Callable,
                  final: Callable, dtype: str, *, sampler: str = "ddim", eta: float = 0.0,
                  clip_x0=None, rederive_eps: bool = True, variance_type: str = "fixed_small",
                  final_exact: bool = True, **_: Any) -> tuple[np.ndarray, np.ndarray]:
    """(x_0, bound) of a loop. The error e_i of the state is carried by the step's Jacobian
    and a step adds its own, from exact inputs (first order):

        e_{i+1} = |∂G_i/∂x|·e_i + E_i + γ_k·M_i,   G_i(x) = step_i(x, model(x, t_i)),

    E_i with ε carrying the model's own evaluation error (:func:`model_error`) and the
    state exact (the candidate's state is its own output: its error is e_i, carried), e_0
    the rounding of x_T; the bound is (S + u₆₄/u)·e_n. ``alpha_bar(t)``
    gives ᾱ_t, ``final()`` the ᾱ after the last step; ``final_exact``: that value is 1."""
    import refdiff as rd

    p = Precision(dtype)
    x = np.asarray(x_T, dtype=np.float64)
    err = p.u * np.abs(x)
    ts = list(timesteps)
    # dynamic thresholding couples the elements of a sample (its quantile): full Jacobian
    elementwise = bool(getattr(model, "elementwise", False)) and not isinstance(
        clip_x0, DynamicThreshold)
    for i, t in enumerate(ts):
        last = i + 1 == len(ts)
        ab_t, t_prev = alpha_bar(t), 0 if last else ts[i + 1]
        ab_prev = final() if last else alpha_bar(t_prev)
        noise = None if last else np.asarray(noises[i], dtype=np.float64)

        def step(v, eps=None):
            eps = np.asarray(model(v, t), dtype=np.float64) if eps is None else eps
            if sampler == "ddim":
                return rd.ddim_step(v, eps, ab_t, ab_prev, eta=eta, noise=0 * v,
                                    clip_x0=clip_x0, rederive_eps=rederive_eps)
            return rd.ddpm_step(v, eps, ab_t, ab_prev, 0 * v, variance_type=variance_type,
                                clip_x0=clip_x0)
        jac = step_jacobian(step, x, elementwise)
        carried = jac * err if elementwise else (jac @ err.ravel()).reshape(x.shape)
        eps_v = np.asarray(model(x, t), dtype=np.float64)
        eps = p.array(eps_v, model_error(model, x, eps_v, t, p) + p.u * np.abs(eps_v))
        exact, state = last and final_exact, p.array(x, 0.0 * x)  # its error is carried
        if sampler == "ddim":
            out = _ddim(p, state, eps, noise, ab_t, ab_prev, eta, clip_x0, rederive_eps,
                        exact, t, t_prev)
        else:
            out = _ddpm(p, state, eps, noise, ab_t, ab_prev, variance_type, clip_x0,
                        exact, t, t_prev)
        x, err = out.v, carried + out.error()
    return x, factor(p) * err
