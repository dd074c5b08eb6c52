"""Forward noising, parameterisations and the posterior: Hypothesis invariants (NumPy)."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import refdiff as rd
from strategies import alpha_bars, alpha_pair, batch


@given(b=batch(1), ab=st.floats(0.0, 1.0))
def test_zero_noise_gives_scaled_x0(b, ab):
    (x0,) = b
    np.testing.assert_array_equal(rd.q_sample(x0, ab, np.zeros_like(x0)), np.sqrt(ab) * x0)


@given(b=batch(2), ab=alpha_bars, ptype=st.sampled_from(rd.PREDICTION_TYPES))
def test_parameterisation_round_trip(b, ab, ptype):
    """(x0, ε) → x_t and target → predict_x0_eps recovers (x0, ε) within 16 eps·cond."""
    x0, eps = b
    x_t = rd.q_sample(x0, ab, eps)
    target = rd.prediction_from_x0_eps(x0, eps, ab, ptype)
    x0_hat, eps_hat = rd.predict_x0_eps(x_t, target, ab, ptype)
    # each division by √ᾱ or √(1−ᾱ) ≤ 5 amplifies ~4 roundings of values ≤ 3(1 + 1)
    tol = 16 * np.finfo(np.float64).eps * 6 / np.sqrt(min(ab, 1 - ab))
    np.testing.assert_allclose(x0_hat, x0, rtol=0, atol=tol)
    np.testing.assert_allclose(eps_hat, eps, rtol=0, atol=tol)
    # and back: the target re-derived from the recovered pair
    np.testing.assert_allclose(rd.prediction_from_x0_eps(x0_hat, eps_hat, ab, ptype), target,
                               rtol=0, atol=4 * tol)


@given(b=batch(2), ab=st.floats(0.0, 1.0))
def test_v_relations(b, ab):
    x0, eps = b
    v = rd.v_target(x0, eps, ab)
    x_t = rd.q_sample(x0, ab, eps)
    # ‖(x_t, v)‖ rotation: x_t² + v² = x0² + ε² (v is a rotation of (x0, ε) by the same angle)
    np.testing.assert_allclose(x_t**2 + v**2, x0**2 + eps**2, atol=1e-12)


@given(pair=alpha_pair(lo=0.0, hi=0.999))
def test_posterior_variance_bounds(pair):
    ab_t, ab_prev = pair
    if ab_prev == ab_t and ab_t == 0:
        return
    _, _, var, beta_step = rd.posterior_coefficients(ab_t, ab_prev)
    assert 0.0 <= var <= beta_step + 1e-16
    assert 0.0 <= beta_step <= 1.0


@given(b=batch(2), pair=alpha_pair())
def test_posterior_is_consistent_with_q_sample(b, pair):
    """If x_t ~ q(x_t | x_0) then the posterior mean's marginal matches q(x_prev | x_0):
    √ᾱ_prev·x0 = c0·x0 + ct·√ᾱ_t·x0 (the means) and β̃ + ct²(1−ᾱ_t) = 1−ᾱ_prev (the variances)."""
    ab_t, ab_prev = pair
    x0, _ = b
    c0, ct, var, _ = rd.posterior_coefficients(ab_t, ab_prev)
    np.testing.assert_allclose(c0 + ct * np.sqrt(ab_t), np.sqrt(ab_prev), rtol=1e-12)
    np.testing.assert_allclose(var + ct**2 * (1 - ab_t), 1 - ab_prev, atol=1e-12)
    mean, _ = rd.q_posterior(x0, np.sqrt(ab_t) * x0, ab_t, ab_prev)
    np.testing.assert_allclose(mean, np.sqrt(ab_prev) * x0, atol=1e-12)


@given(b=batch(2))
def test_per_sample_alpha_bar_equals_looping(b):
    x0, eps = b
    B = x0.shape[0]
    ab = np.linspace(0.1, 0.9, B)
    out = rd.q_sample(x0, ab, eps)
    for i in range(B):
        np.testing.assert_array_equal(out[i], rd.q_sample(x0[i:i + 1], float(ab[i]), eps[i:i + 1])[0])
