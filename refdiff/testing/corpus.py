"""Correct implementations written differently from refdiff: the kit must pass them all.

A tolerance that rejects correct code is as much a defect as one that accepts a slip. This
corpus holds correct implementations of every checked formula, each an adapter of its
check's signature, written in the algebra of the implementations people use, with the
coefficients in the precision those implementations use:

- ``refdiff``: refdiff's public functions (``rd.q_sample``, ``rd.ddim_step``, ...) wrapped;
- ``guided-diffusion``: x̂_0 = √(1/ᾱ)·x_t − √(1/ᾱ − 1)·ε, ε always re-derived from x̂_0,
  the posterior as coef1·x̂_0 + coef2·x_t with coef1 = β'·√ᾱ_prev/(1−ᾱ_t),
  coef2 = (1−ᾱ_prev)·√α'/(1−ᾱ_t), α' = 1 − β' (float64 coefficients, cast by the product);
- ``diffusers``: diffusers' DDIM/DDPM algebra (β' = 1 − ᾱ_t/ᾱ_prev, ``(·)**0.5``) with every
  coefficient computed in the dtype from a table held in the dtype (``table``: refdiff's
  ᾱ rounded to the dtype; ``cumprod32``: diffusers' own float32 cumulative product);
- ``folded``: x_prev = A·x_t + B·ε (+ σ·z) with A, B computed in float64 (``float64``) or
  in the dtype (``dtype``);
- ``paper``: the paper's expressions evaluated in the dtype throughout: the arrays in the
  dtype, the coefficients computed from a table held in the dtype (float32 for float16 and
  bfloat16, where a table in the dtype is not correct: ᾱ_0 = 0.9999 rounds to 1);
- learned variances (``ddpm_learned``): guided-diffusion's frac·max_log + (1 − frac)·min_log
  with float64 logs and σ = exp(½·log σ²), diffusers' clamp(β̃, 1e-20) and logs computed in
  the dtype from a table held there, and the product of powers β'^frac·β̃^(1−frac) in the
  dtype;
- dynamic thresholding (``clip_x0=THRESHOLD``): refdiff's, and in every other algebra a
  quantile in diffusers' style, written with a sort: the rank p·(N − 1) formed in the dtype
  (as torch.quantile does), a one-sided lerp, float16 and bfloat16 upcast to float32;
- for CFG: refdiff's exact lerp, the plain ε_u + s·(ε_c − ε_u), the paper's
  (1 + w)·ε_c − w·ε_u, the scale as an array of the dtype; for classifier guidance:
  s·√(1−ᾱ) folded in float64 or applied in two products in the dtype.

:data:`VARIANTS` lists them with the check and options each is run under and the dtypes it
is meant for (a table held in float16 is not a correct implementation: ᾱ_0 rounds to 1).
:func:`run_group` runs one check on one target with every variant of a group on the same
examples (the first variant is the check's candidate; the others are compared, through
:func:`refdiff.testing.tolerance.observe`, with the same reference and the same bound) and
returns each variant's error/bound ratios.

References
----------
guided-diffusion, https://github.com/openai/guided-diffusion, ``gaussian_diffusion.py``;
diffusers, https://github.com/huggingface/diffusers, ``scheduling_ddim.py``,
``scheduling_ddpm.py`` (algebra rewritten here, not copied). DDPM arXiv:2006.11239v2;
DDIM arXiv:2010.02502v4; CFG arXiv:2207.12598v1; CG arXiv:2105.05233v4.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Callable

import array_api_compat
import numpy as np

import refdiff as rd
from refdiff.testing import CHECKS, Target
from refdiff.testing.checks import resolve_schedule
from refdiff.testing.tolerance import ConformanceError, assert_close, observe, to_numpy
from refdiff.thresholding import DynamicThreshold

ROWS = (Target("numpy", "float64"), Target("numpy", "float32"), Target("torch", "float32"),
        Target("torch", "float16"), Target("torch", "bfloat16"),
        Target("array_api_strict", "float32"), Target("array_api_strict", "float64"))
WIDE = ("float64", "float32")      # dtypes that may hold a table of ᾱ (and derive 1 − ᾱ)
ALL = ("float64", "float32", "float16", "bfloat16")


# ----- levels: where ᾱ and 1 − ᾱ come from, and in which precision ----------------------------

def _const(x, v, table: bool = False):
    """A 0-d array of ``x``'s namespace and device holding ``v``, in ``x``'s dtype (or, for a
    ``table`` value, in float32 when ``x`` is float16 or bfloat16)."""
    xp = array_api_compat.array_namespace(x)
    dtype = x.dtype
    if table and dtype not in (xp.float32, xp.float64):
        dtype = xp.float32
    return xp.asarray(float(v), dtype=dtype, device=array_api_compat.device(x))


def _sqrt(v, x):
    if isinstance(v, float):
        return math.sqrt(max(v, 0.0))
    xp = array_api_compat.array_namespace(x)
    return xp.sqrt(xp.clip(xp.asarray(v), min=0.0))


class Levels:
    """(ᾱ_t, 1−ᾱ_t, ᾱ_prev, 1−ᾱ_prev) of a step as a candidate holds them.

    ``source``: ``"float64"`` Python floats; ``"cast"`` ᾱ and 1 − ᾱ each cast from float64
    to the table's dtype; ``"table"`` ᾱ cast to it and 1 − ᾱ computed in it; ``"cumprod32"``
    diffusers' float32 table (∏(1 − β) in float32) and 1 − ᾱ computed in float32. The
    table's dtype is the dtype of x, or float32 for float16 and bfloat16."""

    def __init__(self, schedule: rd.Schedule, source: str):
        self.source = source
        self.table = np.asarray(schedule.alphas_cumprod, dtype=np.float64)
        if source == "cumprod32":
            betas = np.asarray(schedule.betas, dtype=np.float64).astype(np.float32)
            self.table = np.cumprod(np.float32(1.0) - betas, dtype=np.float32).astype(np.float64)

    def pair(self, x, t: int, final: str = "one"):
        """(ᾱ, 1 − ᾱ) at training timestep t; t = −1 is the final level."""
        if t < 0 and final == "one":
            ab = 1.0
        else:
            ab = float(self.table[max(t, 0)])
        if self.source == "float64":
            return ab, 1.0 - ab
        a = _const(x, ab, table=True)
        if self.source == "cast":
            return a, _const(x, 1.0 - ab, table=True)
        return a, 1.0 - a

    def step(self, x, t: int, t_prev: int, final: str = "one"):
        return (*self.pair(x, t), *self.pair(x, t_prev, final))


# ----- the algebras -------------------------------------------------------------------------

def _clip(x, bound):
    """Clip x̂_0 to [−b, b], or threshold it (``bound`` a DynamicThreshold)."""
    if isinstance(bound, DynamicThreshold):
        return threshold_rank_in_dtype(x, bound)
    return array_api_compat.array_namespace(x).clip(x, -bound, bound)


def threshold_rank_in_dtype(x0, threshold: DynamicThreshold):
    """Dynamic thresholding as diffusers' ``_threshold_sample`` computes it, with a sort in
    place of torch.quantile: float16/bfloat16 upcast to float32, the rank p·(N − 1) formed in
    the working dtype (torch.quantile's float32 rank), a one-sided lerp a_lo + f·(a_hi − a_lo),
    s clamped to [1, s_max], clip to [−s, s], divide by s, cast back."""
    xp = array_api_compat.array_namespace(x0)
    dtype = x0.dtype
    work = xp.float32 if dtype not in (xp.float32, xp.float64) else dtype
    x = xp.astype(x0, work)
    batch, n = x.shape[0], math.prod(x.shape[1:])
    a = xp.sort(xp.abs(xp.reshape(x, (batch, n))), axis=1)
    dev = array_api_compat.device(x)
    h = xp.asarray(threshold.ratio, dtype=work, device=dev) * (n - 1)  # the rank, in the dtype
    lo = int(math.floor(float(h)))
    hi = min(lo + 1, n - 1)
    f = h - lo
    s = a[:, lo] + f * (a[:, hi] - a[:, lo])
    s = xp.clip(s, 1.0, threshold.max_value)
    s = xp.reshape(s, (batch,) + (1,) * (x.ndim - 1))
    return xp.astype(xp.clip(x, -s, s) / s, dtype)


def gd_x0_eps(x, eps, a_t, clip, rederive: bool = True):
    """guided-diffusion: x̂_0 from √(1/ᾱ) and √(1/ᾱ − 1); ε re-derived from x̂_0."""
    recip, recipm1 = _sqrt(1.0 / a_t, x), _sqrt(1.0 / a_t - 1.0, x)
    x0 = recip * x - recipm1 * eps
    if clip is not None:
        x0 = _clip(x0, clip)
    return x0, ((recip * x - x0) / recipm1 if rederive else eps)


def diffusers_x0_eps(x, eps, a_t, c_t, clip, rederive: bool):
    """diffusers: x̂_0 = (x − (1−ᾱ)**0.5·ε)/ᾱ**0.5; ε re-derived if use_clipped_model_output."""
    x0 = (x - _sqrt(c_t, x) * eps) / _sqrt(a_t, x)
    if clip is not None:
        x0 = _clip(x0, clip)
        if rederive:
            eps = (x - _sqrt(a_t, x) * x0) / _sqrt(c_t, x)
    return x0, eps


def _beta_ratio(a_t, a_p):
    return 1.0 - a_t / a_p                                          # β' = 1 − ᾱ_t/ᾱ_prev


def ddim_gd(x, eps, noise, L, eta, clip, rederive, last):
    a_t, c_t, a_p, c_p = L
    x0, eps = gd_x0_eps(x, eps, a_t, clip, rederive=True)
    sigma = eta * _sqrt(c_p / c_t, x) * _sqrt(_beta_ratio(a_t, a_p), x)
    out = x0 * _sqrt(a_p, x) + _sqrt(c_p - sigma**2, x) * eps
    return out if (last or eta == 0) else out + sigma * noise


def ddim_diffusers(x, eps, noise, L, eta, clip, rederive, last):
    a_t, c_t, a_p, c_p = L
    x0, eps = diffusers_x0_eps(x, eps, a_t, c_t, clip, rederive)
    std = eta * _sqrt((c_p / c_t) * _beta_ratio(a_t, a_p), x)
    out = _sqrt(a_p, x) * x0 + _sqrt(1.0 - a_p - std**2, x) * eps
    return out if (last or eta == 0) else out + std * noise


def ddim_paper(x, eps, noise, L, eta, clip, rederive, last):
    a_t, c_t, a_p, c_p = L
    x0, eps = diffusers_x0_eps(x, eps, a_t, c_t, clip, rederive)
    var = eta**2 * c_p / c_t * _beta_ratio(a_t, a_p)     # σ² = η²·β̃
    out = _sqrt(a_p, x) * x0 + _sqrt(c_p - var, x) * eps
    return out if (last or eta == 0) else out + _sqrt(var, x) * noise


def ddim_folded(x, eps, noise, L, eta, clip, rederive, last):
    a_t, c_t, a_p, c_p = L
    r = eta**2 * _beta_ratio(a_t, a_p) / c_t
    d, sigma = _sqrt(c_p * (1.0 - r), x), _sqrt(r * c_p, x)
    A = _sqrt(a_p, x) / _sqrt(a_t, x)                               # coefficient of x_t
    B = d - _sqrt(a_p, x) * _sqrt(c_t, x) / _sqrt(a_t, x)           # coefficient of ε
    out = A * x + B * eps
    return out if (last or eta == 0) else out + sigma * noise


def ddpm_gd(x, eps, noise, L, variance_type, clip, last):
    a_t, c_t, a_p, c_p = L
    x0, _ = gd_x0_eps(x, eps, a_t, clip, rederive=False)
    beta = _beta_ratio(a_t, a_p)
    coef1 = beta * _sqrt(a_p, x) / c_t
    coef2 = c_p * _sqrt(1.0 - beta, x) / c_t
    var = beta * c_p / c_t if variance_type == "fixed_small" else beta
    out = coef1 * x0 + coef2 * x
    return out if last else out + _sqrt(var, x) * noise


def ddpm_diffusers(x, eps, noise, L, variance_type, clip, last):
    a_t, c_t, a_p, c_p = L
    x0, _ = diffusers_x0_eps(x, eps, a_t, c_t, clip, False)
    current_alpha = a_t / a_p
    current_beta = 1.0 - current_alpha
    c0 = (_sqrt(a_p, x) * current_beta) / c_t
    ct = _sqrt(current_alpha, x) * c_p / c_t
    var = c_p / c_t * current_beta if variance_type == "fixed_small" else current_beta
    out = c0 * x0 + ct * x
    return out if last else out + _sqrt(var, x) * noise


def ddpm_paper(x, eps, noise, L, variance_type, clip, last):
    a_t, c_t, a_p, c_p = L
    x0 = (x - _sqrt(c_t, x) * eps) / _sqrt(a_t, x)                 # DDPM Eq. 15
    if clip is not None:
        x0 = _clip(x0, clip)
    beta = _beta_ratio(a_t, a_p)
    mean = _sqrt(a_p, x) * beta / c_t * x0 + _sqrt(1.0 - beta, x) * c_p / c_t * x  # Eq. 7
    var = c_p / c_t * beta if variance_type == "fixed_small" else beta
    return mean if last else mean + _sqrt(var, x) * noise


def ddpm_folded(x, eps, noise, L, variance_type, clip, last):
    a_t, c_t, a_p, c_p = L
    beta = _beta_ratio(a_t, a_p)
    c0 = _sqrt(a_p, x) * beta / c_t
    ct = _sqrt(a_t / a_p, x) * c_p / c_t
    A = ct + c0 / _sqrt(a_t, x)
    B = -(c0 * _sqrt(c_t, x) / _sqrt(a_t, x))
    var = c_p * beta / c_t if variance_type == "fixed_small" else beta
    out = A * x + B * eps
    return out if last else out + _sqrt(var, x) * noise


def learned_gd(x, eps, noise, v, L, variance_type, clip, last):
    """guided-diffusion's p_mean_variance: min_log, max_log in float64 (cast by the product),
    model_log_variance = frac·max_log + (1 − frac)·min_log, σ = exp(½·log σ²)."""
    a_t, c_t, a_p, c_p = L
    mean = ddpm_gd(x, eps, noise, L, "fixed_small", clip, True)
    if last:
        return mean
    xp = array_api_compat.array_namespace(x)
    beta = _beta_ratio(a_t, a_p)
    if variance_type == "learned":
        log_var = v
    else:
        max_log, min_log = math.log(beta), math.log(max(beta * c_p / c_t, 1e-20))
        frac = (v + 1) / 2
        log_var = frac * max_log + (1 - frac) * min_log
    return mean + xp.exp(0.5 * log_var) * noise


def learned_diffusers(x, eps, noise, v, L, variance_type, clip, last):
    """diffusers' DDPMScheduler: β̃ clamped at 1e-20, both logs in the table's dtype,
    exp(0.5·(frac·max_log + (1 − frac)·min_log)); "learned": v is σ², here exp(v)."""
    a_t, c_t, a_p, c_p = L
    mean = ddpm_diffusers(x, eps, noise, L, "fixed_small", clip, True)
    if last:
        return mean
    xp = array_api_compat.array_namespace(x)
    if variance_type == "learned":
        return mean + xp.exp(v) ** 0.5 * noise
    current_beta = 1.0 - a_t / a_p
    variance = xp.clip(c_p / c_t * current_beta, min=1e-20)
    min_log, max_log = xp.log(variance), xp.log(current_beta)
    frac = (v + 1) / 2
    return mean + xp.exp(0.5 * (frac * max_log + (1 - frac) * min_log)) * noise


def learned_power(x, eps, noise, v, L, variance_type, clip, last):
    """σ² = β'^frac·β̃^(1 − frac) (IDDPM Eq. 15 exponentiated), powers of 0-d arrays in the
    dtype; "learned": σ = √exp(v)."""
    a_t, c_t, a_p, c_p = L
    mean = ddpm_paper(x, eps, noise, L, "fixed_small", clip, True)
    if last:
        return mean
    xp = array_api_compat.array_namespace(x)
    if variance_type == "learned":
        return mean + xp.sqrt(xp.exp(v)) * noise
    beta = _const(x, _beta_ratio(a_t, a_p))
    beta_tilde = _const(x, max(_beta_ratio(a_t, a_p) * c_p / c_t, 1e-20))
    frac = (v + 1) / 2
    return mean + xp.sqrt(xp.pow(beta, frac) * xp.pow(beta_tilde, 1 - frac)) * noise


def posterior_gd(x0, x_t, L):
    a_t, c_t, a_p, c_p = L
    beta = _beta_ratio(a_t, a_p)
    coef1 = beta * _sqrt(a_p, x_t) / c_t
    coef2 = c_p * _sqrt(1.0 - beta, x_t) / c_t
    return coef1 * x0 + coef2 * x_t, beta * c_p / c_t


def posterior_paper(x0, x_t, L):
    a_t, c_t, a_p, c_p = L
    beta = _beta_ratio(a_t, a_p)
    c0 = _sqrt(a_p, x_t) * beta / c_t
    ct = _sqrt(a_t / a_p, x_t) * c_p / c_t
    return c0 * x0 + ct * x_t, c_p * beta / c_t


# ----- adapters -------------------------------------------------------------------------------

def _ddim_adapter(algebra, source, options):
    clip, rederive = options.get("clip_x0"), options.get("rederive_eps", True)
    final = options.get("final_alpha_bar", "one")

    def make(schedule):
        levels = Levels(schedule, source)

        def step(x_t, eps, t, t_prev, *, eta, noise, num_inference_steps):
            L = levels.step(x_t, t, t_prev, final)
            return algebra(x_t, eps, noise, L, eta, clip, rederive, t_prev < 0)
        return step
    return make


def _ddpm_adapter(algebra, source, options):
    clip, vt = options.get("clip_x0"), options.get("variance_type", "fixed_small")

    def make(schedule):
        levels = Levels(schedule, source)

        def step(x_t, eps, t, t_prev, *, noise, num_inference_steps):
            return algebra(x_t, eps, noise, levels.step(x_t, t, t_prev), vt, clip, t_prev < 0)
        return step
    return make


def _learned_adapter(algebra, source, options):
    clip, vt = options.get("clip_x0"), options.get("variance_type", "learned_range")

    def make(schedule):
        levels = Levels(schedule, source)

        def step(x_t, eps, t, t_prev, *, var_values, noise, num_inference_steps):
            return algebra(x_t, eps, noise, var_values, levels.step(x_t, t, t_prev), vt, clip,
                           t_prev < 0)
        return step
    return make


def _posterior_adapter(algebra, source, options):
    def make(schedule):
        levels = Levels(schedule, source)
        return lambda x0, x_t, t, t_prev: algebra(x0, x_t, levels.step(x_t, t, t_prev))
    return make


def _q_sample_adapter(source, options):
    def make(schedule):
        levels = Levels(schedule, source)

        def q(x0, eps, t):
            a, c = levels.pair(x0, t)
            return _sqrt(a, x0) * x0 + _sqrt(c, x0) * eps
        return q
    return make


def _cg_adapter(form, options):
    def make(schedule):
        ab = schedule.alpha_bar
        if form == "refdiff":
            return lambda e, g, t, s: rd.classifier_guided_eps(e, g, ab(t), s)
        if form == "float64":
            return lambda e, g, t, s: e - (s * math.sqrt(1.0 - ab(t))) * g
        return lambda e, g, t, s: e - _const(e, s) * (_sqrt(_const(e, 1.0 - ab(t), True), e) * g)
    return make


def _cfg_adapter(form, options):
    forms = {"refdiff": rd.cfg,
             "plain": lambda eu, ec, s: eu + s * (ec - eu),
             "paper w": lambda eu, ec, s: (1.0 + (s - 1.0)) * ec - (s - 1.0) * eu,
             "scale in dtype": lambda eu, ec, s: eu + _const(eu, s) * (ec - eu)}
    return lambda schedule: forms[form]


def _refdiff_adapter(check, options):
    """refdiff's public functions behind each adapter signature."""
    final = options.get("final_alpha_bar", "one")

    def make(schedule):
        ab = schedule.alpha_bar

        def prev(t_prev):
            return 1.0 if (t_prev < 0 and final == "one") else ab(max(t_prev, 0))
        if check == "q_sample":
            return lambda x0, eps, t: rd.q_sample(x0, ab(t), eps)
        if check == "posterior":
            return lambda x0, x_t, t, tp: rd.q_posterior(x0, x_t, ab(t), prev(tp))
        if check == "ddim":
            def ddim(x_t, eps, t, t_prev, *, eta, noise, num_inference_steps):
                z = noise * 0.0 if t_prev < 0 else noise
                return rd.ddim_step(x_t, eps, ab(t), prev(t_prev), eta=eta, noise=z,
                                    clip_x0=options.get("clip_x0"),
                                    rederive_eps=options.get("rederive_eps", True))
            return ddim
        if check == "ddpm":
            def ddpm(x_t, eps, t, t_prev, *, noise, num_inference_steps):
                z = noise * 0.0 if t_prev < 0 else noise
                return rd.ddpm_step(x_t, eps, ab(t), prev(t_prev), z,
                                    variance_type=options.get("variance_type", "fixed_small"),
                                    clip_x0=options.get("clip_x0"))
            return ddpm
        if check == "ddpm_learned":
            def learned(x_t, eps, t, t_prev, *, var_values, noise, num_inference_steps):
                z = noise * 0.0 if t_prev < 0 else noise
                return rd.ddpm_step(x_t, eps, ab(t), prev(t_prev), z, var_values=var_values,
                                    variance_type=options.get("variance_type", "learned_range"),
                                    clip_x0=options.get("clip_x0"))
            return learned
        raise ValueError(check)
    return make


def _loop_adapter(step_make, sampler, eta):
    def make(schedule):
        step = step_make(schedule)

        def loop(model, x_T, timesteps, noises):
            x, n = x_T, len(timesteps)
            for i, t in enumerate(timesteps):
                t_prev = timesteps[i + 1] if i + 1 < n else -1
                extra = {"eta": eta} if sampler == "ddim" else {}
                x = step(x, model(x, t), t, t_prev, noise=noises[i], num_inference_steps=n,
                         **extra)
            return x
        return loop
    return make


@dataclass(frozen=True)
class Variant:
    """A correct implementation: ``make(schedule)`` gives the adapter of ``check``."""

    name: str
    make: Callable[[rd.Schedule], Callable]
    dtypes: tuple = ALL


@dataclass(frozen=True)
class Group:
    """Variants run together under one check (a key of ``refdiff.testing.CHECKS``) and
    its ``options``; the first is the check's own candidate."""

    check: str
    options: dict
    variants: tuple
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or self.check


def _learned_variants(options: dict) -> tuple:
    return (Variant("refdiff", _refdiff_adapter("ddpm_learned", options)),
            Variant("guided-diffusion", _learned_adapter(learned_gd, "float64", options)),
            Variant("diffusers, table in dtype", _learned_adapter(learned_diffusers, "table",
                                                                  options), WIDE),
            Variant("diffusers, float32 cumprod",
                    _learned_adapter(learned_diffusers, "cumprod32", options), ("float32",)),
            Variant("powers, in dtype", _learned_adapter(learned_power, "table", options)))


def _step_variants(check: str, options: dict) -> tuple:
    if check == "ddpm_learned":
        return _learned_variants(options)
    if check == "ddim":
        ad, alg = _ddim_adapter, {"gd": ddim_gd, "diffusers": ddim_diffusers,
                                  "paper": ddim_paper, "folded": ddim_folded}
    else:
        ad, alg = _ddpm_adapter, {"gd": ddpm_gd, "diffusers": ddpm_diffusers,
                                  "paper": ddpm_paper, "folded": ddpm_folded}
    out = [Variant("refdiff", _refdiff_adapter(check, options)),
           Variant("guided-diffusion", ad(alg["gd"], "float64", options)),
           Variant("diffusers, table in dtype", ad(alg["diffusers"], "table", options), WIDE),
           Variant("diffusers, float32 cumprod", ad(alg["diffusers"], "cumprod32", options),
                   ("float32",)),
           Variant("paper, in dtype", ad(alg["paper"], "table", options))]
    if options.get("clip_x0") is None:
        out += [Variant("folded, float64", ad(alg["folded"], "float64", options)),
                Variant("folded, in dtype", ad(alg["folded"], "cast", options))]
    if check == "ddim" and not options.get("rederive_eps", True):
        out = [v for v in out if v.name != "guided-diffusion"]  # it always re-derives ε
    return tuple(out)


_CLIP = {"clip_x0": 1.0}
# DeepFloyd IF's settings (diffusers' dynamic_thresholding_ratio=0.95, sample_max_value=1.5)
THRESHOLD = DynamicThreshold(ratio=0.95, max_value=1.5)


def _groups() -> list[Group]:
    groups = [
        Group("q_sample", {}, (Variant("refdiff", _refdiff_adapter("q_sample", {})),
                               Variant("paper, float64", _q_sample_adapter("float64", {})),
                               Variant("paper, cast to dtype", _q_sample_adapter("cast", {})),
                               Variant("paper, table in dtype", _q_sample_adapter("table", {}),
                                       WIDE),
                               Variant("paper, float32 cumprod",
                                       _q_sample_adapter("cumprod32", {}), ("float32",)))),
        Group("posterior", {}, (Variant("refdiff", _refdiff_adapter("posterior", {})),
                                Variant("guided-diffusion",
                                        _posterior_adapter(posterior_gd, "float64", {})),
                                Variant("diffusers, table in dtype",
                                        _posterior_adapter(posterior_gd, "table", {}), WIDE),
                                Variant("diffusers, float32 cumprod",
                                        _posterior_adapter(posterior_gd, "cumprod32", {}),
                                        ("float32",)),
                                Variant("paper, in dtype",
                                        _posterior_adapter(posterior_paper, "table", {})))),
        Group("cfg", {}, tuple(Variant(f, _cfg_adapter(f, {}))
                               for f in ("refdiff", "plain", "paper w", "scale in dtype"))),
        Group("classifier_guidance", {}, tuple(Variant(f, _cg_adapter(f, {}))
                                               for f in ("refdiff", "float64", "in dtype"))),
    ]
    for opts, label in [({}, "ddim"), ({"eta": 1.0}, "ddim eta=1"),
                        ({**_CLIP, "rederive_eps": True}, "ddim clip, re-derived eps"),
                        ({**_CLIP, "rederive_eps": False}, "ddim clip, model eps"),
                        ({"final_alpha_bar": "alpha_bar_0"}, "ddim to alpha_bar_0")]:
        groups.append(Group("ddim", opts, _step_variants("ddim", opts), label))
    groups.append(Group("ddim", {"clip_x0": THRESHOLD, "rederive_eps": False},
                        _step_variants("ddim", {"clip_x0": THRESHOLD, "rederive_eps": False}),
                        "ddim threshold, model eps"))
    for opts, label in [({}, "ddpm"), ({"variance_type": "fixed_large"}, "ddpm fixed_large"),
                        (_CLIP, "ddpm clip"), ({"clip_x0": THRESHOLD}, "ddpm threshold")]:
        groups.append(Group("ddpm", opts, _step_variants("ddpm", opts), label))
    for opts, label in [({}, "ddpm learned_range"), ({"variance_type": "learned"}, "ddpm learned")]:
        groups.append(Group("ddpm_learned", opts, _step_variants("ddpm_learned", opts), label))
    for sampler, eta, opts in [("ddim", 0.0, {}), ("ddim", 0.5, {"eta": 0.5}),
                               ("ddpm", 0.0, {"sampler": "ddpm"})]:
        steps = {v.name: v for v in _step_variants(sampler, {})}
        variants = tuple(Variant(n, _loop_adapter(steps[n].make, sampler, eta), steps[n].dtypes)
                         for n in ("refdiff", "guided-diffusion", "diffusers, float32 cumprod",
                                   "paper, in dtype", "folded, float64"))
        groups.append(Group("loop", opts, variants, f"loop {sampler} eta={eta:g}"))
    return groups


GROUPS = _groups()


# ----- running a group ---------------------------------------------------------------------

@dataclass
class Outcome:
    """Ratios error/bound of every variant of a group on one target, and its failures."""

    group: str
    target: str
    ratios: dict = field(default_factory=dict)    # variant name -> list of ratios
    failures: dict = field(default_factory=dict)  # variant name -> first failure message
    check_passed: bool = True
    report: str = ""


class _FanOut:
    """The check's candidate: calls every variant on the same inputs, returns the first's."""

    def __init__(self, adapters: dict):
        self.adapters = adapters
        self.outputs: dict = {}

    def __call__(self, *args, **kwargs):
        self.outputs = {}
        for name, fn in self.adapters.items():
            try:
                self.outputs[name] = fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - a variant that raises has failed
                self.outputs[name] = exc
        first = self.outputs[next(iter(self.adapters))]
        if isinstance(first, Exception):
            raise first
        return first


def _part(output, what: str):
    """The part of an output a comparison judges (the posterior returns two)."""
    if what == "posterior mean":
        return output[0]
    if what == "posterior variance":
        return output[1]
    return output


def run_group(group: Group, target: Target, *, schedule=None, seed: int | None = None,
              max_examples: int | None = None) -> Outcome:
    """Run ``group``'s check on ``target`` with every variant meant for its dtype."""
    sched, _ = resolve_schedule(schedule)
    variants = [v for v in group.variants if target.dtype in v.dtypes]
    fan = _FanOut({v.name: v.make(sched) for v in variants})
    out = Outcome(group.name, target.id, {v.name: [] for v in variants})

    def seen(record):
        for name, value in fan.outputs.items():
            if isinstance(value, Exception):
                out.failures.setdefault(name, f"{type(value).__name__}: {value}")
                out.ratios[name].append(math.inf)
                continue
            actual = _part(value, record["what"])
            if record["what"] == "posterior variance":
                actual = np.broadcast_to(to_numpy(actual), np.shape(record["expected"]))
            try:
                stats = assert_close(actual, record["expected"], dtype=record["dtype"],
                                     device=record["device"], bound=record["bound"])
                out.ratios[name].append(stats["ratio"])
            except ConformanceError as exc:
                out.failures.setdefault(name, f"{record['what']}: {exc}")
                out.ratios[name].append(math.inf)

    kwargs = dict(group.options, seed=seed)
    if max_examples is not None:
        kwargs["max_examples"] = max_examples
    if group.check != "cfg":
        kwargs["schedule"] = schedule
    with observe(seen):
        result = CHECKS[group.check](fan, target=target, **kwargs)
    out.check_passed = result.passed
    if not result.passed:
        out.report = result.report()
        out.failures.setdefault(next(iter(fan.adapters)), result.message)
    return out


def summarize(outcomes: list[Outcome]) -> dict:
    """Worst and median ratio per dtype over all variants and examples, and the counts."""
    per: dict[str, list[float]] = {}
    runs = 0
    for o in outcomes:
        dtype = o.target.rsplit("-", 1)[-1]
        for ratios in o.ratios.values():
            per.setdefault(dtype, []).extend(ratios)
            runs += 1
    return {"runs": runs, "failures": sum(len(o.failures) for o in outcomes),
            "per_dtype": {d: {"worst": max(r), "median": statistics.median(r), "n": len(r)}
                          for d, r in per.items() if r}}


def measure(seeds=range(20), *, groups=None, rows=ROWS, schedule=None,
            max_examples: int | None = None, progress: Callable[[str], None] | None = None):
    """Run every group on every row for each seed; (outcomes, :func:`summarize`)."""
    outcomes = []
    for seed in seeds:
        for group in groups or GROUPS:
            for target in rows:
                outcome = run_group(group, target, schedule=schedule, seed=seed,
                                    max_examples=max_examples)
                outcomes.append(outcome)
                if progress and outcome.failures:
                    progress(f"seed {seed} {group.name} {target.id}: {outcome.failures}")
    return outcomes, summarize(outcomes)


def format_summary(summary: dict) -> str:
    """The ratio table: worst and median error/bound per dtype, and the counts."""
    lines = [f"{'dtype':<10} {'examples':>9} {'worst':>10} {'median':>10}"]
    for dtype in ALL:
        s = summary["per_dtype"].get(dtype)
        if s:
            lines.append(f"{dtype:<10} {s['n']:>9} {s['worst']:>10.3g} {s['median']:>10.3g}")
    lines.append(f"{summary['runs']} variant runs, {summary['failures']} failures")
    return "\n".join(lines)


def worst_by_group(outcomes: list[Outcome]) -> list[tuple[str, str, str, float]]:
    """(group, dtype, variant, worst ratio) for the worst variant of each group and dtype."""
    worst: dict[tuple[str, str], tuple[str, float]] = {}
    for o in outcomes:
        dtype = o.target.rsplit("-", 1)[-1]
        for name, ratios in o.ratios.items():
            if ratios and max(ratios) >= worst.get((o.group, dtype), ("", -1.0))[1]:
                worst[(o.group, dtype)] = (name, max(ratios))
    return [(g, d, name, r) for (g, d), (name, r) in worst.items()]


def main(argv=None) -> int:
    """``python -m refdiff.testing.corpus [--seeds N] [--examples N] [--schedule KIND]
    [--group NAME ...]``."""
    import argparse
    import time

    from refdiff.testing.strategies import ScheduleSpec

    p = argparse.ArgumentParser(description="error/bound ratios of the correct corpus")
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--examples", type=int, default=None)
    p.add_argument("--schedule", default="linear")
    p.add_argument("--group", action="append", default=None, metavar="NAME",
                   help=f"only these groups (repeatable): {'; '.join(g.name for g in GROUPS)}")
    args = p.parse_args(argv)
    groups = None
    if args.group:
        unknown = [n for n in args.group if n not in {g.name for g in GROUPS}]
        if unknown:
            p.error(f"unknown group {unknown[0]!r}")
        groups = [g for g in GROUPS if g.name in args.group]
    t0 = time.perf_counter()
    outcomes, summary = measure(range(args.seeds), groups=groups,
                                schedule=ScheduleSpec(args.schedule, 1000),
                                max_examples=args.examples, progress=print)
    print(format_summary(summary))
    for group, dtype, name, ratio in worst_by_group(outcomes):
        print(f"  worst {group} {dtype}: {ratio:.3g} ({name})")
    print(f"{time.perf_counter() - t0:.0f} s")
    return 0 if summary["failures"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
