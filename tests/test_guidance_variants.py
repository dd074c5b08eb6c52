"""APG, CFG++ and the guidance-scale schedules (refdiff.guidance_variants, refdiff.scale_schedules).

Three kinds of test:

- hand values of tiny cases, derived in the comments next to them;
- limits that hold bit for bit (APG at η = 1 is CFG, at s = 1 is D_c, at D_c = D_u is D_u;
  CFG++ at λ = 0 or ε_c = ε_u is DDIM on ε_u), on every backend row of the matrix;
- differential tests on every backend row against NumPy float64 references written here from
  the papers' formulas (APG's projection as ⟨Δ, D_c⟩/‖D_c‖²·D_c; CFG++ as x̂_0 of ε_λ, then
  renoised with ε_u), on inputs rounded to the row's dtype, within per-example first-order
  bounds (:func:`apg_bound`, :func:`cfgpp_bound`, :func:`identity_bound`).

Measured max error/bound (CI profile, 20 examples per row, 2026-12-01; every row's worst
over its examples of the two differential tests). APG: numpy, array_api_strict and torch
float64 0.16, jax float64 0.087; numpy, array_api_strict, torch and jax float32 0.33; torch
float16 0.36, bfloat16 0.29. CFG++: numpy, array_api_strict, torch and jax float64 0.12;
float32 (all four) 0.25; torch float16 0.30, bfloat16 0.34. So the first-order bounds have
margins of 3–11×, and test_bounds_are_tight_enough_to_catch_slips shows that formula slips
exceed them by orders of magnitude (a relative 1e-4 slip in APG's coefficient fails float32).
The bitwise limit tests measure 0 on every row.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import refdiff as rd
from refdiff.testing import assert_close
from refdiff.testing.strategies import flush_tiny
from refdiff.testing.tolerance import to_numpy

U = {"float64": 2.0**-53, "float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}
TINY = {"float64": 2.0**-1074, "float32": 2.0**-149, "float16": 2.0**-24, "bfloat16": 2.0**-133}
U64 = U["float64"]

ELEM = st.floats(-3.0, 3.0, allow_nan=False, allow_infinity=False, allow_subnormal=False)
# a few fixed shapes (B ≤ 3, ≤ 8 elements per sample): JAX compiles each op once per shape
SHAPES = st.sampled_from([(1, 2), (2, 3), (3, 1), (3, 8), (1, 2, 2), (2, 2, 3), (3, 2, 2)])


@st.composite
def arrays(draw, n):
    """``n`` float64 arrays of one shape (B ≤ 3, ≤ 8 elements per sample), entries in
    [−3, 3], magnitudes below 2**-14 flushed to 0 (an input means the same in every dtype)."""
    shape = draw(SHAPES)
    return [flush_tiny(draw(hnp.arrays(np.float64, shape, elements=ELEM))) for _ in range(n)]


def _col(v, x):
    v = np.asarray(v, dtype=np.float64)
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim)) if v.ndim else float(v)


def _axes(x):
    return tuple(range(1, x.ndim))


# ----- hand values --------------------------------------------------------------------------

def test_apg_hand_values():
    """Tiny cases derived by hand; catch a wrong projection (onto Δ or D_u instead of D_c), a
    missing η, the threshold applied after the projection or not per sample, momentum with
    the wrong sign, and s in place of s − 1."""
    d_u, d_c = np.array([[1.0, 1.0]]), np.array([[2.0, 0.0]])
    # Δ = (1, −1); ⟨Δ, D_c⟩ = 2, ‖D_c‖² = 4: Δ∥ = (1, 0), Δ⊥ = (0, −1)
    # η = 0, s = 3: D_c + 2·(0, −1) = (2, −2)
    g, run = rd.apg(d_u, d_c, 3.0)
    assert np.array_equal(g, [[2.0, -2.0]]) and np.array_equal(run, [[1.0, -1.0]])
    # η = 0.5: update = (0.5, −1): (2, 0) + 2·(0.5, −1) = (3, −2)
    assert np.array_equal(rd.apg(d_u, d_c, 3.0, eta=0.5)[0], [[3.0, -2.0]])
    # r = 1: ‖Δ‖ = √2 > 1, Δ ← Δ/√2; Δ⊥ = (0, −1/√2); η = 0: (2, −2/√2) = (2, −√2)
    g, run = rd.apg(d_u, d_c, 3.0, norm_threshold=1.0)
    np.testing.assert_allclose(g, [[2.0, -math.sqrt(2.0)]], rtol=0, atol=4e-16)
    assert np.array_equal(run, [[1.0, -1.0]])  # the running Δ̄ is taken before the threshold
    # r = 2 ≥ ‖Δ‖: no rescaling, the η = 0 result
    assert np.array_equal(rd.apg(d_u, d_c, 3.0, norm_threshold=2.0)[0], [[2.0, -2.0]])
    # β = −0.5, Δ̄_prev = (2, 2): Δ = (1, −1) − (1, 1) = (0, −2) ⊥ D_c: (2, 0) + 2·(0, −2)
    g, run = rd.apg(d_u, d_c, 3.0, momentum=-0.5, running=np.array([[2.0, 2.0]]))
    assert np.array_equal(g, [[2.0, -4.0]]) and np.array_equal(run, [[0.0, -2.0]])
    # β without a previous Δ̄ (the first step): Δ as is
    assert np.array_equal(rd.apg(d_u, d_c, 3.0, momentum=-0.5)[1], [[1.0, -1.0]])
    # per sample, s a (B,) array: sample 2 has Δ = (0, 3) ∥ D_c = (0, 3): Δ⊥ = 0, η = 0 → D_c
    g, _ = rd.apg(np.array([[1.0, 1.0], [0.0, 0.0]]), np.array([[2.0, 0.0], [0.0, 3.0]]),
                  np.array([3.0, 2.0]))
    assert np.array_equal(g, [[2.0, -2.0], [0.0, 3.0]])
    # D_c = 0: nothing to project onto, Δ∥ = 0: 0 + (s − 1)·Δ = 2·(−1, −2)
    g, _ = rd.apg(np.array([[1.0, 2.0]]), np.zeros((1, 2)), 3.0)
    assert np.array_equal(g, [[-2.0, -4.0]])
    # (1, 2, 2): the projection runs over all non-batch axes. D_c = [[1,0],[1,0]],
    # Δ = [[1,0],[−1,−1]]: ⟨Δ, D_c⟩ = 1 − 1 = 0, so Δ⊥ = Δ and s = 2 gives D_c + Δ =
    # [[2,0],[0,−1]] (a projection over the last axis only gives [[1,0],[1,−1]])
    d_c3 = np.array([[[1.0, 0.0], [1.0, 0.0]]])
    d_u3 = np.array([[[0.0, 0.0], [2.0, 1.0]]])
    assert np.array_equal(rd.apg(d_u3, d_c3, 2.0)[0], [[[2.0, 0.0], [0.0, -1.0]]])


def test_cfgpp_hand_values():
    """CFG++ by hand: x̂_0 from ε_λ, renoised with ε_u (renoising with ε_λ, or x̂_0 from ε_u,
    gives other numbers)."""
    # x = 1, ε_u = 0, ε_c = 1, λ = 0.5, ᾱ_t = 0.25, ᾱ_prev = 1: ε_λ = 0.5,
    # x̂_0 = (1 − √0.75·0.5)/0.5 = 2 − √0.75, x_prev = x̂_0
    got = rd.cfgpp_ddim_step(np.ones((1, 1)), np.zeros((1, 1)), np.ones((1, 1)), 0.5, 0.25, 1.0)
    np.testing.assert_allclose(got, [[2.0 - math.sqrt(0.75)]], rtol=0, atol=1e-15)
    # x = 2, ε_u = 1, ε_c = 3, λ = 0.25, ᾱ_t = 0.5, ᾱ_prev = 0.8: ε_λ = 1.5,
    # x̂_0 = (2 − √0.5·1.5)/√0.5 = 2√2 − 1.5, x_prev = √0.8·(2√2 − 1.5) + √0.2·1
    got = rd.cfgpp_ddim_step(np.full((1, 1), 2.0), np.ones((1, 1)), np.full((1, 1), 3.0), 0.25,
                             0.5, 0.8)
    want = math.sqrt(0.8) * (2 * math.sqrt(2.0) - 1.5) + math.sqrt(0.2)
    np.testing.assert_allclose(got, [[want]], rtol=0, atol=2e-15)
    # renoising with ε_λ instead would give √0.8·(2√2 − 1.5) + √0.2·1.5: 0.22 away
    assert abs(float(got[0, 0]) - (want + 0.5 * math.sqrt(0.2))) > 0.2


def test_sigma_from_alpha_bar_hand_values():
    """σ = √((1 − ᾱ)/ᾱ): 0.2 → √4 = 2, 0.5 → 1, 0.8 → √0.25 = 0.5, 1 → 0, 0 → ∞ (a slip
    to √(1 − ᾱ) or 1/σ fails)."""
    assert rd.sigma_from_alpha_bar(0.2) == 2.0
    assert rd.sigma_from_alpha_bar(0.5) == 1.0
    # 1 − 0.8 rounds (0.19999999999999996): within 2 ulps of 0.5
    assert math.isclose(rd.sigma_from_alpha_bar(0.8), 0.5, rel_tol=4 * U64, abs_tol=0)
    assert rd.sigma_from_alpha_bar(1.0) == 0.0
    assert rd.sigma_from_alpha_bar(0.0) == math.inf


def test_scheduled_scale_hand_values():
    """Every kind by hand: the interval's open/closed ends, step's floor of start·n and its
    half-open stop, the ramps' p = i/(n − 1) and their mean w (a slip to p = i/n, to a closed
    stop or an open σ_hi fails)."""
    sc = rd.scheduled_scale
    c = rd.ScaleSchedule("constant", 3.0)
    assert [sc(c, i, 4, 1.0) for i in range(4)] == [3.0] * 4
    iv = rd.ScaleSchedule("interval", 3.0, sigma_lo=1.0, sigma_hi=4.0)
    # (1, 4]: σ = 5 → 1, 4 → s (closed above), 2 → s, 1 → 1 (open below), 0.5 → 1
    assert [sc(iv, 0, 5, v) for v in (5.0, 4.0, 2.0, 1.0, 0.5)] == [1.0, 3.0, 3.0, 1.0, 1.0]
    st_ = rd.ScaleSchedule("step", 3.0, start=0.25, stop=0.75)
    # n = 4: int(1) = 1 ≤ i < int(3) = 3; n = 10: int(2.5) = 2 ≤ i < int(7.5) = 7
    assert [sc(st_, i, 4, 1.0) for i in range(4)] == [1.0, 3.0, 3.0, 1.0]
    assert [i for i in range(10) if sc(st_, i, 10, 1.0) == 3.0] == [2, 3, 4, 5, 6]
    lin = rd.ScaleSchedule("linear", 3.0)
    # w = 2, s_i = 1 + 2w·i/(n − 1): n = 3 → 1, 3, 5; n = 5 → 1, 2, 3, 4, 5
    assert [sc(lin, i, 3, 1.0) for i in range(3)] == [1.0, 3.0, 5.0]
    assert [sc(lin, i, 5, 1.0) for i in range(5)] == [1.0, 2.0, 3.0, 4.0, 5.0]
    cos = rd.ScaleSchedule("cosine", 3.0)
    # s_i = 1 + w(1 − cos πp): p = 0 → 1, p = 1/3 → 1 + 2·0.5 = 2, p = 2/3 → 1 + 2·1.5 = 4,
    # p = 1 → 5
    np.testing.assert_allclose([sc(cos, i, 4, 1.0) for i in range(4)], [1.0, 2.0, 4.0, 5.0],
                               rtol=0, atol=1e-15)
    # n = 1: p = 0, both ramps start unguided
    assert sc(lin, 0, 1, 1.0) == 1.0 and sc(cos, 0, 1, 1.0) == 1.0


def test_interval_from_steps_hand_values():
    """(σ_{last+1} or 0, σ_first); empty → (0, 0): a slip to σ_last as the lower bound (open
    there: it would drop step `last`) fails."""
    sig = [8.0, 4.0, 2.0, 1.0]
    assert rd.interval_from_steps(sig, 1, 2) == (1.0, 4.0)
    assert rd.interval_from_steps(sig, 0, 3) == (0.0, 8.0)
    assert rd.interval_from_steps(sig, 3, 3) == (0.0, 1.0)
    assert rd.interval_from_steps(sig, 2, 1) == (0.0, 0.0)
    assert rd.interval_from_steps(sig, 0, 0) == (4.0, 8.0)
    # EDM's t_steps end with the 0 after the last step: the same four steps, 3 still the last
    assert rd.interval_from_steps(sig + [0.0], 1, 2) == (1.0, 4.0)
    assert rd.interval_from_steps(sig + [0.0], 3, 3) == (0.0, 1.0)
    with pytest.raises(ValueError, match="last"):
        rd.interval_from_steps(sig + [0.0], 0, 4)  # the trailing 0 is not a step
    with pytest.raises(ValueError, match="sigmas"):
        rd.interval_from_steps([2.0, 0.0, 0.0], 0, 0)  # a zero that is not the final level


# ----- limits, bit for bit, every backend row ----------------------------------------------

# 14 rows (the 4 cuda ones skip here) × 8 tests: 20 examples per row and test instead of the
# profile's 60 keep the file within its share of the suite's time on two cores (2 240
# examples in all; the differential tests draw their edge values, s = 0, 1, λ = 0, 1, early).
ROWS = settings(max_examples=20)


def _s_arg(target, s, per_sample, B):
    if per_sample:
        return target.put(np.resize(np.asarray(s, dtype=np.float64), B))
    return s


@ROWS
@given(b=arrays(2), s=st.floats(-10, 10), per_sample=st.booleans(),
       beta=st.sampled_from([0.0, -0.5, 0.7]))
def test_apg_eta1_is_cfg_bitwise(target, b, s, per_sample, beta):
    """η = 1, r = 0, no momentum state: rd.cfg bit for bit (float s or (B,) array; β set but no
    running Δ̄ is the first step). Catches a projection evaluated and re-added (rounding)."""
    u, c = (target.put(target.rounded(a)) for a in b)
    sv = _s_arg(target, s, per_sample, b[0].shape[0])
    got, run = rd.apg(u, c, sv, eta=1.0, momentum=beta)
    want = rd.cfg(u, c, sv)
    assert_close(got, want, dtype=target.dtype, device=target.device, bound=0.0)
    assert np.array_equal(to_numpy(got), to_numpy(want))
    assert np.array_equal(to_numpy(run), to_numpy(c - u))


@ROWS
@given(data=st.data(), k=st.sampled_from([0.5, 2.0, -1.0, -0.5, 0.25, 4.0]),
       eta=st.sampled_from([0.0, 0.5, 1.0, -0.3]), s=st.floats(-10, 10), B=st.integers(1, 3),
       d=st.sampled_from([1, 4]))
def test_apg_parallel_delta_has_no_orthogonal_part(target, data, k, eta, s, B, d):
    """D_u = (1 − k)·D_c: Δ = k·D_c ∥ D_c, Δ⊥ = 0, result D_c + (s − 1)·(η·Δ), bit for bit.
    Exact by construction: D_c has integer entries |D_j| ≤ 7 and one entry ±8 (max|D_c| a
    power of 2, so D/max|D| is exact), k a power of 2 or (1 − k) one with few bits, so D_u, Δ
    and the coefficient (⟨Δ̂, D̂⟩/⟨D̂, D̂⟩ = ±1: the same sums) are exact in every dtype.
    Catches Δ⊥ and Δ∥ swapped, η on the wrong part, the coefficient not per sample."""
    ints = data.draw(hnp.arrays(np.int64, (B, d), elements=st.integers(-7, 7)))
    where = data.draw(st.lists(st.integers(0, d - 1), min_size=B, max_size=B))
    signs = data.draw(st.lists(st.sampled_from([-8.0, 8.0]), min_size=B, max_size=B))
    d_c = ints.astype(np.float64)
    d_c[np.arange(B), where] = signs
    d_u, delta = (1.0 - k) * d_c, k * d_c
    dc, du, dl = (target.put(a) for a in (d_c, d_u, delta))
    got, run = rd.apg(du, dc, s, eta=eta)
    want = dc + (s - 1.0) * (eta * dl) if s != 1 else dc
    assert_close(got, want, dtype=target.dtype, device=target.device, bound=0.0)
    assert np.array_equal(to_numpy(run), delta)
    # where ‖Δ‖ ≤ r the threshold changes nothing (r = 8·|k|·√d + 1 > ‖Δ‖)
    got_r, _ = rd.apg(du, dc, s, eta=eta, norm_threshold=8 * abs(k) * math.sqrt(d) + 1)
    assert np.array_equal(to_numpy(got_r), to_numpy(got))


@ROWS
@given(b=arrays(3), eta=st.floats(-1, 2), r=st.sampled_from([0.0, 0.5, 5.0]),
       beta=st.sampled_from([0.0, -0.5, 1.0]), with_running=st.booleans())
def test_apg_scale_one_is_the_conditional_prediction(target, b, eta, r, beta, with_running):
    """s = 1 returns D_c bit for bit whatever η, r, β and Δ̄ (catches D_u + update or a
    rounding through D_c + 0·update with −0.0 lost: compared with tobytes on NumPy)."""
    u, c, rr = (target.put(target.rounded(a)) for a in b)
    got, _ = rd.apg(u, c, 1.0, eta=eta, norm_threshold=r, momentum=beta,
                    running=rr if with_running else None)
    assert_close(got, c, dtype=target.dtype, device=target.device, bound=0.0)
    assert np.array_equal(to_numpy(got), to_numpy(c))


@ROWS
@given(b=arrays(1), eta=st.floats(-1, 2), r=st.sampled_from([0.0, 0.5, 5.0]),
       beta=st.sampled_from([0.0, -0.5, 1.0]), s=st.floats(-10, 10))
def test_apg_equal_predictions_give_the_prediction(target, b, eta, r, beta, s):
    """D_c = D_u and no momentum state: Δ = 0, the result is D_u for every η, r, β, s
    (catches a 0/0 in the norm threshold or the projection: NaN)."""
    (a,) = (target.put(target.rounded(x)) for x in b)
    got, run = rd.apg(a, a, s, eta=eta, norm_threshold=r, momentum=beta)
    assert_close(got, a, dtype=target.dtype, device=target.device, bound=0.0)
    assert np.array_equal(to_numpy(run), np.zeros(b[0].shape))


@st.composite
def levels(draw):
    """(ᾱ_t, ᾱ_prev), ᾱ_t + 0.02 ≤ ᾱ_prev ≤ 1 (σ_t − σ_prev bounded away from 0, so the CFG
    scale of the identity stays below ~10: no overflow in float16)."""
    a = draw(st.floats(0.04, 0.94))
    p = draw(st.one_of(st.just(1.0), st.floats(a + 0.02, 1.0)))
    return a, p


@ROWS
@given(b=arrays(3), lv=levels(), lam=st.floats(0, 1), per_sample=st.booleans())
def test_cfgpp_equal_predictions_and_lambda_zero_are_ddim_bitwise(target, b, lv, lam,
                                                                  per_sample):
    """ε_c = ε_u (any λ) and λ = 0 (any ε_c): rd.ddim_step(x, ε_u) bit for bit (catches a
    guidance term that does not vanish, or x̂_0 re-derived through ε_λ)."""
    x, eu, ec = (target.put(target.rounded(a)) for a in b)
    lamv = _s_arg(target, lam, per_sample, b[0].shape[0])
    want = rd.ddim_step(x, eu, *lv)
    got = rd.cfgpp_ddim_step(x, eu, eu, lamv, *lv)
    assert_close(got, want, dtype=target.dtype, device=target.device, bound=0.0)
    got0 = rd.cfgpp_ddim_step(x, eu, ec, 0.0, *lv)
    assert_close(got0, want, dtype=target.dtype, device=target.device, bound=0.0)


# ----- bounds (first-order error analysis) --------------------------------------------------

def apg_bound(d_u, d_c, s, eta, r, beta, running, dtype):
    """Elementwise bound on |apg computed in ``dtype`` − apg exact| on the given (rounded)
    inputs, first order in u = unit roundoff of ``dtype``; ``(guided, running)`` bounds.

    Notation per sample, d elements: A_j = |D_c − D_u|_j + |β·Δ̄_j|; fl(x ∘ y) = (x ∘ y)(1+δ),
    |δ| ≤ u; constants rounded up to absorb second-order terms.

    - Δ = (D_c − D_u) + β·Δ̄ (β cast: u; product u; two sums): e_Δ ≤ 3u·A_j.
    - ‖Δ‖ = m·√Σ(Δ/m)² (m = max|Δ|, Δ/m and each square and sum rounded: ≤ (d + 4)u
      relative, plus the propagated Σ_i e_Δ,i); f = min(1, r/‖Δ‖) (r cast, a quotient:
      2u): rel_f ≤ (d + 7)u + Σ e_Δ/‖Δ‖ (f is continuous at ‖Δ‖ = r, so both branches hold).
    - Δ' = f·Δ (one product): e' ≤ |Δ'|(rel_f + u) + f·e_Δ.
    - The coefficient c = ⟨Δ', D⟩/‖D‖² from the scaled sums (Δ̂ = Δ'/m_v, D̂ = D/m_u: one
      rounding each; the d products and d − 1 sums of ⟨Δ̂, D̂⟩: (d + 2)u on Σ|Δ̂_i D̂_i|;
      ⟨D̂, D̂⟩ all positive: (d + 2)u relative; the quotient u). The condition number of ⟨Δ', D⟩
      is Σ|Δ'_i D_i|/|⟨Δ', D⟩|, so the bound is absolute in the sum of magnitudes:
      e_par,j ≤ [(d + 2)u·Σ|Δ'_i D_i| + Σ e'_i|D_i|]/‖D‖²·|D_j| + (d + 6)u·|par_j|
      (the last: c's quotient and ⟨D̂, D̂⟩, m_v·c, ·D̂_j, D̂_j), plus d·tiny·m_v·|D_j|/m_u for
      squares that underflow (⟨D̂, D̂⟩ ≥ 1); 0 where D_c = 0 (the parallel part is 0 there).
    - update = (Δ' − par) + η·par: e_upd ≤ e' + (1 + |η|)e_par + u(|Δ'| + |par|) +
      2u|η·par| + u|update|.
    - guided = D_c + (s − 1)·update ((s − 1) from the host and cast, or formed in the dtype
      from a rounded array s: 3u; the product, the sum): |s − 1|·e_upd + 4u|s − 1||update|
      + u|guided|.

    The η = 1, r = 0, no-momentum path is rd.cfg: u|ε̃| + 3u(1 + |s|)|D_c − D_u| (the
    two-sided lerp of refdiff.classifier_free, as in tests/test_fused.py). s = 1: 0.
    """
    u, tiny = U[dtype], TINY[dtype]
    axes = _axes(d_c)
    s = _col(s, d_c)
    beta_r = 0.0 if (beta == 0 or running is None) else beta * running
    if eta == 1 and r == 0 and (beta == 0 or running is None):
        g = d_u + s * (d_c - d_u)
        e_g = u * np.abs(g) + 3 * u * (1 + np.abs(s)) * np.abs(d_c - d_u)
        return e_g, 3 * u * np.abs(d_c - d_u)
    delta = d_c - d_u + beta_r
    e_delta = 3 * u * (np.abs(d_c - d_u) + np.abs(beta_r))
    d = int(np.prod(d_c.shape[1:]))
    if r > 0:
        norm = np.sqrt(np.sum(delta**2, axis=axes, keepdims=True))
        f = np.where(norm > r, r / np.where(norm > 0, norm, 1.0), 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            prop = np.where(norm > 0, np.sum(e_delta, axis=axes, keepdims=True)
                            / np.where(norm > 0, norm, 1.0), 0.0)
        rel_f = (d + 7) * u + prop
    else:
        f, rel_f = 1.0, 0.0
    dp = f * delta
    e_dp = np.abs(dp) * (rel_f + u) + f * e_delta
    dd = np.sum(d_c**2, axis=axes, keepdims=True)
    safe = np.where(dd > 0, dd, 1.0)
    coef = np.where(dd > 0, np.sum(dp * d_c, axis=axes, keepdims=True) / safe, 0.0)
    par = coef * d_c
    m_v = np.max(np.abs(dp), axis=axes, keepdims=True)
    m_u = np.max(np.abs(d_c), axis=axes, keepdims=True)
    e_par = np.where(dd > 0, ((d + 2) * u * np.sum(np.abs(dp * d_c), axis=axes, keepdims=True)
                              + np.sum(e_dp * np.abs(d_c), axis=axes, keepdims=True))
                     / safe * np.abs(d_c) + (d + 6) * u * np.abs(par)
                     + d * tiny * m_v * np.abs(d_c) / np.where(m_u > 0, m_u, 1.0), 0.0)
    upd = (dp - par) + eta * par
    e_upd = (e_dp + (1 + abs(eta)) * e_par + u * (np.abs(dp) + np.abs(par))
             + 2 * u * np.abs(eta * par) + u * np.abs(upd))
    g = d_c + (s - 1.0) * upd
    e_g = np.abs(s - 1.0) * e_upd + 4 * u * np.abs(s - 1.0) * np.abs(upd) + u * np.abs(g)
    if not isinstance(s, np.ndarray) and s == 1:
        e_g = np.zeros_like(g)
    return e_g + 16 * tiny, e_delta + 16 * tiny


def ref_apg(d_u, d_c, s, eta, r, beta, running):
    """APG, arXiv:2410.02416v1 Alg. 1 and Eqs. 6–9, directly in NumPy float64."""
    axes = _axes(d_c)
    s = _col(s, d_c)
    delta = d_c - d_u
    if beta != 0 and running is not None:
        delta = delta + beta * running
    new_running = delta
    if r > 0:
        norm = np.sqrt(np.sum(delta**2, axis=axes, keepdims=True))
        delta = delta * np.minimum(1.0, r / np.where(norm > 0, norm, 1.0))
    dd = np.sum(d_c * d_c, axis=axes, keepdims=True)
    proj = np.sum(delta * d_c, axis=axes, keepdims=True) / np.where(dd > 0, dd, 1.0)
    par = np.where(dd > 0, proj, 0.0) * d_c
    return d_c + (s - 1.0) * ((delta - par) + eta * par), new_running


def _ddim_terms(x, e, ab_t, ab_prev):
    """A|x| + (A√(1 − ᾱ_t) + √(1 − ᾱ_prev))|e|, A = √(ᾱ_prev/ᾱ_t): the terms of DDIM (η = 0)."""
    A = math.sqrt(ab_prev / ab_t)
    return A * np.abs(x) + (A * math.sqrt(1 - ab_t) + math.sqrt(1 - ab_prev)) * np.abs(e)


def cfgpp_bound(x, eu, ec, lam, ab_t, ab_prev, dtype):
    """Elementwise bound on |cfgpp_ddim_step in ``dtype`` − exact| (first order).

    The step is ddim_step(x, ε_u) + c·(ε_c − ε_u), c = −√ᾱ_prev·σ_t·λ:

    - ddim_step(x, ε_u): (8u + 16·u64)·T(x, ε_u), T = the magnitudes of its terms
      (:func:`_ddim_terms`; the per-term count of tests/test_fused.py);
    - c from host float64 (two square roots, a quotient, a difference, two products: 6·u64)
      cast once (u), the difference ε_c − ε_u (u), the product (u): (3u + 6·u64)·|c·(ε_c − ε_u)|;
    - the final sum: u·|x_prev|.
    """
    u = U[dtype]
    lam = _col(lam, x)
    sig_t = math.sqrt((1 - ab_t) / ab_t)
    corr = math.sqrt(ab_prev) * sig_t * lam * np.abs(ec - eu)
    x_prev = rd.ddim_step(x, eu, ab_t, ab_prev) - math.sqrt(ab_prev) * sig_t * lam * (ec - eu)
    return ((8 * u + 16 * U64) * _ddim_terms(x, eu, ab_t, ab_prev) + (3 * u + 6 * U64) * corr
            + u * np.abs(x_prev) + 16 * TINY[dtype])


def ref_cfgpp(x, eu, ec, lam, ab_t, ab_prev):
    """CFG++, arXiv:2406.08070v1 Algorithm 1 (DDIM) directly: x̂_0 of ε_λ, renoised with ε_u."""
    lam = _col(lam, x)
    e_lam = eu + lam * (ec - eu)
    x0 = (x - math.sqrt(1 - ab_t) * e_lam) / math.sqrt(ab_t)
    return math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * eu


def ref_cfgpp_error(x, eu, ec, lam, ab_t, ab_prev):
    """The float64 reference's own rounding: ε_λ (3 roundings on |ε_u| + |λ(ε_c − ε_u)|),
    x̂_0 (4 on |x| + √(1 − ᾱ_t)|ε_λ|, over √ᾱ_t), the renoising (3): ≤ 12·u64 on the terms."""
    lam = _col(lam, x)
    e_mag = np.abs(eu) + np.abs(lam * (ec - eu))
    A = math.sqrt(ab_prev / ab_t)
    return 12 * U64 * (A * np.abs(x) + A * math.sqrt(1 - ab_t) * e_mag
                       + math.sqrt(1 - ab_prev) * np.abs(eu))


# ----- differential tests, every backend row -------------------------------------------------

@ROWS
@given(b=arrays(3), s=st.one_of(st.sampled_from([1.0, 0.0, 7.5]), st.floats(-10, 10)),
       per_sample=st.booleans(), eta=st.sampled_from([0.0, 1.0, 0.3, -0.5]),
       r=st.sampled_from([0.0, 0.5, 2.0, 15.0]), beta=st.sampled_from([0.0, -0.5, 0.9]),
       with_running=st.booleans())
def test_apg_backend_rows_match_the_paper_formula(target, b, s, per_sample, eta, r, beta,
                                                  with_running):
    """The row's apg against ref_apg (float64, the paper's projection ⟨Δ, D_c⟩/‖D_c‖²·D_c) on
    the same rounded inputs, within apg_bound (row's u) + apg_bound (u64, the reference);
    dtype, shape and device of both outputs. Catches a projection onto the wrong vector, a
    norm over the batch, η on Δ⊥, momentum after the threshold, a float64 leak in dtype."""
    d_u, d_c, run0 = (target.rounded(a) for a in b)
    B = d_c.shape[0]
    s_np = np.resize(np.asarray(s, dtype=np.float64), B) if per_sample else s
    if per_sample:
        s_np = target.rounded(s_np)
    running = run0 if with_running else None
    want, want_run = ref_apg(d_u, d_c, s_np, eta, r, beta, running)
    args = [target.put(a) for a in (d_u, d_c)]
    got, got_run = rd.apg(*args, target.put(s_np) if per_sample else s, eta=eta,
                          norm_threshold=r, momentum=beta,
                          running=target.put(running) if with_running else None)
    eg, er = apg_bound(d_u, d_c, s_np, eta, r, beta, running, target.dtype)
    eg64, er64 = apg_bound(d_u, d_c, s_np, eta, r, beta, running, "float64")
    res = assert_close(got, want, dtype=target.dtype, device=target.device, bound=eg + eg64)
    assert_close(got_run, want_run, dtype=target.dtype, device=target.device, bound=er + er64)
    _WORST.setdefault(("apg", target.id), []).append(res["ratio"])


@ROWS
@given(b=arrays(3), lv=levels(), lam=st.one_of(st.sampled_from([0.0, 1.0, 0.5]),
                                               st.floats(0, 1)), per_sample=st.booleans())
def test_cfgpp_backend_rows_match_the_paper_formula(target, b, lv, lam, per_sample):
    """The row's cfgpp_ddim_step against ref_cfgpp (x̂_0 of ε_λ, then renoised with ε_u, in
    float64) on the same rounded inputs, within cfgpp_bound + the reference's own error;
    dtype, shape, device. Catches renoising with ε_λ, σ_t in place of √(1 − ᾱ_t), the sign
    of the guidance term, and λ applied per batch instead of per sample."""
    x, eu, ec = (target.rounded(a) for a in b)
    B = x.shape[0]
    lam_np = np.resize(np.asarray(lam, dtype=np.float64), B) if per_sample else lam
    lam_arg = target.with_dtype("float64").put(lam_np) if per_sample else lam
    got = rd.cfgpp_ddim_step(*(target.put(a) for a in (x, eu, ec)), lam_arg, *lv)
    want = ref_cfgpp(x, eu, ec, lam_np, *lv)
    bnd = cfgpp_bound(x, eu, ec, lam_np, *lv, target.dtype) + ref_cfgpp_error(
        x, eu, ec, lam_np, *lv)
    res = assert_close(got, want, dtype=target.dtype, device=target.device, bound=bnd)
    _WORST.setdefault(("cfgpp", target.id), []).append(res["ratio"])


def identity_bound(x, eu, ec, lam, s, ab_t, ab_prev, dtype):
    """Bound on |cfgpp_ddim_step(x, ε_u, ε_c, λ) − ddim_step(x, cfg(ε_u, ε_c, s))|, both in
    ``dtype``, s = λσ_t/(σ_t − σ_prev) formed on the host in float64. Exactly the two are
    equal: DDIM(ε̃) = √ᾱ_prev(x/√ᾱ_t + (σ_prev − σ_t)ε̃) and CFG++ = √ᾱ_prev(x/√ᾱ_t − σ_t·ε_λ
    + σ_prev·ε_u); they agree iff (σ_prev − σ_t)·s = −σ_t·λ. First-order rounding terms:

    - CFG++: cfgpp_bound (its DDIM terms on ε_u, the correction, the final sum);
    - the composition: cfg's lerp, u|ε̃| + 3u(1 + |s|)|ε_c − ε_u|, reaching x_prev times
      |B| = √ᾱ_prev(σ_t − σ_prev) (the step is affine in ε̃); the DDIM step on ε̃,
      (8u + 16·u64)·T(x, ε̃);
    - s itself: σ_t and σ_prev from ≤ 3 roundings each, their difference cancels: relative
      error of s ≤ 8·u64·(σ_t + σ_prev)/(σ_t − σ_prev), on the term |B·s·(ε_c − ε_u)|
      (+ u for s cast to the dtype).
    """
    u = U[dtype]
    sig_t, sig_p = (math.sqrt((1 - a) / a) for a in (ab_t, ab_prev))
    Bc = math.sqrt(ab_prev) * (sig_t - sig_p)
    d = np.abs(ec - eu)
    et = eu + s * (ec - eu)
    kappa = (sig_t + sig_p) / (sig_t - sig_p)
    return (cfgpp_bound(x, eu, ec, lam, ab_t, ab_prev, dtype)
            + Bc * (u * np.abs(et) + 3 * u * (1 + abs(s)) * d)
            + (8 * u + 16 * U64) * _ddim_terms(x, et, ab_t, ab_prev)
            + (8 * U64 * kappa + u) * Bc * abs(s) * d)


@ROWS
@given(b=arrays(3), lv=levels(), lam=st.floats(0, 1))
def test_cfgpp_is_cfg_ddim_at_the_step_scale(target, b, lv, lam):
    """CFG++(λ) = ddim_step(x, cfg(ε_u, ε_c, s)) with s = λσ_t/(σ_t − σ_prev), on the row,
    within identity_bound. Catches a CFG++ written as CFG at s = λ (a difference of
    (s − λ)·B·|ε_c − ε_u|, orders above the bound) or the σ of the wrong level."""
    x, eu, ec = (target.rounded(a) for a in b)
    ab_t, ab_prev = lv
    sig_t, sig_p = (math.sqrt((1 - a) / a) for a in lv)
    s = lam * sig_t / (sig_t - sig_p)
    X, EU, EC = (target.put(a) for a in (x, eu, ec))
    got = rd.cfgpp_ddim_step(X, EU, EC, lam, ab_t, ab_prev)
    via_cfg = rd.ddim_step(X, rd.cfg(EU, EC, s), ab_t, ab_prev)
    assert_close(got, via_cfg, dtype=target.dtype, device=target.device,
                 bound=identity_bound(x, eu, ec, lam, s, ab_t, ab_prev, target.dtype))


def test_bounds_are_tight_enough_to_catch_slips():
    """The bounds are not so loose that a formula slip passes: CFG at s = λ for CFG++, the
    projection onto D_u for APG, and η applied to Δ⊥ each fail by many bounds."""
    rng = np.random.default_rng(3)
    x, eu, ec = rng.standard_normal((3, 2, 4))
    lam, ab_t, ab_prev = 0.6, 0.3, 0.5
    wrong = rd.ddim_step(x, rd.cfg(eu, ec, lam), ab_t, ab_prev)
    bnd = cfgpp_bound(x, eu, ec, lam, ab_t, ab_prev, "float32")
    assert np.max(np.abs(wrong - ref_cfgpp(x, eu, ec, lam, ab_t, ab_prev)) / bnd) > 1e3
    d_u, d_c = rng.standard_normal((2, 2, 4))
    want, _ = ref_apg(d_u, d_c, 5.0, 0.0, 0.0, 0.0, None)
    bnd, _ = apg_bound(d_u, d_c, 5.0, 0.0, 0.0, 0.0, None, "float32")
    wrong_onto_u, _ = ref_apg(d_c, d_u, 5.0, 0.0, 0.0, 0.0, None)  # roles swapped
    assert np.max(np.abs(wrong_onto_u - want) / bnd) > 1e3
    swapped_eta, _ = ref_apg(d_u, d_c, 5.0, 1.0, 0.0, 0.0, None)   # η = 1: plain CFG
    assert np.max(np.abs(swapped_eta - want) / bnd) > 1e3
    # a relative slip of 1e-4 in the coefficient fails the float32 bound
    dd = np.sum(d_c**2, axis=(1,), keepdims=True)
    coef = np.sum((d_c - d_u) * d_c, axis=(1,), keepdims=True) / dd
    slipped = d_c + 4.0 * ((d_c - d_u) - coef * (1 + 1e-4) * d_c)
    assert np.max(np.abs(slipped - want) / bnd) > 1


_WORST: dict = {}


@pytest.fixture(scope="module", autouse=True)
def _report_worst(request):
    """With REFDIFF_REPORT_RATIOS=1 (and pytest -s), print each row's max error/bound."""
    yield
    import os
    if os.environ.get("REFDIFF_REPORT_RATIOS"):
        for key in sorted(_WORST):
            print(key, f"{max(_WORST[key]):.3g}")


# ----- scale schedules ----------------------------------------------------------------------

@given(s=st.floats(-10, 10), n=st.integers(1, 60), data=st.data())
def test_constant_and_full_interval_give_s_and_empty_gives_one(s, n, data):
    """"constant" and an interval (0, ∞] give s exactly at every step; an empty interval (lo
    = hi) gives 1.0 everywhere (catches a closed lower end: σ = σ_lo = σ_hi would be
    guided)."""
    sigmas = data.draw(st.lists(st.floats(0, 1e3), min_size=n, max_size=n))
    full = rd.ScaleSchedule("interval", s)
    c = rd.ScaleSchedule("constant", s)
    v = data.draw(st.floats(0, 1e3))
    empty = rd.ScaleSchedule("interval", s, sigma_lo=v, sigma_hi=v)
    for i, sig in enumerate(sigmas + [math.inf]):
        i = min(i, n - 1)
        assert rd.scheduled_scale(c, i, n, sig) == s
        if sig > 0:
            assert rd.scheduled_scale(full, i, n, sig) == s
        assert rd.scheduled_scale(empty, i, n, sig) == 1.0
    assert rd.scheduled_scale(empty, 0, n, v) == 1.0


@given(n=st.integers(1, 200), start=st.floats(0, 1), stop=st.floats(0, 1),
       s=st.floats(-10, 10).filter(lambda v: v != 1))
def test_step_kind_is_the_diffusers_rule(n, start, stop, s):
    """"step" guides exactly int(start·n) <= i < int(stop·n) (diffusers' guiders' start/stop,
    written out here). Catches round() for int(), a closed stop, or start·(n − 1)."""
    g = rd.ScaleSchedule("step", s, start=start, stop=stop)
    for i in range(n):
        want = s if int(start * n) <= i < int(stop * n) else 1.0
        assert rd.scheduled_scale(g, i, n, 1.0) == want


@given(s=st.floats(-10, 10), n=st.integers(2, 50), kind=st.sampled_from(["linear", "cosine"]))
def test_ramps_start_at_one_end_at_2w_and_average_w(s, n, kind):
    """Both ramps: 1 at the first step, 1 + 2w at the last, the trapezoid mean over p of the
    linear one is w exactly; the cosine one is symmetric about p = 1/2 (w(p) + w(1 − p) =
    2w). Catches p = i/n and a ramp that falls."""
    g = rd.ScaleSchedule(kind, s)
    w = s - 1.0
    vals = [rd.scheduled_scale(g, i, n, 1.0) for i in range(n)]
    assert vals[0] == 1.0
    assert math.isclose(vals[-1], 1 + 2 * w, rel_tol=0, abs_tol=1e-13 * (1 + abs(w)))
    for i in range(n):
        assert math.isclose((vals[i] - 1) + (vals[n - 1 - i] - 1), 2 * w, rel_tol=0,
                            abs_tol=1e-13 * (1 + abs(w)))


@st.composite
def descending(draw):
    vals = draw(st.lists(st.floats(1e-3, 1e3), min_size=1, max_size=40, unique=True))
    return sorted(vals, reverse=True)


@given(sig=descending(), data=st.data())
def test_interval_from_steps_selects_exactly_first_to_last(sig, data):
    """For any strictly descending σ list: {i : σ_lo < σ_i ≤ σ_hi} = {first, …, last} (the
    official code's inclusive `i >= first and i <= last`), and the ScaleSchedule built from
    it guides those steps. Catches an off-by-one at either end."""
    n = len(sig)
    first = data.draw(st.integers(0, n - 1))
    last = data.draw(st.integers(-1, n - 1))
    lo, hi = rd.interval_from_steps(sig, first, last)
    got = {i for i in range(n) if lo < sig[i] <= hi}
    official = {i for i in range(n) if i >= first and i <= last}
    assert got == official
    g = rd.ScaleSchedule("interval", 3.0, sigma_lo=lo, sigma_hi=hi)
    assert {i for i in range(n) if rd.scheduled_scale(g, i, n, sig[i]) == 3.0} == official


@given(sig=descending(), start=st.floats(0, 1), stop=st.floats(0, 1))
def test_interval_from_steps_maps_diffusers_fractions(sig, start, stop):
    """diffusers' fractions mapped as first = int(start·n), last = int(stop·n) − 1 give the
    same steps as the "step" kind (catches last = int(stop·n), one step too many)."""
    n = len(sig)
    first, last = int(start * n), int(stop * n) - 1
    assume(first <= n - 1 or first > last)
    lo, hi = rd.interval_from_steps(sig, min(first, n), last)
    iv = rd.ScaleSchedule("interval", 3.0, sigma_lo=lo, sigma_hi=hi)
    stp = rd.ScaleSchedule("step", 3.0, start=start, stop=stop)
    for i in range(n):
        assert rd.scheduled_scale(iv, i, n, sig[i]) == rd.scheduled_scale(stp, i, n, sig[i])


# ----- errors: type → TypeError, value → ValueError, the message names the argument --------

X2 = np.ones((2, 3))

ERRORS = [
    ("kind", lambda: rd.ScaleSchedule("bogus", 2.0), ValueError, "ScaleSchedule.kind"),
    ("lo>hi", lambda: rd.ScaleSchedule("interval", 2.0, sigma_lo=3.0, sigma_hi=1.0),
     ValueError, "sigma_lo"),
    ("lo<0", lambda: rd.ScaleSchedule("interval", 2.0, sigma_lo=-1.0), ValueError,
     "ScaleSchedule.sigma_lo"),
    ("start>1", lambda: rd.ScaleSchedule("step", 2.0, start=1.5), ValueError,
     "ScaleSchedule.start"),
    ("start<0", lambda: rd.ScaleSchedule("step", 2.0, start=-0.1), ValueError,
     "ScaleSchedule.start"),
    ("stop>1", lambda: rd.ScaleSchedule("step", 2.0, stop=2.0), ValueError,
     "ScaleSchedule.stop"),
    ("sigma on constant", lambda: rd.ScaleSchedule("constant", 2.0, sigma_lo=1.0), ValueError,
     "ScaleSchedule.sigma_lo"),
    ("start on interval", lambda: rd.ScaleSchedule("interval", 2.0, start=0.5), ValueError,
     "ScaleSchedule.start"),
    ("sigma on step", lambda: rd.ScaleSchedule("step", 2.0, sigma_hi=3.0), ValueError,
     "ScaleSchedule.sigma_hi"),
    ("scale array", lambda: rd.ScaleSchedule("constant", np.array(2.0)), TypeError,
     "ScaleSchedule.scale"),
    ("scale str", lambda: rd.ScaleSchedule("constant", "2"), TypeError, "ScaleSchedule.scale"),
    ("scale nan", lambda: rd.ScaleSchedule("constant", math.nan), ValueError,
     "ScaleSchedule.scale"),
    ("eta array", lambda: rd.APG(eta=np.array(0.5)), TypeError, "APG.eta"),
    ("momentum 2", lambda: rd.APG(momentum=2.0), ValueError, "APG.momentum"),
    ("threshold<0", lambda: rd.APG(norm_threshold=-1.0), ValueError, "APG.norm_threshold"),
    ("space", lambda: rd.APG(space="x0"), ValueError, "APG.space"),
    ("apg 1-D", lambda: rd.apg(np.ones(3), np.ones(3), 2.0), ValueError, "pred_cond"),
    ("apg momentum", lambda: rd.apg(X2, X2, 2.0, momentum=-1.5), ValueError, "APG.momentum"),
    ("apg scale inf", lambda: rd.apg(X2, X2, math.inf), ValueError, "scale"),
    ("apg running shape", lambda: rd.apg(X2, X2, 2.0, momentum=0.5, running=np.ones((2, 4))),
     ValueError, "running"),
    ("apg mixed dtypes", lambda: rd.apg(X2.astype(np.float32), X2, 2.0), (TypeError, ValueError),
     "pred_uncond"),
    ("cfgpp lam 1.5", lambda: rd.cfgpp_ddim_step(X2, X2, X2, 1.5, 0.3, 0.5), ValueError, "lam"),
    ("cfgpp lam<0", lambda: rd.cfgpp_ddim_step(X2, X2, X2, -0.1, 0.3, 0.5), ValueError, "lam"),
    ("cfgpp lam array", lambda: rd.cfgpp_ddim_step(X2, X2, X2, np.array([0.5, 1.5]), 0.3, 0.5),
     ValueError, "lam"),
    ("cfgpp ab_t 0", lambda: rd.cfgpp_ddim_step(X2, X2, X2, 0.5, 0.0, 0.5), ValueError,
     "alpha_bar_t"),
    ("schedule type", lambda: rd.scheduled_scale("constant", 0, 3, 1.0), TypeError, "schedule"),
    ("step range", lambda: rd.scheduled_scale(rd.ScaleSchedule("constant", 2.0), 3, 3, 1.0),
     ValueError, "step"),
    ("num_steps", lambda: rd.scheduled_scale(rd.ScaleSchedule("constant", 2.0), 0, 0, 1.0),
     ValueError, "num_steps"),
    ("sigma<0", lambda: rd.scheduled_scale(rd.ScaleSchedule("constant", 2.0), 0, 3, -1.0),
     ValueError, "sigma"),
    ("not descending", lambda: rd.interval_from_steps([1.0, 2.0], 0, 1), ValueError, "sigmas"),
    ("empty sigmas", lambda: rd.interval_from_steps([], 0, 0), ValueError, "sigmas"),
    ("last range", lambda: rd.interval_from_steps([2.0, 1.0], 0, 2), ValueError, "last"),
    ("alpha_bar>1", lambda: rd.sigma_from_alpha_bar(1.5), ValueError, "alpha_bar"),
    ("alpha_bar str", lambda: rd.sigma_from_alpha_bar("0.5"), TypeError, "alpha_bar"),
]


@pytest.mark.parametrize("make, error, message", [e[1:] for e in ERRORS],
                         ids=[e[0] for e in ERRORS])
def test_argument_errors(make, error, message):
    """Each bad input raises its error class, and the message names the argument."""
    with pytest.raises(error, match=message.replace(".", r"\.")):
        make()


def test_exports():
    """The new names are exported with their documented tuples."""
    assert rd.SCHEDULE_KINDS == ("constant", "interval", "step", "linear", "cosine")
    assert rd.GUIDANCE_METHODS == ("cfg", "apg", "cfg++")
    for name in ("APG", "apg", "cfgpp_ddim_step", "ScaleSchedule", "interval_from_steps",
                 "scheduled_scale", "sigma_from_alpha_bar"):
        assert name in rd.__all__


# ----- what a mutation run of scale_schedules and guidance_variants found untested --------

def test_cfgpp_per_sample_levels_are_the_float_levels_per_row():
    """Per-sample (B,) ᾱ arrays take the array path of the coefficients (xp.sqrt, cast):
    each row equals the step with that row's Python-float levels (a namespace of None, or a
    host sqrt applied to an array, breaks it)."""
    rng = np.random.default_rng(3)
    x, eu, ec = rng.standard_normal((3, 2, 4))
    ab_t, ab_prev = np.array([0.3, 0.6]), np.array([0.5, 0.9])
    got = rd.cfgpp_ddim_step(x, eu, ec, 0.7, ab_t, ab_prev)
    for b in range(2):
        row = rd.cfgpp_ddim_step(x[b:b + 1], eu[b:b + 1], ec[b:b + 1], 0.7, float(ab_t[b]),
                                 float(ab_prev[b]))
        np.testing.assert_allclose(got[b:b + 1], row, rtol=0, atol=1e-15)


def test_schedule_values_are_floats_and_the_last_zero_needs_one_step_before_it():
    """ScaleSchedule stores its scale as a float (an int 3 gives 3.0, not 3); a two-element
    list [σ_0, 0] is one step (the 0 dropped); equal neighbours are not descending."""
    g = rd.ScaleSchedule("constant", 3)
    assert type(g.scale) is float and type(rd.scheduled_scale(g, 0, 1, 1.0)) is float
    assert rd.interval_from_steps([1.0, 0.0], 0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="sigmas"):
        rd.interval_from_steps([2.0, 2.0, 1.0], 0, 1)


@pytest.mark.parametrize("make, error", [
    (lambda: rd.interval_from_steps([1.0, -1.0], 0, 0), ValueError),      # σ < 0
    (lambda: rd.interval_from_steps([2.0, 1.0], -1, 0), ValueError),      # first < 0
    (lambda: rd.interval_from_steps([2.0, 1.0], 0, -2), ValueError),      # last < −1
    (lambda: rd.interval_from_steps([2.0, 1.0], 3, 1), ValueError),       # first > n
    (lambda: rd.scheduled_scale(rd.ScaleSchedule("constant", 2.0), -1, 3, 1.0), ValueError),
    (lambda: rd.scheduled_scale(rd.ScaleSchedule("constant", 2.0), 0, 3, True), ValueError),
    (lambda: rd.sigma_from_alpha_bar(-0.5), ValueError),
    (lambda: rd.ScaleSchedule("interval", 2.0, sigma_hi=math.nan), ValueError),
    (lambda: rd.ScaleSchedule("step", 2.0, stop=-0.5), ValueError),
])
def test_out_of_range_arguments_are_refused(make, error):
    with pytest.raises(error):
        make()
