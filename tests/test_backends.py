"""Tier 3: every public function on every backend row against NumPy float64.

Inputs are drawn in NumPy float64, rounded to the row's dtype, and moved to the row's
library and device; the reference is NumPy float64 on the rounded inputs, so the comparison
measures only the arithmetic of the row. Also checked: dtype, shape and device of every
output; CFG's exact ends bit for bit; autograd through the math on torch.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refdiff as rd
from refdiff.testing import assert_close
from refdiff.testing.tolerance import to_numpy
from strategies import alpha_pair, batch

# Each case: (number of arrays, function(arrays, ab_t, ab_prev) -> array or tuple of arrays).
# ab_t < ab_prev always; both in [0.04, 1].
CASES = {
    "q_sample": (2, lambda a, t, p: rd.q_sample(a[0], t, a[1])),
    "v_target": (2, lambda a, t, p: rd.v_target(a[0], a[1], t)),
    "predict_x0_eps-epsilon": (2, lambda a, t, p: rd.predict_x0_eps(a[0], a[1], t)),
    "predict_x0_eps-sample": (2, lambda a, t, p: rd.predict_x0_eps(a[0], a[1], t, "sample")),
    "predict_x0_eps-v": (2, lambda a, t, p: rd.predict_x0_eps(a[0], a[1], t, "v_prediction")),
    "prediction_from_x0_eps-v": (2, lambda a, t, p: rd.prediction_from_x0_eps(
        a[0], a[1], t, "v_prediction")),
    "q_posterior": (2, lambda a, t, p: rd.q_posterior(a[0], a[1], t, p)),
    "ddpm_step-small": (3, lambda a, t, p: rd.ddpm_step(a[0], a[1], t, p, a[2])),
    "ddpm_step-large-clip": (3, lambda a, t, p: rd.ddpm_step(
        a[0], a[1], t, p, a[2], variance_type="fixed_large", clip_x0=1.0)),
    "ddpm_mean_variance": (2, lambda a, t, p: rd.ddpm_mean_variance(a[0], a[1], t, p)),
    "ddim_step-eta0": (2, lambda a, t, p: rd.ddim_step(a[0], a[1], t, p)),
    "ddim_step-eta0.6-clip": (3, lambda a, t, p: rd.ddim_step(
        a[0], a[1], t, p, eta=0.6, noise=a[2], clip_x0=1.0)),
    "ddim_step-clip-keep-eps": (2, lambda a, t, p: rd.ddim_step(
        a[0], a[1], t, p, clip_x0=0.5, rederive_eps=False)),
    "ddim_inversion_step": (2, lambda a, t, p: rd.ddim_inversion_step(a[0], a[1], p, t)),
    "cfg": (2, lambda a, t, p: rd.cfg(a[0], a[1], 4.5)),
    "cfg-interp": (2, lambda a, t, p: rd.cfg(a[0], a[1], 0.3)),
    "cfg_multi": (3, lambda a, t, p: rd.cfg_multi(a[0], [a[1], a[2]], [2.0, -0.5])),
    "guidance_rescale": (2, lambda a, t, p: rd.guidance_rescale(a[0], a[1], 0.7)),
    "classifier_guided_eps": (2, lambda a, t, p: rd.classifier_guided_eps(a[0], a[1], t, 3.0)),
    "classifier_guided_mean": (2, lambda a, t, p: rd.classifier_guided_mean(a[0], 0.2, a[1], 3.0)),
}
# A step's output mixes terms up to max|input|/√ᾱ_t ≤ 5·max|input|, each rounded a few times.
COND = 10.0


def _b(v, x):
    """A per-step level (float or (B,)) shaped to broadcast against x."""
    return v if np.ndim(v) == 0 else np.reshape(v, (-1,) + (1,) * (x.ndim - 1))


def _x0(x, e, t):                                   # DDPM Eq. 15
    return (x - np.sqrt(1 - t) * e) / np.sqrt(t)


def _ddim(x, e, t, p, eta=0.0, z=0.0, clip=None, rederive=True):
    """DDIM arXiv:2010.02502v4 Eqs. 12 and 16, written out (x̂_0 clipped if asked)."""
    t, p = _b(t, x), _b(p, x)
    x0 = _x0(x, e, t)
    if clip is not None:
        x0 = np.clip(x0, -clip, clip)
        e = (x - np.sqrt(t) * x0) / np.sqrt(1 - t) if rederive else e
    sigma = eta * np.sqrt((1 - p) / (1 - t)) * np.sqrt(1 - t / p) if eta else 0.0
    return np.sqrt(p) * x0 + np.sqrt(np.maximum(1 - p - sigma**2, 0)) * e + sigma * z


def _ddpm(x, e, t, p, large=False, clip=None):
    """DDPM arXiv:2006.11239v2 Eqs. 6–7 on the respaced pair: (μ̃, σ²)."""
    t, p = _b(t, x), _b(p, x)
    beta = 1 - t / p
    x0 = _x0(x, e, t) if clip is None else np.clip(_x0(x, e, t), -clip, clip)
    mean = np.sqrt(p) * beta / (1 - t) * x0 + np.sqrt(1 - beta) * (1 - p) / (1 - t) * x
    return mean, beta if large else (1 - p) / (1 - t) * beta


def _rescale(g, c, phi):
    """ZSNR arXiv:2305.08891v4 Eqs. 15–16, population σ per sample (σ_g = 0: unchanged)."""
    axes = tuple(range(1, g.ndim))
    sg, sc = g.std(axis=axes, keepdims=True), c.std(axis=axes, keepdims=True)
    const = np.ptp(g, axis=axes, keepdims=True) == 0            # σ_g = 0 exactly
    return phi * g * np.where(const, 1.0, sc / np.where(const, 1.0, sg)) + (1 - phi) * g


# The NumPy float64 reference of each case, checked against the formula written here (so the
# NumPy float64 row is not a comparison of refdiff with itself).
INDEPENDENT = {
    "q_sample": lambda a, t, p: np.sqrt(_b(t, a[0])) * a[0] + np.sqrt(1 - _b(t, a[0])) * a[1],
    "v_target": lambda a, t, p: np.sqrt(_b(t, a[0])) * a[1] - np.sqrt(1 - _b(t, a[0])) * a[0],
    "predict_x0_eps-epsilon": lambda a, t, p: (_x0(a[0], a[1], _b(t, a[0])), a[1]),
    "predict_x0_eps-sample": lambda a, t, p: (
        a[1], (a[0] - np.sqrt(_b(t, a[0])) * a[1]) / np.sqrt(1 - _b(t, a[0]))),
    "predict_x0_eps-v": lambda a, t, p: (
        np.sqrt(_b(t, a[0])) * a[0] - np.sqrt(1 - _b(t, a[0])) * a[1],
        np.sqrt(_b(t, a[0])) * a[1] + np.sqrt(1 - _b(t, a[0])) * a[0]),
    "prediction_from_x0_eps-v": lambda a, t, p: (
        np.sqrt(_b(t, a[0])) * a[1] - np.sqrt(1 - _b(t, a[0])) * a[0]),
    "q_posterior": lambda a, t, p: _ddpm(  # the posterior at x_0: ε = (x_t − √ᾱ·x_0)/√(1−ᾱ)
        a[1], (a[1] - np.sqrt(_b(t, a[0])) * a[0]) / np.sqrt(1 - _b(t, a[0])), t, p),
    "ddpm_step-small": lambda a, t, p: (lambda m, v: m + np.sqrt(v) * a[2])(
        *_ddpm(a[0], a[1], t, p)),
    "ddpm_step-large-clip": lambda a, t, p: (lambda m, v: m + np.sqrt(v) * a[2])(
        *_ddpm(a[0], a[1], t, p, large=True, clip=1.0)),
    "ddpm_mean_variance": lambda a, t, p: _ddpm(a[0], a[1], t, p),
    "ddim_step-eta0": lambda a, t, p: _ddim(a[0], a[1], t, p),
    "ddim_step-eta0.6-clip": lambda a, t, p: _ddim(a[0], a[1], t, p, 0.6, a[2], clip=1.0),
    "ddim_step-clip-keep-eps": lambda a, t, p: _ddim(a[0], a[1], t, p, clip=0.5,
                                                     rederive=False),
    "ddim_inversion_step": lambda a, t, p: _ddim(a[0], a[1], p, t),  # η = 0 both ways
    "cfg": lambda a, t, p: a[0] + 4.5 * (a[1] - a[0]),
    "cfg-interp": lambda a, t, p: a[0] + 0.3 * (a[1] - a[0]),
    "cfg_multi": lambda a, t, p: a[0] + 2.0 * (a[1] - a[0]) - 0.5 * (a[2] - a[0]),
    "guidance_rescale": lambda a, t, p: _rescale(a[0], a[1], 0.7),
    "classifier_guided_eps": lambda a, t, p: a[0] - 3.0 * np.sqrt(1 - _b(t, a[0])) * a[1],
    "classifier_guided_mean": lambda a, t, p: a[0] + 3.0 * 0.2 * a[1],
}


def test_every_case_has_an_independent_form():
    assert set(INDEPENDENT) == set(CASES)


def _as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize("case", sorted(CASES))
@settings(max_examples=25)
@given(data=st.data(), per_sample=st.booleans())
def test_matches_numpy_float64(target, case, data, per_sample):
    n, fn = CASES[case]
    arrays = data.draw(batch(n), label="arrays")
    B = arrays[0].shape[0]
    t, p = data.draw(alpha_pair(), label="alpha_bar_t, alpha_bar_prev")
    if per_sample:  # (B,) float64 arrays on the row's device, cast late
        t_np, p_np = np.full(B, t), np.linspace(p, 1.0, B)
        t_row, p_row = target.with_dtype("float64").put(t_np), target.with_dtype("float64").put(p_np)
    else:
        t_np, p_np = t_row, p_row = t, p
    rounded = [target.rounded(a) for a in arrays]
    expected = _as_tuple(fn(rounded, t_np, p_np))
    actual = _as_tuple(fn([target.put(a) for a in arrays], t_row, p_row))
    scale = COND * max(1.0, *(float(np.abs(a).max()) for a in rounded),
                       *(float(np.abs(e).max()) for e in expected))
    # the reference against the paper's formula in float64: same inputs, a different order of
    # operations (and x̂_0 formed where refdiff folds it), so a few ulps of the scale differ
    for ref, form in zip(expected, _as_tuple(INDEPENDENT[case](rounded, t_np, p_np))):
        np.testing.assert_allclose(ref, np.broadcast_to(form, np.shape(ref)), rtol=0,
                                   atol=1e-13 * scale)
    for got, ref in zip(actual, expected):
        assert_close(got, ref, dtype=target.dtype, device=target.device, scale=scale)


@given(b=batch(2))
@settings(max_examples=20)
def test_cfg_exact_ends_every_backend(target, b):
    u, c = (target.put(a) for a in b)
    for s, ref in ((0.0, u), (1.0, c)):
        out = rd.cfg(u, c, s)
        o, r = to_numpy(out), to_numpy(ref)
        assert_close(out, r, dtype=target.dtype, device=target.device, rtol=0.0)
        assert np.array_equal(o, r) and np.array_equal(np.signbit(o), np.signbit(r))
    s = target.with_dtype("float64").put(np.array([0.0, 1.0] * u.shape[0])[: u.shape[0]])
    out = to_numpy(rd.cfg(u, c, s))
    assert np.array_equal(out[0], to_numpy(u)[0])
    if u.shape[0] > 1:
        assert np.array_equal(out[1], to_numpy(c)[1])


def test_schedule_tables_cast_late_in_float16():
    """ᾱ near 1 in float16: computing 1 − ᾱ in float64 first keeps √(1−ᾱ) accurate."""
    torch = pytest.importorskip("torch")
    x0 = torch.ones(4, dtype=torch.float16)
    eps = torch.ones(4, dtype=torch.float16)
    ab = 1 - 1e-5  # float16 would round ᾱ to 1 and 1 − ᾱ to 0
    out = rd.q_sample(x0, ab, eps)
    expected = np.sqrt(ab) + np.sqrt(1e-5)
    assert abs(float(out[0]) - expected) < 2e-3 and out.dtype == torch.float16
    out_arr = rd.q_sample(x0, torch.full((4,), ab, dtype=torch.float64), eps)
    assert abs(float(out_arr[0]) - expected) < 2e-3 and out_arr.dtype == torch.float16


@pytest.mark.parametrize("name", ["q_sample", "ddim_step-eta0.6-clip", "ddpm_step-small",
                                  "cfg", "guidance_rescale", "classifier_guided_eps",
                                  "predict_x0_eps-v", "q_posterior"])
def test_gradients_flow_through_torch(name):
    torch = pytest.importorskip("torch")
    n, fn = CASES[name]
    rng = np.random.default_rng(1)
    inputs = [torch.asarray(rng.normal(size=(2, 3)), requires_grad=True) for _ in range(n)]
    t = torch.asarray([0.3, 0.5], dtype=torch.float64, requires_grad=True)
    out = _as_tuple(fn(inputs, t, 0.9))
    sum(o.sum() for o in out).backward()
    for i in inputs:
        assert i.grad is not None and torch.isfinite(i.grad).all()
    if name in ("q_sample", "ddim_step-eta0.6-clip", "q_posterior"):
        assert t.grad is not None and torch.isfinite(t.grad).all()


def test_q_sample_gradient_value():
    torch = pytest.importorskip("torch")
    x0 = torch.ones(2, 3, dtype=torch.float64, requires_grad=True)
    rd.q_sample(x0, 0.25, torch.zeros(2, 3, dtype=torch.float64)).sum().backward()
    assert torch.all(x0.grad == 0.5)
