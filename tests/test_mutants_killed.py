"""Tests written to kill the survivors of the mutation run (docs/mutation.md).

Each test names the mutants it kills. Expectations never come from the function under test:
they are hand-derived values, closed forms written out here, or exact Fractions. Inputs are
chosen where the mutant differs from the original by far more than rounding (a per-row shift
that underflows, a 1-D or 3-D input where an axis was swapped, values off the symmetric
points where a sign slip cancels).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from refdiff.oracle import GaussianMixture
from refdiff.classifier_guidance import log_softmax


# ----- classifier_guidance: _log_softmax ------------------------------------------------

def test_log_softmax_shifts_each_row_by_its_own_max():
    """Kills _log_softmax__mutmut_4/7 (max over all axes): rows 1000 apart underflow to
    log 0 when shifted by the global max. Exact: log(1 + e^-1000) = 0 in float64."""
    logits = np.array([[1000.0, 0.0], [0.0, -1000.0]])
    out = log_softmax(logits)
    np.testing.assert_array_equal(out, [[0.0, -1000.0], [0.0, -1000.0]])


def test_log_softmax_acts_on_the_last_axis():
    """Kills _log_softmax__mutmut_9 (axis=+1 for axis=-1): on a 1-D and a 3-D input the
    second axis is not the last. Hand values: softmax([0, log 3]) = [1/4, 3/4]."""
    want = np.log([0.25, 0.75])
    np.testing.assert_allclose(log_softmax(np.array([0.0, math.log(3.0)])), want, rtol=1e-15)
    x = np.zeros((1, 2, 2))
    x[0, 0, 1] = math.log(3.0)
    x[0, 1, 0] = math.log(3.0)
    np.testing.assert_allclose(log_softmax(x)[0], [want, want[::-1]], rtol=1e-15)


# ----- oracle: GaussianMixture._softmax -------------------------------------------------

def test_oracle_responsibilities_shift_each_sample_by_its_own_max():
    """Kills oracle _softmax with the max over all samples: two samples whose log joints lie
    ~10⁵ apart. At ᾱ = 1 the noisy mixture is the data mixture, N(±1, 10⁻⁴); at x = 10 the
    far component has weight exp(−(11² − 9²)/2·10⁴) = 0, so the score is −(10 − 1)/10⁻⁴."""
    gm = GaussianMixture.isotropic([0.5, 0.5], [[-1.0], [1.0]], 1e-4)
    s = gm.score(np.array([[0.0], [10.0]]), 1.0)
    assert np.all(np.isfinite(s))
    np.testing.assert_allclose(s[1], [-90000.0], rtol=1e-12)
    np.testing.assert_allclose(s[0], [0.0], atol=1e-9)  # x = 0: the two pulls cancel


# ----- classifier_guidance: label_log_prob, cross_entropy, noisy_classifier_loss --------

def test_label_log_prob_refuses_mixed_libraries_naming_both():
    """Kills _check_logits_labels__mutmut_2..5 (an argument dropped from the namespace
    check): mixing NumPy and torch must be refused with both arguments named."""
    torch = pytest.importorskip("torch")
    from refdiff.classifier_guidance import label_log_prob

    for logits, labels in ((np.zeros((2, 3)), torch.zeros(2, dtype=torch.int64)),
                           (torch.zeros((2, 3)), np.zeros(2, dtype=np.int64))):
        with pytest.raises(TypeError, match=r"logits is a .* but labels is a"):
            label_log_prob(logits, labels)


def test_label_log_prob_builds_its_classes_on_the_labels_device():
    """Kills _label_log_prob__mutmut_4/7 (arange on the default device): array-api-strict's
    second device refuses a comparison across devices. Hand value: log softmax([0, log 3])
    at class 1 = log(3/4), at class 0 = log(1/4)."""
    xs = pytest.importorskip("array_api_strict")
    from refdiff.classifier_guidance import label_log_prob

    dev = xs.Device("device1")
    logits = xs.asarray([[0.0, math.log(3.0)], [0.0, math.log(3.0)]], device=dev)
    out = label_log_prob(logits, xs.asarray([1, 0], device=dev))
    assert out.device == dev
    np.testing.assert_allclose(np.asarray(xs.asarray(out, device=xs.Device("CPU_DEVICE"))),
                               [math.log(0.75), math.log(0.25)], rtol=1e-15)


def test_noisy_classifier_loss_passes_the_reduction_on():
    """Kills noisy_classifier_loss__mutmut_8 (reduction dropped: always the mean). A
    classifier with fixed logits [0, log 3]: per-sample loss −log(3/4) for label 1 and
    −log(1/4) for label 0, whatever x_t."""
    from refdiff.classifier_guidance import noisy_classifier_loss

    def classifier(x_t, t):
        return np.stack([np.zeros(x_t.shape[0]), np.full(x_t.shape[0], math.log(3.0))], axis=-1)

    x0 = np.zeros((2, 3))
    out = noisy_classifier_loss(classifier, x0, np.array([1, 0]), np.array([10, 10]), 0.5,
                                np.ones((2, 3)), reduction="none")
    np.testing.assert_allclose(out, [-math.log(0.75), -math.log(0.25)], rtol=1e-15)


# ----- per-sample ᾱ (shape (B,)) through every public step and forward function -----------
# Kills the mutants that pass None for the namespace (`sqrt(None, ab)`, `cast(None, ...)`,
# `_xp.level(None, ...)`) or for the array a level is shaped against (`level(..., x=None)`
# keeps (B,), which cannot broadcast against (B, 3)): with Python-float levels those helpers
# never touch the namespace, so only array levels can see them. References: the closed forms
# of docs/conventions.md, written out per row below (rows of the tiny T = 4 schedule of
# tests/test_hand_values.py, √ᾱ = 0.9, 0.8, 0.6, 0.4).

AB_T = np.array([0.36, 0.64])     # ᾱ_t per sample
AB_PREV = np.array([0.64, 0.81])  # ᾱ_prev per sample (the next less noisy level)
RNG = np.random.default_rng(20261201)
X, E, Z, X0, G = (RNG.standard_normal((2, 3)) for _ in range(5))


def _col(v):
    return np.asarray(v, dtype=np.float64)[:, None]


def _ref_x0(x, e, ab):
    return (x - np.sqrt(1 - _col(ab)) * e) / np.sqrt(_col(ab))


def _ref_ddim(x, e, ab_t, ab_prev, eta=0.0, z=0.0, x0=None):
    x0 = _ref_x0(x, e, ab_t) if x0 is None else x0
    a_t, a_p = _col(ab_t), _col(ab_prev)
    sigma = 0.0 if eta == 0 else (                                            # DDIM Eq. 16
        eta * np.sqrt((1 - a_p) / (1 - a_t)) * np.sqrt(1 - a_t / a_p))
    return np.sqrt(a_p) * x0 + np.sqrt(1 - a_p - sigma**2) * e + sigma * z   # DDIM Eq. 12


def _ref_posterior(x0, x_t, ab_t, ab_prev):
    a_t, a_p = _col(ab_t), _col(ab_prev)
    b = 1 - a_t / a_p
    mean = np.sqrt(a_p) * b / (1 - a_t) * x0 + np.sqrt(1 - b) * (1 - a_p) / (1 - a_t) * x_t
    return mean, (1 - a_p) / (1 - a_t) * b, b


def _backends():
    out = [("numpy", lambda a: np.asarray(a, dtype=np.float64), np.asarray)]
    try:
        import torch
    except ImportError:
        return out
    out.append(("torch", lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64)),
                lambda t: t.detach().numpy() if hasattr(t, "detach") else np.asarray(t)))
    return out


@pytest.mark.parametrize("name,put,back", _backends(), ids=[b[0] for b in _backends()])
def test_per_sample_levels_forward(name, put, back):
    from refdiff import forward as F

    x0, e, x, at, ap = put(X0), put(E), put(X), put(AB_T), put(AB_PREV)
    a, b = np.sqrt(_col(AB_T)), np.sqrt(1 - _col(AB_T))
    close = np.testing.assert_allclose
    close(back(F.q_sample(x0, at, e)), a * X0 + b * E, rtol=1e-13)
    close(back(F.v_target(x0, e, at)), a * E - b * X0, rtol=1e-13)
    for ptype, out, want_x0, want_eps in (
            ("epsilon", E, _ref_x0(X, E, AB_T), E),
            ("sample", X0, X0, (X - a * X0) / b),
            ("v_prediction", E, a * X - b * E, b * X + a * E)):
        got_x0, got_eps = F.predict_x0_eps(x, put(out), at, ptype)
        close(back(got_x0), want_x0, rtol=1e-12)
        close(back(got_eps), want_eps, rtol=1e-12)
    for ptype, want in (("epsilon", E), ("sample", X0), ("v_prediction", a * E - b * X0)):
        close(back(F.prediction_from_x0_eps(x0, e, at, ptype)), want, rtol=1e-13)
    mean, var = F.q_posterior(x0, x, at, ap)
    want_mean, want_var, want_b = _ref_posterior(X0, X, AB_T, AB_PREV)
    close(back(mean), want_mean, rtol=1e-13)
    close(np.broadcast_to(back(var), (2, 3)), np.broadcast_to(want_var, (2, 3)), rtol=1e-13)
    c0, ct, bt, bs = F.posterior_coefficients(at, ap, like=x)
    close(np.broadcast_to(back(bt), (2, 1)), want_var, rtol=1e-13)
    close(np.broadcast_to(back(bs), (2, 1)), want_b, rtol=1e-13)


@pytest.mark.parametrize("name,put,back", _backends(), ids=[b[0] for b in _backends()])
def test_per_sample_levels_steps(name, put, back):
    from refdiff import steps as S

    x, e, z, x0, at, ap = put(X), put(E), put(Z), put(X0), put(AB_T), put(AB_PREV)
    close = np.testing.assert_allclose
    close(back(S.ddim_step(x, e, at, ap)), _ref_ddim(X, E, AB_T, AB_PREV), rtol=1e-12)
    close(back(S.ddim_step(x, e, at, ap, eta=0.5, noise=z)),
          _ref_ddim(X, E, AB_T, AB_PREV, eta=0.5, z=Z), rtol=1e-12)
    close(back(S.ddim_step(x, e, at, ap, x0_hat=x0)), _ref_ddim(X, E, AB_T, AB_PREV, x0=X0),
          rtol=1e-12)
    sig, _ = S.ddim_sigma(at, ap, 1.0)
    _, want_var, _ = _ref_posterior(X0, X, AB_T, AB_PREV)
    close(np.ravel(back(sig)) ** 2, np.ravel(want_var), rtol=1e-13)   # η = 1: σ² = β̃
    want_mean, want_var, want_b = _ref_posterior(_ref_x0(X, E, AB_T), X, AB_T, AB_PREV)
    for vt, var in (("fixed_small", want_var), ("fixed_large", want_b)):
        mean, v = S.ddpm_mean_variance(x, e, at, ap, variance_type=vt)
        close(back(mean), want_mean, rtol=1e-12)
        close(np.broadcast_to(back(v), (2, 3)), np.broadcast_to(var, (2, 3)), rtol=1e-13)
        close(back(S.ddpm_step(x, e, at, ap, z, variance_type=vt)),
              want_mean + np.sqrt(var) * Z, rtol=1e-12)
    # inversion: from ᾱ_prev (less noisy) up to ᾱ_t, the DDIM η = 0 step run backwards
    close(back(S.ddim_inversion_step(x, e, ap, at)), _ref_ddim(X, E, AB_PREV, AB_T), rtol=1e-12)
    close(back(S.ddim_inversion_step(x, e, ap, at, x0_hat=x0)),
          _ref_ddim(X, E, AB_PREV, AB_T, x0=X0), rtol=1e-12)


@pytest.mark.parametrize("name,put,back", _backends(), ids=[b[0] for b in _backends()])
def test_per_sample_levels_classifier_guidance(name, put, back):
    from refdiff import classifier_guidance as CG

    e, g, at = put(E), put(G), put(AB_T)
    s = 2.5
    np.testing.assert_allclose(back(CG.classifier_guided_eps(e, g, at, s)),
                               E - s * np.sqrt(1 - _col(AB_T)) * G, rtol=1e-13)  # CG Alg. 2
    var = put(_col([0.25, 0.5]))
    np.testing.assert_allclose(back(CG.classifier_guided_mean(put(X0), var, g, s)),
                               X0 + s * _col([0.25, 0.5]) * G, rtol=1e-13)    # CG Alg. 1


# ----- classifier_free: per-sample scales, partner checks, the shifted std ----------------

@pytest.mark.parametrize("name,put,back", _backends(), ids=[b[0] for b in _backends()])
def test_cfg_multi_per_sample_scales(name, put, back):
    """Kills _cfg_multi__mutmut_20/21/26 and cfg_multi__mutmut_12/21/30 (None for the
    namespace or the array a scale is shaped against): scales of shape (B,), one of them 0
    for one sample. ε̃ = ε_u + Σ_i s_i·(ε_i − ε_u) (COMP §3), row by row."""
    from refdiff.classifier_free import cfg_multi

    s1, s2 = np.array([0.0, 2.0]), np.array([1.5, -0.5])
    out = cfg_multi(put(X), [put(E), put(Z)], [put(s1), put(s2)])
    np.testing.assert_allclose(back(out), X + _col(s1) * (E - X) + _col(s2) * (Z - X),
                               rtol=1e-13)


def test_partner_arrays_are_checked():
    """Kills the mutants that drop a partner from the prologue's `_xp.arrays(...)` check
    (cfg_multi__mutmut_17, guidance_rescale__mutmut_7, v_target__mutmut_7,
    q_posterior__mutmut_7, prediction_from_x0_eps__mutmut_9, ddim_inversion_step__mutmut_6/10/11, ddpm_mean_variance__mutmut_6,
    classifier_guided_eps/mean__mutmut_7) and the scale shaped against nothing
    (cfg_multi__mutmut_24): a partner of another shape or dtype, or a
    scale for 3 samples when there are 2, must be refused (refdiff never broadcasts or
    promotes silently)."""
    from refdiff import classifier_free as C
    from refdiff import classifier_guidance as CG
    from refdiff import forward as F
    from refdiff import steps as S

    x = np.ones((2, 3))
    wide, f32 = np.ones((2, 4)), np.ones((2, 3), dtype=np.float32)
    calls = [
        lambda p: C.cfg_multi(x, [p], [1.5]),
        lambda p: C.guidance_rescale(x, p, 0.7),
        lambda p: F.v_target(x, p, 0.5),
        lambda p: F.prediction_from_x0_eps(x, p, 0.5, "v_prediction"),
        lambda p: F.q_posterior(p, x, 0.36, 0.64),
        lambda p: S.ddim_inversion_step(x, p, 0.64, 0.36),
        lambda p: S.ddim_inversion_step(x, x, 0.64, 0.36, x0_hat=p),
        lambda p: S.ddpm_mean_variance(x, x, 0.36, 0.64, x0_hat=p),
        lambda p: CG.classifier_guided_eps(x, p, 0.36, 2.0),
        lambda p: CG.classifier_guided_mean(x, 0.25, p, 2.0),
    ]
    for call in calls:
        for bad in (wide, f32):
            with pytest.raises((TypeError, ValueError)):
                call(bad)
    with pytest.raises(ValueError):
        C.cfg_multi(x, [x], [np.array([1.0, 2.0, 3.0])])


def test_guidance_rescale_std_is_taken_after_removing_the_first_element():
    """Kills _std_per_sample__mutmut_9 (x + x₀ for x − x₀). ε_c = 1024 + k/8192, k = 0..3, in
    float32: x − x₀ = k/8192 exactly (Sterbenz), while 2048 + k/8192 is not representable
    (the float32 spacing at 2048 is 1/4096), so the mutant's σ is off by tens of percent.
    σ(ε_c) = √(5/4)/8192 and σ(ε̃) = √(5/4) for ε̃ = k, so at φ = 1 the result is k/8192."""
    from refdiff.classifier_free import guidance_rescale

    k = np.arange(4, dtype=np.float32)[None, :]
    out = guidance_rescale(k, np.float32(1024) + k / np.float32(8192), 1.0)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, k / 8192, rtol=1e-5)


def test_cfg_multi_with_one_condition_is_cfg():
    """Kills _cfg_multi__mutmut_3/4 (the one-condition shortcut handed None): one condition
    at s = 1.5 gives ε_u + 1.5·(ε_c − ε_u), per sample scales included."""
    from refdiff.classifier_free import cfg_multi

    np.testing.assert_allclose(cfg_multi(X, [E], [1.5]), X + 1.5 * (E - X), rtol=1e-13)
    s = np.array([0.5, 3.0])
    np.testing.assert_allclose(cfg_multi(X, [E], [s]), X + _col(s) * (E - X), rtol=1e-13)


def test_guidance_rescale_phi_zero_and_empty_batch():
    """Kills _guidance_rescale__mutmut_1/4 (`or` → `and`, shape[0] → shape[1]): φ = 0 returns
    ε̃ bit for bit even where the rescale itself would give NaN (an infinite entry), and an
    empty batch at φ = 0.7 is returned as it is (a max over no elements would raise)."""
    from refdiff.classifier_free import guidance_rescale

    g = np.array([[np.inf, 1.0, 2.0], [0.5, -1.0, 4.0]])
    np.testing.assert_array_equal(guidance_rescale(g, np.ones((2, 3)), 0.0), g)
    empty = np.zeros((0, 3))
    assert guidance_rescale(empty, empty, 0.7).shape == (0, 3)


def test_guidance_rescale_constant_sample_warns_nothing():
    """Kills _guidance_rescale__mutmut_41/48 (the guarded divisor unguarded: 0/0 behind the
    outer where). A constant ε̃ sample has σ = 0, its ratio is 1 by definition (ZSNR Eq. 15
    guard), and NumPy must not be asked for 0/0 on the way (a RuntimeWarning; an error
    under -W error)."""
    import warnings

    from refdiff.classifier_free import guidance_rescale

    g = np.array([[2.0, 2.0, 2.0], [0.0, 1.0, 2.0]])
    c = np.array([[0.0, 3.0, 6.0], [0.0, 2.0, 4.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = guidance_rescale(g, c, 1.0)
    # sample 0: σ(ε̃) = 0, ratio 1; sample 1: σ(ε_c)/σ(ε̃) = 2 exactly
    np.testing.assert_allclose(out, [[2.0, 2.0, 2.0], [0.0, 2.0, 4.0]], rtol=1e-15)


def test_guidance_rescale_std_per_sample_scale():
    """Kills _std_per_sample__mutmut_24/27 (the scale m = max|x − x₀| over the whole batch):
    in float32 a sample of size 10⁻²⁵ next to one of size 1 squares to 10⁻⁵⁰ after division
    by the batch's m = 3, below float32's smallest subnormal, so its σ becomes 0. Per sample,
    σ(10⁻²⁵·k)/σ(k) = 10⁻²⁵ and the result (φ = 1) is 10⁻²⁵·k."""
    from refdiff.classifier_free import guidance_rescale

    k = np.arange(4, dtype=np.float32)
    g = np.stack([k, k])
    c = np.stack([k, k * np.float32(1e-25)])
    out = guidance_rescale(g, c, 1.0)
    np.testing.assert_allclose(out[1], k * np.float32(1e-25), rtol=1e-5)
    np.testing.assert_allclose(out[0], k, rtol=1e-6)


def test_guidance_rescale_torch():
    """Kills _std_per_sample__mutmut_20 (reshape to (B, −2): NumPy takes any negative size
    as "infer", torch refuses it). Values: σ(ε_c)/σ(ε̃) = 2 for ε_c = 2·ε̃."""
    torch = pytest.importorskip("torch")
    from refdiff.classifier_free import guidance_rescale

    g = torch.tensor([[0.0, 1.0, 2.0], [1.0, -1.0, 3.0]], dtype=torch.float64)
    out = guidance_rescale(g, 2 * g, 1.0)
    np.testing.assert_allclose(out.numpy(), 2 * g.numpy(), rtol=1e-15)


# ----- steps: DDIM inversion's options and refusals ---------------------------------------

def test_ddim_inversion_zero_snr_refusal_and_x0_hat():
    """Kills ddim_inversion_step__mutmut_54/55 (the zero-SNR check handed None for ᾱ_t or
    for x0_hat): from ᾱ_t = 0 without x0_hat there is no x̂_0 (refused); with x0_hat the
    step to ᾱ_next = 0 is √0·x̂_0 + √1·ε̂ = ε̂."""
    from refdiff.steps import ddim_inversion_step

    with pytest.raises(ValueError):
        ddim_inversion_step(X, E, 0.0, 0.0)
    np.testing.assert_array_equal(ddim_inversion_step(X, E, 0.0, 0.0, x0_hat=X0), E)


def test_ddim_inversion_clip_rederives_eps_by_default():
    """Kills ddim_inversion_step__mutmut_1 (default rederive_eps=False). ᾱ_t = 0.64 → 0.36,
    x_t = 2, ε̂ = 0.5: x̂_0 = (2 − 0.6·0.5)/0.8 = 2.125, clipped to 1; ε re-derived
    (2 − 0.8·1)/0.6 = 2; x_next = 0.6·1 + 0.8·2 = 2.2 (kept ε: 0.6 + 0.8·0.5 = 1.0)."""
    from refdiff.steps import ddim_inversion_step

    x, e = np.array([2.0]), np.array([0.5])
    assert ddim_inversion_step(x, e, 0.64, 0.36, clip_x0=1.0)[0] == pytest.approx(2.2, abs=1e-14)
    kept = ddim_inversion_step(x, e, 0.64, 0.36, clip_x0=1.0, rederive_eps=False)
    assert kept[0] == pytest.approx(1.0, abs=1e-14)


def test_ddim_inversion_clean_level_in_an_array():
    """Kills ddim_inversion_step__mutmut_72..78 (the refusal of re-deriving ε at an array
    ᾱ_t = 1, where ε = (x_t − x̂_0)/0). With clip and rederive_eps it is refused; without
    clip, ᾱ_t = 1 is fine: x̂_0 = x_t and x_next = √ᾱ_next·x_t + √(1 − ᾱ_next)·ε̂."""
    from refdiff.steps import ddim_inversion_step

    ab_t, ab_next = np.array([1.0, 0.64]), np.array([0.64, 0.36])
    with pytest.raises(ValueError):
        ddim_inversion_step(X, E, ab_t, ab_next, clip_x0=1.0)
    out = ddim_inversion_step(X, E, ab_t, ab_next)
    np.testing.assert_allclose(out[0], 0.8 * X[0] + 0.6 * E[0], rtol=1e-13)
    np.testing.assert_allclose(out[1], 0.6 * _ref_x0(X[1:], E[1:], [0.64])[0] + 0.8 * E[1],
                               rtol=1e-13)
    ok = ddim_inversion_step(X, E, np.array([0.81, 0.64]), ab_next, clip_x0=10.0)
    np.testing.assert_allclose(ok, _ref_ddim(X, E, [0.81, 0.64], ab_next), rtol=1e-12)


@pytest.mark.parametrize("name,put,back", _backends(), ids=[b[0] for b in _backends()])
def test_classifier_guidance_per_sample_scales(name, put, back):
    """Kills classifier_guided_eps/mean__mutmut_11/14 (the scale checked with no namespace,
    or shaped against nothing: (B,) cannot broadcast against (B, 3)). CG Algorithms 2 and 1
    with s per sample: ε − s·√(1 − ᾱ)·g and μ + s·Σ·g."""
    from refdiff import classifier_guidance as CG

    s = np.array([0.5, -2.0])
    np.testing.assert_allclose(back(CG.classifier_guided_eps(put(E), put(G), 0.36, put(s))),
                               E - _col(s) * 0.8 * G, rtol=1e-13)
    np.testing.assert_allclose(back(CG.classifier_guided_mean(put(X0), 0.25, put(G), put(s))),
                               X0 + _col(s) * 0.25 * G, rtol=1e-13)


def test_classifier_guided_mean_ignores_the_variance_at_scale_zero():
    """Kills classifier_guided_mean__mutmut_22/23 (the s = 0 shortcut skipped): at s = 0 the
    mean comes back bit for bit and Σ is not read, so a caller may pass none."""
    from refdiff.classifier_guidance import classifier_guided_mean

    np.testing.assert_array_equal(classifier_guided_mean(X0, None, G, 0.0), X0)


def test_ddim_sigma_with_one_array_level_and_mixed_libraries():
    """Kills ddim_sigma__mutmut_6..9 (an argument dropped from the namespace check). η = 1
    gives σ² = β̃ = (1 − ᾱ_prev)/(1 − ᾱ_t)·(1 − ᾱ_t/ᾱ_prev): 0.36 → 0.64 gives 63/256 and
    0.64 → 0.81 gives 0.19/0.36·(1 − 0.64/0.81)."""
    from refdiff.steps import ddim_sigma

    b1 = 63 / 256
    b2 = 0.19 / 0.36 * (1 - 0.64 / 0.81)
    sig, _ = ddim_sigma(np.array([0.36, 0.64]), 0.81, 1.0)
    np.testing.assert_allclose(np.ravel(sig) ** 2, [0.19 / 0.64 * (1 - 0.36 / 0.81), b2],
                               rtol=1e-13)
    sig, _ = ddim_sigma(0.36, np.array([0.64, 0.81]), 1.0)
    np.testing.assert_allclose(np.ravel(sig) ** 2, [b1, 0.19 / 0.64 * (1 - 0.36 / 0.81)],
                               rtol=1e-13)
    torch = pytest.importorskip("torch")
    for a, b in ((np.array([0.36]), torch.tensor([0.64], dtype=torch.float64)),
                 (torch.tensor([0.36], dtype=torch.float64), np.array([0.64]))):
        with pytest.raises(TypeError, match="alpha_bar_t is a .* but alpha_bar_prev is a"):
            ddim_sigma(a, b, 1.0)


def test_ddpm_mean_variance_zero_snr_and_given_x0_hat():
    """Kills ddpm_mean_variance__mutmut_27/28 (zero-SNR check handed None) and 41 (x0_hat
    dropped). At ᾱ_t = 0 → 0.36: β' = 1, c0 = √0.36 = 0.6, ct = 0, β̃ = 0.64; refused
    without x0_hat. At 0.36 → 0.64 with x̂_0 given: mean = 0.546875·x̂_0 + 0.421875·x_t
    (tests/test_hand_values.py's coefficients), whatever ε̂ says."""
    from refdiff.steps import ddpm_mean_variance

    with pytest.raises(ValueError):
        ddpm_mean_variance(X, E, 0.0, 0.36)
    mean, var = ddpm_mean_variance(X, E, 0.0, 0.36, x0_hat=X0)
    np.testing.assert_allclose(mean, 0.6 * X0, rtol=1e-15)
    assert float(var) == pytest.approx(0.64, abs=1e-15)
    mean, _ = ddpm_mean_variance(X, E, 0.36, 0.64, x0_hat=X0)
    np.testing.assert_allclose(mean, 0.546875 * X0 + 0.421875 * X, rtol=1e-14)


# ----- classifier_guidance: the variance of Algorithm 1, s = 0, the gradient's check ------

@pytest.mark.parametrize("name,put,back", _backends(), ids=[b[0] for b in _backends()])
def test_classifier_guided_mean_variance_forms(name, put, back):
    """Kills classifier_guided_mean__mutmut_37/38/70/82 (the full-shape or (B,) variance sent
    down the wrong branch, shaped against nothing, or with no namespace), 65 (variance ≥ 1
    required) and 78 (variance ≤ 1 required). μ + s·Σ·g with Σ given per element, per sample
    (B,), or as a float 2.5 > 1."""
    from refdiff.classifier_guidance import classifier_guided_mean

    full = RNG.uniform(0.1, 0.9, (2, 3))
    per = np.array([0.25, 0.5])
    s = 1.5
    for var, want in ((full, full), (per, _col(per)), (_col(per), _col(per)), (2.5, 2.5)):
        v = put(var) if isinstance(var, np.ndarray) else var
        np.testing.assert_allclose(back(classifier_guided_mean(put(X0), v, put(G), s)),
                                   X0 + s * want * G, rtol=1e-13)


def test_classifier_guided_mean_refuses_bad_variance_arrays():
    """Kills classifier_guided_mean__mutmut_41..62 (the checks of a full-shape variance with an
    argument dropped or handed None): another library, an integer dtype, a negative or NaN
    entry must be refused."""
    from refdiff.classifier_guidance import classifier_guided_mean

    bad = [np.full((2, 3), -0.5), np.full((2, 3), np.nan), np.ones((2, 3), dtype=np.int64)]
    for var in bad:
        with pytest.raises((TypeError, ValueError)):
            classifier_guided_mean(X0, var, G, 1.5)
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"mean is a .* but variance is a"):
        classifier_guided_mean(X0, torch.ones((2, 3), dtype=torch.float64), G, 1.5)


def test_guidance_at_scale_zero_returns_the_input_exactly():
    """Kills _classifier_guided_eps__mutmut_2/3 and _classifier_guided_mean__mutmut_3 (the
    s = 0 shortcut skipped): ε − 0·g is NaN where g is infinite, and Algorithms 1–2 at
    s = 0 are the unguided step, bit for bit."""
    from refdiff.classifier_guidance import classifier_guided_eps, classifier_guided_mean
    from refdiff.classifier_guidance import _classifier_guided_eps, _classifier_guided_mean

    g = G.copy()
    g[0, 0] = np.inf
    np.testing.assert_array_equal(classifier_guided_eps(E, g, 0.36, 0.0), E)
    np.testing.assert_array_equal(_classifier_guided_eps(np, E, g, 0.36, 0.0), E)
    np.testing.assert_array_equal(_classifier_guided_mean(np, X0, 0.25, g, 0.0), X0)
    np.testing.assert_array_equal(classifier_guided_mean(X0, 0.25, g, 0.0), X0)


def test_classifier_gradient_checks_the_returned_gradient():
    """Kills _classifier_gradient__mutmut_20 (the gradient not checked against x_t): an
    analytic gradient of the wrong shape must be refused, not broadcast later."""
    from refdiff.classifier_guidance import classifier_gradient

    with pytest.raises((TypeError, ValueError)):
        classifier_gradient(lambda x: np.sum(x, axis=1), X, grad_log_prob=lambda x: x[:, :2])
    g = classifier_gradient(lambda x: np.sum(x, axis=1), X, grad_log_prob=lambda x: 2.0 * x)
    np.testing.assert_array_equal(g, 2.0 * X)


# ----- steps: ddpm_step's x0_hat and zero-SNR refusal; forward defaults --------------------

def test_ddpm_step_zero_snr_and_given_x0_hat():
    """Kills ddpm_step__mutmut_8 (x0_hat not checked), 29/30 (zero-SNR check handed None) and
    44 (x0_hat dropped). Coefficients as in test_ddpm_mean_variance_zero_snr_and_given_x0_hat;
    the noise enters as √β̃·z."""
    from refdiff.steps import ddpm_step

    with pytest.raises(ValueError):
        ddpm_step(X, E, 0.0, 0.36, Z)
    np.testing.assert_allclose(ddpm_step(X, E, 0.0, 0.36, Z, x0_hat=X0), 0.6 * X0 + 0.8 * Z,
                               rtol=1e-14)
    np.testing.assert_allclose(ddpm_step(X, E, 0.36, 0.64, Z, x0_hat=X0),
                               0.546875 * X0 + 0.421875 * X + math.sqrt(0.24609375) * Z,
                               rtol=1e-14)
    for bad in (np.ones((2, 4)), np.ones((2, 3), dtype=np.float32)):
        with pytest.raises((TypeError, ValueError)):
            ddpm_step(X, E, 0.36, 0.64, Z, x0_hat=bad)


def test_forward_defaults_and_single_array_levels():
    """Kills prediction_from_x0_eps__mutmut_1 (default prediction type) and
    posterior_coefficients__mutmut_7 (given[1] when only one array is given). β' for
    0.36 → 0.81 is 1 − 0.36/0.81 = 5/9, for 0.64 → 0.81 it is 17/81."""
    from refdiff.forward import posterior_coefficients, prediction_from_x0_eps

    np.testing.assert_array_equal(prediction_from_x0_eps(X0, E, 0.36), E)
    *_, beta_step = posterior_coefficients(np.array([0.36, 0.64]), 0.81)
    np.testing.assert_allclose(np.ravel(beta_step), [5 / 9, 17 / 81], rtol=1e-14)
    *_, beta_step = posterior_coefficients(0.36, np.array([0.64, 0.81]))
    np.testing.assert_allclose(np.ravel(beta_step), [0.4375, 5 / 9], rtol=1e-14)


# ----- classifier_free: the two-sided lerp of cfg -----------------------------------------

def test_cfg_at_scale_one_is_the_conditional_prediction_exactly():
    """Kills _lerp__mutmut_8 (`s == 1` → `s == 2`: s = 1 then takes b − 0·(b − a)): s = 1
    returns ε_c bit for bit, even where ε_u is infinite (0·∞ = NaN) or ε_c is −0.0
    (−0.0 − 0·(−0.0 − 1) = +0.0)."""
    from refdiff.classifier_free import cfg

    u = np.array([np.inf, 1.0, 1.0])
    c = np.array([2.0, -0.0, 3.0])
    out = cfg(u, c, 1.0)
    np.testing.assert_array_equal(out, c)
    assert np.signbit(out[1])


def test_cfg_near_one_uses_the_form_anchored_at_eps_cond():
    """Kills _lerp__mutmut_17/33 (a + s·(b − a) used up to s < 1.5). At s = 1 − 2⁻⁴⁰ with
    a = 10⁸, b = 1 the exact value is 1 + 2⁻⁴⁰·(10⁸ − 1) (a Fraction below); b − (1 − s)·d
    rounds once, a + s·d cancels 10⁸ against 10⁸ and keeps an error of ~ulp(10⁸)."""
    from fractions import Fraction

    from refdiff.classifier_free import cfg

    s = 1.0 - 2.0**-40
    a, b = 1e8, 1.0
    exact = float(Fraction(a) + Fraction(s) * (Fraction(b) - Fraction(a)))
    assert cfg(np.array([a]), np.array([b]), s)[0] == pytest.approx(exact, rel=4e-16)
    sa = np.array([s, 0.25])
    out = cfg(np.array([[a], [a]]), np.array([[b], [b]]), sa)
    assert out[0, 0] == pytest.approx(exact, rel=4e-16)
    assert out[1, 0] == pytest.approx(float(Fraction(a) + Fraction(1, 4) * (Fraction(b) - Fraction(a))),
                                      rel=4e-16)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # inf − inf in the discarded interior
def test_cfg_per_sample_scale_ends_are_exact():
    """Kills _lerp__mutmut_40/48/55 (the array path's exact ends replaced by the interior
    formula): a per-sample s = [0, 1] returns row 0 of ε_u and row 1 of ε_c bit for bit,
    with an infinite entry in the other operand and a −0.0 kept."""
    from refdiff.classifier_free import cfg

    u = np.array([[1.0, -0.0], [np.inf, 1.0]])
    c = np.array([[np.inf, 1.0], [2.0, -0.0]])
    out = cfg(u, c, np.array([0.0, 1.0]))
    np.testing.assert_array_equal(out, [[1.0, -0.0], [2.0, -0.0]])
    assert np.signbit(out[0, 1]) and np.signbit(out[1, 1])


# ----- steps: learned variances with per-sample levels; zero_beta_tilde's range -----------

@pytest.mark.parametrize("name,put,back", _backends(), ids=[b[0] for b in _backends()])
def test_learned_variances_per_sample(name, put, back):
    """Kills _ddpm_variance__mutmut_15/35/43..48/55/56/63/67 (None handed to the namespace,
    the floor of β̃ dropped or applied to nothing) and _ddpm_mean_variance__mutmut_48.
    IDDPM Eq. 15: σ² = exp(f·log β' + (1 − f)·log β̃), f = (v + 1)/2; at ᾱ_prev = 1, β̃ = 0
    and β' = 1 − ᾱ_t: β̃ is floored at 10⁻²⁰ (diffusers) or replaced by zero_beta_tilde b
    (guided-diffusion); "fixed_large" with b gives b at that step in place of β'."""
    from refdiff.steps import ddpm_mean_variance

    at, ap = np.array([0.36, 0.81]), np.array([0.64, 1.0])
    v = np.zeros((2, 3))                                  # f = 1/2: the geometric mean
    bstep = 1 - at / ap                                   # β' = [0.4375, 0.19]
    btilde = (1 - ap) / (1 - at) * bstep                  # β̃ = [63/256, 0]
    x, e = put(X), put(E)
    _, var = ddpm_mean_variance(x, e, put(at), put(ap), variance_type="learned_range",
                                var_values=put(v))
    want = np.sqrt(_col(bstep) * _col(np.maximum(btilde, 1e-20)))
    np.testing.assert_allclose(back(var), np.broadcast_to(want, (2, 3)), rtol=1e-12)
    b = 0.05
    _, var = ddpm_mean_variance(x, e, put(at), put(ap), variance_type="learned_range",
                                var_values=put(v), zero_beta_tilde=b)
    want = np.sqrt(_col(bstep) * _col([63 / 256, b]))
    np.testing.assert_allclose(back(var), np.broadcast_to(want, (2, 3)), rtol=1e-12)
    _, var = ddpm_mean_variance(x, e, put(at), put(ap), variance_type="fixed_large",
                                zero_beta_tilde=b)
    np.testing.assert_allclose(np.ravel(back(var)), [0.4375, b], rtol=1e-13)
    # given x̂_0 with per-sample levels: μ̃ = c0·x̂_0 + ct·x_t (DDPM Eq. 7)
    mean, _ = ddpm_mean_variance(x, e, put(AB_T), put(AB_PREV), x0_hat=put(X0))
    want_mean, _, _ = _ref_posterior(X0, X, AB_T, AB_PREV)
    np.testing.assert_allclose(back(mean), want_mean, rtol=1e-13)


def test_zero_beta_tilde_range():
    """Kills _variance_inputs__mutmut_31/35/36/37/41/42: zero_beta_tilde lies in (0, 1]; 0,
    a negative value and 1.5 are refused, 1.0 is accepted (fixed_large then gives 1 at the
    step to ᾱ_prev = 1)."""
    from refdiff.steps import ddpm_mean_variance

    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError):
            ddpm_mean_variance(X, E, 0.81, 1.0, variance_type="fixed_large", zero_beta_tilde=bad)
    _, var = ddpm_mean_variance(X, E, 0.81, 1.0, variance_type="fixed_large", zero_beta_tilde=1.0)
    assert float(var) == 1.0


def test_step_partner_noise_and_x0_hat_are_checked():
    """Kills ddim_step__mutmut_6/7 and predict_x0_eps__mutmut_9 (noise, x0_hat or the model
    output not checked against x_t): float32 partners of a float64 x_t are refused."""
    from refdiff.forward import predict_x0_eps
    from refdiff.steps import ddim_step

    f32 = np.ones((2, 3), dtype=np.float32)
    for call in (lambda p: ddim_step(X, E, 0.36, 0.64, eta=0.5, noise=p),
                 lambda p: ddim_step(X, E, 0.36, 0.64, x0_hat=p),
                 lambda p: predict_x0_eps(X, p, 0.36)):
        with pytest.raises((TypeError, ValueError)):
            call(f32)


# ----- steps: the checks of eta and clip_x0 -------------------------------------------------

def test_eta_and_clip_refuse_booleans_and_the_boundary():
    """Kills _check_eta__mutmut_2 and _clip_bound__mutmut_4 (`or` → `and`: True passes as 1)
    and _clip_bound__mutmut_9 (a bound of 0 accepted): booleans are not numbers here, and a
    clip bound must be > 0."""
    from refdiff.steps import ddim_step

    for kwargs in ({"eta": True, "noise": Z}, {"clip_x0": True}, {"clip_x0": 0.0}):
        with pytest.raises(ValueError):
            ddim_step(X, E, 0.36, 0.64, **kwargs)


def test_eta_too_large_is_refused_and_eta_one_at_a_clean_level_is_not():
    """Kills _check_eta__mutmut_23/24/25 (float levels) and 28/31/32/33 (array levels).
    r = σ²/(1 − ᾱ_prev) = η²·β'/(1 − ᾱ_t): for 0.36 → 0.64, β'/(1 − ᾱ_t) = 0.4375/0.64, so
    η = 1.4 gives r = 1.34 > 1 (refused). η = 1 at ᾱ_prev = 1 gives r = 1 exactly (β' =
    1 − ᾱ_t), legal: σ² = r·(1 − ᾱ_prev) = 0 there; for 0.64 → 0.81, σ² = β̃."""
    from refdiff.steps import ddim_sigma

    with pytest.raises(ValueError):
        ddim_sigma(0.36, 0.64, 1.4)
    with pytest.raises(ValueError):
        ddim_sigma(np.array([0.36, 0.64]), np.array([0.64, 0.81]), 1.4)
    sig, _ = ddim_sigma(np.array([0.36, 0.64]), np.array([1.0, 0.81]), 1.0)
    np.testing.assert_allclose(np.ravel(sig) ** 2, [0.0, 0.19 / 0.36 * (1 - 0.64 / 0.81)],
                               rtol=1e-13, atol=1e-300)


# ----- the namespace handed to check_floating (the memo of dtype facts emptied first) ------

def _first_floating_checks():
    """(mutants, call): each call's named check_floating is the first of its (array type,
    dtype) in the call, so with refdiff._xp's memo emptied the namespace it is handed is read
    (a None there fails). float16 keeps the key fresh after the prologue's other checks."""
    from refdiff.oracle import GaussianMixture
    import refdiff as rd

    h = np.ones((2, 3), np.float16)
    mean, g = np.ones((2, 3), np.float32), np.zeros((2, 3), np.float32)
    gm = GaussianMixture.isotropic([0.5, 0.5], [[-1.0], [1.0]], 0.25)
    return [
        ("log_softmax__mutmut_3", lambda: log_softmax(h)),
        ("_check_logits_labels__mutmut_6", lambda: rd.cross_entropy(h, np.array([0, 1]))),
        ("classifier_gradient__mutmut_3",
         lambda: rd.classifier_gradient(None, h, grad_log_prob=lambda x: x * 0)),
        ("classifier_guided_mean__mutmut_45 (a float64 Σ beside a float32 mean)",
         lambda: rd.classifier_guided_mean(mean, np.ones((2, 3)), g, 1.0)),
        ("oracle _inputs__mutmut_5", lambda: gm.eps(np.ones((2, 1), np.float16), 0.5)),
    ]


@pytest.mark.parametrize("i", range(5))
def test_first_floating_check_uses_the_namespace(i, monkeypatch):
    """Kills the `check_floating(None, ...)` mutants named in each case: the checks pass the
    call's namespace, not a placeholder the memo happens to hide."""
    from refdiff import _xp

    name, call = _first_floating_checks()[i]
    monkeypatch.setattr(_xp, "_FACTS", {})
    call()  # no AttributeError from a None namespace
