"""Planted bugs (mutants) and correct controls, each a candidate with an adapter signature.

The functions here are a small hand-written sampler in the style of a tutorial (plain
arithmetic on arrays, a table ᾱ indexed by training timestep), with switches that plant
one known bug each. :data:`MUTANTS` lists the bugs with the *public* check that must catch
each and the conventions the check is told; :data:`CONTROLS` lists the correct versions,
which must pass. :func:`mutation_table` runs everything over several seeds and reports the
catch rate, the examples needed and the time to catch.

References
----------
DDPM arXiv:2006.11239v2 Eqs. 6–7, Algorithm 2; DDIM arXiv:2010.02502v4 Eqs. 12, 16;
CFG arXiv:2207.12598v1 Eq. 6 (w vs s = 1 + w); IDDPM arXiv:2102.09672v1 §3.1;
ZSNR arXiv:2305.08891v4 Table 2 (trailing spacing).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable

import array_api_compat
import numpy as np

import refdiff as rd
from refdiff.testing import checks as C
from refdiff.testing import step_checks as SC
from refdiff.testing.strategies import ScheduleSpec


def _levels(table, t: int, t_prev: int, final: str) -> tuple[float, float]:
    ab_prev = float(table[t_prev]) if t_prev >= 0 else (1.0 if final == "one" else float(table[0]))
    return float(table[t]), ab_prev


def hand_ddim(schedule: rd.Schedule, *, eta_power: int = 2, prev: str = "listed",
              final: str = "one", clip: float | None = None, rederive: bool = True) -> Callable:
    """A tutorial DDIM step. Bugs: ``eta_power=1`` (σ² = η·β̃), ``prev="t-1"`` or
    ``"stride"`` (t − T//n), ``final="alpha_bar_0"``, ``rederive=False`` after clipping."""
    table, T = np.asarray(schedule.alphas_cumprod), schedule.num_train_timesteps

    def step(x_t, eps, t, t_prev, *, eta, noise, num_inference_steps):
        last = t_prev < 0
        if prev == "t-1":
            t_prev = t - 1
        elif prev == "stride":
            t_prev = t - T // num_inference_steps
        ab_t, ab_prev = _levels(table, t, t_prev, final)
        x0 = (x_t - math.sqrt(1 - ab_t) * eps) / math.sqrt(ab_t)
        if clip is not None:
            x0 = array_api_compat.array_namespace(x0).clip(x0, -clip, clip)
            if rederive:
                eps = (x_t - math.sqrt(ab_t) * x0) / math.sqrt(1 - ab_t)
        var = eta**eta_power * (1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)
        x = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - var, 0.0)) * eps
        return x if (last or eta == 0) else x + math.sqrt(var) * noise
    return step


def hand_ddpm(schedule: rd.Schedule, *, variance: str = "fixed_small", noise_if: str = "not_last",
              tutorial: bool = False) -> Callable:
    """A tutorial DDPM step. Bugs: ``noise_if="t>0"`` (noise on a last step with t > 0),
    ``tutorial=True`` (x_prev = √ᾱ_prev·x̂_0 + √β'·z instead of the posterior)."""
    table = np.asarray(schedule.alphas_cumprod)

    def step(x_t, eps, t, t_prev, *, noise, num_inference_steps):
        ab_t, ab_prev = _levels(table, t, t_prev, "one")
        beta = 1 - ab_t / ab_prev
        x0 = (x_t - math.sqrt(1 - ab_t) * eps) / math.sqrt(ab_t)
        add_noise = t > 0 if noise_if == "t>0" else t_prev >= 0
        if tutorial:
            return math.sqrt(ab_prev) * x0 + (math.sqrt(beta) * noise if add_noise else 0.0)
        mean = (math.sqrt(ab_prev) * beta / (1 - ab_t) * x0
                + math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab_t) * x_t)
        var = beta if variance == "fixed_large" else (1 - ab_prev) / (1 - ab_t) * beta
        return mean + math.sqrt(var) * noise if add_noise else mean
    return step


def hand_posterior(schedule: rd.Schedule, *, swapped: bool = False) -> Callable:
    """q(x_prev | x_t, x_0). Bug: ``swapped=True`` exchanges the x_0 and x_t coefficients."""
    table = np.asarray(schedule.alphas_cumprod)

    def posterior(x0, x_t, t, t_prev):
        ab_t, ab_prev = _levels(table, t, t_prev, "one")
        beta = 1 - ab_t / ab_prev
        c0 = math.sqrt(ab_prev) * beta / (1 - ab_t)
        ct = math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab_t)
        c0, ct = (ct, c0) if swapped else (c0, ct)
        return c0 * x0 + ct * x_t, (1 - ab_prev) / (1 - ab_t) * beta
    return posterior


def hand_cfg(form: str = "s") -> Callable:
    """CFG. ``"s"``: ε_u + s·(ε_c − ε_u); bugs ``"flipped"`` (sign of the difference) and
    ``"w"`` (the scale used as the paper's w: (1 + s)·ε_c − s·ε_u)."""
    def cfg(eps_uncond, eps_cond, scale):
        if form == "flipped":
            return eps_uncond - scale * (eps_cond - eps_uncond)
        if form == "w":
            return (1 + scale) * eps_cond - scale * eps_uncond
        return eps_uncond + scale * (eps_cond - eps_uncond)
    return cfg


def hand_schedule(dtype: str = "float64") -> Callable:
    """ᾱ tables; bug ``dtype="float32"``: β and the cumulative product in float32."""
    def table(kind, T, **params):
        betas = np.asarray(ScheduleSpec(kind, T, params).build().betas).astype(dtype)
        return np.cumprod(1 - betas, dtype=dtype)
    return table


def hand_timesteps(trailing: str = "exact") -> Callable:
    """Inference timesteps; bug ``trailing="arange"``: round(arange(T, 0, −T/n)) − 1."""
    def timesteps(T, n, spacing):
        if spacing == "leading":
            return [i * (T // n) for i in range(n)][::-1]
        if spacing == "linspace":
            return np.round(np.linspace(0, T - 1, n))[::-1].astype(int).tolist()
        if trailing == "arange":
            return (np.round(np.arange(T, 0, -T / n)) - 1).astype(int).tolist()
        return [int(np.round(T * (n - i) / n)) - 1 for i in range(n)]
    return timesteps


def hand_loop(step: Callable, sampler: str = "ddim", eta: float = 0.0) -> Callable:
    """A sampling loop over the given list with a step function of the adapter signature."""
    def loop(model, x_T, timesteps, noises):
        x, n = x_T, len(timesteps)
        for i, t in enumerate(timesteps):
            t_prev = timesteps[i + 1] if i + 1 < n else -1
            extra = {"eta": eta} if sampler == "ddim" else {}
            x = step(x, model(x, t), t, t_prev, noise=noises[i], num_inference_steps=n, **extra)
        return x
    return loop


@dataclass(frozen=True)
class Case:
    """A candidate (``make(schedule)``), the check that must judge it, and its options."""

    name: str
    check: Callable
    make: Callable[[rd.Schedule], Callable]
    options: dict = field(default_factory=dict)


_CLIP = {"clip_x0": 1.0, "rederive_eps": True}

MUTANTS = [
    Case("CFG: sign of the difference flipped", C.check_cfg, lambda s: hand_cfg("flipped")),
    Case("CFG: w used where s is expected", C.check_cfg, lambda s: hand_cfg("w")),
    Case("DDIM: variance eta*beta~ (not eta^2)", SC.check_ddim_step, lambda s: hand_ddim(s, eta_power=1)),
    Case("DDIM: alpha_bar_prev = alpha_bar_{t-1}", SC.check_ddim_step, lambda s: hand_ddim(s, prev="t-1")),
    Case("DDIM: previous t = t - T//n", SC.check_ddim_step, lambda s: hand_ddim(s, prev="stride")),
    Case("DDIM: last step to alpha_bar_0", SC.check_ddim_step,
         lambda s: hand_ddim(s, final="alpha_bar_0")),
    Case("DDPM: noise on the last step (t > 0)", SC.check_ddpm_step,
         lambda s: hand_ddpm(s, variance="fixed_large", noise_if="t>0"), {"variance_type": "fixed_large"}),
    Case("posterior: mean coefficients swapped", C.check_posterior,
         lambda s: hand_posterior(s, swapped=True)),
    Case("DDIM: eps not re-derived after clipping", SC.check_ddim_step,
         lambda s: hand_ddim(s, clip=1.0, rederive=False), _CLIP),
    Case("schedule: float32 tables claimed float64", C.check_schedule,
         lambda s: hand_schedule("float32")),
    Case("DDPM: tutorial x = sqrt(ab)*x0 + sqrt(beta)*z", SC.check_ddpm_step,
         lambda s: hand_ddpm(s, tutorial=True)),
    Case("timesteps: trailing from a float arange", C.check_timesteps,
         lambda s: hand_timesteps("arange")),
]

CONTROLS = [
    Case("CFG", C.check_cfg, lambda s: hand_cfg()),
    Case("DDIM step", SC.check_ddim_step, lambda s: hand_ddim(s)),
    Case("DDIM step, clipped", SC.check_ddim_step, lambda s: hand_ddim(s, clip=1.0), _CLIP),
    Case("DDPM step", SC.check_ddpm_step, lambda s: hand_ddpm(s)),
    Case("DDPM step, fixed_large", SC.check_ddpm_step,
         lambda s: hand_ddpm(s, variance="fixed_large"), {"variance_type": "fixed_large"}),
    Case("posterior", C.check_posterior, lambda s: hand_posterior(s)),
    Case("schedule", C.check_schedule, lambda s: hand_schedule()),
    Case("timesteps", C.check_timesteps, lambda s: hand_timesteps()),
    Case("q_sample", C.check_q_sample,
         lambda s: lambda x0, z, t: math.sqrt(s.alpha_bar(t)) * x0 + math.sqrt(1 - s.alpha_bar(t)) * z),
    Case("classifier guidance", C.check_classifier_guidance,
         lambda s: lambda e, g, t, k: e - k * math.sqrt(1 - s.alpha_bar(t)) * g),
    Case("DDIM loop", SC.check_sampling_loop, lambda s: hand_loop(hand_ddim(s), eta=0.5),
         {"eta": 0.5}),
]


def run_case(case: Case, *, schedule: Any = None, seed: int | None = None,
             max_examples: int | None = None):
    """Run ``case.check`` on the case's candidate; returns the CheckResult."""
    spec = ScheduleSpec("linear", 1000) if schedule is None else schedule
    sched = spec.build() if isinstance(spec, ScheduleSpec) else spec
    kwargs = dict(case.options, seed=seed)
    if max_examples is not None:
        kwargs["max_examples"] = max_examples
    if case.check not in (C.check_cfg, C.check_schedule, C.check_timesteps):
        kwargs["schedule"] = spec
    return case.check(case.make(sched), **kwargs)


def mutation_table(seeds=range(10), *, max_examples: int | None = None) -> list[dict]:
    """For each mutant: caught in how many seeds, examples to the first failure (worst and
    median over seeds), and median seconds to the first failure."""
    rows = []
    for case in MUTANTS:
        results = [run_case(case, seed=s, max_examples=max_examples) for s in seeds]
        failed = [r for r in results if not r.passed]
        n = [r.examples_to_fail for r in failed]
        rows.append({"mutant": case.name, "check": case.check.__name__,
                     "caught": len(failed), "seeds": len(results),
                     "worst": max(n) if n else None, "median": statistics.median(n) if n else None,
                     "seconds": statistics.median(r.time_to_fail for r in failed) if failed else None})
    return rows


def format_table(rows: list[dict]) -> str:
    """The mutation table as fixed-width text."""
    out = [f"{'mutant':<46} {'check':<18} {'caught':>7} {'worst':>6} {'median':>7} {'time':>8}"]
    for r in rows:
        med = "-" if r["median"] is None else f"{r['median']:g}"
        sec = "-" if r["seconds"] is None else f"{r['seconds'] * 1000:.0f} ms"
        out.append(f"{r['mutant']:<46} {r['check']:<18} {r['caught']:>3}/{r['seeds']:<3} "
                   f"{str(r['worst']):>6} {med:>7} {sec:>8}")
    return "\n".join(out)
