"""Tests that fail on planted slips: the sampling loop, the steps and the schedules against
closed forms written here, from the papers, in NumPy float64.

Nothing here builds an expectation with refdiff's step functions: each reference is the
paper's formula (the equation is named on its line), so a slip in refdiff cannot cancel out.
Each section names the slips that were planted in a copy of the package to see its tests
fail (the issue "tests that catch slips"); every planted slip missed its bound by > 10⁹.

Tolerances are first-order error bounds from the kit (:mod:`refdiff.testing.bounds`): a
step's is ``bounds.ddim_step``/``bounds.ddpm_step``; a loop's is the kit's recursion
e_{i+1} = |∂G_i/∂x|·e_i + E_i + γ_k·M_i (as in ``bounds.sampling_loop``), written out here
for the guided steps with the kit's ``Precision``/``Array``/``Level`` arithmetic and
checked at every state of the trajectory; schedules: γ_k·Σ|terms| per formula, k counted on
the line. Measured margins (bound / max error, 2026-12-01, this file's CI run, read from
``RATIOS``): guided loops ≥ 48×, η loops ≥ 180×, last steps ≥ 110×, ddim_step ≥ 28×,
schedules 3.7× (linear) to 8.4× (ZSNR), cosine bitwise equal.

References: DDPM arXiv:2006.11239v2 (Eq. 7, Eq. 11, Algorithm 2); DDIM arXiv:2010.02502v4
(Eq. 12, Eq. 16); CG arXiv:2105.05233v4 (Algorithms 1–2); IDDPM arXiv:2102.09672v1 (Eq. 17);
ZSNR arXiv:2305.08891v4 (Algorithm 1).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import refdiff as rd
from refdiff.testing import bounds as B

T = 1000
U64 = B.UNIT_ROUNDOFF["float64"]


def gamma(k: int, u: float = U64) -> float:
    """γ_k = k·u/(1 − k·u) (Higham §3.1)."""
    return k * u / (1 - k * u)


# ----- references written from the papers (float64, NumPy) --------------------------------

def linear_alpha_bar(T=T, b0=1e-4, b1=0.02):
    """ᾱ_t = ∏_{s≤t}(1 − β_s), β_s = b0 + (b1 − b0)·s/(T − 1) (DDPM §4)."""
    return np.cumprod(1 - (b0 + (b1 - b0) * (np.arange(T) / (T - 1))))


AB = linear_alpha_bar()
SCH = rd.linear_schedule(T)


def eps_model(x, t, c):
    """A fixed linear ε-model, elementwise: ε̂ = A_t·x + b."""
    return (0.5 + 0.4 * t / T) * x + np.array([0.1, -0.2])


M_CLS = np.array([1.0, -0.5])


def log_prob(x, t):
    """A Gaussian classifier log p(y | x_t) = −κ_t·‖x − m‖²/2 (up to a constant)."""
    return -0.5 * (1 + t / T) * np.sum((x - M_CLS) ** 2, axis=-1)


def grad_log_prob(x, t):
    """∇_{x_t} log p(y | x_t) = −κ_t·(x − m)."""
    return -(1 + t / T) * (x - M_CLS)


def x0_from_eps(x, eps, ab_t):
    """DDPM Eq. 15 / DDIM Eq. 12's "predicted x_0": (x_t − √(1−ᾱ_t)·ε)/√ᾱ_t."""
    return (x - np.sqrt(1 - ab_t) * eps) / np.sqrt(ab_t)


def ref_ddpm(x, eps, ab_t, ab_prev, z, *, variance_type="fixed_small", clip=None, s=0.0, g=None):
    """DDPM on the respaced chain, α = ᾱ_t/ᾱ_prev, β = 1 − α; CG Algorithm 1 if g is given."""
    alpha = ab_t / ab_prev
    beta = 1 - alpha
    if clip is None:                                   # DDPM Eq. 11 (Algorithm 2, line 4)
        mean = (x - beta / np.sqrt(1 - ab_t) * eps) / np.sqrt(alpha)
    else:                                              # DDPM Eq. 7 at the clipped x̂_0
        x0 = np.clip(x0_from_eps(x, eps, ab_t), -clip, clip)
        mean = (np.sqrt(ab_prev) * beta * x0 + np.sqrt(alpha) * (1 - ab_prev) * x) / (1 - ab_t)
    var = beta * (1 - ab_prev) / (1 - ab_t) if variance_type == "fixed_small" else beta  # β̃, β
    if g is not None:
        mean = mean + s * var * g                      # CG Algorithm 1: μ + s·Σ·∇ log p
    return mean + np.sqrt(var) * z


def ddim_sigma(ab_t, ab_prev, eta):
    """DDIM Eq. 16: σ = η·√((1 − ᾱ_prev)/(1 − ᾱ_t))·√(1 − ᾱ_t/ᾱ_prev)."""
    return eta * math.sqrt((1 - ab_prev) / (1 - ab_t)) * math.sqrt(1 - ab_t / ab_prev)


def ref_ddim(x, eps, ab_t, ab_prev, eta, z, *, clip=None, rederive=True, s=0.0, g=None):
    """DDIM Eq. 12 with σ of Eq. 16; CG Algorithm 2 (ε̂ − √(1−ᾱ_t)·s·g) first if g is given."""
    if g is not None:
        eps = eps - np.sqrt(1 - ab_t) * s * g          # CG Algorithm 2
    x0 = x0_from_eps(x, eps, ab_t)
    if clip is not None:
        x0 = np.clip(x0, -clip, clip)
        if rederive:                                   # ε from x_t and the clipped x̂_0
            eps = (x - np.sqrt(ab_t) * x0) / np.sqrt(1 - ab_t)
    sigma = ddim_sigma(ab_t, ab_prev, eta)
    direction = math.sqrt(max(1 - ab_prev - sigma**2, 0.0))
    return np.sqrt(ab_prev) * x0 + direction * eps + sigma * z  # DDIM Eq. 12


def ref_step(sampler, x, t, ab_t, ab_prev, z, kw, s=0.0):
    """One reference step of the toy model, guided when s ≠ 0."""
    g = grad_log_prob(x, t) if s != 0 else None
    eps = eps_model(x, t, None)
    if sampler == "ddpm":
        return ref_ddpm(x, eps, ab_t, ab_prev, z, clip=kw.get("clip_x0"), s=s, g=g,
                        variance_type=kw.get("variance_type", "fixed_small"))
    return ref_ddim(x, eps, ab_t, ab_prev, kw.get("eta", 0.0), z, clip=kw.get("clip_x0"),
                    rederive=kw.get("rederive_eps", True), s=s, g=g)


def ref_levels(ts, final=1.0):
    """(t, ᾱ_t, ᾱ_prev) per step: ᾱ_prev of the next listed t, ``final`` after the last."""
    abs_ = [AB[t] for t in ts] + [final]
    return [(t, abs_[i], abs_[i + 1]) for i, t in enumerate(ts)]


def prev_index(ts, i, final=1.0):
    """The table index of ᾱ_prev of step i (None: the final ᾱ = 1, held exactly)."""
    return ts[i + 1] if i + 1 < len(ts) else (None if final == 1.0 else 0)


def ref_noises(seed, n_steps, shape, noisy):
    """The loop's noises: one standard normal of x's shape per step but the last, drawn in
    order from numpy.random.default_rng(seed) (refdiff.backends.numpy_backend: float64
    ``standard_normal(shape)``); zeros on the last step and for a deterministic sampler."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape) if noisy and i < n_steps - 1 else np.zeros(shape)
            for i in range(n_steps)]


def ref_loop(sampler, x_T, ts, seed, kw, s=0.0, final=1.0):
    """The whole reference loop: the trajectory [x_T, ..., x_0] and the noises used."""
    noisy = sampler == "ddpm" or kw.get("eta", 0.0) > 0
    zs = ref_noises(seed, len(ts), x_T.shape, noisy)
    traj = [x_T]
    for (t, ab_t, ab_prev), z in zip(ref_levels(ts, final), zs):
        traj.append(ref_step(sampler, traj[-1], t, ab_t, ab_prev, z, kw, s))
    return traj, zs


# ----- the error bound of a loop (the kit's recursion, for guided steps) -------------------

def _bound_step(p, sampler, x, t, ab_t, ab_prev, z, kw, s, t_prev):
    """E_i + γ_k·M_i of one step from an exact state x (the kit's Array/Level arithmetic);
    ``t_prev`` None: ᾱ_prev is the final 1, held exactly."""
    A_t, C_t = p.alpha_bar(ab_t, index=t)
    A_p, C_p = p.alpha_bar(ab_prev, t_prev is None, t_prev)
    state = p.array(x, 0 * x)
    e_v = eps_model(x, t, None)
    eps = p.array(e_v, B.model_error(None, x, e_v, t, p) + p.u * np.abs(e_v))
    g = p.array(grad_log_prob(x, t)) if s != 0 else None
    clip = kw.get("clip_x0")
    if sampler == "ddim":
        if g is not None:
            eps = eps - (p.scale(s) * C_t.sqrt()) * g                    # CG Algorithm 2
        x0 = (state - C_t.sqrt() * eps) / A_t.sqrt()
        if clip is not None:
            x0 = x0.clip(clip)
            if kw.get("rederive_eps", True):
                eps = (state - A_t.sqrt() * x0) / C_t.sqrt()
        eta = p.level(kw.get("eta", 0.0))
        r = eta * eta * (1.0 - A_t / A_p) / C_t                          # σ²/(1 − ᾱ_prev)
        out = A_p.sqrt() * x0 + (C_p * (1.0 - r)).sqrt() * eps           # DDIM Eq. 12
        return out + (r * C_p).sqrt() * p.array(z)                       # σ·z
    x0 = (state - C_t.sqrt() * eps) / A_t.sqrt()
    if clip is not None:
        x0 = x0.clip(clip)
    beta = 1.0 - A_t / A_p
    c0, ct = A_p.sqrt() * beta / C_t, (1.0 - beta).sqrt() * C_p / C_t    # DDPM Eq. 7
    var = C_p * beta / C_t if kw.get("variance_type", "fixed_small") == "fixed_small" else beta
    out = c0 * x0 + ct * state
    if g is not None:
        out = out + (p.scale(s) * var) * g                               # CG Algorithm 1
    return out + var.sqrt() * p.array(z)


def loop_bound(sampler, traj, zs, ts, kw, s=0.0, final=1.0, dtype="float64"):
    """Elementwise bounds on |refdiff − reference| at every state x_T, ..., x_0:
    e_{i+1} = |∂G_i/∂x|·e_i + E_i + γ_k·M_i (the kit's ``sampling_loop``), the Jacobian of
    the reference step by central differences (the toy model and the classifier are
    elementwise), times (S + u₆₄/u). x_T is given to both: its bound is 0."""
    p = B.Precision(dtype)
    err, out = 0 * traj[0], [0 * traj[0]]
    for i, ((t, ab_t, ab_prev), z) in enumerate(zip(ref_levels(ts, final), zs)):
        x = traj[i]
        jac = B.step_jacobian(lambda v: ref_step(sampler, v, t, ab_t, ab_prev, z, kw, s), x, True)
        own = _bound_step(p, sampler, x, t, ab_t, ab_prev, z, kw, s, prev_index(ts, i, final))
        err = jac * err + own.error()
        out.append(B.factor(p) * err)
    return out


def assert_trajectory(traj_rd, traj, state_bounds, what):
    """Every state of the run within its bound (a slip that x_0's clip hides still shows)."""
    assert len(traj_rd) == len(traj)
    return max(assert_within(a, e, b, f"{what}, state {i}")
               for i, (a, e, b) in enumerate(zip(traj_rd, traj, state_bounds)))


def assert_within(out, expected, bound, what):
    """|out − expected| ≤ bound elementwise; the message gives the ratio (the margin)."""
    err = np.abs(np.asarray(out) - expected)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = float(np.max(np.where(err == 0, 0.0, err / bound), initial=0.0))
    assert ratio <= 1.0, (f"{what}: max |refdiff - reference| = {float(err.max()):.3e}, "
                          f"bound {float(np.min(bound)):.3e}..{float(np.max(bound)):.3e}, "
                          f"ratio {ratio:.3g}")
    return ratio


RATIOS: dict[str, float] = {}  # test id -> max error/bound (the margin is its inverse)


# ----- 1. classifier guidance in the loop (CG Algorithms 1 and 2) --------------------------
# Caught: DDPM's μ + s·g (Σ dropped), every ddpm row; DDIM's ε̂ − s·g (√(1−ᾱ_t) dropped),
# every ddim row (a clipped x_0 can hide it: hence the whole trajectory is compared).

X_T = np.random.default_rng(0).standard_normal((4, 2)) * 1.5
CG_TS = [900, 700, 520, 333, 140, 21]
GUIDED = [("ddpm", {}), ("ddpm", {"clip_x0": 1.0}), ("ddpm", {"variance_type": "fixed_large"}),
          ("ddim", {}), ("ddim", {"clip_x0": 1.0}),
          ("ddim", {"clip_x0": 1.0, "rederive_eps": False}), ("ddim", {"eta": 0.5})]


def _guidance(s):
    return rd.Guidance(classifier=log_prob, grad_log_prob=grad_log_prob, classifier_scale=s)


def _sample(sampler, ts, seed, kw, s=0.0, **extra):
    return rd.sample(eps_model, X_T, SCH, sampler=sampler, timesteps=ts, guidance=_guidance(s),
                     generator=seed, return_trajectory=True, **kw, **extra)


@pytest.mark.parametrize("sampler,kw", GUIDED, ids=lambda v: str(v))
@pytest.mark.parametrize("ts", [CG_TS[-1:], CG_TS[-2:], CG_TS], ids=["1step", "2steps", "6steps"])
def test_classifier_guided_sampling_equals_the_paper(sampler, kw, ts):
    """CG in the loop: Algorithm 1 (DDPM, μ + s·Σ·g with Σ the step's variance) and
    Algorithm 2 (DDIM, ε̂ − √(1−ᾱ_t)·s·g, then the DDIM step), with and without clip_x0,
    the noise of each step reproduced from the seed (none on the last)."""
    s, seed = 3.0, 11
    _, traj_rd = _sample(sampler, ts, seed, kw, s)
    traj, zs = ref_loop(sampler, X_T, ts, seed, kw, s)
    if kw.get("clip_x0"):  # the clip must be active somewhere, or the row tests nothing
        shift = 0.0 if sampler == "ddpm" else s  # DDIM clips the x̂_0 of the shifted ε̂
        assert max(np.max(np.abs(x0_from_eps(
            x, eps_model(x, t, None) - np.sqrt(1 - a) * shift * grad_log_prob(x, t), a)))
            for x, (t, a, _) in zip(traj, ref_levels(ts))) > kw["clip_x0"]
    state_bounds = loop_bound(sampler, traj, zs, ts, kw, s)
    RATIOS[f"cg-{sampler}-{kw}-{len(ts)}"] = assert_trajectory(traj_rd, traj, state_bounds, "CG")
    # guidance moved the sample, so the row sees s dropped or misapplied; except DDPM's one
    # step to ᾱ = 1 with Σ = β̃ = 0, where Algorithm 1 leaves μ unchanged (and μ + s·g would not)
    moved = np.max(np.abs(ref_loop(sampler, X_T, ts, seed, kw, 0.0)[0][-1] - traj[-1]))
    inert = sampler == "ddpm" and len(ts) == 1 and "variance_type" not in kw
    assert (moved == 0) if inert else moved > 1e3 * np.max(state_bounds[-1])


# ----- 2. no noise on the last step, under every spacing -----------------------------------
# Caught: noise on the last step (fixed_large rows under every spacing; the others where the
# last t > 0); noise decided by "t > 0" (the trailing and explicit rows). Where the last t
# is 0 and the chain ends at ᾱ_0, DDPM's β̃ and DDIM's σ are 0: noise cannot show there, and
# the test asserts that instead.

SPACINGS = ["leading", "trailing", "linspace", "explicit"]
NOISY = [("ddpm", {"variance_type": "fixed_large"}, 1.0),
         ("ddpm", {}, "alpha_bar_0"),
         ("ddim", {"eta": 0.7}, "alpha_bar_0"),
         ("ddim", {"eta": 1.0, "clip_x0": 1.0}, "alpha_bar_0")]


def _timesteps(spacing):
    if spacing == "explicit":
        return [640, 321, 77, 5]
    return [int(t) for t in rd.inference_timesteps(T, 5, spacing)]


@pytest.mark.parametrize("sampler,kw,final", NOISY, ids=lambda v: str(v))
@pytest.mark.parametrize("spacing", SPACINGS)
def test_last_step_adds_no_noise(spacing, sampler, kw, final):
    """The last step's output is the noise-free step of its input, whatever the spacing
    (with trailing or explicit timesteps the last t is not 0, so "t > 0" would add noise)."""
    ts = _timesteps(spacing)
    extra = {"final_alpha_bar": "alpha_bar_0"} if final == "alpha_bar_0" else {}
    ab_final = AB[0] if final == "alpha_bar_0" else 1.0
    args = dict(sampler=sampler, generator=3, return_trajectory=True, **kw, **extra)
    if spacing == "explicit":
        args["timesteps"] = ts
    else:
        args.update(num_inference_steps=5, spacing=spacing)
    seen = []
    out, traj = rd.sample(eps_model, X_T, SCH, callback=lambda i, t, x, x0: seen.append(t), **args)
    assert seen == ts
    t, ab_t = ts[-1], AB[ts[-1]]
    x_in = traj[-2]
    z0 = np.zeros_like(x_in)
    expected = ref_step(sampler, x_in, t, ab_t, ab_final, z0, kw)
    if sampler == "ddim":
        bound = B.ddim_step(x_in, eps_model(x_in, t, None), None, ab_t, ab_final, "float64",
                            eta=kw["eta"], clip_x0=kw.get("clip_x0"), prev_exact=final == 1.0, t=t,
                            t_prev=prev_index(ts, len(ts) - 1, ab_final))
    else:
        bound = B.ddpm_step(x_in, eps_model(x_in, t, None), None, ab_t, ab_final, "float64",
                            variance_type=kw.get("variance_type", "fixed_small"),
                            prev_exact=final == 1.0, t=t,
                            t_prev=prev_index(ts, len(ts) - 1, ab_final))
    RATIOS[f"last-{spacing}-{sampler}-{kw}-{final}"] = assert_within(out, expected, bound,
                                                                     "last step")
    # the last step's σ: > 0 wherever noise could show (then a noisy last step fails above);
    # 0 when the last t is 0 and the chain ends at ᾱ_0 (DDPM β̃ and DDIM σ vanish there)
    beta = 1 - ab_t / ab_final
    var = beta if kw.get("variance_type") == "fixed_large" else beta * (1 - ab_final) / (1 - ab_t)
    assert (var > 1e-6) == (t > 0 or kw.get("variance_type") == "fixed_large"), (t, var)
    # the steps before the last were noisy: another seed moves the last input
    other = rd.sample(eps_model, X_T, SCH, **{**args, "generator": 4})[1][-2]
    assert np.max(np.abs(other - x_in)) > 1e-3


# ----- 3. DDIM's η: Eq. 12 with σ of Eq. 16 ------------------------------------------------
# Caught: η forced to 0 in ddim_step (every η > 0 row) or in the step's body (also the loops).

ETA_PAIRS = [(0.02, 0.3), (0.5, 0.9), (0.3, AB[0]), (0.7, 0.71)]


@pytest.mark.parametrize("eta", [0.0, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("clip", [None, 1.0])
@pytest.mark.parametrize("pair", ETA_PAIRS, ids=lambda p: f"{p[0]:.3g}-{p[1]:.3g}")
def test_ddim_step_eta_closed_form(eta, clip, pair):
    """ddim_step(η) = √ᾱ_prev·x̂_0 + √(1 − ᾱ_prev − σ²)·ε̂ + σ·z, σ = η·√(β̃) (DDIM Eqs. 12, 16)."""
    rng = np.random.default_rng(5)
    x, e, z = (rng.standard_normal((3, 4)) for _ in range(3))
    ab_t, ab_prev = pair
    out = rd.ddim_step(x, e, ab_t, ab_prev, eta=eta, noise=z, clip_x0=clip)
    expected = ref_ddim(x, e, ab_t, ab_prev, eta, z, clip=clip)
    bound = B.ddim_step(x, e, z, ab_t, ab_prev, "float64", eta=eta, clip_x0=clip)
    RATIOS[f"eta-{eta}-{clip}-{pair}"] = assert_within(out, expected, bound, f"eta={eta}")
    sigma = ddim_sigma(ab_t, ab_prev, eta)
    assert (sigma > 1e-3) == (eta > 0)  # η > 0 rows: a σ that ignoring η would drop


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_ddim_sampling_with_eta_equals_the_paper(eta):
    """sample(ddim, η): the whole loop of Eq. 12 with σ·z, z reproduced from the seed."""
    kw = {"eta": eta}
    _, traj_rd = _sample("ddim", CG_TS, 8, kw)
    traj, zs = ref_loop("ddim", X_T, CG_TS, 8, kw)
    state_bounds = loop_bound("ddim", traj, zs, CG_TS, kw)
    RATIOS[f"eta-loop-{eta}"] = assert_trajectory(traj_rd, traj, state_bounds, f"eta={eta}")


# ----- 4. schedules against their closed forms ---------------------------------------------
# Caught: scaled_linear without the square; cosine without the 0.999 clip or with τ = i/(T+1);
# guided_diffusion_linear not rescaled by 1000/T; ZSNR without the scale √ᾱ_0/(√ᾱ_0 − √ᾱ_T).

def _cumprod_bound(beta, d_beta):
    """|Δᾱ_t| for ᾱ_t = ∏_{s≤t}(1 − β_s), both sides evaluated in float64, to first order:
    |Δᾱ_t| ≤ |Δᾱ_{t−1}|·(1 − β_t) + ᾱ_{t−1}·(d_beta_t + 4u·(1 − β_t)) (each side rounds
    1 − β and the product once: 4u in all; no division, so a last β = 1 is fine)."""
    bound, prev, prev_bound = np.empty_like(beta), 1.0, 0.0
    for t, (b, db) in enumerate(zip(beta, d_beta)):
        prev_bound = prev_bound * (1 - b) + prev * (db + 4 * U64 * (1 - b))
        prev = prev * (1 - b)
        bound[t] = prev_bound
    return bound


def _check_schedule(sch, beta, d_beta, what):
    """β and ᾱ of ``sch`` against the closed form ``beta`` (bound ``d_beta``); the ratio."""
    ab_bound = _cumprod_bound(beta, d_beta)
    r1 = assert_within(sch.betas, beta, d_beta, f"{what} betas")
    r2 = assert_within(sch.alphas_cumprod, np.cumprod(1 - beta), ab_bound, f"{what} alphas_cumprod")
    np.testing.assert_array_equal(sch.alphas, 1 - np.asarray(sch.betas))
    return max(r1, r2)


def _linear_beta(T, b0, b1):
    """β_i = b0 + (b1 − b0)·i/(T − 1) and its bound: 4 roundings a side (difference,
    quotient, product, sum) of terms |b0| + |b1 − b0|·i/(T − 1); NumPy's linspace also 4."""
    tau = np.arange(T) / max(T - 1, 1)
    return b0 + (b1 - b0) * tau, 2 * gamma(4) * (abs(b0) + abs(b1 - b0) * tau)


@pytest.mark.parametrize("T_,b0,b1", [(1000, 1e-4, 0.02), (37, 3e-4, 0.05), (2, 0.01, 0.3)])
def test_linear_schedule_closed_form(T_, b0, b1):
    beta, d = _linear_beta(T_, b0, b1)
    RATIOS[f"linear-{T_}"] = _check_schedule(rd.linear_schedule(T_, b0, b1), beta, d, "linear")


@pytest.mark.parametrize("T_", [1000, 250, 20])
def test_guided_diffusion_linear_schedule_closed_form(T_):
    """β from 1e-4·1000/T to 0.02·1000/T (improved-diffusion's get_named_beta_schedule)."""
    beta, d = _linear_beta(T_, 1e-4 * 1000 / T_, 0.02 * 1000 / T_)
    d = d + 2 * U64 * beta  # the end points' own rounding (1000/T and its products)
    RATIOS[f"gd-linear-{T_}"] = _check_schedule(rd.guided_diffusion_linear_schedule(T_), beta, d,
                                                "guided_diffusion_linear")


@pytest.mark.parametrize("T_,b0,b1", [(1000, 0.00085, 0.012), (50, 1e-4, 0.02), (2, 0.01, 0.3)])
def test_scaled_linear_schedule_closed_form(T_, b0, b1):
    """β_i = (√b0 + (√b1 − √b0)·i/(T − 1))², linear in √β (Stable Diffusion's config)."""
    tau = np.arange(T_) / max(T_ - 1, 1)
    r = math.sqrt(b0) + (math.sqrt(b1) - math.sqrt(b0)) * tau
    # r: 5 roundings a side (two square roots, difference, product, sum; linspace the same)
    # of terms √b0 + (√b0 + √b1)·τ; the square doubles the relative error and rounds once
    d_r = 2 * gamma(5) * (math.sqrt(b0) + (math.sqrt(b0) + math.sqrt(b1)) * tau)
    beta, d = r**2, 2 * r * d_r + d_r**2 + 2 * U64 * r**2
    sch = rd.scaled_linear_schedule(T_, b0, b1) if (b0, b1) != (0.00085, 0.012) else \
        rd.scaled_linear_schedule(T_)  # the defaults are Stable Diffusion's values
    RATIOS[f"scaled-linear-{T_}"] = _check_schedule(sch, beta, d, "scaled_linear")


def _cos_f(tau, s):
    """IDDPM Eq. 17's f(τ) = cos²((τ + s)/(1 + s)·π/2) with its bound, one element at a
    time with math.cos: θ carries 6 roundings a side (τ = i/T, + s, 1 + s, the quotient, π/2
    and its product): Δθ ≤ 2γ_6·θ; cos adds 4 ulp a side (a vectorised cos is within a few
    ulp); Δf ≤ 2|cos θ|(|sin θ|·Δθ + 8u·|cos θ|) + 2u·f (the square, each side)."""
    theta = np.array([(t + s) / (1 + s) * (math.pi / 2) for t in tau])
    c = np.array([math.cos(v) for v in theta])
    d_c = np.abs(np.sin(theta)) * 2 * gamma(6) * theta + 8 * U64 * np.abs(c)
    return c**2, 2 * np.abs(c) * d_c + d_c**2 + 2 * U64 * c**2


@pytest.mark.parametrize("T_,s", [(1000, 0.008), (100, 0.008), (7, 0.0)])
def test_cosine_schedule_closed_form(T_, s):
    """β_i = min(1 − f((i+1)/T)/f(i/T), 0.999) (IDDPM Eq. 17 and §3.2's clip); where no β
    was clipped, ᾱ_t = f((t+1)/T)/f(0) (the product telescopes)."""
    f, d_f = _cos_f([i / T_ for i in range(T_ + 1)], s)
    q = f[1:] / f[:-1]
    d_q = q * (d_f[1:] / f[1:] + d_f[:-1] / f[:-1] + 2 * U64)        # the quotient, each side
    raw = 1 - q
    beta = np.minimum(raw, 0.999)
    # the clip is 1-Lipschitz and flat above 0.999: the bound of the clipped value
    d = np.maximum(np.abs(np.minimum(raw + d_q + 2 * U64, 0.999) - beta),
                   np.abs(np.minimum(raw - d_q - 2 * U64, 0.999) - beta))
    sch = rd.cosine_schedule(T_, s=s) if s != 0.008 else rd.cosine_schedule(T_)
    RATIOS[f"cosine-{T_}"] = _check_schedule(sch, beta, d, "cosine")
    if T_ >= 20:  # the clip acts on the last β only (f(1) ≈ 4e-33)
        assert beta[-1] == 0.999 and np.all(beta[:-1] < 0.999)
    free = np.cumprod(raw < 0.999).astype(bool)
    tele = f[1:] / f[0]
    d_tele = tele * (d_f[1:] / f[1:] + d_f[0] / f[0] + 2 * U64) + _cumprod_bound(beta, d)
    assert_within(sch.alphas_cumprod[free], tele[free], d_tele[free], "cosine telescoped")


@pytest.mark.parametrize("kind", ["linear", "scaled_linear", "cosine"])
def test_rescale_zero_terminal_snr_closed_form(kind):
    """ZSNR Algorithm 1: √ᾱ' = (√ᾱ − √ᾱ_{T−1})·√ᾱ_0/(√ᾱ_0 − √ᾱ_{T−1}), ᾱ' = √ᾱ'²,
    α'_0 = ᾱ'_0, α'_t = ᾱ'_t/ᾱ'_{t−1}, β' = 1 − α'. Written here as an affine map in the
    other order (divide, then scale)."""
    base = {"linear": rd.linear_schedule, "scaled_linear": rd.scaled_linear_schedule,
            "cosine": rd.cosine_schedule}[kind](T)
    ab = np.asarray(base.alphas_cumprod)
    a = np.sqrt(ab)
    a0, aT = a[0], a[-1]
    sq = (a - aT) / (a0 - aT) * a0
    ab_new = sq**2
    beta = 1 - np.concatenate([ab_new[:1], ab_new[1:] / ab_new[:-1]])
    z = rd.rescale_zero_terminal_snr(base)
    assert z.alphas_cumprod[-1] == 0.0 and z.betas[-1] == 1.0       # exactly, Algorithm 1
    # √ᾱ' = a0·n/dd, n = a − aT, dd = a0 − aT: the square roots (u each), the differences
    # (u each, of terms a + aT and a0 + aT), the quotient and the product (u each). First
    # order, each side: u·(a0/dd)·((a + aT) + |n|·(a0 + aT)/dd) + 4u·√ᾱ'; bounded by γ_4·(·)
    # with √ᾱ' inside the bracket (a0/dd ≥ 1), and doubled for the two sides
    d_sq = 2 * gamma(4) * a0 / (a0 - aT) * ((a + aT) + np.abs(a - aT) * (a0 + aT) / (a0 - aT) + sq)
    d_ab = 2 * sq * d_sq + d_sq**2 + 2 * U64 * ab_new
    RATIOS[f"zsnr-{kind}-ab"] = assert_within(z.alphas_cumprod, ab_new, d_ab, "zsnr alphas_cumprod")
    prev = ab_new[:-2]
    q, dq = ab_new[1:-1] / prev, d_ab[1:-1] / prev + ab_new[1:-1] * d_ab[:-2] / prev**2
    d_beta = np.concatenate([d_ab[:1], dq + 2 * U64 * q, [0.0]]) + 2 * U64
    RATIOS[f"zsnr-{kind}-beta"] = assert_within(z.betas, beta, d_beta, "zsnr betas")
