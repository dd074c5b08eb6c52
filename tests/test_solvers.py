"""The σ-space and flow steps (refdiff.solvers): hand values, identities with DDIM, and
differential tests on every backend row against NumPy float64 rewrites of the papers' formulas.

- Hand values: tiny 1-element cases derived in the comments next to them.
- Identities (float64, bounded by first-order rounding, not a fixed rtol): Euler = DDIM η = 0
  and Euler-ancestral(η = 1) = DDIM η = 1 with the same z after x_VP = √ᾱ·x_VE; the flow Euler
  step = DDIM on the flow path (through change_path); DPM-Solver++(2M) first order = Euler
  (bit for bit); Euler-ancestral(η = 0) = Euler (bit for bit, every row).
- Differential tests, every backend row: EDM Alg. 1 written as x + (σ' − σ)·d, DPM-Solver++
  Alg. 2 in its λ/h/r form, k-diffusion's ancestral split, the flow Euler step, each in NumPy
  float64 on the row's rounded inputs, within a per-example first-order bound (the ``*_bound``
  helpers: C·u·Σ|terms| in the row's u plus the float64 reference's own rounding).

Measured max error/bound (CI profile, 20 examples per row, 10 on JAX): see the final report
of the test author (REFDIFF_REPORT_RATIOS=1 pytest -s prints each row's worst).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import refdiff as rd
from strategies import worst_ratio_report
from refdiff.testing import assert_close
from refdiff.testing.strategies import flush_tiny
from refdiff.testing.tolerance import to_numpy

U = {"float64": 2.0**-53, "float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}
TINY = {"float64": 2.0**-1074, "float32": 2.0**-149, "float16": 2.0**-24, "bfloat16": 2.0**-133}
U64 = U["float64"]
ELEM = st.floats(-3.0, 3.0, allow_nan=False, allow_infinity=False, allow_subnormal=False)
SHAPES = st.sampled_from([(1, 2), (2, 3), (3, 4), (2, 2, 3)])  # few: JAX compiles per shape
ROWS = settings(max_examples=20)


@st.composite
def arrays(draw, n):
    """``n`` float64 arrays of one shape, entries in [−3, 3], tiny magnitudes flushed to 0."""
    shape = draw(SHAPES)
    return [flush_tiny(draw(hnp.arrays(np.float64, shape, elements=ELEM))) for _ in range(n)]


def _col(v, x):
    """A float, or a (B,) array shaped to broadcast against x."""
    v = np.asarray(v, dtype=np.float64)
    return v.reshape(v.shape + (1,) * (x.ndim - 1)) if v.ndim else float(v)


def _levels(data, B, per_sample, sigma, frac):
    """(σ, σ') as floats or (B,) float64 arrays; σ' = σ·frac ≤ σ."""
    n = B if per_sample else 1
    s = np.array([data.draw(sigma) for _ in range(n)])
    sn = s * np.array([data.draw(frac) for _ in range(n)])
    return (s, sn) if per_sample else (float(s[0]), float(sn[0]))


def _arg(target, v):
    """A level as the library receives it: a float, or a float64 array of the row's backend."""
    return target.with_dtype("float64").put(np.asarray(v)) if isinstance(v, np.ndarray) else v


_WORST: dict = {}


def _record(name, target, res):
    _WORST.setdefault((name, target.id), []).append(res["ratio"])

_report_worst = worst_ratio_report(_WORST)  # REFDIFF_REPORT_RATIOS=1 pytest -s prints them


# ----- hand values --------------------------------------------------------------------------

def test_euler_and_heun_hand_values():
    """Euler to σ' = 0 returns D; r = 1/2 halves the distance to D; Heun on the Gaussian
    denoiser D(x; σ) = x/(1 + σ²) (a unit Gaussian at 0) by hand."""
    assert np.array_equal(rd.euler_step(np.array([2.0]), np.array([0.5]), 2.0, 0.0), [0.5])
    # r = 1/2: 0.5·3 + 0.5·1 = 2
    assert np.array_equal(rd.euler_step(np.array([3.0]), np.array([1.0]), 2.0, 1.0), [2.0])
    # x = 2, σ = 1, σ' = 1/2: D = 1, d = 1, x_e = 2 − 0.5 = 1.5; D' = 1.5/1.25 = 1.2,
    # d' = (1.5 − 1.2)/0.5 = 0.6; x' = 2 − 0.5·(1 + 0.6)/2 = 1.6 (Euler alone: 1.5)
    x_e = rd.euler_step(np.array([2.0]), np.array([1.0]), 1.0, 0.5)
    assert np.array_equal(x_e, [1.5])
    got = rd.heun_step(np.array([2.0]), np.array([1.0]), 1.0, 0.5, x_e / 1.25)
    np.testing.assert_allclose(got, [1.6], rtol=0, atol=4 * U64 * 2)
    # σ' = 0: no correction, the Euler step (D)
    assert np.array_equal(rd.heun_step(np.array([2.0]), np.array([1.0]), 1.0, 0.0), [1.0])


def test_ancestral_hand_values():
    """σ = 2, σ' = 1: σ_up = √(1·(4 − 1)/4) = √3/2, σ_down = √(1 − 3/4) = 1/2; η = 1/2:
    σ_up = √3/4, σ_down = √13/4; η = 3: σ_up capped at σ' = 1, σ_down = 0. σ_down² + σ_up² =
    σ'² in all; the step is Euler to σ_down plus σ_up·z."""
    down, up = rd.ancestral_sigmas(2.0, 1.0)
    assert math.isclose(up, math.sqrt(3) / 2, rel_tol=4 * U64)
    assert math.isclose(down, 0.5, rel_tol=8 * U64)  # √(1 − fl(3/4)): within 2 ulps
    down, up = rd.ancestral_sigmas(2.0, 1.0, eta=0.5)
    assert math.isclose(up, math.sqrt(3) / 4, rel_tol=4 * U64)
    assert math.isclose(down, math.sqrt(13) / 4, rel_tol=4 * U64)
    assert rd.ancestral_sigmas(2.0, 1.0, eta=3.0) == (0.0, 1.0)
    for eta in (0.0, 0.3, 1.0, 1.7, 5.0):
        d, u = rd.ancestral_sigmas(2.0, 1.0, eta=eta)
        assert math.isclose(d * d + u * u, 1.0, rel_tol=8 * U64)
    assert rd.ancestral_sigmas(2.0, 0.0) == (0.0, 0.0)
    # x = 2, D = 0: Euler to σ_down = 1/2 gives 0.5, plus √3/2·z with z = 1
    got = rd.euler_ancestral_step(np.array([2.0]), np.array([0.0]), 2.0, 1.0, np.array([1.0]))
    np.testing.assert_allclose(got, [0.5 + math.sqrt(3) / 2], rtol=0, atol=4 * U64)


def test_dpmpp_2m_hand_values():
    """First order (no state): r = 1/2, 0.5·2 + 0.5·0.5 = 1.25, state (D, σ). Second order:
    σ_prev = 4, σ = 2, σ' = 1: h = h_prev = log 2, c = 1/2, D_i = 1 + (1 − 0) /2 = 1.5,
    x' = 0.5·2 + 0.5·1.5 = 1.75; σ_prev = 8: h_prev = 2 log 2, c = 1/4, D_i = 1.25, x' =
    1.625 (with r in place of 1/r, c = 1 and x' = 2: caught). σ' = 0 returns D."""
    x, s = rd.dpmpp_2m_step(np.array([2.0]), np.array([0.5]), 2.0, 1.0)
    assert np.array_equal(x, [1.25]) and s.sigma == 2.0 and np.array_equal(s.denoised, [0.5])
    prev = rd.MultistepState(np.array([0.0]), 4.0)
    x, _ = rd.dpmpp_2m_step(np.array([2.0]), np.array([1.0]), 2.0, 1.0, prev)
    np.testing.assert_allclose(x, [1.75], rtol=0, atol=4 * U64)
    x, _ = rd.dpmpp_2m_step(np.array([2.0]), np.array([1.0]), 2.0, 1.0,
                            rd.MultistepState(np.array([0.0]), 8.0))
    np.testing.assert_allclose(x, [1.625], rtol=0, atol=4 * U64)
    x, _ = rd.dpmpp_2m_step(np.array([2.0]), np.array([1.0]), 2.0, 0.0, prev)
    assert np.array_equal(x, [1.0])
    x, _ = rd.dpmpp_2m_step(np.array([2.0]), np.array([1.0]), 2.0, 1.0, prev, first_order=True)
    assert np.array_equal(x, [1.5])


def test_flow_euler_hand_values():
    """x' = x + (t' − t)·u: 1 + (−0.5)·2 = 0; 0.5 + (−0.5)·(−1) = 1."""
    assert np.array_equal(rd.flow_euler_step(np.array([1.0]), np.array([2.0]), 1.0, 0.5), [0.0])
    assert np.array_equal(rd.flow_euler_step(np.array([0.5]), np.array([-1.0]), 0.75, 0.25),
                          [1.0])


# ----- identities ---------------------------------------------------------------------------

@given(b=arrays(2), per_sample=st.booleans(), data=st.data())
def test_dpmpp_first_order_is_euler_and_ancestral_eta0_is_euler_bitwise(b, per_sample, data):
    """DPM-Solver++(1) (no state, or first_order=True) is Euler (DDIM) bit for bit, and
    Euler-ancestral with η = 0 too (σ_down = √(σ'²) = σ' exactly in binary floating point)."""
    x, d = b
    frac = st.one_of(st.just(0.0), st.floats(1e-6, 1))   # σ'² must not underflow (σ' ≥ 5e-8)
    s, sn = _levels(data, x.shape[0], per_sample, st.floats(0.05, 80), frac)
    want = rd.euler_step(x, d, s, sn)
    st_ = rd.MultistepState(np.zeros_like(x), 2 * (s if per_sample else s) + 1.0)
    for got in (rd.dpmpp_2m_step(x, d, s, sn)[0],
                rd.dpmpp_2m_step(x, d, s, sn, st_, first_order=True)[0],
                rd.euler_ancestral_step(x, d, s, sn, eta=0.0),
                rd.euler_ancestral_step(x, d, s, sn, np.ones_like(x), eta=0.0)):
        assert np.array_equal(got, want)


def _vp(sigma):
    return 1.0 / (1.0 + sigma * sigma)


def _kappa(s, sn):
    """Conditioning of going through ᾱ = 1/(1 + σ²): 1 − ᾱ has an absolute error of a few u64,
    a relative one of u64/σ², so the ε-terms of DDIM carry u64·|ε|/σ (and /σ' at σ')."""
    return 1.0 + 1.0 / s**2 + (1.0 / (s * sn) + 1.0 / sn**2 if sn > 0 else 0.0)


@given(b=arrays(2), s=st.floats(0.05, 50), frac=st.one_of(st.just(0.0), st.floats(0.01, 1.0)))
def test_euler_is_ddim_eta0_on_the_same_levels(b, s, frac):
    """euler_step(x, D, σ, σ') = ddim_step(√ᾱ·x, ε̂, ᾱ, ᾱ')/√ᾱ' with ᾱ = 1/(1 + σ²),
    ε̂ = (x − D)/σ, to float64 rounding: bound 32·u64·κ·(|x| + |D|) (C = 32: the conversions
    to VP and back, ~4 roundings each, DDIM's ~8, Euler's 3; κ = _kappa)."""
    x, d = b
    sn = s * frac
    eps = (x - d) / s
    ab, abn = _vp(s), _vp(sn)
    via = rd.ddim_step(math.sqrt(ab) * x, eps, ab, abn) / math.sqrt(abn)
    got = rd.euler_step(x, d, s, sn)
    bound = 32 * U64 * _kappa(s, sn) * (np.abs(x) + np.abs(d)) + 1e-300
    res = assert_close(got, via, bound=bound)
    _WORST.setdefault(("euler=ddim", "float64"), []).append(res["ratio"])
    # a slip (σ for σ' in d's divisor) is far outside
    slip = x + (sn - s) * (x - d) / max(sn, 1e-3)
    assert frac in (0.0, 1.0) or np.all(np.abs(x - d) < 1e-3) or (
        np.max(np.abs(slip - via) / bound) > 1e3)


@given(b=arrays(3), s=st.floats(0.2, 20), frac=st.one_of(st.just(0.0), st.floats(0.1, 0.8)))
def test_euler_ancestral_eta1_is_ddim_eta1_with_the_same_noise(b, s, frac):
    """euler_ancestral_step(η = 1, z) = ddim_step(√ᾱ·x, ε̂, ᾱ, ᾱ', eta=1, noise=z)/√ᾱ': DDIM's σ_t
    over √ᾱ' is σ_up, √(1 − ᾱ' − σ_t²)/√ᾱ' is σ_down. Bound 64·u64·κ'·(|x| + |D| + σ_up|z|)
    (C = 64: the Euler identity's 32 and DDIM's σ_t, ~8 roundings, with its cancellation in
    1 − ᾱ' − σ_t² and in 1 − ᾱ/ᾱ'; κ' = κ + (1 + σ²)/(σ² − σ'²), σ' ≤ 0.8σ)."""
    x, d, z = b
    sn = s * frac
    eps = (x - d) / s
    ab, abn = _vp(s), _vp(sn)
    via = rd.ddim_step(math.sqrt(ab) * x, eps, ab, abn, eta=1.0, noise=z) / math.sqrt(abn)
    got = rd.euler_ancestral_step(x, d, s, sn, z, eta=1.0)
    up = rd.ancestral_sigmas(s, sn)[1]
    kap = _kappa(s, sn) + (1 + s * s) / (s * s - sn * sn)
    bound = 64 * U64 * kap * (np.abs(x) + np.abs(d) + up * np.abs(z)) + 1e-300
    res = assert_close(got, via, bound=bound)
    _WORST.setdefault(("ancestral=ddim1", "float64"), []).append(res["ratio"])
    # σ_up·√ᾱ' is DDIM's σ_t (Eq. 16, η = 1)
    if sn > 0:
        sig_ddim = math.sqrt((1 - abn) / (1 - ab)) * math.sqrt(1 - ab / abn)
        assert math.isclose(up * math.sqrt(abn), sig_ddim, rel_tol=64 * U64 * kap)


@given(b=arrays(2), t=st.floats(0.05, 0.95), frac=st.one_of(st.just(0.0), st.floats(0.02, 1)))
def test_flow_euler_is_ddim_on_the_flow_path(b, t, frac):
    """flow_euler_step(x, u, t, t') = DDIM η = 0 on the same σ's, reached through
    change_path (flow → VP), ddim_step on ε̂ from u, and change_path back (VP → flow).
    Bound 32·u64·κ·(1 + σ)·(|x| + |u|) with σ = t/(1 − t) (the VP x and ε̂ are up to (1 + σ)
    times the flow x; C as in the Euler identity)."""
    x, u = b
    tn = t * frac
    x0, eps = rd.path_x0_eps(x, u, 1 - t, t, "velocity")
    x_vp, ab = rd.change_path(x, "flow", t, "vp")
    abn = rd.path_level("vp", rd.path_sigma("flow", tn))
    x_prev, t_back = rd.change_path(rd.ddim_step(x_vp, eps, ab, abn), "vp", abn, "flow")
    got = rd.flow_euler_step(x, u, t, tn)
    s, sn = t / (1 - t), tn / (1 - tn)
    bound = 32 * U64 * _kappa(s, sn) * (1 + s) * (np.abs(x) + np.abs(u)) + 1e-300
    res = assert_close(got, x_prev, bound=bound)
    # t' → σ' → ᾱ' → σ' → t': ᾱ' = 1/(1 + σ'²) holds σ'² with relative error u64/σ'²
    assert math.isclose(t_back, tn, rel_tol=8 * U64 * _kappa(sn or 1.0, sn), abs_tol=1e-300)
    _WORST.setdefault(("flow=ddim", "float64"), []).append(res["ratio"])


# ----- references: the papers' formulas in NumPy float64 ------------------------------------

def ref_euler(x, d, s, sn):
    """EDM arXiv:2206.00364v2 Alg. 1, line 5: x + (σ' − σ)·d, d = (x − D)/σ."""
    return x + (sn - s) * ((x - d) / s)


def ref_heun(x, d, dn, s, sn):
    """EDM Alg. 1, lines 5–7: x_e = x + (σ' − σ)·d, d' = (x_e − D')/σ', x + (σ' − σ)(d + d')/2."""
    d_cur = (x - d) / s
    x_e = x + (sn - s) * d_cur
    d_prime = (x_e - dn) / sn
    return x + (sn - s) * (0.5 * d_cur + 0.5 * d_prime)


def ref_ancestral_sigmas(s, sn, eta):
    """k-diffusion get_ancestral_step: σ_up = min(σ', η√(σ'²(σ² − σ'²)/σ²)), σ_down = √(σ'² − σ_up²)."""
    up = np.minimum(sn, eta * np.sqrt(sn**2 * (s**2 - sn**2) / s**2))
    return np.sqrt(np.maximum(sn**2 - up**2, 0.0)), up


def ref_ancestral(x, d, z, s, sn, eta):
    """k-diffusion sample_euler_ancestral: x + (σ_down − σ)·d + σ_up·z."""
    down, up = ref_ancestral_sigmas(s, sn, eta)
    return x + (down - s) * ((x - d) / s) + up * z


def ref_dpmpp(x, d, d_prev, s, sn, s_prev):
    """DPM-Solver++ arXiv:2211.01095v2 Alg. 2 on λ = −log σ: h = λ' − λ, r = h_prev/h,
    D_i = (1 + 1/(2r))·D − 1/(2r)·D_prev, x' = (σ'/σ)·x − (e^{−h} − 1)·D_i; σ' = 0 (h = ∞):
    x' = D; no previous step: D_i = D."""
    sn_safe = np.where(sn > 0, sn, 1.0)
    lam, lam_next = -np.log(s), -np.log(sn_safe)
    h = lam_next - lam
    d_i = d
    if d_prev is not None:
        h_prev = lam - (-np.log(s_prev))
        r = h_prev / h
        d_i = (1 + 1 / (2 * r)) * d - 1 / (2 * r) * d_prev
    out = (sn / s) * x - (np.exp(-h) - 1) * d_i
    return np.where(sn > 0, out, d)


def ref_flow_euler(x, v, t, tn):
    """Flow matching arXiv:2210.02747v2: Euler on dx/dt = u."""
    return x + (tn - t) * v


# ----- bounds -------------------------------------------------------------------------------

def euler_bound(x, d, s, sn, u):
    """|euler_step in u − ref_euler| ≤ 3u·(r|x| + (1 − r)|D|) [r and 1 − r cast (u each), two
    products, the sum: C = 3 per term] + 2u64(|x| + |D|) [r = σ'/σ and 1 − r on the host] +
    6u64(|x| + (1 − r)(|x| + |D|)) [the reference's x − D, /σ, σ' − σ, ·, +] + tiny·(|x| + |D|)
    [a coefficient below the dtype's normal range]."""
    r = sn / s
    q = 1 - r
    return (3 * u * (r * np.abs(x) + q * np.abs(d)) + 2 * U64 * (np.abs(x) + np.abs(d))
            + 6 * U64 * (np.abs(x) + q * (np.abs(x) + np.abs(d))))


def heun_bound(x, d, dn, s, sn, u):
    """out = ½(x + x_e) + k(x_e − D'), k = ½(1 − σ/σ'): e_xe (the Euler bound) reaches out
    with weight ½ + |k|; ½'s sum, k's cast, difference, product and the final sum add
    u(½(|x| + |x_e|) + |k|(|x_e| + |D'|) + 2|k||x_e − D'| + |out|); k on the host u64·σ/σ'.
    Reference: 8u64·(1 + |k|)·(|x| + (1 − r)(|x| + |D|) + 2|k|(|x_e| + |D'|))."""
    r = sn / s
    k = 0.5 * (s / sn - 1)
    x_e = r * x + (1 - r) * d
    out = ref_heun(x, d, dn, s, sn)
    e_xe = euler_bound(x, d, s, sn, u)
    lib = ((0.5 + k) * e_xe + u * (0.5 * (np.abs(x) + np.abs(x_e)) + k * (np.abs(x_e) + np.abs(dn))
                                   + 2 * k * np.abs(x_e - dn) + np.abs(out))
           + 2 * U64 * (s / sn) * np.abs(x_e - dn))
    mags = np.abs(x) + (1 - r) * (np.abs(x) + np.abs(d)) + 2 * k * (np.abs(x_e) + np.abs(dn))
    return lib + 8 * U64 * (1 + k) * mags


def ancestral_bound(x, d, z, s, sn, eta, u, tiny):
    """Euler to σ_down (euler_bound with r = σ_down/σ), σ_up cast and the product (2u·σ_up|z|),
    the sum (u|out|); σ_down, σ_up on the host: 8u64(|x| + |D| + σ_up|z|) (σ_down's cancellation
    in σ'² − σ_up² costs u64·σ in σ_down, u64·|x − D| in the output, for η ≤ 1); a coefficient
    σ_down/σ below the normal range: tiny·(|x| + |D|)."""
    down, up = ref_ancestral_sigmas(s, sn, eta)
    out = ref_ancestral(x, d, z, s, sn, eta)
    return (euler_bound(x, d, s, down, u) + 2 * u * up * np.abs(z) + u * np.abs(out)
            + 8 * U64 * (np.abs(x) + np.abs(d) + up * np.abs(z))
            + 4 * tiny * (np.abs(x) + np.abs(d) + np.abs(z)))


def dpmpp_bound(x, d, d_prev, s, sn, s_prev, u):
    """x' = r·x + (1 − r)·D_i, D_i = D + c·Δ, Δ = D − D_prev, c = h/(2h_prev) (0 without a
    previous step or at σ' = 0). D_i: c cast, Δ, the product (3u|c||Δ|), the sum (u|D_i|); c on
    the host from two logs of rounded ratios: 4u64·|c|·(1 + 1/h + 1/h_prev)|Δ|. Then the Euler
    combination on D_i (3u per term, 2u64 host). Reference (λ's, h, r, e^{−h} − 1 with
    |e^{−h} − 1| ≥ 0.05 for σ' ≤ 0.95σ): 8u64·L·(1 + 1/h + 1/h_prev)·(|x| + |D| + |c||Δ|),
    L = 1 + Σ|log σ| (the λ's absolute errors)."""
    r = sn / s
    q = 1 - r
    pos = sn > 0
    h = np.log(s / np.where(pos, sn, 1.0))
    inv_h = np.where(pos, 1 / np.where(pos, h, 1.0), 0.0)
    if d_prev is None:
        c, delta, inv_hp, lp = 0.0 * h, 0.0 * d, 0.0, 0.0
    else:
        h_prev = np.log(s_prev / s)
        c, delta, inv_hp, lp = np.where(pos, h, 0.0) / (2 * h_prev), d - d_prev, 1 / h_prev, 1.0
    cd = np.abs(c) * np.abs(delta)
    d_i = np.abs(d) + cd
    e_d = 3 * u * cd + u * d_i + 4 * U64 * (1 + inv_h + inv_hp) * cd
    lib = 3 * u * (r * np.abs(x) + q * d_i) + q * e_d + 2 * U64 * (np.abs(x) + d_i)
    L = 1 + np.abs(np.log(s)) + np.abs(np.log(np.where(pos, sn, 1.0))) + lp * np.abs(
        np.log(s_prev if d_prev is not None else 1.0))
    return lib + 8 * U64 * L * (1 + inv_h + inv_hp) * (np.abs(x) + d_i)


def flow_bound(x, v, t, tn, u):
    """dt cast (u), the product (u), the sum (u|out|); reference and host dt: 2u64(|dt·u| + |out|)."""
    dv = np.abs((tn - t) * v)
    out = np.abs(ref_flow_euler(x, v, t, tn))
    return 2 * u * dv + u * out + 2 * U64 * (dv + out)


# ----- differential tests, every backend row -------------------------------------------------

FRAC0 = st.one_of(st.just(0.0), st.just(1.0), st.floats(0.001, 1.0))  # σ' ≥ 5e-5: σ'² normal


@ROWS
@given(b=arrays(3), per_sample=st.booleans(), data=st.data())
def test_euler_and_heun_match_edm_algorithm_1(target, b, per_sample, data):
    """euler_step and heun_step on the row against ref_euler / ref_heun (x + (σ' − σ)·d form)
    within euler_bound / heun_bound; Heun without denoised_next at σ' = 0 is Euler."""
    x, d, dn = (target.rounded(a) for a in b)
    s, sn = _levels(data, x.shape[0], per_sample, st.floats(0.05, 80), FRAC0)
    S, SN = _col(s, x), _col(sn, x)
    X, Dd, DN = (target.put(a) for a in (x, d, dn))
    u = U[target.dtype]
    got = rd.euler_step(X, Dd, _arg(target, s), _arg(target, sn))
    res = assert_close(got, ref_euler(x, d, S, SN), dtype=target.dtype, device=target.device,
                       bound=euler_bound(x, d, S, SN, u) + 16 * TINY[target.dtype])
    _record("euler", target, res)
    s2, sn2 = _levels(data, x.shape[0], per_sample, st.floats(0.05, 80), st.floats(0.02, 1.0))
    S2, SN2 = _col(s2, x), _col(sn2, x)
    got = rd.heun_step(X, Dd, _arg(target, s2), _arg(target, sn2), DN)
    res = assert_close(got, ref_heun(x, d, dn, S2, SN2), dtype=target.dtype,
                       device=target.device,
                       bound=heun_bound(x, d, dn, S2, SN2, u) + 16 * TINY[target.dtype])
    _record("heun", target, res)
    got = rd.heun_step(X, Dd, 2.0, 0.0)
    assert_close(got, rd.euler_step(X, Dd, 2.0, 0.0), dtype=target.dtype,
                 device=target.device, bound=0.0)


@ROWS
@given(b=arrays(3), per_sample=st.booleans(), eta=st.sampled_from([0.0, 0.5, 1.0]),
       data=st.data())
def test_euler_ancestral_matches_k_diffusion(target, b, per_sample, eta, data):
    """euler_ancestral_step and ancestral_sigmas on the row against k-diffusion's split and
    step (ref_ancestral) within ancestral_bound; σ_down, σ_up within 8u64 of the reference."""
    x, d, z = (target.rounded(a) for a in b)
    s, sn = _levels(data, x.shape[0], per_sample, st.floats(0.05, 80), FRAC0)
    S, SN = _col(s, x), _col(sn, x)
    X, Dd, Z = (target.put(a) for a in (x, d, z))
    got = rd.euler_ancestral_step(X, Dd, _arg(target, s), _arg(target, sn), Z, eta=eta)
    bound = ancestral_bound(x, d, z, S, SN, eta, U[target.dtype], TINY[target.dtype])
    res = assert_close(got, ref_ancestral(x, d, z, S, SN, eta), dtype=target.dtype,
                       device=target.device, bound=bound + 16 * TINY[target.dtype])
    _record("ancestral", target, res)
    # η = 0 is the Euler step bit for bit on the row (σ_down = √(σ'²) = σ')
    want = rd.euler_step(X, Dd, _arg(target, s), _arg(target, sn))
    got = rd.euler_ancestral_step(X, Dd, _arg(target, s), _arg(target, sn), eta=0.0)
    assert_close(got, want, dtype=target.dtype, device=target.device, bound=0.0)
    down, up = rd.ancestral_sigmas(_arg(target, s), _arg(target, sn), eta)
    rdown, rup = ref_ancestral_sigmas(np.asarray(s), np.asarray(sn), eta)
    for g, w in ((down, rdown), (up, rup)):
        g = np.asarray(to_numpy(g) if not isinstance(g, float) else g, dtype=np.float64)
        assert np.all(np.abs(g.reshape(w.shape) - w) <= 8 * U64 * (np.asarray(s) + 1e-300))


@ROWS
@given(b=arrays(3), per_sample=st.booleans(), with_state=st.booleans(), data=st.data())
def test_dpmpp_2m_matches_dpm_solver_pp_algorithm_2(target, b, per_sample, with_state, data):
    """dpmpp_2m_step on the row against ref_dpmpp (λ/h/r form) within dpmpp_bound; the returned
    state is (denoised, σ); first order without a state or where σ' = 0."""
    x, d, dp = (target.rounded(a) for a in b)
    frac = st.one_of(st.just(0.0), st.floats(0.01, 0.95))
    s, sn = _levels(data, x.shape[0], per_sample, st.floats(0.05, 40), frac)
    ratio = np.array([data.draw(st.floats(1.05, 20)) for _ in range(x.shape[0])])
    sp = s * ratio if per_sample else s * float(ratio[0])
    S, SN, SP = _col(s, x), _col(sn, x), _col(sp, x)
    X, Dd, DP = (target.put(a) for a in (x, d, dp))
    state = rd.MultistepState(DP, _arg(target, sp)) if with_state else None
    got, new = rd.dpmpp_2m_step(X, Dd, _arg(target, s), _arg(target, sn), state)
    want = ref_dpmpp(x, d, dp if with_state else None, S, SN, SP)
    bound = dpmpp_bound(x, d, dp if with_state else None, S, SN, SP, U[target.dtype])
    res = assert_close(got, want, dtype=target.dtype, device=target.device,
                       bound=bound + 16 * TINY[target.dtype])
    _record("dpmpp_2m", target, res)
    assert isinstance(new, rd.MultistepState) and new.denoised is Dd
    assert np.array_equal(np.asarray(to_numpy(new.sigma) if not isinstance(new.sigma, float)
                                     else new.sigma).reshape(-1), np.asarray(s).reshape(-1))


@ROWS
@given(b=arrays(2), per_sample=st.booleans(), data=st.data())
def test_flow_euler_matches_the_flow_ode_euler_step(target, b, per_sample, data):
    """flow_euler_step on the row against x + (t' − t)·u in float64 within flow_bound."""
    x, v = (target.rounded(a) for a in b)
    t, tn = _levels(data, x.shape[0], per_sample, st.floats(0.001, 1.0), FRAC0)
    T, TN = _col(t, x), _col(tn, x)
    got = rd.flow_euler_step(target.put(x), target.put(v), _arg(target, t), _arg(target, tn))
    res = assert_close(got, ref_flow_euler(x, v, T, TN), dtype=target.dtype,
                       device=target.device,
                       bound=flow_bound(x, v, T, TN, U[target.dtype]) + 16 * TINY[target.dtype])
    _record("flow_euler", target, res)


def test_bounds_are_tight_enough_to_catch_slips():
    """Formula slips exceed the float32 (and float16) bounds by orders of magnitude: DPM++ with
    r in place of 1/r, Euler with d divided by σ' instead of σ, Heun's d' divided by σ, the
    ancestral σ_up² over σ'² instead of σ², the flow step with t' + t."""
    rng = np.random.default_rng(5)
    x, d, dp, dn, z = rng.standard_normal((5, 2, 4))
    s, sn, sp = 3.0, 1.0, 12.0
    for dtype in ("float32", "float16"):
        u = U[dtype]
        want = ref_dpmpp(x, d, dp, s, sn, sp)
        h, h_prev = math.log(s / sn), math.log(sp / s)
        c_slip = h_prev / (2 * h)                                   # r instead of 1/r
        slip = (sn / s) * x + (1 - sn / s) * (d + c_slip * (d - dp))
        bnd = dpmpp_bound(x, d, dp, s, sn, sp, u)
        assert np.max(np.abs(slip - want) / bnd) > 100
        bnd = euler_bound(x, d, s, sn, u)
        slip = x + (sn - s) * (x - d) / sn
        assert np.max(np.abs(slip - ref_euler(x, d, s, sn)) / bnd) > 100
        bnd = heun_bound(x, d, dn, s, sn, u)
        x_e = ref_euler(x, d, s, sn)
        slip = x + (sn - s) * 0.5 * ((x - d) / s + (x_e - dn) / s)
        assert np.max(np.abs(slip - ref_heun(x, d, dn, s, sn)) / bnd) > 100
        bnd = ancestral_bound(x, d, z, s, sn, 1.0, u, TINY[dtype])
        up = min(sn, math.sqrt(sn**2 * (s**2 - sn**2) / sn**2))
        down = math.sqrt(max(sn**2 - up**2, 0.0))
        slip = x + (down - s) * (x - d) / s + up * z
        assert np.max(np.abs(slip - ref_ancestral(x, d, z, s, sn, 1.0)) / bnd) > 100
        slip = x + (0.25 + 0.5) * z
        bnd = flow_bound(x, z, 0.5, 0.25, u)
        assert np.max(np.abs(slip - ref_flow_euler(x, z, 0.5, 0.25)) / bnd) > 100
    # a relative slip of 1e-5 in DPM++'s c fails the float32 bound
    c = math.log(s / sn) / (2 * math.log(sp / s)) * (1 + 1e-5)
    slip = (sn / s) * x + (1 - sn / s) * (d + c * (d - dp))
    bnd = dpmpp_bound(x, d, dp, s, sn, sp, U["float32"])
    assert np.max(np.abs(slip - ref_dpmpp(x, d, dp, s, sn, sp)) / bnd) > 1


# ----- errors -------------------------------------------------------------------------------

X1 = np.ones((2, 3))
ST = rd.MultistepState(X1, 4.0)

ERRORS = [
    ("sigma_next>sigma", lambda: rd.euler_step(X1, X1, 1.0, 2.0), ValueError, "sigma_next"),
    ("sigma=0", lambda: rd.euler_step(X1, X1, 0.0, 0.0), ValueError, "sigma"),
    ("sigma<0", lambda: rd.heun_step(X1, X1, -1.0, 0.0), ValueError, "sigma"),
    ("heun next at 0", lambda: rd.heun_step(X1, X1, 1.0, 0.0, X1), ValueError, "sigma_next"),
    ("heun next missing", lambda: rd.heun_step(X1, X1, 1.0, 0.5), ValueError, "denoised_next"),
    ("eta<0", lambda: rd.euler_ancestral_step(X1, X1, 2.0, 1.0, X1, eta=-0.1), ValueError,
     "eta"),
    ("ancestral eta<0", lambda: rd.ancestral_sigmas(2.0, 1.0, -1.0), ValueError, "eta"),
    ("noise missing", lambda: rd.euler_ancestral_step(X1, X1, 2.0, 1.0), ValueError, "noise"),
    ("state sigma<=sigma", lambda: rd.dpmpp_2m_step(X1, X1, 2.0, 1.0,
                                                    rd.MultistepState(X1, 2.0)),
     ValueError, "state.sigma"),
    ("state sigma<sigma", lambda: rd.dpmpp_2m_step(X1, X1, 2.0, 1.0,
                                                   rd.MultistepState(X1, 1.0)),
     ValueError, "state.sigma"),
    ("state type", lambda: rd.dpmpp_2m_step(X1, X1, 2.0, 1.0, (X1, 4.0)), TypeError, "state"),
    ("state shape", lambda: rd.dpmpp_2m_step(X1, X1, 2.0, 1.0,
                                             rd.MultistepState(np.ones((2, 4)), 4.0)),
     ValueError, "state.denoised"),
    ("first_order type", lambda: rd.dpmpp_2m_step(X1, X1, 2.0, 1.0, ST, first_order=1),
     TypeError, "first_order"),
    ("time_next>time", lambda: rd.flow_euler_step(X1, X1, 0.5, 0.7), ValueError, "time_next"),
    ("time>1", lambda: rd.flow_euler_step(X1, X1, 1.5, 0.7), ValueError, "time"),
    ("time=0", lambda: rd.flow_euler_step(X1, X1, 0.0, 0.0), ValueError, "time"),
    ("mixed dtypes", lambda: rd.euler_step(X1, X1.astype(np.float32), 2.0, 1.0),
     (TypeError, ValueError), "denoised"),
    ("sigma inf", lambda: rd.euler_step(X1, X1, math.inf, 1.0), ValueError, "sigma"),
]


@pytest.mark.parametrize("make, error, message", [e[1:] for e in ERRORS],
                         ids=[e[0] for e in ERRORS])
def test_argument_errors(make, error, message):
    """Each bad input raises its error class, and the message names the argument."""
    with pytest.raises(error, match=message.replace(".", r"\.")):
        make()
