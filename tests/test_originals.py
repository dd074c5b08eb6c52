"""refdiff's steps and loop against independent float64 re-derivations of the originals.

Nothing here calls refdiff to build an expected value. The references are written in the
test from the formulas:

- :class:`GuidedDiffusionRef` is guided-diffusion's ``GaussianDiffusion`` on a respaced chain
  (``SpacedDiffusion``): respaced betas 1 − ᾱ_i/ᾱ_{i−1}, its own cumprod of them, the posterior
  tables, ``posterior_log_variance_clipped = log(append(β̃[1], β̃[1:]))``, FIXED_LARGE =
  ``append(β̃[1], betas[1:])``, the LEARNED / LEARNED_RANGE variances, ``p_mean_variance``,
  ``condition_mean`` (μ + Σ·s·g), ``condition_score`` (clip, re-derive ε, shift ε, rebuild
  x̂_0 without clipping), ``ddim_sample`` and ``ddim_reverse_sample``; its x̂_0 is
  √(1/ᾱ)·x − √(1/ᾱ − 1)·ε, its ε is (√(1/ᾱ)·x − x̂_0)/√(1/ᾱ − 1), as in the original (refdiff
  writes both differently, so the algebra is independent too).
- Where refdiff's default differs from guided-diffusion (the 1e-20 floor of β̃ at the last
  step, the shift-then-clip order, ε kept after clipping, the destination-timestep inversion),
  the test writes that convention's algebra directly (diffusers' formulas).
- Imagen's dynamic thresholding is written with ``numpy.quantile`` (linear interpolation, the
  same definition as ``torch.quantile``).

Tolerance: float64, |refdiff − reference| ≤ RTOL·max(1, max|reference|) with RTOL = 1e-12.
Why that bound holds: a step is x_prev = A·x_t + B·ε̂ (+ σ·z) with |A|, |B| ≤
√(ᾱ_prev/ᾱ_t) ≤ 3.3 on these lists (the largest ratio is the noisiest stride, ᾱ_874/ᾱ_999).
Both sides evaluate it through x̂_0 = O(1/√ᾱ_t)·(…), in different algebra, which costs a few
dozen roundings (u = 2⁻⁵³ ≈ 1.1e-16 each) of terms ≤ ~10 scaled by those coefficients:
≲ 40·3.3·10·u ≈ 1.5e-13 per step. guided-diffusion's table is the cumprod of the respaced
betas, which differs from the direct ᾱ by ~N·u relative (N = 8 products, checked below), an
error of the same order through ∂x_prev/∂ᾱ. A loop carries a step's error to its output
with a gain ≤ ~1 when x̂_0 is clipped, and up to √(ᾱ_final/ᾱ_t) ≤ 160 without (measured by
finite differences: 40 and 160), but then the output grows by the same factor (max|x_0| ≈
110–370 from max|x_T| ≈ 3), so relative to the scale 8 steps stay ≲ 8·1.5e-13 ≈ 1.2e-12
only if every rounding had one sign and every step the worst coefficient. Measured worst:
1e-14 for the loops, 2e-15 for single steps.
Clipping and thresholding are piecewise linear, and with these inputs no value sits within
1e-12 of a clip edge or a quantile knot, so they do not amplify. Variances are compared
elementwise-relative at the same RTOL (exp/log of O(50) numbers: ~50·u). One comparison is
ill-conditioned and gets its own derived bound (:func:`invert_rtol`): inversion with ε
re-derived from a clipped x̂_0 at ᾱ_0 = 1 − 1e-4.
"""

from __future__ import annotations

import numpy as np
import pytest

import refdiff as rd
from refdiff import Guidance

RTOL = 1e-12
T = 1000
BETAS = np.linspace(1e-4, 0.02, T)              # DDPM §4 linear schedule (float64)
AB = np.cumprod(1.0 - BETAS)                    # ᾱ_t, the direct table
SCHED = rd.Schedule.from_betas(BETAS)
N = 8
TS = list(range(0, T, T // N))[::-1]            # leading spacing, descending: 875, …, 125, 0
TS_TRAIL = [999, 874, 749, 624, 499, 374, 249, 124]  # trailing spacing: the last t is not 0
FLOOR = 1e-20                                   # diffusers' floor of β̃ inside log β̃
SHAPE = (2, 3, 5)                               # (B, C, L)
SEED = 1234


def close(actual, expected, rtol=RTOL):
    """Assert |actual − expected| ≤ rtol·max(1, max|expected|); return the error / scale."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == np.float64
    scale = max(1.0, float(np.max(np.abs(expected))))
    err = float(np.max(np.abs(actual - expected))) / scale
    assert err <= rtol, f"relative error {err:.3g} > {rtol:.1g}"
    return err


def close_rel(actual, expected, rtol=RTOL):
    """Elementwise relative closeness (for variances, which are all positive)."""
    actual, expected = np.broadcast_arrays(np.asarray(actual, float), np.asarray(expected, float))
    err = float(np.max(np.abs(actual - expected) / np.abs(expected)))
    assert err <= rtol, f"elementwise relative error {err:.3g} > {rtol:.1g}"
    return err


# ----- the toy models: deterministic functions of (x, t), 2C channels for learned variance --

def eps_of(x, t):
    return 0.8 * np.tanh(0.9 * x + 1e-3 * t) + 0.1 * np.cos(2.0 * x)


def range_of(x, t):                             # learned_range's v, in (−1, 1)
    return np.tanh(0.6 * x - 0.2 + 1e-3 * t)


def logvar_of(x, t):                            # learned's log σ²
    return -7.0 + 5e-3 * t + 0.3 * np.tanh(x)


def grad_of(x, t):                              # an analytic ∇ log p(y | x_t) at training t
    return -0.4 * x + 0.2 * np.sin(x + t / 250.0)


VAR_OF = {"learned": logvar_of, "learned_range": range_of}


def make_model(variance_type):
    """model(x, t, c) of the loop: ε, then the variance channel for the learned types."""
    if variance_type not in VAR_OF:
        return lambda x, t, c: eps_of(x, t)
    var = VAR_OF[variance_type]
    return lambda x, t, c: np.concatenate([eps_of(x, t), var(x, t)], axis=1)


def cg(s):
    return Guidance(classifier=lambda x, t: None, grad_log_prob=grad_of, classifier_scale=s)


def x_T():
    return np.random.default_rng(0).standard_normal(SHAPE) * 1.3


def threshold_ref(x0, ratio, max_value):
    """Imagen §2.3 dynamic thresholding, per sample: s = quantile(|x̂_0|, ratio) over the
    non-batch axes (linear interpolation), s ← clip(s, 1, max_value), x̂_0 ← clip(x̂_0, −s, s)/s."""
    s = np.quantile(np.abs(x0.reshape(x0.shape[0], -1)), ratio, axis=1)
    s = np.clip(s, 1.0, max_value).reshape(-1, *([1] * (x0.ndim - 1)))
    return np.clip(x0, -s, s) / s


def process_ref(x0, clip):
    """guided-diffusion's process_xstart: a static clip to [−b, b] or a dynamic threshold."""
    if clip is None:
        return x0
    if isinstance(clip, tuple):                 # ("threshold", ratio, max_value)
        return threshold_ref(x0, clip[1], clip[2])
    return np.clip(x0, -clip, clip)


# ----- guided-diffusion, re-derived ------------------------------------------------------

class GuidedDiffusionRef:
    """guided-diffusion's GaussianDiffusion tables on the respaced chain of ``timesteps``.

    Index i = 0 … N−1 runs over the visited timesteps in ascending order (i = 0 is the
    smallest, the last sampling step). ``last="floor"`` swaps guided-diffusion's index-0
    values for diffusers' (β̃ floored at 1e-20 inside the log, FIXED_LARGE = β'_0); the
    default ``"previous_beta_tilde"`` is guided-diffusion's own (β̃[1] at index 0).
    """

    def __init__(self, timesteps, last="previous_beta_tilde"):
        self.timestep_map = sorted(timesteps)
        use = set(timesteps)
        last_ac, new_betas = 1.0, []
        for i, ac in enumerate(AB):             # SpacedDiffusion.__init__
            if i in use:
                new_betas.append(1 - ac / last_ac)
                last_ac = ac
        betas = np.array(new_betas)
        self.betas = betas
        ac = np.cumprod(1.0 - betas, axis=0)   # GaussianDiffusion.__init__
        self.alphas_cumprod = ac
        self.alphas_cumprod_prev = np.append(1.0, ac[:-1])
        self.alphas_cumprod_next = np.append(ac[1:], 0.0)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / ac)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / ac - 1)
        pv = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - ac)
        self.posterior_variance = pv
        self.posterior_log_variance_clipped = np.log(np.append(pv[1], pv[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - ac)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(1.0 - betas) / (
            1.0 - ac)
        fixed_large = np.append(pv[1], betas[1:])
        min_log = self.posterior_log_variance_clipped.copy()
        if last == "floor":                     # diffusers' treatment of β̃ = 0 at index 0
            fixed_large[0] = betas[0]
            min_log[0] = np.log(max(pv[0], FLOOR))
        self.fixed_large = fixed_large
        self.min_log = min_log
        self.max_log = np.log(betas)

    def predict_xstart_from_eps(self, x, i, eps):
        return self.sqrt_recip_alphas_cumprod[i] * x - self.sqrt_recipm1_alphas_cumprod[i] * eps

    def predict_eps_from_xstart(self, x, i, x0):
        return (self.sqrt_recip_alphas_cumprod[i] * x - x0) / self.sqrt_recipm1_alphas_cumprod[i]

    def q_posterior_mean(self, x0, x, i):
        return self.posterior_mean_coef1[i] * x0 + self.posterior_mean_coef2[i] * x

    def variance(self, i, variance_type, var_values):
        """(Σ, log Σ) of p_mean_variance."""
        if variance_type == "fixed_small":
            return self.posterior_variance[i], self.posterior_log_variance_clipped[i]
        if variance_type == "fixed_large":
            return self.fixed_large[i], np.log(self.fixed_large[i])
        if variance_type == "learned":
            return np.exp(var_values), var_values
        frac = (var_values + 1) / 2             # IDDPM Eq. 15
        log_var = frac * self.max_log[i] + (1 - frac) * self.min_log[i]
        return np.exp(log_var), log_var

    def p_mean_variance(self, out, x, i, variance_type, clip):
        C = x.shape[1]
        var_values = None
        if variance_type in VAR_OF:
            out, var_values = out[:, :C], out[:, C:]
        variance, log_variance = self.variance(i, variance_type, var_values)
        pred_xstart = process_ref(self.predict_xstart_from_eps(x, i, out), clip)
        mean = self.q_posterior_mean(pred_xstart, x, i)
        return {"mean": mean, "variance": variance, "log_variance": log_variance,
                "pred_xstart": pred_xstart}

    def condition_mean(self, pmv, x, i, s):
        return pmv["mean"] + pmv["variance"] * (s * grad_of(x, self.timestep_map[i]))

    def condition_score(self, pmv, x, i, s):
        ab = self.alphas_cumprod[i]
        eps = self.predict_eps_from_xstart(x, i, pmv["pred_xstart"])
        eps = eps - np.sqrt(1 - ab) * (s * grad_of(x, self.timestep_map[i]))
        out = dict(pmv)
        out["pred_xstart"] = self.predict_xstart_from_eps(x, i, eps)
        out["mean"] = self.q_posterior_mean(out["pred_xstart"], x, i)
        return out

    def p_sample_loop(self, model, x, variance_type, clip=None, s=None, seed=SEED):
        rng = np.random.default_rng(seed)
        for i in reversed(range(len(self.timestep_map))):
            t = self.timestep_map[i]
            pmv = self.p_mean_variance(model(x, t, None), x, i, variance_type, clip)
            noise = rng.standard_normal(x.shape) if i > 0 else np.zeros(x.shape)
            if s is not None:
                pmv["mean"] = self.condition_mean(pmv, x, i, s)
            x = pmv["mean"] + float(i > 0) * np.exp(0.5 * pmv["log_variance"]) * noise
        return x

    def ddim_sample_loop(self, model, x, clip=None, s=None, eta=0.0, seed=SEED):
        rng = np.random.default_rng(seed)
        for i in reversed(range(len(self.timestep_map))):
            t = self.timestep_map[i]
            out = self.p_mean_variance(model(x, t, None), x, i, "fixed_small", clip)
            if s is not None:
                out = self.condition_score(out, x, i, s)
            eps = self.predict_eps_from_xstart(x, i, out["pred_xstart"])
            ab, ab_prev = self.alphas_cumprod[i], self.alphas_cumprod_prev[i]
            sigma = eta * np.sqrt((1 - ab_prev) / (1 - ab)) * np.sqrt(1 - ab / ab_prev)
            noise = rng.standard_normal(x.shape) if (i > 0 and eta > 0) else np.zeros(x.shape)
            mean_pred = out["pred_xstart"] * np.sqrt(ab_prev) + np.sqrt(
                1 - ab_prev - sigma**2) * eps
            x = mean_pred + float(i > 0) * sigma * noise
        return x

    def ddim_reverse_sample(self, model, x, i, clip):
        out = self.p_mean_variance(model(x, self.timestep_map[i], None), x, i, "fixed_small",
                                   clip)
        eps = (self.sqrt_recip_alphas_cumprod[i] * x - out["pred_xstart"]) / (
            self.sqrt_recipm1_alphas_cumprod[i])
        ab_next = self.alphas_cumprod_next[i]
        return out["pred_xstart"] * np.sqrt(ab_next) + np.sqrt(1 - ab_next) * eps


GD = {last: GuidedDiffusionRef(TS, last) for last in ("previous_beta_tilde", "floor")}
GD_TRAIL = {last: GuidedDiffusionRef(TS_TRAIL, last) for last in ("previous_beta_tilde", "floor")}


def test_reference_tables_match_the_direct_alpha_bar():
    """The respaced cumprod reproduces the direct ᾱ to ~N·u (the premise of RTOL)."""
    ac = GD["floor"].alphas_cumprod
    direct = AB[sorted(TS)]
    assert np.max(np.abs(ac / direct - 1)) < 10 * N * 2.0**-53


# ----- single steps: ddpm_step / ddpm_mean_variance ---------------------------------------

PAIRS = [(875, 750), (250, 125), (125, 0), (0, None)]   # (t, t_prev); None: to ᾱ = 1


def _levels(t, t_prev):
    return float(AB[t]), 1.0 if t_prev is None else float(AB[t_prev])


def step_ref(x, eps, v, ab_t, ab_prev, variance_type, zero_beta_tilde, clip):
    """One DDPM step's (mean, Σ) from the formulas, guided-diffusion's algebra."""
    beta = 1 - ab_t / ab_prev                                   # respaced β'
    beta_tilde = beta * (1 - ab_prev) / (1 - ab_t)
    x0 = process_ref(np.sqrt(1 / ab_t) * x - np.sqrt(1 / ab_t - 1) * eps, clip)
    mean = (beta * np.sqrt(ab_prev) / (1 - ab_t) * x0
            + (1 - ab_prev) * np.sqrt(1 - beta) / (1 - ab_t) * x)
    at_one = ab_prev == 1.0
    if variance_type == "fixed_small":
        var = np.full_like(x, beta_tilde)
    elif variance_type == "fixed_large":
        var = np.full_like(x, zero_beta_tilde if (at_one and zero_beta_tilde) else beta)
    elif variance_type == "learned":
        var = np.exp(v)
    else:
        bt = (zero_beta_tilde or FLOOR) if at_one else beta_tilde
        frac = (v + 1) / 2
        var = np.exp(frac * np.log(beta) + (1 - frac) * np.log(bt))
    return mean, var


@pytest.mark.parametrize("variance_type,zero_beta_tilde", [  # zero_beta_tilde: where it applies
    ("fixed_small", None), ("fixed_large", None), ("fixed_large", 3e-5), ("learned", None),
    ("learned_range", None), ("learned_range", 3e-5)])
@pytest.mark.parametrize("t,t_prev", PAIRS, ids=[f"{a}-to-{b}" for a, b in PAIRS])
@pytest.mark.parametrize("clip", [None, 1.0], ids=["noclip", "clip1"])
def test_ddpm_step_every_variance_type(variance_type, t, t_prev, clip, zero_beta_tilde):
    rng = np.random.default_rng(t)
    x, z = rng.standard_normal(SHAPE), rng.standard_normal(SHAPE)
    eps = eps_of(x, t)
    v = VAR_OF[variance_type](x, t) if variance_type in VAR_OF else None
    ab_t, ab_prev = _levels(t, t_prev)
    kw = dict(variance_type=variance_type, var_values=v, zero_beta_tilde=zero_beta_tilde,
              clip_x0=clip)
    mean_ref, var_ref = step_ref(x, eps, v, ab_t, ab_prev, variance_type, zero_beta_tilde, clip)
    mean, var = rd.ddpm_mean_variance(x, eps, ab_t, ab_prev, **kw)
    close(mean, mean_ref)
    if variance_type == "fixed_small" and t_prev is None:
        assert np.all(np.asarray(var) == 0)     # β̃ = 0 at the step to ᾱ = 1, not floored
    else:
        close_rel(var, var_ref)
    close(rd.ddpm_step(x, eps, ab_t, ab_prev, z, **kw), mean_ref + np.sqrt(var_ref) * z)


def test_zero_beta_tilde_changes_only_the_step_to_one():
    x = np.random.default_rng(3).standard_normal(SHAPE)
    eps, v = eps_of(x, 250), range_of(x, 250)
    for vt, vv in (("fixed_large", None), ("learned_range", v)):
        a = rd.ddpm_mean_variance(x, eps, AB[250], AB[125], variance_type=vt, var_values=vv)
        b = rd.ddpm_mean_variance(x, eps, AB[250], AB[125], variance_type=vt, var_values=vv,
                                  zero_beta_tilde=3e-5)
        np.testing.assert_array_equal(a[1], b[1])


# ----- the DDPM loop: every variance type, with and without classifier guidance ----------

def _ddpm(variance_type, last="floor", s=None, clip=None, timesteps=TS):
    return rd.sample(make_model(variance_type), x_T(), SCHED, sampler="ddpm", timesteps=timesteps,
                     variance_type=variance_type, last_step_variance=last, clip_x0=clip,
                     guidance=None if s is None else cg(s), generator=SEED)


@pytest.mark.parametrize("variance_type", rd.VARIANCE_TYPES)
@pytest.mark.parametrize("s", [None, 4.0])
@pytest.mark.parametrize("clip", [None, 1.0])
@pytest.mark.parametrize("last", ["floor", "previous_beta_tilde"])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddpm_loop_against_guided_diffusion(variance_type, s, clip, last, spacing):
    # fixed_small and learned have no β̃ = 0 to replace: both options are guided-diffusion's
    ts, gd = (TS, GD) if spacing == "leading" else (TS_TRAIL, GD_TRAIL)
    ref = gd[last].p_sample_loop(make_model(variance_type), x_T(), variance_type, clip, s)
    close(_ddpm(variance_type, last, s, clip, ts), ref)


@pytest.mark.parametrize("variance_type", ["fixed_large", "learned_range"])
def test_last_step_classifier_shift_differs_exactly_as_derived(variance_type):
    """Only the last step differs between the two last_step_variance options, by s·ΔΣ·g.

    Trailing timesteps (last t = 124), so that β̃ of the step before the last (249 → 124)
    and β'_124 = 1 − ᾱ_124 differ visibly (with a last t = 0 both are ≈ β_0)."""
    s, model = 4.0, make_model(variance_type)
    runs = {}
    for last in ("floor", "previous_beta_tilde"):
        runs[last] = rd.sample(model, x_T(), SCHED, sampler="ddpm", timesteps=TS_TRAIL,
                               variance_type=variance_type, last_step_variance=last,
                               guidance=cg(s), generator=SEED, return_trajectory=True)[1]
    a, b = runs["floor"], runs["previous_beta_tilde"]
    for xa, xb in zip(a[:-1], b[:-1]):
        np.testing.assert_array_equal(xa, xb)
    x1 = a[-2]                                   # the input of the last step, t = 124
    beta_0 = 1 - AB[124]                        # β' of the last step, from ᾱ_124 to 1
    ab1, ab0 = AB[249], AB[124]
    beta_tilde_1 = (1 - ab0) / (1 - ab1) * (1 - ab1 / ab0)  # β̃ of the step before the last
    if variance_type == "fixed_large":
        d_sigma = beta_tilde_1 - beta_0
    else:
        frac = (range_of(x1, 124) + 1) / 2
        d_sigma = (np.exp(frac * np.log(beta_0) + (1 - frac) * np.log(beta_tilde_1))
                   - np.exp(frac * np.log(beta_0) + (1 - frac) * np.log(FLOOR)))
    expected = s * d_sigma * grad_of(x1, 124)
    assert np.max(np.abs(expected)) > 1e-2      # the difference is visible
    close(b[-1] - a[-1], expected)


@pytest.mark.parametrize("variance_type", ["fixed_small", "learned"])
def test_last_step_variance_is_a_no_op_without_beta_tilde(variance_type):
    """fixed_small (Σ = β̃ = 0 at the last step) and learned (Σ = exp v) never use β̃ = 0."""
    np.testing.assert_array_equal(_ddpm(variance_type, "floor", 4.0, None, TS_TRAIL),
                                  _ddpm(variance_type, "previous_beta_tilde", 4.0, None, TS_TRAIL))


def test_learned_variance_under_cfg_comes_from_the_conditional_branch():
    """ε̃ = ε_u + s·(ε_c − ε_u) and Σ from the conditional branch (the unconditional at s = 0)."""
    def model(x, t, c):
        k = 1.0 if c == "c" else -0.5
        return np.concatenate([eps_of(x + k, t), range_of(x * k, t)], axis=1)

    for scale, var_branch in ((3.0, "c"), (0.0, "u"), (1.0, "c")):
        def ref_model(x, t, c, scale=scale, var_branch=var_branch):
            C = x.shape[1]
            out_c, out_u = model(x, t, "c"), model(x, t, "u")
            eps = out_u[:, :C] + scale * (out_c[:, :C] - out_u[:, :C])
            var = (out_c if var_branch == "c" else out_u)[:, C:]
            return np.concatenate([eps, var], axis=1)

        ref = GD["floor"].p_sample_loop(ref_model, x_T(), "learned_range", 1.0)
        got = rd.sample(model, x_T(), SCHED, sampler="ddpm", timesteps=TS,
                        variance_type="learned_range", clip_x0=1.0, generator=SEED,
                        guidance=Guidance(cond="c", uncond="u", scale=scale))
        close(got, ref)


# ----- the DDIM loop: both classifier orders ---------------------------------------------

def ddim_loop_ref(model, x, clip=None, rederive_eps=True, s=None, eta=0.0, seed=SEED,
                  final=1.0):
    """refdiff's shift-then-clip DDIM (and diffusers' ε kept after clipping), written out:
    ε̂ ← ε̂ − s·√(1−ᾱ_t)·g; x̂_0 = process((x_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t); ε̂ re-derived if asked;
    x_prev = √ᾱ_prev·x̂_0 + √(1−ᾱ_prev−σ²)·ε̂ + σ·z."""
    rng = np.random.default_rng(seed)
    for k, t in enumerate(TS):
        ab = AB[t]
        ab_prev = AB[TS[k + 1]] if k + 1 < len(TS) else final
        eps = model(x, t, None)
        if s is not None:
            eps = eps - s * np.sqrt(1 - ab) * grad_of(x, t)
        x0 = (x - np.sqrt(1 - ab) * eps) / np.sqrt(ab)
        if clip is not None:
            x0 = process_ref(x0, clip)
            if rederive_eps:
                eps = (x - np.sqrt(ab) * x0) / np.sqrt(1 - ab)
        sigma = eta * np.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
        x = np.sqrt(ab_prev) * x0 + np.sqrt(1 - ab_prev - sigma**2) * eps
        if eta > 0 and k + 1 < len(TS):
            x = x + sigma * rng.standard_normal(x.shape)
    return x


def _ddim(order="shift_then_clip", clip=None, rederive_eps=True, s=4.0, eta=0.0):
    return rd.sample(make_model(None), x_T(), SCHED, sampler="ddim", timesteps=TS, eta=eta,
                     clip_x0=clip, rederive_eps=rederive_eps, classifier_order=order,
                     guidance=None if s is None else cg(s), generator=SEED)


@pytest.mark.parametrize("eta", [0.0, 0.6])
def test_ddim_clip_then_shift_is_guided_diffusion_condition_score(eta):
    ref = GD["floor"].ddim_sample_loop(make_model(None), x_T(), clip=1.0, s=4.0, eta=eta)
    close(_ddim("clip_then_shift", 1.0, eta=eta), ref)


@pytest.mark.parametrize("rederive_eps", [True, False])
@pytest.mark.parametrize("eta", [0.0, 0.6])
def test_ddim_shift_then_clip(rederive_eps, eta):
    ref = ddim_loop_ref(make_model(None), x_T(), clip=1.0, rederive_eps=rederive_eps, s=4.0,
                        eta=eta)
    close(_ddim("shift_then_clip", 1.0, rederive_eps, eta=eta), ref)


def test_classifier_orders_differ_with_clipping_and_agree_without():
    a, b = _ddim("shift_then_clip", 1.0), _ddim("clip_then_shift", 1.0)
    assert np.max(np.abs(a - b)) > 1e-3         # the order matters once x̂_0 is clipped
    ref = GD["floor"].ddim_sample_loop(make_model(None), x_T(), clip=None, s=4.0)
    close(_ddim("shift_then_clip", None), ref)
    close(_ddim("clip_then_shift", None), ref)


def test_ddim_without_guidance_is_guided_diffusion_ddim_sample():
    model = make_model(None)
    close(_ddim(clip=1.0, s=None), GD["floor"].ddim_sample_loop(model, x_T(), clip=1.0))
    close(_ddim(clip=None, s=None), GD["floor"].ddim_sample_loop(model, x_T()))


# ----- dynamic thresholding (Imagen §2.3) -------------------------------------------------

RATIO, MAX_VALUE = 0.8, 2.5


def _threshold():
    return rd.DynamicThreshold(RATIO, MAX_VALUE)


def _x0_spread():
    """x̂_0 whose per-sample quantile s lands below 1, inside (1, max) and above max."""
    rng = np.random.default_rng(7)
    return rng.standard_normal((3, 3, 5)) * np.array([0.4, 1.6, 9.0])[:, None, None]


def test_threshold_reference_hits_every_regime():
    q = np.quantile(np.abs(_x0_spread().reshape(3, -1)), RATIO, axis=1)
    assert q[0] < 1 < q[1] < MAX_VALUE < q[2]


@pytest.mark.parametrize("rederive_eps", [True, False])
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_step_dynamic_threshold(rederive_eps, eta):
    rng = np.random.default_rng(8)
    x0, z = _x0_spread(), rng.standard_normal((3, 3, 5))
    ab_t, ab_prev = float(AB[500]), float(AB[375])
    eps = rng.standard_normal(x0.shape)
    x = np.sqrt(ab_t) * x0 + np.sqrt(1 - ab_t) * eps          # so that x̂_0 = x0
    x0_th = threshold_ref(x0, RATIO, MAX_VALUE)
    eps_used = (x - np.sqrt(ab_t) * x0_th) / np.sqrt(1 - ab_t) if rederive_eps else eps
    sigma = eta * np.sqrt((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev))
    ref = np.sqrt(ab_prev) * x0_th + np.sqrt(1 - ab_prev - sigma**2) * eps_used + sigma * z
    got = rd.ddim_step(x, eps, ab_t, ab_prev, eta=eta, noise=z if eta > 0 else None,
                       clip_x0=_threshold(), rederive_eps=rederive_eps)
    close(got, ref)


@pytest.mark.parametrize("variance_type", ["fixed_small", "learned_range"])
def test_ddpm_step_dynamic_threshold(variance_type):
    rng = np.random.default_rng(9)
    x0, z = _x0_spread(), rng.standard_normal((3, 3, 5))
    ab_t, ab_prev = float(AB[500]), float(AB[375])
    eps = rng.standard_normal(x0.shape)
    x = np.sqrt(ab_t) * x0 + np.sqrt(1 - ab_t) * eps
    v = range_of(x, 500) if variance_type == "learned_range" else None
    th = ("threshold", RATIO, MAX_VALUE)
    mean_ref, var_ref = step_ref(x, eps, v, ab_t, ab_prev, variance_type, None, th)
    kw = dict(variance_type=variance_type, var_values=v, clip_x0=_threshold())
    mean, var = rd.ddpm_mean_variance(x, eps, ab_t, ab_prev, **kw)
    close(mean, mean_ref)
    close_rel(var, var_ref)
    close(rd.ddpm_step(x, eps, ab_t, ab_prev, z, **kw), mean_ref + np.sqrt(var_ref) * z)


@pytest.mark.parametrize("rederive_eps", [True, False])
def test_ddim_loop_dynamic_threshold(rederive_eps):
    th = ("threshold", RATIO, MAX_VALUE)
    for s in (None, 4.0):
        ref = ddim_loop_ref(make_model(None), x_T(), clip=th, rederive_eps=rederive_eps, s=s)
        close(_ddim(clip=_threshold(), rederive_eps=rederive_eps, s=s), ref)
    if rederive_eps:  # guided-diffusion's ddim_sample with a thresholding process_xstart
        ref = GD["floor"].ddim_sample_loop(make_model(None), x_T(), clip=th, s=4.0)
        close(_ddim("clip_then_shift", _threshold(), s=4.0), ref)


@pytest.mark.parametrize("variance_type", ["fixed_large", "learned_range"])
def test_ddpm_loop_dynamic_threshold(variance_type):
    th = ("threshold", RATIO, MAX_VALUE)
    for last in ("floor", "previous_beta_tilde"):
        ref = GD[last].p_sample_loop(make_model(variance_type), x_T(), variance_type, th, 4.0)
        close(_ddpm(variance_type, last, 4.0, _threshold()), ref)


# ----- DDIM inversion: both conventions ---------------------------------------------------

def x0_data():
    return np.clip(np.random.default_rng(5).standard_normal(SHAPE) * 0.9, -1.4, 1.4)


def invert_gd_ref(model, x, clip, gd):
    """guided-diffusion's ddim_reverse_sample loop (ε at the source level, labelled with the
    source timestep, ε re-derived from the clipped x̂_0), after refdiff's first step from the
    clean data: x̂_0 = process(x), ε̂ = model(x, t_0) (it cannot be re-derived at ᾱ = 1)."""
    ab0 = gd.alphas_cumprod[0]
    eps = model(x, gd.timestep_map[0], None)
    x = np.sqrt(ab0) * process_ref(x, clip) + np.sqrt(1 - ab0) * eps
    for i in range(len(gd.timestep_map) - 1):
        x = gd.ddim_reverse_sample(model, x, i, clip)
    return x


def invert_diffusers_ref(model, x, clip, ts):
    """diffusers' DDIMInverseScheduler loop: the model at the destination timestep, its output
    used as ε, x̂_0 clipped, ε not re-derived; from ᾱ = 1 (set_alpha_to_one)."""
    ts = sorted(ts)
    ab_src = 1.0
    for t in ts:
        eps = model(x, t, None)
        x0 = (x - (1 - ab_src) ** 0.5 * eps) / ab_src ** 0.5
        x0 = process_ref(x0, clip)
        x = AB[t] ** 0.5 * x0 + (1 - AB[t]) ** 0.5 * eps
        ab_src = AB[t]
    return x


# Inversion with ε re-derived from a clipped x̂_0 is the one ill-conditioned comparison: at
# the least noisy level, ε = (x_t − √ᾱ·x̂_0)/√(1−ᾱ) (or guided-diffusion's form) divides a
# difference of O(1) terms by √(1 − ᾱ_{t_0}) (0.01 at t_0 = 0), and the inversion then expands
# errors by up to √(ᾱ_{t_0}/ᾱ_{t_max}) (≈ 48 from t = 0 to 875). Bound: 16·u·|x| (|x| ≤ 1.5)
# times both factors, never below RTOL: 1.3e-11 for the leading list (measured 2.6e-13), RTOL
# for the trailing one (t_0 = 124: factors 2.5 and 145; measured 3e-16).
def invert_rtol(ts):
    t0, tmax = min(ts), max(ts)
    return max(RTOL, 16 * 2.0**-53 * 1.5 / np.sqrt(1 - AB[t0]) * np.sqrt(AB[t0] / AB[tmax]))


@pytest.mark.parametrize("clip", [None, 1.0])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_invert_source_is_guided_diffusion(clip, spacing):
    model = make_model(None)
    ts, gd = (TS, GD["floor"]) if spacing == "leading" else (TS_TRAIL, GD_TRAIL["floor"])
    got = rd.ddim_invert(model, x0_data(), SCHED, timesteps=ts, clip_x0=clip,
                         model_timestep="source")
    close(got, invert_gd_ref(model, x0_data(), clip, gd), invert_rtol(ts))


@pytest.mark.parametrize("clip", [None, 1.0])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_invert_destination_is_diffusers(clip, spacing):
    model = make_model(None)
    ts = TS if spacing == "leading" else TS_TRAIL
    got = rd.ddim_invert(model, x0_data(), SCHED, timesteps=ts, clip_x0=clip,
                         rederive_eps=False, model_timestep="destination")
    close(got, invert_diffusers_ref(model, x0_data(), clip, ts))


def test_inversion_conventions_differ():
    model = make_model(None)
    a = rd.ddim_invert(model, x0_data(), SCHED, timesteps=TS, model_timestep="source")
    b = rd.ddim_invert(model, x0_data(), SCHED, timesteps=TS, model_timestep="destination")
    assert np.max(np.abs(a - b)) > 1e-3


@pytest.mark.parametrize("ab_t,ab_next", [(1.0, AB[0]), (AB[125], AB[250]), (AB[750], AB[875])],
                         ids=["clean-to-0", "125-to-250", "750-to-875"])
@pytest.mark.parametrize("clip", [None, 1.0], ids=["noclip", "clip1"])
@pytest.mark.parametrize("rederive_eps", [True, False])
def test_ddim_inversion_step(ab_t, ab_next, clip, rederive_eps):
    rng = np.random.default_rng(11)
    x, eps = rng.standard_normal(SHAPE) * 1.5, rng.standard_normal(SHAPE)
    ab_t, ab_next = float(ab_t), float(ab_next)
    x0 = process_ref(np.sqrt(1 / ab_t) * x - np.sqrt(1 / ab_t - 1) * eps, clip)
    eps_used = eps
    if clip is not None and rederive_eps and ab_t < 1:   # ddim_reverse_sample's ε
        eps_used = (np.sqrt(1 / ab_t) * x - x0) / np.sqrt(1 / ab_t - 1)
    ref = x0 * np.sqrt(ab_next) + np.sqrt(1 - ab_next) * eps_used
    got = rd.ddim_inversion_step(x, eps, ab_t, ab_next, clip_x0=clip, rederive_eps=rederive_eps)
    close(got, ref)


# ----- errors -----------------------------------------------------------------------------

def test_errors_variance_options():
    x = np.ones(SHAPE)
    eps, ab_t, ab_prev = 0.1 * x, float(AB[250]), float(AB[125])
    for vt in ("learned", "learned_range"):
        with pytest.raises(ValueError, match="var_values"):
            rd.ddpm_mean_variance(x, eps, ab_t, ab_prev, variance_type=vt)
        with pytest.raises(ValueError, match="var_values"):
            rd.ddpm_step(x, eps, ab_t, ab_prev, x, variance_type=vt)
    for vt in ("fixed_small", "fixed_large"):
        with pytest.raises(ValueError, match="var_values"):
            rd.ddpm_mean_variance(x, eps, ab_t, ab_prev, variance_type=vt, var_values=x)
    for vt in ("fixed_small", "learned"):
        vv = x if vt == "learned" else None
        with pytest.raises(ValueError, match="zero_beta_tilde"):
            rd.ddpm_mean_variance(x, eps, ab_t, 1.0, variance_type=vt, var_values=vv,
                                  zero_beta_tilde=1e-4)
    with pytest.raises(ValueError, match="var_values"):         # wrong shape of the channel
        rd.ddpm_mean_variance(x, eps, ab_t, ab_prev, variance_type="learned",
                              var_values=np.ones((2, 3)))


def _never(*args):
    raise AssertionError("the model must not be evaluated before the arguments are checked")


@pytest.mark.parametrize("kw", [
    dict(sampler="ddpm", timesteps=[0], variance_type="fixed_large",
         last_step_variance="previous_beta_tilde"),             # one step: no step before
    dict(sampler="ddim", timesteps=TS, last_step_variance="previous_beta_tilde"),
    dict(sampler="ddpm", timesteps=TS, variance_type="fixed_large",
         last_step_variance="previous_beta_tilde", final_alpha_bar="alpha_bar_0"),
    dict(sampler="ddpm", timesteps=TS, classifier_order="clip_then_shift"),
    dict(sampler="ddim", timesteps=TS, classifier_order="clip_then_shift", clip_x0=1.0,
         rederive_eps=False),
    dict(sampler="ddim", timesteps=TS, variance_type="learned_range"),
    dict(sampler="ddpm", timesteps=TS, last_step_variance="bogus"),
    dict(sampler="ddim", timesteps=TS, classifier_order="bogus"),
], ids=["previous_beta_tilde-1-step", "previous_beta_tilde-ddim",
        "previous_beta_tilde-alpha_bar_0",
        "classifier_order-ddpm", "clip_then_shift-no-rederive", "variance_type-ddim",
        "bad-last_step_variance", "bad-classifier_order"])
def test_errors_sample_options(kw):
    with pytest.raises(ValueError):
        rd.sample(_never, x_T(), SCHED, guidance=cg(1.0), **kw)


@pytest.mark.parametrize("variance_type", ["learned", "learned_range"])
def test_errors_learned_model_output_shape(variance_type):
    with pytest.raises(ValueError, match="variance channel"):
        rd.sample(make_model(None), x_T(), SCHED, sampler="ddpm", timesteps=TS,
                  variance_type=variance_type)
    wrong = lambda x, t, c: np.concatenate([eps_of(x, t), eps_of(x, t)], axis=2)  # noqa: E731
    with pytest.raises(ValueError, match="variance channel"):
        rd.sample(wrong, x_T(), SCHED, sampler="ddpm", timesteps=TS,
                  variance_type=variance_type)


def test_errors_inversion_options():
    with pytest.raises(ValueError, match="model_timestep"):
        rd.ddim_invert(_never, x0_data(), SCHED, timesteps=TS, model_timestep="bogus")


# ----- the presets reproduce guided-diffusion ----------------------------------------------

def gd_ddim_timesteps(n):
    """guided-diffusion's "ddimN": the first stride i = 1, 2, … whose range(0, T, i) has n
    elements (searched here; refdiff computes it in closed form)."""
    for i in range(1, T):
        if len(range(0, T, i)) == n:
            return list(range(0, T, i))
    raise AssertionError(n)


def gd_section_timesteps(n):
    """One section of guided-diffusion's space_timesteps: positions k·(T−1)/(n−1) accumulated
    by repeated float addition, each rounded half to even (Python's round)."""
    stride, cur, out = (T - 1) / (n - 1), 0.0, []
    for _ in range(n):
        out.append(round(cur))
        cur += stride
    return out


@pytest.mark.parametrize("n", [10, 25, 50])
@pytest.mark.parametrize("s", [None, 4.0])
def test_guided_diffusion_preset_is_its_ddim_sample_loop(n, s):
    """PRESETS["guided_diffusion"]: ddimN respacing, x̂_0 clipped to [−1, 1], ε̂ re-derived,
    classifier guidance in condition_score's order, last step to ᾱ = 1."""
    gd = GuidedDiffusionRef(gd_ddim_timesteps(n))
    model = make_model(None)
    want = gd.ddim_sample_loop(model, x_T(), clip=1.0, s=s)
    got = rd.sample(model, x_T(), SCHED, num_inference_steps=n,
                    guidance=None if s is None else cg(s), **rd.PRESETS["guided_diffusion"])
    close(got, want)


@pytest.mark.parametrize("n", [10, 25])
@pytest.mark.parametrize("variance_type", rd.VARIANCE_TYPES)
@pytest.mark.parametrize("s", [None, 4.0])
def test_guided_diffusion_ddpm_preset_is_its_p_sample_loop(n, variance_type, s):
    """PRESETS["guided_diffusion_ddpm"]: timestep_respacing="n" (one section), x̂_0 clipped,
    the index-0 variance posterior_variance[1] (seen through condition_mean's Σ·g)."""
    gd = GuidedDiffusionRef(gd_section_timesteps(n))
    model = make_model(variance_type)
    want = gd.p_sample_loop(model, x_T(), variance_type, clip=1.0, s=s)
    got = rd.sample(model, x_T(), SCHED, num_inference_steps=n, variance_type=variance_type,
                    guidance=None if s is None else cg(s), generator=SEED,
                    **rd.PRESETS["guided_diffusion_ddpm"])
    close(got, want)


def test_guided_diffusion_inversion_preset_is_its_reverse_loop():
    ts = gd_ddim_timesteps(10)
    model, gd = make_model(None), GuidedDiffusionRef(ts)
    got = rd.ddim_invert(model, x0_data(), SCHED, num_inference_steps=10,
                         **rd.INVERSION_PRESETS["guided_diffusion"])
    close(got, invert_gd_ref(model, x0_data(), 1.0, gd), invert_rtol(ts))
