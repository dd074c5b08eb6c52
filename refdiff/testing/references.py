"""refdiff's reference values, one function per adapter signature of the conformance kit.

Each function takes the arguments of the public refdiff function it wraps, in the same order,
with the ᾱ values replaced by training timesteps (t, t_prev; t_prev = −1 after the last listed
timestep), and the :class:`~refdiff.Schedule` the candidate claims to use as the keyword-only
``schedule`` (default: the kit's default, ``linear_schedule(1000)``, so that each function is
itself a candidate of its check's adapter signature). It returns NumPy float64 values computed by refdiff's public functions. They are
what the checks compare against, and what a reproduction snippet calls.

Conventions (docs/conventions.md): ᾱ_prev is the ᾱ of the *next listed* timestep, or
``final_alpha_bar`` after the last one ("one" → 1, "alpha_bar_0" → ᾱ_0); no noise is added on
the last step; the DDIM variance is η²·β̃; CFG is ε_u + s·(ε_c − ε_u).

References
----------
DDPM arXiv:2006.11239v2 Eq. 4, Eqs. 6–7, Algorithm 2; DDIM arXiv:2010.02502v4 Eqs. 12, 16;
CFG arXiv:2207.12598v1 Eq. 6; CG arXiv:2105.05233v4 Algorithm 2; IDDPM arXiv:2102.09672v1
Eq. 15 (learned range); Imagen arXiv:2205.11487v1 §2.3 (dynamic thresholding).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import array_api_compat
import numpy as np

import refdiff as rd


Sched = rd.Schedule | None
_DEFAULT: list[rd.Schedule] = []  # linear_schedule(1000), built on first use


def _zeros_like(x):
    return array_api_compat.array_namespace(x).zeros_like(x)


def _schedule(schedule: Sched) -> rd.Schedule:
    """The given schedule, or the kit's default linear_schedule(1000)."""
    if schedule is not None:
        return schedule
    if not _DEFAULT:
        _DEFAULT.append(rd.linear_schedule(1000))
    return _DEFAULT[0]


def alpha_bar_prev(schedule: rd.Schedule, t_prev: int, final_alpha_bar: str = "one") -> float:
    """ᾱ of the level a step goes to: ᾱ_{t_prev}, or the final value when t_prev = −1."""
    if t_prev >= 0:
        return schedule.alpha_bar(t_prev)
    return 1.0 if final_alpha_bar == "one" else schedule.alpha_bar(0)


def schedule_table(spec) -> np.ndarray:
    """ᾱ_t, t = 0 … T−1, float64, for a :class:`~refdiff.testing.strategies.ScheduleSpec`."""
    return np.asarray(spec.build().alphas_cumprod, dtype=np.float64)


def timesteps(T: int, n: int, spacing: str, offset: int = 0) -> list[int]:
    """The descending training timesteps of :func:`refdiff.inference_timesteps`."""
    return [int(t) for t in rd.inference_timesteps(T, n, spacing, offset)]


def q_sample(x0, t: int, eps, *, schedule: Sched = None):
    """x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε (DDPM Eq. 4)."""
    return rd.q_sample(x0, _schedule(schedule).alpha_bar(t), eps)


def posterior(x0, x_t, t: int, t_prev: int, *, schedule: Sched = None, final_alpha_bar="one"):
    """(mean, variance) of q(x_prev | x_t, x_0) on the listed chain (DDPM Eqs. 6–7)."""
    sched = _schedule(schedule)
    mean, var = rd.q_posterior(x0, x_t, sched.alpha_bar(t),
                               alpha_bar_prev(sched, t_prev, final_alpha_bar))
    xp = array_api_compat.array_namespace(x_t)
    return mean, xp.broadcast_to(xp.asarray(var), x_t.shape)


def ddpm_step(x_t, eps, t: int, t_prev: int, noise, *, schedule: Sched = None,
              variance_type="fixed_small", var_values=None, final_alpha_bar="one",
              clip_x0=None, **_: Any):
    """One DDPM step (DDPM Algorithm 2 on the listed chain); no noise when t_prev = −1.

    ``var_values``: the model's variance channel for ``variance_type`` "learned" (log σ²)
    and "learned_range" (IDDPM Eq. 15's v); ``clip_x0`` a bound or a
    :class:`~refdiff.thresholding.DynamicThreshold`."""
    sched = _schedule(schedule)
    noise = _zeros_like(x_t) if t_prev < 0 else noise
    return rd.ddpm_step(x_t, eps, sched.alpha_bar(t), alpha_bar_prev(sched, t_prev, final_alpha_bar),
                        noise, variance_type=variance_type, var_values=var_values,
                        clip_x0=clip_x0)


def ddpm_learned_step(x_t, eps, t: int, t_prev: int, *, var_values, noise,
                      schedule: Sched = None, variance_type="learned_range",
                      final_alpha_bar="one", clip_x0=None, **_: Any):
    """One DDPM step with a learned variance, in the adapter signature of
    :func:`~refdiff.testing.check_ddpm_learned_variance` (``var_values`` and ``noise`` by
    keyword): :func:`ddpm_step` with ``variance_type`` "learned_range" (IDDPM Eq. 15) or
    "learned"."""
    return ddpm_step(x_t, eps, t, t_prev, noise, schedule=schedule, variance_type=variance_type,
                     var_values=var_values, final_alpha_bar=final_alpha_bar, clip_x0=clip_x0)


def ddim_step(x_t, eps, t: int, t_prev: int, *, schedule: Sched = None, eta=0.0, noise=None,
              final_alpha_bar="one", clip_x0=None, rederive_eps=True, **_: Any):
    """One DDIM step (DDIM Eq. 12, σ from Eq. 16, variance η²·β̃); no noise when t_prev = −1."""
    sched = _schedule(schedule)
    noise = _zeros_like(x_t) if (t_prev < 0 or noise is None) else noise
    return rd.ddim_step(x_t, eps, sched.alpha_bar(t), alpha_bar_prev(sched, t_prev, final_alpha_bar),
                        eta=eta, noise=noise, clip_x0=clip_x0, rederive_eps=rederive_eps)


def cfg(eps_uncond, eps_cond, scale: float):
    """ε̃ = ε_u + s·(ε_c − ε_u) (CFG Eq. 6 with s = 1 + w)."""
    return rd.cfg(eps_uncond, eps_cond, scale)


def classifier_guided_eps(eps, grad_log_prob, t: int, scale: float, *, schedule: Sched = None):
    """ε̂' = ε̂ − s·√(1−ᾱ_t)·∇ log p(y | x_t) (CG Algorithm 2)."""
    return rd.classifier_guided_eps(eps, grad_log_prob, _schedule(schedule).alpha_bar(t), scale)


def sample(model: Callable, x_T, timesteps: Sequence[int], noises: Sequence[Any], *,
           schedule: Sched = None, sampler="ddim", **conventions: Any):
    """A whole sampling loop over ``timesteps`` with the given per-step ``noises``.

    Step i uses ``noises[i]``, except the last step, which adds no noise; the model is called
    as ``model(x_t, t)`` and returns ε. Options as in :func:`ddim_step`/:func:`ddpm_step`.
    """
    x, ts, sched = x_T, list(timesteps), _schedule(schedule)
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        if sampler == "ddim":
            x = ddim_step(x, model(x, t), t, t_prev, schedule=sched, noise=noises[i],
                          **conventions)
        else:
            x = ddpm_step(x, model(x, t), t, t_prev, noises[i], schedule=sched, **conventions)
    return x
