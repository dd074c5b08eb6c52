"""CFG and classifier guidance: exactness, linearity, equivalences (NumPy, Hypothesis)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import refdiff as rd
from strategies import alpha_bars, alpha_pair, batch, scales


@given(b=batch(2))
def test_cfg_ends_exact(b):
    u, c = b
    u[..., 0] = -0.0  # signed zeros must survive too
    assert rd.cfg(u, c, 0.0).tobytes() == u.tobytes()
    assert rd.cfg(u, c, 1.0).tobytes() == c.tobytes()


@given(b=batch(2), s=scales, s2=scales)
def test_cfg_is_affine_in_scale(b, s, s2):
    u, c = b
    # ε̃(s) − ε̃(s2) = (s − s2)(c − u); and ε̃ = (1+w)c − w u with w = s − 1
    np.testing.assert_allclose(rd.cfg(u, c, s) - rd.cfg(u, c, s2), (s - s2) * (c - u), atol=1e-12)
    w = rd.w_from_cfg_scale(s)
    np.testing.assert_allclose(rd.cfg(u, c, s), (1 + w) * c - w * u, atol=1e-12)


@given(b=batch(2), s=st.lists(st.floats(-5, 5), min_size=1, max_size=3))
def test_cfg_per_sample_scale_equals_looping(b, s):
    u, c = b
    sv = np.resize(np.array(s), u.shape[0])
    out = rd.cfg(u, c, sv)
    for i in range(u.shape[0]):
        assert out[i].tobytes() == rd.cfg(u[i:i + 1], c[i:i + 1], float(sv[i]))[0].tobytes()


@given(b=batch(3), s=scales, ab=alpha_bars, pt=st.sampled_from(["sample", "v_prediction"]))
def test_cfg_commutes_with_parameterisation(b, s, ab, pt):
    """CFG on ε, on x̂_0 or on v gives the same ε̃ (CFG is affine)."""
    x_t, e_u, e_c = b
    guided_eps = rd.cfg(e_u, e_c, s)
    outs = [rd.prediction_from_x0_eps(*rd.predict_x0_eps(x_t, e, ab), ab, pt) for e in (e_u, e_c)]
    _, eps_from_other = rd.predict_x0_eps(x_t, rd.cfg(outs[0], outs[1], s), ab, pt)
    scale = (1 + abs(s)) * 20 / np.sqrt(min(ab, 1 - ab))
    np.testing.assert_allclose(eps_from_other, guided_eps, rtol=0, atol=1e-14 * scale)


@given(b=batch(3), s1=scales, s2=scales)
def test_cfg_multi(b, s1, s2):
    u, c1, c2 = b
    out = rd.cfg_multi(u, [c1, c2], [s1, s2])
    np.testing.assert_allclose(out, u + s1 * (c1 - u) + s2 * (c2 - u), atol=1e-12)
    assert rd.cfg_multi(u, [c1, c2], [0.0, 0.0]).tobytes() == u.tobytes()
    assert rd.cfg_multi(u, [c1], [1.0]).tobytes() == c1.tobytes()


@given(b=batch(2), phi=st.floats(0.0, 1.0))
def test_guidance_rescale(b, phi):
    g, c = b
    assert rd.guidance_rescale(g, c, 0.0).tobytes() == g.tobytes()
    out = rd.guidance_rescale(g, c, phi)
    axes = tuple(range(1, g.ndim))
    # ZSNR arXiv:2305.08891v4 Eqs. 15–16 written here (population σ per sample; a zero guided
    # σ leaves the sample as it is): x_rescaled = x·σ_c/σ_g, out = φ·x_rescaled + (1 − φ)·x
    sg, sc = g.std(axis=axes, keepdims=True), c.std(axis=axes, keepdims=True)
    ok = (sg > 1e-6).reshape(-1)
    expected = phi * (g * (sc / np.where(sg > 1e-6, sg, 1.0))) + (1 - phi) * g
    scale = 1.0 + np.abs(g).max() * (1.0 + (sc / np.where(sg > 1e-6, sg, 1.0)).max())
    np.testing.assert_allclose(out[ok], expected[ok], rtol=0, atol=1e-12 * scale)
    # φ = 1 matches the conditional σ per sample (where the guided σ is not 0)
    full = rd.guidance_rescale(g, c, 1.0)
    np.testing.assert_allclose(full.std(axis=axes)[ok], sc.reshape(-1)[ok], rtol=1e-9,
                               atol=1e-12)


def test_guidance_rescale_zero_std_guard():
    g = np.ones((2, 3))
    out = rd.guidance_rescale(g, np.random.default_rng(0).normal(size=(2, 3)), 0.7)
    assert np.all(np.isfinite(out)) and np.array_equal(out, g)


@given(b=batch(2), ab=st.floats(0.0, 1.0), s=scales)
def test_classifier_guidance_neutral_cases(b, ab, s):
    eps, g = b
    assert rd.classifier_guided_eps(eps, g, ab, 0.0).tobytes() == eps.tobytes()
    np.testing.assert_array_equal(rd.classifier_guided_eps(eps, np.zeros_like(g), ab, s), eps)
    assert rd.classifier_guided_mean(eps, 0.3, g, 0.0).tobytes() == eps.tobytes()
    np.testing.assert_array_equal(rd.classifier_guided_mean(eps, 0.3, np.zeros_like(g), s), eps)


@given(b=batch(2), pair=alpha_pair(), s=scales)
def test_classifier_guidance_ddim_form_shift(b, pair, s):
    """CG Algorithm 2 (shift ε̂ by −s·√(1−ᾱ_t)·g) inside a DDIM step moves x_prev by exactly
    s·(1−ᾱ_t)·c0/√ᾱ_t·g = s·√ᾱ_prev·β'/√ᾱ_t·g, at η = 1; Algorithm 1 moves the DDPM mean by
    s·β̃·g instead (each form belongs to its own sampler)."""
    x_t, g = b
    ab_t, ab_prev = pair
    eps, z = np.zeros_like(x_t), np.zeros_like(x_t)
    base = rd.ddim_step(x_t, eps, ab_t, ab_prev, eta=1.0, noise=z)
    moved = rd.ddim_step(x_t, rd.classifier_guided_eps(eps, g, ab_t, s), ab_t, ab_prev,
                         eta=1.0, noise=z)
    c0, _, _, _ = rd.posterior_coefficients(ab_t, ab_prev)
    np.testing.assert_allclose(moved - base, s * (1 - ab_t) * c0 / np.sqrt(ab_t) * g,
                               atol=3e-10 * (1 + abs(s)))
    mean, var = rd.ddpm_mean_variance(x_t, eps, ab_t, ab_prev)
    np.testing.assert_allclose(rd.classifier_guided_mean(mean, var, g, s) - mean, s * var * g,
                               atol=1e-12 * (1 + abs(s)))


def test_torch_autograd_gradient_matches_finite_differences():
    torch = pytest.importorskip("torch")
    from scipy.optimize import approx_fprime

    rng = np.random.default_rng(0)
    W = rng.normal(size=(3, 4))

    def log_prob_np(x):  # log softmax of a linear classifier, label 1
        logits = x @ W
        return logits[..., 1] - np.log(np.exp(logits).sum(-1))

    def log_prob_torch(x):
        return torch.log_softmax(x @ torch.asarray(W), dim=-1)[..., 1]

    x = rng.normal(size=(2, 3))
    g = rd.classifier_gradient(log_prob_torch, torch.asarray(x)).numpy()
    for b in range(2):
        fd = approx_fprime(x[b], lambda v: log_prob_np(v), 1e-7)
        np.testing.assert_allclose(g[b], fd, rtol=1e-5, atol=1e-6)


def test_numpy_gradient_needs_grad_log_prob():
    x = np.ones((2, 3))
    with pytest.raises(TypeError, match="grad_log_prob"):
        rd.classifier_gradient(lambda z: z.sum(axis=1), x)
    g = rd.classifier_gradient(lambda z: z.sum(axis=1), x, grad_log_prob=lambda z: -2 * z)
    np.testing.assert_array_equal(g, -2 * x)
