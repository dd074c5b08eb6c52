"""Tests written to kill the survivors of the mutation run of refdiff/sampling.py.

Each test names the mutants it kills (by function and mutated line; the numbers shift when
sampling.py changes). Expectations never come from the function under test: they are hand
values of one- and two-step loops, or the step rewritten here in plain NumPy from the
documented formulas (DDPM Eq. 7/15, DDIM Eq. 12, CFG Eq. 6, guidance rescale, CG Algorithms
1–2, V Appendix D). The tests hold whichever internal path the loop takes (the spec
composition or the fused fast path), except where a test says it pins the fast path.

Tiny schedules: ``ZSNR`` has ᾱ = 0.81, 0.64, 0.36, 0 (√ᾱ = 0.9, 0.8, 0.6, 0: zero terminal
SNR, where an x_0- or v-model still gives x̂_0 but rebuilding x̂_0 from ε̂ divides by 0).
"""

from __future__ import annotations

import re
import sys
import types

import numpy as np
import pytest

import refdiff as rd

SCH = rd.linear_schedule(1000)
ZSNR = rd.Schedule.from_betas(np.array([0.19, 1 - 0.64 / 0.81, 1 - 0.36 / 0.64, 1.0]))
RNG = np.random.default_rng(20261202)


def _const_model(value):
    """A model that returns ``value`` (broadcast to x) whatever x, t and c."""
    return lambda x, t, c: np.zeros_like(x) + value


def _x0_of_eps(x, eps, ab):
    return (x - np.sqrt(1 - ab) * eps) / np.sqrt(ab)                 # DDPM Eq. 15


def _to_x0_eps(x, out, ab, ptype):
    """(x̂_0, ε̂) of a model output (V, Appendix D for v)."""
    a, b = np.sqrt(ab), np.sqrt(1 - ab)
    if ptype == "epsilon":
        return (x - b * out) / a, out
    if ptype == "sample":
        return out, (x - a * out) / b
    return a * x - b * out, b * x + a * out


def _from_x0_eps(x0, eps, ab, space):
    a, b = np.sqrt(ab), np.sqrt(1 - ab)
    return {"epsilon": eps, "sample": x0, "v_prediction": a * eps - b * x0}[space]


# ----- _progress: the plain counter (no tqdm) and the tqdm bar ----------------------------

def _steps(n):
    return list(range(10 * n, 0, -10))[:n]  # n descending training timesteps of SCH


@pytest.mark.parametrize("n,lines", [
    (5, [1, 2, 3, 4, 5]),                       # every = max(1, 5 // 10) = 1
    (20, list(range(2, 21, 2))),                # every = 2
    (25, list(range(2, 25, 2)) + [25]),         # every = 2, and the last step
    (30, list(range(3, 31, 3))),                # every = 3
])
def test_progress_without_tqdm_prints_about_ten_lines_to_stderr(n, lines, monkeypatch, capsys):
    """Kills _progress__mutmut_2..25 (the plain counter: its period max(1, n // 10), the
    condition, the line and its stream) and _1 (enabled inverted). tqdm is made unimportable;
    the lines are written out by hand per n."""
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # `from tqdm.auto import ...` fails
    x_T = np.ones((1, 2))
    rd.sample(_const_model(0.0), x_T, SCH, timesteps=_steps(n), progress=True)
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "".join(f"sampling: step {k}/{n}\n" for k in lines)
    rd.sample(_const_model(0.0), x_T, SCH, timesteps=_steps(n), progress=False)
    rd.sample(_const_model(0.0), x_T, SCH, timesteps=_steps(n))  # the default: no progress
    assert capsys.readouterr() == ("", "")


def test_progress_uses_a_tqdm_bar_labelled_sampling(monkeypatch, capsys):
    """Kills _progress__mutmut_27..34 (desc and leave of the tqdm bar) and sample's default
    progress=True: a stand-in tqdm records how it is called."""
    calls = []

    def tqdm(items, **kw):
        calls.append((len(items), kw))
        return iter(items)

    monkeypatch.setitem(sys.modules, "tqdm.auto", types.SimpleNamespace(tqdm=tqdm))
    rd.sample(_const_model(0.0), np.ones((1, 2)), SCH, timesteps=[30, 20, 10], progress=True)
    assert calls == [(3, {"desc": "sampling", "leave": False})]
    rd.sample(_const_model(0.0), np.ones((1, 2)), SCH, timesteps=[30, 20, 10])
    assert len(calls) == 1
    assert capsys.readouterr() == ("", "")


# ----- _checked_run: the Guidance fields, named in the errors -----------------------------

def _run(guidance, **kw):
    kw.setdefault("timesteps", [500])
    return rd.sample(_const_model(0.0), np.ones((2, 3)), SCH, guidance=guidance, **kw)


@pytest.mark.parametrize("field", ["scale", "rescale", "classifier_scale"])
def test_guidance_fields_are_named_in_type_errors(field):
    """Kills _checked_run__mutmut_92..94, 96, 104..106, 111, 118..120: the name handed to the
    check is the one the user wrote, case and all."""
    with pytest.raises(TypeError, match=rf"^Guidance\.{field} must be "):
        _run(rd.Guidance(**{field: "2"}))


@pytest.mark.parametrize("phi", [-0.5, 1.5])
def test_guidance_rescale_must_lie_in_0_1(phi):
    """Kills _checked_run__mutmut_102 (lo dropped), _103 (hi dropped), _108 (hi = 2)."""
    with pytest.raises(ValueError, match=re.escape(f"Guidance.rescale must lie in [0, 1], "
                                                   f"got {phi}")):
        _run(rd.Guidance(cond=1.0, scale=2.0, rescale=phi))


def test_an_array_classifier_scale_counts_as_nonzero():
    """Kills _check_classifier__mutmut_22 (`_xp.is_array(None)`): an array scale, zeros or
    not, needs a classifier (the check does not read array values)."""
    with pytest.raises(ValueError, match="classifier_scale is nonzero but neither"):
        rd.sample(_const_model(0.0), np.ones((1, 2)), SCH, timesteps=[500],
                  guidance=rd.Guidance(classifier_scale=np.zeros(1)))


def test_zero_snr_refusal_looks_at_the_rescale_space_only_when_rescaling():
    """Kills _checked_run__mutmut_151..154 (`spaces = {ptype, space} if rescale != 0 else
    {ptype}`). A v-model on ZSNR starting at ᾱ = 0: rescaling in the ε space needs ε̂ → x̂_0
    there and is refused; with rescale = 0 the ε space is never entered. Hand value: one step
    from ᾱ_t = 0 to 1 is x̂_0 = √0·x − √1·v = −v."""
    v_model = _const_model(0.5)
    x_T = np.ones((2, 3))
    with pytest.raises(ValueError, match="zero terminal SNR"):
        rd.sample(v_model, x_T, ZSNR, timesteps=[3, 1], prediction_type="v_prediction",
                  guidance=rd.Guidance(cond=1.0, scale=2.0, rescale=0.5,
                                       rescale_space="epsilon"))
    out = rd.sample(v_model, x_T, ZSNR, timesteps=[3], prediction_type="v_prediction",
                    guidance=rd.Guidance(cond=1.0, scale=1.0, rescale=0.0,
                                         rescale_space="epsilon"))
    np.testing.assert_array_equal(out, np.full((2, 3), -0.5))


# ----- _checked_variance / _only: the messages and the edges ------------------------------

@pytest.mark.parametrize("kw,msg", [
    (dict(sampler="ddpm", eta=0.5),
     "eta applies to sampler='ddim' only, got eta=0.5 with sampler='ddpm' (DDPM's variance "
     "is set by variance_type)"),
    (dict(sampler="ddim", variance_type="fixed_large"),
     "variance_type applies to sampler='ddpm' only, got variance_type='fixed_large' with "
     "sampler='ddim' (DDIM's variance is set by eta)"),
    (dict(sampler="ddim", last_step_variance="previous_beta_tilde"),
     "last_step_variance applies to sampler='ddpm' only, got "
     "last_step_variance='previous_beta_tilde' with sampler='ddim' (DDIM's variance is set "
     "by eta)"),
])
def test_options_of_the_other_sampler_are_refused_with_the_reason(kw, msg):
    """Kills _checked_variance__mutmut_6, 12, 18..20 (DDPM's reason), 29 (the name), 32, 38,
    41..43 (DDIM's reason): the whole message, written out."""
    with pytest.raises(ValueError, match="^" + re.escape(msg) + "$"):
        rd.sample(_const_model(0.0), np.ones((1, 2)), SCH, timesteps=[500], **kw)


def test_fixed_variance_ddpm_takes_a_1d_batch():
    """Kills _checked_variance__mutmut_70 (the (B, C) requirement applied to fixed
    variances) and _batch_input's `x.ndim <= 1` / `< 2`: x_T of shape (B,) is a batch of
    scalars. One DDPM step to ᾱ = 1 (no noise: it is the last) is x̂_0 = (x − √(1−ᾱ)ε)/√ᾱ."""
    x_T = np.array([1.0, -2.0, 0.5])
    ab = SCH.alpha_bar(500)
    for vt in ("fixed_small", "fixed_large"):
        out = rd.sample(_const_model(0.25), x_T, SCH, sampler="ddpm", timesteps=[500],
                        variance_type=vt, generator=0)
        np.testing.assert_allclose(out, _x0_of_eps(x_T, 0.25, ab), rtol=1e-14)


def test_learned_variance_needs_a_channel_axis():
    """Kills _checked_variance__mutmut_70 from the other side: a learned variance with a 1-D
    x_T is refused in the prologue, with the shape named."""
    with pytest.raises(ValueError, match=re.escape("variance_type='learned' needs x_T of shape "
                                                   "(B, C, ...)")):
        rd.sample(_const_model(0.0), np.ones(3), SCH, sampler="ddpm", timesteps=[500],
                  variance_type="learned")


@pytest.mark.parametrize("shape", [(3, 2), (2, 2, 3)])
def test_learned_variance_with_2d_and_3d_batches(shape):
    """Kills _checked_variance__mutmut_71/72 (`x_T.ndim <= 2` / `< 3`: a (B, C) batch
    refused) and _model_output's layout mutants (the (B, 2C, ...) shape, C = shape[1]).
    Two DDPM steps, "learned" (σ² = exp(model's channel)): the first adds σ·z with the
    generator's first draw, the last none. Hand formulas: DDPM Eq. 7 at x̂_0 (Eq. 15)."""
    t0, t1 = 600, 300
    ab0, ab1 = SCH.alpha_bar(t0), SCH.alpha_bar(t1)
    eps_val, logvar = 0.2, -3.0
    C = shape[1]

    def model(x, t, c):
        e = np.full(x.shape, eps_val)
        return np.concatenate([e, np.full(x.shape, logvar)], axis=1)

    x_T = RNG.standard_normal(shape)
    out = rd.sample(model, x_T, SCH, sampler="ddpm", timesteps=[t0, t1], variance_type="learned",
                    generator=np.random.default_rng(7))
    z = np.random.default_rng(7).standard_normal(shape)
    b = 1 - ab0 / ab1                                               # β' of the respaced step
    x0 = _x0_of_eps(x_T, eps_val, ab0)
    mean = (np.sqrt(ab1) * b / (1 - ab0) * x0 + np.sqrt(1 - b) * (1 - ab1) / (1 - ab0) * x_T)
    x1 = mean + np.sqrt(np.exp(logvar)) * z
    want = _x0_of_eps(x1, eps_val, ab1)                 # last step to ᾱ = 1: μ̃ = x̂_0, no noise
    assert out.shape == shape and C == out.shape[1]
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)


def test_previous_beta_tilde_with_two_steps_and_classifier_guidance():
    """Kills _checked_variance__mutmut_77/78 (`len(levels) <= 2` / `< 3`: two steps refused)
    and sample's variance_type / last_step_variance passed as None (mutants of the call to
    _checked_run). "fixed_large" with "previous_beta_tilde": at the last step (to ᾱ = 1,
    where β̃ = 0) Σ is the β̃ of the step before, which shows in CG's μ + s·Σ·g. An ε-model
    giving 0 and g = 1: written out per step (DDPM Eq. 7, CG Algorithm 1)."""
    t0, t1, s = 600, 300, 0.5
    ab0, ab1 = SCH.alpha_bar(t0), SCH.alpha_bar(t1)
    x_T = RNG.standard_normal((2, 3))
    out = rd.sample(_const_model(0.0), x_T, SCH, sampler="ddpm", timesteps=[t0, t1],
                    variance_type="fixed_large", last_step_variance="previous_beta_tilde",
                    generator=np.random.default_rng(3),
                    guidance=rd.Guidance(grad_log_prob=lambda z, t: np.ones_like(z),
                                         classifier_scale=s))
    z = np.random.default_rng(3).standard_normal((2, 3))
    b0 = 1 - ab0 / ab1
    mean0 = np.sqrt(ab1) * b0 / (1 - ab0) * (x_T / np.sqrt(ab0)) + (
        np.sqrt(1 - b0) * (1 - ab1) / (1 - ab0) * x_T)
    x1 = mean0 + s * b0 + np.sqrt(b0) * z                           # Σ = β' (fixed_large)
    beta_tilde0 = (1 - ab1) / (1 - ab0) * b0                        # β̃ of the step before
    want = x1 / np.sqrt(ab1) + s * beta_tilde0                      # last: μ̃ = x̂_0 = x/√ᾱ
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)
    floor = rd.sample(_const_model(0.0), x_T, SCH, sampler="ddpm", timesteps=[t0, t1],
                      variance_type="fixed_large", generator=np.random.default_rng(3),
                      guidance=rd.Guidance(grad_log_prob=lambda z, t: np.ones_like(z),
                                           classifier_scale=s))
    np.testing.assert_allclose(floor, x1 / np.sqrt(ab1) + s * (1 - ab1), rtol=1e-12, atol=1e-12)


# ----- _model_x0_eps: CFG ends, guidance rescale in every space ---------------------------

def test_scale_zero_with_rescale_is_the_unconditional_run():
    """Kills _model_x0_eps__mutmut_39 (`out_c = None` at s = 0): at s = 0 the conditional
    branch is the unconditional one, so rescaling changes nothing (σ ratio 1). One DDIM step
    to ᾱ = 1: x̂_0 of the unconditional ε."""
    def model(x, t, c):
        return np.zeros_like(x) + (0.3 if c is None else 0.9)

    x_T = RNG.standard_normal((2, 4))
    ab = SCH.alpha_bar(500)
    out = rd.sample(model, x_T, SCH, timesteps=[500],
                    guidance=rd.Guidance(cond=1.0, scale=0.0, rescale=0.5))
    np.testing.assert_allclose(out, _x0_of_eps(x_T, 0.3, ab), rtol=1e-14)


OUT_U = RNG.standard_normal((2, 6))
OUT_C = 0.4 * OUT_U + RNG.standard_normal((2, 6))


@pytest.mark.parametrize("ptype", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("space", [None, "epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("phi", [0.7, 1.0])
def test_guidance_rescale_in_each_space_equals_the_numpy_rewrite(ptype, space, phi):
    """Kills _model_x0_eps__mutmut_76 (`run.rescale == 1` skips φ = 1), _90 (ᾱ_t None in
    the conversion to the rescale space), _91 (space None there), _100 (prediction type
    None), _110 (space None on the way back), and _checked_run's rescale_space / rescale
    passed as None. The rewrite: CFG on the model outputs (affine), both converted to
    ``space``, σ ratio per sample (ddof cancels in the ratio), φ·ratio·g + (1 − φ)·g, back to
    (x̂_0, ε̂); one DDIM step to ᾱ = 1 returns x̂_0."""
    s, t = 3.0, 400
    ab = SCH.alpha_bar(t)

    def model(x, tt, c):
        return (OUT_U if c is None else OUT_C).copy()

    x_T = RNG.standard_normal((2, 6))
    out = rd.sample(model, x_T, SCH, timesteps=[t], prediction_type=ptype,
                    guidance=rd.Guidance(cond=1.0, scale=s, rescale=phi, rescale_space=space))
    sp = ptype if space is None else space
    guided = OUT_U + s * (OUT_C - OUT_U)                            # CFG Eq. 6
    g = _from_x0_eps(*_to_x0_eps(x_T, guided, ab, ptype), ab, sp)
    c = _from_x0_eps(*_to_x0_eps(x_T, OUT_C, ab, ptype), ab, sp)
    ratio = c.std(axis=1, keepdims=True) / g.std(axis=1, keepdims=True)
    r = phi * ratio * g + (1 - phi) * g
    x0, _ = _to_x0_eps(x_T, r, ab, sp)
    np.testing.assert_allclose(out, x0, rtol=1e-10, atol=1e-10)


# ----- _guided_step: x̂_0 kept, per-sample and t-dependent classifier guidance -------------

@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
@pytest.mark.parametrize("ptype,value,want", [("sample", 0.25, 0.25),
                                              ("v_prediction", 0.5, -0.5)])
def test_x0_model_at_zero_snr_keeps_its_x0(sampler, ptype, value, want):
    """Kills _guided_step__mutmut_2 (`grad = ""`: ε̂ "shifted" at s = 0 and x̂_0 dropped),
    _112 and _131 (x̂_0 passed as None to the DDIM / DDPM step), and sample's callback x̂_0
    mutants (`seen` rebuilt from ε̂). At ᾱ_t = 0 an x_0- or v-model gives x̂_0 (the output,
    or −v), which rebuilding from ε̂ cannot (division by √ᾱ_t = 0). One step to ᾱ = 1:
    x_0 = x̂_0, for DDIM (Eq. 12: √1·x̂_0 + √0·ε̂) and DDPM (μ̃ = x̂_0, β̃ = 0)."""
    seen = []
    out = rd.sample(_const_model(value), np.ones((2, 3)), ZSNR, sampler=sampler, timesteps=[3],
                    prediction_type=ptype, generator=0,
                    callback=lambda i, t, x, x0: seen.append(x0))
    np.testing.assert_array_equal(out, np.full((2, 3), want))
    np.testing.assert_array_equal(seen[0], np.full((2, 3), want))
    plain = rd.sample(_const_model(value), np.ones((2, 3)), ZSNR, sampler=sampler,
                      timesteps=[3], prediction_type=ptype, generator=0)
    np.testing.assert_array_equal(plain, np.full((2, 3), want))


def _cg_ddim_ref(x, eps, g, s, ab, clip=None):
    """One CG DDIM step to ᾱ = 1 (returns x̂_0): shift ε̂ (CG Algorithm 2), then clip; or
    (clip given: guided-diffusion's order) clip, re-derive ε̂, shift, rebuild, no clip."""
    if clip is None:
        return _x0_of_eps(x, eps - s * np.sqrt(1 - ab) * g, ab)
    x0c = np.clip(_x0_of_eps(x, eps, ab), -clip, clip)
    eps_r = (x - np.sqrt(ab) * x0c) / np.sqrt(1 - ab)
    return _x0_of_eps(x, eps_r - s * np.sqrt(1 - ab) * g, ab)


G = RNG.standard_normal((3, 2))
X3 = 2.0 * RNG.standard_normal((3, 2))


@pytest.mark.parametrize("order,clip", [("shift_then_clip", None), ("clip_then_shift", 1.0)])
def test_per_sample_classifier_scale_with_an_analytic_gradient(order, clip):
    """Kills _checked_run__mutmut_110 (xp None) and _113 (x None: a (B,) scale kept (B,),
    which cannot broadcast against (B, C)), _guided_step__mutmut_7 (`_xp.is_array(None)`:
    bool() of a (B, 1) array), _72/_93 (xp None where an array scale is cast) and the
    classifier_order / clip_x0 / rederive_eps arguments dropped on the way. B = 3, C = 2; the
    scale of each row on its own."""
    s = np.array([0.0, 1.0, 2.5])
    eps, ab = 0.3, SCH.alpha_bar(700)
    out = rd.sample(_const_model(eps), X3, SCH, timesteps=[700], clip_x0=clip,
                    classifier_order=order,
                    guidance=rd.Guidance(grad_log_prob=lambda z, t: G.copy(),
                                         classifier_scale=s))
    want = _cg_ddim_ref(X3, np.full((3, 2), eps), G, s[:, None], ab, clip)
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)


def test_classifier_scale_one_guides():
    """Kills _guided_step__mutmut_9 (`s != 1`: a float scale 1 taken as "off") and the
    guidance passed as None to the step: s = 1 with an analytic gradient that depends on t
    (it is called with the training timestep)."""
    eps, ab = 0.3, SCH.alpha_bar(700)
    out = rd.sample(_const_model(eps), X3, SCH, timesteps=[700],
                    guidance=rd.Guidance(grad_log_prob=lambda z, t: G * (t / 700),
                                         classifier_scale=1.0))
    np.testing.assert_allclose(out, _cg_ddim_ref(X3, np.full((3, 2), eps), G, 1.0, ab),
                               rtol=1e-12, atol=1e-12)


def test_autograd_classifier_per_sample_scale_and_timestep():
    """Kills _guided_step__mutmut_28 (`_xp.is_array(None)` on the autograd branch: bool() of a
    (B, 1) array) and _41 (the classifier called with t = None). torch autograd of
    log p = (t/700)·Σ w·x, so ∇ log p = (t/700)·w; DDIM and DDPM against the rewrite."""
    torch = pytest.importorskip("torch")
    w = np.array([0.5, -1.0])
    s = np.array([0.0, 1.0, 2.5])
    eps, t = 0.3, 700
    ab = SCH.alpha_bar(t)

    def classifier(z, tt):
        return (tt / 700) * (z * torch.asarray(w)).sum(dim=1)

    def tmodel(x, tt, c):
        return torch.zeros_like(x) + eps

    g = rd.Guidance(classifier=classifier, classifier_scale=torch.asarray(s))
    out = rd.sample(tmodel, torch.asarray(X3), SCH, timesteps=[t], guidance=g)
    want = _cg_ddim_ref(X3, np.full((3, 2), eps), np.broadcast_to(w, (3, 2)), s[:, None], ab)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-12, atol=1e-12)
    out = rd.sample(tmodel, torch.asarray(X3), SCH, sampler="ddpm", timesteps=[t], guidance=g,
                    generator=0)
    # last step to ᾱ = 1: μ̃ = x̂_0, Σ = β̃ = 0 (fixed_small), so CG's s·Σ·g adds nothing
    np.testing.assert_allclose(out.numpy(), _x0_of_eps(X3, eps, ab), rtol=1e-12, atol=1e-12)


# ----- ddim_invert ------------------------------------------------------------------------

def test_ddim_invert_refuses_an_x0_model():
    """Kills ddim_invert__mutmut_22/23 (the "sample" refusal)."""
    with pytest.raises(ValueError, match="ddim_invert needs an epsilon or v model"):
        rd.ddim_invert(_const_model(0.0), np.ones((1, 2)), SCH, num_inference_steps=3,
                       prediction_type="sample")


def test_ddim_invert_passes_spacing_and_cond_to_the_model():
    """Kills ddim_invert__mutmut_44 (spacing dropped: "leading") and _73 (cond dropped).
    Trailing spacing of 4 steps of T = 1000 is [999, 749, 499, 249]; inverted in ascending
    order, each call labelled with the source level's timestep, the first with the smallest
    listed one (hand list)."""
    calls = []

    def model(x, t, c):
        calls.append((t, c))
        return np.zeros_like(x)

    rd.ddim_invert(model, np.ones((1, 2)), SCH, num_inference_steps=4, spacing="trailing",
                   cond="c")
    assert calls == [(249, "c"), (249, "c"), (499, "c"), (749, "c")]


def test_ddim_invert_with_a_v_model_two_steps():
    """Kills ddim_invert__mutmut_83 (x None) and _85 (ᾱ_src None) on the v path. Rewrite
    (V Appendix D, DDIM Eq. 12 with σ = 0): x̂_0 = √ᾱ·x − √(1−ᾱ)·v, ε̂ = √(1−ᾱ)·x + √ᾱ·v,
    x_next = √ᾱ_next·x̂_0 + √(1−ᾱ_next)·ε̂; the first step starts at ᾱ = 1."""
    V = [RNG.standard_normal((2, 3)) for _ in range(2)]
    calls = []

    def model(x, t, c):
        calls.append(t)
        return V[len(calls) - 1].copy()

    x0 = RNG.standard_normal((2, 3))
    out = rd.ddim_invert(model, x0, SCH, timesteps=[600, 300], prediction_type="v_prediction")
    x, ab = x0, 1.0
    for v, t_next in zip(V, (300, 600)):
        ab_next = SCH.alpha_bar(t_next)
        x0h, e = np.sqrt(ab) * x - np.sqrt(1 - ab) * v, np.sqrt(1 - ab) * x + np.sqrt(ab) * v
        x, ab = np.sqrt(ab_next) * x0h + np.sqrt(1 - ab_next) * e, ab_next
    np.testing.assert_allclose(out, x, rtol=1e-12, atol=1e-12)


# ----- sample: the loop's own lines -------------------------------------------------------

def test_callback_gets_step_index_timestep_new_x_and_x0_of_the_input():
    """Kills sample's callback mutants (i, t, x or x̂_0 passed as None or dropped; x̂_0 not
    rebuilt from ε̂ for an ε-model). Two DDIM steps of an ε-model giving 0.2: x̂_0 of each
    step's input is (x − √(1−ᾱ)·0.2)/√ᾱ (DDPM Eq. 15); x_{t_1} = √ᾱ_1·x̂_0 + √(1−ᾱ_1)·0.2."""
    seen = []
    x_T = RNG.standard_normal((2, 3))
    out = rd.sample(_const_model(0.2), x_T, SCH, timesteps=[600, 300],
                    callback=lambda i, t, x, x0: seen.append((i, t, x.copy(), x0.copy())))
    ab0, ab1 = SCH.alpha_bar(600), SCH.alpha_bar(300)
    x0a = _x0_of_eps(x_T, 0.2, ab0)
    x1 = np.sqrt(ab1) * x0a + np.sqrt(1 - ab1) * 0.2
    x0b = _x0_of_eps(x1, 0.2, ab1)
    assert [(i, t) for i, t, _, _ in seen] == [(0, 600), (1, 300)]
    for got, want in zip([v for s in seen for v in s[2:]], [x1, x0a, x0b, x0b]):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(out, seen[-1][2])


def test_a_non_callable_callback_is_refused():
    """Kills sample__mutmut_75 (`callback is None and ...`)."""
    with pytest.raises(TypeError, match="callback must be callable"):
        rd.sample(_const_model(0.0), np.ones((1, 2)), SCH, timesteps=[500], callback=5)


def test_default_rederive_eps_with_clip():
    """Kills sample's default rederive_eps=False and clip_x0 / rederive_eps passed as None.
    One DDIM step 600 → 300 with a clip that bites: x̂_0 clipped to [−1, 1] and ε̂ re-derived
    from it (DDIM Eq. 12 with the re-derived ε̂)."""
    x_T = np.array([[3.0, -0.2], [-4.0, 0.1]])
    ab0, ab1 = SCH.alpha_bar(600), SCH.alpha_bar(300)
    out = rd.sample(_const_model(0.1), x_T, SCH, timesteps=[600], clip_x0=1.0)
    # one step to ᾱ = 1 returns the clipped x̂_0; two steps use the re-derived ε̂
    np.testing.assert_allclose(out, np.clip(_x0_of_eps(x_T, 0.1, ab0), -1, 1), rtol=1e-14)
    seen = []
    rd.sample(_const_model(0.1), x_T, SCH, timesteps=[600, 300], clip_x0=1.0,
              callback=lambda i, t, x, x0: seen.append(x.copy()))
    x0c = np.clip(_x0_of_eps(x_T, 0.1, ab0), -1, 1)
    eps_r = (x_T - np.sqrt(ab0) * x0c) / np.sqrt(1 - ab0)
    np.testing.assert_allclose(seen[0], np.sqrt(ab1) * x0c + np.sqrt(1 - ab1) * eps_r,
                               rtol=1e-12, atol=1e-12)


def test_deterministic_ddim_draws_no_noise():
    """Kills sample__mutmut_56 (`run.eta >= 0`: noise drawn at η = 0): DDIM with η = 0 does
    not advance the caller's generator (nothing random happens)."""
    g = np.random.default_rng(11)
    rd.sample(_const_model(0.1), np.ones((2, 2)), SCH, timesteps=[600, 300], generator=g)
    assert g.standard_normal() == np.random.default_rng(11).standard_normal()


def test_ddpm_noise_has_the_dtype_of_x_T():
    """Kills sample's noise drawn with dtype=None (float64 noise promotes a float32 run)."""
    x_T = np.ones((2, 3), dtype=np.float32)
    out = rd.sample(lambda x, t, c: x * np.float32(0.1), x_T, SCH, sampler="ddpm",
                    timesteps=[600, 300], generator=0)
    assert out.dtype == np.float32


def test_default_number_of_steps_is_50_leading():
    """Kills _timesteps' default n = 51 and "leading" mutants: the default visits the 50
    leading timesteps of T = 1000, 980, 960, …, 0 (hand rule: k·T/n, descending)."""
    seen = []
    rd.sample(_const_model(0.0), np.ones((1, 2)), SCH,
              callback=lambda i, t, x, x0: seen.append(t))
    assert seen == list(range(980, -1, -20))


def test_eta_too_large_is_refused_before_the_model_runs():
    """Kills _checked_run's η-against-every-step mutants (`sampler == "DDIM"`, levels passed
    as None): η = 1.5 gives σ² > 1 − ᾱ_prev on a big step (r = η²·β'/(1−ᾱ_t) > 1), an error
    before the first model evaluation."""
    calls = []

    def model(x, t, c):
        calls.append(t)
        return np.zeros_like(x)

    with pytest.raises(ValueError):
        rd.sample(model, np.ones((1, 2)), SCH, timesteps=[999, 10], eta=1.5, generator=0)
    assert calls == []


@pytest.mark.parametrize("timesteps,err,msg", [
    ([1000], ValueError, r"timesteps must be a non-empty, strictly descending list in \[0, 999\]"),
    ([5, 5], ValueError, r"timesteps must be a non-empty, strictly descending"),
    ([900, 500, 700], ValueError, r"timesteps must be a non-empty, strictly descending"),
    ("abc", TypeError, r"timesteps must be a sequence or a 1-D array of ints"),
    (5, TypeError, r"timesteps must be a sequence or a 1-D array of ints"),
])
def test_bad_timesteps_are_refused_by_the_timestep_check(timesteps, err, msg):
    """Kills _timesteps' validation mutants (`and` for `or`, `t <= T`, `a < b`, zip against
    ts[2:], the str/__len__ test): each input is refused by the check meant for it."""
    with pytest.raises(err, match=msg):
        rd.sample(_const_model(0.0), np.ones((1, 2)), SCH, timesteps=timesteps)


@pytest.mark.parametrize("kw", [dict(num_inference_steps=3), dict(spacing="leading")])
def test_timesteps_exclude_the_spacing_options(kw):
    """Kills _timesteps' `and` for `or` in the exclusion (either option alone is refused)."""
    with pytest.raises(ValueError, match="pass either timesteps or num_inference_steps/spacing"):
        rd.sample(_const_model(0.0), np.ones((1, 2)), SCH, timesteps=[10, 0], **kw)


def test_timestep_zero_is_a_valid_listed_step():
    """Kills _timesteps' `1 <= t` and `0 < t` mutants: t = 0 may be listed. One DDIM step
    from t = 0 to ᾱ = 1 is x̂_0 (DDPM Eq. 15)."""
    out = rd.sample(_const_model(0.1), np.ones((1, 2)), SCH, timesteps=[0])
    np.testing.assert_allclose(out, _x0_of_eps(np.ones((1, 2)), 0.1, SCH.alpha_bar(0)),
                               rtol=1e-14)


@pytest.mark.parametrize("fn,name", [(rd.sample, "x_T"), (rd.ddim_invert, "x0")])
def test_a_non_array_input_is_named(fn, name):
    """Kills _batch_input's name passed as None."""
    with pytest.raises(TypeError, match=rf"^{name}\b"):
        fn(_const_model(0.0), [[1.0, 2.0]], SCH, timesteps=[10])


@pytest.mark.parametrize("learned", [False, True])
def test_model_output_dtype_is_checked_against_x_t(learned):
    """Kills _model_output's reference name (`"x_t"` → None, "XXx_tXX", "X_T") and the
    returned array dropped from the check (`model_output=None`): a float32 output for a
    float64 x_t is refused, naming x_t."""
    def model(x, t, c):
        out = np.zeros_like(x, dtype=np.float32)
        return np.concatenate([out, out], axis=1) if learned else out

    kw = dict(sampler="ddpm", variance_type="learned", generator=0) if learned else {}
    with pytest.raises(TypeError, match=r"has dtype float32 but x_t has dtype float64"):
        rd.sample(model, np.ones((1, 2)), SCH, timesteps=[10], **kw)


# ----- the fast path and batch_cfg (sample's Notes) ---------------------------------------

EU = RNG.standard_normal((3, 4))
EC = RNG.standard_normal((3, 4))
UNCOND = np.zeros((3, 1))
COND = np.ones((3, 1))


def _two_branch_model(x, t, c):
    """ε_u or ε_c per row, from the condition (0 or 1 in each row); works on a 2B batch."""
    c = np.asarray(c)
    return np.where(c == 1, np.concatenate([EC] * (x.shape[0] // 3)),
                    np.concatenate([EU] * (x.shape[0] // 3))) + 0 * x


@pytest.mark.parametrize("batch_cfg", [False, True])
def test_cfg_without_callback_is_the_fused_guided_step(batch_cfg):
    """Pins the fast path of sample's Notes: under CFG with an ε-model, a fixed variance and
    nothing that needs x̂_0, each step *is* refdiff.guided_ddim_step / guided_ddpm_step, bit
    for bit (with or without batch_cfg, for a model that treats each row on its own). Kills
    _checked_variance's DDIM `return "XXfixed_smallXX"` (a variance_type that is not a fixed
    one sends DDIM off the fast path: the composition differs in the last bits)."""
    x_T = RNG.standard_normal((3, 4))
    ab0, ab1, s = SCH.alpha_bar(700), SCH.alpha_bar(300), 3.0
    g = rd.Guidance(cond=COND, uncond=UNCOND, scale=s)
    out = rd.sample(_two_branch_model, x_T, SCH, timesteps=[700, 300], guidance=g,
                    batch_cfg=batch_cfg)
    x = rd.guided_ddim_step(x_T, EU, EC, s, ab0, ab1)
    np.testing.assert_array_equal(out, rd.guided_ddim_step(x, EU, EC, s, ab1, 1.0))
    out = rd.sample(_two_branch_model, x_T, SCH, sampler="ddpm", timesteps=[700, 300],
                    guidance=g, batch_cfg=batch_cfg, generator=np.random.default_rng(5))
    z = np.random.default_rng(5).standard_normal((3, 4))
    x = rd.guided_ddpm_step(x_T, EU, EC, s, ab0, ab1, z)
    np.testing.assert_array_equal(out, rd.guided_ddpm_step(x, EU, EC, s, ab1, 1.0,
                                                           np.zeros((3, 4))))


@pytest.mark.parametrize("batch_cfg", [False, True])
def test_cfg_with_a_learned_variance_uses_the_conditional_channel(batch_cfg):
    """The two halves of a batched call (uncond first) and the conditional branch's variance
    channel (GLIDE, DiT): two DDPM steps, "learned", s = 2, rewritten here (CFG Eq. 6, DDPM
    Eq. 7 at x̂_0, σ² = exp(conditional channel))."""
    lv_u, lv_c, s = -1.0, -4.0, 2.0

    def model(x, t, c):
        c = np.asarray(c)
        eps = _two_branch_model(x, t, c)
        return np.concatenate([eps, np.where(c == 1, lv_c, lv_u) + 0 * x], axis=1)

    x_T = RNG.standard_normal((3, 4))
    ab0, ab1 = SCH.alpha_bar(700), SCH.alpha_bar(300)
    out = rd.sample(model, x_T, SCH, sampler="ddpm", variance_type="learned",
                    timesteps=[700, 300], generator=np.random.default_rng(9), batch_cfg=batch_cfg,
                    guidance=rd.Guidance(cond=COND, uncond=UNCOND, scale=s))
    z = np.random.default_rng(9).standard_normal((3, 4))
    e = EU + s * (EC - EU)
    b = 1 - ab0 / ab1
    x0 = _x0_of_eps(x_T, e, ab0)
    x1 = (np.sqrt(ab1) * b / (1 - ab0) * x0 + np.sqrt(1 - b) * (1 - ab1) / (1 - ab0) * x_T
          + np.exp(lv_c / 2) * z)
    np.testing.assert_allclose(out, _x0_of_eps(x1, e, ab1), rtol=1e-12, atol=1e-12)


def test_ddpm_on_a_second_device_draws_its_noise_there():
    """Kills sample's noise drawn with device=None (array-api-strict refuses to add arrays of
    two devices). Two DDPM steps of an ε-model giving 0 on array-api-strict's "device1"; the
    strict backend draws NumPy's standard normals (its module docstring), so the rewrite
    reuses the same draws: DDPM Eq. 7 at x̂_0 = x/√ᾱ, σ² = β̃, no noise on the last step."""
    xs = pytest.importorskip("array_api_strict")
    dev = xs.Device("device1")
    x_np = RNG.standard_normal((2, 3))
    out = rd.sample(lambda x, t, c: xs.zeros_like(x), xs.asarray(x_np, device=dev), SCH,
                    sampler="ddpm", timesteps=[700, 300], generator=np.random.default_rng(4))
    assert out.device == dev
    ab0, ab1 = SCH.alpha_bar(700), SCH.alpha_bar(300)
    b = 1 - ab0 / ab1
    z = np.random.default_rng(4).standard_normal((2, 3))
    x1 = (np.sqrt(ab1) * b / (1 - ab0) * x_np / np.sqrt(ab0)
          + np.sqrt(1 - b) * (1 - ab1) / (1 - ab0) * x_np + np.sqrt((1 - ab1) / (1 - ab0) * b) * z)
    got = np.asarray(xs.asarray(out, device=xs.Device("CPU_DEVICE")))
    np.testing.assert_allclose(got, x1 / np.sqrt(ab1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("scale,kind,b", [(3.0, "pair", 6), (1.0, "cond", 3), (0.0, "uncond", 3)])
def test_batch_cfg_calls_the_model_once_per_step_on_2b(scale, kind, b):
    """batch_cfg (sample's docstring): under CFG one model call per step on [x; x] with the
    condition [uncond; cond] and the step's training timestep; no effect at a float scale 0
    or 1 (one branch, B rows)."""
    calls = []

    def model(x, t, c):
        kind = "pair" if c.shape[0] == 6 else ("cond" if c is COND else "uncond")
        calls.append((x.shape[0], kind, t))
        return _two_branch_model(x, t, c)

    rd.sample(model, RNG.standard_normal((3, 4)), SCH, timesteps=[700, 300], batch_cfg=True,
              guidance=rd.Guidance(cond=COND, uncond=UNCOND, scale=scale))
    assert calls == [(b, kind, 700), (b, kind, 300)]


def test_per_sample_cfg_scale_on_the_spec_path():
    """Kills _model_x0_eps's `_xp.is_array(None)` in the s == 1 / s == 0 tests (bool() of a
    (B, 1) array) and `_cfg(None, ...)` (an array scale cast with xp): a (B,) CFG scale with a
    callback (which needs x̂_0, so the loop composes CFG and the step). One DDIM step to
    ᾱ = 1: x̂_0 of ε̃ = ε_u + s·(ε_c − ε_u) per row (CFG Eq. 6, DDPM Eq. 15)."""
    s = np.array([0.0, 1.0, 4.0])
    x_T = RNG.standard_normal((3, 4))
    ab = SCH.alpha_bar(500)
    out = rd.sample(_two_branch_model, x_T, SCH, timesteps=[500], callback=lambda *a: None,
                    guidance=rd.Guidance(cond=COND, uncond=UNCOND, scale=s))
    want = _x0_of_eps(x_T, EU + s[:, None] * (EC - EU), ab)
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("flag", ["progress", "return_trajectory", "batch_cfg"])
def test_flags_are_named_in_their_type_error(flag):
    """Kills sample's `_xp.flag(None, v)` (the flag's name lost from the message)."""
    with pytest.raises(TypeError, match=rf"^{flag} must be True or False"):
        rd.sample(_const_model(0.0), np.ones((1, 2)), SCH, timesteps=[500], **{flag: "yes"})


def test_classifier_order_is_ddim_only_with_a_plain_message():
    """Kills _only's default `why = "XXXX"`: the classifier_order refusal passes no reason,
    so the message ends with the sampler."""
    msg = ("classifier_order applies to sampler='ddim' only, got "
           "classifier_order='clip_then_shift' with sampler='ddpm'")
    with pytest.raises(ValueError, match="^" + re.escape(msg) + "$"):
        rd.sample(_const_model(0.0), np.ones((1, 2)), SCH, sampler="ddpm", timesteps=[500],
                  classifier_order="clip_then_shift", generator=0)


@pytest.mark.parametrize("scale", [0.0, 1.0])
def test_batch_cfg_has_no_effect_at_a_float_scale_0_or_1(scale):
    """Kills sample's `not _is_end(None)` (batching, and its checks of cond/uncond, applied
    at any scale): at s = 0 or 1 one branch is evaluated and batch_cfg changes nothing, so
    conditions that could not be batched (strings) are fine. Hand value: one DDIM step of
    an ε-model giving 0.1 to ᾱ = 1 is (x − √(1−ᾱ)·0.1)/√ᾱ."""
    out = rd.sample(_const_model(0.1), np.ones((1, 2)), SCH, timesteps=[500], batch_cfg=True,
                    guidance=rd.Guidance(cond="a cat", uncond="", scale=scale))
    np.testing.assert_allclose(out, _x0_of_eps(np.ones((1, 2)), 0.1, SCH.alpha_bar(500)),
                               rtol=1e-14)


def test_bad_generator_refused_even_when_no_step_draws():
    """Kills sample__mutmut_61 (generator built only for noisy runs): a deterministic DDIM run
    (η = 0) draws nothing, but a generator of the wrong kind is still a caller's error."""
    with pytest.raises(TypeError, match="generator must be None, a non-negative int seed"):
        rd.sample(lambda x, t, c: x * 0, np.ones((1, 2)), rd.linear_schedule(20),
                  num_inference_steps=2, sampler="ddim", eta=0.0, generator="junk")
