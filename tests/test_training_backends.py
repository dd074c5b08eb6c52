"""The training-side math on every backend row against NumPy float64, plus torch autograd.

Inputs are drawn in NumPy float64, rounded to the row's dtype and moved to its library and
device (conftest's Target); the reference is NumPy float64 on the rounded inputs.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refdiff as rd
from refdiff.testing import assert_close, bounds
from refdiff.testing.tolerance import to_numpy
from strategies import alpha_bars, batch

LOSS_CASES = [("epsilon", "none"), ("sample", "min_snr"), ("v_prediction", "min_snr"),
              ("epsilon", "min_snr")]


def loss_bound(out, x0, eps, ab, pt, weighting, dtype):
    """|candidate − NumPy float64| for the per-sample loss w·(1/D)·Σ_i (o_i − y_i)² in
    ``dtype`` (unit roundoff u, underflow η), on the same rounded inputs, first order:

    - the target y: ε and x_0 exact; v = a·ε − b·x_0 with a = √ᾱ, b = √(1−ᾱ) cast once from
      float64: Δy ≤ γ_3·(a|ε| + b|x_0|);
    - d = o − y: Δd ≤ Δy + u|d|; d²: 2|d|·Δd + u·d² + η;
    - the mean over D: (1/D)·Σ Δ(d²) + γ_D·mse + η; the weight (cast once) and its
      product: |w|·Δmse + γ_2·|w|·mse + η;

    times the kit's factor S + u₆₄/u (:func:`refdiff.testing.bounds.factor`: other
    evaluation orders, and the float64 reference's own error). A wrong target moves the loss
    by O(|x_0 − ε|·|d|), far above it; the old fixed scale 2000 allowed 8 in float16 and 60
    in bfloat16 on losses of at most ~250."""
    p = bounds.Precision(dtype)
    B = out.shape[0]
    o, x0, eps = (a.reshape(B, -1) for a in (out, x0, eps))
    D = o.shape[1]
    a, b = np.sqrt(ab)[:, None], np.sqrt(1 - ab)[:, None]
    if pt == "epsilon":
        y, dy = eps, 0.0
    elif pt == "sample":
        y, dy = x0, 0.0
    else:
        y, dy = a * eps - b * x0, p.gamma(3) * (a * np.abs(eps) + b * np.abs(x0))
    d = o - y
    d_sq = 2 * np.abs(d) * (dy + p.u * np.abs(d)) + p.u * d**2 + p.eta
    mse = np.mean(d**2, axis=1)
    d_mse = np.mean(d_sq, axis=1) + p.gamma(D) * mse + p.eta
    w = np.abs(rd.min_snr_weight(ab, 5.0, pt)) if weighting == "min_snr" else 1.0
    return bounds.factor(p) * (w * d_mse + p.gamma(2) * w * mse + p.eta)


@pytest.mark.parametrize("pt,weighting", LOSS_CASES, ids=lambda v: str(v))
@settings(max_examples=15)
@given(b=batch(3), ab=st.lists(alpha_bars, min_size=4, max_size=4))
def test_diffusion_loss_matches_numpy(target, pt, weighting, b, ab):
    """Measured max error/bound (its inverse is the margin) over the CI profile's 15
    examples per case, 2026-12-01: numpy and array-api-strict float64 0 (bitwise equal), torch
    float64 0.11 (9×); float32 0.21 (4.8×; numpy 7×, array-api-strict 6.5×); float16 0.19
    (5.4×); bfloat16 0.15 (6.8×). 400 random batches per row (torch, magnitudes 1e-2 to 3)
    stayed at ≤ 0.28."""
    arrays = [target.rounded(a) for a in b]
    ab = np.resize(np.array(ab), arrays[0].shape[0])
    expected = rd.diffusion_loss(*arrays, ab, pt, weighting=weighting, reduction="none")
    out = rd.diffusion_loss(*[target.put(a) for a in arrays], target.with_dtype("float64").put(ab), pt,
                            weighting=weighting, reduction="none")
    bound = loss_bound(*arrays, ab, pt, weighting, target.dtype)
    assert_close(out, expected, dtype=target.dtype, device=target.device, bound=bound)


def cross_entropy_bound(logits, labels, dtype):
    """|candidate − NumPy float64| for CE = −(s_y − log Σ_j e^{s_j}), s = l − max l, in
    ``dtype``, first order: s_j carries u|s_j| (the subtraction), e^{s_j} a relative
    Δs_j + 2u (exp within an ulp), the sum Σ_j p_j·(u|s_j| + 2u) + γ_{K−1} relative, its log
    that plus 2u|log S|, the result u|CE|; times the kit's factor S + u₆₄/u. The old fixed
    scale allowed 0.6 in bfloat16."""
    p = bounds.Precision(dtype)
    s = logits - logits.max(axis=1, keepdims=True)
    log_s = np.log(np.exp(s).sum(axis=1))
    prob = np.exp(s - log_s[:, None])
    s_y = s[np.arange(len(labels)), labels]
    K = logits.shape[1]
    rel_sum = (prob * (p.u * np.abs(s) + 2 * p.u)).sum(axis=1) + p.gamma(K - 1)
    err = p.u * np.abs(s_y) + rel_sum + 2 * p.u * np.abs(log_s) + p.u * np.abs(log_s - s_y) + p.eta
    return bounds.factor(p) * err


@settings(max_examples=15)
@given(n=st.integers(1, 6), K=st.integers(2, 5), seed=st.integers(0, 2**32 - 1))
def test_cross_entropy_matches_numpy(target, n, K, seed):
    """Measured max error/bound over the CI profile's 15 examples, 2026-12-01: numpy and
    array-api-strict float64 0, torch float64 0.10 (9.7×); float32 0.24 (4.2×); float16 0.21
    (4.8×); bfloat16 0.22 (4.6×). 400 random cases per row stayed at ≤ 0.42."""
    rng = np.random.default_rng(seed)
    logits = target.rounded(rng.normal(scale=3.0, size=(n, K)))
    labels = rng.integers(0, K, n)
    expected = rd.cross_entropy(logits, labels, reduction="none")
    out = rd.cross_entropy(target.put(logits), _int_labels(target, labels), reduction="none")
    assert_close(out, expected, dtype=target.dtype, device=target.device,
                 bound=cross_entropy_bound(logits, labels, target.dtype))


def _int_labels(target, labels: np.ndarray):
    """int64 labels in the row's library and on its device."""
    if target.backend == "numpy":
        return labels
    made = target.with_dtype("float64").put(labels)
    if target.backend == "torch":
        return made.to(dtype=__import__("torch").int64)
    if target.backend == "jax":
        return made.astype(__import__("jax.numpy").numpy.int64)
    import array_api_strict as xs

    return xs.astype(made, xs.int64)


def test_sinusoidal_embedding_matches_numpy(target):
    v = np.array([0.0, 1.5, 999.0, -3.25])
    expected = rd.sinusoidal_embedding(target.rounded(v), 8)
    out = rd.sinusoidal_embedding(target.put(v), 8)
    assert_close(out, expected, dtype=target.dtype, device=target.device)


def test_draws_are_seeded_on_every_library(target):
    """Same seed, same draws within a library; int64 timesteps and a bool mask on the
    device of the input; numpy and array-api-strict share NumPy's generator."""
    x = target.put(np.zeros((64, 2)))
    t1 = rd.sample_timesteps(x, 100, generator=7)
    assert np.array_equal(to_numpy(t1), to_numpy(rd.sample_timesteps(x, 100, generator=7)))
    assert str(t1.dtype).split(".")[-1] == "int64"
    if target.backend == "array_api_strict":
        np.testing.assert_array_equal(
            to_numpy(t1), rd.sample_timesteps(np.zeros((64, 2)), 100, generator=7))
    assert to_numpy(t1).min() >= 0 and to_numpy(t1).max() <= 99
    ab = rd.alpha_bar_at(rd.cosine_schedule(100), t1)
    assert str(ab.dtype).split(".")[-1] == "float64" and tuple(ab.shape) == (64,)
    emb = target.put(np.ones((64, 3)))
    out, dropped = rd.drop_condition(emb, 0.0, 0.3, generator=2)
    expected = np.where(to_numpy(dropped)[:, None], 0.0, np.ones((64, 3)))
    assert_close(out, expected, dtype=target.dtype, device=target.device, rtol=0.0)
    s = rd.sample_guidance_scales(x, 1.0, 4.0, generator=3)
    assert str(s.dtype).split(".")[-1] == "float64" and float(to_numpy(s).min()) >= 1.0


def test_torch_autograd_through_the_losses():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x0, eps, out = (torch.asarray(rng.normal(size=(3, 4))) for _ in range(3))
    ab = torch.asarray([0.2, 0.5, 0.9], dtype=torch.float64)
    out.requires_grad_(True)
    loss = rd.diffusion_loss(out, x0, eps, ab, "v_prediction", weighting="min_snr")
    loss.backward()
    w = rd.min_snr_weight(ab, 5.0, "v_prediction")[:, None]
    target = rd.v_target(x0, eps, ab)
    # d/d out of mean_b w_b·mean_d (out − y)² = 2·w_b·(out − y)/(B·D)
    torch.testing.assert_close(out.grad, 2 * w * (out.detach() - target) / 12, rtol=1e-12, atol=0)
    logits = torch.asarray(rng.normal(size=(5, 3)), requires_grad=True)
    labels = torch.asarray([0, 2, 1, 1, 0])
    rd.cross_entropy(logits, labels).backward()
    ref = logits.detach().clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(ref, labels).backward()
    torch.testing.assert_close(logits.grad, ref.grad, rtol=1e-12, atol=1e-15)


def test_learned_null_embedding_gets_the_gradient():
    torch = pytest.importorskip("torch")
    emb = torch.ones(8, 3)
    null = torch.zeros(3, requires_grad=True)
    out, dropped = rd.drop_condition(emb, null, 0.5, generator=torch.Generator().manual_seed(0))
    out.sum().backward()
    assert torch.equal(null.grad, torch.full((3,), float(dropped.sum())))
    assert 0 < int(dropped.sum()) < 8
