"""The Gaussian-mixture oracle: closed forms against finite differences, Monte Carlo, each
other, and across backends."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refdiff as rd
from refdiff.testing import assert_close, bounds
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


def _oracle_error(gm, x, ab, y, u):
    """First-order bounds E (elementwise) on the evaluation error of x0_eps, log_prob_class
    and grad_log_prob_class at float64 inputs (x, ᾱ), computed with unit roundoff u: the
    parameters (π, μ, λ, U), ᾱ and every intermediate rounded once (Higham §3.1, γ_k).

    Per component k (axes: b, k, d): diff = x − √ᾱ·μ_k, 4 roundings of |x| + √ᾱ|μ_k|;
    proj = Uᵀ·diff, d + 2 more of |diff|·|U|; c = ᾱλ + 1 − ᾱ > 0, 4 roundings of ᾱλ + 1;
    the log joint l_k = log π_k − ½(Σ proj²/c + Σ log c + d log 2π) carries Δl_k from
    these. The softmax r = exp(l − max l)/Σ is invariant to the max, so r_k moves by
    r_k·(Δl'_k + Σ_j r_j Δl'_j) + γ_{K+1}, Δl'_k = Δl_k + u|l_k − max l|, and the log-sum-exp
    by Σ_j r_j Δl'_j + γ_K + u(|log S| + |lse|). A weighted sum Σ_k r_k v_k then errs by
    Σ_k r_k (ρ_k |v_k| + Δv_k) + γ_{K+1} Σ_k r_k |v_k| (ρ_k: r_k's relative error)."""
    g = lambda k: k * u / (1 - k * u)
    w, mu, lam, U = (np.asarray(v, dtype=np.float64) for v in
                     (gm.weights, gm.means, gm.eigvals, gm.eigvecs))
    K, d = mu.shape
    a = np.sqrt(ab)
    diff = x[:, None, :] - a * mu[None]                                       # (B, K, d)
    d_diff = g(4) * (np.abs(x)[:, None, :] + a * np.abs(mu)[None])
    proj = np.einsum("bki,kij->bkj", diff, U)                                # Uᵀ(x − √ᾱμ)
    d_proj = np.einsum("bki,kij->bkj", d_diff + g(d + 2) * np.abs(diff), np.abs(U))
    c = ab * lam + (1 - ab)                                                  # (K, d)
    d_c = g(4) * (ab * lam + 1)
    q_terms = proj**2 / c
    d_q = ((2 * np.abs(proj) * d_proj + q_terms * d_c) / c + g(2) * q_terms).sum(-1) \
        + g(d) * q_terms.sum(-1)
    logc = np.log(c)
    d_logc = (d_c / c + u * np.abs(logc)).sum(-1) + g(d) * np.abs(logc).sum(-1)
    lj = np.log(w) - 0.5 * (q_terms.sum(-1) + logc.sum(-1) + d * np.log(2 * np.pi))
    d_lj = u * (1 + np.abs(np.log(w))) + 0.5 * (d_q + d_logc) + g(3) * (
        np.abs(np.log(w)) + 0.5 * (q_terms.sum(-1) + np.abs(logc).sum(-1) + d * np.log(2 * np.pi)))
    Ut = np.abs(np.swapaxes(U, -1, -2))
    inv = lambda v: np.einsum("bki,kij->bkj", v, np.swapaxes(U, -1, -2))    # v·Uᵀ
    absinv = lambda v: np.einsum("bki,kij->bkj", v, Ut)
    score_k = -inv(proj / c)
    d_score_k = absinv(d_proj / c + np.abs(proj) * d_c / c**2) + g(d + 3) * absinv(np.abs(proj) / c)
    p1 = absinv(np.abs(proj) * lam / c)
    post_k = mu + a * inv(proj * lam / c)
    d_post_k = u * np.abs(mu) + a * absinv((d_proj * lam + np.abs(proj) * lam * d_c / c) / c) \
        + g(d + 5) * a * p1 + u * (np.abs(mu) + a * p1)

    def softmax(mask):
        l = np.where(mask, lj, -np.inf)
        m = l.max(1, keepdims=True)
        r = np.exp(l - m)
        total = r.sum(1, keepdims=True)
        r = r / total
        dl = np.where(mask, d_lj + u * np.abs(np.where(mask, l - m, 0)), 0)
        mean_dl = (r * dl).sum(1, keepdims=True)
        rho = dl + mean_dl + g(K + 1)
        lse = m[:, 0] + np.log(total[:, 0])
        d_lse = mean_dl[:, 0] + g(K) + u * (np.abs(np.log(total[:, 0])) + np.abs(lse))
        return r, rho, lse, d_lse

    def weighted(r, rho, v, dv):
        r3, rho3 = r[:, :, None], rho[:, :, None]
        mag = (r3 * np.abs(v)).sum(1)
        return (r3 * v).sum(1), (r3 * (rho3 * np.abs(v) + dv)).sum(1) + g(K + 1) * mag

    everything = np.ones((x.shape[0], K), dtype=bool)
    r, rho, lse, d_lse = softmax(everything)
    _, d_x0 = weighted(r, rho, post_k, d_post_k)
    score, d_score = weighted(r, rho, score_k, d_score_k)
    d_eps = np.sqrt(1 - ab) * (d_score + g(3) * np.abs(score))
    ry, rhoy, lse_y, d_lse_y = softmax(np.broadcast_to(np.asarray(gm.labels) == y, r.shape))
    score_y, d_score_y = weighted(ry, rhoy, score_k, d_score_k)
    return {"x0_eps": (d_x0, d_eps),
            "log_prob_class": (d_lse_y + d_lse + u * (np.abs(lse_y) + np.abs(lse)),),
            "grad_log_prob_class": (d_score_y + d_score + u * (np.abs(score_y) + np.abs(score)),)}


def oracle_bounds(gm, x, ab, y, dtype, ref):
    """Bounds on |candidate − NumPy float64| for the oracle in ``dtype``, on the rounded x:
    narrow dtypes (float16, bfloat16) compute in float32 and round the result once, so

        |got − ref| ≤ u_out·|ref| + η_out + (1 + u_out)·S·(E_c + E_64),

    u_out the dtype's unit roundoff and η_out its smallest subnormal for a narrow dtype (0
    otherwise: the last operation's rounding is in E_c), E_c the evaluation
    error in the dtype computed in (:func:`_oracle_error`), E_64 the reference's own, and
    S = 2 (the kit's safety factor: other evaluation orders). A sign-flipped ε misses by
    2|ε| ≫ u_out·|ε|; the old fixed scale 100·max(1, |r|)·RTOL let it through in bfloat16."""
    u = bounds.UNIT_ROUNDOFF
    narrow = dtype in ("float16", "bfloat16")
    u_c, u_out = u["float32" if narrow else dtype], (u[dtype] if narrow else 0.0)
    eta_out = bounds.UNDERFLOW[dtype] if narrow else 0.0  # a result that rounds to a subnormal
    e_c, e_64 = _oracle_error(gm, x, ab, y, u_c), _oracle_error(gm, x, ab, y, u["float64"])
    return {name: tuple(u_out * np.abs(r) + eta_out + (1 + u_out) * bounds.SAFETY * (ec + e64)
                        for r, ec, e64 in zip(ref[name], e_c[name], e_64[name]))
            for name in e_c}


@settings(max_examples=15)
@given(x=X, ab=st.floats(0.05, 0.95))
def test_oracle_on_every_backend(target, x, ab):
    """Same closed forms on every backend row, within the row's first-order error bound
    (:func:`oracle_bounds`). Measured max error/bound (its inverse is the margin) over the
    CI profile's 15 examples × 4 outputs per row, 2026-12-01: numpy and array-api-strict
    float64 0 (bitwise equal), torch float64 0.013 (78×), float32 0.034 (29×, every
    library), float16 0.87 (1.14×), bfloat16 0.96 (1.05×): in the narrow dtypes the output's
    own rounding u_out·|ref| dominates and a correct result lands anywhere up to it, so no
    margin is possible there. 750 random points per row on both test mixtures (the full
    covariance one too) stayed at ≤ 0.98."""
    xr = target.rounded(x)
    y = 1
    refs = {}
    for name in ("x0_eps", "log_prob_class", "grad_log_prob_class"):
        args = (ab,) if name == "x0_eps" else (ab, y)
        ref = getattr(GM, name)(xr, *args)
        refs[name] = ref if isinstance(ref, tuple) else (ref,)
    bnd = oracle_bounds(GM, xr, ab, y, target.dtype, refs)
    for name, ref in refs.items():
        args = (ab,) if name == "x0_eps" else (ab, y)
        got = getattr(GM, name)(target.put(x), *args)
        for g, r, b in zip(got if isinstance(got, tuple) else (got,), ref, bnd[name]):
            assert_close(g, r, dtype=target.dtype, device=target.device, bound=b)


def test_torch_autograd_of_log_prob_equals_score():
    torch = pytest.importorskip("torch")
    x = torch.asarray(np.random.default_rng(5).normal(size=(6, 2)))
    for y in (None, 1):
        g = rd.classifier_gradient(lambda z: FULL.log_prob(z, 0.4, y), x)
        np.testing.assert_allclose(g.numpy(), to_numpy(FULL.score(x, 0.4, y)), rtol=1e-12, atol=1e-12)
    g = rd.classifier_gradient(lambda z: FULL.log_prob_class(z, 0.4, 1), x)
    np.testing.assert_allclose(g.numpy(), to_numpy(FULL.grad_log_prob_class(x, 0.4, 1)), atol=1e-12)


def test_jax_grad_of_log_prob_equals_score():
    """jax.grad through the oracle (the backend's grad, via rd.classifier_gradient) against
    its closed-form score, float64 (conftest turns on JAX's 64-bit mode)."""
    jnp = pytest.importorskip("jax.numpy")
    x = jnp.asarray(np.random.default_rng(5).normal(size=(6, 2)), dtype=jnp.float64)
    for y in (None, 1):
        g = rd.classifier_gradient(lambda z: FULL.log_prob(z, 0.4, y), x)
        assert g.dtype == jnp.float64
        np.testing.assert_allclose(to_numpy(g), to_numpy(FULL.score(x, 0.4, y)), rtol=1e-12,
                                   atol=1e-12)
    g = rd.classifier_gradient(lambda z: FULL.log_prob_class(z, 0.4, 1), x)
    np.testing.assert_allclose(to_numpy(g), to_numpy(FULL.grad_log_prob_class(x, 0.4, 1)),
                               atol=1e-12)


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
