"""Conformance checks for the DDPM step, the DDIM step (with η) and a whole sampling loop.

Adapter signatures (t, t_prev are training timesteps of one list of ``num_inference_steps``;
t_prev is the next listed timestep, or −1 after the last one):

====================  ===================================================================
check                  candidate
====================  ===================================================================
check_ddpm_step        ``candidate(x_t, eps, t, t_prev, *, noise, num_inference_steps)``
check_ddim_step        ``candidate(x_t, eps, t, t_prev, *, eta, noise, num_inference_steps)``
check_sampling_loop    ``candidate(model, x_T, timesteps, noises) -> x_0``,
                       ``model(x_t, t) -> eps``; step i uses ``noises[i]``
====================  ===================================================================

Each returns x_prev (x_0 for the loop). The candidate receives nonzero ``noise`` on every
step, the last one included: refdiff's convention is that the last step adds none, so an
implementation that decides by ``t > 0`` instead of by position fails whenever its last-step
variance is not zero. ``num_inference_steps`` is there for implementations that need it (a
stride ``T // n``); refdiff's own steps ignore it. The conventions the candidate claims
(``final_alpha_bar``, ``variance_type``, ``clip_x0``, ``rederive_eps``, ``eta``) are options of the
check; the timestep lists are refdiff's (:func:`refdiff.inference_timesteps`) for every
spacing in ``spacings``.

Tolerance: :mod:`refdiff.testing.tolerance` with scale max(1, |inputs|, |x̂_0|, |expected|)
(x̂_0 = (x_t − √(1−ᾱ_t)·ε)/√ᾱ_t is a term of the step); for a loop of n steps, n times that.

References
----------
DDPM arXiv:2006.11239v2 Algorithm 2, Eqs. 6–7; DDIM arXiv:2010.02502v4 Eq. 12, Eq. 16;
IDDPM arXiv:2102.09672v1 §3.1 (fixed_large).
"""

from __future__ import annotations

from typing import Any, Callable

import array_api_compat
import numpy as np
from hypothesis import strategies as st

import refdiff as rd
from refdiff.testing import references as R
from refdiff.testing import strategies as S
from refdiff.testing._engine import CheckResult, run
from refdiff.testing.checks import Target, compare, resolve_schedule, snippet


def _step_examples(T: int, spacings, offset: int, max_steps, eta):
    """((x_t, eps, noise), (n, spacing, t, t_prev), η) with x_t, ε, z in [−3, 3]; ε and z
    are never all zero (with both zero, every step returns a multiple of x_t)."""
    nonzero = lambda sh: S.arrays(sh).map(lambda z: z if z.any() else z + 1.0)  # noqa: E731
    arrays = S.shapes().flatmap(lambda sh: st.tuples(S.arrays(sh), nonzero(sh), nonzero(sh)))
    etas = S.etas() if eta is None else st.just(eta)
    return st.tuples(arrays, S.timestep_pairs(T, spacings, max_steps, offset), etas)


def _x0_scale(sched: rd.Schedule, x_t, eps, t: int) -> float:
    ab = sched.alpha_bar(t)
    x0 = (x_t - np.sqrt(1 - ab) * eps) / np.sqrt(ab) if ab > 0 else x_t
    return float(np.max(np.abs(x0), initial=1.0))


def _step_check(name: str, candidate: Callable, reference: Callable, *, schedule, spacings,
                offset, max_steps, eta, target: Target, conventions: dict, max_examples, seed):
    sched, src = resolve_schedule(schedule)
    strategy = _step_examples(sched.num_train_timesteps, spacings, offset, max_steps, eta)
    with_eta = name == "DDIM step"

    def trial(ex):
        arrays, (n, _, t, t_prev), eta_ = ex
        x_t, eps, noise = (target.rounded(a) for a in arrays)
        extra = {"eta": eta_} if with_eta else {}
        actual = candidate(target.put(x_t), target.put(eps), t, t_prev, noise=target.put(noise),
                           num_inference_steps=n, **extra)
        expected = reference(x_t, eps, t, t_prev, noise=noise, schedule=sched, **extra,
                             **conventions)
        compare(actual, expected, dtype=target.dtype, device=target.device,
                inputs=(x_t, eps, noise, _x0_scale(sched, x_t, eps, t)), what="x_prev")

    def describe(ex):
        (x_t, eps, noise), (n, spacing, t, t_prev), eta_ = ex
        named = {"x_t": x_t, "eps": eps, "noise": noise, "t": t, "t_prev": t_prev, "n": n,
                 "spacing": spacing}
        return {**named, "eta": eta_} if with_eta else named

    def reproduce(d):
        extra = ", eta=eta" if with_eta else ""
        conv = "".join(f", {k}={v!r}" for k, v in conventions.items())
        return snippet(f"R.{reference.__name__}(x_t, eps, t, t_prev, noise=noise, "
                       f"schedule=schedule{extra}{conv})",
                       f"candidate(x_t, eps, t, t_prev, noise=noise{extra}, num_inference_steps=n)",
                       d, src)

    return run(name, strategy, trial, describe=describe, reproduce=reproduce,
               max_examples=max_examples, seed=seed)


def check_ddim_step(candidate: Callable, *, schedule=None, spacings=rd.SPACINGS, offset: int = 0,
                    eta: float | None = None, final_alpha_bar: str = "one", clip_x0=None,
                    rederive_eps: bool = True, max_steps: int | None = None,
                    target: Target = Target(), max_examples: int = 150,
                    seed: int | None = None) -> CheckResult:
    """One DDIM step between consecutive listed timesteps, η drawn in [0, 1] unless given.

    x_prev = √ᾱ_prev·x̂_0 + √(1−ᾱ_prev−σ²)·ε̂ + σ·z, σ² = η²·β̃ (DDIM Eqs. 12, 16).
    """
    conventions = {"final_alpha_bar": final_alpha_bar, "clip_x0": clip_x0,
                   "rederive_eps": rederive_eps}
    return _step_check("DDIM step", candidate, R.ddim_step, schedule=schedule, spacings=spacings,
                       offset=offset, max_steps=max_steps, eta=eta, target=target,
                       conventions=conventions, max_examples=max_examples, seed=seed)


def check_ddpm_step(candidate: Callable, *, schedule=None, spacings=rd.SPACINGS, offset: int = 0,
                    variance_type: str = "fixed_small", final_alpha_bar: str = "one", clip_x0=None,
                    max_steps: int | None = None, target: Target = Target(),
                    max_examples: int = 150, seed: int | None = None) -> CheckResult:
    """One DDPM step between consecutive listed timesteps (posterior mean at x̂_0 plus σ·z).

    σ² = β̃ ("fixed_small") or β' = 1 − ᾱ_t/ᾱ_prev ("fixed_large"); no noise on the last step.
    """
    conventions = {"variance_type": variance_type, "final_alpha_bar": final_alpha_bar,
                   "clip_x0": clip_x0}
    return _step_check("DDPM step", candidate, R.ddpm_step, schedule=schedule, spacings=spacings,
                       offset=offset, max_steps=max_steps, eta=0.0, target=target,
                       conventions=conventions, max_examples=max_examples, seed=seed)


def default_model(x_t: Any, t: int):
    """A smooth test "network" whose ε depends on x_t and on t: 0.9·x + 0.1·sin(x + t/50)."""
    xp = array_api_compat.array_namespace(x_t)
    return 0.9 * x_t + 0.1 * xp.sin(x_t + t / 50.0)


def check_sampling_loop(candidate: Callable, *, model: Callable = default_model, schedule=None,
                        spacings=rd.SPACINGS, offset: int = 0, sampler: str = "ddim",
                        max_steps: int = 20, target: Target = Target(), max_examples: int = 60,
                        seed: int | None = None, **conventions: Any) -> CheckResult:
    """A whole loop over a listed timestep sequence driven by ``model``, against refdiff's.

    ``conventions`` are those of :func:`check_ddim_step` (``eta``, ``final_alpha_bar``,
    ``clip_x0``, ``rederive_eps``) or :func:`check_ddpm_step` (``variance_type``, ...).
    """
    sched, src = resolve_schedule(schedule)
    T = sched.num_train_timesteps
    lists = S.timestep_lists(T, spacings, max_steps, offset)
    strategy = st.tuples(lists, S.shapes(max_dims=2)).flatmap(
        lambda ls: st.tuples(st.just(ls[0]), st.tuples(*[S.arrays(ls[1])] * (ls[0][0] + 1))))

    def trial(ex):
        (n, _, ts), arrays = ex
        x_T, *noises = (target.rounded(a) for a in arrays)
        actual = candidate(model, target.put(x_T), list(ts), [target.put(z) for z in noises])
        expected = R.sample(model, x_T, ts, noises, schedule=sched, sampler=sampler,
                            **conventions)
        compare(actual, expected, dtype=target.dtype, device=target.device,
                inputs=(x_T, *noises), rtol=None, what=f"x_0 after {n} steps",
                scale=10.0 * n * max(1.0, float(np.max(np.abs(expected), initial=1.0))))

    def describe(ex):
        (n, spacing, ts), (x_T, *noises) = ex
        return {"timesteps": ts, "spacing": spacing, "x_T": x_T, "noises": list(noises)}

    def reproduce(d):
        conv = "".join(f", {k}={v!r}" for k, v in conventions.items())
        head = ("from refdiff.testing.step_checks import default_model as model\n"
                if model is default_model else "model = ...  # your model(x_t, t)\n")
        return head + snippet(f"R.sample(model, x_T, timesteps, noises, schedule=schedule, "
                              f"sampler={sampler!r}{conv})",
                              "candidate(model, x_T, timesteps, noises)", d, src)

    return run(f"{sampler.upper()} sampling loop", strategy, trial, describe=describe,
               reproduce=reproduce,
               max_examples=max_examples, seed=seed)
