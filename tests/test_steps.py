"""DDPM and DDIM steps, and DDIM inversion: Hypothesis invariants (NumPy float64)."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import refdiff as rd
from strategies import alpha_pair, batch

EPS64 = np.finfo(np.float64).eps


def _tol(ab_t, *arrays):
    """A few roundings of terms up to max|array|/√ᾱ_t (the division in x̂_0)."""
    m = max(1.0, *(float(np.max(np.abs(a))) for a in arrays))
    return 64 * EPS64 * m / np.sqrt(ab_t)


@given(b=batch(3), pair=alpha_pair(), clip=st.sampled_from([None, 1.0, 0.5]),
       rederive=st.booleans())
def test_ddim_eta0_ignores_noise(b, pair, clip, rederive):
    x, e, z = b
    kw = dict(clip_x0=clip, rederive_eps=rederive)
    a = rd.ddim_step(x, e, *pair, eta=0.0, noise=z, **kw)
    assert a.tobytes() == rd.ddim_step(x, e, *pair, eta=0.0, noise=None, **kw).tobytes()


@given(b=batch(3), pair=alpha_pair(), clip=st.sampled_from([None, 1.0, 0.5]))
def test_ddim_eta1_equals_ddpm_fixed_small(b, pair, clip):
    """η = 1 is DDPM with σ² = β̃, on any (ᾱ_t, ᾱ_prev); with clipping when ε̂ is re-derived."""
    x, e, z = b
    ddim = rd.ddim_step(x, e, *pair, eta=1.0, noise=z, clip_x0=clip, rederive_eps=True)
    ddpm = rd.ddpm_step(x, e, *pair, z, variance_type="fixed_small", clip_x0=clip)
    np.testing.assert_allclose(ddim, ddpm, rtol=0, atol=_tol(pair[0], x, e, z))


@given(b=batch(2), pair=alpha_pair())
def test_ddim_eta1_differs_from_ddpm_when_eps_kept_after_clipping(b, pair):
    """Keeping the model's ε̂ after clipping breaks the η = 1 ↔ DDPM identity by exactly
    dir·(ε̂ − ε̂_rederived), dir = √(1 − ᾱ_prev − σ²): the two conventions really differ."""
    e, z = b
    ab_t, ab_prev = pair
    x = rd.q_sample(np.full_like(e, 3.0), ab_t, e)  # x̂_0 = 3: the clip to [−1, 1] is active
    kept = rd.ddim_step(x, e, ab_t, ab_prev, eta=1.0, noise=z, clip_x0=1.0, rederive_eps=False)
    ddpm = rd.ddpm_step(x, e, ab_t, ab_prev, z, clip_x0=1.0)
    _, dir_coef = rd.ddim_sigma(ab_t, ab_prev, 1.0)
    e_re = (x - np.sqrt(ab_t) * 1.0) / np.sqrt(1 - ab_t)
    expected = dir_coef * (e - e_re)
    np.testing.assert_allclose(kept - ddpm, expected, rtol=0, atol=4 * _tol(ab_t, x, e, z))
    assert np.max(np.abs(expected)) > 0 or dir_coef == 0


@given(b=batch(2), pair=alpha_pair(), eta=st.floats(0.0, 1.0))
def test_ddim_with_true_x0_and_eps_lands_on_q_sample(b, pair, eta):
    """Given x_t = q_sample(x0, ᾱ_t, ε) and the true ε, η = 0 lands on q_sample(x0, ᾱ_prev, ε)."""
    x0, e = b
    ab_t, ab_prev = pair
    x_t = rd.q_sample(x0, ab_t, e)
    out = rd.ddim_step(x_t, e, ab_t, ab_prev)
    np.testing.assert_allclose(out, rd.q_sample(x0, ab_prev, e), rtol=0, atol=_tol(ab_t, x0, e))


@given(b=batch(2), pair=alpha_pair())
def test_ddim_inversion_round_trip(b, pair):
    """Inverting from ᾱ_prev to ᾱ_t and stepping back with the same ε̂ returns x."""
    x, e = b
    ab_t, ab_prev = pair
    up = rd.ddim_inversion_step(x, e, ab_prev, ab_t)
    back = rd.ddim_step(up, e, ab_t, ab_prev)
    np.testing.assert_allclose(back, x, rtol=0, atol=4 * _tol(ab_t, x, e) / np.sqrt(ab_t))


@given(b=batch(2), pair=alpha_pair(), eta=st.floats(0.0, 1.0))
def test_ddim_sigma_variance(b, pair, eta):
    ab_t, ab_prev = pair
    sigma, dir_coef = rd.ddim_sigma(ab_t, ab_prev, eta)
    _, _, beta_tilde, _ = rd.posterior_coefficients(ab_t, ab_prev)
    np.testing.assert_allclose(sigma**2, eta**2 * beta_tilde, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(sigma**2 + dir_coef**2, 1 - ab_prev, rtol=1e-12, atol=1e-15)


@given(b=batch(3), pair=alpha_pair())
def test_ddpm_fixed_large_has_larger_noise(b, pair):
    x, e, z = b
    ab_t, ab_prev = pair
    m_small, v_small = rd.ddpm_mean_variance(x, e, ab_t, ab_prev)
    m_large, v_large = rd.ddpm_mean_variance(x, e, ab_t, ab_prev, variance_type="fixed_large")
    assert m_small.tobytes() == m_large.tobytes()
    assert float(v_small) <= float(v_large) + 1e-16
    np.testing.assert_allclose(float(v_large), 1 - ab_t / ab_prev, rtol=1e-15)


@given(b=batch(3), pair=alpha_pair())
def test_model_x0_prediction_path_equals_eps_path(b, pair):
    """Passing x0_hat= (from an x_0- or v-model) equals deriving it from ε̂."""
    x, e, z = b
    x0, _ = rd.predict_x0_eps(x, e, pair[0])
    # The ε path is folded (A·x_t + B·ε̂), the x̂_0 path is not: each form rounds ~6 terms,
    # none larger than (|x_t| + |ε̂|)/√ᾱ_t + |ε̂| + |z|, so they differ by at most 2·6·u·that.
    big = (np.abs(x) + np.abs(e)) / np.sqrt(pair[0]) + np.abs(e) + np.abs(z)
    tol = 12 * np.finfo(np.float64).eps / 2 * big
    for eta in (0.0, 0.7):
        d = rd.ddim_step(x, e, *pair, eta=eta, noise=z, x0_hat=x0) - rd.ddim_step(
            x, e, *pair, eta=eta, noise=z)
        assert np.all(np.abs(d) <= tol)
    d = rd.ddpm_step(x, e, *pair, z, x0_hat=x0) - rd.ddpm_step(x, e, *pair, z)
    assert np.all(np.abs(d) <= tol)


@given(b=batch(3), pair=alpha_pair())
def test_clip_bounds_x0(b, pair):
    """With clipping and re-derived ε̂, the step is the exact DDIM step of the clipped x̂_0."""
    x, e, _ = b
    ab_t, ab_prev = pair
    x0_hat, _ = rd.predict_x0_eps(x, e, ab_t)
    x0c = np.clip(x0_hat, -0.5, 0.5)
    eps_c = (x - np.sqrt(ab_t) * x0c) / np.sqrt(1 - ab_t)
    out = rd.ddim_step(x, e, ab_t, ab_prev, clip_x0=0.5)
    ref = np.sqrt(ab_prev) * x0c + np.sqrt(1 - ab_prev) * eps_c
    np.testing.assert_allclose(out, ref, rtol=0, atol=_tol(ab_t, x, e) * 4)


@given(b=batch(3))
def test_per_sample_levels_equal_looping(b):
    x, e, z = b
    B = x.shape[0]
    ab_t = np.linspace(0.2, 0.5, B)
    ab_prev = np.linspace(0.6, 1.0, B)
    out = rd.ddim_step(x, e, ab_t, ab_prev, eta=0.5, noise=z)
    out2 = rd.ddpm_step(x, e, ab_t, ab_prev, z)
    for i in range(B):
        s = slice(i, i + 1)
        ref = rd.ddim_step(x[s], e[s], float(ab_t[i]), float(ab_prev[i]), eta=0.5, noise=z[s])
        np.testing.assert_allclose(out[s], ref, rtol=1e-15, atol=1e-15)
        np.testing.assert_allclose(out2[s], rd.ddpm_step(x[s], e[s], float(ab_t[i]),
                                                         float(ab_prev[i]), z[s]),
                                   rtol=1e-15, atol=1e-15)


def test_zero_terminal_snr_needs_x0():
    x = np.ones((1, 2))
    import pytest
    with pytest.raises(ValueError, match="alpha_bar_t = 0"):
        rd.ddim_step(x, x, 0.0, 0.5)
    # with a v-model's x̂_0 the step is defined: x̂_0 = −v, ε̂ = x_t at ᾱ = 0
    v = np.full((1, 2), 0.25)
    x0, eps = rd.predict_x0_eps(x, v, 0.0, "v_prediction")
    out = rd.ddim_step(x, eps, 0.0, 0.5, x0_hat=x0)
    np.testing.assert_allclose(out, np.sqrt(0.5) * -0.25 + np.sqrt(0.5) * 1.0)
