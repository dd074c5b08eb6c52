"""Gaussian paths and their predictions (refdiff.paths) and the noise-level lists
(refdiff.noise_levels).

- Hand values of tiny cases, derived in the comments.
- Hypothesis invariants in float64, each within a first-order bound: path_x0_eps inverts
  path_prediction; change_path keeps σ and round-trips; CFG applied to ε, x̂_0, v or u gives
  the same guided x̂_0 (the conversions are affine).
- Differential tests on every backend row: path_x0_eps, path_prediction, convert_prediction,
  change_path and the array forms of path_coefficients/path_sigma/path_level against the
  formulas written here in NumPy float64, on the row's rounded inputs, within per-example
  bounds (C·u·Σ|terms|/denominator, C written at each helper); dtype, shape, device checked.
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

U = {"float64": 2.0**-53, "float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}
TINY = {"float64": 2.0**-1074, "float32": 2.0**-149, "float16": 2.0**-24, "bfloat16": 2.0**-133}
U64 = U["float64"]
ELEM = st.floats(-3.0, 3.0, allow_nan=False, allow_infinity=False, allow_subnormal=False)
SHAPES = st.sampled_from([(1, 2), (3, 4), (2, 2, 3)])  # few: JAX compiles per shape
ROWS = settings(max_examples=20)
TYPES = ("epsilon", "sample", "v_prediction", "velocity")
# levels with a, b ≥ ~0.05 (both predictions invertible, conditioning ≤ 20)
LEVELS = {"vp": st.floats(0.01, 0.99), "ve": st.floats(0.05, 20.0), "flow": st.floats(0.05, 0.95)}


@st.composite
def arrays(draw, n):
    shape = draw(SHAPES)
    return [flush_tiny(draw(hnp.arrays(np.float64, shape, elements=ELEM))) for _ in range(n)]


@st.composite
def path_level(draw):
    path = draw(st.sampled_from(rd.PATHS))
    return path, draw(LEVELS[path])


_WORST: dict = {}

_report_worst = worst_ratio_report(_WORST)  # REFDIFF_REPORT_RATIOS=1 pytest -s prints them


# ----- hand values: paths ---------------------------------------------------------------------

def test_path_hand_values():
    """The table of the module docstring at simple levels, and the limits σ = 0, ∞."""
    assert rd.path_coefficients("vp", 0.25) == (0.5, math.sqrt(0.75))
    assert rd.path_coefficients("ve", 2.0) == (1.0, 2.0)
    assert rd.path_coefficients("flow", 0.25) == (0.75, 0.25)
    assert rd.path_sigma("vp", 0.2) == 2.0 and rd.path_sigma("vp", 1.0) == 0.0
    assert rd.path_sigma("ve", 3.0) == 3.0 and rd.path_sigma("flow", 0.5) == 1.0
    assert rd.path_sigma("vp", 0.0) == math.inf and rd.path_sigma("flow", 1.0) == math.inf
    assert rd.path_level("vp", 2.0) == 0.2 and rd.path_level("flow", 3.0) == 0.75
    assert rd.path_level("ve", 3.0) == 3.0
    assert rd.path_level("vp", math.inf) == 0.0 and rd.path_level("flow", math.inf) == 1.0
    # σ = 3: x_flow = x/(1 + 3) at t = 3/4; x_VP = x·√ᾱ = x/√10 at ᾱ = 1/10
    x, t = rd.change_path(np.array([1.0]), "ve", 3.0, "flow")
    assert np.array_equal(x, [0.25]) and t == 0.75
    x, ab = rd.change_path(np.array([1.0]), "ve", 3.0, "vp")
    assert math.isclose(ab, 0.1, rel_tol=2 * U64)
    np.testing.assert_allclose(x, [1 / math.sqrt(10)], rtol=4 * U64, atol=0)
    x, s = rd.change_path(np.array([0.25]), "flow", 0.75, "ve")
    assert np.array_equal(x, [1.0]) and s == 3.0


def test_prediction_hand_values():
    """(a, b) = (0.6, 0.8) (c = 1), x_0 = 1, ε = 0: x = 0.6, v = −0.8, u = −1; back again."""
    a, b = 0.6, 0.8
    x0, eps = np.array([1.0]), np.array([0.0])
    x = a * x0 + b * eps
    want = {"epsilon": 0.0, "sample": 1.0, "v_prediction": -0.8, "velocity": -1.0}
    for ptype, v in want.items():
        p = rd.path_prediction(x0, eps, a, b, ptype)
        np.testing.assert_allclose(p, [v], rtol=0, atol=4 * U64)
        g0, ge = rd.path_x0_eps(x, p, a, b, ptype)
        np.testing.assert_allclose(g0, [1.0], rtol=0, atol=8 * U64)
        np.testing.assert_allclose(ge, [0.0], rtol=0, atol=8 * U64)
    # ε-model at (0.6, 0.8), x = 1, ε̂ = 1: x̂_0 = (1 − 0.8)/0.6 = 1/3
    np.testing.assert_allclose(rd.path_x0_eps(np.array([1.0]), np.array([1.0]), a, b)[0],
                               [1 / 3], rtol=4 * U64, atol=0)
    # x_0-model: ε̂ = (1 − 0.6·1)/0.8 = 0.5
    np.testing.assert_allclose(rd.path_x0_eps(np.array([1.0]), np.array([1.0]), a, b, "sample")[1],
                               [0.5], rtol=4 * U64, atol=0)
    # velocity at (1/2, 1/2): x̂_0 = (x − b·u)/(a + b), ε̂ = (x + a·u)/(a + b)
    g0, ge = rd.path_x0_eps(np.array([0.5]), np.array([1.0]), 0.5, 0.5, "velocity")
    assert np.array_equal(g0, [0.0]) and np.array_equal(ge, [1.0])
    # ε-model at a = b = 1 (VE σ = 1) as a velocity: x̂_0 = 1 − 0 = 1, u = 0 − 1
    got = rd.convert_prediction(np.array([1.0]), np.array([0.0]), 1.0, 1.0, "epsilon", "velocity")
    assert np.array_equal(got, [-1.0])


# ----- hand values: noise levels --------------------------------------------------------------

def test_karras_sigmas_hand_values():
    """σ_min = 1, σ_max = 128, ρ = 7: 128^{1/7} = 2, so n = 3 has the middle ((2 + 1)/2)^7 =
    1.5^7 = 17.0859375; n = 1 is σ_max alone, n = 2 the two ends; final "sigma_min" appends σ_min."""
    assert list(rd.karras_sigmas(1, 1.0, 128.0)) == [128.0, 0.0]
    assert list(rd.karras_sigmas(2, 1.0, 128.0)) == [128.0, 1.0, 0.0]
    got = rd.karras_sigmas(3, 1.0, 128.0)
    assert got[0] == 128.0 and got[2] == 1.0 and got[3] == 0.0
    assert math.isclose(got[1], 1.5**7, rel_tol=16 * U64)
    got = rd.karras_sigmas(3, 1.0, 128.0, final="sigma_min")
    assert got[-1] == 1.0 and got.dtype == np.float64 and got.shape == (4,)
    # ρ = 1: evenly spaced
    np.testing.assert_allclose(rd.karras_sigmas(5, 1.0, 5.0, rho=1.0), [5, 4, 3, 2, 1, 0],
                               rtol=4 * U64, atol=0)


def test_shifts_hand_values():
    """SD3's shift: s·t/(1 + (s − 1)t): t = 1/2, s = 3 → 3/4; s = 1 the identity; twice is s².
    FLUX's μ is linear in the sequence length: 256 → 0.5, 4096 → 1.15, 1024 → 0.5 +
    0.65·768/3840 = 0.63; its shift at e = 1 is SD3's at s = e^μ."""
    assert rd.time_shift(0.5, 3.0) == 0.75 and rd.time_shift(0.3, 1.0) == 0.3
    assert rd.time_shift(0.0, 3.0) == 0.0 and rd.time_shift(1.0, 3.0) == 1.0
    for t in (0.1, 0.5, 0.9):
        assert math.isclose(rd.time_shift(rd.time_shift(t, 2.0), 2.0), rd.time_shift(t, 4.0),
                            rel_tol=16 * U64)
        for mu in (-0.5, 0.63, 1.15):
            assert math.isclose(rd.exponential_time_shift(t, mu),
                                rd.time_shift(t, math.exp(mu)), rel_tol=16 * U64)
    assert rd.exponential_time_shift(0.0, 1.0) == 0.0
    assert rd.exponential_time_shift(1.0, 1.0) == 1.0
    assert rd.dynamic_shift(256) == 0.5 and math.isclose(rd.dynamic_shift(4096), 1.15,
                                                          rel_tol=4 * U64)
    assert math.isclose(rd.dynamic_shift(1024), 0.63, rel_tol=4 * U64)
    arr = rd.time_shift(np.array([0.5, 0.25]), 3.0)
    np.testing.assert_allclose(arr, [0.75, 0.5], rtol=4 * U64, atol=0)


def test_flow_times_and_vp_sigmas_hand_values():
    """flow_times(3, shift=3, t_min=1/2): linspace(1, 1/2, 3) = 1, 3/4, 1/2 shifted to 1, 9/10,
    3/4, then 0 (or the shifted t_min 3/4 for "sigma_min"); μ = log 3 is the shift 3. vp_sigmas
    are √((1 − ᾱ)/ᾱ) at the listed timesteps, then 0 or σ(t = 0)."""
    np.testing.assert_allclose(rd.flow_times(3, shift=3.0, t_min=0.5), [1.0, 0.9, 0.75, 0.0],
                               rtol=4 * U64, atol=0)
    got = rd.flow_times(3, shift=3.0, t_min=0.5, final="sigma_min")
    assert math.isclose(got[-1], 0.75, rel_tol=4 * U64) and got.shape == (4,)
    np.testing.assert_allclose(rd.flow_times(3, mu=math.log(3.0), t_min=0.5),
                               [1.0, 0.9, 0.75, 0.0], rtol=16 * U64, atol=0)
    assert list(rd.flow_times(1)) == [1.0, 0.0]
    np.testing.assert_allclose(rd.flow_times(4, t_min=0.25), [1.0, 0.75, 0.5, 0.25, 0.0],
                               rtol=4 * U64, atol=0)
    sched = rd.linear_schedule(1000)
    got = rd.vp_sigmas(sched, [999, 499, 0], final="sigma_min")
    want = [math.sqrt((1 - sched.alpha_bar(t)) / sched.alpha_bar(t)) for t in (999, 499, 0, 0)]
    np.testing.assert_allclose(got, want, rtol=4 * U64, atol=0)
    assert rd.vp_sigmas(sched, [999, 0])[-1] == 0.0


# ----- Hypothesis invariants (float64) --------------------------------------------------------

def _x0_terms(ptype, x, o, a, b):
    """Σ|terms|/denominator of x̂_0 formed from (x, prediction): the conversion's conditioning."""
    c2 = a * a + b * b
    return {"epsilon": (np.abs(x) + b * np.abs(o)) / a, "sample": np.abs(o),
            "velocity": (np.abs(x) + b * np.abs(o)) / (a + b),
            "v_prediction": (a * np.abs(x) + b * math.sqrt(c2) * np.abs(o)) / c2}[ptype]


def _eps_terms(ptype, x, o, a, b):
    c2 = a * a + b * b
    return {"epsilon": np.abs(o), "sample": (np.abs(x) + a * np.abs(o)) / b,
            "velocity": (np.abs(x) + a * np.abs(o)) / (a + b),
            "v_prediction": (b * np.abs(x) + a * math.sqrt(c2) * np.abs(o)) / c2}[ptype]


@given(b=arrays(2), pl=path_level(), ptype=st.sampled_from(TYPES))
def test_path_x0_eps_inverts_path_prediction(b, pl, ptype):
    """x = a·x_0 + b·ε, p = path_prediction(x_0, ε), path_x0_eps(x, p) = (x_0, ε) within
    8·u64·(terms of the forward map, |x_0| + |ε| + |p|, through the inverse's
    coefficients) (C = 8: ≤ 3 roundings forming x and p, ≤ 5 inverting)."""
    x0, eps = b
    a_, b_ = rd.path_coefficients(*pl)
    x = a_ * x0 + b_ * eps
    p = rd.path_prediction(x0, eps, a_, b_, ptype)
    g0, ge = rd.path_x0_eps(x, p, a_, b_, ptype)
    mag = np.abs(x0) + np.abs(eps)
    xm = a_ * np.abs(x0) + b_ * np.abs(eps)
    pm = np.abs(p) + mag
    assert np.all(np.abs(g0 - x0) <= 8 * U64 * (_x0_terms(ptype, xm, pm, a_, b_) + mag))
    assert np.all(np.abs(ge - eps) <= 8 * U64 * (_eps_terms(ptype, xm, pm, a_, b_) + mag))


@given(b=arrays(1), pl=path_level(), new=st.sampled_from(rd.PATHS))
def test_change_path_keeps_sigma_and_round_trips(b, pl, new):
    """change_path to any path keeps σ (relative 16·u64·(1 + 1/σ²): ᾱ = 1/(1 + σ²) holds 1 − ᾱ
    to an absolute u64) and back returns x within 8·u64·(1 + 1/σ²)·|x| and the level."""
    (x,) = b
    path, lev = pl
    sigma = rd.path_sigma(path, lev)
    kap = 1 + 1 / sigma**2 + sigma**2 / (1 + sigma**2)
    x1, lev1 = rd.change_path(x, path, lev, new)
    assert math.isclose(rd.path_sigma(new, lev1), sigma, rel_tol=16 * U64 * kap)
    x2, lev2 = rd.change_path(x1, new, lev1, path)
    assert np.all(np.abs(x2 - x) <= 8 * U64 * kap * np.abs(x))
    assert math.isclose(lev2, lev, rel_tol=16 * U64 * kap)
    # the scale is (a' + b')/(a + b) = √(a'² + b'²)/√(a² + b²)
    a0, b0 = rd.path_coefficients(path, lev)
    a1, b1 = rd.path_coefficients(new, lev1)
    k = math.hypot(a1, b1) / math.hypot(a0, b0)
    assert np.all(np.abs(x1 - k * x) <= 8 * U64 * kap * np.abs(k * x))


@given(b=arrays(3), pl=path_level(), ptype=st.sampled_from(TYPES), s=st.floats(-10, 10))
def test_cfg_in_any_prediction_space_gives_the_same_guided_x0(b, pl, ptype, s):
    """x̂_0 of cfg(p_u, p_c, s) for predictions of type ``ptype`` = cfg(x̂_0(p_u), x̂_0(p_c), s):
    the conversions are affine in the prediction with weights summing to 1 on x. Bound
    8·u64·(1 + 2|s|)·(x̂_0's terms of |p_u| + |p_c|, and |x̂_0,u| + |x̂_0,c|) (the lerp: 4
    roundings, the conversion: ≤ 4, each on terms ≤ (1 + 2|s|)·the inputs')."""
    x, pu, pc = b
    a_, b_ = rd.path_coefficients(*pl)
    via_type = rd.path_x0_eps(x, rd.cfg(pu, pc, s), a_, b_, ptype)[0]
    x0u, x0c = (rd.path_x0_eps(x, p, a_, b_, ptype)[0] for p in (pu, pc))
    via_x0 = rd.cfg(x0u, x0c, s)
    m = np.abs(pu) + np.abs(pc)
    bound = 8 * U64 * (1 + 2 * abs(s)) * (_x0_terms(ptype, np.abs(x), m, a_, b_)
                                          + np.abs(x0u) + np.abs(x0c)) + 1e-300
    assert np.all(np.abs(via_type - via_x0) <= bound)


# ----- references and bounds for the backend rows ----------------------------------------------

def ref_x0_eps(x, o, a, b, ptype):
    """The inverse of x = a·x_0 + b·ε given a prediction (Salimans & Ho arXiv:2202.00512v2 App. D
    for v with c = √(a² + b²); Liu et al. arXiv:2209.03003v1 Eq. 1 for u = ε − x_0)."""
    if ptype == "epsilon":
        return (x - b * o) / a, o
    if ptype == "sample":
        return o, (x - a * o) / b
    if ptype == "velocity":                      # x = a·x_0 + b·(u + x_0) = (a + b)·x_0 + b·u
        return (x - b * o) / (a + b), (x + a * o) / (a + b)
    c = math.hypot(a, b)                          # c·v = a·ε − b·x_0 and x = a·x_0 + b·ε
    return (a * x - b * c * o) / c**2, (b * x + a * c * o) / c**2


def ref_prediction(x0, eps, a, b, ptype):
    c = math.hypot(a, b)
    return {"epsilon": eps, "sample": x0, "velocity": eps - x0,
            "v_prediction": (a * eps - b * x0) / c}[ptype]


def conversion_bound(x, o, a, b, ptype, u):
    """|path_x0_eps in u − ref| ≤ (5u + 8u64)·terms/denominator for a formed output (two
    coefficients cast, a product, a difference, a quotient or product: 5 roundings; the
    float64 reference and host coefficients: 8u64); a passed-through output: 0."""
    c = (5 * u + 8 * U64)
    e0 = 0.0 * x if ptype == "sample" else c * _x0_terms(ptype, x, o, a, b)
    ee = 0.0 * x if ptype == "epsilon" else c * _eps_terms(ptype, x, o, a, b)
    return e0, ee


def _pred_weights(ptype, a, b):
    c = math.hypot(a, b)
    return {"epsilon": (0.0, 1.0), "sample": (1.0, 0.0), "velocity": (1.0, 1.0),
            "v_prediction": (b / c, a / c)}[ptype]


@ROWS
@given(b=arrays(2), pl=path_level(), ptype=st.sampled_from(TYPES), tgt=st.sampled_from(TYPES))
def test_conversions_match_the_formulas_on_every_row(target, b, pl, ptype, tgt):
    """path_x0_eps, path_prediction and convert_prediction on the row against ref_x0_eps /
    ref_prediction in float64, within conversion_bound (prediction: 5u on its weighted terms;
    convert: the x̂_0, ε̂ bounds through the target's weights, plus 5u on its terms)."""
    x, o = (target.rounded(v) for v in b)
    a_, b_ = rd.path_coefficients(*pl)
    X, O = target.put(x), target.put(o)
    u, tiny = U[target.dtype], 16 * TINY[target.dtype]
    w0, w1 = ref_x0_eps(x, o, a_, b_, ptype)
    e0, ee = conversion_bound(np.abs(x), np.abs(o), a_, b_, ptype, u)
    g0, ge = rd.path_x0_eps(X, O, a_, b_, ptype)
    r0 = assert_close(g0, w0, dtype=target.dtype, device=target.device, bound=e0 + tiny)
    r1 = assert_close(ge, w1, dtype=target.dtype, device=target.device, bound=ee + tiny)
    p0, p1 = _pred_weights(tgt, a_, b_)
    # path_prediction on the rounded (x, o) read as (x_0, ε)
    wp = ref_prediction(x, o, a_, b_, tgt)
    ep = (5 * u + 4 * U64) * (p0 * np.abs(x) + p1 * np.abs(o)) * (tgt in ("velocity",
                                                                          "v_prediction"))
    r2 = assert_close(rd.path_prediction(X, O, a_, b_, tgt), wp, dtype=target.dtype,
                      device=target.device, bound=ep + tiny)
    wc = ref_prediction(w0, w1, a_, b_, tgt)
    ec = p0 * e0 + p1 * ee + (5 * u + 4 * U64) * (p0 * np.abs(w0) + p1 * np.abs(w1)) * (
        tgt in ("velocity", "v_prediction"))
    r3 = assert_close(rd.convert_prediction(X, O, a_, b_, ptype, tgt), wc, dtype=target.dtype,
                      device=target.device, bound=ec + tiny)
    _WORST.setdefault(("conversions", target.id), []).extend(
        [r["ratio"] for r in (r0, r1, r2, r3)])


@ROWS
@given(b=arrays(1), pl=path_level(), new=st.sampled_from(rd.PATHS), data=st.data())
def test_change_path_and_array_levels_on_every_row(target, b, pl, new, data):
    """change_path on the row against x·√(a'² + b'²)/√(a² + b²) in float64, within (2u +
    8u64)·|x'| (k cast, the product); path_coefficients, path_sigma, path_level of an array
    of the row's levels against the table on the rounded levels, within 4u·|value| (1 − ℓ, a
    quotient, +, a square and a square root: ≤ 3 roundings), dtype and device kept."""
    (x,) = (target.rounded(v) for v in b)
    path, lev = pl
    got, lev1 = rd.change_path(target.put(x), path, lev, new)
    a0, b0 = rd.path_coefficients(path, lev)
    a1, b1 = rd.path_coefficients(new, lev1)
    want = x * (math.hypot(a1, b1) / math.hypot(a0, b0))
    u, tiny = U[target.dtype], 16 * TINY[target.dtype]
    res = assert_close(got, want, dtype=target.dtype, device=target.device,
                       bound=(2 * u + 8 * U64) * np.abs(want) + tiny)
    levels = target.rounded(np.array([data.draw(LEVELS[path]) for _ in range(3)]))
    L = target.put(levels)
    ref = {"vp": lambda: (np.sqrt(levels), np.sqrt(1 - levels)),
           "ve": lambda: (np.ones(3), levels), "flow": lambda: (1 - levels, levels)}[path]()
    for g, w in zip(rd.path_coefficients(path, L), ref):
        assert_close(g, w, dtype=target.dtype, device=target.device,
                     bound=4 * u * np.abs(w) + tiny)
    sig = ref[1] / ref[0]
    assert_close(rd.path_sigma(path, L), sig, dtype=target.dtype, device=target.device,
                 bound=4 * u * sig + tiny)
    S = target.put(target.rounded(sig))
    sr = target.rounded(sig)
    back = {"vp": 1 / (1 + sr**2), "ve": sr, "flow": sr / (1 + sr)}[path]
    assert_close(rd.path_level(path, S), back, dtype=target.dtype, device=target.device,
                 bound=4 * u * back + tiny)
    _WORST.setdefault(("change_path", target.id), []).append(res["ratio"])


def test_bounds_are_tight_enough_to_catch_slips():
    """Slips exceed the float32 bounds: v's x̂_0 without the 1/c² (c ≠ 1 on VE), velocity's
    x̂_0 over a instead of a + b, change_path by √ᾱ'/√ᾱ (the VP scale) on the flow path."""
    rng = np.random.default_rng(2)
    x, o = rng.standard_normal((2, 2, 4))
    a, b = 1.0, 2.0                                   # VE σ = 2: c² = 5
    u = U["float32"]
    want, _ = ref_x0_eps(x, o, a, b, "v_prediction")
    e0, _ = conversion_bound(np.abs(x), np.abs(o), a, b, "v_prediction", u)
    slip = a * x - b * math.hypot(a, b) * o
    assert np.max(np.abs(slip - want) / e0) > 1e3
    want, _ = ref_x0_eps(x, o, a, b, "velocity")
    e0, _ = conversion_bound(np.abs(x), np.abs(o), a, b, "velocity", u)
    assert np.max(np.abs((x - b * o) / a - want) / e0) > 1e3
    got, t = rd.change_path(x, "ve", 2.0, "flow")
    slip = x * math.sqrt(1 / 5)                       # x·√ᾱ: the VP scale
    assert np.max(np.abs(slip - got) / ((2 * u + 8 * U64) * np.abs(got))) > 1e3


# ----- errors ---------------------------------------------------------------------------------

X1 = np.ones((2, 3))
SCHED = rd.linear_schedule(100)

ERRORS = [
    ("path", lambda: rd.path_coefficients("edm", 0.5), ValueError, "path"),
    ("vp level", lambda: rd.path_coefficients("vp", 1.5), ValueError, "level"),
    ("flow level", lambda: rd.path_sigma("flow", -0.1), ValueError, "level"),
    ("ve inf", lambda: rd.change_path(X1, "ve", math.inf, "vp"), ValueError, "level"),
    ("new_path", lambda: rd.change_path(X1, "ve", 1.0, "edm"), ValueError, "new_path"),
    ("sigma<0", lambda: rd.path_level("vp", -1.0), ValueError, "sigma"),
    ("prediction_type", lambda: rd.path_x0_eps(X1, X1, 0.5, 0.5, "score"), ValueError,
     "prediction_type"),
    ("a=0 epsilon", lambda: rd.path_x0_eps(X1, X1, 0.0, 1.0, "epsilon"), ValueError, "a"),
    ("b=0 sample", lambda: rd.path_x0_eps(X1, X1, 1.0, 0.0, "sample"), ValueError, "b"),
    ("a=b=0", lambda: rd.path_prediction(X1, X1, 0.0, 0.0, "velocity"), ValueError, "a and b"),
    ("target", lambda: rd.convert_prediction(X1, X1, 0.5, 0.5, "epsilon", "x0"), ValueError,
     "target"),
    ("shape", lambda: rd.path_x0_eps(X1, np.ones((2, 4)), 0.5, 0.5), ValueError,
     "model_output"),
    ("karras n", lambda: rd.karras_sigmas(0, 0.1, 10.0), ValueError, "n"),
    ("karras min>=max", lambda: rd.karras_sigmas(5, 10.0, 10.0), ValueError, "sigma_max"),
    ("karras min<=0", lambda: rd.karras_sigmas(5, 0.0, 10.0), ValueError, "sigma_min"),
    ("karras rho", lambda: rd.karras_sigmas(5, 0.1, 10.0, rho=0.0), ValueError, "rho"),
    ("final", lambda: rd.karras_sigmas(5, 0.1, 10.0, final="one"), ValueError, "final"),
    ("vp_sigmas order", lambda: rd.vp_sigmas(SCHED, [10, 50]), ValueError, "timesteps"),
    ("vp_sigmas range", lambda: rd.vp_sigmas(SCHED, [100, 5]), ValueError, "timesteps"),
    ("shift<=0", lambda: rd.time_shift(0.5, 0.0), ValueError, "shift"),
    ("shift and mu", lambda: rd.flow_times(5, shift=3.0, mu=1.0), ValueError, "mu"),
    ("t_min>t_max", lambda: rd.flow_times(5, t_max=0.5, t_min=0.6), ValueError, "t_min"),
    ("exponent", lambda: rd.exponential_time_shift(0.5, 1.0, 0.0), ValueError, "exponent"),
    ("max_seq_len", lambda: rd.dynamic_shift(512, max_seq_len=256), ValueError, "max_seq_len"),
    ("seq len 0", lambda: rd.dynamic_shift(0), ValueError, "image_seq_len"),
]


@pytest.mark.parametrize("make, error, message", [e[1:] for e in ERRORS],
                         ids=[e[0] for e in ERRORS])
def test_argument_errors(make, error, message):
    """Each bad input raises its error class, and the message names the argument."""
    with pytest.raises(error, match=message):
        make()
