"""The Gaussian-mixture oracle: closed forms against finite differences, Monte Carlo, each
other, and across backends."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refdiff as rd
from refdiff.testing import assert_close
from refdiff.testing.tolerance import to_numpy
from refdiff.oracle import GaussianMixture, demo_mixture

GM = demo_mixture()
# a full-covariance mixture with overlapping classes and a shared label
FULL = GaussianMixture.full(
    [0.5, 0.3, 0.2], [[0.0, 0.0], [1.0, 1.0], [-1.0, 0.5]],
    [[[1.0, 0.6], [0.6, 0.8]], [[0.3, -0.1], [-0.1, 0.5]], [[0.2, 0.0], [0.0, 1.5]]], [0, 1, 1])
MIXTURES = {"demo-isotropic": GM, "full-overlapping": FULL}
X = st.lists(st.tuples(st.floats(-4, 4), st.floats(-4, 4)), min_size=1, max_size=5).map(np.array)


def _fd_grad(f, x, h=1e-6):
    """Central differences of a (B,) function of (B, d) points."""
    return np.stack([(f(x + h * e) - f(x - h * e)) / (2 * h) for e in np.eye(x.shape[1])], axis=1)


@pytest.mark.parametrize("name", MIXTURES)
@given(x=X, ab=st.floats(0.0, 0.999), y=st.sampled_from([None, 0, 1]))
def test_score_is_gradient_of_log_prob(name, x, ab, y):
    gm = MIXTURES[name]
    fd = _fd_grad(lambda z: gm.log_prob(z, ab, y), x)
    np.testing.assert_allclose(gm.score(x, ab, y), fd, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", MIXTURES)
@given(x=X, ab=st.floats(0.0, 0.999), y=st.sampled_from([0, 1]))
def test_classifier_gradient_and_normalisation(name, x, ab, y):
    gm = MIXTURES[name]
    fd = _fd_grad(lambda z: gm.log_prob_class(z, ab, y), x)
    np.testing.assert_allclose(gm.grad_log_prob_class(x, ab, y), fd, rtol=1e-5, atol=1e-5)
    total = sum(np.exp(gm.log_prob_class(x, ab, c)) for c in range(gm.num_classes))
    np.testing.assert_allclose(total, 1.0, rtol=1e-12)


@pytest.mark.parametrize("name", MIXTURES)
@given(x=X, ab=st.floats(0.01, 0.999))
def test_eps_x0_score_relations(name, x, ab):
    """ε = −√(1−ᾱ)·score and Tweedie: x̂_0 = (x_t + (1−ᾱ)·score)/√ᾱ, i.e. x_t = √ᾱ·x̂_0 + √(1−ᾱ)·ε."""
    gm = MIXTURES[name]
    x0, eps = gm.x0_eps(x, ab)
    score = gm.score(x, ab)
    np.testing.assert_allclose(eps, -np.sqrt(1 - ab) * score, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.sqrt(ab) * x0 + np.sqrt(1 - ab) * eps, x, atol=1e-9)


def test_monte_carlo_posterior_mean_and_classifier():
    """Importance sampling: E[x_0 | x_t] and p(y | x_t) from 200 000 exact data draws."""
    x0s, ys = FULL.sample(200_000, generator=0)
    x_t = np.array([[0.3, -0.2], [1.0, 0.8], [-0.6, 0.4]])
    for ab in (0.3, 0.7):
        logw = -0.5 * ((x_t[:, None, :] - np.sqrt(ab) * x0s[None]) ** 2).sum(-1) / (1 - ab)
        w = np.exp(logw - logw.max(axis=1, keepdims=True))
        w /= w.sum(axis=1, keepdims=True)
        ess = 1 / (w**2).sum(axis=1)
        assert ess.min() > 2000, ess  # enough effective samples for a 3e-2 tolerance
        np.testing.assert_allclose(w @ x0s, FULL.x0_eps(x_t, ab)[0], atol=3e-2)
        np.testing.assert_allclose(w @ (ys == 1), np.exp(FULL.log_prob_class(x_t, ab, 1)), atol=2e-2)


@pytest.mark.parametrize("name", MIXTURES)
def test_stein_identities_on_noisy_samples(name):
    """Under q(x_t): E[score] = 0 and E[x_i·∂_i log p] = −1 (integration by parts).
    n = 100 000; thresholds are 6 standard errors (false alarm < 1e-8 per check)."""
    gm = MIXTURES[name]
    for ab in (0.2, 0.9):
        x_t, _ = gm.sample_noisy(100_000, ab, generator=1)
        s = gm.score(x_t, ab)
        se = s.std(axis=0) / np.sqrt(len(s))
        assert np.all(np.abs(s.mean(axis=0)) < 6 * se), (s.mean(axis=0), se)
        xs = x_t * s
        se2 = xs.std(axis=0) / np.sqrt(len(xs))
        assert np.all(np.abs(xs.mean(axis=0) + 1) < 6 * se2), (xs.mean(axis=0), se2)


def test_exact_sampler_moments():
    x0, y = FULL.sample(200_000, generator=2)
    w = np.asarray(FULL.weights)
    counts = np.bincount(y, minlength=2) / len(y)
    np.testing.assert_allclose(counts, [w[0], w[1] + w[2]], atol=5 * np.sqrt(0.25 / len(y)))
    mean = (w[:, None] * np.asarray(FULL.means)).sum(0)
    np.testing.assert_allclose(x0.mean(0), mean, atol=0.01)


def test_isotropic_diagonal_full_agree():
    means, var = [[0.0, 1.0], [2.0, -1.0]], [0.5, 1.5]
    iso = GaussianMixture.isotropic([1, 3], means, var)
    diag = GaussianMixture.diagonal([1, 3], means, [[0.5, 0.5], [1.5, 1.5]])
    full = GaussianMixture.full([1, 3], means, [np.eye(2) * 0.5, np.eye(2) * 1.5])
    x = np.random.default_rng(0).normal(size=(7, 2)) * 2
    for ab in (0.0, 0.4, 1.0):
        ref = iso.x0_eps(x, ab)
        for other in (diag, full):
            for a, b in zip(other.x0_eps(x, ab), ref):
                np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


def test_rotation_equivariance_of_full_covariances():
    """Rotating the data rotates ε: a genuinely full covariance gives ε(Rx) = R ε(x)."""
    c, s = np.cos(0.7), np.sin(0.7)
    R = np.array([[c, -s], [s, c]])
    cov = np.array([[[1.0, 0.0], [0.0, 0.1]], [[0.2, 0.0], [0.0, 0.9]]])
    means = np.array([[1.0, 0.0], [-1.0, 0.5]])
    a = GaussianMixture.full([1, 1], means, cov)
    b = GaussianMixture.full([1, 1], means @ R.T, R @ cov @ R.T)
    x = np.random.default_rng(1).normal(size=(5, 2))
    np.testing.assert_allclose(b.eps(x @ R.T, 0.6), a.eps(x, 0.6) @ R.T, atol=1e-12)


def test_stable_far_away_and_at_the_ends():
    x = np.array([[1e4, -1e4], [0.0, 0.0], [-3e3, 10.0]])
    for ab in (0.0, 1e-12, 0.5, 1 - 1e-12, 1.0):
        for out in (*GM.x0_eps(x, ab), GM.log_prob_class(x, ab, 1), GM.grad_log_prob_class(x, ab, 2)):
            assert np.all(np.isfinite(out)), (ab, out)
    # far away, the ε of the whole mixture points back at it: ε ≈ x_t/√(ᾱσ² + 1−ᾱ)·√(1−ᾱ)
    assert np.sign(GM.eps(x[:1], 0.5)[0, 0]) == 1.0
    # at ᾱ = 0, x̂_0 is the data mean and ε is x_t itself
    np.testing.assert_allclose(GM.x0_eps(x, 0.0)[1], x)
    np.testing.assert_allclose(GM.x0_eps(x, 0.0)[0], np.zeros_like(x), atol=1e-12)


def test_per_sample_alpha_bar_and_labels_equal_looping():
    x = np.random.default_rng(3).normal(size=(4, 2))
    ab = np.array([0.1, 0.5, 0.9, 0.99])
    y = np.array([0, 2, 1, 0])
    out = GM.eps(x, ab, y)
    for i in range(4):
        np.testing.assert_allclose(out[i], GM.eps(x[i:i + 1], float(ab[i]), int(y[i]))[0],
                                   rtol=1e-14, atol=1e-15)


@settings(max_examples=15)
@given(x=X, ab=st.floats(0.05, 0.95))
def test_oracle_on_every_backend(target, x, ab):
    """Same closed forms on every backend row, within the row's dtype tolerance."""
    xr = target.rounded(x)
    y = 1
    for name in ("x0_eps", "log_prob_class", "grad_log_prob_class"):
        fn = getattr(GM, name)
        args = (ab,) if name == "x0_eps" else (ab, y)
        ref = fn(xr, *args)
        got = fn(target.put(x), *args)
        for g, r in zip(got if isinstance(got, tuple) else (got,), ref if isinstance(ref, tuple) else (ref,)):
            # exp/log of squared distances up to ~50: a few more roundings than the steps
            assert_close(g, r, dtype=target.dtype, device=target.device,
                         scale=100 * max(1.0, float(np.abs(r).max())))


def test_torch_autograd_of_log_prob_equals_score():
    torch = pytest.importorskip("torch")
    x = torch.asarray(np.random.default_rng(5).normal(size=(6, 2)))
    for y in (None, 1):
        g = rd.classifier_gradient(lambda z: FULL.log_prob(z, 0.4, y), x)
        np.testing.assert_allclose(g.numpy(), to_numpy(FULL.score(x, 0.4, y)), rtol=1e-12, atol=1e-12)
    g = rd.classifier_gradient(lambda z: FULL.log_prob_class(z, 0.4, 1), x)
    np.testing.assert_allclose(g.numpy(), to_numpy(FULL.grad_log_prob_class(x, 0.4, 1)), atol=1e-12)


@pytest.mark.parametrize("call,match", [
    (lambda: GaussianMixture.isotropic([1, -1], [[0, 0], [1, 1]], 1.0), "weights must be 2 finite positive"),
    (lambda: GaussianMixture.isotropic([1, 1], [[0, 0], [1, 1]], 0.0), "positive definite"),
    (lambda: GaussianMixture.full([1], [[0, 0]], [[[1, 2], [0, 1]]]), "covariances must be symmetric"),
    (lambda: GaussianMixture.isotropic([1, 1], [[0, 0], [1, 1]], 1.0, [0, -1]), "labels must be 2 non-negative"),
    (lambda: GM.eps(np.ones((2, 3)), 0.5), r"x_t must have shape \(B, 2\)"),
    (lambda: GM.eps(np.ones((2, 2)), 0.5, 7), r"y must be a label in 0..2, got 7"),
    (lambda: GM.eps(np.ones((2, 2)), 1.5), r"alpha_bar_t must lie in \[0, 1\]"),
])
def test_oracle_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
