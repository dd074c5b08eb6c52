"""Distribution-level tests on the exact Gaussian-mixture oracle.

Each test states its statistic, its threshold and its false-alarm rate. Everything is seeded,
so a run is reproducible; the false-alarm rates say how often an independent seed would fail
a correct sampler. Each sampler test is also run on a planted bug, the update
x_prev = √ᾱ_prev·x̂_0 + √(1−ᾱ_prev)·z that some tutorials use in place of the posterior, and must
reject it (the statistic appears in the failure message; ``pytest -s`` prints it). The two
CG = CFG tests compare two guidance forms through one sampler, so no sampler bug can show
there; they have no planted variant.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

import refdiff as rd
from refdiff.oracle import GaussianMixture, demo_mixture

SCH = rd.linear_schedule(1000)
GM = demo_mixture()                       # 6 well-separated components, 3 classes
OVERLAP = GaussianMixture.isotropic([1, 1], [[-0.75, 0.0], [0.75, 0.0]], 0.5**2, [0, 1])


def oracle_model(gm):
    return lambda x, t, c: gm.eps(x, SCH.alpha_bar(t), c)


def planted_sampler(model, x, timesteps, *, guidance=None, generator=0, **_):
    """The planted bug: re-noise x̂_0 to the next level with fresh noise (not the posterior)."""
    rng = np.random.default_rng(generator)
    g = guidance or rd.Guidance()
    for i, t in enumerate(timesteps):
        last = i == len(timesteps) - 1
        ab, ab_prev = SCH.alpha_bar(t), 1.0 if last else SCH.alpha_bar(timesteps[i + 1])
        eps = model(x, t, g.cond) if g.scale == 1 else rd.cfg(model(x, t, g.uncond),
                                                               model(x, t, g.cond), g.scale)
        x0, _ = rd.predict_x0_eps(x, eps, ab)
        z = np.zeros_like(x) if last else rng.standard_normal(x.shape)
        x = np.sqrt(ab_prev) * x0 + np.sqrt(1 - ab_prev) * z
    return x


def reference_sampler(model, x, timesteps, **kw):
    return rd.sample(model, x, SCH, timesteps=timesteps, **kw)


SAMPLERS = {"reference": reference_sampler, "planted-tutorial-update": planted_sampler}


def component_stats(gm, x):
    """Assign each sample to its nearest component mean (the components are 8σ apart)."""
    means = np.asarray(gm.means)
    k = np.argmin(((x[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    return means, k


def check_mixture(gm, x, alpha=1e-3):
    """Binomial test of each component's count, z-tests of each component mean and variance
    (variance SE = σ²·√(2/(n_k−1))), all Bonferroni-corrected to a total false-alarm rate
    ``alpha``; raises AssertionError listing every statistic that failed."""
    means, k = component_stats(gm, x)
    w, lam = np.asarray(gm.weights), np.asarray(gm.eigvals)
    K, d = means.shape
    per_test = alpha / (K * (1 + 2 * d))
    zcrit = stats.norm.isf(per_test / 2)
    fails = []
    for j in range(K):
        pts = x[k == j]
        p = stats.binomtest(len(pts), len(x), w[j]).pvalue
        if p < per_test:
            fails.append(f"component {j}: count {len(pts)} vs expected {w[j] * len(x):.0f} (p={p:.1e})")
        z_mean = (pts.mean(0) - means[j]) / np.sqrt(lam[j] / len(pts))
        z_var = (pts.var(0, ddof=1) - lam[j]) / (lam[j] * np.sqrt(2 / (len(pts) - 1)))
        for name, z in (("mean", z_mean), ("variance", z_var)):
            if np.any(np.abs(z) > zcrit):
                fails.append(f"component {j}: {name} z-scores {np.round(z, 1)} (|z| ≤ {zcrit:.1f})")
    assert not fails, "; ".join(fails)


def check_projections(x, ref, alpha=1e-3, n_dirs=8):
    """Two-sample KS on n_dirs fixed projections, Bonferroni to total false alarm ``alpha``."""
    angles = np.linspace(0, np.pi, n_dirs, endpoint=False)
    dirs = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    p = [stats.ks_2samp(x @ u, ref @ u).pvalue for u in dirs]
    assert min(p) >= alpha / n_dirs, f"KS on projections: min p = {min(p):.1e} < {alpha / n_dirs:.1e}"


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_ddpm_with_exact_eps_reproduces_the_mixture(sampler):
    """DDPM, all 1000 steps, exact ε, n = 3000: counts, means, variances (total false alarm
    1e-3) and KS on 8 projections against 30 000 exact draws (total false alarm 1e-3)."""
    x_T = np.random.default_rng(0).standard_normal((3000, 2))
    x = SAMPLERS[sampler](oracle_model(GM), x_T, rd.inference_timesteps(1000, 1000),
                          sampler="ddpm", generator=1)
    ref, _ = GM.sample(30_000, generator=2)

    def both():
        check_mixture(GM, x)
        check_projections(x, ref)

    if sampler == "reference":
        both()
    else:
        with pytest.raises(AssertionError, match="variance z-scores") as info:
            both()
        print("planted bug rejected:", info.value)


def moment_distance(gm, x) -> float:
    """Σ_k |ŵ_k − w_k| + ‖μ̂_k − μ_k‖ + ‖Σ̂_k − Σ_k‖_F over nearest-mean clusters."""
    means, k = component_stats(gm, x)
    total = 0.0
    for j in range(len(means)):
        pts = x[k == j]
        cov = np.asarray(gm.eigvecs)[j] @ np.diag(np.asarray(gm.eigvals)[j]) @ np.asarray(gm.eigvecs)[j].T
        total += (abs(len(pts) / len(x) - float(gm.weights[j])) + np.linalg.norm(pts.mean(0) - means[j])
                  + np.linalg.norm(np.cov(pts.T) - cov))
    return float(total)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_ddim_approaches_the_data_as_steps_grow(sampler):
    """DDIM η = 0, exact ε, trailing spacing, the same 3000 starting points: the moment
    distance falls strictly over 2, 5, 10, 25, 100 steps and ends below 0.25. Exact draws of
    the same size give 0.15–0.17 (six seeds), so 0.25 is a false alarm of essentially 0."""
    x_T = np.random.default_rng(0).standard_normal((3000, 2))
    dist = [moment_distance(GM, SAMPLERS[sampler](
        oracle_model(GM), x_T, rd.inference_timesteps(1000, n, "trailing"), generator=1))
        for n in (2, 5, 10, 25, 100)]
    ok = all(a > b for a, b in zip(dist, dist[1:])) and dist[-1] < 0.25
    message = f"moment distance over 2, 5, 10, 25, 100 steps: {np.round(dist, 3)}"
    if sampler == "reference":
        assert ok, message
    else:
        assert not ok, message
        print("planted bug rejected:", message)


def test_classifier_guidance_equals_cfg_pointwise():
    """With exact densities, CG (Algorithm 2) on the unconditional ε at scale s equals CFG
    at scale s: ε_u − s√(1−ᾱ)∇log p(y|x_t) = ε_u + s(ε_c − ε_u), to 1e-10 in float64."""
    rng = np.random.default_rng(0)
    for gm in (GM, OVERLAP):
        for ab in (0.001, 0.1, 0.5, 0.9, 0.9999):
            x = rng.normal(size=(200, 2)) * 2.5
            for s in (0.0, 0.5, 1.0, 3.0, 7.5):
                for y in range(gm.num_classes):
                    cg = rd.classifier_guided_eps(gm.eps(x, ab), gm.grad_log_prob_class(x, ab, y), ab, s)
                    free = rd.cfg(gm.eps(x, ab), gm.eps(x, ab, y), s)
                    np.testing.assert_allclose(cg, free, rtol=0, atol=1e-10)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_classifier_guidance_equals_cfg_samples(eta):
    """The same noise gives the same DDIM samples (max difference 1e-8) under CG and CFG."""
    x_T = np.random.default_rng(0).standard_normal((500, 2))
    y = np.arange(500) % 3
    kw = dict(num_inference_steps=50, eta=eta, generator=3)
    cg = rd.sample(oracle_model(GM), x_T, SCH, guidance=rd.Guidance(
        classifier=lambda x, t: None, classifier_scale=4.0,
        grad_log_prob=lambda x, t: GM.grad_log_prob_class(x, SCH.alpha_bar(t), y)), **kw)
    free = rd.sample(oracle_model(GM), x_T, SCH, guidance=rd.Guidance(cond=y, scale=4.0), **kw)
    assert np.max(np.abs(cg - free)) < 1e-8


def _guided(sampler, scale, n=3000):
    x_T = np.random.default_rng(5).standard_normal((n, 2))
    y = np.arange(n) % 2
    x = SAMPLERS[sampler](oracle_model(OVERLAP), x_T, rd.inference_timesteps(1000, 250),
                          sampler="ddpm", generator=6, guidance=rd.Guidance(cond=y, scale=scale))
    return x, y


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_guidance_sharpens(sampler):
    """Over s = 1, 1.5, 2, 3, 5 (common random numbers): the mean exact log p(y | x_0) rises
    strictly and the within-class standard deviation falls strictly, starting from the right
    place: at s = 1 each class passes the mean and variance z-tests of ``check_mixture``
    against its exact Gaussian (false alarm 1e-3 per class)."""
    logp, spread = [], []
    for s in (1.0, 1.5, 2.0, 3.0, 5.0):
        x, y = _guided(sampler, s)
        logp.append(float(np.mean([OVERLAP.log_prob_class(x[y == c], 1.0, c).mean() for c in (0, 1)])))
        spread.append(float(np.mean([x[y == c].std(0).mean() for c in (0, 1)])))
        if s == 1.0:
            anchor = (x, y)
    msg = f"mean log p(y|x0) {np.round(logp, 4)}, within-class std {np.round(spread, 4)}"

    def checks():
        assert all(a < b for a, b in zip(logp, logp[1:])), msg
        assert all(a > b for a, b in zip(spread, spread[1:])), msg
        for c in (0, 1):
            single = GaussianMixture.isotropic([1], [np.asarray(OVERLAP.means)[c]], 0.25)
            check_mixture(single, anchor[0][anchor[1] == c])

    if sampler == "reference":
        checks()
    else:
        with pytest.raises(AssertionError) as info:
            checks()
        print("planted bug rejected:", info.value, "|", msg)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_scale_0_and_1_reproduce_unconditional_and_conditional(sampler):
    """s = 0 against exact draws of the mixture, s = 1 against each class: KS on 8
    projections (total false alarm 1e-3 per comparison) and, per class, the mean and variance
    z-tests of ``check_mixture`` (false alarm 1e-3)."""
    def checks():
        x0, _ = _guided(sampler, 0.0)
        check_projections(x0, OVERLAP.sample(30_000, generator=7)[0])
        x1, y = _guided(sampler, 1.0)
        for c in (0, 1):
            single = GaussianMixture.isotropic([1], [np.asarray(OVERLAP.means)[c]], 0.25)
            check_mixture(single, x1[y == c])
            check_projections(x1[y == c], OVERLAP.sample(15_000, generator=8 + c, y=c)[0])

    if sampler == "reference":
        checks()
    else:
        with pytest.raises(AssertionError) as info:
            checks()
        print("planted bug rejected:", info.value)
