"""Planted bugs (mutants) and correct controls, each a candidate with an adapter signature.

The functions here are a small hand-written sampler in the style of a tutorial (plain
arithmetic on arrays, a table ᾱ indexed by training timestep), with switches that plant
one known bug each. :data:`MUTANTS` lists the bugs with the *public* check that must catch
each and the conventions the check is told; :data:`CONTROLS` lists the correct versions,
which must pass. :func:`mutation_table` runs everything over several seeds and reports the
catch rate, the examples needed, the time to catch, and how far above the error bound the
failing examples land (the ratio error/bound of :mod:`refdiff.testing.bounds`).

References
----------
DDPM arXiv:2006.11239v2 Eqs. 6–7, Algorithm 2; DDIM arXiv:2010.02502v4 Eqs. 12, 16;
CFG arXiv:2207.12598v1 Eq. 6 (w vs s = 1 + w); IDDPM arXiv:2102.09672v1 §3.1 and Eq. 15
(learned range); Imagen arXiv:2205.11487v1 §2.3 (dynamic thresholding); ZSNR
arXiv:2305.08891v4 Table 2 (trailing spacing).
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
from refdiff.testing.tolerance import observe
from refdiff.thresholding import DynamicThreshold


def _levels(table, t: int, t_prev: int, final: str) -> tuple[float, float]:
    ab_prev = float(table[t_prev]) if t_prev >= 0 else (1.0 if final == "one" else float(table[0]))
    return float(table[t]), ab_prev


def hand_threshold(x0, threshold: DynamicThreshold, bug: str | None = None):
    """Imagen's dynamic thresholding, tutorial style (``numpy.quantile``/``torch.quantile``
    over each flattened sample; s clamped to [1, s_max]; clip to [−s, s], divide by s).
    Bugs: ``"no_divide"`` (clipped to [−s, s], not divided by s), ``"batch_axis"`` (the
    quantile over the batch axis: one s per element position, shared by the samples),
    ``"no_floor"`` (s not clamped below at 1: a sample whose quantile is below 1 is scaled
    up)."""
    torch_ = type(x0).__module__.split(".")[0] == "torch"
    batch = x0.shape[0]
    flat = x0.reshape(batch, -1)
    axis = 0 if bug == "batch_axis" else 1
    if torch_:
        import torch
        s = torch.quantile(flat.abs(), threshold.ratio, dim=axis)
        s = torch.clamp(s, min=None if bug == "no_floor" else 1.0, max=threshold.max_value)
        clip = lambda v, lo, hi: torch.clamp(v, lo, hi)  # noqa: E731
    else:
        s = np.quantile(np.abs(flat), threshold.ratio, axis=axis)
        s = np.clip(s, None if bug == "no_floor" else 1.0, threshold.max_value)
        clip = np.clip
    shape = (1, *x0.shape[1:]) if bug == "batch_axis" else (batch,) + (1,) * (x0.ndim - 1)
    s = s.reshape(shape)
    out = clip(x0, -s, s)
    return out if bug == "no_divide" else out / s


def hand_ddim(schedule: rd.Schedule, *, eta_power: int = 2, prev: str = "listed",
              final: str = "one", clip: float | None = None, rederive: bool = True,
              direction: str = "eq12", threshold: DynamicThreshold | None = None,
              threshold_bug: str | None = None) -> Callable:
    """A tutorial DDIM step. Bugs: ``eta_power=1`` (σ² = η·β̃), ``prev="t-1"``,
    ``"stride"`` (t − T//n) or ``"after"`` (ᾱ of index t_prev + 1), ``final="alpha_bar_0"``,
    ``rederive=False`` after clipping, ``direction="no_sigma"`` (√(1 − ᾱ_prev)·ε̂, without
    the −σ² of Eq. 12); with a ``threshold``, the bugs of :func:`hand_threshold`."""
    table, T = np.asarray(schedule.alphas_cumprod), schedule.num_train_timesteps

    def step(x_t, eps, t, t_prev, *, eta, noise, num_inference_steps):
        last = t_prev < 0
        if prev == "t-1":
            t_prev = t - 1
        elif prev == "stride":
            t_prev = t - T // num_inference_steps
        elif prev == "after" and not last:
            t_prev = t_prev + 1
        ab_t, ab_prev = _levels(table, t, t_prev, final)
        x0 = (x_t - math.sqrt(1 - ab_t) * eps) / math.sqrt(ab_t)
        if clip is not None or threshold is not None:
            x0 = (hand_threshold(x0, threshold, threshold_bug) if threshold is not None else
                  array_api_compat.array_namespace(x0).clip(x0, -clip, clip))
            if rederive:
                eps = (x_t - math.sqrt(ab_t) * x0) / math.sqrt(1 - ab_t)
        var = eta**eta_power * (1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)
        dir_var = 1 - ab_prev if direction == "no_sigma" else max(1 - ab_prev - var, 0.0)
        x = math.sqrt(ab_prev) * x0 + math.sqrt(dir_var) * eps
        return x if (last or eta == 0) else x + math.sqrt(var) * noise
    return step


def hand_ddpm(schedule: rd.Schedule, *, variance: str = "fixed_small", noise_if: str = "not_last",
              tutorial: bool = False, beta: str = "respaced", noise_scale: str = "sigma",
              threshold: DynamicThreshold | None = None,
              threshold_bug: str | None = None) -> Callable:
    """A tutorial DDPM step. Bugs: ``noise_if="t>0"`` (noise on a last step with t > 0),
    ``tutorial=True`` (x_prev = √ᾱ_prev·x̂_0 + √β'·z instead of the posterior),
    ``beta="training"`` (the training schedule's β_t where the respaced list needs
    β' = 1 − ᾱ_t/ᾱ_prev), ``noise_scale="variance"`` (z times σ² instead of σ); with a
    ``threshold``, the bugs of :func:`hand_threshold`."""
    table = np.asarray(schedule.alphas_cumprod)
    betas = np.asarray(schedule.betas)

    def step(x_t, eps, t, t_prev, *, noise, num_inference_steps):
        ab_t, ab_prev = _levels(table, t, t_prev, "one")
        b = float(betas[t]) if beta == "training" else 1 - ab_t / ab_prev
        x0 = (x_t - math.sqrt(1 - ab_t) * eps) / math.sqrt(ab_t)
        if threshold is not None:
            x0 = hand_threshold(x0, threshold, threshold_bug)
        add_noise = t > 0 if noise_if == "t>0" else t_prev >= 0
        if tutorial:
            return math.sqrt(ab_prev) * x0 + (math.sqrt(b) * noise if add_noise else 0.0)
        mean = (math.sqrt(ab_prev) * b / (1 - ab_t) * x0
                + math.sqrt(1 - b) * (1 - ab_prev) / (1 - ab_t) * x_t)
        var = b if variance == "fixed_large" else (1 - ab_prev) / (1 - ab_t) * b
        sigma = var if noise_scale == "variance" else math.sqrt(var)
        return mean + sigma * noise if add_noise else mean
    return step


def hand_ddpm_learned(schedule: rd.Schedule, *, variance_type: str = "learned_range",
                      frac: str = "eq15", logs: str = "eq15", chain: str = "respaced",
                      channel: str = "log_variance") -> Callable:
    """A tutorial DDPM step with a learned variance (IDDPM Eq. 15 for "learned_range":
    σ² = exp(frac·log β' + (1 − frac)·log β̃), frac = (v + 1)/2, β̃ floored at 1e-20; for
    "learned": σ² = exp(v)). Bugs: ``frac="v"`` (v used as frac), ``logs="swapped"`` (log β'
    and log β̃ exchanged), ``chain="training"`` (the logs of the training chain's β_t and
    β̃_t at index t, as tables built once for the dense chain hold them, where a respaced
    list needs β' = 1 − ᾱ_t/ᾱ_prev and its β̃), ``channel="variance"`` ("learned" with v
    read as σ², diffusers' reading, where log σ² is claimed)."""
    table = np.asarray(schedule.alphas_cumprod)
    betas = np.asarray(schedule.betas)

    def step(x_t, eps, t, t_prev, *, var_values, noise, num_inference_steps):
        xp = array_api_compat.array_namespace(x_t)
        ab_t, ab_prev = _levels(table, t, t_prev, "one")
        b = 1 - ab_t / ab_prev
        x0 = (x_t - math.sqrt(1 - ab_t) * eps) / math.sqrt(ab_t)
        mean = (math.sqrt(ab_prev) * b / (1 - ab_t) * x0
                + math.sqrt(1 - b) * (1 - ab_prev) / (1 - ab_t) * x_t)
        if t_prev < 0:
            return mean
        v = var_values
        if variance_type == "learned":
            var = v if channel == "variance" else xp.exp(v)
        else:
            if chain == "training":
                b, ab_prev = float(betas[t]), (float(table[t - 1]) if t > 0 else 1.0)
            b_tilde = max((1 - ab_prev) / (1 - ab_t) * b, 1e-20)
            max_log, min_log = math.log(b), math.log(b_tilde)
            if logs == "swapped":
                max_log, min_log = min_log, max_log
            f = v if frac == "v" else (v + 1) / 2
            var = xp.exp(f * max_log + (1 - f) * min_log)
        with np.errstate(invalid="ignore"):  # σ² read from a log-variance may be negative
            return mean + xp.sqrt(var) * noise
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
    """CFG. ``"s"``: ε_u + s·(ε_c − ε_u); bugs ``"flipped"`` (sign of the difference),
    ``"w"`` (the scale used as the paper's w: (1 + s)·ε_c − s·ε_u) and ``"gated"`` (guidance
    only for s > 1, ε_c otherwise: the interpolations s in (0, 1) and s ≤ 0 are lost)."""
    def cfg(eps_uncond, eps_cond, scale):
        if form == "flipped":
            return eps_uncond - scale * (eps_cond - eps_uncond)
        if form == "w":
            return (1 + scale) * eps_cond - scale * eps_uncond
        if form == "gated" and scale <= 1:
            return eps_cond * 1.0
        return eps_uncond + scale * (eps_cond - eps_uncond)
    return cfg


def hand_cg(schedule: rd.Schedule, *, coefficient: str = "sqrt(1-ab)") -> Callable:
    """Classifier guidance, CG Algorithm 2. Bug ``coefficient="sqrt(ab)"``: √ᾱ_t in place
    of √(1 − ᾱ_t)."""
    def guided(eps, grad_log_prob, t, scale):
        ab = schedule.alpha_bar(t)
        c = math.sqrt(ab) if coefficient == "sqrt(ab)" else math.sqrt(1 - ab)
        return eps - scale * c * grad_log_prob
    return guided


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
# Imagen's rule with DeepFloyd IF's settings (diffusers' dynamic_thresholding_ratio=0.95,
# sample_max_value=1.5): with the default s_max = 1 dynamic thresholding is plain clipping
THRESHOLD = DynamicThreshold(ratio=0.95, max_value=1.5)
_THRESHOLD = {"clip_x0": THRESHOLD}
_LEARNED = {"variance_type": "learned"}

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
    Case("DDIM: direction sqrt(1 - ab_prev), no -sigma^2", SC.check_ddim_step,
         lambda s: hand_ddim(s, direction="no_sigma")),
    Case("DDIM: alpha_bar_prev of index t_prev + 1", SC.check_ddim_step,
         lambda s: hand_ddim(s, prev="after")),
    Case("DDPM: training beta_t, not beta' (respaced)", SC.check_ddpm_step,
         lambda s: hand_ddpm(s, beta="training")),
    Case("DDPM: noise times sigma^2, not sigma", SC.check_ddpm_step,
         lambda s: hand_ddpm(s, noise_scale="variance")),
    Case("CFG: gated to s > 1 (eps_c below)", C.check_cfg, lambda s: hand_cfg("gated")),
    Case("CG: sqrt(ab) in place of sqrt(1 - ab)", C.check_classifier_guidance,
         lambda s: hand_cg(s, coefficient="sqrt(ab)")),
    Case("learned_range: frac = v, not (v+1)/2", SC.check_ddpm_learned_variance,
         lambda s: hand_ddpm_learned(s, frac="v")),
    Case("learned_range: log beta' and log beta~ swapped", SC.check_ddpm_learned_variance,
         lambda s: hand_ddpm_learned(s, logs="swapped")),
    Case("learned_range: training-chain logs, not beta'", SC.check_ddpm_learned_variance,
         lambda s: hand_ddpm_learned(s, chain="training")),
    Case("learned: channel read as sigma^2, not log", SC.check_ddpm_learned_variance,
         lambda s: hand_ddpm_learned(s, variance_type="learned", channel="variance"), _LEARNED),
    Case("threshold: no division by s (DDIM)", SC.check_ddim_step,
         lambda s: hand_ddim(s, threshold=THRESHOLD, threshold_bug="no_divide"), _THRESHOLD),
    Case("threshold: quantile over the batch axis (DDIM)", SC.check_ddim_step,
         lambda s: hand_ddim(s, threshold=THRESHOLD, threshold_bug="batch_axis"), _THRESHOLD),
    Case("threshold: s not floored at 1 (DDPM)", SC.check_ddpm_step,
         lambda s: hand_ddpm(s, threshold=THRESHOLD, threshold_bug="no_floor"), _THRESHOLD),
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
    Case("classifier guidance", C.check_classifier_guidance, lambda s: hand_cg(s)),
    Case("DDIM loop", SC.check_sampling_loop, lambda s: hand_loop(hand_ddim(s), eta=0.5),
         {"eta": 0.5}),
    # (60 examples each: the corpus runs these options on every dtype row as well)
    Case("DDPM step, learned_range", SC.check_ddpm_learned_variance,
         lambda s: hand_ddpm_learned(s), {"max_examples": 60}),
    Case("DDPM step, learned", SC.check_ddpm_learned_variance,
         lambda s: hand_ddpm_learned(s, variance_type="learned"), {**_LEARNED, "max_examples": 60}),
    Case("DDIM step, dynamic threshold", SC.check_ddim_step,
         lambda s: hand_ddim(s, threshold=THRESHOLD), {**_THRESHOLD, "max_examples": 60}),
    Case("DDPM step, dynamic threshold", SC.check_ddpm_step,
         lambda s: hand_ddpm(s, threshold=THRESHOLD), {**_THRESHOLD, "max_examples": 60}),
]


def run_case(case: Case, *, schedule: Any = None, seed: int | None = None,
             max_examples: int | None = None, target: C.Target | None = None):
    """Run ``case.check`` on the case's candidate (on ``target``, for the checks that take
    one; default NumPy float64); returns the CheckResult."""
    spec = ScheduleSpec("linear", 1000) if schedule is None else schedule
    sched = spec.build() if isinstance(spec, ScheduleSpec) else spec
    kwargs = dict(case.options, seed=seed)
    if max_examples is not None:
        kwargs["max_examples"] = max_examples
    if case.check not in (C.check_cfg, C.check_schedule, C.check_timesteps):
        kwargs["schedule"] = spec
    if target is not None and case.check not in (C.check_schedule, C.check_timesteps):
        kwargs["target"] = target
    return case.check(case.make(sched), **kwargs)


def run_observed(case: Case, **kwargs) -> tuple[Any, dict]:
    """:func:`run_case` while recording the comparisons: (result, ratios) with ``first``
    (error/bound of the first failing example) and ``least`` (the smallest error/bound
    among all failing examples, shrinking included: how far above the bound the slip stays)."""
    failing: list[float] = []

    def seen(record):
        if not record["passed"]:
            failing.append(record["ratio"])

    with observe(seen):
        result = run_case(case, **kwargs)
    return result, {"first": failing[0] if failing else None,
                    "least": min(failing) if failing else None}


def mutation_table(seeds=range(10), *, max_examples: int | None = None,
                   target: C.Target | None = None, ci: bool = True) -> list[dict]:
    """For each mutant: caught in how many seeds, examples to the first failure (worst and
    median over seeds), median seconds to the first failure, the error/bound ratio of the
    first failing example (median over seeds) and the smallest ratio among all failing
    examples (over seeds); ``ci`` is the examples to the first failure in the deterministic
    (derandomized) search that CI runs (skipped with ``ci=False``). ``target``: where the
    candidates' inputs live."""
    rows = []
    for case in MUTANTS:
        runs = [run_observed(case, seed=s, max_examples=max_examples, target=target)
                for s in seeds]
        ci_run = run_case(case, target=target) if ci else None
        failed = [(r, q) for r, q in runs if not r.passed]
        n = [r.examples_to_fail for r, _ in failed]
        firsts = [q["first"] for _, q in failed if q["first"] is not None]
        leasts = [q["least"] for _, q in failed if q["least"] is not None]
        rows.append({"mutant": case.name, "check": case.check.__name__,
                     "caught": len(failed), "seeds": len(runs),
                     "worst": max(n) if n else None, "median": statistics.median(n) if n else None,
                     "seconds": statistics.median(r.time_to_fail for r, _ in failed) if failed else None,
                     "first_ratio": statistics.median(firsts) if firsts else None,
                     "least_ratio": min(leasts) if leasts else None,
                     "ci": None if ci_run is None or ci_run.passed else ci_run.examples_to_fail})
    return rows


def _ratio(r: float | None) -> str:
    if r is None:
        return "-"
    return "inf" if math.isinf(r) else f"{r:.3g}"


def format_table(rows: list[dict], markdown: bool = False, rows32: list[dict] | None = None) -> str:
    """The mutation table as fixed-width text, or as Markdown; ``rows32``: the same mutants
    on a float32 target, for its catch count and its error/bound ratios."""
    rows32 = rows32 or [None] * len(rows)
    if markdown:
        out = ["| mutant | check | caught | examples worst / median | CI examples | "
               "float32: caught, error/bound first / smallest |",
               "| --- | --- | --- | --- | --- | --- |"]
        for r, q in zip(rows, rows32):
            med = "-" if r["median"] is None else f"{r['median']:g}"
            f32 = ("-" if q is None else f"{q['caught']}/{q['seeds']}, "
                   f"{_ratio(q['first_ratio'])} / {_ratio(q['least_ratio'])}")
            out.append(f"| {r['mutant']} | {r['check'].removeprefix('check_')} | "
                       f"{r['caught']}/{r['seeds']} | {r['worst']} / {med} | {r['ci']} | {f32} |")
        return "\n".join(out)
    out = [f"{'mutant':<46} {'check':<26} {'caught':>7} {'worst':>6} {'median':>7} {'ci':>4} "
           f"{'ratio1':>9} {'least':>9} {'time':>7}"]
    for r, q in zip(rows, rows32):
        med = "-" if r["median"] is None else f"{r['median']:g}"
        sec = "-" if r["seconds"] is None else f"{r['seconds'] * 1000:.0f} ms"
        first, least = (r, r) if q is None else (q, q)
        out.append(f"{r['mutant']:<46} {r['check']:<26} {r['caught']:>3}/{r['seeds']:<3} "
                   f"{str(r['worst']):>6} {med:>7} {str(r['ci']):>4} "
                   f"{_ratio(first['first_ratio']):>9} {_ratio(least['least_ratio']):>9} {sec:>7}")
    return "\n".join(out)
