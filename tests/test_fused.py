"""refdiff.fused: the guided step as one linear combination, tied to the spec composition
ddim_step(x_t, cfg(ε_u, ε_c, s), ...) / ddpm_step(...) by a derived rounding bound.

Error analysis (u = unit roundoff of the dtype, u64 = 2**-53; fl(a ∘ b) = (a ∘ b)(1 + δ),
|δ| ≤ u; first order, second-order terms absorbed by rounding the constants up):

- Fused, y = A·x + B_u·ε_u + B_c·ε_c + σ·z. Each coefficient is formed on the host in
  float64 with at most ~12 operations (B of DDIM: a difference, two quotients, σ², d, a
  product and a sum; then (1 − s)·B), so its relative error is ≤ 12·u64, plus one rounding
  when cast to the dtype (u). Each product rounds once (u) and each term passes through at
  most 3 additions (3u). Per term: ≤ 5u + 12·u64 of its magnitude, so
  |y_fused − y| ≤ (8u + 16·u64)·T_fused, T_fused = |A x| + |B_u ε_u| + |B_c ε_c| + |σ z|.
- Composition. cfg's two-sided lerp ε̃ = ε_u + s·d or ε_c − (1 − s)·d, d = ε_c − ε_u, rounds
  d, the product, the sum and s itself (a weak scalar takes the dtype): |δε̃| ≤
  u·|ε̃| + 3u·(1 + |s|)·|ε_c − ε_u|. The step is affine in ε̂, so δε̃ reaches x_prev times
  B = d_ddim − A·√(1−ᾱ_t) exactly (its partial derivative). The step itself,
  a·(x − b·ε̂) + c·ε̂ + σ·z with a, b, c, σ from float64 (≤ 6·u64) cast once, rounds each
  term at most 7 times: |δ_step| ≤ (8u + 16·u64)·T_spec with
  T_spec = a|x| + a·b|ε̃| + c|ε̃| + σ|z| (DDPM: a = c_0/√ᾱ_t, the x_t term c_t·|x|).
  One coefficient is ill-conditioned: ddpm_step's β' = 1 − ᾱ_t/ᾱ_prev cancels when
  ᾱ_prev ≈ ᾱ_t, so c_0 carries a relative error κ·u64, κ = (ᾱ_t/ᾱ_prev)/β' (κ ≈ 360 at
  β' = 0.003), on the term a·(|x| + b|ε̃|): K_spec. The fused form's (ᾱ_prev − ᾱ_t)/ᾱ_prev
  is exact there (Sterbenz), so it is the more accurate of the two on such steps.

So |fused − composition| ≤ (8u + 16·u64)·(T_fused + T_spec) + u·|B|·(|ε̃| + 3(1 + |s|)·
|ε_c − ε_u|) + 4·u64·K_spec + 16·tiny (tiny: the dtype's smallest subnormal, for results near 0). The
backend rows compare the row's fused output with NumPy float64's composition: the same sum
with the row's u on the fused terms and u64 on the composition's. Measured worst
error/bound (3000 random cases per variant, 2026-12-01): 0.12–0.13 in float64, 0.23–0.26
in float32, so the bound has a margin of ~4–8×; a relative slip of 1e-10 in B_c fails it.
"""

from __future__ import annotations

import ast
import doctest
import math
import pathlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import refdiff as rd
import refdiff.fused as fused
from refdiff.testing import assert_close
from refdiff.testing.tolerance import to_numpy
from strategies import alpha_pair, batch, scales

U = {"float64": 2.0**-53, "float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}
TINY = {"float64": 2.0**-1074, "float32": 2.0**-149, "float16": 2.0**-24, "bfloat16": 2.0**-133}
U64 = U["float64"]
etas = st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0))
VARIANCES = ("fixed_small", "fixed_large")


# ----- the bound (NumPy float64 on the rounded inputs) -------------------------------------

def _col(v, x):
    """A float, or a (B,) array as (B, 1, ..., 1) against x."""
    v = np.asarray(v, dtype=np.float64)
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim)) if v.ndim else float(v)


def _terms(sampler, x, eu, ec, z, s, ab_t, ab_prev, eta=0.0, variance_type="fixed_small"):
    """(T_fused, T_spec, C_cfg, K_spec) of the module docstring, elementwise."""
    s, ab_t, ab_prev = (_col(v, x) for v in (s, ab_t, ab_prev))
    z = np.zeros_like(x) if z is None else z
    et = eu + s * (ec - eu)
    A, sq = np.sqrt(ab_prev / ab_t), np.sqrt(1 - ab_t)
    if sampler == "ddim":
        r = eta**2 * (1 - ab_t / ab_prev) / (1 - ab_t)
        sigma, c = np.sqrt(r * (1 - ab_prev)), np.sqrt((1 - ab_prev) * np.maximum(1 - r, 0))
        B = c - A * sq
        t_spec = A * np.abs(x) + (A * sq + c) * np.abs(et) + sigma * np.abs(z)
        k_spec = 0.0  # σ is the same host float in both forms; A, b, d are well conditioned
    else:
        beta = 1 - ab_t / ab_prev
        c0, ct = np.sqrt(ab_prev) * beta / (1 - ab_t), np.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab_t)
        sigma = np.sqrt((1 - ab_prev) / (1 - ab_t) * beta if variance_type == "fixed_small" else beta)
        a = c0 / np.sqrt(ab_t)
        B = -a * sq
        t_spec = (a + ct) * np.abs(x) + a * sq * np.abs(et) + sigma * np.abs(z)
        # ddpm_step's β' = 1 − ᾱ_t/ᾱ_prev cancels: relative error κ·u64, κ = (ᾱ_t/ᾱ_prev)/β',
        # carried by c_0 (the fused form's (ᾱ_prev − ᾱ_t)/ᾱ_prev is exact: Sterbenz)
        with np.errstate(divide="ignore", invalid="ignore"):
            kappa = np.where(beta > 0, (ab_t / ab_prev) / np.where(beta > 0, beta, 1.0), 0.0)
        k_spec = kappa * a * (np.abs(x) + sq * np.abs(et))
    t_fused = (A * np.abs(x) + np.abs((1 - s) * B * eu) + np.abs(s * B * ec)
               + sigma * np.abs(z))
    c_cfg = np.abs(B) * (np.abs(et) + 3 * (1 + np.abs(s)) * np.abs(ec - eu))
    return t_fused, t_spec, c_cfg, k_spec


def bound(terms, dtype_fused, dtype_spec):
    t_fused, t_spec, c_cfg, k_spec = terms
    uf, us = U[dtype_fused], U[dtype_spec]
    return ((8 * uf + 16 * U64) * t_fused + (8 * us + 16 * U64) * t_spec + us * c_cfg
            + 4 * U64 * k_spec + 16 * TINY[dtype_fused])


def _both(sampler, arrs, s, pair, eta=0.0, variance_type="fixed_small"):
    """(fused, composition) on the same arrays."""
    x, eu, ec, z = arrs
    if sampler == "ddim":
        z = z if eta > 0 else None
        return (rd.guided_ddim_step(x, eu, ec, s, *pair, eta=eta, noise=z),
                rd.ddim_step(x, rd.cfg(eu, ec, s), *pair, eta=eta, noise=z))
    return (rd.guided_ddpm_step(x, eu, ec, s, *pair, z, variance_type=variance_type),
            rd.ddpm_step(x, rd.cfg(eu, ec, s), *pair, z, variance_type=variance_type))


def _check(actual, expected, bnd, key):
    err = np.abs(to_numpy(actual) - to_numpy(expected))
    assert np.all(err <= bnd), (float(np.max(err / bnd)), key)


# ----- fused = composition, to the bound ---------------------------------------------------

@given(b=batch(4), pair=alpha_pair(), s=scales, eta=etas,
       dtype=st.sampled_from(["float64", "float32"]),
       variant=st.sampled_from(["ddim", "ddpm-fixed_small", "ddpm-fixed_large"]))
def test_fused_equals_composition(b, pair, s, eta, dtype, variant):
    sampler, _, vt = variant.partition("-")
    arrs = [a.astype(dtype) for a in b]
    got, ref = _both(sampler, arrs, s, pair, eta, vt or "fixed_small")
    assert got.dtype == np.dtype(dtype) and got.shape == arrs[0].shape
    terms = _terms(sampler, *[a.astype(np.float64) for a in arrs], s, *pair, eta,
                   vt or "fixed_small")
    _check(got, ref, bound(terms, dtype, dtype), f"{variant}-{dtype}")


def test_bound_is_not_loose_enough_to_pass_a_slip():
    """A formula slip (B_c with √ᾱ_prev in place of √(1−ᾱ_prev)) fails the bound: the test
    can fail."""
    rng = np.random.default_rng(0)
    x, eu, ec, z = rng.standard_normal((4, 3, 5))
    pair, s = (0.3, 0.7), 3.0
    good, ref = _both("ddim", (x, eu, ec, z), s, pair)
    A = math.sqrt(0.7 / 0.3)
    slip = A * x + (1 - s) * (math.sqrt(0.7) - A * math.sqrt(0.7)) * eu + s * (
        math.sqrt(0.3) - A * math.sqrt(0.7)) * ec
    bnd = bound(_terms("ddim", x, eu, ec, z, s, *pair), "float64", "float64")
    assert np.all(np.abs(good - ref) <= bnd)
    assert not np.all(np.abs(slip - ref) <= bnd)


# ----- hand-derived values -----------------------------------------------------------------

def test_hand_values():
    """ᾱ_t = 0.36, ᾱ_prev = 0.64 (√ = 0.6 / 0.8 and √(1−·) = 0.8 / 0.6), x = 1, ε_u = 0.5,
    ε_c = 1, s = 3, so ε̃ = 2 and x̂_0 = (1 − 0.8·2)/0.6 = −1.
    DDIM η = 0: A = 0.8/0.6 = 4/3, B = 0.6 − (4/3)·0.8 = −7/15, x_prev = 4/3 − 14/15 = 0.4
      (= √ᾱ_prev·x̂_0 + √(1−ᾱ_prev)·ε̃ = −0.8 + 1.2).
    DDIM η = 1: σ² = β̃ = (0.36/0.64)·(7/16) = 63/256, d = √(0.36 − 63/256) = 27/80,
      B = 27/80 − 16/15 = −35/48: the DDPM coefficient. x_prev = 4/3 − 70/48 + σ·z = −1/8 + σ·z.
    DDPM: β' = 1 − 0.36/0.64 = 7/16, A = 4/3, B = −(4/3)·(7/16)/0.8 = −35/48; σ = √63/16
      ("fixed_small") or √7/4 ("fixed_large")."""
    one = lambda v: np.array([v])  # noqa: E731
    x, eu, ec, z = one(1.0), one(0.5), one(1.0), one(1.0)
    tol = 1e-15
    np.testing.assert_allclose(rd.guided_ddim_step(x, eu, ec, 3.0, 0.36, 0.64), [0.4],
                               rtol=0, atol=tol)
    np.testing.assert_allclose(rd.guided_ddim_step(x, eu, ec, 3.0, 0.36, 0.64, eta=1.0,
                                                   noise=z), [-0.125 + math.sqrt(63) / 16],
                               rtol=0, atol=tol)
    np.testing.assert_allclose(rd.guided_ddpm_step(x, eu, ec, 3.0, 0.36, 0.64, z),
                               [-0.125 + math.sqrt(63) / 16], rtol=0, atol=tol)
    np.testing.assert_allclose(rd.guided_ddpm_step(x, eu, ec, 3.0, 0.36, 0.64, z,
                                                   variance_type="fixed_large"),
                               [-0.125 + math.sqrt(7) / 4], rtol=0, atol=tol)
    a, b_u, b_c, _ = fused._guided_ddim_coefficients(None, 0.36, 0.64, 3.0, 0.0)
    np.testing.assert_allclose([a, b_u, b_c], [4 / 3, 14 / 15, -7 / 5], rtol=4e-16)
    a, b_u, b_c, sigma = fused._guided_ddpm_coefficients(None, 0.36, 0.64, 3.0, "fixed_small",
                                                         None)
    np.testing.assert_allclose([a, b_u, b_c, sigma], [4 / 3, 70 / 48, -105 / 48,
                                                      math.sqrt(63) / 16], rtol=4e-16)


def test_last_step_to_one_is_x0_hat():
    """At ᾱ_prev = 1: d = σ = 0, x_prev = x̂_0 = (x_t − √(1−ᾱ_t)·ε̃)/√ᾱ_t, for DDIM at any η
    and DDPM "fixed_small" (σ² = β̃ = 0: no noise term even with noise given)."""
    x, eu, ec = np.array([1.0]), np.array([0.5]), np.array([1.0])
    z = np.array([1e6])
    want = [(1 - 0.8 * 2) / 0.6]
    for out in (rd.guided_ddim_step(x, eu, ec, 3.0, 0.36, 1.0),
                rd.guided_ddim_step(x, eu, ec, 3.0, 0.36, 1.0, eta=1.0, noise=z),
                rd.guided_ddpm_step(x, eu, ec, 3.0, 0.36, 1.0, z)):
        np.testing.assert_allclose(out, want, rtol=0, atol=4e-16)


# ----- invariants --------------------------------------------------------------------------

@given(b=batch(3), pair=alpha_pair(), s=scales, eta=etas,
       sampler=st.sampled_from(["ddim", "ddpm"]))
def test_equal_predictions_give_the_unguided_step(b, pair, s, eta, sampler):
    x, e, z = b
    if sampler == "ddim":
        got = rd.guided_ddim_step(x, e, e, s, *pair, eta=eta, noise=z)
        ref = rd.ddim_step(x, e, *pair, eta=eta, noise=z)
    else:
        got, ref = rd.guided_ddpm_step(x, e, e, s, *pair, z), rd.ddpm_step(x, e, *pair, z)
    _check(got, ref, bound(_terms(sampler, x, e, e, z, s, *pair, eta), "float64", "float64"),
           f"equal-eps-{sampler}")


@given(b=batch(4), pair=alpha_pair(), s=st.sampled_from([0.0, 1.0]), eta=etas,
       dtype=st.sampled_from(["float64", "float32"]))
def test_float_scale_0_and_1_are_the_unguided_step_bit_for_bit(b, pair, s, eta, dtype):
    x, eu, ec, z = [a.astype(dtype) for a in b]
    e = eu if s == 0 else ec
    got = rd.guided_ddim_step(x, eu, ec, s, *pair, eta=eta, noise=z)
    assert got.tobytes() == rd.ddim_step(x, e, *pair, eta=eta, noise=z).tobytes()
    for vt in VARIANCES:
        got = rd.guided_ddpm_step(x, eu, ec, s, *pair, z, variance_type=vt)
        assert got.tobytes() == rd.ddpm_step(x, e, *pair, z, variance_type=vt).tobytes()


@given(b=batch(4), pair=alpha_pair(0.04, 0.9), s=scales.filter(lambda v: v not in (0, 1)),
       eta=st.floats(0.05, 1.0), dtype=st.sampled_from(["float64", "float32"]))
def test_noise_term_is_added_exactly(b, pair, s, eta, dtype):
    """x_prev(z) = fl(x_prev(0) + fl(σ·z)), σ the host σ cast once: one rounding, nothing
    else depends on z. η = 0 ignores the noise. (ᾱ_prev < 1, so σ > 0.)"""
    x, eu, ec, z = [a.astype(dtype) for a in b]
    ab_t, ab_prev = pair[0], min(max(pair[1], pair[0] + 0.05), 0.95)
    zero = np.zeros_like(z)
    sigma, _ = rd.ddim_sigma(ab_t, ab_prev, eta)
    got = rd.guided_ddim_step(x, eu, ec, s, ab_t, ab_prev, eta=eta, noise=z)
    base = rd.guided_ddim_step(x, eu, ec, s, ab_t, ab_prev, eta=eta, noise=zero)
    assert got.tobytes() == (base + sigma * z).tobytes()
    assert sigma > 0
    quiet = rd.guided_ddim_step(x, eu, ec, s, ab_t, ab_prev, noise=z)
    assert quiet.tobytes() == rd.guided_ddim_step(x, eu, ec, s, ab_t, ab_prev).tobytes()
    _, _, beta_tilde, beta_step = rd.posterior_coefficients(ab_t, ab_prev)
    for vt, var in zip(VARIANCES, (beta_tilde, beta_step)):
        got = rd.guided_ddpm_step(x, eu, ec, s, ab_t, ab_prev, z, variance_type=vt)
        base = rd.guided_ddpm_step(x, eu, ec, s, ab_t, ab_prev, zero, variance_type=vt)
        assert got.tobytes() == (base + math.sqrt(var) * z).tobytes()


@given(b=batch(4), data=st.data(), eta=etas, variant=st.sampled_from(
    ["ddim", "ddpm-fixed_small", "ddpm-fixed_large"]))
def test_per_sample_levels_and_scale_equal_looping(b, data, eta, variant):
    """(B,) ᾱ_t, ᾱ_prev and s give each sample its own step: bit for bit the scalar call
    where s_i is not an end (0 or 1: the scalar call is the unguided spec step there, the
    array one the fused form: equal to the bound)."""
    sampler, _, vt = variant.partition("-")
    x, eu, ec, z = b
    B = x.shape[0]
    pairs = [data.draw(alpha_pair()) for _ in range(B)]
    ab_t, ab_prev = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    s = np.array([data.draw(scales) for _ in range(B)])
    if sampler == "ddim":
        eta = min(eta, 1.0)
        out = rd.guided_ddim_step(x, eu, ec, s, ab_t, ab_prev, eta=eta, noise=z)
        one = lambda i, sl: rd.guided_ddim_step(  # noqa: E731
            x[sl], eu[sl], ec[sl], float(s[i]), float(ab_t[i]), float(ab_prev[i]), eta=eta,
            noise=z[sl])
    else:
        out = rd.guided_ddpm_step(x, eu, ec, s, ab_t, ab_prev, z, variance_type=vt)
        one = lambda i, sl: rd.guided_ddpm_step(  # noqa: E731
            x[sl], eu[sl], ec[sl], float(s[i]), float(ab_t[i]), float(ab_prev[i]), z[sl],
            variance_type=vt)
    for i in range(B):
        sl = slice(i, i + 1)
        ref = one(i, sl)
        if s[i] in (0.0, 1.0):
            terms = _terms(sampler, x[sl], eu[sl], ec[sl], z[sl], s[i], ab_t[i], ab_prev[i],
                           eta, vt or "fixed_small")
            _check(out[sl], ref, bound(terms, "float64", "float64"), "per-sample-end")
        else:
            assert out[sl].tobytes() == ref.tobytes()


@given(b=batch(4), pair=alpha_pair(), s=scales)
def test_ddim_eta1_equals_ddpm_fixed_small(b, pair, s):
    x, eu, ec, z = b
    ddim = rd.guided_ddim_step(x, eu, ec, s, *pair, eta=1.0, noise=z)
    ddpm = rd.guided_ddpm_step(x, eu, ec, s, *pair, z)
    t1 = _terms("ddim", x, eu, ec, z, s, *pair, 1.0)[0]
    t2 = _terms("ddpm", x, eu, ec, z, s, *pair)[0]
    _check(ddim, ddpm, (8 * U64 + 16 * U64) * (t1 + t2) + 16 * TINY["float64"], "eta1-ddpm")


# ----- argument errors ---------------------------------------------------------------------

X = np.ones((2, 3))
ERRORS = {
    "ddpm-noise-none": (lambda: rd.guided_ddpm_step(X, X, X, 2.0, 0.3, 0.6, None),
                        ValueError, "noise is required"),
    "ddim-eta-needs-noise": (lambda: rd.guided_ddim_step(X, X, X, 2.0, 0.3, 0.6, eta=0.5),
                             ValueError, "noise is required when eta > 0"),
    "eta-negative": (lambda: rd.guided_ddim_step(X, X, X, 2.0, 0.3, 0.6, eta=-1.0, noise=X),
                     ValueError, "eta must be"),
    "eta-too-large": (lambda: rd.guided_ddim_step(X, X, X, 2.0, 0.3, 0.6, eta=5.0, noise=X),
                      ValueError, "eta=5.0 makes the DDIM variance"),
    "zero-snr": (lambda: rd.guided_ddim_step(X, X, X, 2.0, 0.0, 0.6), ValueError,
                 "alpha_bar_t = 0"),
    "zero-snr-ddpm": (lambda: rd.guided_ddpm_step(X, X, X, 2.0, 0.0, 0.6, X), ValueError,
                      "alpha_bar_t = 0"),
    "order": (lambda: rd.guided_ddim_step(X, X, X, 2.0, 0.6, 0.3), ValueError,
              "alpha_bar_prev must be >= alpha_bar_t"),
    "alpha-range": (lambda: rd.guided_ddpm_step(X, X, X, 2.0, 0.3, 1.5, X), ValueError,
                    "alpha_bar_prev must lie in"),
    "eps_cond-shape": (lambda: rd.guided_ddim_step(X, X, np.ones((2, 4)), 2.0, 0.3, 0.6),
                       ValueError, "eps_cond must have the shape of x_t"),
    "eps_uncond-dtype": (lambda: rd.guided_ddim_step(X, X.astype(np.float32), X, 2.0, 0.3,
                                                     0.6), TypeError, "eps_uncond has dtype"),
    "eps_cond-not-array": (lambda: rd.guided_ddpm_step(X, X, [1.0], 2.0, 0.3, 0.6, X),
                           TypeError, "eps_cond must be an array"),
    "scale-inf": (lambda: rd.guided_ddim_step(X, X, X, math.inf, 0.3, 0.6), ValueError,
                  "scale must lie in"),
    "scale-str": (lambda: rd.guided_ddim_step(X, X, X, "7.5", 0.3, 0.6), TypeError,
                  "scale must be"),
    "scale-shape": (lambda: rd.guided_ddim_step(X, X, X, np.ones(3), 0.3, 0.6), ValueError,
                    "scale must be a float, a 0-d array or an array of shape"),
    "learned": (lambda: rd.guided_ddpm_step(X, X, X, 2.0, 0.3, 0.6, X,
                                            variance_type="learned_range"),
                ValueError, "fixed variance types"),
    "variance-bogus": (lambda: rd.guided_ddpm_step(X, X, X, 2.0, 0.3, 0.6, X,
                                                   variance_type="small"),
                       ValueError, "variance_type must be one of"),
    "zero_beta_tilde-small": (lambda: rd.guided_ddpm_step(X, X, X, 2.0, 0.3, 1.0, X,
                                                          zero_beta_tilde=1e-4),
                              ValueError, "zero_beta_tilde applies to"),
}


@pytest.mark.parametrize("case", ERRORS, ids=list(ERRORS))
def test_argument_errors(case):
    call, exc, match = ERRORS[case]
    with pytest.raises(exc, match=match):
        call()


def test_mixed_libraries_refused():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="eps_cond is a torch.Tensor"):
        rd.guided_ddim_step(X, X, torch.ones(2, 3, dtype=torch.float64), 2.0, 0.3, 0.6)


def test_zero_beta_tilde_is_the_fixed_large_variance_at_one():
    rng = np.random.default_rng(1)
    x, eu, ec, z = rng.standard_normal((4, 2, 3))
    got = rd.guided_ddpm_step(x, eu, ec, 2.0, 0.3, 1.0, z, variance_type="fixed_large",
                              zero_beta_tilde=1e-4)
    ref = rd.ddpm_step(x, rd.cfg(eu, ec, 2.0), 0.3, 1.0, z, variance_type="fixed_large",
                       zero_beta_tilde=1e-4)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-14)
    plain = rd.guided_ddpm_step(x, eu, ec, 2.0, 0.3, 1.0, z, variance_type="fixed_large")
    assert np.max(np.abs(plain - got)) > 0.1  # √β' = √0.7 against √1e-4


# ----- backend rows against NumPy float64 ---------------------------------------------------

@given(b=batch(4), data=st.data(), s=scales, eta=etas, per_sample=st.booleans(),
       variant=st.sampled_from(["ddim", "ddpm-fixed_small", "ddpm-fixed_large"]))
def test_backend_rows_match_numpy_float64(target, b, data, s, eta, per_sample, variant):
    """The row's fused step against NumPy float64's composition on the same rounded inputs;
    per-sample rows pass (B,) float64 levels and scale of the row's library (cast late)."""
    sampler, _, vt = variant.partition("-")
    vt = vt or "fixed_small"
    arrs = [target.rounded(a) for a in b]
    B = arrs[0].shape[0]
    if per_sample:
        pairs = [data.draw(alpha_pair()) for _ in range(B)]
        levels = [np.array([p[k] for p in pairs]) for k in (0, 1)]
        s = np.full(B, s)
        put = target.with_dtype("float64").put
        args = (put(s), put(levels[0]), put(levels[1]))
    else:
        levels = list(data.draw(alpha_pair()))
        args = (s, *levels)
    _, ref = _both(sampler, arrs, s, tuple(levels), eta, vt)
    x, eu, ec, z = (target.put(a) for a in arrs)
    if sampler == "ddim":
        got = rd.guided_ddim_step(x, eu, ec, *args, eta=eta, noise=z if eta > 0 else None)
    else:
        got = rd.guided_ddpm_step(x, eu, ec, *args, z, variance_type=vt)
    terms = _terms(sampler, *arrs, s, *levels, eta, vt)
    # the s = 0 / 1 ends of a float scale are the spec step: its own terms, in the row's u
    bnd = bound(terms, target.dtype, "float64") + (8 * U[target.dtype]) * terms[1]
    assert_close(got, ref, dtype=target.dtype, device=target.device, bound=bnd)


# ----- package promises --------------------------------------------------------------------

def test_fused_imports_neither_numpy_nor_torch_and_its_examples_run():
    tree = ast.parse(pathlib.Path(fused.__file__).read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
             for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree)
              if isinstance(n, ast.ImportFrom) and n.module and n.level == 0}
    assert not names & {"numpy", "torch", "scipy", "jax", "cupy"}, names
    result = doctest.testmod(fused, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 4 and result.failed == 0
    assert {"guided_ddim_step", "guided_ddpm_step"} <= set(rd.__all__)

