"""The study of examples/guidance_methods.py: its mixture, the imperfect models' inflations,
the metrics against the true p(x_0 | y), the truth's own scores and the SW2 resolution.

Symbols: ``gm`` a :class:`refdiff.oracle.GaussianMixture`; ``x0`` samples, shape (n, 2);
``y`` target labels, shape (n,); ``theta`` projection directions, shape (num, 2); k the
factor every component covariance is multiplied by (k1 the imperfect main model's, k0 its
guide's).

References
----------
Sliced Wasserstein: Bonneel et al., J. Math. Imaging Vis. 51 (2015), §2. Autoguidance:
Karras et al., arXiv:2406.02507v3, Eq. 3 and §3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from refdiff.oracle import GaussianMixture

# ----- the data --------------------------------------------------------------------------

WEIGHTS = [0.2, 0.1, 0.35, 0.2, 0.15]
MEANS = [[-2.0, 0.0], [-0.8, 1.8], [1.5, 0.5], [0.0, -1.8], [2.2, -1.5]]
COVARIANCES = [[[0.5, 0.3], [0.3, 0.3]], [[0.15, 0.0], [0.0, 0.4]], [[0.6, -0.2], [-0.2, 0.4]],
               [[0.8, 0.0], [0.0, 0.1]], [[0.1, 0.0], [0.0, 0.3]]]
LABELS = [0, 0, 1, 2, 2]

K_MAIN = 1.5             # k1: the imperfect main model's inflation
K_GUIDES = (2.0, 4.0)    # k0: its guides' (each worse than the main model)


def study_mixture(inflate: float = 1.0) -> GaussianMixture:
    """The 2-D study mixture: 3 classes, classes 0 and 2 of two components each, anisotropic
    covariances; ``inflate`` = k multiplies every component covariance (the same weights,
    means and labels): the "weaker model" of the autoguidance experiments."""
    return GaussianMixture.full(WEIGHTS, MEANS, np.asarray(COVARIANCES) * inflate, LABELS)


def eps_model(gm: GaussianMixture, schedule: Any) -> Callable[[Any, int, Any], Any]:
    """``model(x_t, t, c)``: the exact ε of ``gm`` at the schedule's ᾱ_t (c = a class label
    array, or None for the whole mixture)."""
    return lambda x, t, c: gm.eps(x, schedule.alpha_bar(t), c)


# ----- the metrics -----------------------------------------------------------------------

def bayes_class(gm: GaussianMixture, x0: np.ndarray) -> np.ndarray:
    """argmax_c p(c | x_0) under ``gm`` (its exact classifier at ᾱ = 1, the clean data)."""
    scores = np.stack([gm.log_prob_class(x0, 1.0, c) for c in range(gm.num_classes)], axis=1)
    return np.argmax(scores, axis=1)


def class_accuracy(gm: GaussianMixture, x0: np.ndarray, y: np.ndarray) -> float:
    """The fraction of samples whose Bayes class under ``gm`` is their target y."""
    return float(np.mean(bayes_class(gm, x0) == y))


def log_prob_given(gm: GaussianMixture, x0: np.ndarray, y: int) -> np.ndarray:
    """log p(x_0 | y) = log p(x_0, y) − log p(y) (``log_prob`` with y is the joint)."""
    prior = float(np.sum(gm.weights[gm.labels == y]))
    return gm.log_prob(x0, 1.0, y) - math.log(prior)


def class_covariance(gm: GaussianMixture, y: int) -> np.ndarray:
    """The exact covariance of p(x_0 | y): Σ_k r_k (Σ_k + μ_k μ_kᵀ) − m mᵀ over the class's
    components (r_k = π_k / Σ π, m = Σ r_k μ_k; the law of total covariance)."""
    sel = gm.labels == y
    r = gm.weights[sel] / np.sum(gm.weights[sel])
    mu, lam, U = gm.means[sel], gm.eigvals[sel], gm.eigvecs[sel]
    cov = np.einsum("kij,kj,klj->kil", U, lam, U)
    m = r @ mu
    return np.einsum("k,kij->ij", r, cov + mu[:, :, None] * mu[:, None, :]) - np.outer(m, m)


def spread_ratio(x0: np.ndarray, cov_true: np.ndarray) -> float:
    """√(tr Cov(x_0) / tr Cov_true): 1 for the truth, < 1 for samples concentrated on the
    class core, > 1 for samples too wide."""
    return float(np.sqrt(np.trace(np.cov(x0, rowvar=False)) / np.trace(cov_true)))


def low_density_fraction(log_p: np.ndarray, threshold: float) -> float:
    """The fraction of samples whose log-density is below ``threshold`` (the truth's 1st
    percentile gives the truth itself ≈ 0.01)."""
    return float(np.mean(log_p < threshold))


def directions(dim: int, num: int = 200, seed: int = 0) -> np.ndarray:
    """``num`` fixed random unit vectors in R^dim, shape (num, dim)."""
    theta = np.random.default_rng(seed).standard_normal((num, dim))
    return theta / np.linalg.norm(theta, axis=1, keepdims=True)


def sorted_projections(x: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """⟨x_i, θ_j⟩ sorted along the samples: shape (n, num directions)."""
    return np.sort(x @ theta.T, axis=0)


def sliced_w2_sorted(pa: np.ndarray, pb: np.ndarray) -> float:
    """SW2 = √(mean_θ W2²(θ·a, θ·b)) from sorted projections of two samples (any sizes n, m).

    W2² of two empirical 1-D laws is ∫₀¹ (F_a⁻¹(u) − F_b⁻¹(u))² du; both quantile functions
    are steps, constant between consecutive breakpoints of {i/n} ∪ {j/m}, so the integral is
    the exact weighted sum over those pieces (for n = m: the mean of squared differences of
    the sorted values)."""
    n, m = pa.shape[0], pb.shape[0]
    edges = np.union1d(np.arange(n + 1) / n, np.arange(m + 1) / m)
    mid, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    ia = np.minimum((mid * n).astype(np.int64), n - 1)
    ib = np.minimum((mid * m).astype(np.int64), m - 1)
    w2 = width @ (pa[ia] - pb[ib]) ** 2                             # (num directions,)
    return float(np.sqrt(np.mean(w2)))


def sliced_w2(a: np.ndarray, b: np.ndarray, num_projections: int = 200, seed: int = 0) -> float:
    """The sliced Wasserstein-2 distance between samples a (n, d) and b (m, d): W2 of the
    1-D projections on ``num_projections`` fixed random directions, root-mean-square over the
    directions (Bonneel et al. 2015, §2)."""
    theta = directions(a.shape[1], num_projections, seed)
    return sliced_w2_sorted(sorted_projections(a, theta), sorted_projections(b, theta))


@dataclass
class Truth:
    """What the metrics compare with, per class: a large exact sample of p(x_0 | y), its
    sorted projections, the exact covariance and the 1st percentile of log p(x_0 | y)."""

    gm: GaussianMixture
    ref: dict
    proj: dict
    cov: dict
    q01: dict
    theta: np.ndarray
    bayes_accuracy: float = 0.0
    floor: float = 0.0          # SW2 of a fresh exact sample of the run's size to ref
    floor_pair: float = 0.0     # SW2 between two exact samples of the run's size
    floor_range: tuple = (0.0, 0.0)  # min, max of SW2 over the fresh exact runs
    floor_sd: float = 0.0       # their standard deviation: the noise of one SW2 value
    low_truth: float = 0.0      # the low-density fraction of a fresh exact sample


FRESH_RUNS = 6


def resolution(truth: Truth) -> float:
    """The smallest SW2 difference taken as a difference: 2·√2 standard deviations of one
    value (two independent values near the floor; runs from one x_T are paired, so this is
    conservative)."""
    return 2.0 * math.sqrt(2.0) * truth.floor_sd


def make_truth(gm: GaussianMixture, n_ref: int, n_run: int, seed: int = 12345) -> Truth:
    """The reference per class (``n_ref`` exact draws) and the truth's own scores for a run
    of ``n_run`` samples (≈ n_run/3 per class): its noise floors, from ``FRESH_RUNS`` exact
    runs scored as a sampled run is (SW2 averaged over the classes)."""
    truth = _reference(gm, n_ref, seed)
    _score_fresh_runs(truth, max(n_run // gm.num_classes, 2), seed)
    return truth


def _reference(gm: GaussianMixture, n_ref: int, seed: int) -> Truth:
    """Per class: ``n_ref`` exact draws, their sorted projections, the exact covariance and
    the 1st percentile of log p(x_0 | y); and the Bayes accuracy of the draws."""
    theta = directions(gm.dim)
    ref, proj, cov, q01 = {}, {}, {}, {}
    acc = []
    for c in range(gm.num_classes):
        ref[c] = gm.sample(n_ref, generator=seed + c, y=c)[0]
        proj[c] = sorted_projections(ref[c], theta)
        cov[c] = class_covariance(gm, c)
        q01[c] = float(np.quantile(log_prob_given(gm, ref[c], c), 0.01))
        acc.append(class_accuracy(gm, ref[c], np.full(n_ref, c)))
    return Truth(gm, ref, proj, cov, q01, theta, bayes_accuracy=float(np.mean(acc)))


def _score_fresh_runs(truth: Truth, per: int, seed: int) -> None:
    """Fill the truth's noise floors from ``FRESH_RUNS`` fresh exact runs of ``per`` draws
    per class (the size of a sampled run), scored as a sampled run is."""
    gm, theta = truth.gm, truth.theta
    floors, pairs, lows = [], [], []
    for r in range(FRESH_RUNS):
        floors.append([])
        for c in range(gm.num_classes):
            a = gm.sample(per, generator=10 * seed + 7 * r + c, y=c)[0]
            b = gm.sample(per, generator=20 * seed + 7 * r + c, y=c)[0]
            floors[-1].append(sliced_w2_sorted(sorted_projections(a, theta), truth.proj[c]))
            pairs.append(sliced_w2_sorted(sorted_projections(a, theta),
                                          sorted_projections(b, theta)))
            lows.append(low_density_fraction(log_prob_given(gm, a, c), truth.q01[c]))
    runs = np.mean(floors, axis=1)                                  # one SW2 per run
    truth.floor, truth.floor_pair = float(np.mean(runs)), float(np.mean(pairs))
    truth.floor_range = (float(np.min(runs)), float(np.max(runs)))
    truth.floor_sd = float(np.std(runs, ddof=1))
    truth.low_truth = float(np.mean(lows))


def metrics(truth: Truth, x0: np.ndarray, y: np.ndarray) -> dict:
    """Accuracy (all samples), and SW2, spread and low-density fraction per target class,
    averaged over the classes."""
    gm, sw, spread, low = truth.gm, [], [], []
    for c in range(gm.num_classes):
        xc = x0[y == c]
        sw.append(sliced_w2_sorted(sorted_projections(xc, truth.theta), truth.proj[c]))
        spread.append(spread_ratio(xc, truth.cov[c]))
        low.append(low_density_fraction(log_prob_given(gm, xc, c), truth.q01[c]))
    return {"acc": class_accuracy(gm, x0, y), "sw2": float(np.mean(sw)),
            "spread": float(np.mean(spread)), "low": float(np.mean(low))}


def first_order_autoguidance(k1: float, k0: float) -> float:
    """The w at which autoguidance undoes a k1-fold inflation at ᾱ → 1 for one Gaussian
    component: precisions add as w/k1 − (w − 1)/k0 = 1, so w = (1 − 1/k0)/(1/k1 − 1/k0)."""
    return (1 - 1 / k0) / (1 / k1 - 1 / k0)
