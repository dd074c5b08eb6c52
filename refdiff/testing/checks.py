"""Conformance checks for schedules, timesteps, q_sample, the posterior, CFG and classifier
guidance. Each takes a candidate callable with a small adapter signature, searches with
Hypothesis against refdiff, and returns a :class:`~refdiff.testing.CheckResult`.

Adapter signatures (t, t_prev are training timesteps; t_prev = −1 means "after the last one"):

========================  ================================================================
check                      candidate
========================  ================================================================
check_schedule             ``candidate(kind, T, **params) -> alphas_cumprod`` (T,)
check_timesteps            ``candidate(T, n, spacing) -> sequence of int`` (descending)
check_q_sample             ``candidate(x0, eps, t) -> x_t``
check_posterior            ``candidate(x0, x_t, t, t_prev) -> (mean, variance)``
check_cfg                  ``candidate(eps_uncond, eps_cond, scale) -> eps``
check_classifier_guidance  ``candidate(eps, grad_log_prob, t, scale) -> eps``  (CG Alg. 2)
========================  ================================================================

The arrays a candidate receives are drawn in float64, rounded to ``dtype`` and moved to
``backend``/``device``; the reference is refdiff in NumPy float64 on the same rounded values;
outputs must have the right dtype, shape and device and lie within the per-example error
bound of :mod:`refdiff.testing.bounds` (a first-order error analysis of the formula in
``dtype``; docs/testing.md "Tolerance policy"). The schedule the candidate uses is passed as
``schedule`` (a :class:`~refdiff.testing.strategies.ScheduleSpec` or a
:class:`refdiff.Schedule`).

References
----------
DDPM arXiv:2006.11239v2 Eq. 4 and Eqs. 6–7; IDDPM arXiv:2102.09672v1 Eq. 17;
ZSNR arXiv:2305.08891v4 Algorithm 1, Table 2; CFG arXiv:2207.12598v1 Eq. 6;
CG arXiv:2105.05233v4 Algorithm 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from hypothesis import strategies as st

import refdiff as rd
from refdiff.testing import bounds as B
from refdiff.testing import references as R
from refdiff.testing import strategies as S
from refdiff.testing._engine import CheckResult, disagree, literal, run
from refdiff.testing.tolerance import (ConformanceError, assert_close, difference, from_numpy,
                                       notify, to_numpy)

DEFAULT_SCHEDULE = S.ScheduleSpec("linear", 1000)


@dataclass(frozen=True)
class Target:
    """Where the candidate's inputs live: ``backend`` ("numpy", "torch", "array_api_strict",
    "jax"), ``dtype`` and ``device``. refdiff's own backend tests use the same class for their
    matrix. A JAX device is a platform string ("cpu", "gpu", "gpu:1"); a JAX float64 target
    needs ``jax.config.update("jax_enable_x64", True)`` (without it :meth:`put` raises
    TypeError, where JAX would silently give float32)."""

    backend: str = "numpy"
    dtype: str = "float64"
    device: str = "cpu"

    @property
    def id(self) -> str:
        """A readable id: ``numpy-float64``, ``torch-cpu-float32``, ``jax-cpu-float32``,
        ``array_api_strict-device1-float32``."""
        dev = "" if self.backend == "numpy" or (self.backend == "array_api_strict"
                                                 and self.device == "cpu") else f"{self.device}-"
        return f"{self.backend}-{dev}{self.dtype}"

    def put(self, a: np.ndarray):
        """A NumPy float64 array (or float) as an array of this target."""
        return from_numpy(a, self.backend, self.dtype, self.device)

    def rounded(self, a: np.ndarray) -> np.ndarray:
        """The float64 values of ``a`` after rounding to this target's dtype."""
        return to_numpy(self.put(a))

    def with_dtype(self, dtype: str) -> "Target":
        """The same backend and device in another dtype (e.g. float64 ᾱ arrays: cast late)."""
        return Target(self.backend, dtype, self.device)


def resolve_schedule(schedule: Any) -> tuple[rd.Schedule, str]:
    """(refdiff Schedule, source text for reproductions) from a spec or a Schedule."""
    schedule = DEFAULT_SCHEDULE if schedule is None else schedule
    if isinstance(schedule, S.ScheduleSpec):
        return schedule.build(), repr(schedule)
    return schedule, (f"rd.Schedule.from_betas(your_betas)  # T = {schedule.num_train_timesteps}")


def levels(sched: rd.Schedule, t: int, t_prev: int, final_alpha_bar: str = "one"):
    """(ᾱ_t, ᾱ_prev, exact) of a step; ``exact``: ᾱ_prev is the final 1, held exactly."""
    exact = t_prev < 0 and final_alpha_bar == "one"
    return sched.alpha_bar(t), R.alpha_bar_prev(sched, t_prev, final_alpha_bar), exact


def compare(actual: Any, expected: Any, *, dtype: str, device: str = "cpu", inputs=(),
            rtol=None, scale=None, bound=None, what: str = "output") -> None:
    """:func:`assert_close`, re-raised with both outputs and the difference attached; every
    comparison is passed to the observers of :func:`refdiff.testing.tolerance.observe`."""
    record = {"what": what, "dtype": dtype, "device": device, "actual": actual,
              "expected": expected, "bound": bound}
    try:
        stats = assert_close(actual, expected, dtype=dtype, device=device, inputs=inputs,
                             rtol=rtol, scale=scale, bound=bound)
    except ConformanceError as exc:
        max_abs, max_rel = (difference(actual, expected) if hasattr(actual, "shape")
                            else (float("inf"),) * 2)
        notify({**record, "ratio": getattr(exc, "ratio", float("inf")), "passed": False})
        raise disagree(f"{what}: {exc}", actual, expected, max_abs, max_rel) from None
    notify({**record, "ratio": stats["ratio"], "passed": True})


def snippet(ref_call: str, cand_call: str, example: dict, schedule_src: str | None = None,
            bound_call: str | None = None, dtype: str = "float64") -> str:
    """A copy-paste reproduction: the example's values, refdiff's call, the candidate's and
    (``bound_call``) the check's error bound for ``dtype``."""
    lines = ["import numpy as np", "import refdiff as rd",
             "from refdiff.testing import bounds as B, references as R, assert_close"]
    if "DynamicThreshold(" in ref_call + (bound_call or ""):
        lines.append("from refdiff.thresholding import DynamicThreshold")
    if schedule_src:
        lines.append(f"schedule = {schedule_src}")
    lines += [f"{k} = {literal(v)}" for k, v in example.items()]
    lines += [f"expected = {ref_call}", f"actual = {cand_call}  # your adapter"]
    if bound_call is None:
        lines.append("assert_close(actual, expected)  # with dtype=/device= of your run")
    else:
        lines += [f"bound = {bound_call.replace('DTYPE', repr(dtype))}  # the check's error bound",
                  "assert_close(actual, expected, bound=bound)  # with dtype=/device= of your run"]
    return "\n".join(lines)


def check_schedule(candidate: Callable, *, kinds=S.SCHEDULE_KINDS, min_T: int = 2,
                   max_T: int = 1000, dtype: str = "float64", max_examples: int = 50,
                   seed: int | None = None) -> CheckResult:
    """ᾱ tables of every ``kind`` with random T and β range, against refdiff's float64 tables.

    Adapter: ``candidate(kind, T, **params) -> alphas_cumprod`` of shape (T,), any backend;
    ``kind`` in ``kinds``, ``params`` the β range (``beta_start``, ``beta_end``) where the
    kind has one.

    ``dtype`` is the precision the candidate claims for its table (float64 by default: a
    float32 table then fails on dtype and by ~1e-8 in value). Values are judged in the simple
    mode of :func:`~refdiff.testing.assert_close`: |Δᾱ| ≤ ``RTOL[dtype]`` (ᾱ ≤ 1).
    """
    def trial(spec):
        actual = candidate(spec.kind, spec.T, **spec.params)
        compare(actual, R.schedule_table(spec), dtype=dtype, scale=1.0, what="alphas_cumprod")

    def reproduce(named):
        spec = named["spec"]
        return snippet("np.asarray(schedule.alphas_cumprod)",
                       f"candidate({spec.kind!r}, {spec.T}, **{spec.params!r})", {}, repr(spec))

    return run("schedule tables", S.schedules(kinds, min_T, max_T), trial,
               describe=lambda spec: {"spec": spec}, reproduce=reproduce,
               max_examples=max_examples, seed=seed)


def check_timesteps(candidate: Callable, *, T: int | None = None, max_T: int = 1000,
                    spacings=rd.SPACINGS, max_examples: int = 200,
                    seed: int | None = None) -> CheckResult:
    """Inference timesteps of every spacing, exactly equal to refdiff's list (ints).

    Adapter: ``candidate(T, n, spacing) -> sequence of int``, descending, n elements, for
    ``spacing`` in "leading", "trailing", "linspace".
    """
    Ts = st.just(T) if T else st.one_of(st.just(max_T), st.integers(1, max_T))
    strategy = Ts.flatmap(lambda T_: st.tuples(st.just(T_), S.timestep_lists(T_, spacings)))

    def trial(ex):
        T_, (n, spacing, expected) = ex
        actual = [int(t) for t in candidate(T_, n, spacing)]
        if actual != expected:
            diff = [i for i, (a, b) in enumerate(zip(actual, expected)) if a != b]
            where = (f"length {len(actual)} != {n}" if len(actual) != n
                     else f"{len(diff)} element(s) differ, first at index {diff[0]}")
            err = (float(max(abs(a - b) for a, b in zip(actual, expected)))
                   if len(actual) == n else float("inf"))
            notify({"what": "timesteps", "dtype": "int", "device": "cpu", "actual": actual,
                    "expected": expected, "bound": 0.0, "ratio": float("inf"), "passed": False})
            raise disagree(f"timesteps: {where}", actual, expected, err, err)

    def describe(ex):
        T_, (n, spacing, _) = ex
        return {"T": T_, "n": n, "spacing": spacing}

    def reproduce(d):
        return snippet("R.timesteps(T, n, spacing)", "list(candidate(T, n, spacing))", d)

    return run("inference timesteps", strategy, trial, describe=describe, reproduce=reproduce,
               max_examples=max_examples, seed=seed)


def _arrays(k: int, bound: float = 3.0):
    """``k`` float64 arrays of one small random shape."""
    return S.shapes().flatmap(lambda sh: st.tuples(*[S.arrays(sh, bound=bound)] * k))


def check_q_sample(candidate: Callable, *, schedule=None, target: Target = Target(),
                   max_examples: int = 100, seed: int | None = None) -> CheckResult:
    """x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε at random t of ``schedule`` (DDPM Eq. 4).

    Adapter: ``candidate(x0, eps, t) -> x_t``; arrays of ``target``, t a training timestep.
    """
    sched, src = resolve_schedule(schedule)
    strategy = st.tuples(_arrays(2), st.integers(0, sched.num_train_timesteps - 1))

    def trial(ex):
        (x0, eps), t = ex
        x0, eps = target.rounded(x0), target.rounded(eps)
        actual = candidate(target.put(x0), target.put(eps), t)
        expected = R.q_sample(x0, t, eps, schedule=sched)
        compare(actual, expected, dtype=target.dtype, device=target.device,
                bound=B.q_sample(x0, eps, sched.alpha_bar(t), target.dtype, t=t), what="x_t")

    def describe(ex):
        (x0, eps), t = ex
        return {"x0": x0, "eps": eps, "t": t}

    def reproduce(d):
        return snippet("R.q_sample(x0, t, eps, schedule=schedule)", "candidate(x0, eps, t)", d,
                       src, "B.q_sample(x0, eps, schedule.alpha_bar(t), DTYPE, t=t)", target.dtype)

    return run("q_sample", strategy, trial, describe=describe, reproduce=reproduce,
               max_examples=max_examples, seed=seed)


def check_posterior(candidate: Callable, *, schedule=None, spacings=rd.SPACINGS,
                    final_alpha_bar: str = "one", target: Target = Target(),
                    max_examples: int = 100, seed: int | None = None) -> CheckResult:
    """Mean and variance of q(x_prev | x_t, x_0) between consecutive listed timesteps.

    Adapter: ``candidate(x0, x_t, t, t_prev) -> (mean, variance)``; the mean has the shape,
    dtype and device of ``x_t``; the variance β̃ is anything broadcastable to it (a float, a
    0-d array, ...). t_prev = −1 after the last listed timestep (ᾱ_prev = 1, or ᾱ_0 with
    ``final_alpha_bar="alpha_bar_0"``).
    """
    sched, src = resolve_schedule(schedule)
    strategy = st.tuples(_arrays(2), S.timestep_pairs(sched.num_train_timesteps, spacings))

    def trial(ex):
        (x0, x_t), (_, _, t, t_prev) = ex
        x0, x_t = target.rounded(x0), target.rounded(x_t)
        mean, var = candidate(target.put(x0), target.put(x_t), t, t_prev)
        e_mean, e_var = R.posterior(x0, x_t, t, t_prev, schedule=sched,
                                    final_alpha_bar=final_alpha_bar)
        ab_t, ab_prev, exact = levels(sched, t, t_prev, final_alpha_bar)
        b_mean, b_var = B.posterior(x0, x_t, ab_t, ab_prev, target.dtype, prev_exact=exact,
                                    t=t, t_prev=max(t_prev, 0))
        compare(mean, e_mean, dtype=target.dtype, device=target.device, bound=b_mean,
                what="posterior mean")
        var = np.broadcast_to(to_numpy(var), x_t.shape)
        compare(var, e_var, dtype="float64", bound=b_var, what="posterior variance")

    def describe(ex):
        (x0, x_t), (n, spacing, t, t_prev) = ex
        return {"x0": x0, "x_t": x_t, "t": t, "t_prev": t_prev, "n": n, "spacing": spacing}

    def reproduce(d):
        prev = f"R.alpha_bar_prev(schedule, t_prev, {final_alpha_bar!r})"
        exact = "t_prev < 0" if final_alpha_bar == "one" else "False"
        return snippet(f"R.posterior(x0, x_t, t, t_prev, schedule=schedule, "
                       f"final_alpha_bar={final_alpha_bar!r})",
                       "candidate(x0, x_t, t, t_prev)", d, src,
                       f"B.posterior(x0, x_t, schedule.alpha_bar(t), {prev}, DTYPE, "
                       f"prev_exact={exact}, t=t, t_prev=max(t_prev, 0))  # (mean, variance)",
                       target.dtype)

    return run("posterior", strategy, trial, describe=describe, reproduce=reproduce,
               max_examples=max_examples, seed=seed)


def check_cfg(candidate: Callable, *, target: Target = Target(), exact_ends: bool = False,
              max_examples: int = 100, seed: int | None = None) -> CheckResult:
    """ε̃ = ε_u + s·(ε_c − ε_u) for any scale s (s = 1 + w of the paper).

    Adapter: ``candidate(eps_uncond, eps_cond, scale) -> eps``; ``scale`` a Python float s
    (not the paper's w = s − 1), any value: 0 and 1 are the ends, values in (0, 1) and
    negative values are legal.

    ``exact_ends=True`` also demands ε_u at s = 0 and ε_c at s = 1 bit for bit (refdiff's
    promise; the plain formula ε_u + 1·(ε_c − ε_u) can miss ε_c by an ulp).
    """
    strategy = st.tuples(_arrays(2, bound=4.0), S.guidance_scales())

    def trial(ex):
        (eu, ec), s = ex
        eu, ec = target.rounded(eu), target.rounded(ec)
        actual = candidate(target.put(eu), target.put(ec), s)
        compare(actual, R.cfg(eu, ec, s), dtype=target.dtype, device=target.device,
                bound=B.cfg(eu, ec, s, target.dtype), what="guided eps")
        if exact_ends and s in (0.0, 1.0):
            compare(actual, eu if s == 0 else ec, dtype=target.dtype, device=target.device,
                    bound=0.0, what=f"guided eps at s = {s:g} (must be exact)")

    def describe(ex):
        (eu, ec), s = ex
        return {"eps_uncond": eu, "eps_cond": ec, "scale": s}

    def reproduce(d):
        return snippet("R.cfg(eps_uncond, eps_cond, scale)",
                       "candidate(eps_uncond, eps_cond, scale)", d, None,
                       "B.cfg(eps_uncond, eps_cond, scale, DTYPE)", target.dtype)

    return run("classifier-free guidance", strategy, trial, describe=describe, reproduce=reproduce,
               max_examples=max_examples, seed=seed)


def check_classifier_guidance(candidate: Callable, *, schedule=None, target: Target = Target(),
                              max_examples: int = 100, seed: int | None = None) -> CheckResult:
    """ε̂' = ε̂ − s·√(1−ᾱ_t)·∇ log p(y | x_t) at random t and scale (CG Algorithm 2).

    Adapter: ``candidate(eps, grad_log_prob, t, scale) -> eps``; t the training timestep of
    the step, ``scale`` the gradient scale s (a Python float in [0, 20]).
    """
    sched, src = resolve_schedule(schedule)
    strategy = st.tuples(_arrays(2), st.integers(0, sched.num_train_timesteps - 1),
                         S.guidance_scales(0.0, 20.0))

    def trial(ex):
        (eps, grad), t, s = ex
        eps, grad = target.rounded(eps), target.rounded(grad)
        actual = candidate(target.put(eps), target.put(grad), t, s)
        compare(actual, R.classifier_guided_eps(eps, grad, t, s, schedule=sched),
                dtype=target.dtype, device=target.device, what="guided eps",
                bound=B.classifier_guidance(eps, grad, sched.alpha_bar(t), s, target.dtype, t=t))

    def describe(ex):
        (eps, grad), t, s = ex
        return {"eps": eps, "grad_log_prob": grad, "t": t, "scale": s}

    def reproduce(d):
        return snippet("R.classifier_guided_eps(eps, grad_log_prob, t, scale, schedule=schedule)",
                       "candidate(eps, grad_log_prob, t, scale)", d, src,
                       "B.classifier_guidance(eps, grad_log_prob, schedule.alpha_bar(t), scale, "
                       "DTYPE, t=t)", target.dtype)

    return run("classifier guidance", strategy, trial, describe=describe, reproduce=reproduce,
               max_examples=max_examples, seed=seed)
